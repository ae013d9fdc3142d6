"""Tail pieces: numbered by the lease, sealed, read back in order, merged past a count."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.buffers import SizedBuffers, size_class
from gateway.catalog.base import TailPiece
from gateway.errors import ERR, GatewayError
from gateway.sealed import MIN_SEGMENT_SIZE, RECORD_OVERHEAD, Sealer, new_header
from gateway.store.folder import FolderStore
from gateway.writer.tail import TailPieces, piece_number
from tests.fakes import MemoryStore

S = MIN_SEGMENT_SIZE
DEK = bytes(range(32))
HEADER = new_header(DEK, upload_id="U", dek_id=b"\1" * 16, segment_size=S, plaintext_size=None)


def tails(store: MemoryStore, token: int = 7, merge_after: int = 64) -> TailPieces:
    return TailPieces(
        upload_id="U",
        sealer=Sealer(DEK, HEADER),
        store=store,
        token=lambda: token,
        merge_after=merge_after,
    )


def test_a_piece_is_numbered_by_the_lease_token_and_never_reuses_one() -> None:
    assert piece_number(7, []) == 7
    assert piece_number((1 << 32) + 3, []) == 3
    assert piece_number(3, [TailPiece(0, 3, 0, 1), TailPiece(0, 4, 1, 1)]) == 5


def test_pieces_are_sealed_and_read_back_in_order() -> None:
    store = MemoryStore()
    first, second = tails(store, token=1), tails(store, token=2)
    a, b = TailPiece(2, 1, 0, 5), TailPiece(2, 2, 5, 3)
    first.put(a, b"hello")
    second.put(b, b"abc")
    assert "U/tail/2/1" in store.objects and b"hello" not in store.objects["U/tail/2/1"]
    later = tails(store, token=3)
    later.adopt([b, a, TailPiece(1, 9, 0, 4)], segment=2)  # another segment's is left out
    assert later.old == [a, b] and later.number == 3
    assert later.load(later.old, covers=8) == b"helloabc"
    with pytest.raises(GatewayError) as caught:
        later.load(later.old, covers=9)  # the catalog says more than the pieces hold
    assert caught.value.err is ERR.STORED_DATA_CORRUPT
    with pytest.raises(GatewayError):
        later.load([b, a], covers=8)  # out of place


def test_one_piece_too_many_merges_the_segment() -> None:
    store = MemoryStore()
    pieces = tails(store, token=9, merge_after=2)
    old = [TailPiece(0, 1, 0, 5), TailPiece(0, 2, 5, 5)]
    pieces.adopt(old, segment=0)
    piece, merged = pieces.plan(0, new_from=10, fill=15)
    assert piece == TailPiece(0, 9, 0, 15) and merged == old
    assert pieces.forget(None, replaced=True) == old and pieces.old == []
    few = tails(store, token=9, merge_after=3)
    few.adopt(old, segment=0)
    assert few.plan(0, new_from=10, fill=15) == (TailPiece(0, 9, 10, 5), [])
    assert few.forget(0, replaced=False) == []  # still needed: its segment is not sealed
    assert few.forget(1, replaced=False) == old


class Spy(SizedBuffers):
    """Sized buffers that hand out dirty ones and count what is out."""

    def __init__(self) -> None:
        self.freed: list[int] = []
        super().__init__(released=self.freed.append)
        self.taken: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        buffer = super().take(size)
        buffer[:] = b"\xaa" * len(buffer)  # whatever the last user left
        self.taken.append(buffer)
        return buffer

    def give(self, buf: bytearray) -> None:
        self.taken = [b for b in self.taken if b is not buf]
        super().give(buf)


def test_a_piece_is_sealed_in_a_pooled_buffer_given_back_after() -> None:
    store, spy = MemoryStore(), Spy()
    pieces = TailPieces(
        upload_id="U", sealer=Sealer(DEK, HEADER), store=store, token=lambda: 4,
        merge_after=64, sized=spy,
    )  # fmt: skip
    pieces.put(TailPiece(0, 4, 0, 5), b"hello")
    assert spy.taken == [] and spy.idle == size_class(5 + RECORD_OVERHEAD)
    sealed = store.objects["U/tail/0/4"]
    assert len(sealed) == 5 + RECORD_OVERHEAD  # its own bytes, not the buffer's
    assert Sealer(DEK, HEADER).open_tail(0, 4, 0, sealed) == b"hello"
    reader = tails(store)
    out = bytearray(b"\xff" * 9)
    reader.load_into([TailPiece(0, 4, 0, 5)], 5, out)
    assert out == b"hello\xff\xff\xff\xff"


def test_bytes_read_back_are_reported_freed() -> None:
    store, spy = MemoryStore(), Spy()
    tails(store, token=1).put(TailPiece(0, 1, 0, 3), b"abc")
    pieces = TailPieces(
        upload_id="U", sealer=Sealer(DEK, HEADER), store=store, token=lambda: 2,
        merge_after=64, sized=spy,
    )  # fmt: skip
    assert pieces.load([TailPiece(0, 1, 0, 3)], covers=3) == b"abc"
    assert spy.freed == [3 + RECORD_OVERHEAD]  # the sealed piece, opened in place


def test_pieces_in_a_folder_store_are_read_into_pooled_buffers(tmp_path: Path) -> None:
    store, spy = FolderStore(tmp_path), Spy()
    first = TailPieces(
        upload_id="U", sealer=Sealer(DEK, HEADER), store=store, token=lambda: 1,
        merge_after=64, sized=spy,
    )  # fmt: skip
    a, b = TailPiece(0, 1, 0, 5), TailPiece(0, 2, 5, 3)
    first.put(a, b"hello")
    first.put(b, b"abc")
    assert first.load([a, b], covers=8) == b"helloabc"
    assert spy.taken == [] and spy.freed == []  # all reused, nothing freed
    store.put("U/tail/0/2", store.get("U/tail/0/2") + b"!", fresh=True)  # one byte more
    with pytest.raises(GatewayError) as caught:
        first.load([a, b], covers=8)
    assert caught.value.err is ERR.STORED_DATA_CORRUPT and spy.taken == []
