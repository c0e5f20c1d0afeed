"""`recsys demo` end to end at a small size: every stage runs, the service it starts answers over HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_ends_in_a_running_service(tmp_path: Path) -> None:
    port, out = _free_port(), tmp_path / "demo"
    command = [sys.executable, "-m", "recsys", "demo", "--out", str(out), "--port", str(port)]
    command += ["--users", "600", "--videos", "1500", "--events", "60000", "--epochs", "4", "--serve-seconds", "300"]
    log = tmp_path / "demo.log"
    with log.open("w") as sink:
        demo = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 420
        while "The service is running" not in log.read_text():
            assert demo.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo did not reach a running service in time"
            time.sleep(1)
        text = log.read_text()
        for stage in range(1, 10):
            assert f"[{stage}/9]" in text
        assert "curl -s http://127.0.0.1" in text and "top candidates" in text
        summary = json.loads((out / "demo.json").read_text())
        recall = summary["test_recall@100"]
        assert recall["model"] > recall["popularity"], recall
        url = f"http://127.0.0.1:{port}"
        user = next(iter(summary["answers"]))
        answer = httpx.post(f"{url}/v1/candidates", json={"user_id": user, "k": 10}, timeout=30).json()
        assert len(answer["candidates"]) == 10 and all(c["title"] for c in answer["candidates"])
        history = httpx.get(f"{url}/v1/users/{user}/history", timeout=30).json()["history"]
        assert len(history) == 20, "the demo posts each demo user's last 20 watches"
        assert not {c["video_id"] for c in answer["candidates"]} & {h["video_id"] for h in history}
        assert httpx.get(f"{url}/", timeout=30).status_code == 200
    finally:
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(60)
    assert code == 0, log.read_text()[-3000:]
    assert "stopping the service" in log.read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
