"""The loss head's tail accumulator scale: which rows it covers and with what inclusion probability."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsys import softmax as sm
from recsys.config import TrainConfig
from training.losses import LossHead

N, D, B, M = 500, 8, 16, 64


def _inputs() -> tuple[tf.Tensor, tf.Variable, tf.Variable, tf.Tensor, tf.Tensor]:
    rng = np.random.default_rng(0)
    u = tf.constant(rng.normal(size=(B, D)).astype(np.float32))
    V = tf.Variable(rng.normal(size=(N, D)).astype(np.float32))
    b = tf.Variable(tf.zeros([N]))
    y = tf.constant(rng.integers(0, N, size=B).astype(np.int32))
    cand = tf.constant(rng.integers(0, N, size=(B, 5)).astype(np.int64))
    return u, V, b, y, cand


def _head(**kw: object) -> LossHead:
    cfg = TrainConfig(loss="topk_random", uniform_samples=M, **kw)  # type: ignore[arg-type]
    return LossHead(cfg, N, np.full(N, -np.log(N)), tf.random.Generator.from_seed(1))


@pytest.mark.parametrize("head", ["shared", "per_example"])
def test_tail_rows_are_the_uniform_draws_outside_every_head(head: str) -> None:
    u, V, b, y, cand = _inputs()
    loss, tail = _head(head=head, tail_sampler="uniform").loss_and_tail(u, V, b, y, cand, None)
    assert tail is not None and np.isfinite(float(loss))
    rows = tail.rows.numpy()
    heads = set(y.numpy().tolist()) | set(cand.numpy().ravel().tolist())
    assert np.all(np.diff(rows) > 0)  # sorted and distinct, as RowScale requires
    assert not heads & set(rows.tolist())
    if head == "shared":
        assert len(rows) == M  # T is drawn from the complement of S: nothing to remove
        assert float(tail.scale) == pytest.approx(M / (N - len(heads)))
    else:
        assert M - len(heads) <= len(rows) < M  # T is drawn from all n: the heads' members are removed
        assert float(tail.scale) == pytest.approx(M / N)


def test_loguniform_tail_rows_carry_each_draws_inclusion_probability() -> None:
    u, V, b, y, cand = _inputs()
    cfg = TrainConfig(loss="loguniform", uniform_samples=M)
    _, tail = LossHead(cfg, N, np.full(N, -np.log(N)), tf.random.Generator.from_seed(1)).loss_and_tail(
        u, V, b, y, cand[:, :0], None
    )
    assert tail is not None
    rows, q = tail.rows.numpy(), tail.scale.numpy()
    assert len(rows) > 0 and np.all(np.diff(rows) > 0)
    assert not set(rows.tolist()) & set(y.numpy().tolist())
    # P(class c drawn at least once in M log-uniform draws), computed independently of the implementation.
    p = np.log((rows + 2.0) / (rows + 1.0)) / np.log(N + 1.0)
    np.testing.assert_allclose(q, 1.0 - (1.0 - p) ** M, rtol=1e-5)
    assert np.all((q > 0) & (q <= 1)) and q[0] >= q[-1]  # low ids (popular) are drawn more often


def test_tail_scale_is_off_for_exact_losses_and_when_disabled() -> None:
    u, V, b, y, cand = _inputs()
    assert _head(tail_accumulator_correction=False).loss_and_tail(u, V, b, y, cand, None)[1] is None
    for loss in ("full", "inbatch"):
        cfg = TrainConfig(loss=loss, uniform_samples=M)
        head = LossHead(cfg, N, np.full(N, -np.log(N)), tf.random.Generator.from_seed(1))
        assert head.loss_and_tail(u, V, b, y, cand[:, :0], None)[1] is None


def test_loguniform_tail_is_unbiased_for_each_examples_tail_sum() -> None:
    # E[Z_hat_i] = Z_i for every example: Monte-Carlo mean within 4 standard errors of the exact partition function.
    n, b_size, m = 300, 3, 64
    rng = np.random.default_rng(5)
    u = tf.constant(rng.normal(size=(b_size, 4)).astype(np.float32))
    V = tf.constant(rng.normal(size=(n, 4)).astype(np.float32))
    y = tf.constant([5, 17, 250], tf.int32)
    cand = tf.constant([[1, 2, 3], [4, -1, 17], [9, 10, 11]], tf.int64)
    cfg = TrainConfig(loss="topk_random", uniform_samples=m, tail_sampler="loguniform")
    head = LossHead(cfg, n, np.full(n, -np.log(n)), tf.random.Generator.from_seed(3))
    draws = []
    for _ in range(2000):
        t, log_w = head.loguniform_tail_sample(y)
        log_z_hat, _ = sm.per_example_log_partition(u, V, None, y, cand, t, None, log_w)
        draws.append(np.exp(log_z_hat.numpy().astype(np.float64)))
    z_hat = np.array(draws)
    exact = np.exp(u.numpy().astype(np.float64) @ V.numpy().T.astype(np.float64)).sum(axis=1)
    stderr = z_hat.std(axis=0) / np.sqrt(len(z_hat))
    assert np.all(stderr > 0)
    assert np.all(np.abs(z_hat.mean(axis=0) - exact) < 4 * stderr)


def test_loguniform_tail_needs_the_per_example_head() -> None:
    with pytest.raises(ValueError, match="per_example"):
        TrainConfig(loss="topk_random", head="shared", tail_sampler="loguniform")
