"""In-memory stand-ins for unit tests of the service (black-box tests use the real ones).

They keep every promise of gateway/store/base.py that tests/test_store_contract.py
checks on the real stores, so a unit test cannot pass on a rule the fake forgot.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from gateway.catalog.base import Upload, UploadState
from gateway.store.base import InPlaceStore, ObjectNotFound, PartRef, StaleWrite, StoreUnavailable
from gateway.types import Buffer


@dataclass
class Multipart:
    """A multipart upload of the fake: its key, its parts, the newest fence seen."""

    key: str
    parts: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # number: offset, data
    fence: int = 0
    completed: bool = False


class MemoryStore:
    """An ObjectStore in a dict; `fail_after` makes the Nth later write fail."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.multipart: dict[str, Multipart] = {}
        self.spans: dict[str, bytearray] = {}  # InPlaceMemoryStore's unfinished objects
        self.writes = 0
        self.fail_after: int | None = None
        self.down = False
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def _write(self) -> None:
        with self._lock:
            self.writes += 1
            if self.down or (self.fail_after is not None and self.writes > self.fail_after):
                raise StoreUnavailable("injected failure")

    def _open(self, key: str, multipart_id: str) -> Multipart:
        """The unfinished upload `multipart_id` of `key`; gone after completion or abort."""
        upload = self.multipart.get(multipart_id)
        if upload is None or upload.completed or upload.key != key:
            raise StoreUnavailable(f"multipart upload {multipart_id} is gone")
        return upload

    def start_multipart(self, key: str) -> str:
        multipart_id = f"mp{next(self._ids)}"
        with self._lock:
            self.multipart[multipart_id] = Multipart(key)
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
        self._write()
        data = b"".join(bytes(c) for c in chunks)
        with self._lock:
            return _keep_part(self._open(key, multipart_id), number, offset, data, sha256)

    def complete_multipart(self, key: str, multipart_id: str, parts: Sequence[PartRef]) -> None:
        with self._lock:
            upload = self.multipart.get(multipart_id)
            if upload is None or upload.key != key:
                raise StoreUnavailable(f"multipart upload {multipart_id} is gone")
            data = _assemble(upload, parts)
            if upload.completed:  # completed before, but not recorded: check it again
                if self.objects.get(key) != data:
                    raise StoreUnavailable(f"{key} was completed from other parts")
                return
            self.objects[key] = data
            upload.completed = True
            self.spans.pop(multipart_id, None)

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        with self._lock:
            self.multipart.pop(multipart_id, None)
            self.spans.pop(multipart_id, None)

    def put(self, key: str, data: Buffer, *, fresh: bool = False) -> None:
        self._write()
        self.objects[key] = bytes(data)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        try:
            data = self.objects[key]
        except KeyError as exc:
            raise ObjectNotFound(key) from exc
        return data[start:] if length is None else data[start : start + length]

    def size(self, key: str) -> int:
        return len(self.get(key))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        """The folder `prefix` and the multipart uploads in it (`U` spares `UV/...`)."""
        folder = prefix.rstrip("/") + "/"
        with self._lock:
            for key in [k for k in self.objects if k.startswith(folder)]:
                del self.objects[key]
            for mid in [m for m, u in self.multipart.items() if u.key.startswith(folder)]:
                del self.multipart[mid]
                self.spans.pop(mid, None)

    def check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")


def _keep_part(upload: Multipart, number: int, offset: int, data: bytes, sha256: bytes) -> str:
    assert hashlib.sha256(data).digest() == sha256, f"part {number}: sha256 of other bytes"
    upload.parts[number] = (offset, data)
    return sha256.hex()


def _assemble(upload: Multipart, parts: Sequence[PartRef]) -> bytes:
    """The object from `parts`, which must follow each other and be stored as recorded."""
    expected_end = 0
    pieces = []
    for part in parts:
        if part.offset != expected_end:
            raise StoreUnavailable(f"part {part.number} does not follow its neighbour")
        offset, data = upload.parts.get(part.number, (-1, b""))
        if (offset, len(data)) != (part.offset, part.size) or (
            hashlib.sha256(data).hexdigest() != part.etag
        ):
            raise StoreUnavailable(f"part {part.number} differs from the recorded one")
        pieces.append(data)
        expected_end = part.offset + part.size
    return b"".join(pieces)


class InPlaceMemoryStore(MemoryStore):
    """A MemoryStore that also takes parts in spans, fenced, like the folder store."""

    def __init__(self) -> None:
        super().__init__()
        self.span_writes = 0
        self.spans_fail_after: int | None = None

    def _fenced(self, upload: Multipart, fence: int) -> None:
        """Refuse a writer older than the newest one seen (called under the lock)."""
        if fence < upload.fence:
            raise StaleWrite(f"a newer writer (fence {upload.fence}) owns this object")
        upload.fence = fence

    def _span(self, multipart_id: str, offset: int, data: bytes) -> None:
        span = self.spans.setdefault(multipart_id, bytearray())
        if len(span) < offset + len(data):
            span.extend(bytes(offset + len(data) - len(span)))
        span[offset : offset + len(data)] = data

    def write_span(
        self,
        key: str,
        multipart_id: str,
        offset: int,
        chunks: Sequence[Buffer],
        *,
        fence: int = 0,
    ) -> None:
        # `fail_after` counts parts, not the spans before them; `spans_fail_after` these.
        with self._lock:
            self.span_writes += 1
            if self.down or (
                self.spans_fail_after is not None and self.span_writes > self.spans_fail_after
            ):
                raise StoreUnavailable("injected failure")
        data = b"".join(bytes(c) for c in chunks)
        with self._lock:
            self._fenced(self._open(key, multipart_id), fence)
            self._span(multipart_id, offset, data)

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
        self._write()
        rest = b"".join(bytes(c) for c in chunks)
        with self._lock:
            upload = self._open(key, multipart_id)
            self._fenced(upload, fence)
            self._span(multipart_id, offset + written, rest)
            data = bytes(self.spans[multipart_id][offset : offset + written]) + rest
            return _keep_part(upload, number, offset, data, sha256)

    def read_span_into(self, key: str, multipart_id: str, offset: int, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        with self._lock:
            self._open(key, multipart_id)
            data = self.spans.get(multipart_id, b"")[offset : offset + view.nbytes]
            view[: len(data)] = data
            return len(data)

    def discard_from(self, key: str, multipart_id: str, offset: int, *, fence: int = 0) -> None:
        """Drop the bytes from `offset` on, and with them the parts they held."""
        with self._lock:
            upload = self._open(key, multipart_id)
            self._fenced(upload, fence)
            del self.spans.setdefault(multipart_id, bytearray())[offset:]
            for number, (start, data) in list(upload.parts.items()):
                if start + len(data) > offset:
                    del upload.parts[number]


def upload_row(upload_id: str = "u1", **changes: object) -> Upload:
    """A catalog row for catalog tests: sealed-looking metadata, a header, no length."""
    base = Upload(
        id=upload_id,
        owner="alice",
        tenant="t1",
        length=None,
        offset=0,
        metadata=b"\x01sealed metadata\xff",
        state=UploadState.ACTIVE,
        created_at=1000.0,
        expires_at=5000.0,
        segment_size=1 << 20,
        header=b"\x00hdr\xff",
        dek_id=b"dek-" + upload_id.encode(),
        checksum=b"\x01sealed checksum",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def read_span(store: InPlaceStore, key: str, multipart_id: str, offset: int, length: int) -> bytes:
    """Up to `length` bytes of an unfinished multipart object from `offset` on."""
    buffer = bytearray(length)
    return bytes(buffer[: store.read_span_into(key, multipart_id, offset, buffer)])


class OutBuffers:
    """What test pools hand out: each buffer dirtied (whatever its last user left) and
    tracked until given back, once."""

    def __init__(self) -> None:
        self.out: list[bytearray] = []
        self.takes = 0

    def handed(self, buffer: bytearray) -> bytearray:
        buffer[:] = b"\xaa" * len(buffer)
        self.out.append(buffer)
        self.takes += 1
        return buffer

    def back(self, buffer: bytearray) -> None:
        assert any(b is buffer for b in self.out), "given back twice, or never taken"
        self.out = [b for b in self.out if b is not buffer]
