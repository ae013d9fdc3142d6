"""The suite's SeaweedFS helper: a port taken between choosing it and weed binding it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.s3server import PortTaken, SeaweedS3


def _hold(port: int) -> socket.socket:
    """Listen on 127.0.0.1:port, as a process that took the port meanwhile would."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_first_start_moves_to_other_ports_and_a_restart_keeps_its_own(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "weed")
    taken = server.s3_port
    held = _hold(taken)
    try:
        server.start()
        assert server.s3_port != taken and server.proc is not None
        assert server.client().bucket_exists("readiness")  # serving, on its new port
        server.stop()
        restart_port = server.s3_port
        with _hold(restart_port), pytest.raises(PortTaken):
            server.start()  # a restart must keep the ports its clients know
        assert server.s3_port == restart_port
    finally:
        held.close()
        server.close()
