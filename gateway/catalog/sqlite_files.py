"""The SQLite catalog's files: owner-only, and searched for erased bytes safely.

A process must never close a descriptor of a database file that SQLite has open in
the same process: POSIX advisory locks belong to the process and the file, so the
close drops SQLite's locks too, and another process may then take the database for
unused and delete its WAL under us. So the database file is opened once per process
(`DatabaseFile.hold`), kept open while a catalog uses it, and read with pread, never
mmap (which closes a duplicate descriptor of its own). The WAL file carries no
locks; the shared-memory file (-shm) does, and is not read: the WAL index holds page
and frame numbers, never page contents.
"""

from __future__ import annotations

import os
import stat
import threading
from contextlib import suppress
from pathlib import Path

_CHUNK = 1 << 20
_LOCK = threading.Lock()
_OPEN: dict[tuple[int, int], DatabaseFile] = {}  # by (device, inode)


class DatabaseFile:
    """One open descriptor of a database file, shared by the catalogs of a process."""

    def __init__(self, path: Path, fd: int, key: tuple[int, int]) -> None:
        self.path = path
        self._fd = fd
        self._key = key
        self._users = 0

    @classmethod
    def hold(cls, path: Path) -> DatabaseFile:
        """Create the file 0600 if missing (SQLite gives -wal and -shm the database
        file's mode), tighten files left looser by older versions, and hold it open."""
        _tighten(path)
        with _LOCK:
            held = cls._held(path)
            if held is None:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
                st = os.fstat(fd)
                held = _OPEN[(st.st_dev, st.st_ino)] = cls(path, fd, (st.st_dev, st.st_ino))
            held._users += 1
            return held

    @classmethod
    def _held(cls, path: Path) -> DatabaseFile | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        held = _OPEN.get((st.st_dev, st.st_ino))
        if held is not None and os.fstat(held._fd).st_nlink == 0:
            return None  # that file was removed, and this one got its inode number
        return held

    def release(self) -> None:
        """After the catalog's connection is closed: the last user closes the file."""
        with _LOCK:
            self._users -= 1
            if self._users == 0:
                if _OPEN.get(self._key) is self:
                    del _OPEN[self._key]
                os.close(self._fd)

    def contains(self, needles: list[bytes]) -> bool:
        """Whether any of `needles` is in the database file or its WAL."""
        if _search(self._fd, needles):
            return True
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            return _search(fd, needles)
        finally:
            os.close(fd)


def _search(fd: int, needles: list[bytes]) -> bool:
    if not needles:
        return False
    overlap = max(len(n) for n in needles) - 1
    offset, tail = 0, b""
    while chunk := os.pread(fd, _CHUNK, offset):
        window = tail + chunk
        if any(n in window for n in needles):
            return True
        offset += len(chunk)
        tail = window[-overlap:] if overlap else b""
    return False


def _tighten(path: Path) -> None:
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with suppress(FileNotFoundError):
            if stat.S_IMODE((path.parent / name).stat().st_mode) & 0o077:
                os.chmod(path.parent / name, 0o600)
