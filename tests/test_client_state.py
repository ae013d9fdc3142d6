"""The upload client's state file: keys that follow a file's content, owner-only writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.client.state import EDGE, StateError, StateFile, file_key

ENDPOINT = "https://gw.example/files/"


def test_the_key_follows_size_mtime_edges_and_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * (3 * EDGE))
    key = file_key(ENDPOINT, path)
    assert file_key(ENDPOINT, path) == key
    assert file_key("https://other.example/files/", path) != key

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    moved = file_key(ENDPOINT, path)
    assert moved != key

    def changed_at(offset: int) -> str:
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(b"b")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same mtime as `moved`
        return file_key(ENDPOINT, path)

    assert changed_at(3 * EDGE - 1) != moved  # the last MiB
    path.write_bytes(b"a" * (3 * EDGE))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert file_key(ENDPOINT, path) == moved
    assert changed_at(0) != moved  # the first MiB


def test_entries_are_kept_owner_only_and_dropped(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "cache" / "state.json")
    assert state.get("k") is None
    state.put("k", "https://gw.example/files/abc")
    state.put("j", "https://gw.example/files/def")
    assert state.path.stat().st_mode & 0o777 == 0o600
    assert state.path.parent.stat().st_mode & 0o777 == 0o700
    again = StateFile(state.path)  # another run
    assert again.get("k") == "https://gw.example/files/abc"
    again.drop("k")
    assert state.get("k") is None
    assert state.get("j") == "https://gw.example/files/def"


@pytest.mark.parametrize("text", ["", "[]", '{"version": 2, "uploads": {}}', '{"version": 1}'])
def test_a_file_that_is_not_a_state_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateError, match="not a gateway upload state file"):
        StateFile(path).get("k")
