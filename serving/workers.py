"""Several uvicorn worker processes behind one listening socket, connections dealt to them in turn.

uvicorn's own multi-worker mode shares one listening socket, and the worker that wakes first accepts every
connection waiting in the backlog: a client that opens a few keep-alive connections at once (a load balancer, a
sidecar, a benchmark) can land entirely on one worker while the others idle. One SO_REUSEPORT socket per worker
spreads them by a hash of the addresses instead, which for a handful of connections is still lopsided (4 and 12 of
16 in a measured run, the busier worker's answers twice as slow). So here the supervisor owns the listening
socket, accepts, and hands each connection's file descriptor (SCM_RIGHTS over a Unix socket pair) to the next
ready worker in turn; a worker adopts it into its event loop as if it had accepted it. Accepting costs the
supervisor one system call per connection, not per request: keep-alive connections stay with their worker.

A worker counts as ready once its lifespan has loaded the bundle and it says so on its channel, so no connection
waits on a worker that is still loading, also after a restart; while none is ready, connections wait in the
backlog. Unix only (file-descriptor passing); elsewhere uvicorn's own mode runs.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["balanced_workers_supported", "listen", "run_workers"]

STARTUP_FAILURE = 3  # uvicorn's exit status when the lifespan (bundle load) failed: restarting will not help
STOP_GRACE_S = 30.0
RESTART_WINDOW_S, MAX_RESTARTS = 60.0, 5  # more restarts than this within the window is a crash loop: give up
READY = b"R"  # a worker's message on its channel once it serves
HANDOFF = b"C"  # the supervisor's message carrying one connection
BACKLOG = 2048
POLL_S = 0.05


def balanced_workers_supported() -> bool:
    """Whether this platform can pass sockets between processes (SCM_RIGHTS: Unix)."""
    return sys.platform != "win32" and hasattr(socket, "send_fds")


def listen(host: str, port: int) -> socket.socket:
    """The service's listening socket on host:port (port 0 picks a free one); a busy port raises OSError."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


# ---------------------------------------------------------------------------------------------- a worker
def _adopting_server(config: Any, channel: socket.socket) -> Any:
    """A uvicorn Server that serves the connections the supervisor hands over on ``channel``."""
    import uvicorn

    class AdoptingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=[])  # the lifespan (bundle load); no listening socket of its own
            loop = asyncio.get_running_loop()

            def protocol() -> asyncio.Protocol:
                # What uvicorn's own listening server makes for each accepted connection.
                return config.http_protocol_class(
                    config=config, server_state=self.server_state, app_state=self.lifespan.state
                )

            channel.setblocking(False)
            loop.add_reader(channel.fileno(), _receive, channel, loop, protocol, self)
            channel.sendall(READY)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            await super().shutdown(sockets)

    return AdoptingServer(config)


def _receive(
    channel: socket.socket,
    loop: asyncio.AbstractEventLoop,
    protocol: Callable[[], asyncio.Protocol],
    server: Any,
) -> None:
    """Adopt every connection waiting on the channel; the supervisor gone (end of file) stops the worker."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 64, 64)
        except BlockingIOError:
            return
        except OSError as exc:
            message, fds, why = b"", [], f"the channel from the supervisor failed ({exc})"
        else:
            why = "the supervisor closed this worker's channel"
        for fd in fds:
            sock = socket.socket(fileno=fd)
            loop.create_task(loop.connect_accepted_socket(protocol, sock))
        if not message:
            log.warning("%s; stopping", why)
            loop.remove_reader(channel.fileno())
            server.should_exit = True  # nobody left to hand out connections: drain and exit
            return


def _worker(app: str, channel: socket.socket, options: dict[str, Any]) -> None:
    """One worker process: the app under uvicorn, fed connections through its channel."""
    import uvicorn

    config = uvicorn.Config(app, **options)
    _adopting_server(config, channel).run()


# ---------------------------------------------------------------------------------------------- the supervisor
class _Slot:
    """One worker process with the supervisor's end of its channel."""

    def __init__(self, process: BaseProcess, channel: socket.socket) -> None:
        self.process = process
        self.channel = channel
        self.ready = False


class _Supervisor:
    """Start the workers, deal them the connections, restart any that dies, stop them all on SIGINT / SIGTERM."""

    def __init__(self, app: str, listener: socket.socket, workers: int, options: dict[str, Any]) -> None:
        self.app, self.listener, self.options = app, listener, options
        self.context = multiprocessing.get_context("spawn")  # a fresh interpreter: no TensorFlow state forked
        self.slots: list[_Slot] = []
        self.workers = workers
        self.stopping = False
        self.restarts: list[float] = []  # monotonic times of recent restarts
        self.lock = threading.Lock()  # slots are replaced by the supervising loop and read by the acceptor
        self.turn = 0

    def _start(self) -> _Slot:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = self.context.Process(
            target=_worker, args=(self.app, theirs, self.options), name="recsys-worker", daemon=False
        )
        process.start()
        theirs.close()  # the worker holds its own copy now: our end sees end of file when it exits
        log.info("started worker process [%s]", process.pid)
        return _Slot(process, ours)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    # ------------------------------------------------------------------ accepting
    def _accept(self) -> None:
        """The acceptor thread: each new connection goes to the next ready worker."""
        self.listener.settimeout(0.5)
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stopping:
                    return
                log.exception("accept failed")
                time.sleep(POLL_S)
                continue
            with conn:  # our copy closes once handed over: the worker's is the only one left
                self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        """Pass the connection to the next ready worker, waiting while none is (a restart under way)."""
        while not self.stopping:
            with self.lock:
                ready = [slot for slot in self.slots if slot.ready]
                slot = ready[self.turn % len(ready)] if ready else None
                self.turn += 1
            if slot is None:
                time.sleep(POLL_S)
                continue
            try:
                socket.send_fds(slot.channel, [HANDOFF], [conn.fileno()])
                return
            except OSError:  # that worker just died: the supervising loop replaces it; try another
                slot.ready = False

    # ------------------------------------------------------------------ supervising
    def run(self) -> int:
        """Supervise until stopped; the exit status is 0, a worker's start-up failure (3), or 1 for a crash loop."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        acceptor = threading.Thread(target=self._accept, name="acceptor", daemon=True)
        try:
            with self.lock:
                self.slots = [self._start() for _ in range(self.workers)]
            acceptor.start()
            while not self.stopping:
                waitables: list[Any] = [s.process.sentinel for s in self.slots]
                waitables += [s.channel for s in self.slots if not s.ready]
                multiprocessing.connection.wait(waitables, timeout=0.5)
                for slot in self.slots:
                    if not slot.ready and slot.process.is_alive():
                        self._read_ready(slot)
                status = self._replace_dead()
        finally:
            self.stopping = True
            if acceptor.is_alive():
                acceptor.join()  # it notices within its accept timeout
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _read_ready(self, slot: _Slot) -> None:
        slot.channel.setblocking(False)
        try:
            said = slot.channel.recv(1)
        except BlockingIOError:
            said = b""
        finally:
            slot.channel.setblocking(True)  # before the acceptor may use it: handing over blocks, never fails
        slot.ready = said == READY

    def _replace_dead(self) -> int:
        """Restart the workers that exited; a start-up failure or a crash loop stops the service (its status)."""
        for i, slot in enumerate(self.slots):
            if slot.process.is_alive() or self.stopping:
                continue
            slot.ready = False
            if slot.process.exitcode == STARTUP_FAILURE:
                log.error("worker [%s] failed to start (see above); stopping", slot.process.pid)
                self.stopping = True
                return STARTUP_FAILURE
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(self.restarts) > MAX_RESTARTS:
                log.error("workers died %d times in %.0fs; stopping", len(self.restarts), RESTART_WINDOW_S)
                self.stopping = True
                return 1
            log.warning("worker [%s] exited with %s; starting another", slot.process.pid, slot.process.exitcode)
            replacement = self._start()
            with self.lock:
                self.slots[i] = replacement
            slot.channel.close()
        return 0

    def _shutdown(self) -> None:
        """Close the listener, SIGTERM every worker (uvicorn drains its connections), kill what is left later."""
        self.listener.close()
        for slot in self.slots:
            if slot.process.is_alive():
                slot.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for slot in self.slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.warning("worker [%s] did not stop in %.0fs; killing it", slot.process.pid, STOP_GRACE_S)
                slot.process.kill()
                slot.process.join()
            slot.channel.close()


def run_workers(app: str, listener: socket.socket, workers: int, **options: Any) -> int:
    """Serve the ASGI app (an import string) from ``workers`` processes, dealing them the connections accepted on
    ``listener`` (see ``listen``); returns the exit status."""
    host, port = listener.getsockname()[:2]
    log.info("serving on %s:%d with %d workers (connections dealt in turn)", host, port, workers)
    return _Supervisor(app, listener, workers, options).run()
