"""Negative miner (FAISS index + re-scoring with the current table) and a small end-to-end training run."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import faiss
import numpy as np
import pytest
import tensorflow as tf

from recsys import softmax as sm
from recsys.sparse_optim import SparseAdagrad
from training.miner import NegativeMiner, default_ivf_spec


def _clustered(n: int, d: int, clusters: int, seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A structured table (rows around cluster centres) and queries near the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    table = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d)).astype(np.float32)
    queries = centres[rng.integers(0, clusters, 200)] + noise * rng.normal(size=(200, d)).astype(np.float32)
    return table.astype(np.float32), queries.astype(np.float32)


def _exact_topk(q: np.ndarray, table: np.ndarray, k: int, bias: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k ids by inner product (+ bias), best first."""
    scores = q.astype(np.float64) @ table.astype(np.float64).T
    if bias is not None:
        scores += bias[None, :]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_default_spec() -> None:
    assert default_ivf_spec(1_000_000) == "IVF4000,Flat"
    assert default_ivf_spec(1) == "Flat"  # exact below EXACT_BELOW rows
    assert default_ivf_spec(20_000) == "IVF566,Flat"


@pytest.mark.parametrize("with_bias", [False, True])
def test_flat_index_rescored_topk_is_exact(with_bias: bool) -> None:
    table, queries = _clustered(3000, 16, 30, seed=0, noise=0.5)
    bias = np.random.default_rng(1).normal(size=3000).astype(np.float32) if with_bias else None
    V = tf.Variable(table)
    miner = NegativeMiner(V, tf.Variable(bias) if with_bias else None, k=10, k_prime=30, index_spec="Flat")
    miner.refresh(0)
    got = miner.search(queries)
    assert got.shape == (200, 10) and got.dtype == np.int64
    np.testing.assert_array_equal(got, _exact_topk(queries, table, 10, bias))
    assert miner.recall_of_true_topk(queries, k=10) == 1.0


def test_stale_index_is_rescored_with_current_table() -> None:
    table, queries = _clustered(2000, 16, 20, seed=1, noise=0.5)
    V = tf.Variable(table)
    miner = NegativeMiner(V, k=8, k_prime=40, index_spec="Flat")
    miner.refresh(0)
    stale_ids = _exact_topk(queries, table, 40)
    moved = table + 0.8 * np.random.default_rng(2).normal(size=table.shape).astype(np.float32)
    V.assign(moved)  # the index is now stale
    got = miner.search(queries)
    # The candidates are the stale top-40, ranked by the current rows.
    current = np.einsum("bd,bkd->bk", queries.astype(np.float64), moved[stale_ids].astype(np.float64))
    expect = np.take_along_axis(stale_ids, np.argsort(-current, axis=1, kind="stable")[:, :8], axis=1)
    np.testing.assert_array_equal(got, expect)
    # With K' = n the stale index returns everything, so the re-scored top-K is the exact current top-K.
    np.testing.assert_array_equal(miner.search(queries, k_prime=2000), _exact_topk(queries, moved, 8))
    # Without re-scoring the stale order would differ: the check above has teeth.
    assert not np.array_equal(stale_ids[:, :8], _exact_topk(queries, moved, 8))


def test_numpy_table_and_padding() -> None:
    table, queries = _clustered(500, 8, 10, seed=3)
    # IVF with one probed list of ~5 vectors cannot fill K' = 40: FAISS pads with -1 and so must we.
    miner = NegativeMiner(table, k=20, k_prime=40, index_spec="IVF100,Flat", nprobe=1)
    miner.refresh(0)
    got = miner.search(queries[:5])
    assert got.shape == (5, 20)
    assert (got == -1).any()
    for row in got:
        valid = row[row >= 0]
        assert len(set(valid.tolist())) == len(valid)
        assert (row[len(valid) :] == -1).all()  # padding only at the end
    # The loss ignores the padding.
    y = tf.constant([0, 1, 2, 3, 4], tf.int64)
    sample = sm.sample_classes(y, tf.constant(got), 500, 10)
    assert sample.s.numpy().min() >= 0


def test_recall_diagnostic() -> None:
    table, queries = _clustered(20_000, 32, 64, seed=4, noise=0.2)
    miner = NegativeMiner(tf.Variable(table), k=10, k_prime=40, nprobe=16)
    miner.refresh(0)
    structured = miner.recall_of_true_topk(queries, k=10)
    assert 0.9 <= structured <= 1.0
    noise = np.random.default_rng(5).normal(size=table.shape).astype(np.float32)
    random_miner = NegativeMiner(tf.Variable(noise), k=10, k_prime=40, nprobe=1)
    random_miner.refresh(0)
    unstructured = random_miner.recall_of_true_topk(noise[:100] + 0.0, k=10)
    assert 0.0 <= unstructured < structured


def test_schedule_warmup_refresh_and_retrain() -> None:
    table, _ = _clustered(2000, 8, 10, seed=6)
    V = tf.Variable(table)
    miner = NegativeMiner(
        V,
        k=4,
        k_prime=8,
        refresh_every=10,
        warmup_steps=20,
        retrain_every=3,
        index_spec="IVF40,Flat",
        track_touched=False,
    )
    assert not miner.topk_enabled(0) and not miner.topk_enabled(19) and miner.topk_enabled(20)
    kinds = []
    for step in range(100):
        stats = miner.maybe_refresh(step)
        if stats is not None:
            assert step >= 20
            kinds.append((step, stats.kind))
    assert [s for s, _ in kinds] == list(range(20, 100, 10))
    # Nothing moved between refreshes: the kept-quantizer refreshes are empty updates.
    assert [k for _, k in kinds] == ["build", "update", "update", "build", "update", "update", "build", "update"]
    assert all(s.rows == 0 for s in miner.history if s.kind == "update")

    def centroids() -> np.ndarray:
        assert miner.index is not None
        ivf = faiss.extract_index_ivf(miner.index)
        return ivf.quantizer.reconstruct_n(0, ivf.nlist)

    before = centroids()
    V.assign(table[::-1] + 1.0)
    assert miner.refresh(100).kind == "readd"  # every row moved: a re-add, which keeps the trained quantizer
    np.testing.assert_array_equal(centroids(), before)
    assert miner.refresh(110).kind == "build"  # ... and a retrain replaces it
    assert not np.array_equal(centroids(), before)


def test_refresh_moves_only_rows_that_drifted() -> None:
    table, queries = _clustered(4000, 16, 20, seed=10)
    V = tf.Variable(table)
    miner = NegativeMiner(
        V, k=10, k_prime=40, nprobe=32, index_spec="IVF64,Flat", drift_tolerance=0.05, track_touched=False
    )
    miner.refresh(0)
    rng = np.random.default_rng(11)
    rms = float(np.sqrt((table.astype(np.float64) ** 2).sum(axis=1).mean()))
    far = rng.choice(4000, 300, replace=False)
    near = np.setdiff1d(rng.choice(4000, 500, replace=False), far)
    moved = table.copy()
    direction = rng.normal(size=(4000, 16)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    moved[far] += 0.2 * rms * direction[far]  # 4x the tolerance
    moved[near] += 0.01 * rms * direction[near]  # a fifth of it
    V.assign(moved)
    stats = miner.refresh(1)
    assert stats.kind == "update" and stats.rows == len(far)
    assert miner.index is not None
    np.testing.assert_allclose(miner.index.reconstruct_batch(np.sort(far)), moved[np.sort(far)], rtol=1e-6)
    np.testing.assert_array_equal(miner.index.reconstruct_batch(near), table[near])  # left at their old place
    # When most rows move, a full re-add is cheaper than moving them one by one.
    V.assign(moved + 0.5 * rms * direction)
    assert miner.refresh(2).kind == "readd"
    assert miner.recall_of_true_topk(queries, k=10) > 0.9


def test_drift_is_checked_on_touched_rows_only_until_the_next_rebuild() -> None:
    table, queries = _clustered(4000, 16, 20, seed=16)
    V = tf.Variable(table)
    miner = NegativeMiner(V, k=10, k_prime=40, nprobe=8, index_spec="IVF64,Flat", retrain_every=3)
    assert miner.touched is not None
    miner.refresh(0)
    found = miner.search(queries[:5])  # candidates the step would update are marked by the search itself
    labels = np.array([7, 11, 13])
    miner.mark(labels)
    marked = np.union1d(found[found >= 0], labels)
    unmarked = np.setdiff1d(np.arange(4000), marked)[:50]
    moved = table.copy()
    moved[marked] += 2.0  # far beyond the tolerance
    moved[unmarked] += 2.0  # as far, but nobody said these were updated
    V.assign(moved)
    stats = miner.refresh(1)
    assert stats.kind == "update" and stats.rows == len(marked)
    assert miner.index is not None
    np.testing.assert_allclose(miner.index.reconstruct_batch(marked), moved[marked], rtol=1e-6)
    np.testing.assert_array_equal(miner.index.reconstruct_batch(unmarked), table[unmarked])
    assert miner.refresh(2).rows == 0  # the marks were consumed
    assert miner.refresh(3).kind == "build"  # the periodic rebuild re-indexes everything
    np.testing.assert_allclose(miner.index.reconstruct_batch(unmarked), moved[unmarked], rtol=1e-6)


def test_unbalanced_lists_trigger_a_retrain() -> None:
    table, _ = _clustered(4000, 16, 40, seed=12)
    V = tf.Variable(table)
    miner = NegativeMiner(
        V, k=4, k_prime=8, index_spec="IVF40,Flat", retrain_every=100, imbalance_growth=1.5, track_touched=False
    )
    assert miner.refresh(0).kind == "build"
    collapsed = table[np.random.default_rng(13).integers(0, 40, 4000) % 3]  # three clusters' rows everywhere
    V.assign(collapsed + 0.001 * np.random.default_rng(14).normal(size=table.shape).astype(np.float32))
    assert miner.refresh(1).kind == "readd"  # the lists are still balanced when this refresh starts
    stats = miner.refresh(2)
    assert stats.kind == "build" and stats.reason.startswith("imbalance")


def test_nprobe_tuned_to_the_smallest_value_reaching_target_recall() -> None:
    table, queries = _clustered(20_000, 32, 64, seed=15, noise=0.6)
    miner = NegativeMiner(tf.Variable(table), k=10, k_prime=40, index_spec="IVF256,Flat", target_recall=0.9)
    miner.refresh(0)
    miner.search(queries)  # the first search after a build tunes nprobe on its queries
    assert miner.tuning is not None
    chosen, tried = miner.tuning["nprobe"], miner.tuning["tried"]
    assert miner.nprobe == chosen and tried[chosen] >= 0.9 and miner.tuning["recall"] == tried[chosen]
    doubled = [v for v in tried if v & (v - 1) == 0]  # the bracketing values, then the bisection's
    assert list(tried)[: len(doubled)] == [2**i for i in range(len(doubled))]
    assert chosen > 1 and all(r < 0.9 for v, r in tried.items() if v < chosen)  # every smaller value tried missed
    below = max(v for v in tried if v < chosen)
    assert chosen - below <= max(1, below // 8)  # and the largest of them is that close below
    assert miner.recall_of_true_topk(queries, k=10) >= 0.85  # and it holds on other queries
    # A stricter target needs more lists probed.
    strict = NegativeMiner(tf.Variable(table), k=10, k_prime=40, index_spec="IVF256,Flat", target_recall=0.999)
    strict.refresh(0)
    strict.search(queries)
    assert strict.nprobe > chosen
    # ... unless the cost cap stops it: then the cap is kept and the shortfall recorded.
    capped = NegativeMiner(
        tf.Variable(table), k=10, k_prime=40, index_spec="IVF256,Flat", target_recall=0.999, max_nprobe=2
    )
    capped.refresh(0)
    capped.search(queries)
    assert capped.tuning is not None and capped.nprobe == 2 and capped.tuning["recall"] < 0.999


def test_incremental_update_equals_readd() -> None:
    table, queries = _clustered(4000, 16, 20, seed=7)
    V = tf.Variable(table)
    a = NegativeMiner(V, k=10, k_prime=40, nprobe=32, index_spec="IVF64,Flat")
    a.refresh(0)
    b = NegativeMiner(V, k=10, k_prime=40, nprobe=32, index_spec="IVF64,Flat", drift_tolerance=None)
    b.refresh(0)
    assert a.index is not None
    b.index = faiss.clone_index(a.index)  # same trained quantizer for both
    assert a.touched is not None
    changed = np.random.default_rng(8).choice(4000, 300, replace=False)
    a.mark(changed)
    a.mark([-1, 4000])  # out-of-range ids are ignored
    assert a.touched.fraction() == pytest.approx(300 / 4000)
    moved = table.copy()
    moved[changed] += np.random.default_rng(9).normal(size=(300, 16)).astype(np.float32)
    V.assign(moved)
    stats = a.refresh(1)
    assert stats.kind == "update" and stats.rows == 300
    assert a.touched.take().size == 0
    assert b.refresh(1).kind == "readd"
    assert a.index is not None and b.index is not None
    d1, i1 = a.index.search(queries, 40)
    d2, i2 = b.index.search(queries, 40)
    np.testing.assert_allclose(d1, d2, rtol=1e-5)
    np.testing.assert_array_equal(np.sort(i1, axis=1), np.sort(i2, axis=1))


# ----------------------------------------------------------------------------- end to end


@dataclass(frozen=True)
class _Data:
    """A synthetic next-watch problem with a known structure."""

    n: int
    users: int
    train_users: np.ndarray
    train_labels: np.ndarray
    test_users: np.ndarray
    test_labels: np.ndarray
    log_q: np.ndarray


@functools.cache
def _data() -> _Data:
    """Users and items with latent topics, Zipf popularity; items sorted by popularity (0 = most popular)."""
    rng = np.random.default_rng(0)
    n, users, dim = 2000, 300, 8
    pop = 1.0 / np.arange(1, n + 1) ** 0.8
    true_u = rng.normal(size=(users, dim))
    true_v = rng.normal(size=(n, dim))
    logits = 1.5 * true_u @ true_v.T + np.log(pop)[None, :]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    per_user = 100
    draws = np.array([rng.choice(n, size=per_user, p=probs[i]) for i in range(users)])
    split = 92
    train_users = np.repeat(np.arange(users), split)
    train_labels = draws[:, :split].ravel()
    order = rng.permutation(len(train_users))
    counts = np.bincount(train_labels, minlength=n) + 1.0
    return _Data(
        n=n,
        users=users,
        train_users=train_users[order],
        train_labels=train_labels[order],
        test_users=np.repeat(np.arange(users), per_user - split),
        test_labels=draws[:, split:].ravel(),
        log_q=np.log(counts / counts.sum()).astype(np.float32),
    )


def _evaluate(E: np.ndarray, V: np.ndarray, b: np.ndarray, data: _Data, k: int) -> tuple[float, float]:
    """Held-out full-softmax cross-entropy and recall@k."""
    logits = E[data.test_users] @ V.T + b[None, :]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits).sum(axis=1))
    rows = np.arange(len(data.test_labels))
    ce = float(np.mean(log_z - logits[rows, data.test_labels]))
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    recall = float((top == data.test_labels[:, None]).any(axis=1).mean())
    return ce, recall


def _train(loss: str, steps: int = 800, batch: int = 64) -> tuple[float, float]:
    """Train u = E[user] against V, b with one loss; return held-out (cross-entropy, recall@20)."""
    data = _data()
    rng = np.random.default_rng(1)
    d = 24
    E = tf.Variable(rng.normal(size=(data.users, d)).astype(np.float32) * 0.1)
    V = tf.Variable(rng.normal(size=(data.n, d)).astype(np.float32) * 0.1)
    b = tf.Variable(tf.zeros([data.n]))
    opt = SparseAdagrad(1.0)
    opt.build([E, V, b])
    gen = tf.random.Generator.from_seed(2)
    log_q = tf.constant(data.log_q)
    n_uniform, k = 64, 5
    miner = NegativeMiner(V, b, k=k, k_prime=20, refresh_every=25, warmup_steps=100, index_spec="Flat")

    def loss_fn(u: tf.Tensor, y: tf.Tensor, cand: tf.Tensor) -> tf.Tensor:
        if loss == "full":
            return sm.full_softmax_loss(u, V, b, y)
        if loss in ("topk_random", "uniform"):
            return sm.topk_random_loss(u, V, b, y, cand, n_uniform, gen)
        if loss == "topk_per_example":
            return sm.topk_random_loss_per_example(u, V, b, y, cand, n_uniform, gen)
        if loss == "loguniform":
            return sm.loguniform_sampled_softmax_loss(u, V, b, y, n_uniform, seed=1)
        if loss == "inbatch":
            return sm.inbatch_softmax_loss(u, V, b, y, tf.gather(log_q, y))
        raise ValueError(loss)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None, None], tf.int64),
        ]
    )
    def step(users: tf.Tensor, y: tf.Tensor, cand: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            value = loss_fn(tf.gather(E, users), y, cand)
        grads = tape.gradient(value, [E, V, b])
        opt.apply_gradients(zip(grads, [E, V, b], strict=True))
        return value

    empty = np.zeros((batch, 0), np.int64)
    for i in range(steps):
        lo = (i * batch) % (len(data.train_users) - batch)
        users = data.train_users[lo : lo + batch]
        y = data.train_labels[lo : lo + batch]
        cand = empty
        if loss.startswith("topk") and miner.topk_enabled(i):
            miner.maybe_refresh(i)
            cand = miner.search(tf.gather(E, users))
        step(tf.constant(users, tf.int64), tf.constant(y, tf.int64), tf.constant(cand))
    return _evaluate(E.numpy(), V.numpy(), b.numpy(), data, 20)


@pytest.mark.slow
def test_end_to_end_topk_random_matches_full_softmax() -> None:
    data = _data()
    names = ("full", "topk_random", "topk_per_example", "uniform", "loguniform", "inbatch")
    results = {name: _train(name) for name in names}
    counts = np.bincount(data.train_labels, minlength=data.n)
    popular = np.argsort(-counts)[:20]
    pop_recall = float(np.isin(data.test_labels, popular).mean())
    report = {**results, "popularity_recall@20": pop_recall}
    full_ce, full_recall = results["full"]
    # Observed: full (3.395, 0.740), topk_random (3.400, 0.740), topk_per_example (3.409, 0.740),
    # uniform-only (3.522, 0.738), loguniform (3.635, 0.714), inbatch (3.447, 0.740), popularity recall@20 0.291.
    for name in ("topk_random", "topk_per_example"):
        topk_ce, topk_recall = results[name]
        assert topk_ce < full_ce + 0.05, report
        assert topk_recall > full_recall - 0.02, report
        assert topk_recall > pop_recall + 0.2, report
        assert topk_ce < results["uniform"][0] - 0.03, report  # the exact head is what closes the gap to full
    for name in ("loguniform", "inbatch"):
        assert np.isfinite(results[name][0]) and results[name][1] > pop_recall + 0.2, report


def test_miner_never_converts_a_keras_table_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    table, queries = _clustered(3000, 16, 20, seed=5)
    layer = keras.layers.Embedding(3000, 16)
    layer.build()
    layer.embeddings.assign(table)
    bias = keras.Variable(np.zeros(3000, np.float32))
    miner = NegativeMiner(layer.embeddings, bias, k=8, k_prime=16, index_spec="IVF16,Flat", nprobe=16)
    assert isinstance(miner.table, tf.Variable)  # unwrapped: gathers read rows, not the table

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"the miner converted a {type(self).__name__} to numpy")

    for cls in {type(layer.embeddings), type(bias), type(miner.table)}:
        monkeypatch.setattr(cls, "__array__", refuse, raising=False)
        monkeypatch.setattr(cls, "numpy", refuse, raising=False)
    miner.refresh(step=0)
    found = miner.search(queries)
    np.testing.assert_array_equal(found, _exact_topk(queries, table, 8))
    layer.embeddings.assign_add(0.5 * np.ones_like(table))  # every row drifts: the update path re-reads rows
    miner.mark(np.arange(100))
    assert miner.refresh(step=1).kind in ("update", "readd")
    assert miner.peek(queries).shape == (len(queries), 8)


class _CountingCopy:
    """Stands in for the GPU copy where no GPU exists: a real CPU clone of the index that counts its searches."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = faiss.clone_index(index)
        self.searches = 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.searches += 1
        return self.index.search(queries, k)


def test_searches_go_to_a_fresh_gpu_copy_after_every_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # What cannot run here is the device itself: the copy is a CPU clone, everything else is the miner's own code.
    copies: list[_CountingCopy] = []

    def fake_clone(index: faiss.Index) -> _CountingCopy:
        copies.append(_CountingCopy(index))
        return copies[-1]

    nprobes: list[int] = []
    monkeypatch.setattr("training.miner.clone_to_gpus", fake_clone)
    monkeypatch.setattr(
        "training.miner.set_nprobe", lambda copy, n: (nprobes.append(n), setattr(copy.index, "nprobe", n))
    )
    table, queries = _clustered(4000, 16, 40, seed=5, noise=0.3)
    V = tf.Variable(table)
    miner = NegativeMiner(V, k=8, k_prime=16, index_spec="IVF32,Flat", nprobe=4, drift_tolerance=0.01)
    miner.refresh(0)
    assert len(copies) == 1 and miner.gpu_index is copies[0]
    cpu = faiss.clone_index(miner.index)
    np.testing.assert_array_equal(miner.fetch(queries), cpu.search(queries, 16)[1])
    assert copies[0].searches == 1 and nprobes == [4]  # the CPU index's nprobe, set once on the copy
    # An incremental refresh moves rows in the CPU index; the next searches see them through a new copy.
    moved = table.copy()
    moved[:200] = -moved[:200]
    V.assign(moved)
    miner.mark(np.arange(200))
    assert miner.refresh(1).kind == "update"
    assert len(copies) == 2 and miner.gpu_index is copies[1]
    faiss.extract_index_ivf(miner.index).nprobe = 8
    np.testing.assert_array_equal(miner.fetch(queries), faiss.clone_index(miner.index).search(queries, 16)[1])
    assert copies[1].searches == 1 and copies[0].searches == 1 and nprobes == [4, 8]


def test_no_gpu_copy_without_a_gpu() -> None:
    if faiss.get_num_gpus() > 0:
        pytest.skip("this machine has a GPU: test_mining_on_a_real_gpu covers it")
    table, _ = _clustered(1000, 8, 10, seed=6)
    miner = NegativeMiner(tf.Variable(table), k=4, k_prime=8, index_spec="Flat")
    miner.refresh(0)
    assert miner.gpu_index is None


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs a GPU and faiss-gpu (run on the device machine)")
def test_mining_on_a_real_gpu() -> None:
    table, queries = _clustered(20_000, 32, 50, seed=7, noise=0.3)
    miner = NegativeMiner(tf.Variable(table), k=10, k_prime=30, index_spec="IVF64,Flat", target_recall=0.95)
    miner.refresh(0)
    assert miner.gpu_index is not None
    found = miner.search(queries)
    assert miner.recall_of_true_topk(queries, k=10) >= 0.95
    np.testing.assert_array_equal(found[:, 0] >= 0, True)
