"""One PATCH body -> sealed records and tail pieces, sealed while the bytes arrive.

Each record is sealed as its plaintext comes in: the event loop gathers the received
bytes into slices under a memory budget shared by all uploads (`receive`), read from
the socket straight into them where the server offers it (`Body.direct`), and the
record's task in the sealing pipeline (`pipeline`) hashes and encrypts each batch in
two threads side by side, one record after the other, keeping the record's seal
state (`record`) and its AES-GCM stream (`gateway.sealed.RecordStream`). When a
record's last byte arrives only its last slice and the tag remain, then the part is
made durable while the next record is already being sealed; at most `depth` records
wait for that.

Records are recorded in the catalog in order, after their part is durable (`settle`):
at once (progressive) or, when the PATCH carries Upload-Checksum, only after the
digest of the whole body verifies. A body that ends mid-segment leaves its new bytes
as one sealed tail piece (`tail`), a new object; nothing is ever rewritten in place.
The plaintext of such an unfinished record is not kept: it is decrypted again from
the ciphertext this request wrote, after checking that ciphertext against the digest
taken as it was written. A short body whose Content-Length ends it inside its segment
skips the record altogether: its bytes are kept whole and sealed as the tail piece
when it ends. The last body assembles the object (`complete`). `SegmentWriter`
(`segment`) is the facade the uploads service drives.
"""

from gateway.writer.base import (
    WITHDRAWN,
    Body,
    BodyInterrupted,
    DirectRead,
    OnComplete,
    Outcome,
    Overflow,
    RunningHash,
    part_offset,
)
from gateway.writer.segment import SegmentWriter

__all__ = [
    "WITHDRAWN",
    "Body",
    "BodyInterrupted",
    "DirectRead",
    "OnComplete",
    "Outcome",
    "Overflow",
    "RunningHash",
    "SegmentWriter",
    "part_offset",
]
