"""Tail pieces: the unfinished segment's bytes, stored as sealed objects of their own.

A body that ends mid-segment leaves its new bytes as one sealed tail piece, a new
object; nothing is ever rewritten in place. The next request reads the segment's
pieces back to go in front of its bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway import metrics
from gateway.buffers import SizedBuffers
from gateway.catalog.base import TailPiece
from gateway.layout import tail_key
from gateway.sealed import NONCE_LEN, RECORD_OVERHEAD, InvalidSealedData, Sealer
from gateway.store.base import ObjectStore, reads_into
from gateway.types import Buffer
from gateway.writer.base import corrupt

# A body announced this short that ends inside its segment is kept whole and sealed as
# one tail piece at its end, instead of re-sealing the segment's earlier bytes with it.
TAIL_DIRECT = 2 << 20
# A piece is sealed where its plaintext lies: in a buffer of room_size(length) bytes,
# the plaintext at PLAIN_AT, the nonce in front of it and the tag after it.
PLAIN_AT = NONCE_LEN


def room_size(length: int) -> int:
    """The bytes of a buffer a tail piece of `length` plaintext bytes is sealed in."""
    return length + RECORD_OVERHEAD


_PIECE_NUMBERS = 1 << 32  # a tail piece's number is a u32 in its associated data


def piece_number(token: int, recorded: Sequence[TailPiece]) -> int:
    """The number of the tail piece a request may write: its lease's token.

    Tokens are unique, so two requests never write the same piece object: a writer
    that lost its lease while paused (a process stopped longer than the takeover
    time, say) and stores its piece late puts it beside the new holder's, never
    over a recorded one. It is never recorded (its commit fails) and goes with
    the upload's other leftovers. Pieces are ordered by where they start.
    """
    number = token % _PIECE_NUMBERS
    taken = {p.piece for p in recorded}
    while number in taken:  # only after 2**32 leases, or pieces numbered 0, 1, 2...
        number = (number + 1) % _PIECE_NUMBERS
    return number


class TailPieces:
    """The tail pieces of one upload's unfinished segment, as one request sees them."""

    def __init__(
        self,
        *,
        upload_id: str,
        sealer: Sealer,
        store: ObjectStore,
        token: Callable[[], int],
        merge_after: int,
        sized: SizedBuffers | None = None,
    ) -> None:
        self._upload_id = upload_id
        # Where the sealed piece is written; freed read-backs are reported to it.
        self._sized = sized if sized is not None else SizedBuffers()
        self._sealer = sealer
        self._store = store
        self._token = token
        self._merge_after = merge_after  # tail pieces a segment may have; beyond, merge
        self.old: list[TailPiece] = []  # the segment's recorded pieces, by start
        self.number = piece_number(token(), [])  # the number of the piece this request writes

    def adopt(self, pieces: Sequence[TailPiece], segment: int) -> None:
        """Take the recorded pieces of `segment` (the catalog's, read with the lease)."""
        self.old = sorted((p for p in pieces if p.segment == segment), key=lambda p: p.start)
        self.number = piece_number(self._token(), self.old)

    def next_segment(self) -> None:
        """The segment was sealed: the next one has no pieces yet."""
        self.number = piece_number(self._token(), [])

    def load(self, pieces: Sequence[TailPiece], covers: int) -> bytearray:
        """The plaintext of `pieces`, checked to be the segment's first `covers` bytes."""
        plain = bytearray(covers)  # one allocation: no copies as it grows
        self.load_into(pieces, covers, plain)
        return plain

    def load_into(self, pieces: Sequence[TailPiece], covers: int, out: Buffer) -> None:
        """`load` into the first `covers` bytes of `out`, each piece opened in place."""
        at = 0
        for piece in pieces:
            end = at + piece.length
            if piece.start != at or end > covers:
                raise corrupt(f"tail piece {piece.segment}/{piece.piece} is out of place")
            blob, scratch = self._read(piece)
            try:
                if memoryview(blob).nbytes != piece.length + RECORD_OVERHEAD:
                    raise corrupt(f"tail piece {piece.segment}/{piece.piece} is out of place")
                with memoryview(out)[at:end] as into:
                    self._sealer.open_tail_into(piece.segment, piece.piece, at, blob, into)
            except InvalidSealedData as exc:
                raise corrupt(f"tail piece {piece.segment}/{piece.piece}") from exc
            finally:
                if scratch is not None:
                    self._sized.give(scratch)
            at = end
        if at != covers:
            raise corrupt("tail pieces do not cover the recorded offset")

    def _read(self, piece: TailPiece) -> tuple[Buffer, bytearray | None]:
        """A piece's sealed bytes, and the pooled buffer they are in if the store can
        read into one (the folder store: one byte more than the piece, so a longer
        object shows as such)."""
        key, store = tail_key(self._upload_id, piece.segment, piece.piece), self._store
        if not reads_into(store):
            blob = store.get(key)
            self._sized.released(len(blob))
            return blob, None
        scratch = self._sized.take(piece.length + RECORD_OVERHEAD + 1)
        try:
            return memoryview(scratch)[: store.get_into(key, scratch)], scratch
        except BaseException:
            self._sized.give(scratch)
            raise

    def plan(self, segment: int, new_from: int, fill: int) -> tuple[TailPiece, list[TailPiece]]:
        """The piece for a body that ended at `fill` in `segment`, its bytes from `new_from`
        on, and the earlier pieces it replaces (merged, when one more would be too many)."""
        start, merged = new_from, []
        if new_from and len(self.old) >= self._merge_after:
            # One piece more would pass the count: this one covers the segment's
            # earlier pieces too, and replaces them in the same catalog commit.
            start, merged = 0, self.old
            metrics.TAIL_MERGES.inc()
        return TailPiece(segment, self.number, start, fill - start), merged

    def put(self, piece: TailPiece, plain: Buffer) -> None:
        """Seal `plain` as `piece` and store it (blocking)."""
        room = self._sized.take(room_size(piece.length))
        try:
            room[PLAIN_AT : PLAIN_AT + piece.length] = memoryview(plain).cast("B")
            self.put_room(piece, room)
        finally:
            self._sized.give(room)

    def put_room(self, piece: TailPiece, room: bytearray) -> None:
        """Seal `piece`, whose plaintext the caller put in `room` at PLAIN_AT, where it
        lies (the plaintext is gone then), and store it (blocking). `room` stays the
        caller's."""
        size = room_size(piece.length)
        with memoryview(room)[:size] as sealed:
            self._sealer.seal_tail_in_place(piece.segment, piece.piece, piece.start, sealed)
            metrics.BYTES_SEALED.inc(piece.length)
            # Fresh: a piece's number is its request's own (see piece_number).
            key = tail_key(self._upload_id, piece.segment, piece.piece)
            self._store.put(key, sealed, fresh=True)
        metrics.BYTES_STORED.inc(size)

    def put_merged(self, piece: TailPiece, front: int, body: Buffer) -> None:
        """Seal the old pieces' `front` bytes and then `body` as `piece`, which replaces
        them (blocking): read back and sealed in one buffer."""
        view = memoryview(body).cast("B")
        size = front + view.nbytes
        room = self._sized.take(room_size(size))
        try:
            with memoryview(room)[PLAIN_AT : PLAIN_AT + size] as plain:
                self.load_into(self.old, front, plain)
                plain[front:size] = view
            self.put_room(piece, room)
        finally:
            self._sized.give(room)

    def forget(self, drop_below: int | None, replaced: bool) -> list[TailPiece]:
        """After a commit: the old pieces it made unneeded (to delete), if it did."""
        if replaced or (drop_below is not None and self.old and self.old[0].segment < drop_below):
            old, self.old = self.old, []
            return old
        return []

    def delete(self, pieces: Sequence[TailPiece]) -> None:
        for p in pieces:
            self._store.delete(tail_key(self._upload_id, p.segment, p.piece))
