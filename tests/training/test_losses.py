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
    kw = {"optimizer": "adagrad", **kw}  # the tail's RowScale is Adagrad's accumulator correction
    cfg = TrainConfig(loss="topk_random", uniform_samples=M, **kw)  # type: ignore[arg-type]
    return LossHead(cfg, N, np.ones(N), tf.random.Generator.from_seed(1))


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
    cfg = TrainConfig(loss="loguniform", optimizer="adagrad", uniform_samples=M)
    _, tail = LossHead(cfg, N, np.ones(N), tf.random.Generator.from_seed(1)).loss_and_tail(
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
    assert _head(optimizer="adam").loss_and_tail(u, V, b, y, cand, None)[1] is None  # Adam has no accumulator
    for loss in ("full", "inbatch"):
        cfg = TrainConfig(loss=loss, uniform_samples=M)
        head = LossHead(cfg, N, np.ones(N), tf.random.Generator.from_seed(1))
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
    head = LossHead(cfg, n, np.ones(n), tf.random.Generator.from_seed(3))
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


@pytest.mark.parametrize("tail_sampler", ["loguniform", "loguniform_inbatch"])
def test_weighted_tails_need_the_per_example_head(tail_sampler: str) -> None:
    with pytest.raises(ValueError, match="per_example"):
        TrainConfig(loss="topk_random", head="shared", tail_sampler=tail_sampler)


def test_mixture_tail_is_unbiased_when_the_other_labels_are_draws_from_the_label_distribution() -> None:
    # Example 0's label and head are fixed; the other B-1 labels are fresh draws from q each trial, as a shuffled
    # batch's are. E[Z_hat_0] must be example 0's exact partition function.
    n, b_size, m = 200, 12, 16
    rng = np.random.default_rng(7)
    counts = np.zeros(n)
    counts[:40] = rng.integers(1, 50, size=40)  # labels come from the first 40 videos only: q = 0 elsewhere
    q = counts / counts.sum()
    u0 = rng.normal(size=(1, 4)).astype(np.float32)
    V = tf.constant(rng.normal(size=(n, 4)).astype(np.float32))
    cand0 = np.array([[1, 2, 3]], np.int64)
    cfg = TrainConfig(loss="topk_random", uniform_samples=m, tail_sampler="loguniform_inbatch")
    head = LossHead(cfg, n, counts, tf.random.Generator.from_seed(11))
    u = tf.constant(np.repeat(u0, b_size, axis=0))
    cand = tf.constant(np.concatenate([cand0, np.full((b_size - 1, 3), -1)]).astype(np.int64))

    @tf.function
    def z_hat_0(y: tf.Tensor) -> tf.Tensor:
        t, log_w = head.mixture_tail_sample(y)
        return sm.per_example_log_partition(u, V, None, y, cand, t, None, log_w)[0][0]

    draws = []
    for _ in range(3000):
        y = np.concatenate([[5], rng.choice(n, size=b_size - 1, p=q)]).astype(np.int32)
        draws.append(np.exp(float(z_hat_0(tf.constant(y)))))
    z_hat = np.array(draws)
    exact = np.exp(u0.astype(np.float64) @ V.numpy().T.astype(np.float64)).sum()
    stderr = z_hat.std() / np.sqrt(len(z_hat))
    assert stderr > 0
    assert abs(z_hat.mean() - exact) < 4 * stderr


def test_mixture_tail_weights_follow_both_proposals() -> None:
    n, m = 300, 32
    counts = np.zeros(n)
    counts[[10, 20]] = [3.0, 1.0]
    cfg = TrainConfig(loss="topk_random", uniform_samples=m, tail_sampler="loguniform_inbatch")
    head = LossHead(cfg, n, counts, tf.random.Generator.from_seed(2))
    y = tf.constant([10, 10, 20, 10], tf.int32)
    t, log_w = (x.numpy() for x in head.mixture_tail_sample(y))
    assert np.all(np.diff(t) > 0) and {10, 20} <= set(t.tolist())  # every label is a draw
    p = np.log((t + 2.0) / (t + 1.0)) / np.log(n + 1.0)
    expected = m * p + 3 * (counts / counts.sum())[t]
    drawn = np.exp(log_w) * expected  # the count of each class among the m + B draws
    np.testing.assert_allclose(drawn, np.round(drawn), atol=1e-3)
    assert drawn[t == 10][0] >= 3 and drawn[t == 20][0] >= 1
    assert drawn.sum() == pytest.approx(m + 4, abs=1e-3)


def test_mixture_tail_rows_carry_the_chance_of_either_proposal() -> None:
    u, V, b, y, cand = _inputs()
    counts = np.ones(N)
    cfg = TrainConfig(loss="topk_random", optimizer="adagrad", uniform_samples=M, tail_sampler="loguniform_inbatch")
    head = LossHead(cfg, N, counts, tf.random.Generator.from_seed(1))
    loss, tail = head.loss_and_tail(u, V, b, y, cand, None)
    assert tail is not None and np.isfinite(float(loss))
    rows, scale = tail.rows.numpy(), tail.scale.numpy()
    assert not set(rows.tolist()) & (set(y.numpy().tolist()) | set(cand.numpy().ravel().tolist()))
    p = np.log((rows + 2.0) / (rows + 1.0)) / np.log(N + 1.0)
    np.testing.assert_allclose(scale, 1.0 - (1.0 - p) ** M * (1.0 - 1.0 / N) ** (B - 1), rtol=1e-5)


def test_label_counts_are_checked() -> None:
    cfg = TrainConfig(loss="inbatch")
    with pytest.raises(ValueError, match="label_counts"):
        LossHead(cfg, N, np.zeros(N), tf.random.Generator.from_seed(1))
    with pytest.raises(ValueError, match="label_counts"):
        LossHead(cfg, N, np.ones(N - 1), tf.random.Generator.from_seed(1))
