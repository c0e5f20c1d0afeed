"""The loss head: one callable per configured loss, shared by the training job and the scaling benchmark."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from recsys.config import TrainConfig
from recsys.softmax import (
    build_head,
    full_softmax_loss,
    inbatch_softmax_loss,
    per_example_log_partition,
    sample_classes,
    sample_complement,
    sampled_softmax_from_sample,
    sorted_difference,
)
from recsys.sparse_optim import RowScale


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

    def __init__(self, cfg: TrainConfig, n: int, label_counts: np.ndarray, rng: tf.random.Generator) -> None:
        """Keep what the losses need: n, the training labels' counts per video and the generator for sampling."""
        self.cfg = cfg
        self.n = n
        counts = np.asarray(label_counts, dtype=np.float64)
        if counts.shape != (n,) or np.any(counts < 0) or counts.sum() <= 0:
            raise ValueError(f"label_counts must be {n} non-negative counts with a positive sum")
        # In-batch logQ: each video's share as a training label, smoothed so unseen videos keep a finite log q.
        self.log_q = tf.constant(np.log((counts + 1.0) / (counts.sum() + n)), tf.float32)
        # The labels' own draw probability, unsmoothed: a shuffled batch's labels are draws from exactly this.
        self.label_share = tf.constant(counts / counts.sum(), tf.float64)
        self.rng = rng

    def __call__(
        self, u: tf.Tensor, V: Any, b: Any | None, y: tf.Tensor, candidates: tf.Tensor, exclude: tf.Tensor | None
    ) -> tf.Tensor:
        """The loss for one batch; candidates [B, K] are the miner's top-K (empty for the other losses)."""
        return self.loss_and_tail(u, V, b, y, candidates, exclude)[0]

    def loss_and_tail(
        self, u: tf.Tensor, V: Any, b: Any | None, y: tf.Tensor, candidates: tf.Tensor, exclude: tf.Tensor | None
    ) -> tuple[tf.Tensor, RowScale | None]:
        """The loss, and for the sampled losses the tail rows' accumulator scale (None for full and in-batch).

        The scale covers the rows whose whole gradient this step is an importance-weighted estimate: for
        top-K-plus-random T minus every head, each drawn with probability q = |T|/(n-|S|) (shared head) or |T|/n
        (per-example head); for log-uniform the sampled classes that are no label, each with its own chance of
        being drawn. Such a row's accumulator adds q·g² (see recsys.sparse_optim), for both losses alike, so the
        comparison between them is not an optimizer difference.
        """
        cfg = self.cfg
        if cfg.loss == "full":
            return full_softmax_loss(u, V, b, y), None
        if cfg.loss == "inbatch":
            return inbatch_softmax_loss(u, V, b, y, tf.gather(self.log_q, y)), None
        if cfg.loss == "loguniform":
            sampled = log_uniform_sample(y, self.n, cfg.uniform_samples, self.rng)
            loss = tf.nn.sampled_softmax_loss(
                weights=V,
                biases=b if b is not None else tf.zeros([self.n]),
                labels=tf.reshape(tf.cast(y, tf.int64), [-1, 1]),
                inputs=u,
                num_sampled=cfg.uniform_samples,
                num_classes=self.n,
                sampled_values=sampled,
                remove_accidental_hits=True,
            )
            return tf.reduce_mean(loss), self._tail(*self._loguniform_tail(y, sampled[0]))
        if cfg.head == "per_example" and cfg.tail_sampler != "uniform":
            others = self.label_draws(tf.size(y))
            if others is None:
                t, log_w = self.loguniform_tail_sample(y)
            else:
                t, log_w = self.mixture_tail_sample(y)
            log_z_hat, label_logit = per_example_log_partition(u, V, b, y, candidates, t, exclude, log_w)
            heads, _ = build_head(y, candidates)
            # Every label is in the heads, so these rows are log-uniform draws; their weight is about 1/(their
            # chance to be drawn by either proposal), which is the inclusion probability the accumulator needs.
            rows = sorted_difference(t, heads)
            loss = tf.reduce_mean(log_z_hat - label_logit)
            return loss, self._tail(rows, self.tail_draw_chance(rows, others))
        if cfg.head == "per_example":
            t = tf.sort(sample_complement(tf.zeros([0], tf.int64), self.n, cfg.uniform_samples, self.rng))
            log_z_hat, label_logit = per_example_log_partition(u, V, b, y, candidates, t, exclude)
            heads, _ = build_head(y, candidates)
            inclusion = tf.cast(tf.size(t), tf.float32) / float(self.n)
            return tf.reduce_mean(log_z_hat - label_logit), self._tail(sorted_difference(t, heads), inclusion)
        sample = sample_classes(y, candidates, self.n, cfg.uniform_samples, self.rng)
        rest = tf.cast(self.n - tf.size(sample.s), tf.float32)
        inclusion = tf.cast(tf.size(sample.t), tf.float32) / tf.maximum(rest, 1.0)
        loss = sampled_softmax_from_sample(u, V, b, y, sample, exclude)
        return loss, self._tail(tf.sort(sample.t), inclusion)

    def loguniform_tail_sample(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """A log-uniform tail for the per-example head: sorted distinct classes of m draws and their log weights."""
        m = self.cfg.uniform_samples
        t, counts = _distinct_sorted(log_uniform_sample(y, self.n, m, self.rng)[0])
        # Hansen-Hurwitz: a class drawn c times out of m with per-draw probability p stands for c/(m·p).
        return t, tf.math.log(tf.cast(counts, tf.float32)) - math.log(m) - self._log_p(t)

    def mixture_tail_sample(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """m log-uniform draws plus the batch's labels as one tail: sorted distinct classes and their log weights.

        The labels are free draws from the label distribution q (their rows are gathered for the heads anyway).
        For example i the other B-1 labels are such draws and its own label is in its head, never in its tail, so
        a class drawn c times in all stands for c / (m·p_j + (B-1)·q_j) classes (the balance heuristic of
        multiple importance sampling): unbiased for each example's tail sum, and no class that either proposal
        makes likely gets a large weight. Log-uniform covers every class, so videos no label has (q = 0) stay
        reachable.
        """
        m = self.cfg.uniform_samples
        labels = tf.cast(tf.reshape(y, [-1]), tf.int64)
        t, counts = _distinct_sorted(tf.concat([log_uniform_sample(y, self.n, m, self.rng)[0], labels], axis=0))
        others = tf.cast(tf.size(labels) - 1, tf.float64)
        expected = float(m) * tf.exp(tf.cast(self._log_p(t), tf.float64)) + others * tf.gather(self.label_share, t)
        log_w = tf.math.log(tf.cast(counts, tf.float64)) - tf.math.log(expected)
        return t, tf.cast(log_w, tf.float32)

    def label_draws(self, batch_size: Any) -> Any | None:
        """How many of a step's tail draws are the batch's labels: B-1 for the mixture tail, None for the others."""
        return batch_size - 1 if self.cfg.tail_sampler == "loguniform_inbatch" else None

    def _log_p(self, classes: tf.Tensor) -> tf.Tensor:
        """Log of one log-uniform draw's probability of each class (float32)."""
        c = tf.cast(classes, tf.float64)
        return tf.cast(tf.math.log(tf.math.log((c + 2.0) / (c + 1.0)) / math.log(self.n + 1.0)), tf.float32)

    def tail_draw_chance(self, classes: tf.Tensor, others: tf.Tensor | None = None) -> tf.Tensor:
        """Each class's chance to be among m log-uniform draws, 1 - (1 - p)^m (float32).

        With ``others`` (the number of in-batch label draws), also among those: 1 - (1 - p)^m (1 - q)^others.
        """
        p = tf.exp(tf.cast(self._log_p(classes), tf.float64))
        log_missed = float(self.cfg.uniform_samples) * tf.math.log1p(-p)
        if others is not None:
            q = tf.minimum(tf.gather(self.label_share, classes), 1.0 - 1e-12)
            log_missed += tf.cast(others, tf.float64) * tf.math.log1p(-q)
        return tf.cast(-tf.math.expm1(log_missed), tf.float32)

    def head_draw_chance(self, heads: np.ndarray) -> np.ndarray:
        """Each entry of a batch's mined heads [B, K] (padding dropped): its chance to be among that step's tail draws.

        What the head gate and benchmarks.head_cover read: a head the tail draws anyway adds little to the estimate.
        """
        ids = heads[heads >= 0]
        if ids.size == 0:
            return np.zeros(0, np.float32)
        return self.tail_draw_chance(tf.constant(ids, tf.int64), self.label_draws(len(heads))).numpy()

    def _loguniform_tail(self, y: tf.Tensor, sampled: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The log-uniform draws that are no label of the batch, and each one's chance to be drawn at all this step."""
        labels = tf.sort(tf.unique(tf.cast(tf.reshape(y, [-1]), tf.int64)).y)
        rows = sorted_difference(tf.sort(tf.unique(sampled).y), labels)
        return rows, self.tail_draw_chance(rows)

    def _tail(self, rows: tf.Tensor, inclusion: tf.Tensor) -> RowScale | None:
        """The RowScale of the tail rows, or None when the correction is off or the optimizer is not Adagrad."""
        applies = self.cfg.tail_accumulator_correction and self.cfg.optimizer == "adagrad"
        return RowScale(rows, inclusion) if applies else None


def _distinct_sorted(draws: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The distinct classes among int64 draws, sorted, and how many times each was drawn."""
    t, _, counts = tf.unique_with_counts(draws)
    order = tf.argsort(t)
    return tf.gather(t, order), tf.gather(counts, order)
