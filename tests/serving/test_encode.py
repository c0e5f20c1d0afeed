"""The candidate JSON written straight from arrays parses back through the documented response model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.encode import candidates_json, dumps
from serving.engine import Result
from serving.models import CandidatesResponse


def _result(n: int, titles: bool, seed: int = 0) -> Result:
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1)
    names = np.array([f'v"{i}\\é' for i in ids], dtype=object)  # quotes, backslashes, non-ASCII
    scores = np.sort(rng.normal(0, 50, n).astype(np.float32))[::-1]
    title_values = np.array([None if i % 3 == 0 else f"Title {i} ☃" for i in ids], dtype=object) if titles else None
    return Result("m1", ids, names, title_values, scores, 0, False)


@pytest.mark.parametrize("titles", [False, True])
@pytest.mark.parametrize("n", [0, 1, 100])
def test_candidates_round_trip_through_the_response_model(n: int, titles: bool) -> None:
    result = _result(n, titles)
    fields = {"model_version": "m1", "degraded": False, "source": "tower", "unknown_history": 0}
    body = json.loads(dumps(fields, candidates_json(result)))
    parsed = CandidatesResponse.model_validate(body)
    assert [c.video_id for c in parsed.candidates] == result.video_ids.tolist()
    got = np.array([c.score for c in parsed.candidates], dtype=np.float32)
    np.testing.assert_allclose(got, result.scores, rtol=1e-6)
    if titles:
        assert result.titles is not None
        assert [c.title for c in parsed.candidates] == result.titles.tolist()


def test_non_finite_scores_are_an_error_not_invalid_json() -> None:
    result = _result(3, False)
    result.scores[1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        candidates_json(result)
