"""Tests of the softmax losses, above all the top-K-plus-random estimator's unbiasedness and bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys import softmax as sm
from recsys.sparse_optim import SparseAdagrad


def _chi2_critical(dof: int, z: float = 3.72) -> float:
    """Upper chi-square quantile by Wilson-Hilferty (z = 3.72 is p ≈ 1e-4)."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def _problem(n: int, d: int, batch: int, seed: int, scale: float = 1.0):
    """Random u, V (variable), b (variable) and labels."""
    rng = np.random.default_rng(seed)
    u = tf.constant(rng.normal(size=(batch, d)).astype(np.float32) * scale)
    V = tf.Variable(rng.normal(size=(n, d)).astype(np.float32) * scale)
    b = tf.Variable(rng.normal(size=(n,)).astype(np.float32))
    y = tf.constant(rng.integers(0, n, size=batch), tf.int64)
    return u, V, b, y


def _dense(g: tf.Tensor | tf.IndexedSlices) -> np.ndarray:
    """A gradient as a dense array (IndexedSlices are summed over repeated rows)."""
    return tf.convert_to_tensor(g).numpy()


# ----------------------------------------------------------------------------- unbiasedness


def _z_hat_draws(n_draws: int, n: int, s_size: int, m: int, weight: str = "correct"):
    """Exact Z and n_draws Monte-Carlo Z_hat for one example with a fixed S (top logits + random classes)."""
    u, V, b, _ = _problem(n, 8, 1, seed=3, scale=0.6)
    logits = (tf.matmul(u, V, transpose_b=True) + b).numpy()[0].astype(np.float64)
    order = np.argsort(-logits)
    rng = np.random.default_rng(4)
    head = np.concatenate([order[: s_size // 2], rng.choice(order[s_size // 2 :], s_size - s_size // 2, False)])
    y = tf.constant([head[0]], tf.int64)
    cand = tf.constant(head[None, :], tf.int64)
    gen = tf.random.Generator.from_seed(11)

    @tf.function
    def draw() -> tf.Tensor:
        sample = sm.sample_classes(y, cand, n, m, gen)
        if weight == "n_over_m":  # the wrong weight a naive implementation might use, for the power check
            sample = sm.ClassSample(
                sample.s, sample.t, sample.label_pos, tf.math.log(float(n) / tf.cast(tf.size(sample.t), tf.float32))
            )
        log_z_hat, _ = sm.sampled_log_partition(u, V, b, y, sample)
        return log_z_hat[0]

    draws = np.exp(np.array([float(draw()) for _ in range(n_draws)], dtype=np.float64))
    return float(np.exp(logits).sum()), draws


@pytest.mark.parametrize("m", [20, 700])  # 700 ~ the complement size: few distinct draws, smaller |T|
def test_z_hat_is_unbiased(m: int) -> None:
    z, draws = _z_hat_draws(3000, 1000, 200, m)
    se = draws.std(ddof=1) / math.sqrt(len(draws))
    assert se > 0
    assert abs(draws.mean() - z) < 4 * se + 1e-9 * z, (draws.mean(), z, se)


def test_unbiasedness_check_has_power() -> None:
    # The same check rejects the weight n/m (ignoring that S is taken out): the test above can fail.
    z, draws = _z_hat_draws(3000, 1000, 200, 20, weight="n_over_m")
    se = draws.std(ddof=1) / math.sqrt(len(draws))
    assert abs(draws.mean() - z) > 4 * se


# ----------------------------------------------------------------------------- exactness when S covers all


@pytest.mark.parametrize("n_uniform", [0, 16])
def test_full_cover_equals_full_softmax(n_uniform: int) -> None:
    n, d, batch = 300, 12, 9
    u, V, b, y = _problem(n, d, batch, seed=0)
    cand = tf.tile(tf.range(n, dtype=tf.int64)[None, :], [batch, 1])
    gen = tf.random.Generator.from_seed(0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(u)
        ref = sm.full_softmax_loss(u, V, b, y)
        est = sm.topk_random_loss(u, V, b, y, cand, n_uniform, gen)
    np.testing.assert_allclose(est.numpy(), ref.numpy(), rtol=1e-6)
    for var in (u, V, b):
        g_ref = _dense(tape.gradient(ref, var))
        g_est = _dense(tape.gradient(est, var))
        np.testing.assert_allclose(g_est, g_ref, rtol=1e-5, atol=1e-7)


def test_sampled_gradient_is_sparse() -> None:
    u, V, b, y = _problem(500, 8, 4, seed=1)
    cand = tf.constant([[1, 2, 3]] * 4, tf.int64)
    sample = sm.sample_classes(y, cand, 500, 10, tf.random.Generator.from_seed(0))
    with tf.GradientTape() as tape:
        loss = sm.sampled_softmax_from_sample(u, V, b, y, sample)
    gV, gb = tape.gradient(loss, [V, b])
    assert isinstance(gV, tf.IndexedSlices) and isinstance(gb, tf.IndexedSlices)
    assert set(gV.indices.numpy()) == set(sample.indices.numpy())


# ----------------------------------------------------------------------------- S and T bookkeeping


def _hand_loss(logits: np.ndarray, y: np.ndarray, s: list[int], t: list[int], n: int) -> float:
    """The estimator written out in float64 from explicit S and T lists."""
    losses = []
    for i in range(len(y)):
        terms = [math.exp(logits[i, j]) for j in s]
        if t:
            w = (n - len(s)) / len(t)
            terms += [w * math.exp(logits[i, j]) for j in t]
        losses.append(math.log(sum(terms)) - logits[i, y[i]])
    return float(np.mean(losses))


def test_label_in_s_exactly_once() -> None:
    n = 40
    u, V, b, _ = _problem(n, 6, 3, seed=2)
    y = np.array([3, 3, 5])
    # The labels also appear among the candidates, several times, and -1 padding is ignored.
    cand = np.array([[3, 3, 5, 9], [5, 3, -1, -1], [3, 9, 9, 5]])
    logits = (tf.matmul(u, V, transpose_b=True) + b).numpy().astype(np.float64)
    sample = sm.sample_classes(tf.constant(y), tf.constant(cand), n, 0)
    assert sample.s.numpy().tolist() == [3, 5, 9]
    assert sample.t.numpy().size == 0
    got = sm.sampled_softmax_from_sample(u, V, b, tf.constant(y), sample)
    np.testing.assert_allclose(got.numpy(), _hand_loss(logits, y, [3, 5, 9], [], n), rtol=1e-6)

    gen = tf.random.Generator.from_seed(5)
    sample = sm.sample_classes(tf.constant(y), tf.constant(cand), n, 7, gen)
    t = sample.t.numpy().tolist()
    assert len(t) == 7 and not set(t) & {3, 5, 9}
    got = sm.sampled_softmax_from_sample(u, V, b, tf.constant(y), sample)
    np.testing.assert_allclose(got.numpy(), _hand_loss(logits, y, [3, 5, 9], t, n), rtol=1e-6)
    # What double-counting the duplicated label would give: different, so the check above has teeth.
    assert abs(_hand_loss(logits, y, [3, 3, 5, 9], t, n) - got.numpy()) > 1e-3


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    data=st.data(),
    m=st.integers(0, 60),
    seed=st.integers(0, 2**31 - 1),
)
def test_t_never_touches_s(n: int, data: st.DataObject, m: int, seed: int) -> None:
    labels = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8))
    extra = data.draw(st.lists(st.integers(-1, n - 1), min_size=0, max_size=30))
    y = tf.constant(labels, tf.int64)
    cand = tf.constant(np.resize(np.array(extra + labels), (len(labels), len(extra) + len(labels))), tf.int64)
    sample = sm.sample_classes(y, cand, n, m, tf.random.Generator.from_seed(seed))
    s = sample.s.numpy()
    t = sample.t.numpy()
    head = set(labels) | {c for c in extra if c >= 0}
    assert s.tolist() == sorted(head)
    assert not set(t.tolist()) & set(s.tolist())
    assert len(set(t.tolist())) == len(t)
    assert all(0 <= j < n for j in t)
    c = n - len(s)
    if m == 0:
        assert len(t) == 0
    elif c <= m:
        assert sorted(t.tolist()) == sorted(set(range(n)) - head)  # small complement: taken whole
    else:
        assert 0 < len(t) <= m
    np.testing.assert_array_equal(s[sample.label_pos.numpy()], labels)


@pytest.mark.parametrize("m", [5, 30])  # 30 of a 40-class complement exercises the oversample-and-dedupe path
def test_t_uniform_over_complement(m: int) -> None:
    n = 60
    head = np.arange(0, 60, 3)  # 20 classes in S
    y = tf.constant(head[:2], tf.int64)
    cand = tf.constant(np.tile(head, (2, 1)), tf.int64)
    gen = tf.random.Generator.from_seed(7)

    @tf.function
    def draw() -> tf.Tensor:
        return sm.sample_classes(y, cand, n, m, gen).t

    counts = np.zeros(n)
    for _ in range(3000):
        np.add.at(counts, draw().numpy(), 1)
    assert counts[head].sum() == 0
    comp = np.setdiff1d(np.arange(n), head)
    obs = counts[comp]
    expected = obs.sum() / len(comp)
    chi2 = float(((obs - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_critical(len(comp) - 1), chi2
    # Power: a sampler that favoured low ids (e.g. a clipped draw) would fail the same check.
    skewed = obs + np.linspace(0.15, -0.15, len(comp)) * expected
    assert float(((skewed - expected) ** 2 / expected).sum()) > _chi2_critical(len(comp) - 1)


def test_label_never_in_t_accidental_hit() -> None:
    # A small n and a big m: T covers half of the complement, so a hit of y in T would be frequent.
    n, m = 60, 25
    u, V, b, _ = _problem(n, 4, 4, seed=9)
    gen = tf.random.Generator.from_seed(1)
    logits = (tf.matmul(u, V, transpose_b=True) + b).numpy().astype(np.float64)
    for trial in range(50):
        y_np = np.random.default_rng(trial).integers(0, n, 4)
        cand = tf.constant(np.random.default_rng(100 + trial).integers(-1, n, (4, 2)), tf.int64)
        y = tf.constant(y_np, tf.int64)
        sample = sm.sample_classes(y, cand, n, m, gen)
        t = set(sample.t.numpy().tolist())
        assert len(t) == m and not t & set(y_np.tolist())
        assert (sample.label_pos.numpy() < sample.s.numpy().size).all()
        got = sm.sampled_softmax_from_sample(u, V, b, y, sample).numpy()
        s_list = sample.s.numpy().tolist()
        np.testing.assert_allclose(got, _hand_loss(logits, y_np, s_list, sorted(t), n), rtol=1e-5)
    # What a hit would cost: y counted once more, in T, with weight (n-|S|)/|T| - the loss would drop.
    s_wo = [j for j in s_list if j != y_np[0]]
    hit = _hand_loss(logits[:1], y_np[:1], s_wo, sorted(t | {int(y_np[0])}), n)
    assert abs(hit - _hand_loss(logits[:1], y_np[:1], s_list, sorted(t), n)) > 1e-4


def test_exclude_history() -> None:
    n, batch = 50, 3
    u, V, b, _ = _problem(n, 6, batch, seed=4)
    y = tf.constant([1, 2, 3], tf.int64)
    history = tf.constant([[4, 5, 1, -1], [7, -1, -1, -1], [3, 8, 9, 10]], tf.int64)  # row 0 holds its own label
    full = tf.tile(tf.range(n, dtype=tf.int64)[None, :], [batch, 1])
    got = sm.topk_random_loss(u, V, b, y, full, 0, exclude=history).numpy()
    ref = sm.full_softmax_loss(u, V, b, y, exclude=history).numpy()
    logits = (tf.matmul(u, V, transpose_b=True) + b).numpy().astype(np.float64)
    hand = []
    for i, excl in enumerate([{4, 5}, {7}, {8, 9, 10}]):
        keep = [j for j in range(n) if j not in excl]
        hand.append(math.log(np.exp(logits[i, keep]).sum()) - logits[i, int(y[i])])
    np.testing.assert_allclose(ref, np.mean(hand), rtol=1e-6)
    np.testing.assert_allclose(got, np.mean(hand), rtol=1e-6)
    # Excluded classes drawn into T are masked too: the estimate stays unbiased for the excluded Z.
    gen = tf.random.Generator.from_seed(3)
    cand = tf.constant([[0, 11]] * batch, tf.int64)
    sample = sm.sample_classes(y, cand, n, n, gen)  # T = the whole complement, weight 1
    est = sm.sampled_softmax_from_sample(u, V, b, y, sample, exclude=history).numpy()
    np.testing.assert_allclose(est, np.mean(hand), rtol=1e-6)


def test_diagnostics() -> None:
    n = 400
    u, V, b, y = _problem(n, 8, 16, seed=6)
    everything = tf.range(n, dtype=tf.int64)
    exact = sm.estimator_diagnostics(u, V, b, y, everything, 32, tf.random.Generator.from_seed(0))
    assert exact["s_share"] == pytest.approx(1.0, abs=1e-5)
    assert exact["abs_log_z_error"] < 1e-5
    assert exact["grad_cosine"] == pytest.approx(1.0, abs=1e-4)
    logits = tf.matmul(u, V, transpose_b=True) + b
    top = tf.math.top_k(logits, 20).indices
    est = sm.estimator_diagnostics(u, V, b, y, top, 64, tf.random.Generator.from_seed(0))
    assert 0.0 < est["s_share"] < 1.0
    assert est["abs_log_z_error"] > 0
    assert -1.0 <= est["grad_cosine"] <= 1.0
    # S holds the top-20 of each example: it captures more of Z than the labels alone do.
    labels_only = sm.estimator_diagnostics(u, V, b, y, tf.zeros([0], tf.int64), 64, tf.random.Generator.from_seed(0))
    assert est["s_share"] > labels_only["s_share"]
    assert est["grad_cosine"] > labels_only["grad_cosine"]
    per_row = sm.estimator_diagnostics(u, V, b, y, top, 64, tf.random.Generator.from_seed(0), per_example=True)
    assert 20.0 <= per_row["s_size"] <= 21.0
    assert 0.0 < per_row["s_share"] < est["s_share"]  # the shared head holds every row's top-20, and more


# ----------------------------------------------------------------------------- per-example head variant


def test_per_example_z_hat_is_unbiased() -> None:
    n, m = 1000, 40
    u, V, b, _ = _problem(n, 8, 3, seed=12, scale=0.6)
    logits = (tf.matmul(u, V, transpose_b=True) + b).numpy().astype(np.float64)
    heads = np.argsort(-logits, axis=1)[:, :150]  # a different head per row
    y = tf.constant(heads[:, 0])
    cand = np.concatenate([heads[:, 1:], -np.ones((3, 5), np.int64)], axis=1)  # with padding
    cand[:, -1] = heads[:, 0]  # and a copy of the label
    cand = tf.constant(cand)
    gen = tf.random.Generator.from_seed(13)

    @tf.function
    def draw() -> tf.Tensor:
        t = sm.sample_complement(tf.zeros([0], tf.int64), n, m, gen)
        return sm.per_example_log_partition(u, V, b, y, cand, t)[0]

    draws = np.exp(np.stack([draw().numpy() for _ in range(3000)]).astype(np.float64))  # [draws, B]
    z = np.exp(logits).sum(axis=1)
    se = draws.std(axis=0, ddof=1) / math.sqrt(len(draws))
    assert (np.abs(draws.mean(axis=0) - z) < 4 * se).all(), (draws.mean(axis=0), z, se)
    # Counting drawn head members a second time would be biased upwards and is caught by the same check.
    head_mass = np.exp(np.take_along_axis(logits, heads, axis=1)).sum(axis=1)
    assert (draws.mean(axis=0) + head_mass * m / n - z > 4 * se).all()


@pytest.mark.parametrize("mode", ["all_candidates", "all_uniform"])
def test_per_example_exact_when_covering_everything(mode: str) -> None:
    n, d, batch = 200, 10, 7
    u, V, b, y = _problem(n, d, batch, seed=14)
    if mode == "all_candidates":
        cand, m = tf.tile(tf.range(n, dtype=tf.int64)[None, :], [batch, 1]), 30
    else:  # a small head, and T = every class with weight 1: head members must not count twice
        cand, m = tf.constant(np.random.default_rng(0).integers(-1, n, (batch, 6))), n
    gen = tf.random.Generator.from_seed(0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(u)
        ref = sm.full_softmax_loss(u, V, b, y)
        est = sm.topk_random_loss_per_example(u, V, b, y, cand, m, gen)
    np.testing.assert_allclose(est.numpy(), ref.numpy(), rtol=1e-6)
    for var in (u, V, b):
        np.testing.assert_allclose(
            _dense(tape.gradient(est, var)), _dense(tape.gradient(ref, var)), rtol=1e-5, atol=1e-7
        )


def test_per_example_hand_computation() -> None:
    n = 40
    u, V, b, _ = _problem(n, 6, 2, seed=15)
    y = np.array([3, 8])
    cand = np.array([[3, 5, 5, -1], [9, 9, 3, 8]])
    t = np.array([5, 8, 20, 21])
    history = np.array([[20, -1], [8, 21]])  # row 1's own label is in its history: it stays
    logits = (tf.matmul(u, V, transpose_b=True) + b).numpy().astype(np.float64)
    log_z_hat, lab = sm.per_example_log_partition(u, V, b, y, cand, tf.constant(t), exclude=history)
    w = n / len(t)
    z0 = sum(math.exp(logits[0, j]) for j in (3, 5)) + w * sum(math.exp(logits[0, j]) for j in (8, 21))
    z1 = sum(math.exp(logits[1, j]) for j in (8, 9, 3)) + w * sum(math.exp(logits[1, j]) for j in (5, 20))
    np.testing.assert_allclose(log_z_hat.numpy(), [math.log(z0), math.log(z1)], rtol=1e-6)
    np.testing.assert_allclose(lab.numpy(), [logits[0, 3], logits[1, 8]], rtol=1e-6)


# ----------------------------------------------------------------------------- baselines


def test_inbatch_logq_sign_gradient() -> None:
    # All scores equal (u = 0, b = 0): item 0 is popular (half the batch), the others rare.
    n, d = 10, 4
    y = tf.constant([0, 0, 0, 0, 1, 2, 3, 4], tf.int64)
    log_q_item = np.log(np.array([0.5] + [0.05] * 9, np.float32))
    log_q = tf.constant(log_q_item[y.numpy()])
    u = tf.zeros([8, d])
    V = tf.Variable(tf.zeros([n, d]))

    def grad_b0(lq: tf.Tensor) -> float:
        b = tf.Variable(tf.zeros([n]))
        with tf.GradientTape() as tape:
            loss = sm.inbatch_softmax_loss(u, V, b, y, lq)
        return float(_dense(tape.gradient(loss, b))[0])

    uncorrected = grad_b0(tf.zeros([8]))
    corrected = grad_b0(log_q)
    flipped = grad_b0(-log_q)
    # Uncorrected in-batch over-penalises the popular item (it is a negative in every other row); subtracting
    # log q lowers its negative columns' weight, so gradient descent pushes its score down less.
    assert corrected < uncorrected < flipped


def test_inbatch_logq_recovers_popularity() -> None:
    # Bias-only model (u = 0): the in-batch optimum is b_j = log p_j - log q_j + const, so with the correction the
    # learned biases track log popularity, without it they are flat, and with the sign flipped they anti-track it.
    n, batch = 20, 32
    p = 1.0 / np.arange(1, n + 1) ** 0.7
    p /= p.sum()
    slopes = {}
    for mode in ("corrected", "uncorrected", "flipped"):
        rng = np.random.default_rng(0)
        b = tf.Variable(tf.zeros([n]))
        V = tf.Variable(tf.zeros([n, 2]))
        opt = SparseAdagrad(0.2)
        sign = {"corrected": 1.0, "uncorrected": 0.0, "flipped": -1.0}[mode]

        @tf.function
        def step(y: tf.Tensor, lq: tf.Tensor, b=b, V=V, opt=opt) -> None:
            with tf.GradientTape() as tape:
                loss = sm.inbatch_softmax_loss(tf.zeros([batch, 2]), V, b, y, lq)
            opt.apply_gradients([(tape.gradient(loss, b), b)])

        for _ in range(400):
            y = rng.choice(n, batch, p=p)
            step(tf.constant(y, tf.int64), tf.constant(sign * np.log(p[y]), tf.float32))
        slopes[mode] = float(np.polyfit(np.log(p), b.numpy(), 1)[0])
    assert slopes["corrected"] > 0.5, slopes
    assert abs(slopes["uncorrected"]) < 0.3, slopes
    assert slopes["flipped"] < -0.3, slopes


def test_inbatch_masks_duplicate_labels() -> None:
    n, d = 12, 5
    u, V, b, _ = _problem(n, d, 4, seed=8)
    y = tf.constant([2, 2, 7, 9], tf.int64)
    log_q = tf.constant([-1.0, -1.0, -2.0, -3.0])
    got = sm.inbatch_softmax_loss(u, V, b, y, log_q).numpy()
    logits = (tf.matmul(u, tf.gather(V, y), transpose_b=True) + tf.gather(b, y)).numpy() - log_q.numpy()[None, :]
    hand = []
    for i in range(4):
        cols = [j for j in range(4) if j == i or int(y[j]) != int(y[i])]
        hand.append(math.log(np.exp(logits[i, cols]).sum()) - logits[i, i])
    np.testing.assert_allclose(got, np.mean(hand), rtol=1e-6)


def test_loguniform_decreases_on_toy_problem() -> None:
    n, d, users = 500, 16, 200
    rng = np.random.default_rng(0)
    true_u = rng.normal(size=(users, 8))
    true_v = rng.normal(size=(n, 8))
    probs = np.exp(true_u @ true_v.T)
    probs /= probs.sum(1, keepdims=True)
    user_ids = rng.integers(0, users, 4000)
    labels = np.array([rng.choice(n, p=probs[i]) for i in user_ids])
    E = tf.Variable(rng.normal(size=(users, d)).astype(np.float32) * 0.1)
    V = tf.Variable(rng.normal(size=(n, d)).astype(np.float32) * 0.1)
    b = tf.Variable(tf.zeros([n]))
    opt = SparseAdagrad(0.3)
    opt.build([E, V, b])

    @tf.function
    def step(users_b: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = sm.loguniform_sampled_softmax_loss(tf.gather(E, users_b), V, b, y, 64)
        grads = tape.gradient(loss, [E, V, b])
        opt.apply_gradients(zip(grads, [E, V, b], strict=True))
        return loss

    def full() -> float:
        return float(sm.full_softmax_loss(tf.gather(E, user_ids), V, b, labels))

    before = full()
    for i in range(300):
        sl = slice((i * 128) % 4000, (i * 128) % 4000 + 128)
        step(tf.constant(user_ids[sl]), tf.constant(labels[sl], tf.int64))
    after = full()
    assert after < before - 0.3, (before, after)


@pytest.mark.parametrize("distinct", [3, 500])  # few rows per column: the dense product; many: the row copies
def test_candidate_logits_match_the_plain_gather_with_gradients(distinct: int) -> None:
    rng = np.random.default_rng(3)
    n, d, batch, columns = 600, 8, 200, 2
    V = tf.Variable(rng.normal(size=(n, d)).astype(np.float32))
    b = tf.Variable(rng.normal(size=n).astype(np.float32))
    u = tf.constant(rng.normal(size=(batch, d)).astype(np.float32))
    pool = rng.choice(n, distinct, replace=False)
    ids = tf.constant(pool[rng.integers(0, distinct, (batch, columns))].astype(np.int64))
    weights = tf.constant(rng.normal(size=(batch, columns)).astype(np.float32))
    assert (len(np.unique(ids)) <= sm.DENSE_ROWS_PER_COLUMN * columns) == (distinct == 3)

    def grads(fn):  # type: ignore[no-untyped-def]
        with tf.GradientTape() as tape:
            tape.watch(u)
            logits = fn()
            loss = tf.reduce_sum(weights * logits)
        gu, gV, gb = tape.gradient(loss, [u, V, b])
        return logits.numpy(), gu.numpy(), tf.convert_to_tensor(gV).numpy(), tf.convert_to_tensor(gb).numpy(), gV

    fast = tf.function(lambda: sm.candidate_logits(u, V, b, ids))
    got = grads(fast)
    want = grads(lambda: tf.einsum("bd,bkd->bk", u, tf.gather(V, ids)) + tf.gather(b, ids))
    for a, e in zip(got[:4], want[:4], strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    # The table's gradient stays sparse: one slice per distinct candidate row, not one per id or a dense table.
    assert isinstance(got[4], tf.IndexedSlices)
    assert sorted(got[4].indices.numpy().tolist()) == sorted(np.unique(ids).tolist())


def test_candidate_logits_of_no_columns_is_empty() -> None:
    V = tf.Variable(tf.ones([10, 4]))
    out = sm.candidate_logits(tf.ones([3, 4]), V, None, tf.zeros([3, 0], tf.int64))
    assert out.shape == (3, 0)
