"""Real parts for the service tests: a small trained bundle, a real redis-server, a real uvicorn on localhost."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipelines.pipeline import run_pipeline
from pipelines.sources import resolve_inputs
from pipelines.synthetic import generate
from recsys.config import GeneratorConfig, ModelConfig, PipelineConfig, TrainConfig
from training.export import export_bundle
from training.train import train

ADMIN_TOKEN = "test-admin-token-" + secrets.token_hex(8)
SMALL = ModelConfig(hidden=[64], embedding_dim=32, video_input_dim=32, token_input_dim=8, category_dim=4)


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Trained:
    """A synthetic log with planted topics, its examples, one training run and a bundles directory."""

    log: Path
    examples: Path
    run: Path
    bundles: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A 600-user, 2,000-video, 15-topic log trained for a few epochs and exported with a FAISS index."""
    root = tmp_path_factory.mktemp("serving")
    log = root / "log"
    generate(GeneratorConfig(users=600, videos=2000, events=60_000, topics=15, seed=5), log, progress=False)
    examples = root / "examples"
    run_pipeline(
        resolve_inputs(log),
        examples,
        PipelineConfig(max_examples_per_user=60, test_days=5, validation_days=5, workers=1),
        progress=False,
    )
    run = root / "run"
    cfg = TrainConfig(
        loss="full",
        batch_size=256,
        epochs=10,
        optimizer="adagrad",
        learning_rate=0.4,
        eval_max_examples=500,
        shuffle_window=5000,
        patience=10,
    )
    train(examples, run, SMALL, cfg, progress=False)
    bundles = root / "bundles"
    export_bundle(run, bundles, index_spec="auto")
    return Trained(log, examples, run, bundles)


@dataclass
class RedisServer:
    """A redis-server process on a free loopback port with a password."""

    port: int
    password: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers."""
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--requirepass", self.password,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                    if b"PONG" in sock.recv(64):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Kill the server (as a crash would)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A real redis-server with a random password on a free port (skips the test when none is installed)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(free_port(), secrets.token_hex(16), directory)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)  # a test may have frozen it
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server, started by the test (install Debian's redis-server; .ci/run does)."""
    with running_redis(tmp_path) as server:
        yield server


@dataclass
class Api:
    """A running `recsys serve` process and a client for it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    bundles: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def start_api(
    bundles: Path, redis: RedisServer | None, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> Api:
    """Start `recsys serve` on a free port and wait for /readyz."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    environment = {**os.environ, "RECSYS_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
    if redis is not None:
        environment |= {"RECSYS_SERVE__REDIS_URL": redis.url, "RECSYS_SERVE__REDIS_PASSWORD": redis.password}
    store = ["--store", "redis"] if redis is not None else ["--store", "memory"]
    command = [sys.executable, "-m", "recsys", "serve", "--bundles", str(bundles), "--port", str(port), *store, *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=tmp_path)
    api = Api(f"http://127.0.0.1:{port}", process, log, bundles)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"recsys serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api.url}/readyz", timeout=1).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"recsys serve did not become ready:\n{log.read_text()[-3000:]}")


def stop_api(api: Api) -> None:
    """Stop the server (SIGTERM, then kill)."""
    api.process.terminate()
    try:
        api.process.wait(15)
    except subprocess.TimeoutExpired:
        api.process.kill()
        api.process.wait(5)
