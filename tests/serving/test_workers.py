"""The worker supervisor: one listening socket, connections dealt to the ready workers in turn, restarts.

Run against a real supervisor process and real uvicorn workers serving a tiny app (tests/serving/pid_app.py) that
answers with its pid, so each connection shows which worker holds it. The service's own bundle and Redis under
several workers are tested in test_api.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from serving.workers import balanced_workers_supported, listen

REPO = Path(__file__).resolve().parents[2]
SUPERVISOR = (
    "import sys; from serving.workers import listen, run_workers; "
    "sock = listen('127.0.0.1', 0); print(sock.getsockname()[1], flush=True); "
    "sys.exit(run_workers('tests.serving.pid_app:app', sock, int(sys.argv[1]), log_level='warning'))"
)

pytestmark = pytest.mark.skipif(not balanced_workers_supported(), reason="needs file-descriptor passing (Unix)")


@contextmanager
def supervisor(workers: int, **env: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A running supervisor process and its port."""
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(workers)],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def pid_of(conn: http.client.HTTPConnection) -> int:
    """The pid of the worker holding this keep-alive connection."""
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    return int(response.read())


def ready_workers(port: int, count: int, exclude: frozenset[int] = frozenset()) -> set[int]:
    """Open fresh connections until `count` different workers (none in `exclude`) answered (30 s at most)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen - exclude) < count and time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            seen.add(pid_of(conn))
        except (ConnectionError, http.client.HTTPException):
            time.sleep(0.1)  # a worker that died with this connection: the supervisor is replacing it
        finally:
            conn.close()
    return seen - exclude


def test_listen_picks_a_free_port_for_zero_and_refuses_a_busy_one() -> None:
    with listen("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        assert port > 0
        with pytest.raises(OSError):
            listen("127.0.0.1", port)


def test_connections_are_dealt_evenly_and_stay_with_their_worker() -> None:
    with supervisor(2) as (_, port):
        assert len(ready_workers(port, 2)) == 2
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
        try:
            owners = [pid_of(conn) for conn in conns]  # 16 keep-alive connections opened back to back
            assert sorted(Counter(owners).values()) == [8, 8], Counter(owners)
            # Keep-alive: later requests on a connection are answered by the worker that holds it.
            assert [pid_of(conn) for conn in conns] == owners
        finally:
            for conn in conns:
                conn.close()


def test_a_killed_worker_is_replaced_and_only_live_workers_get_connections() -> None:
    with supervisor(2) as (_, port):
        first = ready_workers(port, 2)
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        replacement = ready_workers(port, 2, exclude=frozenset({killed}))
        assert len(replacement) == 2 and killed not in replacement


def test_a_start_up_failure_stops_the_service_with_status_3() -> None:
    with supervisor(2, RECSYS_TEST_FAIL_STARTUP="1") as (process, port):
        assert process.wait(timeout=60) == 3
        with pytest.raises(OSError):  # the listening socket went with it
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_workers_exit_when_the_supervisor_is_killed() -> None:
    with supervisor(2) as (process, port):
        workers = ready_workers(port, 2)
        process.kill()  # no SIGTERM handler runs: the workers only see their channel close
        process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
