"""The local-folder object store: DESIGN.md's layout on disk, fsync before we answer."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from io import BufferedReader
from pathlib import Path

from gateway.store.base import ObjectNotFound, PartRef, StoreUnavailable
from gateway.types import Buffer

_READ_CHUNK = 4 << 20


class FolderStore:
    """Objects are files under `root`; a multipart upload is one file written in place.

    Parts land at their final offsets in `U/.multipart/<id>` (pwritev + fdatasync), and
    completion checks every part's SHA-256 against what the catalog recorded before
    renaming the file to its key, so bytes left by a stale writer fail completion.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _multipart_path(self, key: str, multipart_id: str) -> Path:
        if not multipart_id.isalnum():
            raise ValueError("invalid multipart id")
        path = self._path(key)
        return path.parent / ".multipart" / f"{path.name}.{multipart_id}"

    def start_multipart(self, key: str) -> str:
        multipart_id = secrets.token_hex(8)
        path = self._multipart_path(key, multipart_id)
        with _storage_errors():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            _fsync_dir(path.parent)
        return multipart_id

    def put_part(
        self,
        key: str,
        multipart_id: str,
        number: int,
        offset: int,
        chunks: Sequence[Buffer],
        sha256: bytes,
    ) -> str:
        path = self._multipart_path(key, multipart_id)
        with _storage_errors():
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError as exc:
                raise StoreUnavailable(f"multipart upload {multipart_id} is gone") from exc
            try:
                _pwrite_all(fd, chunks, offset)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        return sha256.hex()

    def complete_multipart(self, key: str, multipart_id: str, parts: Sequence[PartRef]) -> None:
        path = self._multipart_path(key, multipart_id)
        final = self._path(key)
        if not path.exists() and final.exists():
            path = final  # completed before, but not yet recorded: check it again
        with _storage_errors():
            with open(path, "rb") as f:
                expected_end = 0
                for part in parts:
                    if part.offset != expected_end:
                        raise StoreUnavailable(f"part {part.number} does not follow its neighbour")
                    if _sha256_range(f, part.offset, part.size).hex() != part.etag:
                        raise StoreUnavailable(f"part {part.number} differs from the recorded one")
                    expected_end = part.offset + part.size
                f.seek(0, os.SEEK_END)
                if f.tell() != expected_end:
                    # A stale writer extended the file; keep only what was recorded.
                    os.truncate(path, expected_end)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(path, final)
            _fsync_dir(final.parent)

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        path = self._multipart_path(key, multipart_id)
        with _storage_errors():
            path.unlink(missing_ok=True)

    def put(self, key: str, data: Buffer) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        with _storage_errors():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _pwrite_all(fd, [data], 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(path.parent)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {key}: {exc.strerror}") from exc

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def delete(self, key: str) -> None:
        with _storage_errors():
            self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        with _storage_errors():
            if path.exists():
                shutil.rmtree(path)

    def check(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.W_OK)):
            raise StoreUnavailable("object folder is not writable")


def _pwrite_all(fd: int, chunks: Sequence[Buffer], offset: int) -> None:
    views = [memoryview(c).cast("B") for c in chunks]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _sha256_range(f: BufferedReader, start: int, size: int) -> bytes:
    digest = hashlib.sha256()
    buf = bytearray(min(_READ_CHUNK, max(size, 1)))
    view = memoryview(buf)
    f.seek(start)
    remaining = size
    while remaining:
        n = f.readinto(view[: min(len(buf), remaining)])
        if not n:
            raise StoreUnavailable("object is shorter than its recorded parts")
        digest.update(view[:n])
        remaining -= n
    return digest.digest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """Turn OS errors (disk full, I/O error, permissions) into StoreUnavailable."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, "EIO")
        raise StoreUnavailable(f"storage error {reason}: {exc.strerror}") from exc
