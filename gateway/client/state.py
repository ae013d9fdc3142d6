"""Where each unfinished upload stands across runs: a small owner-only JSON file of upload
URLs, keyed by what identifies a file's content cheaply (endpoint, absolute path, size,
mtime and a SHA-256 of its first and last MiB). An entry is dropped when its upload is
complete. Never holds a token."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

STATE_VERSION = 1
EDGE = 1 << 20  # bytes read at each end of a file for its fingerprint


class StateError(Exception):
    """The state file cannot be read or written."""


def default_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "gateway-upload" / "state.json"


def file_key(endpoint: str, path: Path) -> str:
    """The key of `path`'s current content at `endpoint`: any change to its size, mtime,
    first or last MiB gives another key (and a new upload)."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(EDGE))
        if stat.st_size > EDGE:
            f.seek(max(EDGE, stat.st_size - EDGE))
            digest.update(f.read(EDGE))
    identity = [endpoint, str(path), stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


class StateFile:
    """Upload URLs by file key. Each change re-reads the file under an exclusive lock and
    replaces it atomically, so several runs may share one state file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._locked():
            entry = self._read().get(key)
        return entry if isinstance(entry, str) else None

    def put(self, key: str, url: str) -> None:
        with self._locked():
            uploads = self._read()
            uploads[key] = url
            self._write(uploads)

    def drop(self, key: str) -> None:
        with self._locked():
            uploads = self._read()
            if uploads.pop(key, None) is not None:
                self._write(uploads)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot use the state file {self.path}: {exc}") from exc
        try:
            with self._lock:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> dict[str, object]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(f"cannot read the state file {self.path}: {exc}") from exc
        try:
            document = json.loads(text)
        except ValueError:
            raise StateError(f"{self.path} is not a gateway upload state file") from None
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
            raise StateError(f"{self.path} is not a gateway upload state file")
        uploads = document.get("uploads")
        if not isinstance(uploads, dict):
            raise StateError(f"{self.path} is not a gateway upload state file")
        return uploads

    def _write(self, uploads: dict[str, object]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        body = json.dumps({"version": STATE_VERSION, "uploads": uploads}, indent=1, sort_keys=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)  # an old tmp file may have had another mode
                f.write(body + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateError(f"cannot write the state file {self.path}: {exc}") from exc
