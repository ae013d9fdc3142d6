"""The data dir a real gateway writes: owner-only modes, the keyring check, the first token."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from tests.server import GatewayProcess, free_port
from tests.tushttp import create, send, upload

SEGMENT = 64 * 1024


def _loose(root: Path) -> list[str]:
    """Every file or folder at or under `root` that its group or others may touch."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def test_every_file_and_folder_is_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)  # made by the operator, with the usual umask
    old_umask = os.umask(0o022)  # what the gateway inherits from a typical shell
    try:
        server = GatewayProcess(data_dir, env={"GATEWAY_SEGMENT_SIZE": str(SEGMENT)}).start()
    finally:
        os.umask(old_umask)
    try:
        upload(server, os.urandom(3 * SEGMENT + 100), [SEGMENT + 10, SEGMENT, SEGMENT + 90])
        unfinished = create(server, 2 * SEGMENT)
        send(server, unfinished, os.urandom(1000), 0)  # leaves a tail piece
        names = {p.name for p in data_dir.rglob("*")}
        assert {"catalog.sqlite3-wal", "catalog.sqlite3-shm", "keyring.json"} <= names
        assert "manifest.jws" in names and "tail" in names
        assert _loose(data_dir) == []
    finally:
        server.stop()


def test_a_keyring_others_can_read_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = GatewayProcess(data_dir).start()  # creates the keyring
    server.stop()
    keyring = data_dir / "keyring.json"
    os.chmod(keyring, 0o640)
    port = str(free_port())
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data_dir), "--port", port],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode != 0
    assert str(keyring) in out.stderr and f"chmod 600 {keyring}" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_first_token_goes_to_an_owner_only_file_not_to_the_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # No token minted beforehand: this is the first start, with stdout and stderr
    # going to a log file as in a container.
    server = GatewayProcess(data_dir, token="none-yet").start()
    try:
        token_file = data_dir / "first-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert _loose(data_dir) == []
        token = token_file.read_text().strip()
        assert token.startswith("gwt_")
        log = server.log()
        assert token not in log
        assert str(token_file) in log
        server.token = token
        response = httpx.post(
            server.files_url, headers={**server.auth, "Upload-Length": "5"}, timeout=30
        )
        assert response.status_code == 201, response.text
    finally:
        server.stop()
