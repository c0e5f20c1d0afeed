"""Request and response models of the HTTP API (the OpenAPI schema is generated from these).

Limits that depend on settings (item counts, id lengths) are checked by the routes, not here, so the schema
stays static; everything else (types, ranges, unknown fields) is refused by pydantic with a 422.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Candidate",
    "CandidatesRequest",
    "CandidatesResponse",
    "EventsRequest",
    "EventsResponse",
    "HealthResponse",
    "ReloadResponse",
    "SearchEvent",
    "SimilarResponse",
    "UserContext",
    "UserHistoryResponse",
    "WatchEvent",
]

MAX_K = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, str_strip_whitespace=False)


class UserContext(_Strict):
    """The user's attributes; unknown values fall back to the out-of-vocabulary embedding."""

    country: str | None = Field(None, max_length=64, examples=["DE"])
    device: str | None = Field(None, max_length=64, examples=["mobile"])
    gender: str | None = Field(None, max_length=64)
    age: float | None = Field(None, ge=0, le=150, description="years")
    logged_in: bool | None = None


class CandidatesRequest(_Strict):
    """Who to recommend for: a stored user, an explicit recent history, or both (the request's items are newest)."""

    user_id: str | None = Field(None, min_length=1, description="read the user's stored history and searches")
    history: list[str] = Field(default_factory=list, description="recently watched video ids, oldest first")
    searches: list[str] = Field(default_factory=list, description="recent search queries, oldest first")
    context: UserContext = Field(default_factory=UserContext)
    k: int = Field(100, ge=1, le=MAX_K, description="number of candidates")
    exclude_watched: bool = Field(True, description="never return a video in the (stored + request) history")
    exclude: list[str] = Field(default_factory=list, description="further video ids never to return")


class Candidate(BaseModel):
    """One recommended video and its score u·V_j + b_j (log-count for popularity answers)."""

    video_id: str
    score: float
    title: str | None = None


class CandidatesResponse(BaseModel):
    """Ranked candidates, best first, no duplicates."""

    model_version: str
    candidates: list[Candidate]
    degraded: bool = Field(description="the history store was unavailable: answered from the request alone")
    source: str = Field(description="tower | popularity")
    unknown_history: int = Field(description="history ids the model does not know (ignored)")


class SimilarResponse(BaseModel):
    """Nearest videos by embedding inner product."""

    model_version: str
    video_id: str
    candidates: list[Candidate]


class WatchEvent(_Strict):
    """One watch; ts defaults to the time of arrival."""

    user_id: str = Field(min_length=1)
    video_id: str = Field(min_length=1)
    ts: datetime | None = None
    watch_seconds: float | None = Field(None, ge=0)


class SearchEvent(_Strict):
    """One search query; it is stored as tokens, as the pipeline tokenises queries."""

    user_id: str = Field(min_length=1)
    query: str = Field(min_length=1)
    ts: datetime | None = None


class EventsRequest(_Strict):
    """A batch of watch and search events."""

    events: list[WatchEvent] = Field(default_factory=list)
    searches: list[SearchEvent] = Field(default_factory=list)


class EventsResponse(BaseModel):
    """What was stored."""

    stored_events: int
    stored_searches: int
    users: int


class UserHistoryResponse(BaseModel):
    """A user's stored history, oldest first."""

    user_id: str
    history: list[Candidate]
    search_tokens: list[str]
    degraded: bool


class HealthResponse(BaseModel):
    """Liveness / readiness."""

    status: str
    model_version: str | None = None
    store: str | None = None
    detail: str | None = None


class ReloadResponse(BaseModel):
    """Outcome of a reload."""

    status: str = Field(description="reloaded | unchanged")
    model_version: str
    previous_version: str | None = None
    seconds: float
