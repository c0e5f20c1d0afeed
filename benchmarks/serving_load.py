"""Serving benchmark: the candidate service over real HTTP and Redis against its in-process core, in one run.

    python -m benchmarks.serving_load --videos 1000000 --json benchmarks/results/serving/serving.json

1. A synthetic bundle (cached under ``--workdir`` by size and settings): ``--videos`` x ``--dim`` output
   embeddings around 1,000 topic centres (benchmarks.index's recipe, scaled by EMBEDDING_SCALE), a user tower
   of the default shape (1024-512-256) with constructed, untrained weights (``topical_tower``: u is a projection
   of the mean embedding of the user's history), and the default index for the size (``IVF{4 sqrt(n)},Flat``
   from 50k), tuned by export to recall@100 0.95 on random mixtures of embedding rows. Latency does not depend on
   what the weights learned, but the search does depend on where the user vectors fall: a random-weight tower
   gives every user nearly the same tiny vector, which probes the same few (small) IVF lists at 1M and returns
   fewer than 100 candidates. Users watch 1-3 topics, so their vectors probe their topics' lists.
2. A real redis-server (password, free loopback port; ``--store memory`` when there is none) and ``recsys serve``
   as a subprocess with one worker on a free loopback port.
3. ``--users`` users get ``--history`` watches each (Zipf-popular videos) through POST /v1/events.
4. A load generator in a separate process: plain asyncio streams speaking HTTP/1.1 keep-alive over N persistent
   connections, closed loop, ``--warmup`` requests then ``--requests`` timed ones at each concurrency (1, 16).
   Every request is ``{"user_id": <seeded user>, "k": 100}``: history from the store, watched videos hidden.
   Every answer is checked: 200, k candidates, none of the user's watches, not degraded, from the tower.
   Then an open loop at each ``--rates`` (default 100, 200 and 300 requests/s): Poisson arrivals that keep
   their schedule however slow the answers, latency counted from the scheduled arrival: the latency at a given
   load, which a closed loop cannot show (its mean latency is c / throughput by construction).
5. With the server stopped: the same queries straight into serving.engine.Engine.recommend (one tower call and
   one FAISS search per batch, what the micro-batcher calls), at batch 16 (raw_qps) and batch 1.

The load generator shares the machine with the server, as the targets assume (2-core box). CPU seconds of the
server, Redis and the load generator, and the machine's total busy time, are recorded for every timed phase so
the share taken by other jobs on a shared box shows (``other jobs' CPU`` in the report). ``--py-spy FILE``
records the Python stacks of the server and its worker processes during the load (py-spy installed separately).
Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.output import command_line, emit_json

REPO = Path(__file__).resolve().parents[1]  # the load generator runs as `python -m` from here
K = 100
TOPICS = 1000
MAX_HISTORY = 50  # the pipeline's defaults: watches and search tokens the tower reads
MAX_TOKENS = 50
RAW_BATCH = 16
EVENTS_PER_REQUEST = 1000  # ServeConfig.max_items
TARGET_P99_MS_C16 = 25.0
TARGET_RPS_C16 = 300.0
TARGET_HTTP_OVER_RAW = 0.5
OPEN_LOOP_CONNECTIONS = 64  # the open-loop pool: more than the requests ever outstanding at the rates measured
# The catalogue follows benchmarks.index's clustered data (unit topic centres, noise of norm 0.6, bias of sd
# 0.1), scaled by 3. export tunes nprobe on random mixtures of 1-8 embedding rows (there are no held-out users
# here); at norm ~1 such a mixture's topical scores (~1/parts) are no larger than the bias spread, its true top-100
# is mostly high-bias videos scattered over every IVF list, and tuning ends at nprobe 512 of 894 lists at 50k.
# Scaled by 3 (trained tables score in logits of a few units) it needs nprobe 16 of 894, like the trained 100k
# bundle of benchmarks/results/index/index.json (nprobe 16 of 1267).
EMBEDDING_SCALE = 3.0
NOISE = 0.6
BIAS_SD = 0.1
SYNTHETIC = {
    "note": "synthetic bundle: output embeddings = embedding_scale x (topic centre + noise); user tower of the "
    "default shape with CONSTRUCTED (not trained) weights: the hidden layers pass a projection of the history's "
    "mean input embedding through unchanged and the output layer maps it back, so u = s Q Q^T mean(V[history]) "
    "(Q: random orthonormal d x min(d, video_input_dim), s = sqrt(d / columns of Q)): topical user vectors, as a "
    "trained tower gives, at the compute of any weights of this shape (a random-weight tower gives every user "
    "nearly the same tiny vector, which probes the same few IVF lists); index tuned on random mixtures of rows",
    "topics": TOPICS,
    "embedding_scale": EMBEDDING_SCALE,
    "tower": "constructed",
}


# ---------------------------------------------------------------------------------------------- bundle
def video_ids(n: int) -> list[str]:
    """Catalogue ids v000... of video indices 1..n, in vocabulary order (counts non-increasing, ties by id)."""
    width = len(str(max(n - 1, 0)))
    return [f"v{i:0{width}d}" for i in range(n)]


def bundle_dir(workdir: Path, n: int, dim: int) -> Path:
    """The cached bundles directory of one size."""
    return workdir / f"bundle-n{n}-d{dim}"


def topics_file(bundles: Path) -> Path:
    """Each video's topic (int32 [n + 1], OOV row 0 included), kept beside the cached bundle for seeding users."""
    return bundles.with_name(bundles.name + "-topics.npy")


def cached_bundle(bundles: Path, n: int, dim: int, seed: int) -> Path | None:
    """The latest bundle under `bundles` when this script built it with these settings, else None."""
    from recsys.bundle import resolve_bundle

    if not (bundles / "latest").exists() or not topics_file(bundles).is_file():
        return None
    try:
        path = resolve_bundle(bundles)
        manifest = json.loads((path / "manifest.json").read_text())
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, Exception):  # an unreadable cache is rebuilt
        return None
    if manifest.get("n_videos") != n + 1 or manifest.get("embedding_dim") != dim or not manifest.get("index"):
        return None
    return path if config.get("benchmark") == {**SYNTHETIC, "seed": seed} else None


def clustered_catalogue(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings [n, d], bias [n], topic [n]): EMBEDDING_SCALE x (unit topic centre + noise of norm NOISE)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic = rng.integers(0, TOPICS, size=n).astype(np.int32)
    embeddings = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) * np.float32(NOISE / np.sqrt(dim))
        embeddings[lo:hi] = (centres[topic[lo:hi]] + noise) * np.float32(EMBEDDING_SCALE)
    bias = (rng.standard_normal(n) * BIAS_SD).astype(np.float32)
    return embeddings, bias, topic


def topical_tower(model: Any, embeddings: np.ndarray, seed: int) -> None:
    """Set the user tower's weights so that u = s Q Q^T mean(V[history]) (see SYNTHETIC["note"]).

    The history input table holds V Q (m = min(d, video_input_dim) columns, zeros after); the first hidden layer
    splits those m coordinates into x+ and x- (ReLU keeps both halves), the next hidden layers copy the 2m units,
    and the output layer gives s Q (x+ - x-). Search tokens, categories and numeric features get zero weights.
    """
    tower = model.tower
    n, dim = embeddings.shape
    width = int(tower.config.video_input_dim)
    m = min(dim, width)
    hidden = [int(h) for h in tower.config.hidden]
    if any(h < 2 * m for h in hidden):
        raise ValueError(f"hidden widths {hidden} cannot carry 2 x {m} units")
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, m)))
    q = q.astype(np.float32)
    table = np.zeros((n, width), dtype=np.float32)
    table[:, :m] = embeddings @ q
    tower.video_inputs.assign(table)
    eye = np.eye(m, dtype=np.float32)
    first = np.zeros(tuple(tower.hidden_layers[0].kernel.shape), dtype=np.float32)
    first[:m, :m], first[:m, m : 2 * m] = eye, -eye  # the history mean is the first block of the tower's input
    tower.hidden_layers[0].kernel.assign(first)
    for layer in tower.hidden_layers[1:]:
        copy = np.zeros(tuple(layer.kernel.shape), dtype=np.float32)
        copy[: 2 * m, : 2 * m] = np.eye(2 * m, dtype=np.float32)
        layer.kernel.assign(copy)
    scale = np.float32(np.sqrt(dim / m))
    out = np.zeros(tuple(tower.projection.kernel.shape), dtype=np.float32)
    out[:m], out[m : 2 * m] = scale * q.T, -scale * q.T
    tower.projection.kernel.assign(out)
    for layer in [*tower.hidden_layers, tower.projection]:
        layer.bias.assign(np.zeros(tuple(layer.bias.shape), dtype=np.float32))


def build_bundle(workdir: Path, n: int, dim: int, seed: int) -> tuple[Path, bool]:
    """A bundle of the size (reused from the work dir when there is one); returns (path, reused)."""
    bundles = bundle_dir(workdir, n, dim)
    found = cached_bundle(bundles, n, dim, seed)
    if found is not None:
        print(f"[bundle] reusing {found}", flush=True)
        return found, True
    if bundles.exists():
        shutil.rmtree(bundles)
    import pyarrow as pa
    import tensorflow as tf

    from recsys.config import ModelConfig
    from recsys.features import CATEGORICAL_FEATURES, FeatureSpace, NumericStats, Vocabulary
    from recsys.model import Cardinalities, build_model
    from training.export import export_model

    t0 = time.perf_counter()
    counts = np.maximum(1, 1_000_000 // np.arange(1, n + 1)).astype(np.int64)  # Zipf-like, non-increasing
    videos = Vocabulary.from_counts(pa.table({"value": video_ids(n), "count": counts}))
    tokens = Vocabulary.from_counts(pa.table({"value": [f"t{i:04d}" for i in range(1000)], "count": [1] * 1000}))
    small = {"country": ["US", "GB", "DE", "IN", "BR"], "device": ["mobile", "desktop", "tv"], "gender": ["f", "m"]}
    categorical = {
        name: Vocabulary.from_counts(pa.table({"value": small[name], "count": [1] * len(small[name])}))
        for name in CATEGORICAL_FEATURES
    }
    features = FeatureSpace(videos, tokens, categorical, NumericStats(age_mean=30.0, age_std=10.0))
    sizes = Cardinalities(
        videos=len(videos),
        tokens=len(tokens),
        country=len(categorical["country"]),
        device=len(categorical["device"]),
        gender=len(categorical["gender"]),
    )
    tf.keras.utils.set_random_seed(seed)
    model = build_model(sizes, ModelConfig(embedding_dim=dim), MAX_HISTORY, MAX_TOKENS)
    embeddings, bias, topic = clustered_catalogue(n + 1, dim, seed)  # row 0 is OOV (never indexed)
    model.output_layer.table.assign(embeddings)  # export checks the embeddings ARE the model's output table
    assert model.output_layer.bias is not None
    model.output_layer.bias.assign(bias)
    topical_tower(model, embeddings, seed)
    print(f"[bundle] vocabularies, {n + 1:,} x {dim} clustered embeddings, tower: {time.perf_counter() - t0:.1f}s")

    t1 = time.perf_counter()
    print("[bundle] export: SavedModel, default index (k-means), nprobe tuning, verification ...", flush=True)
    path = export_model(
        model,
        features,
        embeddings,
        bias,
        bundles,
        max_history=MAX_HISTORY,
        max_tokens=MAX_TOKENS,
        max_search_tokens=MAX_TOKENS,
        held_out=None,
        extra_config={"benchmark": {**SYNTHETIC, "seed": seed}},
        index_spec="auto",
        target_recall=0.95,
        where="benchmarks.serving_load",
    )
    np.save(topics_file(bundles), topic)
    index = json.loads((path / "manifest.json").read_text())["index"]
    print(
        f"[bundle] exported in {time.perf_counter() - t1:.1f}s: index {index['spec']} params {index['params']} "
        f"recall@100 {index['recall']} (build {index['build_seconds']:.1f}s) -> {path}",
        flush=True,
    )
    return path, False


# ---------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[tuple[str, str, int]]:
    """A redis-server with a random password on a free loopback port: yields (url, password, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port, password = free_port(), secrets.token_hex(16)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password, "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
                    if b"PONG" in sock.recv(64):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit {process.poll()})")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", password, process.pid
    finally:
        stop(process, grace=10)


def request(port: int, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, bytes]:
    """One control request (readiness, seeding, metrics) on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A running `recsys serve` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""


@contextlib.contextmanager
def serve(
    bundles: Path,
    store: str,
    redis: tuple[str, str, int] | None,
    workdir: Path,
    env: dict[str, str],
    workers: int = 1,
) -> Iterator[Server]:
    """Start `recsys serve` and wait for /readyz (and, with several workers, for each to load); stop it on exit."""
    port = free_port()
    log = workdir / "serve.log"
    environment = {**os.environ, **env}
    if redis is not None:
        environment |= {"RECSYS_SERVE__REDIS_URL": redis[0], "RECSYS_SERVE__REDIS_PASSWORD": redis[1]}
    command = [sys.executable, "-m", "recsys", "serve", "--bundles", str(bundles.resolve()), "--host", "127.0.0.1",
               "--port", str(port), "--store", store, "--workers", str(workers), "--log-level", "warning"]  # fmt: skip
    with log.open("wb") as out:  # cwd: the work dir, so no ./recsys.toml of the caller's changes the settings
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=workdir)
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + 900
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"recsys serve exited with {process.returncode}:\n{server.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(port, "GET", "/readyz", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"recsys serve did not become ready:\n{server.tail()}")
            time.sleep(0.25)
        if workers > 1:  # /readyz answered from one worker; the others load the same bundle meanwhile
            time.sleep(30)
        yield server
    finally:
        stop(process, grace=20)


def stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds (redis-server and recsys serve shut down cleanly on SIGTERM)."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def family(pid: int) -> list[int]:
    """A process and its direct children (uvicorn's worker processes)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return [pid, *sorted(children)]


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process, all its threads (or of its thread `tid`); 0 when it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (every core; /proc/stat minus idle and iowait)."""
    try:
        parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    busy = sum(parts[:8]) - parts[3] - parts[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- users
def seed_histories(topic: np.ndarray, users: int, history: int, seed: int) -> dict[str, list[str]]:
    """user id -> `history` distinct watches, oldest first: 1-3 topics per user, Zipf-popular videos within each.

    ``topic`` is each video index's topic (row 0, OOV, ignored); popularity is index order (the vocabulary's).
    """
    rng = np.random.default_rng(seed)
    ids = video_ids(len(topic) - 1)
    by_topic = np.argsort(topic[1:], kind="stable").astype(np.int64) + 1  # video indices grouped, popular first
    bounds = np.searchsorted(topic[1:][by_topic - 1], np.arange(TOPICS + 1))
    present = np.flatnonzero(np.diff(bounds) > 0)
    cdfs = {}
    out: dict[str, list[str]] = {}
    for u in range(users):
        parts = min(int(rng.integers(1, 4)), len(present))
        chosen = rng.choice(present, size=parts, replace=False)
        weights = rng.dirichlet(np.ones(parts))
        available = sum(int(bounds[t + 1] - bounds[t]) for t in chosen)
        picked: dict[int, None] = {}
        while len(picked) < min(history, available):
            t = int(chosen[rng.choice(parts, p=weights)])
            members = by_topic[bounds[t] : bounds[t + 1]]
            if t not in cdfs:
                w = 1.0 / np.arange(1, len(members) + 1)
                cdfs[t] = np.cumsum(w / w.sum())
            picked[int(members[min(int(np.searchsorted(cdfs[t], rng.random())), len(members) - 1)])] = None
        out[f"bench-user-{u:06d}"] = [ids[i - 1] for i in picked]
    return out


def post_histories(port: int, histories: dict[str, list[str]]) -> int:
    """POST /v1/events in requests of at most EVENTS_PER_REQUEST events; returns the number of requests."""
    items = list(histories.items())
    per_request = max(1, EVENTS_PER_REQUEST // max(1, max(len(h) for _, h in items)))
    sent = 0
    for lo in range(0, len(items), per_request):
        events = [
            {"user_id": user, "video_id": vid} for user, watches in items[lo : lo + per_request] for vid in watches
        ]
        tries = 0
        while True:  # a 503 stored nothing (Redis timed out) and asks for a retry
            tries += 1
            status, body = request(port, "POST", "/v1/events", {"events": events})
            if status != 503 or tries == 20:
                break
            time.sleep(0.5)
        if status != 202:
            raise RuntimeError(f"POST /v1/events answered {status} ({tries} tries): {body[:300]!r}")
        sent += 1
    for user, watches in items[:5]:  # the store holds what was sent (order, cap, the right user)
        status, body = request(port, "GET", f"/v1/users/{user}/history")
        stored = [item["video_id"] for item in json.loads(body)["history"]] if status == 200 else None
        if stored != watches:
            raise RuntimeError(f"user {user}: stored history {stored} differs from the seeded {watches}")
    return sent


# ---------------------------------------------------------------------------------------------- load generator
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (what the service sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length is None:
        raise ValueError("response without Content-Length")
    return status, await reader.readexactly(length)


def _check(status: int, body: bytes, k: int, watched: frozenset[str]) -> str | None:
    """Why an answer is wrong (None when it is right)."""
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    doc = json.loads(body)
    candidates = doc.get("candidates") or []
    if len(candidates) != k:
        return f"{len(candidates)} candidates, wanted {k}"
    if doc.get("degraded") or doc.get("source") != "tower" or doc.get("unknown_history"):
        return f"degraded={doc.get('degraded')} source={doc.get('source')} unknown={doc.get('unknown_history')}"
    if any(c["video_id"] in watched for c in candidates):
        return "a watched video was returned"
    return None


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return math.nan


async def _scrape_batches(port: int) -> tuple[float, float]:
    """(sum, count) of the service's recsys_batch_size histogram."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        _, body = await _read_response(reader)
    finally:
        writer.close()
    text = body.decode()
    return _metric(text, "recsys_batch_size_sum"), _metric(text, "recsys_batch_size_count")


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _exchange(
    conn: Connection, data: bytes, port: int
) -> tuple[Connection, tuple[int, bytes] | None, str | None]:
    """One request on a keep-alive connection: (the connection to use next, (status, body), None), or, when the
    connection broke, (a fresh connection, None, what went wrong)."""
    reader, writer = conn
    try:
        writer.write(data)
        await writer.drain()
        return conn, await _read_response(reader), None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        writer.close()
        return await asyncio.open_connection("127.0.0.1", port), None, f"{type(exc).__name__}: {exc}"


def _encoded_requests(plan: dict[str, Any]) -> list[tuple[bytes, frozenset[str]]]:
    """Every seeded user's candidates request as raw HTTP/1.1 bytes, with the videos it must not get back."""
    port, k = int(plan["port"]), int(plan["k"])
    host = f"127.0.0.1:{port}"
    requests: list[tuple[bytes, frozenset[str]]] = []
    for user in plan["order"]:
        body = json.dumps({"user_id": user, "k": k}, separators=(",", ":")).encode()
        head = f"POST /v1/candidates HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        requests.append(
            ((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body, frozenset(plan["histories"][user]))
        )
    return requests


async def _open_level(plan: dict[str, Any], rate: float) -> dict[str, Any]:
    """Requests arriving at `rate` per second (Poisson, seeded) whatever the answers do (open loop).

    A closed loop of c connections only ever has c requests outstanding, so its latency is c / throughput and a
    slow server is never asked for more than it gives. Here arrivals keep their schedule: a request that finds
    every pooled connection busy waits for one, and its latency runs from its scheduled arrival (no coordinated
    omission). The first `warmup` arrivals are not timed.
    """
    port, k = int(plan["port"]), int(plan["k"])
    requests = _encoded_requests(plan)
    warmup, timed = int(plan["warmup"]), int(plan["requests"])
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(OPEN_LOOP_CONNECTIONS):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    gaps = np.random.default_rng(int(plan.get("seed", 0))).exponential(1.0 / rate, warmup + timed)
    start = loop.time() + 0.1
    due = start + np.cumsum(gaps)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    samples: list[str] = []
    done_at = [start]

    async def arrival(i: int) -> None:
        await asyncio.sleep(max(0.0, float(due[i]) - loop.time()))
        data, watched = requests[i % len(requests)]
        conn, answer, problem = await _exchange(await pool.get(), data, port)
        if answer is not None:
            finished = loop.time()
            if i >= warmup:
                latencies.append(finished - float(due[i]))
                done_at[0] = max(done_at[0], finished)
            problem = _check(*answer, k, watched)
        pool.put_nowait(conn)
        if problem is not None:
            errors[problem.split(":")[0]] += 1
            if len(samples) < 5:
                samples.append(problem)

    await asyncio.gather(*(arrival(i) for i in range(warmup + timed)))
    while not pool.empty():
        pool.get_nowait()[1].close()
    first = float(due[warmup]) if timed else start
    return {
        "rate": rate,
        "requests": timed,
        "warmup": warmup,
        "connections": OPEN_LOOP_CONNECTIONS,
        "achieved_rps": round(timed / max(done_at[0] - first, 1e-9), 1),
        "latencies_ms": [round(x * 1000, 4) for x in latencies],
        "failures": sum(errors.values()),
        "errors": dict(errors),
        "error_samples": samples,
    }


async def _level(plan: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """Warm-up, then the timed requests, over `concurrency` keep-alive connections (closed loop)."""
    port, k = int(plan["port"]), int(plan["k"])
    requests = _encoded_requests(plan)
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    start = 0

    async def phase(count: int) -> tuple[list[float], Counter[str], list[str], float, list[float]]:
        nonlocal start
        latencies: list[float] = []
        per_conn: list[list[float]] = [[] for _ in range(concurrency)]
        errors: Counter[str] = Counter()
        samples: list[str] = []
        next_i = 0
        offset = start
        start += count

        async def worker(c: int) -> None:
            nonlocal next_i
            while next_i < count:
                i = next_i
                next_i += 1
                data, watched = requests[(offset + i) % len(requests)]
                t0 = time.perf_counter()
                conns[c], answer, problem = await _exchange(conns[c], data, port)
                if answer is not None:
                    latencies.append(time.perf_counter() - t0)
                    per_conn[c].append(latencies[-1])
                    problem = _check(*answer, k, watched)
                if problem is not None:
                    errors[problem.split(":")[0]] += 1
                    if len(samples) < 5:
                        samples.append(problem)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(concurrency)))
        wall = time.perf_counter() - t0
        # Connections that a worker does not share evenly show up as groups of slower connections here.
        means = sorted(round(1000 * sum(x) / len(x), 2) for x in per_conn if x)
        return latencies, errors, samples, wall, means

    warm = await phase(int(plan["warmup"]))
    pids = {"server": int(plan["server_pid"]), "redis": int(plan.get("redis_pid") or 0), "loadgen": os.getpid()}
    batches0 = await _scrape_batches(port)
    workers = family(pids["server"])  # the server and, with several workers, its worker processes
    cpu0 = {name: cpu_seconds(pid) if pid else 0.0 for name, pid in pids.items()}
    cpu0["server"] = sum(map(cpu_seconds, workers))
    loop0 = sum(cpu_seconds(pid, pid) for pid in workers)  # each process's main thread runs its event loop
    busy0 = machine_busy_seconds()
    latencies, errors, samples, wall, connection_means = await phase(int(plan["requests"]))
    busy = machine_busy_seconds() - busy0
    cpu = {name: round((cpu_seconds(pid) if pid else 0.0) - cpu0[name], 3) for name, pid in pids.items()}
    cpu["server"] = round(sum(map(cpu_seconds, workers)) - cpu0["server"], 3)
    cpu["server_event_loop"] = round(sum(cpu_seconds(pid, pid) for pid in workers) - loop0, 3)
    batches1 = await _scrape_batches(port)
    for _, writer in conns:
        writer.close()
    failures = sum(errors.values()) + sum(warm[1].values())
    n_batches = batches1[1] - batches0[1]
    return {
        "concurrency": concurrency,
        "requests": int(plan["requests"]),
        "warmup": int(plan["warmup"]),
        "wall_s": round(wall, 4),
        "latencies_ms": [round(x * 1000, 4) for x in latencies],
        "connection_mean_ms": connection_means,
        "failures": failures,
        "errors": dict(errors + warm[1]),
        "error_samples": (warm[2] + samples)[:5],
        "batches": int(n_batches) if math.isfinite(n_batches) else None,
        "mean_batch": round((batches1[0] - batches0[0]) / n_batches, 2) if n_batches > 0 else None,
        "cpu_s": cpu,
        "machine_busy_cpu_s": round(busy, 3),
    }


def loadgen_main(plan_path: Path, out_path: Path) -> None:
    """The load generator process: every concurrency level of the plan in turn, results to out_path."""
    plan = json.loads(plan_path.read_text())
    repeats = int(plan.get("repeats", 1))  # round-robin, so a slow spell of a shared box touches every level
    results = [asyncio.run(_level(plan, int(c))) for _ in range(repeats) for c in plan["concurrency"]]
    results += [asyncio.run(_open_level(plan, float(r))) for r in plan.get("rates", [])]
    out_path.write_text(json.dumps(results))


def run_loadgen(plan: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """Run the load generator as a separate Python process (it must not share this process's GIL)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        plan_path, out_path = Path(tmp) / "plan.json", Path(tmp) / "result.json"
        plan_path.write_text(json.dumps(plan))
        command = [sys.executable, "-m", "benchmarks.serving_load", "--loadgen", str(plan_path), str(out_path)]
        subprocess.run(command, check=True, cwd=REPO)
        result: list[dict[str, Any]] = json.loads(out_path.read_text())
        return result


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy record of a process (Python frames of every thread, without pausing it) while the block runs."""
    if out is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [binary, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(out),
               "--threads", "--nonblocking", "--subprocesses"]  # fmt: skip
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        print(f"[py-spy] {out}: exit {spy.returncode} {err.decode(errors='replace').strip()[-300:]}", flush=True)


# ---------------------------------------------------------------------------------------------- in-process
def user_vector_stats(engine: Any, queries: list[Any], topic: np.ndarray) -> dict[str, float]:
    """What the tower gives these users: norms, spread (mean cosine between two users), topicality of answers."""
    u = engine.user_vectors(queries)
    norms = np.linalg.norm(u, axis=1)
    unit = u / np.maximum(norms, 1e-12)[:, None]
    cos = unit @ unit.T
    off = cos[~np.eye(len(u), dtype=bool)]
    results = engine.recommend(queries)
    shares = [
        float(np.isin(topic[r.ids], topic[engine.lookup(q.history)]).mean())
        for q, r in zip(queries, results, strict=True)
    ]
    return {
        "users": len(queries),
        "mean_norm": round(float(norms.mean()), 3),
        "mean_cosine_between_users": round(float(off.mean()), 3) if len(off) else math.nan,
        "candidates_in_history_topics": round(float(np.mean(shares)), 3),
    }


def raw_engine(path: Path, histories: list[list[str]], k: int, count: int, topic: np.ndarray) -> dict[str, Any]:
    """Engine.recommend on the same users' queries at batch 16 and batch 1, without HTTP and the store."""
    from recsys.config import ServeConfig
    from serving.engine import Engine, Query, configure_tensorflow

    serve = ServeConfig()  # the service's TensorFlow thread pools, so that both paths run the same runtime
    configure_tensorflow(serve.tf_intra_op_threads, serve.tf_inter_op_threads)
    t0 = time.perf_counter()
    engine = Engine.load(path, mmap=True)
    load_s = time.perf_counter() - t0
    queries = [Query(history=list(h), tokens=[], k=k, exclude=list(h)) for h in histories]
    out: dict[str, Any] = {"load_s": round(load_s, 2), "queries": count}
    out["user_vectors"] = user_vector_stats(engine, queries[:256], topic)
    cpu = os.getpid()
    for batch in (RAW_BATCH, 1):
        batches = [[queries[(i * batch + j) % len(queries)] for j in range(batch)] for i in range(count // batch)]
        for b in batches[: max(5, 100 // batch)]:  # warm-up (not timed)
            engine.recommend(b)
        times: list[float] = []
        short = 0
        c0, busy0 = cpu_seconds(cpu), machine_busy_seconds()
        start = time.perf_counter()
        for b in batches:
            t = time.perf_counter()
            results = engine.recommend(b)
            times.append(time.perf_counter() - t)
            short += sum(len(r.ids) != k for r in results)
        wall = time.perf_counter() - start
        cpu_s = cpu_seconds(cpu) - c0
        ms = np.asarray(times) * 1000
        out[f"b{batch}"] = {
            "batch": batch,
            "queries": len(batches) * batch,
            "qps": round(len(batches) * batch / wall, 1),
            "p50_batch_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_batch_ms": round(float(np.percentile(ms, 99)), 3),
            "fewer_than_k": short,
            "cpu_s": round(cpu_s, 3),
            "cpu_ms_per_query": round(1000 * cpu_s / (len(batches) * batch), 3),
            "machine_busy_cpu_s": round(machine_busy_seconds() - busy0, 3),
            "wall_s": round(wall, 3),
        }
    return out


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--requests", type=int, default=3000, help="timed requests per concurrency level")
    p.add_argument("--warmup", type=int, default=300, help="untimed requests before each level")
    p.add_argument("--concurrency", default="1,16", help="comma-separated connection counts (16 is the target's)")
    p.add_argument(
        "--rates",
        default="100,200,300",
        help="comma-separated open-loop arrival rates, requests/s (Poisson; '' for none): latency at a given load",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="times each concurrency level runs, round-robin; its figures pool every run's timed requests and "
        "each run's own are kept (one run's p99 on a shared box is one sample of a moving target)",
    )
    p.add_argument("--users", type=int, default=3000, help="seeded users the requests cycle through")
    p.add_argument("--history", type=int, default=20, help="watches seeded per user")
    p.add_argument("--store", choices=("redis", "memory"), default="redis", help="memory if redis-server is missing")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (one per core here)")
    p.add_argument("--max-batch", type=int, help="RECSYS_SERVE__MAX_BATCH for the server (default: its own)")
    p.add_argument("--max-wait-us", type=int, help="RECSYS_SERVE__MAX_WAIT_US for the server (default: its own)")
    p.add_argument("--workdir", type=Path, default=Path("out/bench-serving"), help="bundle cache and server log")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--py-spy", type=Path, help="profile the server with py-spy during the load (collapsed stacks)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    if args.videos < 2 or args.requests < RAW_BATCH or args.users < 1 or args.history < 1 or args.warmup < 0:
        p.error("need --videos >= 2, --requests >= 16, --users >= 1, --history >= 1, --warmup >= 0")
    if args.repeats < 1:
        p.error("--repeats: at least 1")
    if args.history > MAX_HISTORY:
        p.error(f"--history above {MAX_HISTORY}: the store keeps only the newest {MAX_HISTORY} watches")
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        p.error("--concurrency: comma-separated integers")
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency: at least one level, each >= 1")
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error("--rates: comma-separated numbers")
    if any(not (r > 0 and math.isfinite(r)) for r in args.rates):
        p.error("--rates: each rate must be a positive number")
    return args


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one concurrency level as one: requests, time, CPU and errors summed, latencies pooled,
    and each run's own rate, median, p99 and batch size kept under "runs"."""
    merged = dict(runs[0])
    for key in ("requests", "warmup", "failures"):
        merged[key] = sum(int(run[key]) for run in runs)
    merged["wall_s"] = round(sum(run["wall_s"] for run in runs), 4)
    merged["latencies_ms"] = [x for run in runs for x in run["latencies_ms"]]
    merged["errors"] = dict(sum((Counter(run["errors"]) for run in runs), Counter()))
    merged["error_samples"] = [x for run in runs for x in run["error_samples"]][:5]
    batches = [run["batches"] for run in runs]
    merged["batches"] = None if None in batches else sum(batches)
    sized = [(run["batches"], run["mean_batch"]) for run in runs if run["batches"] and run["mean_batch"]]
    merged["mean_batch"] = round(sum(n * m for n, m in sized) / sum(n for n, _ in sized), 2) if sized else None
    merged["cpu_s"] = {name: round(sum(run["cpu_s"][name] for run in runs), 3) for name in runs[0]["cpu_s"]}
    merged["machine_busy_cpu_s"] = round(sum(run["machine_busy_cpu_s"] for run in runs), 3)
    merged["runs"] = [
        {
            "rps": round(run["requests"] / run["wall_s"], 1),
            "p50_ms": _percentile(run["latencies_ms"], 50),
            "p99_ms": _percentile(run["latencies_ms"], 99),
            "mean_batch": run["mean_batch"],
            "connection_mean_ms": run["connection_mean_ms"],
        }
        for run in runs
    ]
    merged.pop("connection_mean_ms")  # per run, under "runs"
    return merged


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else math.nan


def _serve_settings(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, Any]]:
    """Env for the server, and the batching and Redis settings it runs with (set here, inherited, or defaults)."""
    from recsys.config import ServeConfig

    env: dict[str, str] = {}
    if args.max_batch is not None:
        env["RECSYS_SERVE__MAX_BATCH"] = str(args.max_batch)
    if args.max_wait_us is not None:
        env["RECSYS_SERVE__MAX_WAIT_US"] = str(args.max_wait_us)
    settings: dict[str, Any] = {}
    for name in ("max_batch", "max_wait_us", "redis_timeout_ms"):
        var = f"RECSYS_SERVE__{name.upper()}"
        value = env.get(var, os.environ.get(var, ServeConfig.model_fields[name].default))
        settings[name] = float(value) if name == "redis_timeout_ms" else int(value)
    return env, settings


def main(argv: Sequence[str] | None = None) -> int:
    """Build or reuse the bundle, run the HTTP levels and the in-process path, write the JSON; 1 if any failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--loadgen"]:
        loadgen_main(Path(argv[1]), Path(argv[2]))
        return 0
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    path, reused = build_bundle(workdir, args.videos, args.dim, args.seed)
    manifest = json.loads((path / "manifest.json").read_text())
    bundle_s = time.perf_counter() - t0

    store = args.store
    note = None
    if store == "redis" and shutil.which("redis-server") is None:
        store, note = "memory", "redis-server not installed: in-process memory store instead of Redis"
        print(f"[store] {note}", flush=True)
    env, settings = _serve_settings(args)
    topic = np.load(topics_file(path.parent))
    histories = seed_histories(topic, args.users, args.history, args.seed + 1)
    users = list(histories)
    order = [users[i] for i in np.random.default_rng(args.seed + 2).permutation(len(users))]

    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(workdir)) if store == "redis" else None
        if redis is not None:
            print(f"[store] redis-server on {redis[0]} (password set)", flush=True)
        t1 = time.perf_counter()
        server = stack.enter_context(serve(path, store, redis, workdir, env, args.workers))
        ready_s = time.perf_counter() - t1
        print(
            f"[serve] recsys serve ({args.workers} worker(s), store {store}) ready on port {server.port} in "
            f"{ready_s:.1f}s",
            flush=True,
        )
        t2 = time.perf_counter()
        seeded = post_histories(server.port, histories)
        print(f"[seed] {len(users):,} users x {args.history} watches in {seeded} POST /v1/events: "
              f"{time.perf_counter() - t2:.1f}s", flush=True)  # fmt: skip
        plan = {
            "port": server.port,
            "k": K,
            "warmup": args.warmup,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "rates": args.rates,
            "repeats": args.repeats,
            "seed": args.seed + 3,
            "order": order,
            "histories": histories,
            "server_pid": server.process.pid,
            "redis_pid": redis[2] if redis is not None else 0,
        }
        print(f"[load] concurrency {args.concurrency}: {args.warmup} warm-up + {args.requests} timed requests each",
              flush=True)  # fmt: skip
        with profiled(server.process.pid, args.py_spy):
            levels = run_loadgen(plan, workdir)
        if server.process.poll() is not None:
            raise RuntimeError(f"recsys serve died during the run:\n{server.tail()}")

    print(f"[raw] Engine.recommend in this process at batch {RAW_BATCH} and 1 (server stopped)", flush=True)
    raw = raw_engine(path, [histories[u] for u in order], K, args.requests, topic)

    result: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    failures = 0
    for c in dict.fromkeys(lv["concurrency"] for lv in levels if "concurrency" in lv):
        level = merge_runs([lv for lv in levels if lv.get("concurrency") == c])
        lat = level.pop("latencies_ms")
        failures += level["failures"]
        result[f"rps_c{c}"] = round(level["requests"] / level["wall_s"], 1)
        result[f"p50_ms_c{c}"] = _percentile(lat, 50)
        result[f"p99_ms_c{c}"] = _percentile(lat, 99)
        result[f"p99_ms_c{c}_runs"] = [run["p99_ms"] for run in level["runs"]]
        level |= {"p90_ms": _percentile(lat, 90), "p999_ms": _percentile(lat, 99.9), "max_ms": _percentile(lat, 100)}
        level["cpu_ms_per_request"] = {
            name: round(1000 * s / level["requests"], 3) for name, s in level["cpu_s"].items()
        }
        ours = ("server", "redis", "loadgen")
        others = level["machine_busy_cpu_s"] - sum(level["cpu_s"][name] for name in ours)
        level["other_processes_cpu_s"] = round(others, 3)
        detail[f"c{c}"] = level
    for level in [lv for lv in levels if "rate" in lv]:
        r, lat = level["rate"], level.pop("latencies_ms")
        failures += level["failures"]
        name = f"r{r:g}"
        result[f"p50_ms_{name}"], result[f"p99_ms_{name}"] = _percentile(lat, 50), _percentile(lat, 99)
        level |= {"p90_ms": _percentile(lat, 90), "p999_ms": _percentile(lat, 99.9), "max_ms": _percentile(lat, 100)}
        detail[name] = level
    result["raw_qps"] = raw[f"b{RAW_BATCH}"]["qps"]
    result["raw_qps_b1"] = raw["b1"]["qps"]
    result["http_over_raw"] = round(result["rps_c16"] / result["raw_qps"], 3) if "rps_c16" in result else None
    result["failures"] = failures  # HTTP requests answered wrongly (status, count, watched, degraded)
    result["raw_fewer_than_k"] = raw[f"b{RAW_BATCH}"]["fewer_than_k"] + raw["b1"]["fewer_than_k"]
    index = manifest["index"]
    targets = []
    if "rps_c16" in result:
        targets = [
            {"target": f"p99 at c16 <= {TARGET_P99_MS_C16:g} ms", "value": result["p99_ms_c16"],
             "holds": result["p99_ms_c16"] <= TARGET_P99_MS_C16},
            {"target": f"requests/s at c16 >= {TARGET_RPS_C16:g}", "value": result["rps_c16"],
             "holds": result["rps_c16"] >= TARGET_RPS_C16},
            {"target": f"HTTP / raw (rps_c16 / raw_qps) >= {TARGET_HTTP_OVER_RAW:g}", "value": result["http_over_raw"],
             "holds": result["http_over_raw"] >= TARGET_HTTP_OVER_RAW},
        ]  # fmt: skip
    result |= {
        "targets": targets,
        "config": {
            "videos": args.videos,
            "dim": args.dim,
            "k": K,
            "index_spec": index["spec"],
            "index_params": index["params"],
            "index_recall_at_100": index["recall"],
            "index_recall_queries": index["recall_queries"]["source"],
            "requests": args.requests,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "repeats": args.repeats,
            "pooling": "each concurrency level ran `repeats` times, round-robin, on one server; rps, p50 and p99 "
            "pool every run's timed requests (levels.cN.runs: each run's own); open-loop rates ran once",
            "rates": args.rates,
            "users": args.users,
            "history": args.history,
            "store": store,
            "store_note": note,
            "workers": args.workers,
            **settings,
            "raw_batch": RAW_BATCH,
            "tower": "default ModelConfig shape (hidden 1024-512-256), constructed untrained weights (bundle.note)",
            "bundle": SYNTHETIC,
            "model_version": manifest["model_version"],
            "bundle_reused": reused,
            "loadgen": "separate process, asyncio streams, HTTP/1.1 keep-alive; concurrency levels: closed loop, one "
            f"connection each; rates: open loop, Poisson arrivals over a pool of {OPEN_LOOP_CONNECTIONS} connections, "
            "latency from the scheduled arrival",
        },
        "levels": detail,
        "raw": raw,
        "machine": {
            "nproc": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "seconds": {
            "bundle": round(bundle_s, 1),
            "server_ready": round(ready_s, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line("benchmarks.serving_load", argv),
    }
    emit_json(result, args.json)
    print(report(result))
    return 1 if failures or result["raw_fewer_than_k"] else 0


def report(result: dict[str, Any]) -> str:
    """The short summary printed at the end."""
    cfg = result["config"]
    lines = [
        f"== serving: {cfg['videos']:,} videos, d={cfg['dim']}, {cfg['index_spec']} {cfg['index_params']}, "
        f"store {cfg['store']}, {cfg['workers']} worker, max_batch {cfg['max_batch']}, "
        f"max_wait_us {cfg['max_wait_us']}",
        f"{'':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6}   CPU ms per request: server (its event loop)"
        " redis loadgen   other jobs' CPU",
    ]
    for name, level in result["levels"].items():
        if "rate" in level:
            continue
        cpu = level["cpu_ms_per_request"]
        rps, p50, p99 = (result[f"{key}_{name}"] for key in ("rps", "p50_ms", "p99_ms"))
        lines.append(
            f"{name:<6} {rps:>8.1f} {p50:>8.2f} {p99:>8.2f} {level['mean_batch'] or 0:>6.1f}   "
            f"{cpu['server']:>27.2f} ({cpu['server_event_loop']:.2f}) {cpu['redis']:>11.2f} {cpu['loadgen']:>7.2f}"
            f"   {level['other_processes_cpu_s']:.1f} cpu-s in {level['wall_s']:.1f} s"
        )
    for name, level in result["levels"].items():
        runs = level.get("runs") or []
        if len(runs) > 1:
            each = ", ".join(f"{run['rps']:.0f} req/s p99 {run['p99_ms']:.1f}" for run in runs)
            lines.append(f"{name:<6} {len(runs)} runs: {each} ms")
        for run in runs[:1]:
            means = run.get("connection_mean_ms") or []
            if len(means) > 1:  # a worker holding more connections than another shows as a slower group here
                lines.append(
                    f"{name:<6} run 1, mean latency per connection, ms: {', '.join(f'{m:.1f}' for m in means)}"
                )
    for name, level in result["levels"].items():
        if "rate" in level:
            lines.append(
                f"open loop, {level['rate']:g} requests/s offered (Poisson, {level['connections']} pooled "
                f"connections): {level['achieved_rps']:.1f} answered/s, p50 {result[f'p50_ms_{name}']:.2f} ms, "
                f"p99 {result[f'p99_ms_{name}']:.2f} ms, p99.9 {level['p999_ms']:.2f} ms"
            )
    for key in (f"b{RAW_BATCH}", "b1"):
        raw = result["raw"][key]
        lines.append(
            f"raw Engine.recommend, batch {raw['batch']:>2}: {raw['qps']:>7.1f} queries/s, "
            f"p50 {raw['p50_batch_ms']:.2f} ms per batch, {raw['cpu_ms_per_query']:.2f} CPU ms per query"
        )
    stats = result["raw"]["user_vectors"]
    lines.append(
        f"user vectors: mean norm {stats['mean_norm']}, mean cosine between users "
        f"{stats['mean_cosine_between_users']}, share of candidates in the history's topics "
        f"{stats['candidates_in_history_topics']}"
    )
    lines.append(
        f"http_over_raw {result['http_over_raw']}; failed requests: {result['failures']}, in-process answers with "
        f"fewer than {cfg['k']} candidates: {result['raw_fewer_than_k']}"
    )
    for t in result["targets"]:
        lines.append(f"  [{'PASS' if t['holds'] else 'FAIL'}] {t['target']}: {t['value']}")
    m = result["machine"]
    lines.append(f"nproc {m['nproc']}, load average before {m['load_average_before']}, after {m['load_average_after']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
