"""The user tower and the output-embedding layer (Covington et al. 2016, section 3).

The tower maps a user's context (pooled watch-history and averaged search-token embeddings, geography, device,
gender, example age, normalised demographics) to a d-dimensional vector u. ModelConfig.history_pooling says how the
history is pooled: the paper's plain mean, a learned recency-weighted mean, a small self-attention block followed
by a masked mean, or a causal self-attention encoder read at the most recent watch (the SASRec family). The output
layer is a trainable table V [n, d] (plus an optional bias): the logit of video j is u . V[j] + b[j], and after
training the rows of V are the video embeddings that retrieval indexes. There is no separate item network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from recsys.config import ModelConfig
from recsys.sparse_optim import gather_distinct, tf_variable

PAD = -1  # padding value of the history and search-token id matrices
SEQUENCE_FEATURES = ("history", "search_tokens")
CATEGORY_FEATURES = ("country", "device", "gender")
NUMERIC_FEATURES = ("example_age_days", "age", "logged_in")
_AGE_SCALE_DAYS = 30.0
_N_NUMERIC = 4  # example age, its square, normalised age, logged_in: the columns of the numeric stack in call()
ATTENTION_HEADS = 2
_NEG = -1e9  # the logit of a masked entry: exp() of it minus any real logit is exactly 0 in float32


@dataclass(frozen=True)
class Cardinalities:
    """Vocabulary sizes (each including the OOV index 0) that size the embedding tables."""

    videos: int
    tokens: int
    country: int
    device: int
    gender: int


def feature_signature(max_history: int, max_tokens: int) -> dict[str, tf.TensorSpec]:
    """The tower's input signature: padded id matrices, category indices and float features."""
    spec = {
        "history": tf.TensorSpec([None, max_history], tf.int32),
        "search_tokens": tf.TensorSpec([None, max(max_tokens, 1)], tf.int32),
    }
    spec |= {name: tf.TensorSpec([None], tf.int32) for name in CATEGORY_FEATURES}
    spec |= {name: tf.TensorSpec([None], tf.float32) for name in NUMERIC_FEATURES}
    return spec


FEATURE_NAMES = tuple(feature_signature(1, 1))  # the tower's input names, in signature order


def _constructor_config(sizes: Cardinalities, config: ModelConfig, max_history: int | None) -> dict[str, Any]:
    """The model classes' shared constructor arguments as plain JSON values (their Keras config)."""
    return {"sizes": asdict(sizes), "config": config.model_dump(mode="json"), "max_history": max_history}


def _constructor_arguments(config: dict[str, Any]) -> tuple[Cardinalities, ModelConfig, dict[str, Any]]:
    """The inverse of _constructor_config: sizes, model config and the remaining keyword arguments."""
    rest = dict(config)
    return Cardinalities(**rest.pop("sizes")), ModelConfig(**rest.pop("config")), rest


def history_rows(table: Any, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Embedding rows [B, T, dim] of a padded id matrix (exact zeros at padding) and its validity mask [B, T]."""
    table = table if isinstance(table, tf.Tensor) else tf_variable(table)  # a variable: gather rows, not a copy
    valid = ids >= 0
    # gather_distinct: a batch's histories repeat popular videos, so each distinct row is read (and updated) once.
    rows = gather_distinct(table, tf.maximum(ids, 0)) * tf.cast(valid, table.dtype)[..., None]
    return rows, valid


def masked_mean(table: Any, ids: tf.Tensor) -> tf.Tensor:
    """Average of the embedding rows of the non-padding ids of each row (zeros for an empty row)."""
    rows, valid = history_rows(table, ids)
    return _mean_of_valid(rows, valid)


def _mean_of_valid(rows: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Mean over axis 1 of the rows whose mask is set (rows at padding must already be zero)."""
    count = tf.reduce_sum(tf.cast(valid, rows.dtype), axis=1, keepdims=True)
    return tf.reduce_sum(rows, axis=1) / tf.maximum(count, 1.0)


def positions_from_end(valid: tf.Tensor, limit: int) -> tf.Tensor:
    """Each entry's rank from its row's most recent non-padding entry (0 = most recent), capped at limit - 1.

    Counted over the mask, not the column index, so the left-aligned training matrix and the serving graph's
    (kept ids anywhere in a wider matrix) give every watch the same position.
    """
    later = tf.cumsum(tf.cast(valid, tf.int32), axis=1, reverse=True, exclusive=True)
    return tf.minimum(later, limit - 1)


def masked_softmax(logits: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Softmax over axis 1 restricted to the valid entries: exact zeros elsewhere, all zeros for an empty row."""
    masked = tf.where(valid, logits, tf.constant(_NEG, logits.dtype))
    top = tf.reduce_max(masked, axis=1, keepdims=True)
    weights = tf.where(valid, tf.exp(masked - top), tf.zeros_like(masked))
    return weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-30)


@keras.saving.register_keras_serializable(package="recsys")
class SequenceBlock(keras.layers.Layer):
    """One pre-norm transformer block (SASRec's): masked self-attention then a position-wise ReLU feed-forward."""

    def __init__(self, width: int, dropout: float = 0.0, **kwargs: Any) -> None:
        """ATTENTION_HEADS heads splitting `width`; a feed-forward of the same width; `dropout` on both outputs."""
        super().__init__(**kwargs)
        self.width = width
        self.rate = dropout
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=ATTENTION_HEADS, key_dim=max(1, width // ATTENTION_HEADS), dropout=dropout, name="attention"
        )
        self.feed_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="feed_norm")
        self.inner = keras.layers.Dense(width, activation="relu", name="inner")
        self.outer = keras.layers.Dense(width, name="outer")
        self.dropout = keras.layers.Dropout(dropout, name="dropout")

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, so a saved ``.keras`` file can rebuild the block."""
        return {**super().get_config(), "width": self.width, "dropout": self.rate}

    def build(self, input_shape: Any = None) -> None:
        """Create every sub-layer's weights for inputs [B, T, width]."""
        shape = (None, None, self.width)
        self.attention_norm.build(shape)
        self.attention.build(shape, shape)
        self.feed_norm.build(shape)
        self.inner.build(shape)
        self.outer.build(shape)
        self.built = True

    def call(self, x: tf.Tensor, attend: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x [B, T, width] -> the same shape; `attend` [B, T, T] says which key each query may see."""
        query = self.attention_norm(x)
        x = query + self.attention(query, x, attention_mask=attend, training=training)
        y = self.outer(self.dropout(self.inner(self.feed_norm(x)), training=training))
        return x + self.dropout(y, training=training)


@keras.saving.register_keras_serializable(package="recsys")
class UserTower(keras.Model):
    """Context features -> user vector u of width embedding_dim."""

    def __init__(
        self, sizes: Cardinalities, config: ModelConfig, max_history: int | None = None, **kwargs: Any
    ) -> None:
        """Create the input embeddings, the history pooling's parameters, the ReLU stack and the final projection.

        ``max_history`` (the width of the training history matrix) sizes the position parameters of the recency
        and attention poolings; the mean needs none.
        """
        super().__init__(**kwargs)
        if config.history_pooling != "mean" and (max_history is None or max_history < 1):
            raise ValueError(f"history_pooling={config.history_pooling!r} needs max_history >= 1, got {max_history}")
        self.sizes = sizes
        self.config = config
        self.max_history = max_history
        init = keras.initializers.RandomNormal(stddev=0.05)
        self.video_inputs = self.add_weight(
            shape=(sizes.videos, config.video_input_dim), initializer=init, name="video_input_embeddings"
        )
        self.token_inputs = self.add_weight(
            shape=(sizes.tokens, config.token_input_dim), initializer=init, name="token_input_embeddings"
        )
        self.category_tables = {
            name: self.add_weight(
                shape=(getattr(sizes, name), config.category_dim), initializer=init, name=f"{name}_embeddings"
            )
            for name in CATEGORY_FEATURES
        }
        self.recency_logits = self._recency_logits() if config.history_pooling == "recency" else None
        positional = config.history_pooling in ("attention", "sequence")
        self.position_embeddings = self._position_embeddings() if positional else None
        self.attention = self._attention_layer() if config.history_pooling == "attention" else None
        self.encoder = (
            [
                SequenceBlock(config.video_input_dim, config.dropout, name=f"history_sequence_{i}")
                for i in range(config.sequence_blocks)
            ]
            if config.history_pooling == "sequence"
            else []
        )
        self.encoder_norm = (
            keras.layers.LayerNormalization(epsilon=1e-6, name="history_sequence_norm") if self.encoder else None
        )
        self.hidden_layers = [
            keras.layers.Dense(width, activation="relu", name=f"hidden_{i}") for i, width in enumerate(config.hidden)
        ]
        self.dropout = keras.layers.Dropout(config.dropout, name="dropout") if config.dropout > 0 else None
        # The last layer is linear: a ReLU output would confine u to the positive orthant and cripple MIPS.
        self.projection = keras.layers.Dense(config.embedding_dim, name="user_vector")

    def _history_length(self) -> int:
        """The position parameters' length (the constructor refused a non-mean pooling without one)."""
        assert self.max_history is not None
        return self.max_history

    def _recency_logits(self) -> Any:
        """One logit per position from the end; zeros, so the recency pooling starts as the plain mean."""
        return self.add_weight(shape=(self._history_length(),), initializer="zeros", name="history_recency_logits")

    def _position_embeddings(self) -> Any:
        """A learned vector per position from the end, added to the watch's embedding (zeros: no order at first)."""
        shape = (self._history_length(), self.config.video_input_dim)
        return self.add_weight(shape=shape, initializer="zeros", name="history_position_embeddings")

    def _attention_layer(self) -> keras.layers.MultiHeadAttention:
        """Self-attention over the history: ATTENTION_HEADS heads splitting the history embedding's width."""
        key_dim = max(1, self.config.video_input_dim // ATTENTION_HEADS)
        return keras.layers.MultiHeadAttention(num_heads=ATTENTION_HEADS, key_dim=key_dim, name="history_attention")

    def input_width(self) -> int:
        """Width of the concatenated features that enter the first hidden layer."""
        c = self.config
        return c.video_input_dim + c.token_input_dim + c.category_dim * len(CATEGORY_FEATURES) + _N_NUMERIC

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments as plain dicts, so a saved ``.keras`` file can rebuild the tower."""
        return {**super().get_config(), **_constructor_config(self.sizes, self.config, self.max_history)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UserTower:
        """A tower from ``get_config``'s dict (Keras restores the weights afterwards)."""
        sizes, model_config, rest = _constructor_arguments(config)
        return cls(sizes, model_config, **rest)

    def build(self, input_shape: Any = None) -> None:
        """Create the dense layers' weights from the known feature width, so no weight is made lazily."""
        sequence = (None, None, self.config.video_input_dim)
        if self.attention is not None:
            self.attention.build(sequence, sequence)
        for block in self.encoder:
            block.build(sequence)
        if self.encoder_norm is not None:
            self.encoder_norm.build(sequence)
        width = self.input_width()
        for layer in self.hidden_layers:
            layer.build((None, width))
            width = layer.units
        self.projection.build((None, width))
        self.built = True

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """User vectors [B, embedding_dim] from a batch of features."""
        age_days = tf.cast(features["example_age_days"], tf.float32) / _AGE_SCALE_DAYS
        numeric = tf.stack(
            [
                age_days,
                tf.square(age_days),
                tf.cast(features["age"], tf.float32),
                tf.cast(features["logged_in"], tf.float32),
            ],
            axis=1,
        )
        parts = [
            self.pool_history(features["history"], training=training),
            masked_mean(self.token_inputs, features["search_tokens"]),
            *(tf.gather(tf_variable(self.category_tables[name]), features[name]) for name in CATEGORY_FEATURES),
            numeric,
        ]
        x = self._drop(tf.concat(parts, axis=1), training)
        for layer in self.hidden_layers:
            x = self._drop(layer(x, training=training), training)
        return self.projection(x)

    def _drop(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """Dropout while training when the config asks for it; the identity otherwise."""
        return x if self.dropout is None else self.dropout(x, training=training)

    def pool_history(self, ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The watch history [B, T] (oldest first, PAD anywhere) as one vector [B, video_input_dim]."""
        if self.config.history_pooling == "mean":
            return masked_mean(self.video_inputs, ids)
        rows, valid = history_rows(self.video_inputs, ids)
        positions = positions_from_end(valid, self._history_length())
        if self.recency_logits is not None:
            weights = masked_softmax(tf.gather(tf_variable(self.recency_logits), positions), valid)
            return tf.reduce_sum(rows * weights[..., None], axis=1)
        if self.encoder:
            return self._encode(rows, valid, positions, training)
        return self._attend(rows, valid, positions, training)

    def _encode(self, rows: tf.Tensor, valid: tf.Tensor, positions: tf.Tensor, training: bool) -> tf.Tensor:
        """Position-tagged watches through the causal encoder; the output at the most recent watch.

        A watch attends to itself and to earlier watches only (by position from the end, so any padding layout
        gives the same answer); padding is masked as keys and zeroed after every block. An empty history gives 0.
        """
        assert self.position_embeddings is not None and self.encoder_norm is not None
        mask = tf.cast(valid, rows.dtype)[..., None]
        x = (rows + tf.gather(tf_variable(self.position_embeddings), positions)) * mask
        x = self._drop(x, training)
        # earlier-or-same: key j is at least as far from the end as query i; and key j must be a real watch
        causal = positions[:, None, :] >= positions[:, :, None]
        attend = tf.logical_and(causal, valid[:, None, :])
        for block in self.encoder:
            x = block(x, attend, training=training) * mask
        x = self.encoder_norm(x) * mask
        latest = tf.cast(tf.logical_and(valid, tf.equal(positions, 0)), rows.dtype)[..., None]
        return tf.reduce_sum(x * latest, axis=1)

    def _attend(self, rows: tf.Tensor, valid: tf.Tensor, positions: tf.Tensor, training: bool) -> tf.Tensor:
        """Position-tagged watches through one residual self-attention block, then the mean over the real watches.

        Padding is masked as keys (no watch attends to it) and left out of the mean, so it cannot change u.
        """
        assert self.attention is not None and self.position_embeddings is not None
        mask = tf.cast(valid, rows.dtype)[..., None]
        x = rows + tf.gather(tf_variable(self.position_embeddings), positions) * mask
        x = x + self.attention(x, x, value_mask=valid, training=training)
        return _mean_of_valid(x * mask, valid)


@keras.saving.register_keras_serializable(package="recsys")
class OutputEmbedding(keras.layers.Layer):
    """The softmax's output table V [n, d] and optional bias b [n]: the video embeddings after training."""

    def __init__(self, n_videos: int, dim: int, use_bias: bool = True, **kwargs: Any) -> None:
        """Create V with a small random init (so the index over V starts with no structure) and b at zero."""
        super().__init__(**kwargs)
        self.n_videos = n_videos
        self.dim = dim
        self.table = self.add_weight(
            shape=(n_videos, dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / np.sqrt(dim)),
            name="video_embeddings",
        )
        self.bias = self.add_weight(shape=(n_videos,), initializer="zeros", name="video_bias") if use_bias else None

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, so a saved ``.keras`` file can rebuild the layer."""
        return {**super().get_config(), "n_videos": self.n_videos, "dim": self.dim, "use_bias": self.bias is not None}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OutputEmbedding:
        """A layer from ``get_config``'s dict (Keras restores the weights afterwards)."""
        return cls(**config)

    def logits(self, u: tf.Tensor) -> tf.Tensor:
        """Full logits [B, n] (the expensive reference path; evaluation chunks it)."""
        out = tf.matmul(u, self.table, transpose_b=True)
        return out + self.bias if self.bias is not None else out


@keras.saving.register_keras_serializable(package="recsys")
class TwoTower(keras.Model):
    """The user tower and the output layer trained together; the tower alone is exported for serving."""

    def __init__(
        self, sizes: Cardinalities, config: ModelConfig, max_history: int | None = None, **kwargs: Any
    ) -> None:
        """Build both halves (``max_history`` as UserTower takes it)."""
        super().__init__(**kwargs)
        self.tower = UserTower(sizes, config, max_history, name="user_tower")
        self.output_layer = OutputEmbedding(sizes.videos, config.embedding_dim, config.output_bias, name="output")

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments as plain dicts, so ``model.save("x.keras")`` can rebuild both halves."""
        tower = self.tower
        return {**super().get_config(), **_constructor_config(tower.sizes, tower.config, tower.max_history)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TwoTower:
        """A model from ``get_config``'s dict (Keras restores the weights afterwards)."""
        sizes, model_config, rest = _constructor_arguments(config)
        return cls(sizes, model_config, **rest)

    def build(self, input_shape: Any = None) -> None:
        """Build the tower (the output layer's weights already exist)."""
        self.tower.build(input_shape)
        self.built = True

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """User vectors for the batch (losses score them against the output layer)."""
        return self.tower(features, training=training)


def build_model(sizes: Cardinalities, config: ModelConfig, max_history: int, max_tokens: int) -> TwoTower:
    """Create a two-tower model and run one dummy batch through it so every weight exists."""
    model = TwoTower(
        sizes, config, max_history, name="two_tower"
    )  # a fixed name: checkpoint keys are the weights' paths
    dummy = {
        name: tf.zeros([1, *spec.shape[1:]], spec.dtype)
        for name, spec in feature_signature(max_history, max_tokens).items()
    }
    model(dummy)
    return model
