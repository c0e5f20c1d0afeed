"""The user-level bootstrap: nominal coverage, a paired test with power and no false alarms, exact metric means."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.metrics import metrics_from_ranks
from recsys.stats import (
    Comparison,
    Interval,
    bootstrap_ci,
    compare,
    holm,
    holm_adjust,
    paired_bootstrap,
    per_example_metrics,
    summarise,
)

TRUE_MEAN = 0.3  # the hit rate the clustered simulation is built around


def clustered_hits(rng: np.random.Generator, n_users: int, concentration: float) -> tuple[np.ndarray, np.ndarray]:
    """0/1 values whose users have their own hit rate ~ Beta (mean TRUE_MEAN) and 1 to 15 examples each."""
    a = TRUE_MEAN * concentration
    rate = rng.beta(a, concentration - a, size=n_users)
    sizes = rng.integers(1, 16, size=n_users)
    groups = np.repeat(np.arange(n_users), sizes)
    values = (rng.random(len(groups)) < rate[groups]).astype(np.float64)
    return values, groups


def test_per_example_metric_means_equal_metrics_from_ranks_exactly() -> None:
    rng = np.random.default_rng(1)
    ranks = rng.integers(0, 300, size=1000).astype(np.float64)
    ranks[::7] += 0.5  # tie-averaged ranks
    ranks[::11] = np.inf  # OOV labels: a miss everywhere
    ranks[:5] = [0.0, 9.5, 10.0, 49.5, 99.5]
    ks = (1, 10, 50, 100)
    per_example = per_example_metrics(ranks, ks)
    expected = metrics_from_ranks(ranks, ks)
    assert set(per_example) == set(expected) - {"examples"}
    for name, values in per_example.items():
        assert values.shape == ranks.shape
        assert np.isfinite(values).all()
        assert float(values.mean()) == expected[name], name


def test_interval_fields_and_json_ready_dict() -> None:
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = np.array(["u2", "u1", "u2", "u3", "u3", "u1"])  # any hashable-sortable ids, in any order
    interval = bootstrap_ci(values, groups, n_boot=500)
    assert isinstance(interval, Interval)
    assert interval.mean == pytest.approx(0.5)
    assert (interval.n_examples, interval.n_users) == (6, 3)
    assert 0.0 <= interval.low <= interval.mean <= interval.high <= 1.0
    assert interval.as_dict() == {
        "mean": 0.5,
        "low": interval.low,
        "high": interval.high,
        "n_examples": 6,
        "n_users": 3,
    }


def test_constant_values_and_a_single_user_give_a_degenerate_interval() -> None:
    assert bootstrap_ci(np.full(10, 0.25), np.arange(10) % 3).low == 0.25
    one_user = bootstrap_ci(np.array([0.0, 1.0, 1.0, 0.0]), np.zeros(4, dtype=int))
    assert (one_user.low, one_user.mean, one_user.high) == (0.5, 0.5, 0.5)


def test_ci_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    replications, covered, covered_naive, wider = 300, 0, 0, 0
    for rep in range(replications):
        values, groups = clustered_hits(rng, n_users=120, concentration=2.0)
        interval = bootstrap_ci(values, groups, n_boot=1000, seed=rep)
        covered += interval.low <= TRUE_MEAN <= interval.high
        # The same data resampled as if every example came from its own user.
        naive = bootstrap_ci(values, np.arange(len(values)), n_boot=1000, seed=rep)
        covered_naive += naive.low <= TRUE_MEAN <= naive.high
        wider += (interval.high - interval.low) > (naive.high - naive.low)
    assert 0.90 <= covered / replications <= 0.99
    # With strong user clustering an example-level bootstrap is far too narrow; that is why groups are required.
    assert covered_naive / replications < 0.85
    assert wider / replications > 0.95


def test_identical_methods_give_exactly_zero_and_are_not_significant() -> None:
    rng = np.random.default_rng(3)
    values, groups = clustered_hits(rng, n_users=50, concentration=2.0)
    result = paired_bootstrap(values, values.copy(), groups, n_boot=500)
    assert isinstance(result, Comparison)
    assert (result.mean_diff, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.p_value == 1.0
    assert not result.significant


def test_paired_test_detects_a_planted_difference() -> None:
    rng = np.random.default_rng(11)
    replications, detected = 40, 0
    for rep in range(replications):
        base, groups = clustered_hits(rng, n_users=150, concentration=2.0)
        # Method a turns 15% of b's misses into hits: a true gain of about 0.1 in hit rate.
        better = np.maximum(base, (rng.random(len(base)) < 0.15).astype(np.float64))
        result = paired_bootstrap(better, base, groups, n_boot=1000, seed=rep)
        assert result.mean_diff > 0
        detected += result.significant
        assert result.significant == (result.low > 0)
        if result.significant:
            assert result.p_value <= 0.06
    assert detected / replications >= 0.95


def test_paired_test_is_paired() -> None:
    # a beats b by 0.01 on every example, but a shared user effect (sd 1) dwarfs that gain across users.
    rng = np.random.default_rng(5)
    n_users = 200
    groups = np.repeat(np.arange(n_users), 5)
    user_effect = rng.normal(0.0, 1.0, size=n_users)[groups]
    b = user_effect + rng.normal(0.0, 0.01, size=len(groups))
    a = b + 0.01
    paired = paired_bootstrap(a, b, groups, n_boot=1000)
    assert paired.significant and paired.low > 0
    # Two separate intervals of the same data overlap almost completely: an unpaired look would see nothing.
    ia, ib = bootstrap_ci(a, groups, n_boot=1000), bootstrap_ci(b, groups, n_boot=1000)
    assert ia.low < ib.high and ib.low < ia.high


def test_exchangeable_methods_are_flagged_at_about_alpha_or_less() -> None:
    rng = np.random.default_rng(13)
    replications, flagged = 300, 0
    for rep in range(replications):
        n_users = 120
        sizes = rng.integers(1, 16, size=n_users)
        groups = np.repeat(np.arange(n_users), sizes)
        rate = rng.beta(0.6, 1.4, size=n_users)[groups]  # shared user difficulty: the methods are correlated
        a = (rng.random(len(groups)) < rate).astype(np.float64)
        b = (rng.random(len(groups)) < rate).astype(np.float64)
        flagged += paired_bootstrap(a, b, groups, n_boot=1000, seed=rep).significant
    assert flagged / replications <= 0.09


def test_same_seed_same_result_and_seeds_differ() -> None:
    rng = np.random.default_rng(17)
    values, groups = clustered_hits(rng, n_users=80, concentration=2.0)
    other = np.roll(values, 3)
    assert bootstrap_ci(values, groups, seed=4) == bootstrap_ci(values, groups, seed=4)
    assert bootstrap_ci(values, groups, seed=4) != bootstrap_ci(values, groups, seed=5)
    assert paired_bootstrap(values, other, groups, seed=4) == paired_bootstrap(values, other, groups, seed=4)


def test_large_user_counts_are_drawn_in_chunks() -> None:
    # 300k users: only 13 replicates fit in one draw's budget, so the 40 replicates come in 4 chunks.
    rng = np.random.default_rng(19)
    groups = np.arange(300_000)
    values = (rng.random(300_000) < 0.5).astype(np.float64)
    interval = bootstrap_ci(values, groups, n_boot=40)
    half_width = 1.96 * math.sqrt(0.25 / 300_000)
    assert interval.low < interval.mean < interval.high
    assert interval.high - interval.low < 4 * half_width


def test_summarise_and_compare_report_every_method_metric_and_pair() -> None:
    rng = np.random.default_rng(23)
    groups = np.repeat(np.arange(100), 4)
    good = rng.integers(0, 30, size=400).astype(np.float64)
    bad = good + 200.0
    ranks = {"good": good, "bad": bad, "same": good.copy()}
    ks = (10, 50)
    summary = summarise(ranks, groups, ks=ks, n_boot=300)
    assert set(summary) == set(ranks)
    for method, by_metric in summary.items():
        expected = metrics_from_ranks(ranks[method], ks)
        assert set(by_metric) == {"recall@10", "ndcg@10", "recall@50", "ndcg@50", "map"}
        for name, row in by_metric.items():
            assert set(row) == {"mean", "low", "high", "n_examples", "n_users"}
            assert row["mean"] == expected[name]
            assert (row["n_examples"], row["n_users"]) == (400, 100)
            assert row["low"] <= row["high"]
    result = compare(ranks, groups, [("good", "bad"), ("good", "same")], ks=ks, n_boot=300)
    assert set(result) == {"good vs bad", "good vs same"}
    assert all(row["significant"] and row["mean_diff"] > 0 for row in result["good vs bad"].values())
    assert all(not row["significant"] and row["mean_diff"] == 0.0 for row in result["good vs same"].values())
    assert set(result["good vs bad"]["map"]) == {
        "mean_diff",
        "low",
        "high",
        "p_value",
        "significant",
        "n_examples",
        "n_users",
    }


def test_bad_inputs_are_rejected() -> None:
    values, groups = np.ones(4), np.arange(4)
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ci(values, groups[:3])
    with pytest.raises(ValueError, match="no examples"):
        bootstrap_ci(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci(np.array([1.0, np.inf, 0.0, 1.0]), groups)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(values, groups, alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(values, values, groups, n_boot=0)
    with pytest.raises(ValueError, match="pair"):
        paired_bootstrap(values, values[:3], groups)
    with pytest.raises(ValueError, match="shape"):
        summarise({"m": np.zeros(3)}, groups)
    with pytest.raises(KeyError, match="missing"):
        compare({"m": np.zeros(4)}, groups, [("m", "missing")])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.floats(0.0, 1.0)), min_size=1, max_size=40),
    st.integers(0, 2**31),
)
def test_interval_stays_within_the_range_of_user_means(rows: list[tuple[int, float]], seed: int) -> None:
    groups = np.array([g for g, _ in rows])
    values = np.array([v for _, v in rows])
    interval = bootstrap_ci(values, groups, n_boot=50, seed=seed)
    user_means = [values[groups == g].mean() for g in np.unique(groups)]
    tolerance = 1e-12
    assert min(user_means) - tolerance <= interval.low <= interval.high <= max(user_means) + tolerance
    assert interval.n_users == len(user_means)


def test_holm_matches_a_hand_computation() -> None:
    # m = 5. Sorted: 0.001 (x5 = 0.005), 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.2 (x1 = 0.2);
    # the running maximum leaves them as they are; back in input order:
    p = [0.03, 0.001, 0.2, 0.01, 0.02]
    np.testing.assert_allclose(holm(p), [0.06, 0.005, 0.2, 0.04, 0.06])
    # A small p after a larger one inherits the running maximum; products above 1 are capped at 1:
    # sorted 0.01 (x3 = 0.03), 0.04 (x2 = 0.08), 0.9 (x1 = 0.9) -> 0.03, 0.08, 0.9; and 0.4 x 3 = 1.2 -> 1.
    np.testing.assert_allclose(holm([0.9, 0.01, 0.04]), [0.9, 0.03, 0.08])
    np.testing.assert_allclose(holm([0.4, 0.5]), [0.8, 0.8])  # 0.4 x 2 = 0.8, then max(0.8, 0.5 x 1)
    np.testing.assert_allclose(holm([0.4, 0.45, 0.5]), [1.0, 1.0, 1.0])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_holm_is_never_below_raw_and_at_most_bonferroni() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        p = rng.random(rng.integers(1, 30)) ** 3
        adjusted = holm(p)
        assert (adjusted >= p - 1e-15).all()
        assert (adjusted <= np.minimum(1.0, len(p) * p) + 1e-15).all()
        order = np.argsort(p)
        assert (np.diff(adjusted[order]) >= -1e-15).all()  # monotone in the raw p


def test_holm_adjust_keeps_raw_p_and_adds_adjusted_values_over_the_whole_family() -> None:
    comparisons = {
        "a vs b": {"recall@100": {"p_value": 0.01}, "map": {"p_value": 0.03}, "recall@10": {"p_value": 0.5}},
        "a vs c": {"recall@100": {"p_value": 0.02}, "map": {"p_value": 0.001}, "recall@10": {"p_value": 0.001}},
    }
    out = holm_adjust(comparisons, ["recall@100", "map"])
    # family of four: 0.001 x4 = 0.004, 0.01 x3 = 0.03, 0.02 x2 = 0.04, 0.03 x1 = 0.03 -> running max 0.04.
    assert out["a vs c"]["map"]["p_holm"] == pytest.approx(0.004)
    assert out["a vs b"]["recall@100"]["p_holm"] == pytest.approx(0.03)
    assert out["a vs c"]["recall@100"]["p_holm"] == pytest.approx(0.04)
    assert out["a vs b"]["map"]["p_holm"] == pytest.approx(0.04)
    assert all(out[pair][m]["significant_holm"] for pair in out for m in ("recall@100", "map"))
    assert not holm_adjust(comparisons, ["recall@100", "map"], alpha=0.035)["a vs b"]["map"]["significant_holm"]
    assert "p_holm" not in out["a vs b"]["recall@10"]  # outside the family: copied unchanged
    assert out["a vs b"]["map"]["p_value"] == 0.03 and "p_holm" not in comparisons["a vs b"]["map"]
    with pytest.raises(KeyError):
        holm_adjust(comparisons, ["ndcg@10"])
