"""The user tower and output layer: every depth builds eagerly, shapes follow the config, masking is exact."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from recsys.config import ModelConfig
from recsys.model import PAD, Cardinalities, TwoTower, UserTower, build_model, masked_mean

SIZES = Cardinalities(videos=50, tokens=20, country=4, device=3, gender=3)


def batch(n: int, seed: int = 0) -> dict[str, tf.Tensor]:
    """A random feature batch with some padding in the id matrices."""
    rng = np.random.default_rng(seed)
    history = rng.integers(0, SIZES.videos, size=(n, 6)).astype(np.int32)
    history[:, 4:] = PAD
    tokens = rng.integers(0, SIZES.tokens, size=(n, 3)).astype(np.int32)
    tokens[0] = PAD
    return {
        "history": tf.constant(history),
        "search_tokens": tf.constant(tokens),
        "country": tf.constant(rng.integers(0, SIZES.country, n), tf.int32),
        "device": tf.constant(rng.integers(0, SIZES.device, n), tf.int32),
        "gender": tf.constant(rng.integers(0, SIZES.gender, n), tf.int32),
        "example_age_days": tf.constant(rng.uniform(0, 30, n), tf.float32),
        "age": tf.constant(rng.normal(size=n), tf.float32),
        "logged_in": tf.constant(rng.integers(0, 2, n), tf.float32),
    }


@pytest.mark.parametrize("hidden", [[], [32], [64, 32], [64, 48, 32, 16]])
def test_every_depth_builds_all_weights_up_front(hidden: list[int]) -> None:
    config = ModelConfig(embedding_dim=16, video_input_dim=12, hidden=hidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns (and builds lazily) when a layer has unbuilt state
        model = build_model(SIZES, config, max_history=6, max_tokens=3)
    tower = model.tower
    assert [layer.units for layer in tower.hidden_layers] == hidden
    widths = [tower.input_width(), *hidden]
    for layer, (fan_in, fan_out) in zip(tower.hidden_layers, zip(widths[:-1], hidden, strict=True), strict=True):
        assert tuple(layer.kernel.shape) == (fan_in, fan_out)
    assert tuple(tower.projection.kernel.shape) == (widths[-1], 16)
    assert tuple(model.output_layer.table.shape) == (SIZES.videos, 16)
    u = model(batch(5))
    assert tuple(u.shape) == (5, 16)
    # The last layer is linear: a ReLU there would leave no negative coordinates for MIPS to use.
    assert float(tf.reduce_min(u)) < 0.0


def test_output_bias_is_optional() -> None:
    with_bias = build_model(SIZES, ModelConfig(embedding_dim=8, hidden=[]), 6, 3)
    without = build_model(SIZES, ModelConfig(embedding_dim=8, hidden=[], output_bias=False), 6, 3)
    assert with_bias.output_layer.bias is not None and without.output_layer.bias is None
    assert len(without.trainable_weights) == len(with_bias.trainable_weights) - 1


def test_masked_mean_ignores_padding_and_gives_zero_for_an_empty_row() -> None:
    table = tf.constant(np.arange(12, dtype=np.float32).reshape(6, 2))
    ids = tf.constant([[1, 3, PAD], [PAD, PAD, PAD], [5, 5, 0]], tf.int32)
    got = masked_mean(table, ids).numpy()
    np.testing.assert_allclose(got[0], (table[1] + table[3]).numpy() / 2)
    np.testing.assert_allclose(got[1], [0.0, 0.0])
    np.testing.assert_allclose(got[2], (2 * table[5] + table[0]).numpy() / 3)


@pytest.mark.parametrize("output_bias", [True, False])
def test_a_saved_keras_file_loads_back_with_identical_outputs(tmp_path: Path, output_bias: bool) -> None:
    config = ModelConfig(
        embedding_dim=8, video_input_dim=8, token_input_dim=4, category_dim=2, hidden=[16], output_bias=output_bias
    )
    model = build_model(SIZES, config, max_history=6, max_tokens=3)
    model.save(tmp_path / "model.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # how Keras reports a variable it skipped or left unloaded
        loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, TwoTower) and isinstance(loaded.tower, UserTower)
    assert loaded.tower.sizes == SIZES and loaded.tower.config == config
    features = batch(7, seed=3)
    np.testing.assert_array_equal(loaded(features).numpy(), model(features).numpy())
    np.testing.assert_array_equal(loaded.output_layer.table.numpy(), model.output_layer.table.numpy())
    got_bias, bias = loaded.output_layer.bias, model.output_layer.bias
    assert (got_bias is None) == (bias is None) == (not output_bias)
    if got_bias is not None and bias is not None:
        np.testing.assert_array_equal(got_bias.numpy(), bias.numpy())


def test_each_layer_round_trips_through_its_config() -> None:
    model = build_model(SIZES, ModelConfig(embedding_dim=8, hidden=[]), max_history=6, max_tokens=3)
    for layer in (model, model.tower, model.output_layer):
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))  # plain JSON, no objects
        assert config["registered_name"] == f"recsys>{type(layer).__name__}"
        rebuilt = keras.saving.deserialize_keras_object(config)
        assert type(rebuilt) is type(layer) and rebuilt.get_config() == layer.get_config()


POOLINGS = ("mean", "recency", "attention", "sequence")
SEQUENCE_POOLINGS = ("recency", "attention", "sequence")


def _tower(pooling: str, max_history: int = 6, seed: int = 0) -> UserTower:
    """A small tower with the given pooling whose zero-initialised position parameters are randomised."""
    config = ModelConfig(embedding_dim=8, video_input_dim=8, token_input_dim=4, category_dim=2, hidden=[16])
    tower = build_model(SIZES, config.model_copy(update={"history_pooling": pooling}), max_history, 3).tower
    rng = np.random.default_rng(seed)
    for weight in (tower.recency_logits, tower.position_embeddings):
        if weight is not None:
            weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    return tower


def _history_batch(n: int, seed: int = 0) -> dict[str, tf.Tensor]:
    """``batch`` with histories of 0-6 real watches, ids >= 1 (row 0 is only ever gathered for padding)."""
    features = batch(n, seed)
    rng = np.random.default_rng(seed)
    history = rng.integers(1, SIZES.videos, size=(n, 6)).astype(np.int32)
    for row, length in enumerate(rng.integers(0, 7, size=n)):
        history[row, length:] = PAD
    history[0] = PAD  # cold start
    history[1] = rng.integers(1, SIZES.videos, size=6)  # a full history
    return {**features, "history": tf.constant(history)}


def test_pooling_needs_the_history_length_and_mean_ignores_it() -> None:
    with pytest.raises(ValueError, match="max_history"):
        UserTower(SIZES, ModelConfig(history_pooling="attention"))
    assert UserTower(SIZES, ModelConfig(history_pooling="mean")).recency_logits is None


def test_recency_pooling_starts_as_the_mean_and_then_weighs_by_position() -> None:
    tower = build_model(SIZES, ModelConfig(embedding_dim=8, history_pooling="recency"), 6, 3).tower
    ids = _history_batch(9)["history"]
    np.testing.assert_allclose(tower.pool_history(ids), masked_mean(tower.video_inputs, ids), rtol=1e-6, atol=1e-7)
    tower.recency_logits.assign([5.0, 0, 0, 0, 0, 0])  # almost all weight on the most recent watch
    last = tf.gather(tower.video_inputs, [[3]])[:, 0]
    got = tower.pool_history(tf.constant([[7, 9, 3, PAD, PAD, PAD]]))
    np.testing.assert_allclose(got, last, atol=0.05)


@pytest.mark.parametrize("pooling", SEQUENCE_POOLINGS)
def test_padding_never_changes_the_user_vector(pooling: str) -> None:
    tower = _tower(pooling)
    features = _history_batch(12, seed=4)
    u = tower(features).numpy()
    assert np.isfinite(u).all() and np.isfinite(u[0]).all()  # row 0: an all-padding history

    # Row 0 of the table is what padding gathers; no real watch uses it here.
    table = tower.video_inputs
    table.assign(tf.tensor_scatter_nd_update(table, [[0]], [np.full(8, 1e3, np.float32)]))
    np.testing.assert_array_equal(tower(features).numpy(), u)

    history = features["history"].numpy()
    wider = np.concatenate([history, np.full((len(history), 5), PAD, np.int32)], axis=1)
    np.testing.assert_allclose(tower({**features, "history": tf.constant(wider)}).numpy(), u, rtol=1e-5, atol=1e-6)
    # The serving graph's layout: the kept watches at the end of a wider row, padding before them.
    right = np.full_like(wider, PAD)
    for row, ids in enumerate(history):
        kept = ids[ids >= 0]
        right[row, right.shape[1] - len(kept) :] = kept
    np.testing.assert_allclose(tower({**features, "history": tf.constant(right)}).numpy(), u, rtol=1e-5, atol=1e-6)

    # The order of the real watches matters (this is not a mean): reverse the full history of row 1.
    flipped = history.copy()
    flipped[1] = flipped[1][::-1]
    assert not np.allclose(tower({**features, "history": tf.constant(flipped)}).numpy()[1], u[1])


@pytest.mark.parametrize("pooling", SEQUENCE_POOLINGS)
def test_pooling_parameters_train_and_never_read_the_video_table_whole(pooling: str) -> None:
    tower = _tower(pooling, max_history=6)
    features = _history_batch(5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(features, training=True))
    new = [w for w in tower.trainable_weights if "history" in w.path]
    assert new and all(g is not None for g in tape.gradient(loss, [w.value for w in new]))

    spec = {name: tf.TensorSpec([None, *t.shape[1:]], t.dtype) for name, t in features.items()}
    graph = tf.function(tower, autograph=False).get_concrete_function(spec).graph
    reads = [op.outputs[0].shape for op in graph.get_operations() if op.type == "ReadVariableOp"]
    assert all(shape.rank == 0 or shape[0] != SIZES.videos for shape in reads)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_every_pooling_round_trips_through_a_keras_file(tmp_path: Path, pooling: str) -> None:
    config = ModelConfig(embedding_dim=8, video_input_dim=8, token_input_dim=4, category_dim=2, history_pooling=pooling)
    model = build_model(SIZES, config, max_history=6, max_tokens=3)
    rng = np.random.default_rng(1)
    for weight in model.tower.weights:  # no weight keeps its initial value, so an unloaded one shows
        weight.assign(rng.normal(scale=0.1, size=weight.shape).astype(np.float32))
    model.save(tmp_path / "model.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.tower.config == config and loaded.tower.max_history == 6
    assert [w.path for w in loaded.tower.weights] == [w.path for w in model.tower.weights]
    features = _history_batch(9, seed=2)
    np.testing.assert_array_equal(loaded.tower(features).numpy(), model.tower(features).numpy())
