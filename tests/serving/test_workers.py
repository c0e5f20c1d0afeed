"""Port claiming for the SO_REUSEPORT workers (the balancing itself is tested against a real server in test_api)."""

from __future__ import annotations

import socket

import pytest

from serving.workers import claim_port


def test_claim_port_picks_a_free_port_for_zero_and_refuses_a_busy_one() -> None:
    port = claim_port("127.0.0.1", 0)
    assert port > 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(OSError):
            claim_port("127.0.0.1", busy.getsockname()[1])


def test_claim_port_refuses_a_port_held_by_another_reuseport_server() -> None:
    """A worker's own SO_REUSEPORT bind would join that server's group and share its traffic; the claim must not."""
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT on this platform")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        with pytest.raises(OSError):
            claim_port("127.0.0.1", other.getsockname()[1])
