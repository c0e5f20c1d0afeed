"""The user tower and the output-embedding layer (Covington et al. 2016, section 3).

The tower maps a user's context (averaged watch-history and search-token embeddings, geography, device, gender,
example age, normalised demographics) to a d-dimensional vector u. The output layer is a trainable table V [n, d]
(plus an optional bias): the logit of video j is u . V[j] + b[j], and after training the rows of V are the video
embeddings that retrieval indexes. There is no separate item network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from recsys.config import ModelConfig
from recsys.sparse_optim import tf_variable

PAD = -1  # padding value of the history and search-token id matrices
SEQUENCE_FEATURES = ("history", "search_tokens")
CATEGORY_FEATURES = ("country", "device", "gender")
NUMERIC_FEATURES = ("example_age_days", "age", "logged_in")
_AGE_SCALE_DAYS = 30.0
_N_NUMERIC = 4  # example age, its square, normalised age, logged_in: the columns of the numeric stack in call()


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


def masked_mean(table: Any, ids: tf.Tensor) -> tf.Tensor:
    """Average of the embedding rows of the non-padding ids of each row (zeros for an empty row)."""
    table = table if isinstance(table, tf.Tensor) else tf_variable(table)  # a variable: gather rows, not a copy
    mask = tf.cast(ids >= 0, table.dtype)
    rows = tf.gather(table, tf.maximum(ids, 0))
    total = tf.reduce_sum(rows * mask[..., None], axis=1)
    count = tf.reduce_sum(mask, axis=1, keepdims=True)
    return total / tf.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="recsys")
class UserTower(keras.Model):
    """Context features -> user vector u of width embedding_dim."""

    def __init__(self, sizes: Cardinalities, config: ModelConfig, **kwargs: Any) -> None:
        """Create the input embeddings, the ReLU stack and the final projection to embedding_dim."""
        super().__init__(**kwargs)
        self.sizes = sizes
        self.config = config
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
        self.hidden_layers = [
            keras.layers.Dense(width, activation="relu", name=f"hidden_{i}") for i, width in enumerate(config.hidden)
        ]
        # The last layer is linear: a ReLU output would confine u to the positive orthant and cripple MIPS.
        self.projection = keras.layers.Dense(config.embedding_dim, name="user_vector")

    def input_width(self) -> int:
        """Width of the concatenated features that enter the first hidden layer."""
        c = self.config
        return c.video_input_dim + c.token_input_dim + c.category_dim * len(CATEGORY_FEATURES) + _N_NUMERIC

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments as plain dicts, so a saved ``.keras`` file can rebuild the tower."""
        return {**super().get_config(), "sizes": asdict(self.sizes), "config": self.config.model_dump(mode="json")}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UserTower:
        """A tower from ``get_config``'s dict (Keras restores the weights afterwards)."""
        rest = dict(config)
        return cls(Cardinalities(**rest.pop("sizes")), ModelConfig(**rest.pop("config")), **rest)

    def build(self, input_shape: Any = None) -> None:
        """Create the dense layers' weights from the known feature width, so no weight is made lazily."""
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
            masked_mean(self.video_inputs, features["history"]),
            masked_mean(self.token_inputs, features["search_tokens"]),
            *(tf.gather(tf_variable(self.category_tables[name]), features[name]) for name in CATEGORY_FEATURES),
            numeric,
        ]
        x = tf.concat(parts, axis=1)
        for layer in self.hidden_layers:
            x = layer(x, training=training)
        return self.projection(x)


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

    def __init__(self, sizes: Cardinalities, config: ModelConfig, **kwargs: Any) -> None:
        """Build both halves."""
        super().__init__(**kwargs)
        self.tower = UserTower(sizes, config, name="user_tower")
        self.output_layer = OutputEmbedding(sizes.videos, config.embedding_dim, config.output_bias, name="output")

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments as plain dicts, so ``model.save("x.keras")`` can rebuild both halves."""
        tower = self.tower
        return {**super().get_config(), "sizes": asdict(tower.sizes), "config": tower.config.model_dump(mode="json")}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TwoTower:
        """A model from ``get_config``'s dict (Keras restores the weights afterwards)."""
        rest = dict(config)
        return cls(Cardinalities(**rest.pop("sizes")), ModelConfig(**rest.pop("config")), **rest)

    def build(self, input_shape: Any = None) -> None:
        """Build the tower (the output layer's weights already exist)."""
        self.tower.build(input_shape)
        self.built = True

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """User vectors for the batch (losses score them against the output layer)."""
        return self.tower(features, training=training)


def build_model(sizes: Cardinalities, config: ModelConfig, max_history: int, max_tokens: int) -> TwoTower:
    """Create a two-tower model and run one dummy batch through it so every weight exists."""
    model = TwoTower(sizes, config, name="two_tower")  # a fixed name: checkpoint keys are the weights' paths
    dummy = {
        name: tf.zeros([1, *spec.shape[1:]], spec.dtype)
        for name, spec in feature_signature(max_history, max_tokens).items()
    }
    model(dummy)
    return model
