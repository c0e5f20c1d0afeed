"""FAISS retrieval: default specs, exclusion against a brute-force reference, tuning, GPU/CPU selection, files."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest

from recsys.index import (
    IndexFileError,
    VideoIndex,
    augment_items,
    augment_queries,
    clone_to_gpus,
    default_spec,
    doubling_schedule,
    factory_string,
    ivf_nlist,
    mixture_queries,
    read_index,
    recall_at_k,
    set_nprobe,
    smallest_reaching,
)


def clustered(n: int, dim: int, topics: int, seed: int = 0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = centres[rng.integers(0, topics, n)] + rng.standard_normal((n, dim)).astype(np.float32) * noise / np.sqrt(dim)
    bias = (rng.standard_normal(n) * 0.1).astype(np.float32)
    return emb.astype(np.float32), bias


def brute_force(u: np.ndarray, emb: np.ndarray, bias: np.ndarray, k: int, exclude: list[list[int]]) -> np.ndarray:
    """Reference: score every video, hide OOV and the exclusions, take the k best (ties broken by id)."""
    scores = u @ emb.T + bias[None, :]
    out = np.full((len(u), k), -1, dtype=np.int64)
    for b in range(len(u)):
        s = scores[b].copy()
        s[0] = -np.inf
        s[[i for i in exclude[b] if i >= 0]] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))
        order = order[np.isfinite(s[order])][:k]
        out[b, : len(order)] = order
    return out


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(3000, 16, topics=30)


def test_default_spec_by_catalogue_size():
    assert default_spec(49_999, 256) == "Flat"
    assert default_spec(50_000, 256) == f"IVF{ivf_nlist(50_000)},Flat" == "IVF894,Flat"
    assert default_spec(1_000_000, 256) == "IVF4000,Flat"
    assert default_spec(2_000_000, 256) == "IVF5657,PQ32"
    # d + 1 = 257 is prime: PQ32 gets zero padding to 288 dimensions; a dividing PQ or a transform is left alone.
    assert factory_string("IVF5657,PQ32", 257) == "Pad288,IVF5657,PQ32"
    assert factory_string("IVF64,PQ1", 257) == "IVF64,PQ1"
    assert factory_string("OPQ32_256,IVF64,PQ32", 257) == "OPQ32_256,IVF64,PQ32"
    assert factory_string("HNSW32", 257) == "HNSW32"


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW32", "IVF16,PQ4x4"])
def test_search_with_exclusions_matches_brute_force(data, spec):
    emb, bias = data
    index = VideoIndex.build(emb, bias, spec)
    index.set_params(**{"nprobe": 16} if "IVF" in spec else {"efSearch": 2048} if "HNSW" in spec else {})
    rng = np.random.default_rng(1)
    u = mixture_queries(emb, 12, seed=2) * 3
    k = 20
    unrestricted = brute_force(u, emb, bias, 40, [[] for _ in u])
    # Exclude some of each query's own top results (so over-fetching matters), ids outside it, duplicates, OOV.
    exclude = [
        [*unrestricted[b, rng.choice(40, size=b % 7, replace=False)].tolist(), 0, int(rng.integers(1, 3000))]
        for b in range(len(u))
    ]
    exclude[3] = exclude[3] + exclude[3]
    exclude[4] = []
    expected = brute_force(u, emb, bias, k, exclude)
    for form in (exclude, _padded(exclude)):
        ids, scores = index.search(u, k, exclude=form)
        assert ids.shape == scores.shape == (len(u), k) and ids.dtype == np.int64 and scores.dtype == np.float32
        assert not (ids == 0).any()
        for b in range(len(u)):
            assert not set(ids[b].tolist()) & {i for i in exclude[b] if i > 0}
        if spec == "IVF16,PQ4x4":  # compressed codes: approximate ranking, exact scores of what is returned
            assert recall_at_k(ids, expected) > 0.8
        else:
            np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(expected, axis=1))
        exact = np.einsum("bkd,bd->bk", emb[ids], u) + bias[ids]
        np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-4)
        assert (np.diff(scores, axis=1) <= 1e-5).all()  # best first


def _padded(rows: list[list[int]]) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows) + 2), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def test_search_pads_when_fewer_videos_than_k_and_never_returns_oov():
    emb, bias = clustered(6, 4, topics=2)
    index = VideoIndex.build(emb, bias, "Flat")
    ids, scores = index.search(np.ones((2, 4), np.float32), 8, exclude=[[1], []])
    assert sorted(ids[0][ids[0] >= 0].tolist()) == [2, 3, 4, 5]
    assert sorted(ids[1][ids[1] >= 0].tolist()) == [1, 2, 3, 4, 5]
    assert (ids[0, 4:] == -1).all() and np.isneginf(scores[0, 4:]).all()
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        index.search(np.ones((2, 5), np.float32), 3)
    with pytest.raises(ValueError, match="rows"):
        index.search(np.ones((2, 4), np.float32), 3, exclude=[[1]])


def test_similar_excludes_itself_and_ignores_bias(data):
    emb, bias = data
    index = VideoIndex.build(emb, bias * 100, "Flat")  # a huge bias would dominate if it leaked in
    ids, scores = index.similar([5, 0], 10)
    reference = brute_force(emb[[5]], emb, np.zeros(len(emb), np.float32), 10, [[5]])
    np.testing.assert_array_equal(np.sort(ids[0]), np.sort(reference[0]))
    np.testing.assert_allclose(scores[0], emb[ids[0]] @ emb[5], rtol=1e-5)
    assert (ids[1] == -1).all()  # OOV has no neighbours
    with pytest.raises(ValueError):
        index.similar(len(emb), 3)


def test_video_ids_maps_indices_and_padding(data):
    emb, bias = data
    names = np.asarray(["[OOV]", *(f"v{i}" for i in range(1, len(emb)))], dtype=object)
    index = VideoIndex.build(emb, bias, "Flat", video_ids=names)
    out = index.video_ids(np.array([[3, -1], [1, 2]]))
    assert out.tolist() == [["v3", None], ["v1", "v2"]]


@pytest.mark.parametrize(("spec", "parameter"), [("IVF64,Flat", "nprobe"), ("HNSW16", "efSearch")])
def test_tuning_reaches_target_recall_on_clustered_data(spec, parameter):
    # Loosely clustered: an inner-product HNSW graph over tight clusters of uneven norms stalls below 0.95 whatever
    # efSearch is (hubs), and the learned embeddings measured in benchmarks/index.py behave like this data.
    emb, bias = clustered(20_000, 32, topics=40, seed=4, noise=1.0)
    index = VideoIndex.build(emb, bias, spec)
    rng = np.random.default_rng(5)
    u = emb[rng.integers(1, len(emb), 300)] * 3 + rng.standard_normal((300, 32)).astype(np.float32) * 0.1
    result = index.tune(u[:150], target_recall=0.95, k=100)
    assert result["parameter"] == parameter and result["reached"] and len(result["tried"]) >= 2
    recall_of = {t[parameter]: t["recall"] for t in result["tried"]}
    assert len(recall_of) == len(result["tried"]), "no value is measured twice"
    # A doubling schedule up to the first value that reaches the target ...
    values = [t[parameter] for t in result["tried"]]
    first = next(i for i, v in enumerate(values) if recall_of[v] >= 0.95)
    assert all(b == 2 * a for a, b in itertools.pairwise(values[: first + 1]))
    # ... then the smallest value that reaches it, to within 1/8 of the last miss (to 1 for small nprobes): every
    # smaller value tried missed, and the largest of those is that close below.
    chosen = result["value"]
    assert recall_of[chosen] >= 0.95 and result["recall_at_k"] == recall_of[chosen]
    assert all(r < 0.95 for v, r in recall_of.items() if v < chosen)
    if first > 0:
        below = max(v for v in recall_of if v < chosen)
        assert chosen - below <= max(1, below // 8)
    if parameter == "nprobe":  # k-means is seeded (an HNSW build with threads need not be): 3, where doubling took 4
        assert chosen < values[first], "the bisection improved on the doubling here"
    assert index.params[parameter] == chosen
    assert index.recall(u[150:], k=100) >= 0.9  # held-out queries land close to the target


def test_gpu_is_used_when_present_and_the_saved_index_is_cpu(monkeypatch, tmp_path, data):
    emb, bias = data
    calls: list[str] = []

    def to_gpus(index):
        calls.append("cpu_to_gpus")
        return index  # stands in for a GPU clone: same interface

    def to_cpu(index):
        calls.append("gpu_to_cpu")
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", to_cpu, raising=False)  # absent from CPU builds
    index = VideoIndex.build(emb, bias, "IVF16,Flat")
    assert index.device == "gpu" and index.stats["device"] == "gpu" and calls == ["cpu_to_gpus"]
    index.write(tmp_path / "index.faiss")
    assert calls == ["cpu_to_gpus", "gpu_to_cpu"]
    again = VideoIndex.read(tmp_path / "index.faiss", emb, bias, "IVF16,Flat", params={"nprobe": 16})
    assert again.device == "gpu" and calls[-1] == "cpu_to_gpus"
    u = mixture_queries(emb, 4)
    np.testing.assert_array_equal(again.search(u, 10)[0], brute_force(u, emb, bias, 10, [[]] * 4))

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    calls.clear()
    cpu = VideoIndex.build(emb, bias, "IVF16,Flat")
    cpu.write(tmp_path / "cpu.faiss")
    assert cpu.device == "cpu" and calls == []


def test_gpu_clone_failure_falls_back_to_cpu(monkeypatch, data):
    emb, bias = data

    def refuse(index):
        raise RuntimeError("not implemented on GPU")

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", refuse, raising=False)
    index = VideoIndex.build(emb, bias, "HNSW16")
    assert index.device == "cpu" and index.ntotal == len(emb) - 1


def test_write_read_round_trip_and_unreadable_files(tmp_path, data):
    emb, bias = data
    index = VideoIndex.build(emb, bias, "IVF16,Flat")
    index.set_params(nprobe=4)
    path = tmp_path / "index.faiss"
    index.write(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left
    again = VideoIndex.read(path, emb, bias, "IVF16,Flat", params={"nprobe": 4})
    u = mixture_queries(emb, 5)
    np.testing.assert_array_equal(again.search(u, 10)[0], index.search(u, 10)[0])

    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(IndexFileError, match="truncated or corrupt"):
        read_index(path)
    path.write_bytes(b"not an index at all")
    with pytest.raises(IndexFileError, match="truncated or corrupt"):
        read_index(path)
    with pytest.raises(IndexFileError, match="not found"):
        read_index(tmp_path / "missing.faiss")
    narrow = tmp_path / "narrow.faiss"
    VideoIndex.build(emb[:, :8], bias, "Flat").write(narrow)
    with pytest.raises(ValueError, match="dimension"):
        VideoIndex.read(narrow, emb, bias, "Flat")


def test_bias_is_folded_in_as_an_extra_coordinate():
    emb = np.eye(3, dtype=np.float32)
    bias = np.array([0.0, 0.0, 5.0], np.float32)
    items, queries = augment_items(emb, bias), augment_queries(np.array([[0, 1, 0]], np.float32))
    assert (queries @ items.T).tolist() == [[0.0, 1.0, 5.0]]
    index = VideoIndex.build(emb, bias, "Flat")
    ids, scores = index.search(np.array([[0, 1, 0]], np.float32), 2)
    assert ids.tolist() == [[2, 1]] and scores.tolist() == [[5.0, 1.0]]


def test_short_answers_are_refilled_with_more_probes() -> None:
    """A query whose nearest IVF lists hold fewer than k vectors still gets k results (more lists probed)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 16)).astype(np.float32) * 4
    embeddings = (centres[rng.integers(0, 64, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    index = VideoIndex.build(embeddings, None, "IVF64,Flat")
    index.set_params(nprobe=1)
    queries = rng.normal(size=(32, 16)).astype(np.float32)
    raw, _ = index._search(augment_queries(queries), 300, None)
    assert (raw[:, -1] < 0).any(), "the test needs lists smaller than k at nprobe 1"
    ids, scores = index.search(queries, 300)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert index.params["nprobe"] == 1, "the refill must not change the index's own setting"
    for row in ids:
        assert len(set(row.tolist())) == 300


@pytest.mark.parametrize("spec", ["IVF16,Flat", "PCA8,IVF16,Flat"])
def test_set_nprobe_reaches_the_ivf_part_plain_or_wrapped(spec: str) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2000, 16)).astype(np.float32)
    index = faiss.index_factory(16, spec, faiss.METRIC_INNER_PRODUCT)
    index.train(data)
    set_nprobe(index, 7)
    assert faiss.extract_index_ivf(index).nprobe == 7


def test_no_gpu_clone_on_a_cpu_machine() -> None:
    if faiss.get_num_gpus() > 0:
        pytest.skip("this machine has a GPU")
    assert clone_to_gpus(faiss.IndexFlatIP(4)) is None


def test_smallest_reaching_brackets_then_bisects_and_measures_each_value_once():
    calls: list[int] = []

    def measure(width: int) -> float:  # recall rises with the width and first reaches 0.95 at 37
        calls.append(width)
        return min(1.0, 0.6 + 0.35 * width / 37)

    value, recall = smallest_reaching(measure, doubling_schedule(128), 0.95)
    assert calls[:7] == [1, 2, 4, 8, 16, 32, 64]  # the doubling brackets it between 32 and 64
    assert recall == measure(value) >= 0.95 and 37 <= value <= 37 + 37 // 8  # within 1/8 of the true 37
    assert len(calls) == len(set(calls)) + 1  # each value once (the +1 is the call in the assert above)
    # Reached at once: no bisection. Never reached: the last value and its recall.
    assert smallest_reaching(lambda w: 0.99, [1, 2, 4], 0.95) == (1, 0.99)
    assert smallest_reaching(lambda w: w / 100, [1, 2, 4], 0.95) == (4, 0.04)
    assert doubling_schedule(48) == [1, 2, 4, 8, 16, 32, 48] and doubling_schedule(1) == [1]
    with pytest.raises(ValueError):
        smallest_reaching(measure, [], 0.95)
