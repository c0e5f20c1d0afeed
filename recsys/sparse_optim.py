"""Sparse SGD, Adagrad and (lazy) Adam for gathered embedding tables (the output table V and its bias).

A sampled loss touches a few thousand rows of a table with millions. Keras 3's Adagrad densifies the gradient and
rewrites the whole accumulator every step, and a naive sparse apply squares repeated rows separately: with
gradient slices g1, g2 for the same row it adds g1² + g2² to the accumulator instead of (g1 + g2)². Here the
IndexedSlices are first deduplicated (sorted, then segment_sum) and then applied to those rows only, of the
variable and of its accumulator. Dense gradients (the tower's weights) are applied densely with the same rule.

Sampled losses give a rarely drawn row a rare but importance-weighted gradient: a tail row drawn with probability q
gets (1/q)·g when drawn. Adagrad then accumulates q·(g/q)² = g²/q per step on average, 1/q times what the exact
gradient would, and the row's effective step shrinks by √q (0.4 at q = 0.15). A ``RowScale`` tells the sparse apply
to add scale·g² for such rows (scale = q), which restores the exact gradient's expected accumulator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

__all__ = ["RowScale", "SparseAdagrad", "SparseAdam", "SparseSGD", "deduplicate", "gather_distinct", "tf_variable"]


def tf_variable(var: Any) -> tf.Variable:
    """The tf.Variable behind a Keras 3 (TensorFlow backend) variable, or the variable itself.

    Gathers and sparse updates of large tables must go through it: a Keras variable converts to a tensor, i.e. a
    read of the whole table, and once a sparse update has touched a resource variable TensorFlow copies the table
    on every such read (a 1M x 256 table: ~1 s per read).
    """
    if isinstance(var, tf.Variable):
        return var
    inner = getattr(var, "value", None)
    if isinstance(inner, tf.Variable):
        return inner
    raise TypeError(f"expected a tf.Variable or a Keras variable, got {type(var).__name__}")


def gather_distinct(table: Any, ids: tf.Tensor) -> tf.Tensor:
    """Rows of table for ids of any shape, reading each distinct row once (ids must be valid rows).

    The gradient then holds one slice per distinct row (the repeats are summed inside the step) instead of one per
    id: a top-K head of 1024 x 33 ids covered ~700 distinct rows in a 100k-video run, so the optimizer updates and
    deduplicates ~1/40 of the rows a plain gather would hand it.
    """
    flat = tf.reshape(ids, [-1])
    distinct, position = tf.unique(flat)
    rows = tf.gather(table, distinct)
    return tf.reshape(tf.gather(rows, position), tf.concat([tf.shape(ids), tf.shape(rows)[1:]], 0))


def deduplicate(indices: tf.Tensor, values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sum the value slices of repeated indices: returns (unique indices [k] ascending, summed values [k, ...]).

    Ascending rows matter for speed, not correctness: the sparse apply then walks a million-row table and its
    accumulator in address order, which halved its time at 1M rows against tf.unique's first-seen order.
    """
    indices = tf.reshape(indices, [-1])
    order = tf.argsort(indices, stable=True)
    unique, pos = tf.unique(tf.gather(indices, order))  # sorted input: pos is non-decreasing
    summed = tf.math.segment_sum(tf.gather(values, order), pos)
    return unique, summed


@dataclass(frozen=True)
class RowScale:
    """Accumulator factors for some rows of a table: these rows add scale·g² instead of g² (others: factor 1)."""

    rows: tf.Tensor  # [k] int64, sorted ascending, distinct
    scale: tf.Tensor  # scalar (all listed rows) or [k] float

    def factors(self, unique: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """The accumulator factor [len(unique)] of each of the given distinct, non-negative row ids."""
        rows = tf.cast(self.rows, tf.int64)
        unique = tf.cast(unique, tf.int64)
        size = tf.size(rows, out_type=tf.int64)
        pos = tf.searchsorted(rows, unique, side="left", out_type=tf.int64)  # in [0, size]: a sentinel slot at size
        hit = tf.equal(tf.gather(tf.concat([rows, [-1]], 0), pos), unique)
        scale = tf.broadcast_to(tf.cast(self.scale, dtype), [size])
        per_row = tf.gather(tf.concat([scale, tf.ones([1], dtype)], 0), pos)
        return tf.where(hit, per_row, tf.ones_like(per_row))


def _learning_rate(lr: float | tf.Variable, dtype: tf.DType) -> tf.Tensor:
    """The current learning rate as a scalar tensor of the variable's dtype."""
    return tf.cast(lr, dtype)


class _RowSparseOptimizer:
    """Routes each gradient to the sparse (IndexedSlices) or dense update of a concrete optimizer."""

    def apply(self, var: Any, indices: tf.Tensor, values: tf.Tensor, row_scale: RowScale | None = None) -> None:
        """Update only the rows in indices (repeated rows summed first); row_scale weighs accumulator increments."""
        raise NotImplementedError

    def apply_dense(self, var: Any, grad: tf.Tensor) -> None:
        """Update the whole variable."""
        raise NotImplementedError

    def apply_gradients(
        self, grads_and_vars: Iterable[tuple[Any, Any]], row_scales: Mapping[Any, RowScale] | None = None
    ) -> None:
        """Apply (gradient, variable) pairs: IndexedSlices sparsely, tensors densely, None skipped.

        ``row_scales`` maps a variable's ``tf_variable(var).ref()`` to the RowScale of its sparse gradient.
        """
        scales = row_scales or {}
        for grad, var in grads_and_vars:
            if grad is None:
                continue
            if isinstance(grad, tf.IndexedSlices):
                self.apply(var, grad.indices, grad.values, scales.get(tf_variable(var).ref()))
            else:
                self.apply_dense(var, grad)


class SparseSGD(_RowSparseOptimizer):
    """Plain SGD whose sparse path scatters into the touched rows only."""

    def __init__(self, learning_rate: float | tf.Variable) -> None:
        """Keep the learning rate (a float, or a tf.Variable to change it during training)."""
        self.learning_rate = learning_rate

    def apply(self, var: Any, indices: tf.Tensor, values: tf.Tensor, row_scale: RowScale | None = None) -> None:
        """var[i] -= lr · Σ values for each distinct row i in indices; other rows are not written (no accumulator)."""
        v = tf_variable(var)
        unique, summed = deduplicate(indices, values)
        lr = _learning_rate(self.learning_rate, v.dtype)
        v.scatter_sub(tf.IndexedSlices(lr * tf.cast(summed, v.dtype), unique))

    def apply_dense(self, var: Any, grad: tf.Tensor) -> None:
        """var -= lr · grad for a dense gradient."""
        v = tf_variable(var)
        v.assign_sub(_learning_rate(self.learning_rate, v.dtype) * tf.cast(grad, v.dtype))


class SparseAdagrad(_RowSparseOptimizer):
    """Adagrad (accum += g²; var -= lr·g / (sqrt(accum) + ε)) with a true sparse path.

    Same rule and defaults as Keras' Adagrad except that Keras puts ε inside the square root; with the accumulator
    starting at 0.1 the two differ by ~1e-7 relative.

    Accumulators are created on first use (outside any tf.function graph, via init_scope) or up front with
    ``build``; call ``build`` before the first traced step if the step may be traced more than once.
    """

    def __init__(
        self, learning_rate: float | tf.Variable, initial_accumulator: float = 0.1, epsilon: float = 1e-7
    ) -> None:
        """Keep the hyper-parameters; accumulators start at ``initial_accumulator`` like Keras' Adagrad."""
        if initial_accumulator < 0:
            raise ValueError("initial_accumulator must be >= 0")
        self.learning_rate = learning_rate
        self.initial_accumulator = initial_accumulator
        self.epsilon = epsilon
        self._accumulators: dict[Any, tf.Variable] = {}

    def build(self, variables: Iterable[Any]) -> None:
        """Create the accumulators of these variables now."""
        for var in variables:
            self.accumulator(var)

    def accumulator(self, var: Any) -> tf.Variable:
        """The accumulator slot of var (same shape and dtype), created on first request."""
        v = tf_variable(var)
        key = v.ref()
        acc = self._accumulators.get(key)
        if acc is None:
            with tf.init_scope():
                acc = tf.Variable(
                    tf.fill(v.shape, tf.cast(self.initial_accumulator, v.dtype)),
                    trainable=False,
                    name=f"{v.name.split(':')[0]}_adagrad_accum",
                )
            self._accumulators[key] = acc
        return acc

    def apply(self, var: Any, indices: tf.Tensor, values: tf.Tensor, row_scale: RowScale | None = None) -> None:
        """Sparse Adagrad step on the distinct rows of indices, with repeated rows' gradients summed first."""
        v = tf_variable(var)
        acc = self.accumulator(v)
        unique, summed = deduplicate(indices, values)
        if row_scale is not None:
            self._apply_scaled(v, acc, unique, tf.cast(summed, v.dtype), row_scale.factors(unique, v.dtype))
            return
        tf.raw_ops.ResourceSparseApplyAdagradV2(
            var=v.handle,
            accum=acc.handle,
            lr=_learning_rate(self.learning_rate, v.dtype),
            epsilon=tf.cast(self.epsilon, v.dtype),
            grad=tf.cast(summed, v.dtype),
            indices=unique,
            use_locking=False,
            update_slots=True,
        )

    def _apply_scaled(
        self, v: tf.Variable, acc: tf.Variable, unique: tf.Tensor, grad: tf.Tensor, factors: tf.Tensor
    ) -> None:
        """The AdagradV2 rule on distinct rows with accum += factor·g²: the raw op has no per-row factor, so the
        accumulator is updated first and the op then applies the step without touching it (update_slots=False)."""
        factors = tf.reshape(factors, tf.concat([tf.shape(factors), tf.ones([tf.rank(grad) - 1], tf.int32)], 0))
        acc.scatter_add(tf.IndexedSlices(factors * tf.square(grad), unique))
        tf.raw_ops.ResourceSparseApplyAdagradV2(
            var=v.handle,
            accum=acc.handle,
            lr=_learning_rate(self.learning_rate, v.dtype),
            epsilon=tf.cast(self.epsilon, v.dtype),
            grad=grad,
            indices=unique,
            use_locking=False,
            update_slots=False,
        )

    def apply_dense(self, var: Any, grad: tf.Tensor) -> None:
        """Dense Adagrad step (for the tower's ordinary weights)."""
        v = tf_variable(var)
        acc = self.accumulator(v)
        tf.raw_ops.ResourceApplyAdagradV2(
            var=v.handle,
            accum=acc.handle,
            lr=_learning_rate(self.learning_rate, v.dtype),
            epsilon=tf.cast(self.epsilon, v.dtype),
            grad=tf.cast(grad, v.dtype),
            use_locking=False,
            update_slots=True,
        )


class SparseAdam(_RowSparseOptimizer):
    """Adam whose sparse path updates the moments and values of the touched rows only ("lazy" Adam).

    Dense gradients (the tower's weights) take the ordinary Adam step. A table row's moments decay only on the steps
    that touch it, which is what makes the step O(rows touched) instead of O(n); it is the usual choice for sampled
    softmax tables. Adam normalises each coordinate's step by its own gradient scale, so the Adagrad accumulator
    correction for importance-weighted tail rows (``RowScale``) does not apply and is ignored here.

    ``apply_gradients`` counts one step per call: the bias corrections use that count for every variable.
    """

    def __init__(
        self,
        learning_rate: float | tf.Variable,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
    ) -> None:
        """Keep the hyper-parameters (Keras' Adam defaults, except epsilon = 1e-8 as in the Adam paper)."""
        self.learning_rate = learning_rate
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self._slots: dict[Any, tuple[tf.Variable, tf.Variable]] = {}
        with tf.init_scope():
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="adam_iterations")

    def build(self, variables: Iterable[Any]) -> None:
        """Create the moment slots of these variables now (before the first traced step)."""
        for var in variables:
            self.moments(var)

    def moments(self, var: Any) -> tuple[tf.Variable, tf.Variable]:
        """The first and second moment slots of var (zeros, same shape), created on first request."""
        v = tf_variable(var)
        key = v.ref()
        slots = self._slots.get(key)
        if slots is None:
            base = v.name.split(":")[0]
            with tf.init_scope():
                slots = (
                    tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"{base}_adam_m"),
                    tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"{base}_adam_v"),
                )
            self._slots[key] = slots
        return slots

    def slot_variables(self, var: Any) -> dict[str, tf.Variable]:
        """The optimizer state of var by name, for checkpoints."""
        m, v = self.moments(var)
        return {"m": m, "v": v}

    def apply_gradients(
        self, grads_and_vars: Iterable[tuple[Any, Any]], row_scales: Mapping[Any, RowScale] | None = None
    ) -> None:
        """Advance the step count, then apply every gradient (row_scales are ignored: see the class docstring)."""
        self.iterations.assign_add(1)
        super().apply_gradients(grads_and_vars, None)

    def _powers(self, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
        """beta_1^t and beta_2^t at the current step t."""
        t = tf.cast(self.iterations, dtype)
        return tf.pow(tf.cast(self.beta_1, dtype), t), tf.pow(tf.cast(self.beta_2, dtype), t)

    def apply(self, var: Any, indices: tf.Tensor, values: tf.Tensor, row_scale: RowScale | None = None) -> None:
        """Adam step on the distinct rows of indices (repeated rows' gradients summed first); other rows untouched."""
        v = tf_variable(var)
        m_slot, v_slot = self.moments(v)
        unique, summed = deduplicate(indices, values)
        g = tf.cast(summed, v.dtype)
        b1, b2 = tf.cast(self.beta_1, v.dtype), tf.cast(self.beta_2, v.dtype)
        m_rows = b1 * tf.gather(m_slot, unique) + (1 - b1) * g
        v_rows = b2 * tf.gather(v_slot, unique) + (1 - b2) * tf.square(g)
        m_slot.scatter_update(tf.IndexedSlices(m_rows, unique))
        v_slot.scatter_update(tf.IndexedSlices(v_rows, unique))
        p1, p2 = self._powers(v.dtype)
        lr = _learning_rate(self.learning_rate, v.dtype) * tf.sqrt(1 - p2) / (1 - p1)
        v.scatter_sub(tf.IndexedSlices(lr * m_rows / (tf.sqrt(v_rows) + self.epsilon), unique))

    def apply_dense(self, var: Any, grad: tf.Tensor) -> None:
        """Dense Adam step (for the tower's ordinary weights)."""
        v = tf_variable(var)
        m_slot, v_slot = self.moments(v)
        p1, p2 = self._powers(v.dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=v.handle,
            m=m_slot.handle,
            v=v_slot.handle,
            beta1_power=p1,
            beta2_power=p2,
            lr=_learning_rate(self.learning_rate, v.dtype),
            beta1=tf.cast(self.beta_1, v.dtype),
            beta2=tf.cast(self.beta_2, v.dtype),
            epsilon=tf.cast(self.epsilon, v.dtype),
            grad=tf.cast(grad, v.dtype),
            use_locking=False,
        )
