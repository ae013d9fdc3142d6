"""One record's seal state, and the messages that drive its sealing task."""

from __future__ import annotations

import asyncio
import enum
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash

from gateway.catalog.base import RecordRow
from gateway.sealed import RecordStream
from gateway.suites import Suite
from gateway.writer.base import Batch


class Signal(enum.Enum):
    """What the event loop tells a record's task besides handing it plaintext."""

    CLOSE = "close"  # the record has all its bytes: seal its tag and store it
    CUT = "cut"  # the body ended first: stop after the bytes queued


@dataclass(eq=False)
class Record:
    """One record being sealed as its plaintext arrives.

    The event loop fills `queue`; the record's task (`SealingPipeline.seal`) empties
    it, and only that task, running one worker call at a time, touches the sealing
    state below the line.
    """

    index: int
    final: bool
    length: int  # plaintext bytes the record holds when finished
    queue: asyncio.Queue[Batch | Signal] = field(default_factory=asyncio.Queue)
    queued: int = 0  # plaintext bytes in `queue`
    room: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[RecordRow | None] | None = None
    error: BaseException | None = None
    finished: bool = False  # the task takes no more batches
    discard: bool = False  # cut by a failure: skip what is still queued
    lent: bool = False  # cancelled while a worker thread used its buffers: never pool them
    # -- sealing state --
    stream: RecordStream | None = None
    record_hash: _Hash | None = None  # the suite's hash of the record's bytes so far
    part_hash: _Hash | None = None  # SHA-256 of the part (HEADER in front for part 1)
    plain_hash: _Hash | None = None  # the running plaintext hash carried on through this record
    buffer: bytearray | None = None  # the whole record, for stores that take parts whole
    busy: float = 0.0  # worker seconds spent sealing
    hashing: float = 0.0  # worker seconds spent on the plaintext hashes, beside that

    @property
    def done(self) -> int:
        """Plaintext bytes sealed so far."""
        return 0 if self.stream is None else self.stream.done

    def begin(self, stream: RecordStream, header: bytes | None, suite: Suite) -> None:
        """Start sealing under `stream`; `header` goes in front of part 1's digest.

        The record's digest is the suite's hash (FORMAT.md, the recorded sealing); the
        part's is SHA-256 whatever the suite, as S3 checks parts with it. Under suite 1
        they coincide for every part but the first, which is hashed once.
        """
        self.stream = stream
        self.record_hash = suite.hash(stream.nonce)
        if header is not None or suite.hash_name != "sha256":
            self.part_hash = hashlib.sha256(header or b"")
            self.part_hash.update(stream.nonce)

    def encrypt(self, plain: memoryview, out: memoryview) -> None:
        """Seal the next plaintext into `out` (TAG_LEN to spare) and hash the ciphertext."""
        assert self.stream is not None and self.record_hash is not None
        cipher = self.stream.update(plain, out)
        self.record_hash.update(cipher)
        if self.part_hash is not None:
            self.part_hash.update(cipher)

    def end(self) -> bytes:
        """The tag, once every byte is sealed; the digests then cover the whole part."""
        assert self.stream is not None and self.record_hash is not None
        if self.stream.done != self.length:
            raise RuntimeError(f"record {self.index}: {self.stream.done} of {self.length} bytes")
        tag = self.stream.finish()
        self.record_hash.update(tag)
        if self.part_hash is not None:
            self.part_hash.update(tag)
        return tag

    def digests(self) -> tuple[bytes, bytes]:
        """(record digest, part SHA-256): the part's has HEADER in front for part 1."""
        assert self.record_hash is not None
        digest = self.record_hash.digest()
        return digest, self.part_hash.digest() if self.part_hash is not None else digest
