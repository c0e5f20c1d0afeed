"""Several uvicorn worker processes on one port, each listening on its own SO_REUSEPORT socket.

uvicorn's own multi-worker mode shares one listening socket, and the worker that wakes first accepts every
connection waiting in the backlog. A client that opens a few keep-alive connections at once (a load balancer, a
sidecar, a benchmark) can then land entirely on one worker while the others idle: measured with 16 connections
to 2 workers, that halved throughput and doubled latency. With one socket per worker in a SO_REUSEPORT group the
kernel spreads new connections over the workers by a hash of their addresses. A worker's socket starts listening
only once its lifespan has loaded the bundle (asyncio listens when serving starts), so no connection waits on a
worker that is still loading, also after a restart.

Linux only (elsewhere SO_REUSEPORT does not balance TCP connections); other platforms keep uvicorn's mode.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["balanced_workers_supported", "claim_port", "run_workers"]

STARTUP_FAILURE = 3  # uvicorn's exit status when the lifespan (bundle load) failed: restarting will not help
STOP_GRACE_S = 30.0
RESTART_WINDOW_S, MAX_RESTARTS = 60.0, 5  # more restarts than this within the window is a crash loop: give up


def balanced_workers_supported() -> bool:
    """Whether this platform balances TCP connections over a SO_REUSEPORT group (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _address(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, sockaddr


def claim_port(host: str, port: int) -> int:
    """Check that host:port is free (port 0 picks one) and return the port; a busy port raises OSError.

    Checked with a plain socket first, because a worker's SO_REUSEPORT bind would otherwise join another server
    of the same user on that port and silently share its traffic.
    """
    family, sockaddr = _address(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(sockaddr)
        return int(probe.getsockname()[1])


def _listener(host: str, port: int) -> socket.socket:
    """A bound, not yet listening, SO_REUSEPORT socket (uvicorn's server listens on it after start-up)."""
    family, sockaddr = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(sockaddr)
    sock.set_inheritable(False)
    return sock


def _worker(app: str, host: str, port: int, options: dict[str, Any]) -> None:
    """One worker process: its own socket in the port's group, one uvicorn server on it."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, **options)
    uvicorn.Server(config).run(sockets=[_listener(host, port)])


class _Supervisor:
    """Start the workers, restart any that dies while serving, stop them all on SIGINT / SIGTERM."""

    def __init__(self, app: str, host: str, port: int, workers: int, options: dict[str, Any]) -> None:
        self.args = (app, host, port, options)
        self.context = multiprocessing.get_context("spawn")  # a fresh interpreter: no TensorFlow state forked
        self.processes: list[BaseProcess] = []
        self.workers = workers
        self.stopping = False
        self.restarts: list[float] = []  # monotonic times of recent restarts

    def _start(self) -> BaseProcess:
        process = self.context.Process(target=_worker, args=self.args, name="recsys-worker", daemon=False)
        process.start()
        log.info("started worker process [%s]", process.pid)
        return process

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        """Supervise until stopped; the exit status is 0, a worker's start-up failure (3), or 1 for a crash loop."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            self.processes = [self._start() for _ in range(self.workers)]
            while not self.stopping:
                multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=0.5)
                for i, process in enumerate(self.processes):
                    if process.is_alive() or self.stopping:
                        continue
                    if process.exitcode == STARTUP_FAILURE:
                        log.error("worker [%s] failed to start (see above); stopping", process.pid)
                        self.stopping, status = True, STARTUP_FAILURE
                        break
                    now = time.monotonic()
                    self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
                    if len(self.restarts) > MAX_RESTARTS:
                        log.error("workers died %d times in %.0fs; stopping", len(self.restarts), RESTART_WINDOW_S)
                        self.stopping, status = True, 1
                        break
                    log.warning("worker [%s] exited with %s; starting another", process.pid, process.exitcode)
                    self.processes[i] = self._start()
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _shutdown(self) -> None:
        """SIGTERM every worker (uvicorn drains its connections), then kill what is left after the grace period."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker [%s] did not stop in %.0fs; killing it", process.pid, STOP_GRACE_S)
                process.kill()
                process.join()


def run_workers(app: str, host: str, port: int, workers: int, **options: Any) -> int:
    """Serve the ASGI app (an import string) from ``workers`` processes on host:port (claimed with ``claim_port``
    first: a free port, not 0); returns the exit status."""
    log.info("serving on %s:%d with %d workers (one SO_REUSEPORT socket each)", host, port, workers)
    return _Supervisor(app, host, port, workers, options).run()
