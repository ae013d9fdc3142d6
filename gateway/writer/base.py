"""What the writer's parts share: its errors, its outcome, the running hash, fragments."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.catalog.base import HookEvent, RecordRow, Upload
from gateway.errors import ERR, GatewayError
from gateway.leases import StopReason
from gateway.sealed import RECORD_OVERHEAD


class BodyInterrupted(Exception):
    """The client went away before the body ended."""


class Overflow(Exception):
    """The body carries more bytes than the upload may hold."""


WITHDRAWN = -1  # what a direct read returns when `withdraw` took its buffer back


class DirectRead(Protocol):
    """A body read from the connection straight into the writer's buffers."""

    async def read_into(self, view: memoryview) -> int:
        """Wait for the next bytes and put them at the start of `view`: how many (at
        most its length), 0 once the body has ended, WITHDRAWN after `withdraw`.
        Raises BodyInterrupted if the client went away first."""
        ...

    async def read(self, most: int) -> memoryview:
        """Wait for the next bytes, at most `most`, in a buffer made when they come (so a
        silent client holds none): empty once the body has ended."""
        ...

    def withdraw(self) -> bool:
        """Take the pending `read_into`'s buffer back, no byte in it: it returns
        WITHDRAWN. False if none is pending or its bytes are already in the buffer."""
        ...


class Body:
    """A request's body: its chunks as they come, and the same body as a direct read
    where the server offers one (used instead, never along with the chunks)."""

    def __init__(self, chunks: AsyncIterator[bytes], direct: DirectRead | None = None) -> None:
        self._chunks = chunks
        self.direct = direct

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._chunks)


def part_offset(header_len: int, segment_size: int, index: int) -> int:
    """Where REC_index starts in the object (part index+1; part 1 starts with HEADER)."""
    return 0 if index == 0 else header_len + index * (segment_size + RECORD_OVERHEAD)


@dataclass
class RunningHash:
    """The suite's hash (SHA-256 or SM3) over the plaintext of records 0 .. next_index-1,
    carried between requests."""

    next_index: int
    digest: Any = field(default_factory=hashlib.sha256)


# Called once the object is complete and before the upload is marked complete: the
# records as recorded and the plaintext SHA-256 if the running hash covered it all. It
# may return an event to notify, recorded in the commit that marks the upload complete.
OnComplete = Callable[[Upload, list[RecordRow], bytes | None], Awaitable[HookEvent | None]]


@dataclass
class Outcome:
    offset: int  # what the catalog now records
    complete: bool
    stop_reason: StopReason | None  # why reading stopped early, if it did


# Plaintext on its way to the sealing threads: a view, whether it is new (from this
# body, not read back from tail pieces) and the pooled buffer it lives in: a slice for
# new bytes; for bytes read back, a sized buffer (Pools.sized) holding only their
# length of the receive budget. None: a buffer of no pool, holding its view's length.
Fragment = tuple[memoryview, bool, bytearray | None]
Batch = list[Fragment]


def corrupt(what: str) -> GatewayError:
    return GatewayError(ERR.STORED_DATA_CORRUPT, f"stored data failed verification: {what}")
