"""The object-store protocol: a multipart-upload shaped interface, nothing more.

Layout under the store's prefix, per upload id U (see docs/DESIGN.md):
    U/data                    the sealed object (HEADER || REC_0 || ... )
    U/tail/<segment>/<piece>  sealed tail pieces of the unfinished segment
    U/manifest.json, U/manifest.jws

The calls are blocking: the service runs them in a bounded thread pool, next to the
sealing that produces their bytes, so the event loop never waits on storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeGuard

from gateway.types import Buffer


class StoreUnavailable(Exception):
    """The store could not be reached or refused a write; nothing was recorded."""


class StoreFull(StoreUnavailable):
    """The store's disk (or quota) is full (ENOSPC, EDQUOT); nothing was recorded."""


class StaleWrite(StoreUnavailable):
    """A part write carried an older fence than one the store has already seen."""


class ObjectNotFound(Exception):
    """The key does not exist."""


@dataclass(frozen=True)
class PartRef:
    """A stored part as the catalog recorded it, for completion."""

    number: int
    offset: int
    size: int
    etag: str


class ObjectStore(Protocol):
    def start_multipart(self, key: str) -> str:
        """Begin building `key` from parts; returns the multipart id."""

    def put_part(
        self,
        key: str,
        multipart_id: str,
        number: int,
        offset: int,
        chunks: Sequence[Buffer],
        sha256: bytes,
    ) -> str:
        """Durably store part `number` (1-based), the concatenation of `chunks`.

        `offset` is where the part starts in the completed object (stores that write
        in place use it); `sha256` is the digest of the part, which the store may
        check. Returns the part's ETag, recorded in the catalog for completion.
        Writing the same part again replaces it.
        """

    def complete_multipart(self, key: str, multipart_id: str, parts: Sequence[PartRef]) -> None:
        """Assemble the object from its parts, in order.

        Fails if a stored part does not match what was recorded (a stale writer).
        """

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        """Drop an unfinished multipart upload and its parts."""

    def put(self, key: str, data: Buffer, *, fresh: bool = False) -> None:
        """Durably store a small object in one call (tail pieces, manifests).

        `fresh`: nothing else ever writes `key`, and no one reads it before the catalog
        names it (a tail piece), so a half-written object needs no hiding.
        """

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Read an object, or a byte range of it. Raises ObjectNotFound."""

    def size(self, key: str) -> int:
        """Size of a completed object. Raises ObjectNotFound."""

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix` (an upload's whole folder)."""

    def check(self) -> None:
        """Raise StoreUnavailable unless the store is usable now (for /readyz)."""


class InPlaceStore(ObjectStore, Protocol):
    """A store that writes a multipart object in place, so a part can arrive in spans.

    The writer then streams each record's ciphertext out as it is sealed instead of
    holding the whole record, and `finish_part` adds the last bytes and makes the part
    durable. Every write here is fenced: `fence` is the writer's lease token, which
    only grows, and a write older than one the store has seen is refused (StaleWrite),
    so a writer that lost its lease cannot overwrite a newer writer's part.
    """

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
        """Durably store part `number`, like put_part, fenced.

        Its first `written` bytes were written before with `write_span` (none when
        `written` is 0: `chunks` is then the whole part) and `chunks` is the rest.
        """

    def write_span(
        self,
        key: str,
        multipart_id: str,
        offset: int,
        chunks: Sequence[Buffer],
        *,
        fence: int = 0,
    ) -> None:
        """Write bytes of an unfinished part at `offset`, fenced, not yet durable."""

    def read_span_into(self, key: str, multipart_id: str, offset: int, buffer: Buffer) -> int:
        """Read back bytes written to the unfinished multipart object into `buffer`;
        how many (fewer than it holds at the object's end)."""

    def discard_from(self, key: str, multipart_id: str, offset: int, *, fence: int = 0) -> None:
        """Drop the unfinished object's bytes from `offset` on, fenced like a write.

        For parts written but never recorded (a body refused with 460): they are valid
        sealings under the upload's key, so they are not left lying about.
        """


def writes_in_place(store: ObjectStore) -> TypeGuard[InPlaceStore]:
    return callable(getattr(store, "write_span", None)) and callable(
        getattr(store, "finish_part", None)
    )


class ReadsInto(Protocol):
    """A store that can read an object into the caller's buffer (the folder store)."""

    def get_into(self, key: str, buffer: Buffer) -> int:
        """Read `key` from its start into `buffer`, up to its size; how many bytes that
        was. Raises ObjectNotFound."""

    def get_range_into(self, key: str, start: int, buffer: Buffer) -> int:
        """Read `key` from byte `start` into `buffer`, up to the object's end; how many
        bytes that was (0 from its end on). Raises ObjectNotFound."""


def reads_into(store: ObjectStore) -> TypeGuard[ReadsInto]:
    return callable(getattr(store, "get_into", None)) and callable(
        getattr(store, "get_range_into", None)
    )
