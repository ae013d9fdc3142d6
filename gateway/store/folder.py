"""The local-folder object store: DESIGN.md's layout on disk, fsync before we answer."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway import files
from gateway.layout import key_segments
from gateway.store import writeback
from gateway.store.base import ObjectNotFound, PartRef, StaleWrite, StoreFull, StoreUnavailable
from gateway.types import Buffer

# Below this much free space in the object folder, /readyz says the store is full.
MIN_FREE_BYTES = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)


class FolderStore:
    """Objects are files under `root`; a multipart upload is one file written in place.

    Parts land at their final offsets in `U/.multipart/<id>` (pwritev + fdatasync),
    whole or in spans as they are sealed (`write_span`, then `finish_part` with the
    rest). Every write of the writer's is fenced by its lease token (a `.fence` file
    next to it, checked under flock): a writer that lost its lease is refused
    (StaleWrite) once a newer one has written, so a recorded part is never overwritten and
    completion only checks the layout before renaming the file to its key.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # Owner-only, like every file and folder below it (0600 / 0700).
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(root.stat().st_mode) & 0o077:
            os.chmod(root, 0o700)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key_segments(key))

    def _multipart_path(self, key: str, multipart_id: str) -> Path:
        if not multipart_id.isalnum():
            raise ValueError("invalid multipart id")
        path = self._path(key)
        return path.parent / ".multipart" / f"{path.name}.{multipart_id}"

    def start_multipart(self, key: str) -> str:
        multipart_id = secrets.token_hex(8)
        path = self._multipart_path(key, multipart_id)
        with _storage_errors():
            _make_dirs(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            files.fsync_dir(path.parent)
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
        """A whole part, unfenced (the writer uses `finish_part`, which is fenced)."""
        self._write(key, multipart_id, offset, chunks, None, durable=True)
        return sha256.hex()

    def finish_part(
        self,
        key: str,
        multipart_id: str,
        number: int,
        offset: int,
        chunks: Sequence[Buffer],
        sha256: bytes,
        *,
        fence: int,
        written: int,
    ) -> str:
        self._write(key, multipart_id, offset + written, chunks, fence, durable=True)
        return sha256.hex()

    def write_span(
        self,
        key: str,
        multipart_id: str,
        offset: int,
        chunks: Sequence[Buffer],
        *,
        fence: int = 0,
    ) -> None:
        self._write(key, multipart_id, offset, chunks, fence, durable=False)

    def _write(
        self,
        key: str,
        multipart_id: str,
        offset: int,
        chunks: Sequence[Buffer],
        fence: int | None,
        *,
        durable: bool,
    ) -> None:
        path = self._multipart_path(key, multipart_id)
        with _storage_errors():
            fd = _open_multipart(path, multipart_id)
            try:
                if fence is None:
                    written = _pwrite_all(fd, chunks, offset)
                else:
                    with _fenced(path, fence):
                        written = _pwrite_all(fd, chunks, offset)
                # Outside the fence: a newer writer may overwrite this part now, and
                # then its bytes are what gets flushed, which is what it will record.
                if durable:
                    # This also flushes the spans written before, by any descriptor.
                    os.fdatasync(fd)
                else:
                    # So that the fdatasync at the record's end finds little left to do.
                    writeback.start(fd, offset, written)
            finally:
                os.close(fd)

    def read_span_into(self, key: str, multipart_id: str, offset: int, buffer: Buffer) -> int:
        path = self._multipart_path(key, multipart_id)
        view = memoryview(buffer).cast("B")
        with _storage_errors():
            fd = _open_multipart(path, multipart_id, os.O_RDONLY)
            try:
                return _read_into(fd, view, offset)
            finally:
                os.close(fd)

    def discard_from(self, key: str, multipart_id: str, offset: int, *, fence: int = 0) -> None:
        path = self._multipart_path(key, multipart_id)
        with _storage_errors():
            fd = _open_multipart(path, multipart_id)
            try:
                with _fenced(path, fence):
                    if os.fstat(fd).st_size <= offset:
                        return
                    os.ftruncate(fd, offset)
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def complete_multipart(self, key: str, multipart_id: str, parts: Sequence[PartRef]) -> None:
        path = self._multipart_path(key, multipart_id)
        final = self._path(key)
        if not path.exists() and final.exists():
            path = final  # completed before, but not yet recorded: check it again
        # Fenced writes keep a stale writer from overwriting a recorded part, so the
        # parts are not read back here: only their layout is checked.
        expected_end = 0
        for part in parts:
            if part.offset != expected_end:
                raise StoreUnavailable(f"part {part.number} does not follow its neighbour")
            expected_end = part.offset + part.size
        with _storage_errors():
            size = path.stat().st_size
            if size < expected_end:
                raise StoreUnavailable("the object is shorter than its recorded parts")
            if size > expected_end:
                # Parts written beyond the end by a writer that never recorded them.
                os.truncate(path, expected_end)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(path, final)
            files.fsync_dir(final.parent)
            _fence_path(path).unlink(missing_ok=True)

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        path = self._multipart_path(key, multipart_id)
        with _storage_errors():
            path.unlink(missing_ok=True)
            _fence_path(path).unlink(missing_ok=True)

    def put(self, key: str, data: Buffer, *, fresh: bool = False) -> None:
        """Write a temporary file and rename it into place, so readers see the whole
        object or none. A `fresh` object is written in place instead: its file and
        directory entry then become durable in one journal commit, not two (on ext4:
        0.7 against 0.9-1.1 ms for a 512 KiB tail piece)."""
        path = self._path(key)
        with _storage_errors():
            _make_dirs(path.parent)
            if not fresh:
                files.write_atomically(path, data)
                return
            # A fresh key left half written by a crashed writer is never recorded;
            # whoever writes it next starts it over.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _pwrite_all(fd, [data], 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            files.fsync_dir(path.parent)

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

    def get_into(self, key: str, buffer: Buffer) -> int:
        return self.get_range_into(key, 0, buffer)

    def get_range_into(self, key: str, start: int, buffer: Buffer) -> int:
        if start < 0:
            raise ValueError(f"negative start {start}")
        view = memoryview(buffer).cast("B")
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                return _read_into(f.fileno(), view, start)
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
        space = os.statvfs(self.root)
        if space.f_bavail * space.f_frsize < MIN_FREE_BYTES:
            raise StoreFull("the object folder's disk is full")


def _open_multipart(path: Path, multipart_id: str, flags: int = os.O_WRONLY) -> int:
    try:
        return os.open(path, flags)
    except FileNotFoundError as exc:
        raise StoreUnavailable(f"multipart upload {multipart_id} is gone") from exc


def _read_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill `view` from `offset` on, up to the file's end; returns how many bytes that was.
    Straight into the caller's buffer: no bytes object made, no copy under the GIL."""
    got = 0
    while got < view.nbytes and (n := os.preadv(fd, [view[got:]], offset + got)):
        got += n
    return got


def _pwrite_all(fd: int, chunks: Sequence[Buffer], offset: int) -> int:
    """Write all of `chunks` at `offset`; returns how many bytes that was."""
    views = [memoryview(c).cast("B") for c in chunks]
    total = sum(len(v) for v in views)
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
    return total


def _fence_path(path: Path) -> Path:
    return path.with_name(path.name + ".fence")


@contextlib.contextmanager
def _fenced(path: Path, fence: int) -> Iterator[None]:
    """Hold the multipart file's fence: refuse writers older than the newest seen.

    The fence file keeps the highest lease token that wrote a part; it is checked and
    raised under an exclusive flock, which is held for the write itself, so an older
    writer's pwrite can never land after a newer writer's.
    """
    fd = os.open(_fence_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 8, 0)
        seen = int.from_bytes(raw, "big") if len(raw) == 8 else 0
        if fence < seen:
            raise StaleWrite(f"a newer writer (fence {seen}) owns this object; {fence} is stale")
        if fence > seen:
            os.pwrite(fd, fence.to_bytes(8, "big"), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _make_dirs(path: Path) -> None:
    """`mkdir -p`, making each directory it had to create durable in its parent.

    fsync of a file and of its directory does not make a directory created for it
    durable in turn: after a power cut the whole new branch could be gone.
    """
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another writer was quicker
            directory.mkdir(mode=0o700)
        files.fsync_dir(directory.parent)


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """Turn OS errors (I/O error, permissions) into StoreUnavailable, a full disk or
    quota into StoreFull."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in _FULL:
            raise StoreFull(f"no space left: {exc.strerror}") from exc
        reason = errno.errorcode.get(exc.errno or 0, "EIO")
        raise StoreUnavailable(f"storage error {reason}: {exc.strerror}") from exc
