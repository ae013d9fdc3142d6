"""In-memory stand-ins for unit tests of the service (black-box tests use the real ones)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

from gateway.store.base import ObjectNotFound, PartRef, StoreUnavailable
from gateway.types import Buffer


class MemoryStore:
    """An ObjectStore in a dict; `fail_after` makes the Nth later write fail."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.multipart: dict[str, dict[int, bytes]] = {}
        self.spans: dict[str, bytearray] = {}  # InPlaceMemoryStore's unfinished objects
        self.writes = 0
        self.fail_after: int | None = None
        self.down = False
        self._lock = threading.Lock()

    def _write(self) -> None:
        with self._lock:
            self.writes += 1
            if self.down or (self.fail_after is not None and self.writes > self.fail_after):
                raise StoreUnavailable("injected failure")

    def start_multipart(self, key: str) -> str:
        mid = f"mp{len(self.multipart)}"
        self.multipart[mid] = {}
        return mid

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
        return self._keep_part(multipart_id, number, b"".join(bytes(c) for c in chunks), sha256)

    def _keep_part(self, multipart_id: str, number: int, data: bytes, sha256: bytes) -> str:
        assert hashlib.sha256(data).digest() == sha256
        self.multipart[multipart_id][number] = data
        return sha256.hex()

    def complete_multipart(self, key: str, multipart_id: str, parts: Sequence[PartRef]) -> None:
        stored = self.multipart[multipart_id]
        for part in parts:
            if hashlib.sha256(stored[part.number]).hexdigest() != part.etag:
                raise StoreUnavailable("part differs")
        self.objects[key] = b"".join(stored[p.number] for p in parts)

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        self.multipart.pop(multipart_id, None)

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
        for key in [k for k in self.objects if k.startswith(prefix)]:
            del self.objects[key]

    def check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")


class InPlaceMemoryStore(MemoryStore):
    """A MemoryStore that also takes parts in spans, like the folder store."""

    def __init__(self) -> None:
        super().__init__()
        self.span_writes = 0
        self.spans_fail_after: int | None = None

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
        self.span_writes += 1
        if self.down or (
            self.spans_fail_after is not None and self.span_writes > self.spans_fail_after
        ):
            raise StoreUnavailable("injected failure")
        data = b"".join(bytes(c) for c in chunks)
        span = self.spans.setdefault(multipart_id, bytearray())
        if len(span) < offset + len(data):
            span.extend(bytes(offset + len(data) - len(span)))
        span[offset : offset + len(data)] = data

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
        data = b"".join(bytes(c) for c in chunks)
        if written:
            data = bytes(self.spans[multipart_id][offset : offset + written]) + data
        return self._keep_part(multipart_id, number, data, sha256)

    def read_span(self, key: str, multipart_id: str, offset: int, length: int) -> bytes:
        return bytes(self.spans.get(multipart_id, b"")[offset : offset + length])

    def discard_from(self, key: str, multipart_id: str, offset: int, *, fence: int = 0) -> None:
        del self.spans.setdefault(multipart_id, bytearray())[offset:]
