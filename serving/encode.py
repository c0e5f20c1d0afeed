"""JSON bodies of candidate lists written straight from arrays.

Building k pydantic objects (or dicts) per answer costs more than the search itself at k = 100. The candidate
list is formatted with C-level ``map`` calls over the id, score and title arrays instead; the result is exactly
what the ``Candidate`` model documents (tests parse it back through the model).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from serving.engine import Result

__all__ = ["candidates_json", "dumps"]

_quote = json.encoder.encode_basestring_ascii  # the C implementation
_ITEM = '{{"video_id":{},"score":{}}}'.format
_ITEM_TITLE = '{{"video_id":{},"score":{},"title":{}}}'.format


def _title(value: str | None) -> str:
    return "null" if value is None else str(_quote(value))


def candidates_json(result: Result) -> str:
    """The JSON array of a result's candidates: [{"video_id": ..., "score": ..., ("title": ...)}, ...]."""
    ids = map(_quote, result.video_ids.tolist())
    scores = map(repr, np.round(result.scores.astype(np.float64), 6).tolist())
    if result.titles is None:
        items = map(_ITEM, ids, scores)
    else:
        items = map(_ITEM_TITLE, ids, scores, map(_title, result.titles.tolist()))
    return "[" + ",".join(items) + "]"


def dumps(fields: dict[str, Any], candidates: str) -> bytes:
    """A response object: the plain fields through json.dumps, then the pre-formatted candidate array."""
    head = json.dumps(fields, separators=(",", ":"))
    return (head[:-1] + ',"candidates":' + candidates + "}").encode()
