"""The quality benchmark's ALS/BPR/EASE/item-kNN runs, training-window cut, target checks and JSON shape (tiny data)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from benchmarks import baselines
from benchmarks import protocol as protocol_module
from benchmarks.baselines import (
    ALS_GRID,
    EASE_GRID,
    ITEMKNN_GRID,
    AlsParams,
    BprParams,
    GridResult,
    ItemKnnParams,
    als_fold_in,
    als_grid,
    als_scorer,
    bpr_scorer,
    bpr_user_factors,
    ease_scorer,
    fit_als,
    fit_bpr,
    fit_ease,
    fit_itemknn,
    grid,
    grid_search,
    history_matrix,
    interaction_matrix,
    itemknn_fitter,
    itemknn_scorer,
    itemknn_scores,
    least_squares_user_factors,
)
from benchmarks.output import ranks_file
from benchmarks.protocol import run_baselines, run_ease, training_window
from benchmarks.schema import METHODS, PROTOCOLS, RESULT_KEYS, shape_results
from benchmarks.targets import check_targets, paired_difference
from recsys.features import FeatureSpace, NumericStats, Vocabulary, count_values
from recsys.metrics import label_ranks, metrics_from_ranks
from recsys.model import PAD

N_ITEMS = 41  # index 0 is OOV, items 1..20 are group A, 21..40 group B


def planted(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """60 users in two taste groups; each watched 8 of its group's 20 items and holds out one more as the label."""
    rng = np.random.default_rng(seed)
    users, items, labels, histories = [], [], [], []
    for u in range(60):
        group = np.arange(1, 21) if u < 30 else np.arange(21, 41)
        picked = rng.choice(group, size=9, replace=False)
        users += [u] * 8
        items += list(picked[:8])
        labels.append(picked[8])
        histories.append(picked[:8])
    matrix = interaction_matrix(np.array(users), np.array(items), 60, N_ITEMS)
    return matrix, np.array(labels, dtype=np.int32), np.array(histories, dtype=np.int32)


def test_interaction_and_history_matrices_count_and_drop_oov_and_padding():
    m = interaction_matrix(np.array([0, 0, 1, 1]), np.array([3, 3, 0, 2]), 2, 5)
    assert m.toarray().tolist() == [[0, 0, 0, 2, 0], [0, 0, 1, 0, 0]]
    h = history_matrix(np.array([[PAD, PAD, 4], [0, 2, 2]], dtype=np.int32), 5)
    assert h.toarray().tolist() == [[0, 0, 0, 0, 1], [0, 0, 2, 0, 0]]


def test_als_fold_in_ranks_planted_items_far_above_chance():
    matrix, labels, histories = planted()
    model = fit_als(matrix, AlsParams(factors=4, regularization=1.0, alpha=10.0, iterations=15))
    ranks = label_ranks(als_scorer(model, histories), labels)
    # The label is one of the 12 unseen items of the user's group among 40 items: chance recall@20 is ~0.5.
    assert metrics_from_ranks(ranks, ks=(20,))["recall@20"] >= 0.9


def test_bpr_user_factors_rank_planted_items_far_above_chance():
    matrix, labels, _ = planted()
    params = BprParams(factors=4, learning_rate=0.05, regularization=0.01, iterations=200)
    model = fit_bpr(matrix, params, threads=1)  # one thread: BPR's parallel SGD is not reproducible
    ranks = label_ranks(bpr_scorer(model, np.arange(60)), labels)
    assert metrics_from_ranks(ranks, ks=(20,))["recall@20"] >= 0.8


def test_bpr_unknown_user_gets_the_item_bias_only():
    matrix, _, _ = planted()
    model = fit_bpr(matrix, BprParams(factors=4, iterations=5))
    factors = bpr_user_factors(model, np.array([3, -1]))
    np.testing.assert_array_equal(factors[0], model.user_factors[3])
    assert factors[1].tolist() == [0.0] * (factors.shape[1] - 1) + [1.0]


@pytest.mark.parametrize("alpha", [1.0, 7.5])
def test_fold_in_equals_the_closed_form_least_squares(alpha):
    matrix, _, _ = planted(seed=1)
    model = fit_als(matrix, AlsParams(factors=6, regularization=0.3, alpha=alpha, iterations=5))
    rows = sp.csr_matrix(
        np.array([[0, 1, 0, 2, 0] + [0] * 36, [0] * 41, [0] * 20 + [1, 1, 3] + [0] * 18], dtype=np.float32)
    )
    ours = least_squares_user_factors(model.item_factors, rows, 0.3, alpha)
    implicit_own = als_fold_in(model, rows)
    np.testing.assert_allclose(implicit_own, ours, rtol=1e-3, atol=1e-4)
    assert np.all(implicit_own[1] == 0)  # an empty history folds in to the zero vector


def test_grid_search_keeps_the_best_validation_point():
    matrix, labels, histories = planted()
    result = grid_search(
        grid(AlsParams, factors=(2, 8), regularization=(0.1,), alpha=(10.0,), iterations=(10,)),
        lambda p: fit_als(matrix, p),
        lambda m: als_scorer(m, histories),
        labels,
    )
    assert [p["params"]["factors"] for p in result.points] == [2, 8]
    best = max(result.points, key=lambda p: p["validation"]["recall@100"])
    assert result.chosen["validation"]["recall@100"] == best["validation"]["recall@100"]


def test_grid_search_hides_the_given_histories_on_validation():
    matrix, labels, histories = planted()
    one = grid(AlsParams, factors=(4,), regularization=(0.1,), alpha=(10.0,), iterations=(5,))
    result = grid_search(
        one, lambda p: fit_als(matrix, p), lambda m: als_scorer(m, histories), labels, exclude=histories
    )
    served = metrics_from_ranks(label_ranks(als_scorer(result.model, histories), labels, histories))
    assert result.chosen["validation"] == served
    assert served["map"] != metrics_from_ranks(label_ranks(als_scorer(result.model, histories), labels))["map"]


def _features(videos: list[str]) -> FeatureSpace:
    make = lambda *v: Vocabulary.from_counts(count_values(pa.array(list(v))))  # noqa: E731
    return FeatureSpace(
        videos=make(*videos),
        tokens=make("x"),
        categorical={"country": make("US"), "device": make("tv"), "gender": make("F")},
        numeric=NumericStats(),
    )


def _ts(day: int) -> datetime:
    return datetime(2024, 1, day, tzinfo=UTC)


def test_training_window_follows_the_split_rules():
    events = pa.table(
        {
            "user_id": ["a", "a", "a", "a", "a", "b", "b", "b"],
            "video_id": ["v1", "v2", "v3", "v4", "zz", "v1", "v1", "v2"],
            "ts": pa.array([_ts(1), _ts(2), _ts(3), _ts(4), _ts(4), _ts(1), _ts(5), _ts(6)], pa.timestamp("us", "UTC")),
        }
    )
    fs = _features(["v1", "v2", "v3", "v4"])
    v = {name: fs.videos.lookup(pa.array([name])).to_pylist()[0] for name in ("v1", "v2", "v3", "v4")}

    users, m = training_window(events, "time_split", {"validation_start": _ts(3).isoformat()}, fs)
    got = {(users[r].as_py(), c) for r, c in zip(*m.nonzero(), strict=True)}
    assert got == {("a", v["v1"]), ("a", v["v2"]), ("b", v["v1"])}

    # a: test label at day 4 (tie with OOV "zz"), validation label v3 at day 3, training strictly before day 3.
    # b: test v2 (day 6), validation v1 (day 5), training the day-1 v1.
    users, m = training_window(events, "leave_last_out", {}, fs)
    dense = {(users[r].as_py(), c): m[r, c] for r, c in zip(*m.nonzero(), strict=True)}
    assert dense == {("a", v["v1"]): 1.0, ("a", v["v2"]): 1.0, ("b", v["v1"]): 1.0}


def test_shape_results_has_exactly_the_published_keys():
    extra = {k: 0.5 for k in (*RESULT_KEYS, "ndcg@50", "ndcg@100", "examples")}
    metrics = {p: {m: dict(extra) for m in (*METHODS, "other")} for p in PROTOCOLS}
    shaped = shape_results(metrics)
    assert list(shaped) == ["time_split", "leave_last_out"]
    for protocol in PROTOCOLS:
        assert list(shaped[protocol]) == [
            "full",
            "loguniform",
            "inbatch",
            "topk_random",
            "popularity",
            "als",
            "bpr",
            "ease",
            "itemknn",
        ]
        for method in METHODS:
            assert list(shaped[protocol][method]) == [
                *("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20", "map")
            ]
    del metrics["leave_last_out"]["bpr"]
    with pytest.raises(KeyError):
        shape_results(metrics)
    old = {
        p: {m: {k: 0.5 for k in ("recall@10", "recall@50", "recall@100", "ndcg@10", "map")} for m in METHODS}
        for p in PROTOCOLS
    }
    with pytest.raises(KeyError, match="recall@20"):  # test metrics computed without QUALITY_KS are refused
        shape_results(old)


def test_ranks_file_sits_beside_the_json(tmp_path):
    assert ranks_file(tmp_path / "quality_ml100k.json") == tmp_path / "quality_ml100k.ranks.npz"


def test_checks_report_holds_and_fails_honestly():
    n = 1000
    base = np.full(n, 500.0)
    hits = lambda share: np.where(np.arange(n) < share * n, 5.0, 500.0)  # noqa: E731
    ranks = {
        "full": hits(0.50),
        "loguniform": hits(0.45),
        "inbatch": hits(0.40),
        "topk_random": hits(0.495),
        "popularity": hits(0.30),
        "als": hits(0.52),
        "bpr": base,
        "ease": hits(0.48),
        "itemknn": hits(0.60),
    }
    metrics = {m: metrics_from_ranks(r) for m, r in ranks.items()}
    checks = {c["check"]: c["holds"] for c in check_targets(metrics, ranks)}
    assert not checks["topk_random recall@100 > itemknn"]
    assert checks["itemknn well above popularity (>= +10%, CI > 0)"]
    assert checks["topk_random recall@100 within 2% (relative) of full softmax"]
    assert checks["topk_random recall@100 >= loguniform"]
    assert not checks["topk_random recall@100 > als"]
    assert checks["topk_random recall@100 > bpr"]
    assert not checks["bpr well above popularity (>= +10%, CI > 0)"]
    assert checks["full well above popularity (>= +10%, CI > 0)"]
    pair = paired_difference(ranks["full"], ranks["popularity"])
    assert pair["diff"] == pytest.approx(0.2) and pair["ci95_low"] > 0


def test_check_intervals_resample_users_not_examples():
    n = 400
    a = np.where(np.arange(n) < n // 2, 5.0, 500.0)  # users 0-4 always hit, users 5-9 never do
    b = np.full(n, 500.0)
    per_example = paired_difference(a, b)
    users = np.arange(n) // 40  # 10 users of 40 examples: wider interval
    per_user = paired_difference(a, b, users)
    assert per_example["diff"] == per_user["diff"] == pytest.approx(0.5)
    assert per_user["n_users"] == 10 and per_example["n_users"] == n
    assert (per_user["ci95_high"] - per_user["ci95_low"]) > 2 * (per_example["ci95_high"] - per_example["ci95_low"])


def test_run_ease_picks_lambda_on_validation_and_ranks_test_from_history():
    matrix, labels, histories = planted()
    batch = {"history": histories, "label": labels}
    ranks, meta = run_ease(matrix, batch, batch, None, chunk=16)
    lam = meta["chosen"]["lambda"]
    assert lam in EASE_GRID and meta["grid"] == {"lambda": list(EASE_GRID)}
    assert len(meta["points"]) == len(EASE_GRID)
    expected = label_ranks(ease_scorer(fit_ease(matrix, lam), histories), labels, chunk=16)
    np.testing.assert_array_equal(ranks, expected)
    assert metrics_from_ranks(ranks)["recall@10"] > 0.3  # 10 of 40 items at chance is 0.25 at best


def test_ease_is_fitted_on_the_same_training_matrix_as_als(monkeypatch):
    matrix, labels, histories = planted()
    seen: dict[str, object] = {}
    zeros = lambda *_: lambda rows: np.zeros((len(rows), N_ITEMS), dtype=np.float32)  # noqa: E731

    def record(name: str, real=None):
        def fit(m, *args, **kwargs):
            seen[name] = m
            return real(m, *args, **kwargs) if real else None

        return fit

    def one_point_grid(candidates, fit, scorer_for, labels, chunk=1024, exclude=None):
        model = fit(candidates[0])
        chosen = {"params": {}, "validation": {"recall@100": 0.0}, "fit_s": 0.0}
        return GridResult(points=[], chosen=chosen, model=model)

    monkeypatch.setattr(protocol_module, "training_window", lambda *_: (pa.array(np.arange(60)), matrix))
    monkeypatch.setattr(protocol_module, "grid_search", one_point_grid)
    monkeypatch.setattr(protocol_module, "fit_als", record("als"))
    monkeypatch.setattr(protocol_module, "fit_bpr", record("bpr"))
    monkeypatch.setattr(protocol_module, "fit_ease", record("ease", fit_ease))
    monkeypatch.setattr(protocol_module, "itemknn_fitter", record("itemknn", itemknn_fitter))
    monkeypatch.setattr(protocol_module, "als_scorer", zeros)
    monkeypatch.setattr(protocol_module, "bpr_scorer", zeros)
    prepared = SimpleNamespace(pipeline={"time_split": {"split": {}}}, events=None, kind="synthetic")
    batch = {"history": histories, "label": labels}
    users = pa.chunked_array([pa.array(np.arange(60))])
    data = SimpleNamespace(features=None)
    ranks, meta = run_baselines(prepared, "time_split", data, batch, users, batch, users, None, 16, 0)
    assert all(seen[name] is matrix for name in ("als", "bpr", "ease", "itemknn"))
    assert set(ranks) == {"als", "bpr", "ease", "itemknn"} and meta["ease"]["chosen"]["lambda"] in EASE_GRID
    assert meta["als"]["grid"] == ALS_GRID and meta["itemknn"]["grid"] == ITEMKNN_GRID
    seen.clear()
    ranks, meta = run_baselines(prepared, "time_split", data, batch, users, batch, users, None, 16, 0, skip_bpr=True)
    assert "bpr" not in seen and "bpr" not in ranks and "bpr" not in meta
    assert set(ranks) == {"als", "ease", "itemknn"}


def test_run_baselines_ranks_test_with_the_item_knn_point_validation_chose(monkeypatch):
    matrix, labels, histories = planted()
    monkeypatch.setattr(protocol_module, "training_window", lambda *_: (pa.array(np.arange(60)), matrix))
    prepared = SimpleNamespace(pipeline={"time_split": {"split": {}}}, events=None, kind="synthetic")
    batch = {"history": histories, "label": labels}
    users = pa.chunked_array([pa.array(np.arange(60))])
    ranks, meta = run_baselines(
        prepared, "time_split", SimpleNamespace(features=None), batch, users, batch, users, None, 16, 0, skip_bpr=True
    )
    knn = meta["itemknn"]
    assert len(knn["points"]) == len(ITEMKNN_GRID["shrink"]) * len(ITEMKNN_GRID["neighbors"])
    best = max(p["validation"]["recall@100"] for p in knn["points"])
    assert knn["chosen_validation"]["recall@100"] == best
    S = fit_itemknn(matrix, ItemKnnParams(**knn["chosen"]))
    np.testing.assert_array_equal(ranks["itemknn"], label_ranks(itemknn_scorer(S, histories), labels, chunk=16))
    assert knn["fit_s"] >= 0 and "x . S" in knn["scoring"]


def test_als_grid_reaches_256_factors_on_event_logs_only():
    assert als_grid("events")["factors"] == (16, 32, 64, 128, 256)
    assert {k: v for k, v in als_grid("events").items() if k != "factors"} == {
        k: v for k, v in ALS_GRID.items() if k != "factors"
    }
    for kind in ("movielens", "synthetic"):
        assert als_grid(kind) == ALS_GRID and max(als_grid(kind)["factors"]) == 128  # committed results' grid
    assert ALS_GRID["factors"] == (16, 32, 64, 128)  # als_grid("events") did not change the shared grid


# ------------------------------------------------------------------------------------------------ item-kNN
def brute_force_cosine(X: np.ndarray, shrink: float) -> np.ndarray:
    """Dense shrunk cosine of X's binarised columns written out: c_ij / (sqrt(n_i) sqrt(n_j) + shrink), S_jj = 0."""
    B = (X > 0).astype(np.float64)
    co = B.T @ B
    n = np.sqrt(np.diag(co))
    denom = np.outer(n, n) + shrink
    S = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
    np.fill_diagonal(S, 0.0)
    return S


def random_counts(seed: int = 3, users: int = 30, items: int = 12) -> np.ndarray:
    """A sparse user x item count matrix with repeat watches (counts up to 3) and one item nobody watched."""
    rng = np.random.default_rng(seed)
    X = (rng.random((users, items)) < 0.3) * rng.integers(1, 4, size=(users, items))
    X[:, 5] = 0
    return X.astype(np.float64)


@pytest.mark.parametrize("shrink", [0.0, 2.5])
def test_itemknn_with_every_neighbour_is_the_brute_force_cosine(shrink, monkeypatch):
    monkeypatch.setattr(baselines, "_KNN_BLOCK", 5)  # blocks of 5 target items over 12: every block edge crossed
    X = random_counts()
    S = fit_itemknn(sp.csr_matrix(X), ItemKnnParams(shrink=shrink, neighbors=50))
    expected = brute_force_cosine(X, shrink)
    np.testing.assert_allclose(S.toarray(), expected, rtol=1e-6, atol=1e-7)
    assert not S.toarray()[5].any() and not S.toarray()[:, 5].any()  # an item nobody watched: no NaN, no similarity
    history = np.array([[0, 3, -1, -1], [7, 7, 2, -1]], dtype=np.int32)  # a repeat counts once, like EASE
    x = np.zeros((2, X.shape[1]))
    x[0, [0, 3]] = 1
    x[1, [7, 2]] = 1
    np.testing.assert_allclose(itemknn_scores(S, history), x @ expected, rtol=1e-6, atol=1e-7)


def test_itemknn_keeps_only_each_targets_largest_neighbours():
    X = random_counts(seed=4, users=40, items=15)
    dense = brute_force_cosine(X, 1.0)
    S = fit_itemknn(sp.csr_matrix(X), ItemKnnParams(shrink=1.0, neighbors=3)).toarray()
    for j in range(X.shape[1]):
        kept = np.nonzero(S[:, j])[0]
        assert len(kept) <= 3
        np.testing.assert_allclose(S[kept, j], dense[kept, j], rtol=1e-6)
        top = np.sort(dense[:, j])[::-1][:3]
        np.testing.assert_allclose(np.sort(S[:, j])[::-1][:3], top, rtol=1e-6)  # the 3 largest, ties either way
    assert (S > 0).sum() < (dense > 0).sum()  # the truncation removed similarities


def test_shrinkage_lowers_similarities_that_rest_on_few_co_occurrences():
    # Items 0 and 1: one user watched both (and nobody else either); items 2 and 3: ten users watched both.
    X = np.zeros((11, 4))
    X[0, [0, 1]] = 1
    X[1:, [2, 3]] = 1
    plain = fit_itemknn(sp.csr_matrix(X), ItemKnnParams(shrink=0.0, neighbors=10)).toarray()
    shrunk = fit_itemknn(sp.csr_matrix(X), ItemKnnParams(shrink=10.0, neighbors=10)).toarray()
    assert plain[0, 1] == pytest.approx(1.0) and plain[2, 3] == pytest.approx(1.0)  # cosine alone cannot tell them
    assert shrunk[0, 1] == pytest.approx(1 / 11) and shrunk[2, 3] == pytest.approx(10 / 20)
    history = np.array([[0, 2]], dtype=np.int32)
    scores = itemknn_scores(sp.csr_matrix(shrunk), history)[0]
    assert scores[3] > scores[1]  # the well-supported neighbour now outranks the rare one


def test_itemknn_fitter_truncates_one_computation_per_shrink(monkeypatch):
    X = sp.csr_matrix(random_counts(seed=5, users=50, items=20))
    calls: list[float] = []
    real = baselines.top_neighbors

    def counted(matrix, shrink, neighbors):
        calls.append(shrink)
        return real(matrix, shrink, neighbors)

    monkeypatch.setattr(baselines, "top_neighbors", counted)
    fit = itemknn_fitter(X, max_neighbors=8)
    for params in grid(ItemKnnParams, shrink=(0.0, 3.0), neighbors=(2, 5, 8)):
        fresh = knn_for(X, params, real)
        # Each target's kept similarities, sorted: equal even where a tie at the cut kept a different item.
        np.testing.assert_array_equal(np.sort(fit(params).toarray(), 0), np.sort(fresh.toarray(), 0), str(params))
        assert (fit(params).getnnz(axis=0) <= params.neighbors).all()
    assert calls == [0.0, 3.0]  # the grid's shrink-major order: one neighbour computation per shrink
    with pytest.raises(ValueError, match="max_neighbors"):
        fit(ItemKnnParams(shrink=0.0, neighbors=9))


def knn_for(X: sp.csr_matrix, params: ItemKnnParams, top_neighbors) -> sp.csr_matrix:
    """A fresh item-kNN fit at exactly params.neighbors (not truncated from longer lists)."""
    return baselines.knn_matrix(*top_neighbors(X, params.shrink, params.neighbors), params.neighbors)


def test_itemknn_ranks_planted_items_far_above_chance():
    matrix, labels, histories = planted()
    S = fit_itemknn(matrix, ItemKnnParams(shrink=10.0, neighbors=10))
    ranks = label_ranks(itemknn_scorer(S, histories), labels)
    assert metrics_from_ranks(ranks, ks=(20,))["recall@20"] >= 0.9
    with pytest.raises(ValueError, match="neighbors"):
        fit_itemknn(matrix, ItemKnnParams(shrink=0.0, neighbors=0))
