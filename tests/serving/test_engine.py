"""The engine answers batches exactly as the index and tower do one query at a time; the JSON encoder is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.features import query_tokens
from serving.encode import candidates_json, dumps
from serving.engine import Context, Engine, Query, Result
from serving.models import CandidatesResponse
from tests.serving.conftest import Trained


@pytest.fixture(scope="module")
def engine(trained: Trained) -> Engine:
    return Engine.load(trained.bundles, catalog=trained.log / "videos.parquet")


def test_a_batch_equals_its_queries_one_by_one(engine: Engine) -> None:
    ids = engine.video_ids[1:30].tolist()
    queries = [
        Query(history=ids[:5], tokens=[], k=20, exclude=ids[:5]),
        Query(history=[], tokens=["zzz"], context=Context(country="nowhere", age=40.0), k=7),
        Query(history=ids[5:25], tokens=[], k=50, exclude=[*ids[5:25], "unknown-id"]),
        Query(history=ids[:3], tokens=[], k=10, exclude=ids[:3], popularity_only=True),
    ]
    batch = engine.recommend(queries)
    for query, got in zip(queries, batch, strict=True):
        alone = engine.recommend([query])[0]
        np.testing.assert_array_equal(got.ids, alone.ids)
        np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-5, atol=1e-5)
        assert len(got.ids) == query.k
        assert len(set(got.ids.tolist())) == len(got.ids) and 0 not in got.ids
        assert not set(got.video_ids.tolist()) & set(query.exclude)
        assert np.all(np.diff(got.scores) <= 1e-6)
        assert got.titles is not None and all(isinstance(t, str) for t in got.titles)


def test_tower_answers_are_the_exact_top_k_of_the_user_vector(engine: Engine) -> None:
    history = engine.video_ids[10:20].tolist()
    u = engine.user_vectors([Query(history=history, tokens=[])])[0]
    emb, bias = np.asarray(engine.bundle.embeddings), np.asarray(engine.bundle.bias)
    scores = emb @ u + bias
    scores[0] = -np.inf
    scores[engine.lookup(history)] = -np.inf
    expected = np.argsort(-scores)[:25]
    got = engine.recommend([Query(history=history, tokens=[], k=25, exclude=history)])[0]
    assert engine.bundle.manifest["index"]["spec"] == "Flat"  # so the answer must be exact
    np.testing.assert_array_equal(got.ids, expected)
    np.testing.assert_allclose(got.scores, scores[expected], rtol=1e-4, atol=1e-4)


def test_history_changes_the_user_vector_and_unknown_ids_are_counted(engine: Engine) -> None:
    known = engine.video_ids[1:6].tolist()
    cold, warm = engine.user_vectors([Query(history=[], tokens=[]), Query(history=known, tokens=[])])
    assert not np.allclose(cold, warm)
    result = engine.recommend([Query(history=[*known, "nope", "nada"], tokens=[], k=5)])[0]
    assert result.unknown_history == 2


def test_popularity_answers_follow_the_vocabulary_counts(engine: Engine) -> None:
    top = engine.video_ids[1:4].tolist()
    result = engine.recommend([Query(history=[], tokens=[], k=5, exclude=top[:2], popularity_only=True)])[0]
    assert result.popularity and result.video_ids[0] == top[2]
    counts = engine.bundle.features.videos.counts.to_numpy()
    assert np.all(np.diff(counts[result.ids - 1]) <= 0)


def test_similar_excludes_the_video_itself(engine: Engine) -> None:
    result = engine.similar(5, 10)
    assert 5 not in result.ids and len(result.ids) == 10


def test_the_notebook_recommender_answers_as_the_engine_does(engine: Engine) -> None:
    rec = engine.recommender  # the engine's own tower, index and id lookup: one implementation, two front ends
    history = engine.video_ids[30:36].tolist()
    context = Context(country="nowhere", device="mobile", age=31.0, logged_in=1.0)
    got = rec.recommend([*history, "unknown-id"], searches=["Some query", "another"], context=context, k=15)
    tokens = query_tokens(["Some query", "another"])
    query = Query(history=[*history, "unknown-id"], tokens=tokens, context=context, k=15, exclude=history)
    [expected] = engine.recommend([query])
    assert [vid for vid, _ in got] == expected.video_ids.tolist()
    np.testing.assert_allclose([score for _, score in got], expected.scores, rtol=1e-6)
    assert not {vid for vid, _ in got} & set(history)
    assert history[0] in {vid for vid, _ in rec.recommend(history, k=engine.n_videos, exclude=[])}
    similar = engine.similar(engine.lookup(history[:1])[0], 10)
    assert [vid for vid, _ in rec.similar(history[0], k=10)] == similar.video_ids.tolist()
    with pytest.raises(KeyError, match="not in bundle"):
        rec.similar("unknown-id")


def test_candidates_json_parses_back_through_the_response_model() -> None:
    names = np.asarray(['a"b', "ü-ñ", "x\\y"], dtype=object)
    titles = np.asarray(["T1", None, 'quote " and \n newline'], dtype=object)
    result = Result("v1", np.arange(3), names, titles, np.asarray([3.5, 1.25, -2.0], np.float32), 0, False)
    body = json.loads(dumps({"model_version": "v1", "degraded": False, "source": "tower", "unknown_history": 0},
                            candidates_json(result)))  # fmt: skip
    parsed = CandidatesResponse.model_validate(body)
    assert [c.video_id for c in parsed.candidates] == names.tolist()
    assert [c.title for c in parsed.candidates] == titles.tolist()
    assert [c.score for c in parsed.candidates] == [3.5, 1.25, -2.0]
    no_titles = Result("v1", np.arange(3), names, None, np.zeros(3, np.float32), 0, False)
    assert "title" not in candidates_json(no_titles)
