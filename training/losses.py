"""The loss head: one callable per configured loss, shared by the training job and the scaling benchmark."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from recsys.config import TrainConfig
from recsys.softmax import (
    full_softmax_loss,
    inbatch_softmax_loss,
    sample_classes,
    sampled_softmax_from_sample,
    topk_random_loss_per_example,
)


def log_uniform_sample(
    y: tf.Tensor, n: int, num_sampled: int, rng: tf.random.Generator
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Log-uniform (Zipfian) candidates drawn with a checkpointable generator, with their expected counts.

    Same distribution and expected counts as tf.random.log_uniform_candidate_sampler(unique=False), but the draw is
    part of the checkpointed state, so a resumed run samples exactly what an uninterrupted one would.
    """
    log_range = math.log(n + 1.0)
    uniform = rng.uniform([num_sampled], dtype=tf.float64)
    sampled = tf.cast(tf.floor(tf.exp(uniform * log_range)), tf.int64) - 1
    sampled = tf.clip_by_value(sampled, 0, n - 1)

    def expected(classes: tf.Tensor) -> tf.Tensor:
        c = tf.cast(classes, tf.float64)
        q = tf.math.log((c + 2.0) / (c + 1.0)) / log_range
        return tf.cast(q * num_sampled, tf.float32)

    labels = tf.reshape(tf.cast(y, tf.int64), [-1, 1])
    return sampled, expected(labels), expected(sampled)


class LossHead:
    """Batch-mean loss of user vectors u against the output table (V, b) for the configured loss."""

    def __init__(self, cfg: TrainConfig, n: int, log_q: np.ndarray, rng: tf.random.Generator) -> None:
        """Keep what the losses need: n, the label prior log q (in-batch) and the generator for sampling."""
        self.cfg = cfg
        self.n = n
        self.log_q = tf.constant(log_q, tf.float32)
        self.rng = rng

    def __call__(
        self, u: tf.Tensor, V: Any, b: Any | None, y: tf.Tensor, candidates: tf.Tensor, exclude: tf.Tensor | None
    ) -> tf.Tensor:
        """The loss for one batch; candidates [B, K] are the miner's top-K (empty for the other losses)."""
        cfg = self.cfg
        if cfg.loss == "full":
            return full_softmax_loss(u, V, b, y)
        if cfg.loss == "inbatch":
            return inbatch_softmax_loss(u, V, b, y, tf.gather(self.log_q, y))
        if cfg.loss == "loguniform":
            sampled = log_uniform_sample(y, self.n, cfg.uniform_samples, self.rng)
            return tf.reduce_mean(
                tf.nn.sampled_softmax_loss(
                    weights=V,
                    biases=b if b is not None else tf.zeros([self.n]),
                    labels=tf.reshape(tf.cast(y, tf.int64), [-1, 1]),
                    inputs=u,
                    num_sampled=cfg.uniform_samples,
                    num_classes=self.n,
                    sampled_values=sampled,
                    remove_accidental_hits=True,
                )
            )
        if cfg.head == "per_example":
            return topk_random_loss_per_example(u, V, b, y, candidates, cfg.uniform_samples, self.rng, exclude)
        sample = sample_classes(y, candidates, self.n, cfg.uniform_samples, self.rng)
        return sampled_softmax_from_sample(u, V, b, y, sample, exclude)
