"""Sparse Adagrad/SGD: repeated rows summed before squaring, and rows outside the step's classes left untouched."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from recsys import softmax as sm
from recsys.sparse_optim import (
    RowScale,
    SparseAdagrad,
    SparseAdam,
    SparseSGD,
    deduplicate,
    gather_distinct,
    tf_variable,
)

LR, INIT, EPS = 0.3, 0.1, 1e-7


def _dense_adagrad(var: np.ndarray, acc: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference Adagrad step on a dense gradient, in float64."""
    acc = acc + grad**2
    return var - LR * grad / (np.sqrt(acc) + EPS), acc


def _repeated_gradient(n: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IndexedSlices-style (indices, values) with repeated rows, and the equivalent dense gradient."""
    rng = np.random.default_rng(0)
    indices = np.array([3, 7, 3, 12, 3, 7, 0])
    values = rng.normal(size=(len(indices), d)).astype(np.float32)
    dense = np.zeros((n, d), np.float64)
    np.add.at(dense, indices, values.astype(np.float64))
    return indices, values, dense


def test_deduplicate_sums_repeats() -> None:
    indices, values, dense = _repeated_gradient(20, 3)
    uniq, summed = deduplicate(tf.constant(indices), tf.constant(values))
    assert uniq.numpy().tolist() == [0, 3, 7, 12]  # ascending: the apply walks the table in address order
    np.testing.assert_allclose(summed.numpy(), dense[uniq.numpy()], rtol=1e-6)


def test_sparse_adagrad_matches_dense_reference_with_repeats() -> None:
    n, d = 20, 4
    init = np.random.default_rng(1).normal(size=(n, d)).astype(np.float32)
    indices, values, dense = _repeated_gradient(n, d)
    var = tf.Variable(init)
    opt = SparseAdagrad(LR, initial_accumulator=INIT, epsilon=EPS)
    ref_v, ref_a = init.astype(np.float64), np.full((n, d), INIT)
    for _ in range(3):  # several steps so the accumulator history matters
        opt.apply(var, tf.constant(indices), tf.constant(values))
        ref_v, ref_a = _dense_adagrad(ref_v, ref_a, dense)
    np.testing.assert_allclose(var.numpy(), ref_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.accumulator(var).numpy(), ref_a, rtol=1e-5)
    untouched = np.setdiff1d(np.arange(n), indices)
    assert np.array_equal(var.numpy()[untouched], init[untouched])
    assert np.array_equal(opt.accumulator(var).numpy()[untouched], np.full((len(untouched), d), np.float32(INIT)))


def test_naive_sparse_apply_is_wrong_with_repeats() -> None:
    # The same raw op fed the repeated slices directly squares them separately: the reference above tells them apart.
    n, d = 20, 4
    indices, values, dense = _repeated_gradient(n, d)
    var = tf.Variable(tf.zeros([n, d]))
    acc = tf.Variable(tf.fill([n, d], INIT))
    tf.raw_ops.ResourceSparseApplyAdagradV2(
        var=var.handle,
        accum=acc.handle,
        lr=tf.constant(LR),
        epsilon=tf.constant(EPS),
        grad=tf.constant(values),
        indices=tf.constant(indices),
    )
    _, ref_a = _dense_adagrad(np.zeros((n, d)), np.full((n, d), INIT), dense)
    assert not np.allclose(acc.numpy()[3], ref_a[3], rtol=1e-3)


def test_sparse_adagrad_bias_vector_and_tf_function() -> None:
    n = 10
    b = tf.Variable(tf.zeros([n]))
    opt = SparseAdagrad(LR, initial_accumulator=INIT, epsilon=EPS)
    opt.build([b])

    @tf.function
    def step(idx: tf.Tensor, vals: tf.Tensor) -> None:
        opt.apply(b, idx, vals)

    step(tf.constant([1, 1, 4]), tf.constant([0.5, 0.25, -1.0]))
    step(tf.constant([4, 2]), tf.constant([1.0, 2.0]))  # different shape: a second trace must not add slots
    ref_v, ref_a = np.zeros(n), np.full(n, INIT)
    for g in ({1: 0.75, 4: -1.0}, {4: 1.0, 2: 2.0}):
        dense = np.zeros(n)
        for k, v in g.items():
            dense[k] = v
        ref_v, ref_a = _dense_adagrad(ref_v, ref_a, dense)
    np.testing.assert_allclose(b.numpy(), ref_v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(opt.accumulator(b).numpy(), ref_a, rtol=1e-5)


def test_sparse_sgd_matches_reference() -> None:
    n, d = 20, 4
    init = np.random.default_rng(2).normal(size=(n, d)).astype(np.float32)
    indices, values, dense = _repeated_gradient(n, d)
    var = tf.Variable(init)
    SparseSGD(LR).apply(var, tf.constant(indices), tf.constant(values))
    np.testing.assert_allclose(var.numpy(), init - LR * dense, rtol=1e-5, atol=1e-6)


def test_dense_path_and_keras_variable() -> None:
    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    kernel = layer.kernel
    before = tf_variable(kernel).numpy().copy()
    grad = np.ones((2, 3), np.float32)
    opt = SparseAdagrad(LR, initial_accumulator=INIT, epsilon=EPS)
    opt.apply_gradients([(tf.constant(grad), kernel), (None, layer.bias)])
    ref_v, _ = _dense_adagrad(before.astype(np.float64), np.full((2, 3), INIT), grad.astype(np.float64))
    np.testing.assert_allclose(tf_variable(kernel).numpy(), ref_v, rtol=1e-5)
    with pytest.raises(TypeError):
        tf_variable(np.zeros(3))


def test_step_touches_only_sampled_rows() -> None:
    n, d, batch = 3000, 16, 32
    rng = np.random.default_rng(3)
    V = tf.Variable(rng.normal(size=(n, d)).astype(np.float32))
    b = tf.Variable(rng.normal(size=(n,)).astype(np.float32))
    u = tf.constant(rng.normal(size=(batch, d)).astype(np.float32))
    y = tf.constant(rng.integers(0, n, batch), tf.int64)
    cand = tf.constant(rng.integers(0, 200, (batch, 8)), tf.int64)  # heavy overlap: many repeated rows
    V0, b0 = V.numpy().copy(), b.numpy().copy()
    opt = SparseAdagrad(0.1)
    opt.build([V, b])
    sample = sm.sample_classes(y, cand, n, 64, tf.random.Generator.from_seed(0))
    with tf.GradientTape() as tape:
        loss = sm.sampled_softmax_from_sample(u, V, b, y, sample)
    grads = tape.gradient(loss, [V, b])
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)
    opt.apply_gradients(zip(grads, [V, b], strict=True))

    touched = np.zeros(n, bool)
    touched[sample.indices.numpy()] = True
    assert touched[y.numpy()].all()
    outside = ~touched
    assert np.array_equal(V.numpy()[outside], V0[outside])
    assert np.array_equal(b.numpy()[outside], b0[outside])
    assert np.array_equal(opt.accumulator(V).numpy()[outside], np.full((outside.sum(), d), np.float32(0.1)))
    assert np.array_equal(opt.accumulator(b).numpy()[outside], np.full(outside.sum(), np.float32(0.1)))
    # And the step did move the sampled rows.
    assert (np.abs(V.numpy()[touched] - V0[touched]).sum(axis=1) > 0).mean() > 0.99


def test_row_scale_factors_hit_only_listed_rows() -> None:
    scale = RowScale(tf.constant([2, 5, 9], tf.int64), tf.constant(0.25))
    got = scale.factors(tf.constant([0, 2, 5, 7, 9, 11], tf.int64), tf.float32).numpy()
    assert got.tolist() == [1.0, 0.25, 0.25, 1.0, 0.25, 1.0]
    per_row = RowScale(tf.constant([1, 4], tf.int64), tf.constant([0.5, 0.125]))
    assert per_row.factors(tf.constant([1, 3, 4], tf.int64), tf.float32).numpy().tolist() == [0.5, 1.0, 0.125]
    empty = RowScale(tf.zeros([0], tf.int64), tf.constant(0.25))
    assert empty.factors(tf.constant([0, 3], tf.int64), tf.float32).numpy().tolist() == [1.0, 1.0]


def test_scaled_adagrad_weighs_only_the_listed_rows_accumulators() -> None:
    n, d, q = 20, 4, 0.25
    init = np.random.default_rng(2).normal(size=(n, d)).astype(np.float32)
    indices, values, dense = _repeated_gradient(n, d)  # rows 0, 3, 7, 12
    var = tf.Variable(init)
    opt = SparseAdagrad(LR, initial_accumulator=INIT, epsilon=EPS)
    tail = RowScale(tf.constant([7, 12, 15], tf.int64), tf.constant(q))  # 15 is listed but gets no gradient
    ref_v, ref_a = init.astype(np.float64), np.full((n, d), INIT)
    factor = np.ones((n, 1))
    factor[[7, 12, 15]] = q
    for _ in range(3):
        opt.apply(var, tf.constant(indices), tf.constant(values), tail)
        ref_a = ref_a + factor * dense**2
        ref_v = ref_v - LR * dense / (np.sqrt(ref_a) + EPS)
    np.testing.assert_allclose(opt.accumulator(var).numpy(), ref_a, rtol=1e-5)
    np.testing.assert_allclose(var.numpy(), ref_v, rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(n), indices)
    assert np.array_equal(var.numpy()[untouched], init[untouched])
    assert np.array_equal(opt.accumulator(var).numpy()[untouched], np.full((len(untouched), d), np.float32(INIT)))


def test_scaled_adagrad_with_unit_factors_equals_the_raw_op() -> None:
    n, d = 20, 4
    init = np.random.default_rng(3).normal(size=(n, d)).astype(np.float32)
    indices, values, _ = _repeated_gradient(n, d)
    plain, scaled = tf.Variable(init), tf.Variable(init)
    opt_plain, opt_scaled = SparseAdagrad(LR), SparseAdagrad(LR)
    ones = RowScale(tf.constant([0, 3, 7, 12], tf.int64), tf.constant(1.0))
    for _ in range(3):
        opt_plain.apply(plain, tf.constant(indices), tf.constant(values))
        opt_scaled.apply(scaled, tf.constant(indices), tf.constant(values), ones)
    np.testing.assert_allclose(scaled.numpy(), plain.numpy(), rtol=1e-6, atol=1e-7)


def test_tail_correction_restores_the_exact_gradients_expected_accumulator() -> None:
    # A row sampled with probability q and given (1/q)·g when drawn: over many steps its accumulator grows by g²/q
    # per step uncorrected, and by g² (what the exact gradient g every step adds) with the q-factor.
    q, steps, g = 0.2, 4000, 0.5
    drawn = np.random.default_rng(4).random(steps) < q
    growth = {}
    for name, scale in (("raw", None), ("corrected", RowScale(tf.constant([0], tf.int64), tf.constant(q)))):
        var = tf.Variable(tf.zeros([1, 1]))
        opt = SparseAdagrad(1e-6, initial_accumulator=0.0)
        for hit in drawn:
            if hit:
                opt.apply(var, tf.constant([0]), tf.constant([[g / q]]), scale)
        growth[name] = float(opt.accumulator(var).numpy()[0, 0]) / steps
    exact = g * g
    assert abs(growth["corrected"] - exact) < 0.1 * exact
    assert abs(growth["raw"] - exact / q) < 0.1 * exact / q


def test_gather_distinct_equals_gather_with_one_gradient_slice_per_row():
    table = tf.Variable(np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    ids = tf.constant([[3, 7, 3], [7, 7, 9]], tf.int64)
    weights = tf.constant(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    with tf.GradientTape(persistent=True) as tape:
        distinct = tf.reduce_sum(gather_distinct(table, ids) * weights)
        plain = tf.reduce_sum(tf.gather(table, ids) * weights)
    np.testing.assert_allclose(distinct.numpy(), plain.numpy(), rtol=1e-6)
    grad = tape.gradient(distinct, table)
    reference = tf.convert_to_tensor(tape.gradient(plain, table))
    assert sorted(grad.indices.numpy().tolist()) == [3, 7, 9]  # the plain gather's gradient has 6 slices
    np.testing.assert_allclose(tf.convert_to_tensor(grad).numpy(), reference.numpy(), rtol=1e-6)


def _adam_reference(
    var: np.ndarray, m: np.ndarray, v: np.ndarray, grad: np.ndarray, t: int, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lazy Adam in float64: the listed rows take the Adam step at step t, every other row keeps its state."""
    b1, b2, lr, eps = 0.9, 0.999, 0.01, 1e-8
    var, m, v = var.copy(), m.copy(), v.copy()
    m[rows] = b1 * m[rows] + (1 - b1) * grad[rows]
    v[rows] = b2 * v[rows] + (1 - b2) * grad[rows] ** 2
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    var[rows] -= step * m[rows] / (np.sqrt(v[rows]) + eps)
    return var, m, v


def test_sparse_adam_matches_lazy_reference_with_repeats() -> None:
    n, d = 20, 4
    init = np.random.default_rng(2).normal(size=(n, d)).astype(np.float32)
    indices, values, dense = _repeated_gradient(n, d)
    rows = np.unique(indices)
    var = tf.Variable(init)
    opt = SparseAdam(0.01)
    opt.build([var])
    ref = (init.astype(np.float64), np.zeros((n, d)), np.zeros((n, d)))
    for t in range(1, 4):
        opt.apply_gradients([(tf.IndexedSlices(tf.constant(values), tf.constant(indices)), var)])
        ref = _adam_reference(*ref, dense, t, rows)
    np.testing.assert_allclose(var.numpy(), ref[0], rtol=1e-5, atol=1e-6)
    m, v = opt.moments(var)
    np.testing.assert_allclose(v.numpy(), ref[2], rtol=1e-4, atol=1e-9)  # (g1+g2)^2, not g1^2+g2^2, for a repeat
    untouched = np.setdiff1d(np.arange(n), indices)
    assert np.array_equal(var.numpy()[untouched], init[untouched])
    assert not m.numpy()[untouched].any()


def test_sparse_adam_dense_path_matches_keras_adam() -> None:
    init = np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32)
    grads = [np.random.default_rng(10 + i).normal(size=(5, 3)).astype(np.float32) for i in range(3)]
    ours, theirs = tf.Variable(init), keras.Variable(init)
    opt, reference = SparseAdam(0.01, epsilon=1e-7), keras.optimizers.Adam(0.01, epsilon=1e-7)
    for g in grads:
        opt.apply_gradients([(tf.constant(g), ours)])
        reference.apply_gradients([(tf.constant(g), theirs)])
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-4, atol=1e-6)
    assert int(opt.iterations.numpy()) == 3
