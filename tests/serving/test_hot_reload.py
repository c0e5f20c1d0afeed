"""Hot reload of a real `recsys serve`: a new bundle under load, refused bundles, admin auth, the bundle poller.

Every test works on its own copy of the session's bundles directory (the session fixture stays as it is). One
new version of the same run is exported once per module; a test "publishes" it by moving ``latest`` to it, as
``export_bundle`` does.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys.bundle import latest_version, new_version, set_latest
from tests.serving.conftest import ADMIN_TOKEN, Api, Trained, start_api, stop_api
from training.export import export_bundle

pytestmark = pytest.mark.slow

THREADS = 4
K = 50
LOAD_BEFORE_S = 2.0  # load before the reload
LOAD_AFTER_S = 2.5  # and after it returned


@dataclass(frozen=True)
class Staged:
    """A bundles directory with the session's version (latest) and a second export of the same run."""

    directory: Path
    old: str
    new: str


@pytest.fixture(scope="module")
def staged(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Staged:
    """Copy the session's bundles, export the run once more into the copy, and point latest back at the old one."""
    directory = tmp_path_factory.mktemp("staged") / "bundles"
    shutil.copytree(trained.bundles, directory, symlinks=True)
    old = latest_version(directory)
    assert old is not None
    export_bundle(trained.run, directory, index_spec="auto")
    new = latest_version(directory)
    assert new is not None and new != old
    set_latest(directory, old)
    return Staged(directory, old, new)


def _copy(staged: Staged, where: Path) -> Path:
    target = where / "bundles"
    shutil.copytree(staged.directory, target, symlinks=True)
    assert latest_version(target) == staged.old
    return target


def _known_videos(bundle: Path, n: int) -> list[str]:
    ids = pq.read_table(bundle / "videos.parquet", columns=["video_id"])["video_id"].to_pylist()
    return [str(v) for v in ids[1 : n + 1]]  # row 0 is the OOV entry


def _metric(api: Api, name: str, **labels: str) -> float | None:
    """One sample of the service's /metrics (None when absent)."""
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def _version(client: httpx.Client) -> str:
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    return str(ready.json()["model_version"])


def _candidates(client: httpx.Client, history: list[str]) -> dict:
    answer = client.post("/v1/candidates", json={"history": history, "k": K})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def api(staged: Staged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Path]]:
    """A service without polling on its own copy (latest = the old version)."""
    root = tmp_path_factory.mktemp("reload")
    bundles = _copy(staged, root)
    service = start_api(bundles, None, root)
    try:
        yield service, bundles
    finally:
        stop_api(service)


@pytest.fixture(scope="module")
def polling_api(staged: Staged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Path]]:
    """A service that checks latest every 0.5 s, on its own copy."""
    root = tmp_path_factory.mktemp("polling")
    bundles = _copy(staged, root)
    service = start_api(bundles, None, root, env={"RECSYS_SERVE__POLL_SECONDS": "0.5"})
    try:
        yield service, bundles
    finally:
        stop_api(service)


@dataclass(frozen=True)
class Sample:
    thread: int
    sent: float
    received: float
    status: int | None
    version: str | None
    ids: tuple[str, ...]
    error: str | None


def test_reload_under_load_drops_nothing(api: tuple[Api, Path], staged: Staged) -> None:
    """Concurrent requests all succeed across a reload; answers before it are the old model, after it the new."""
    service, bundles = api
    videos = _known_videos(bundles / staged.old, 40)
    histories = [videos[i * 10 : i * 10 + 10] for i in range(THREADS)]
    with service.client() as client:
        assert _version(client) == staged.old

    samples: list[Sample] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(thread: int) -> None:
        history = histories[thread]
        with service.client() as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    answer = client.post("/v1/candidates", json={"history": history, "k": K})
                    body = answer.json() if answer.status_code == 200 else {}
                    sample = Sample(
                        thread,
                        sent,
                        time.monotonic(),
                        answer.status_code,
                        body.get("model_version"),
                        tuple(c["video_id"] for c in body.get("candidates", [])),
                        None if answer.status_code == 200 else answer.text[:200],
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    sample = Sample(thread, sent, time.monotonic(), None, None, (), f"{type(exc).__name__}: {exc}")
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(LOAD_BEFORE_S)
        set_latest(bundles, staged.new)  # publish
        reload_sent = time.monotonic()
        with service.client() as client:
            reload = client.post("/admin/reload", headers=service.admin_headers())
        reload_done = time.monotonic()
        time.sleep(LOAD_AFTER_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(t.is_alive() for t in threads)

    assert reload.status_code == 200, reload.text
    outcome = reload.json()
    assert outcome["status"] == "reloaded"
    assert outcome["model_version"] == staged.new and outcome["previous_version"] == staged.old

    failed = [s for s in samples if s.error is not None or s.status != 200]
    assert not failed, f"{len(failed)} of {len(samples)} requests failed, e.g. {failed[:3]}"
    leaked = [set(s.ids) & set(histories[s.thread]) for s in samples if set(s.ids) & set(histories[s.thread])]
    assert not leaked, f"watched videos came back: {leaked[:3]}"
    assert all(len(s.ids) == K and len(set(s.ids)) == K for s in samples), "an answer without k distinct candidates"
    assert {s.version for s in samples} <= {staged.old, staged.new}
    before = [s for s in samples if s.received < reload_sent]
    after = [s for s in samples if s.sent > reload_done]
    print(f"{len(samples)} requests, {len(before)} before the reload, {len(after)} after; {outcome['seconds']:.2f}s")
    assert len(before) >= THREADS and len(after) >= THREADS, (len(before), len(after), len(samples))
    assert {s.version for s in before} == {staged.old}
    assert {s.version for s in after} == {staged.new}

    with service.client() as client:
        assert _version(client) == staged.new
    assert _metric(service, "recsys_model_info", model_version=staged.new) == 1.0
    assert _metric(service, "recsys_model_info", model_version=staged.old) == 0.0


def test_admin_auth(api: tuple[Api, Path]) -> None:
    """No token: 401 with a Bearer challenge; a wrong one: 403; the right one reloads (nothing new: unchanged)."""
    service, _ = api
    with service.client() as client:
        version = _version(client)
        missing = client.post("/admin/reload")
        assert missing.status_code == 401, missing.text
        assert missing.headers.get("www-authenticate") == "Bearer"
        basic = client.post("/admin/reload", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        assert basic.status_code == 401, basic.text
        for wrong in ("nope", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN.upper()):
            answer = client.post("/admin/reload", headers={"Authorization": f"Bearer {wrong}"})
            assert answer.status_code == 403, (wrong, answer.text)
            assert "wrong admin token" in answer.json()["detail"]
        forced = client.post("/admin/reload", params={"force": "true"}, headers={"Authorization": "Bearer nope"})
        assert forced.status_code == 403
        right = client.post("/admin/reload", headers=service.admin_headers())
        assert right.status_code == 200, right.text
        outcome = right.json()
        assert outcome["status"] == "unchanged" and outcome["model_version"] == version, outcome
        assert _version(client) == version


def _flip_bytes(path: Path) -> None:
    """Change bytes in the middle of a file, keeping its size (only the checksum can tell)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_copy(bundles: Path, source: str, damage: str) -> str:
    """Publish a copy of a good version under a new version name, then damage one of its files."""
    version = new_version(bundles, "baadf00d")
    shutil.copytree(bundles / source, bundles / version)
    if damage == "embeddings":
        _flip_bytes(bundles / version / "embeddings.npy")
    else:
        index = bundles / version / "index.faiss"
        index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    set_latest(bundles, version)
    return version


@pytest.mark.parametrize(
    ("damage", "named"),
    [("embeddings", ("embeddings.npy", "sha256")), ("index", ("index.faiss", "size"))],
)
def test_corrupt_bundle_is_refused(
    polling_api: tuple[Api, Path], staged: Staged, damage: str, named: tuple[str, ...]
) -> None:
    """A damaged latest bundle: reload answers 409 naming the problem; the poller refuses it too; nothing changes."""
    service, bundles = polling_api
    history = _known_videos(bundles / staged.old, 5)
    with service.client() as client:
        serving = _version(client)
        refused_before = _metric(service, "recsys_reloads_total", result="refused") or 0.0
        bad = _corrupt_copy(bundles, staged.new, damage)
        answer = client.post("/admin/reload", headers=service.admin_headers())
        assert answer.status_code == 409, answer.text
        detail = answer.json()["detail"]
        assert bad in detail and f"still serving {serving}" in detail, detail
        for word in named:
            assert word in detail, detail
        forced = client.post("/admin/reload", params={"force": "true"}, headers=service.admin_headers())
        assert forced.status_code == 409, forced.text

        time.sleep(1.5)  # three polls, each refusing the bundle again
        assert _version(client) == serving
        body = _candidates(client, history)
        assert body["model_version"] == serving and len(body["candidates"]) == K
        refused = _metric(service, "recsys_reloads_total", result="refused") or 0.0
        assert refused >= refused_before + 3, (refused_before, refused)  # two by hand, at least one poll
    set_latest(bundles, serving)  # leave a loadable latest for the next test


def test_poller_picks_up_a_new_bundle(polling_api: tuple[Api, Path], staged: Staged) -> None:
    """With polling on, moving latest to a good version is all it takes: answers switch within a few polls."""
    service, bundles = polling_api
    history = _known_videos(bundles / staged.old, 5)
    with service.client() as client:
        assert _version(client) == staged.old
        set_latest(bundles, staged.new)
        deadline = time.monotonic() + 10
        while _version(client) != staged.new and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _version(client) == staged.new, "the poller did not load the new bundle within 10 s"
        body = _candidates(client, history)
        assert body["model_version"] == staged.new and len(body["candidates"]) == K
