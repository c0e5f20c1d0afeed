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
