"""`recsys demo`: from nothing to a running candidate service in one command.

Synthetic log with titles (or a MovieLens zip) -> rollback examples -> top-K-plus-random training -> evaluation as
served (watched videos hidden) beside popularity -> bundle + FAISS index -> Redis (a real redis-server when one is
installed, else the service's in-process store, said plainly) -> `recsys serve` -> a few users' histories posted as
events -> their candidate lists with titles, and curl examples. One line per stage; progress bars only on a terminal.

The service runs as a child process (`recsys serve`), so this module imports no serving code.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.config import GeneratorConfig, ModelConfig, PipelineConfig, TrainConfig
from recsys.errors import RecsysError

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """Sizes and knobs of the demo (the defaults are sized for about 10 minutes on an idle 2-core machine)."""

    out: Path
    movielens: Path | None = None
    users: int = 4000
    videos: int = 8000
    events: int = 320_000
    epochs: int = 6
    max_examples_per_user: int = 100
    port: int = 8000
    host: str = "127.0.0.1"
    demo_users: int = 3
    serve_seconds: float | None = None  # None: until interrupted; 0: stop right after the demo queries
    progress: bool = True  # bars still appear only on a terminal (recsys.logs.progress_enabled decides)


class _Stages:
    """Numbered one-line progress: '[3/9] train ... 41.2s: <result>'."""

    def __init__(self, total: int, echo: Callable[[str], None]) -> None:
        self.total, self.done, self.echo = total, 0, echo
        self.t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, str]]:
        self.done += 1
        self.echo(f"[{self.done}/{self.total}] {name} ...")
        note: dict[str, str] = {}
        t0 = time.perf_counter()
        yield note
        self.echo(f"[{self.done}/{self.total}] {name}: {note.get('result', 'done')} ({time.perf_counter() - t0:.1f}s)")


def _free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _start_redis(directory: Path) -> tuple[subprocess.Popen[bytes] | None, str | None, str | None]:
    """(process, url, password) of a fresh redis-server on a free port, or Nones when none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None, None
    directory.mkdir(parents=True, exist_ok=True)
    port, password = _free_port(), secrets.token_urlsafe(24)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password]
    command += ["--dir", str(directory), "--appendonly", "yes", "--save", ""]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _free("127.0.0.1", port):
        if process.poll() is not None:
            return None, None, None
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0", password


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RecsysError(f"the service exited with {process.returncode}; see {log}")
        try:
            ready: dict[str, Any] = _http(f"{url}/readyz", timeout=2)
            return ready
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.3)
    raise RecsysError(f"the service did not become ready in {timeout:.0f}s; see {log}")


def _demo_histories(log_dir: Path, n_users: int, per_user: int = 20) -> dict[str, list[str]]:
    """The most recent watches of the n users with the most watches (real histories to post as events)."""
    events = pq.read_table(log_dir / "events.parquet", columns=["user_id", "video_id", "ts"])
    counts = events.group_by("user_id").aggregate([("video_id", "count")]).sort_by([("video_id_count", "descending")])
    chosen = counts["user_id"].to_pylist()[:n_users]
    mine = events.filter(pc.is_in(events["user_id"], value_set=counts["user_id"].slice(0, n_users)))
    mine = mine.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    out: dict[str, list[str]] = {}
    for user in chosen:
        rows = mine.filter(pc.equal(mine["user_id"], user))["video_id"].to_pylist()
        out[str(user)] = [str(v) for v in rows[-per_user:]]
    return out


def _titles(log_dir: Path) -> dict[str, str]:
    path = log_dir / "videos.parquet"
    if not path.is_file():
        return {}
    table = pq.read_table(path, columns=["video_id", "title"])
    return {str(v): str(t) for v, t in zip(table["video_id"].to_pylist(), table["title"].to_pylist(), strict=True)}


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage, leave the service running for cfg.serve_seconds (None: until Ctrl-C), return a summary."""
    with _sigterm_as_interrupt():
        return _run(cfg, echo)


def _run(cfg: DemoConfig, echo: Callable[[str], None]) -> dict[str, Any]:
    from pipelines.movielens import read_movielens, write_movielens
    from pipelines.pipeline import run_pipeline
    from pipelines.sources import resolve_inputs
    from pipelines.synthetic import generate
    from training.evaluate import evaluate_run
    from training.export import export_bundle
    from training.train import train

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise RecsysError(f"{out}: already exists and is not empty (remove it or pick another --out)")
    if not _free(cfg.host, cfg.port):
        raise RecsysError(f"port {cfg.port} on {cfg.host} is in use (pass --port)")
    stages = _Stages(9, echo)
    summary: dict[str, Any] = {"out": str(out)}
    data, examples, run, bundles = out / "data", out / "examples", out / "run", out / "bundles"

    with stages.stage("data") as note:
        if cfg.movielens is not None:
            counts = write_movielens(read_movielens(cfg.movielens), data)
            note["result"] = f"MovieLens {cfg.movielens.name}: {counts['events']:,} ratings as watches"
        else:
            generate(
                GeneratorConfig(users=cfg.users, videos=cfg.videos, events=cfg.events, topics=40, seed=7),
                data,
                progress=cfg.progress,
            )
            note["result"] = f"synthetic log: {cfg.events:,} watches, {cfg.users:,} users, {cfg.videos:,} titled videos"

    with stages.stage("pipeline (rollback examples, vocabularies, time split)") as note:
        report = run_pipeline(
            resolve_inputs(data),
            examples,
            PipelineConfig(max_examples_per_user=cfg.max_examples_per_user),
            progress=cfg.progress,
        )
        rows = report["examples"]
        note["result"] = ", ".join(f"{split} {count:,}" for split, count in rows.items()) + " examples"

    with stages.stage(f"train (top-K-plus-random softmax, up to {cfg.epochs} epochs)") as note:
        model_cfg = ModelConfig(hidden=[256], embedding_dim=64, video_input_dim=64, dropout=0.0)
        train_cfg = TrainConfig(
            loss="topk_random",
            optimizer="adagrad",  # the optimizer the demo's learning rate was tuned with
            epochs=cfg.epochs,
            batch_size=256,
            learning_rate=0.4,
            patience=cfg.epochs,  # every epoch runs and the best is kept: early epochs sit on a plateau
            warmup_steps=200,
        )
        trained = train(examples, run, model_cfg, train_cfg, progress=cfg.progress)
        best = trained["epochs"][trained["best_epoch"] - 1]
        note["result"] = (
            f"{trained['steps']} steps, best epoch {trained['best_epoch']}: validation recall@100 "
            f"{best['recall@100']:.3f} (popularity {trained['validation_popularity']['recall@100']:.3f})"
        )

    with stages.stage("evaluate on the test split as served (watched videos hidden)") as note:
        result = evaluate_run(run, "test", exclude_history=True)
        model, popular = result["model"]["recall@100"], result["popularity"]["recall@100"]
        summary["test_recall@100"] = {"model": model, "popularity": popular}
        summary["margin"] = model / popular - 1 if popular else None
        note["result"] = (
            f"test recall@100 {model:.3f} vs popularity {popular:.3f} ({100 * (model / popular - 1):+.0f}%), "
            f"recall@10 {result['model']['recall@10']:.3f} vs {result['popularity']['recall@10']:.3f}"
        )

    with stages.stage("export the bundle and build the FAISS index") as note:
        path = export_bundle(run, bundles, index_spec="auto")
        record = json.loads((path / "manifest.json").read_text())["index"]
        summary["bundle"] = str(path)
        note["result"] = f"{path.name}, index {record['spec']} recall@100 {record['recall']:.3f}"

    with stages.stage("history store") as note:
        redis, redis_url, password = _start_redis(out / "redis")
        if redis is None:
            note["result"] = "redis-server not found: using the service's IN-PROCESS store (one worker, not kept)"
        else:
            note["result"] = f"redis-server at {redis_url} (password in {out / 'redis.env'})"
            (out / "redis.env").write_text(
                f"RECSYS_SERVE__REDIS_URL={redis_url}\nRECSYS_SERVE__REDIS_PASSWORD={password}\n"
            )
        summary["store"] = "redis" if redis is not None else "memory"

    url = f"http://{cfg.host}:{cfg.port}"
    service_log = out / "serve.log"
    env = {**os.environ, "RECSYS_ADMIN_TOKEN": secrets.token_urlsafe(24)}
    if redis_url is not None and password is not None:
        env |= {"RECSYS_SERVE__REDIS_URL": redis_url, "RECSYS_SERVE__REDIS_PASSWORD": password}
    command = [sys.executable, "-m", "recsys", "serve", "--bundles", str(bundles), "--host", cfg.host]
    command += ["--port", str(cfg.port), "--store", summary["store"]]
    if (data / "videos.parquet").is_file():
        command += ["--catalog", str(data / "videos.parquet")]
    service: subprocess.Popen[bytes] | None = None
    try:  # from here on, child processes are stopped however the demo ends
        with stages.stage("start the service") as note, service_log.open("wb") as log:
            service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            ready = _wait_ready(url, service, service_log)
            note["result"] = f"{url} serving {ready['model_version']} (log: {service_log})"

        titles = _titles(data)
        histories = _demo_histories(data, cfg.demo_users)
        with stages.stage("post the demo users' recent watches as events") as note:
            events = [{"user_id": u, "video_id": v} for u, watched in histories.items() for v in watched]
            stored = _http(f"{url}/v1/events", {"events": events})
            note["result"] = f"{stored['stored_events']} watches for {stored['users']} users"

        with stages.stage("ask for candidates") as note:
            answers = {}
            for user, watched in histories.items():
                answer = _http(f"{url}/v1/candidates", {"user_id": user, "k": 100})
                answers[user] = answer
                echo(f"\n  user {user}, last watched:")
                for video in watched[-3:]:
                    echo(f"      {video}  {titles.get(video, '')}")
                echo("    top candidates:")
                for c in answer["candidates"][:5]:
                    echo(f"      {c['score']:7.3f}  {c['video_id']}  {c.get('title') or ''}")
            note["result"] = f"{len(answers)} users answered, {sum(len(a['candidates']) for a in answers.values())} "
            note["result"] += "candidates"
        summary["answers"] = {u: [c["video_id"] for c in a["candidates"]] for u, a in answers.items()}
        some_user, some_video = next(iter(histories)), next(iter(histories.values()))[-1]
        echo(
            f"""
The service is running at {url} (page: {url}/ , API docs: {url}/docs). Try:

  curl -s {url}/v1/candidates -H 'content-type: application/json' -d '{{"user_id": "{some_user}", "k": 10}}'
  curl -s {url}/v1/events -H 'content-type: application/json' \\
       -d '{{"events": [{{"user_id": "{some_user}", "video_id": "{some_video}"}}]}}'
  curl -s '{url}/v1/videos/{some_video}/similar?k=10'
  curl -s {url}/metrics | grep recsys_

Test recall@100 as served: {summary["test_recall@100"]["model"]:.3f} vs popularity \
{summary["test_recall@100"]["popularity"]:.3f}. Everything is under {out}. \
Total {time.perf_counter() - stages.t0:.0f}s."""
        )
        summary["seconds"] = time.perf_counter() - stages.t0
        (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
        _serve_until(cfg.serve_seconds, service, echo)
    finally:
        for process in (service, redis):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
    return summary


def _serve_until(seconds: float | None, service: subprocess.Popen[bytes], echo: Callable[[str], None]) -> None:
    """Keep the service up: for `seconds`, or until Ctrl-C / SIGTERM (None)."""
    if seconds == 0:
        return
    echo("Press Ctrl-C to stop." if seconds is None else f"Serving for {seconds:.0f}s.")
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while service.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    echo("stopping the service")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so `finally` blocks stop the child processes in every stage."""

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
