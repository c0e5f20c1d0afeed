"""Schemathesis over the live service's OpenAPI schema: no 5xx, and every answer matches what the schema documents.

One real `recsys serve` (Redis history store, the session's bundle) is fuzzed once per module; the tests then look
at that run from different angles. Generation is derandomized and bounded (a fixed number of examples per
operation, no shrinking), so a run takes seconds and a failure reproduces.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serving.conftest import ADMIN_TOKEN, Api, RedisServer, Trained, free_port, start_api, stop_api

pytestmark = pytest.mark.slow

EXAMPLES = 40  # per operation and generation mode
RELOAD_EXAMPLES = 8  # a forced reload loads the whole bundle again: a few are enough
KNOWN_ID_EXAMPLES = 15
FUZZ_SECONDS = 120  # the whole fuzz run must stay well under this

# The checks every response must pass; status-code conformance is reported separately (see its test).
REQUIRED_CHECKS: tuple[Callable[..., Any], ...] = (
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
)
ALL_CHECKS = (*REQUIRED_CHECKS, status_code_conformance)

# Operations whose parameters or bodies give the negative mode something to break.
NEGATABLE = {"POST /v1/candidates", "POST /v1/events", "GET /v1/videos/{video_id}/similar", "POST /admin/reload"}
EXPECTED_OPERATIONS = NEGATABLE | {
    "GET /v1/users/{user_id}/history",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
}


@dataclass(frozen=True)
class Finding:
    """One failed check on one response."""

    operation: str
    mode: str
    check: str
    message: str
    curl: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.operation} ({self.mode}): {self.message}\n    {self.curl}"


@dataclass
class FuzzReport:
    """What the run did (examples and statuses per operation and mode) and what failed."""

    examples: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: defaultdict[tuple[str, str], Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    known_video: str = ""

    def failed(self, *checks: Callable[..., Any]) -> list[Finding]:
        names = {c.__name__ for c in checks}
        return [f for f in self.findings if f.check in names]


def _messages(exc: BaseException) -> list[str]:
    """The failures inside a schemathesis FailureGroup (or one exception), each as its first lines."""
    inner = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
    out = []
    for e in inner:
        title = getattr(e, "title", type(e).__name__)
        text = " ".join(str(e).split())[:400]
        out.append(f"{title}: {text}")
    return out


def _validate(
    report: FuzzReport, label: str, mode: str, case: Any, response: Any, checks: tuple[Callable[..., Any], ...]
) -> None:
    """Run each check on its own, so every failed check is recorded (not only the first)."""
    for check in checks:
        try:
            case.validate_response(response, checks=[check])
        except (AssertionError, BaseExceptionGroup) as exc:
            for message in _messages(exc):
                finding = Finding(label, mode, check.__name__, message, case.as_curl_command()[:300])
                if all(f.message != message or f.operation != label for f in report.findings):
                    report.findings.append(finding)  # one example of each distinct failure


def _fuzz(
    report: FuzzReport,
    url: str,
    session: requests.Session,
    label: str,
    mode: str,
    strategy: Any,
    max_examples: int,
) -> None:
    @settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every failing case is recorded as generated
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(strategy)
    def run(case: Any) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if label.startswith("POST /admin/") else None
        response = case.call(base_url=url, session=session, headers=headers, timeout=30)
        report.examples[label, mode] += 1
        report.statuses[label, mode][response.status_code] += 1
        _validate(report, label, mode, case, response, ALL_CHECKS)

    with contextlib.suppress(Unsatisfiable):  # nothing to negate (no parameters, or only free-form strings)
        run()


@pytest.fixture(scope="module")
def api(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One service with a real Redis for the whole module (the fuzz run is shared by its tests)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    root = tmp_path_factory.mktemp("fuzz")
    redis = RedisServer(free_port(), secrets.token_hex(16), root)
    redis.start()
    try:
        service = start_api(trained.bundles, redis, root)
        try:
            yield service
        finally:
            stop_api(service)
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def report(api: Api) -> FuzzReport:
    """Fuzz every operation of the live schema in positive and negative mode, plus known ids for the path ids."""
    t0 = time.perf_counter()
    out = FuzzReport()
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()  # an operation schemathesis cannot read raises here
        label = operation.label
        n = RELOAD_EXAMPLES if label.startswith("POST /admin/") else EXAMPLES
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(out, api.url, session, label, mode.value, operation.as_strategy(generation_mode=mode), n)

    # Random path ids are all unknown (404): fuzz `k` of /similar once more with a video the model knows.
    with api.client() as client:
        answer = client.post("/v1/candidates", json={"history": [], "k": 1})
        assert answer.status_code == 200, answer.text
        out.known_video = answer.json()["candidates"][0]["video_id"]
    similar = schema["/v1/videos/{video_id}/similar"]["GET"]
    strategy = similar.as_strategy(path_parameters={"video_id": out.known_video})
    _fuzz(out, api.url, session, similar.label, "positive-known-id", strategy, KNOWN_ID_EXAMPLES)
    out.seconds = time.perf_counter() - t0
    return out


def test_fuzz_covers_every_operation(report: FuzzReport) -> None:
    """The run reached every documented operation, the success paths and the validation paths."""
    operations = {label for label, _ in report.examples}
    assert operations >= EXPECTED_OPERATIONS, f"not fuzzed: {EXPECTED_OPERATIONS - operations}"
    for label in EXPECTED_OPERATIONS:
        assert report.examples[label, "positive"] >= 1, label
    for label in NEGATABLE:
        assert report.examples[label, "negative"] >= 1, f"{label}: no negative examples"
    for label in ("POST /v1/candidates", "POST /v1/events", "GET /v1/users/{user_id}/history"):
        assert report.examples[label, "positive"] >= EXAMPLES // 2, (label, report.examples[label, "positive"])
    # Valid requests are accepted, invalid ones refused with a 4xx.
    assert set(report.statuses["POST /v1/candidates", "positive"]) == {200}, report.statuses
    assert set(report.statuses["POST /v1/events", "positive"]) == {202}, report.statuses
    assert report.statuses["POST /v1/candidates", "negative"][422] > 0, report.statuses
    assert report.statuses["GET /v1/videos/{video_id}/similar", "positive-known-id"][200] > 0, report.statuses
    assert report.statuses["POST /admin/reload", "positive"][200] > 0, report.statuses
    print(f"fuzz: {sum(report.examples.values())} requests in {report.seconds:.1f}s")
    assert report.seconds < FUZZ_SECONDS, f"the fuzz run took {report.seconds:.0f}s"


def test_no_server_errors(report: FuzzReport) -> None:
    """No generated request, valid or not, gets a 5xx."""
    failed = report.failed(not_a_server_error)
    assert not failed, "\n".join(map(str, failed))
    fives = {key: dict(c) for key, c in report.statuses.items() if any(s >= 500 for s in c)}
    assert not fives, fives


def test_responses_conform_to_the_schema(report: FuzzReport) -> None:
    """Every body matches its documented schema, with a documented content type and headers."""
    failed = report.failed(response_schema_conformance, content_type_conformance, response_headers_conformance)
    assert not failed, "\n".join(map(str, failed))


def test_status_codes_are_documented(report: FuzzReport) -> None:
    """Every status the service answers with is listed for its operation."""
    failed = report.failed(status_code_conformance)
    assert not failed, "\n".join(map(str, failed))


def test_service_survived_the_fuzz(api: Api, report: FuzzReport) -> None:
    """After the run the service still answers normally (the fuzzed forced reloads included)."""
    with api.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        answer = client.post("/v1/candidates", json={"history": [report.known_video], "k": 10})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["candidates"]) == 10 and body["source"] == "tower" and not body["degraded"]
        assert report.known_video not in {c["video_id"] for c in body["candidates"]}


def _limit_cases(schema: Any, known_video: str) -> list[tuple[str, Any]]:
    """Requests at the limits that the routes check themselves (the schema does not know them)."""
    candidates = schema["/v1/candidates"]["POST"]
    events = schema["/v1/events"]["POST"]
    history = schema["/v1/users/{user_id}/history"]["GET"]
    long_id = "v" * 300  # max_id_length is 256
    return [
        ("history item too long", candidates.Case(body={"history": [long_id], "k": 3}, media_type="application/json")),
        (
            "history lone surrogate",
            candidates.Case(body={"history": ["\ud800"], "k": 3}, media_type="application/json"),
        ),
        (
            "too many exclusions",
            candidates.Case(body={"exclude": [known_video] * 1001, "k": 3}, media_type="application/json"),
        ),
        (
            "event video id too long",
            events.Case(body={"events": [{"user_id": "u", "video_id": long_id}]}, media_type="application/json"),
        ),
        ("user id too long", history.Case(path_parameters={"user_id": "u" * 300})),
    ]


def test_route_level_422s_conform_to_the_schema(api: Api, report: FuzzReport) -> None:
    """422s raised by the routes (limits from the settings) have the same documented shape as pydantic's."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    findings = FuzzReport()
    with requests.Session() as session:
        for name, case in _limit_cases(schema, report.known_video):
            response = case.call(base_url=api.url, session=session, timeout=30)
            if response.status_code != 422:
                pytest.fail(f"{name}: expected 422, got {response.status_code} {response.text[:200]}")
            _validate(findings, name, "limit", case, response, REQUIRED_CHECKS)
    assert not findings.findings, "\n".join(map(str, findings.findings))


def test_json_body_errors_are_400_not_5xx(api: Api) -> None:
    """Bodies that are not JSON (or not UTF-8) are a clean 400 on both body routes."""
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for path in ("/v1/candidates", "/v1/events"):
            for raw in (b"\x00", b"{", b'{"k": 1', b"\xff\xfe", b""):
                answer = client.post(path, content=raw, headers={"Content-Type": "application/json"})
                assert answer.status_code in (400, 422), (path, raw, answer.status_code, answer.text)
                assert answer.headers["content-type"].startswith("application/json"), (path, raw)
                assert "detail" in answer.json()
