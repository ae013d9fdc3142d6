"""Study bodies: a deterministic byte stream per (seed, study), readable at any offset.

The bytes are an AES-256-CTR keystream under a key derived from the run's seed and the
study's name, so a client need not keep what it sent: any range is generated again on
demand (a resent chunk, a Range download to compare) and the whole study's SHA-256 is
computed while it is sent (`RunningHash`).
"""

from __future__ import annotations

import hashlib
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 256 << 10  # bytes generated, hashed and sent at a time


class Body:
    def __init__(self, seed: int, name: str, length: int) -> None:
        self.name = name
        self.length = length
        self._key = hashlib.sha256(f"{seed}/{name}".encode()).digest()

    def read(self, offset: int, size: int) -> bytes:
        """`size` bytes from `offset` (clipped to the body's length)."""
        size = max(0, min(size, self.length - offset))
        skip = offset % 16
        counter = (offset // 16).to_bytes(16, "big")
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
        return encryptor.update(bytes(skip + size))[skip:]

    def sha256(self, start: int = 0, end: int | None = None) -> bytes:
        """The SHA-256 of bytes [start, end), generated again."""
        end = self.length if end is None else end
        digest = hashlib.sha256()
        for offset in range(start, end, BLOCK):
            digest.update(self.read(offset, min(BLOCK, end - offset)))
            time.sleep(0)  # let other users run (gevent) while a long body is hashed
        return digest.digest()


class RunningHash:
    """The SHA-256 of the body's prefix, fed with the blocks as they are sent. Bytes sent
    again after a resume from an earlier offset are the same bytes, and are skipped."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self.upto = 0
        self._digest = hashlib.sha256()

    def feed(self, offset: int, data: bytes) -> None:
        if offset > self.upto:
            raise ValueError(f"gap in the sent bytes: {self.upto} then {offset}")
        new = data[self.upto - offset :]
        self._digest.update(new)
        self.upto += len(new)

    def catch_up(self, upto: int) -> None:
        """Hash [self.upto, upto) again from the body: a cold start after an app kill,
        as an app reads its file again."""
        while self.upto < upto:
            self.feed(self.upto, self.body.read(self.upto, min(BLOCK, upto - self.upto)))
            time.sleep(0)

    def hexdigest(self) -> str:
        if self.upto != self.body.length:
            raise ValueError(f"hashed {self.upto} of {self.body.length} bytes")
        return self._digest.hexdigest()
