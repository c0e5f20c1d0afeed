"""The FastAPI application: routes, lifecycle (load, hot reload, polling) and the request guards.

``create_app(config)`` builds an app for one process; ``app_from_env()`` is the factory uvicorn workers import
(settings from RECSYS_* variables and the config file), so ``recsys serve --workers N`` starts N identical
processes that share the memory-mapped bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import serving.metrics as metrics
from recsys import __version__
from recsys.bundle import resolve_bundle
from recsys.config import PipelineConfig, ServeConfig, load_settings
from recsys.errors import RecsysError
from recsys.features import query_tokens, tokenize
from recsys.logs import configure_from_env
from serving.batcher import Arrival, MicroBatcher
from serving.encode import candidates_json, dumps
from serving.engine import Context, Engine, Result, configure_tensorflow
from serving.engine import Query as EngineQuery
from serving.history import EMPTY, History, HistoryStore, MemoryStore, RedisStore, StoreUnavailable, Writes
from serving.models import (
    CandidatesRequest,
    CandidatesResponse,
    EventsRequest,
    EventsResponse,
    HealthResponse,
    ReloadResponse,
    SimilarResponse,
    UserHistoryResponse,
)

log = logging.getLogger(__name__)

__all__ = ["Service", "app_from_env", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ---------------------------------------------------------------------------------------------- state
class Service:
    """Everything one process serves with: the current engine (swapped atomically), the store, the batcher."""

    def __init__(self, config: ServeConfig, store: HistoryStore | None = None) -> None:
        """Not loaded until ``start``."""
        if config.bundles is None:
            raise RecsysError("no bundles directory: pass --bundles or set RECSYS_SERVE__BUNDLES")
        self.config = config
        self.engine: Engine | None = None
        self.store = store or make_store(config)
        self.batcher: MicroBatcher[EngineQuery, Result] = MicroBatcher(
            self._answer,
            max_batch=config.max_batch,
            max_wait_us=config.max_wait_us,
            on_batch=metrics.BATCH_SIZE.observe,
        )
        self._reload_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self.load_error: str | None = None

    def _answer(self, queries: list[EngineQuery]) -> list[Result]:
        engine = self.engine  # read once: a reload during this batch does not mix two models in it
        if engine is None:
            raise RuntimeError("no model loaded")
        return engine.recommend(queries)

    async def start(self) -> None:
        """Start batching, load the bundle (fatal unless polling will retry), start polling."""
        configure_tensorflow(self.config.tf_intra_op_threads, self.config.tf_inter_op_threads)
        self.batcher.start()
        try:
            await self.reload()
        except Exception as exc:
            self.load_error = str(exc)
            if self.config.poll_seconds <= 0:
                raise
            log.error("no bundle loaded yet (%s); retrying every %.0fs", exc, self.config.poll_seconds)
        if self.config.poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="bundle-poller")

    async def stop(self) -> None:
        """Stop polling and batching, close the store."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.batcher.stop()
        await self.store.close()

    async def reload(self, force: bool = False) -> ReloadResponse:
        """Load what BUNDLES/latest names, verify and warm it up off the event loop, then swap it in.

        Raises (and keeps the current engine) when the new bundle is refused.
        """
        async with self._reload_lock:
            t0 = time.perf_counter()
            assert self.config.bundles is not None
            target = resolve_bundle(self.config.bundles)
            previous = self.engine.model_version if self.engine is not None else None
            if self.engine is not None and self.engine.bundle.path == target and not force:
                metrics.RELOADS.labels("unchanged").inc()
                return ReloadResponse(status="unchanged", model_version=previous or "", seconds=0.0)
            try:
                engine = await asyncio.get_running_loop().run_in_executor(
                    None,
                    lambda: Engine.load(
                        target,
                        mmap=self.config.mmap,
                        verify_checksums=self.config.verify_checksums,
                        catalog=self.config.catalog,
                    ),
                )
            except Exception:
                metrics.RELOADS.labels("refused").inc()
                raise
            self.engine = engine  # the swap: batches that already started finish on the previous engine
            self.store.cap, self.store.token_cap = history_caps(self.config, engine)
            # TensorFlow, the web stack and the bundle leave ~400k long-lived objects; a full collection walks them
            # all with the GIL held (0.3-0.4 s at 1M videos), every few seconds under load. Collect once now and
            # move the survivors out of the collector's sight (unfrozen first so a replaced engine can be freed).
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.load_error = None
            if previous is not None:
                metrics.MODEL_INFO.labels(previous).set(0)
            metrics.MODEL_INFO.labels(engine.model_version).set(1)
            metrics.RELOADS.labels("reloaded").inc()
            seconds = time.perf_counter() - t0
            log.info("serving %s (was %s), loaded in %.2fs", engine.model_version, previous, seconds)
            return ReloadResponse(
                status="reloaded", model_version=engine.model_version, previous_version=previous, seconds=seconds
            )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            try:
                await self.reload()
            except Exception as exc:  # keep serving what we have; the next poll tries again
                self.load_error = str(exc)
                log.error("bundle poll: %s", exc)

    async def history(self, user_id: str | None) -> tuple[History, bool]:
        """The user's stored history and whether the store failed (degraded)."""
        if not user_id:
            return EMPTY, False
        try:
            found = await self.store.read(user_id)
        except StoreUnavailable as exc:
            log.debug("history read failed: %s", exc)
            metrics.STORE_UP.set(0)
            return EMPTY, True
        metrics.STORE_UP.set(1)
        return found, False


# The caps before the first bundle is loaded (events may arrive while it loads): the pipeline's defaults.
_PIPELINE_DEFAULTS = PipelineConfig()
DEFAULT_HISTORY_CAPS = (_PIPELINE_DEFAULTS.max_history, _PIPELINE_DEFAULTS.max_search_tokens)


def history_caps(config: ServeConfig, engine: Engine | None) -> tuple[int, int]:
    """(watches, search tokens) kept per user: the configured cap for both, else as many of each as the engine's
    tower reads (the history hidden from a user's candidates is then the one offline evaluation hides, and nothing
    is stored that the tower would never read), else the pipeline's defaults."""
    if config.history_cap is not None:
        return config.history_cap, config.history_cap
    if engine is None:
        return DEFAULT_HISTORY_CAPS
    return engine.recommender.max_history, engine.recommender.max_search_tokens


def make_store(config: ServeConfig) -> HistoryStore:
    """The configured history store (its caps follow the bundle once one is loaded; see ``history_caps``)."""
    cap, token_cap = history_caps(config, None)
    if config.store == "memory":
        log.warning("history store: in-process memory (one worker only, lost on restart)")
        return MemoryStore(cap=cap, token_cap=token_cap)
    from serving.history import CircuitBreaker

    password = config.redis_password.get_secret_value() if config.redis_password else None
    return RedisStore(
        config.redis_url,
        password=password,
        prefix=config.key_prefix,
        cap=cap,
        token_cap=token_cap,
        ttl_seconds=config.history_ttl_seconds,
        timeout_seconds=config.redis_timeout_ms / 1000,
        breaker=CircuitBreaker(config.breaker_failures, config.breaker_reset_seconds),
    )


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _engine(request: Request) -> Engine:
    engine = _service(request).engine
    if engine is None:
        raise HTTPException(503, "no model loaded yet", headers={"Retry-After": "5"})
    return engine


# ---------------------------------------------------------------------------------------------- guards
def _invalid(loc: tuple[str, ...], msg: str, kind: str) -> RequestValidationError:
    """A 422 in the documented shape (HTTPValidationError: a list of {loc, msg, type}), as pydantic's own."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": kind}])


def _check_strings(values: list[str], what: str, max_items: int, max_length: int, where: str = "body") -> None:
    """Refuse too many items, too long items and strings that are not valid Unicode text (lone surrogates)."""
    loc = (where, *what.split("."))
    if len(values) > max_items:
        raise _invalid(loc, f"{len(values)} items, at most {max_items} allowed", "too_long")
    if values and max(map(len, values)) > max_length:
        raise _invalid(loc, f"an item is longer than {max_length} characters", "string_too_long")
    try:
        "\n".join(values).encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(loc, "not valid UTF-8 text (lone surrogate)", "string_unicode") from None


class BodyLimit:
    """413 for a request body over the limit, by Content-Length or by the bytes actually received."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        """Wrap an ASGI app."""
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the body as it arrives."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _too_large(self.max_bytes, send)
            return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except _BodyTooLarge:
            if not started:
                await _too_large(self.max_bytes, send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Instrument:
    """Request counts and latency per route template (not per raw path: ids would explode the label set)."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap an ASGI app."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and record its status."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.REQUESTS.labels(template, scope.get("method", ""), str(status)).inc()
            metrics.REQUEST_SECONDS.labels(template).observe(time.perf_counter() - t0)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with pydantic's messages; a body that is not JSON (or not UTF-8) is a 400."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse({"detail": "request body is not valid JSON"}, status_code=400)
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


# ---------------------------------------------------------------------------------------------- routes
api = APIRouter(prefix="/v1", tags=["candidates"])
ops = APIRouter(tags=["operations"])
admin = APIRouter(prefix="/admin", tags=["admin"])
_bearer = HTTPBearer(auto_error=False)


def _json(fields: dict[str, Any], result: Result) -> Response:
    return Response(dumps(fields, candidates_json(result)), media_type="application/json")


@api.post(
    "/candidates",
    response_model=CandidatesResponse,
    responses={400: {"description": "body is not JSON"}, 413: {"description": "body too large"}},
)
async def candidates(body: CandidatesRequest, request: Request) -> Response:
    """Ranked candidate videos for a user (stored history + the request's own), watched videos hidden by default."""
    service = _service(request)
    _engine(request)
    cfg = service.config
    _check_strings(body.history, "history", cfg.max_items, cfg.max_id_length)
    _check_strings(body.exclude, "exclude", cfg.max_items, cfg.max_id_length)
    _check_strings(body.searches, "searches", cfg.max_items, cfg.max_query_length)
    _check_strings([body.user_id or ""], "user_id", 1, cfg.max_id_length)
    ctx = body.context
    _check_strings([ctx.country or "", ctx.device or "", ctx.gender or ""], "context", 3, 64)
    if body.k > cfg.max_k:
        raise _invalid(("body", "k"), f"at most {cfg.max_k}", "less_than_equal")
    with service.batcher.arriving() as arrival:
        return await _candidates(service, body, arrival)


async def _candidates(service: Service, body: CandidatesRequest, arrival: Arrival[EngineQuery, Result]) -> Response:
    stored, degraded = await service.history(body.user_id)
    ctx = body.context
    history = stored.watches + body.history
    tokens = stored.tokens + query_tokens(body.searches)
    query = EngineQuery(
        history=history,
        tokens=tokens,
        context=Context(
            country=ctx.country or "",
            device=ctx.device or "",
            gender=ctx.gender or "",
            age=float("nan") if ctx.age is None else float(ctx.age),
            logged_in=1.0 if ctx.logged_in else 0.0,
        ),
        k=body.k,
        exclude=(history + body.exclude) if body.exclude_watched else body.exclude,
        # The store failed and the request brings nothing of its own: popularity, not a context-only guess.
        popularity_only=degraded and not body.history and not body.searches,
    )
    result = await arrival.submit(query)
    if degraded:
        metrics.DEGRADED.labels("store_unavailable").inc()
    if result.unknown_history:
        metrics.UNKNOWN_IDS.labels("history").inc(result.unknown_history)
    fields = {
        "model_version": result.model_version,
        "degraded": degraded,
        "source": "popularity" if result.popularity else "tower",
        "unknown_history": result.unknown_history,
    }
    return _json(fields, result)


@api.get("/videos/{video_id}/similar", response_model=SimilarResponse, responses={404: {"description": "unknown"}})
async def similar(
    video_id: str, request: Request, k: Annotated[int, Query(ge=1, le=1000, description="neighbours")] = 20
) -> Response:
    """Videos whose embeddings are nearest to this one's (inner product), itself excluded."""
    engine = _engine(request)
    index = engine.index_of(video_id) if len(video_id) <= _service(request).config.max_id_length else None
    if index is None:
        metrics.UNKNOWN_IDS.labels("similar").inc()
        raise HTTPException(404, "unknown video id")
    result = await _service(request).batcher.run(lambda: engine.similar(index, k))
    return _json({"model_version": result.model_version, "video_id": video_id}, result)


@api.post(
    "/events",
    status_code=202,
    response_model=EventsResponse,
    responses={
        400: {"description": "body is not JSON"},
        413: {"description": "body too large"},
        503: {"description": "history store unavailable; nothing was stored"},
    },
)
async def events(body: EventsRequest, request: Request) -> EventsResponse:
    """Record watches and searches into each user's capped history (one store round trip per request)."""
    service = _service(request)
    cfg = service.config
    if len(body.events) > cfg.max_items or len(body.searches) > cfg.max_items:
        limit = f"at most {cfg.max_items} events and {cfg.max_items} searches per request"
        raise _invalid(("body",), limit, "too_long")
    _check_strings([e.user_id for e in body.events], "events.user_id", cfg.max_items, cfg.max_id_length)
    _check_strings([e.video_id for e in body.events], "events.video_id", cfg.max_items, cfg.max_id_length)
    _check_strings([s.user_id for s in body.searches], "searches.user_id", cfg.max_items, cfg.max_id_length)
    _check_strings([s.query for s in body.searches], "searches.query", cfg.max_items, cfg.max_query_length)
    now = datetime.now(UTC)

    def when(ts: datetime | None) -> datetime:
        if ts is None:
            return now
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)

    writes: defaultdict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for event in sorted(body.events, key=lambda e: when(e.ts)):
        writes[event.user_id][0].append(event.video_id)
    searches = sorted(body.searches, key=lambda s: when(s.ts))
    if searches:
        import pyarrow as pa

        token_lists = tokenize(pa.array([s.query for s in searches], pa.string())).to_pylist()
        for search, tokens in zip(searches, token_lists, strict=True):
            writes[search.user_id][1].extend(tokens)
    try:
        await service.store.append(Writes(writes))
    except StoreUnavailable as exc:
        metrics.STORE_UP.set(0)
        raise HTTPException(503, f"history store unavailable, nothing stored: {exc}", {"Retry-After": "1"}) from exc
    metrics.STORE_UP.set(1)
    return EventsResponse(stored_events=len(body.events), stored_searches=len(body.searches), users=len(writes))


@api.get("/users/{user_id:path}/history", response_model=UserHistoryResponse)
async def user_history(user_id: str, request: Request) -> UserHistoryResponse:
    """A user's stored watches (with titles when a catalog is loaded) and search tokens, oldest first."""
    service = _service(request)
    engine = _engine(request)
    _check_strings([user_id], "user_id", 1, service.config.max_id_length, where="path")
    stored, degraded = await service.history(user_id)
    rows = engine.lookup(stored.watches)
    titles = engine.titles[rows] if engine.titles is not None else [None] * len(rows)
    items = [{"video_id": v, "score": 0.0, "title": t} for v, t in zip(stored.watches, titles, strict=True)]
    return UserHistoryResponse.model_validate(
        {"user_id": user_id, "history": items, "search_tokens": stored.tokens, "degraded": degraded}
    )


@ops.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive (says nothing about the model or Redis)."""
    return HealthResponse(status="ok")


@ops.get("/readyz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def readyz(request: Request) -> JSONResponse:
    """200 once a model is loaded and the history store answers (or degraded answers are allowed)."""
    service = _service(request)
    engine = service.engine
    store_ok = await service.store.ping()
    metrics.STORE_UP.set(1 if store_ok else 0)
    version = engine.model_version if engine is not None else None
    ready = engine is not None and (store_ok or service.config.allow_degraded)
    detail = None
    if engine is None:
        detail = f"no model loaded: {service.load_error or 'loading'}"
    elif not store_ok:
        detail = "history store unreachable" + ("; answering degraded" if service.config.allow_degraded else "")
    body = HealthResponse(
        status="ready" if ready else "not ready",
        model_version=version,
        store=f"{service.store.kind}: {'up' if store_ok else 'down'}",
        detail=detail,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@ops.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def prometheus_metrics() -> Response:
    """Prometheus exposition: request counts and latencies per route, degraded answers, batch sizes, reloads."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)


def _require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    token = _service(request).config.admin_token
    if credentials is None:
        raise HTTPException(401, "admin endpoints need a bearer token", headers={"WWW-Authenticate": "Bearer"})
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled: no admin token configured (RECSYS_ADMIN_TOKEN)")
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "wrong admin token")


@admin.post(
    "/reload",
    response_model=ReloadResponse,
    dependencies=[Depends(_require_admin)],
    responses={401: {"description": "no token"}, 403: {"description": "wrong token"}, 409: {"description": "refused"}},
)
async def reload(request: Request, force: bool = False) -> ReloadResponse:
    """Load BUNDLES/latest, verify it (checksums, dimensions, warm-up queries) and swap it in without downtime."""
    service = _service(request)
    try:
        return await service.reload(force=force)
    except Exception as exc:
        current = service.engine.model_version if service.engine is not None else None
        raise HTTPException(409, f"bundle refused: {exc}; still serving {current}") from exc


# ---------------------------------------------------------------------------------------------- app
def create_app(config: ServeConfig, store: HistoryStore | None = None) -> FastAPI:
    """The service for one process; the bundle is loaded at start-up (lifespan)."""
    service = Service(config, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="recsys candidate service",
        version=__version__,
        summary="YouTube-style two-tower candidate generation: user tower + FAISS maximum inner product search.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(api)
    app.include_router(ops)
    app.include_router(admin)
    _mount_page(app)
    app.add_middleware(Instrument)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    return app


def _mount_page(app: FastAPI) -> None:
    """Serve the static demo page at / when it is present."""
    page = Path(__file__).with_name("static") / "index.html"
    if not page.is_file():
        return

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page.read_bytes(), media_type="text/html")


def app_from_env() -> FastAPI:
    """The app of a uvicorn worker: settings from $RECSYS_CONFIG / ./recsys.toml and RECSYS_* variables."""
    configure_from_env()  # $RECSYS_LOG_LEVEL, which `recsys serve` sets from its -q / -v
    return create_app(load_settings().serve)
