"""Tail pieces: numbered by the lease, sealed, read back in order, merged past a count."""

from __future__ import annotations

import pytest

from gateway.catalog.base import TailPiece
from gateway.errors import ERR, GatewayError
from gateway.sealed import MIN_SEGMENT_SIZE, Sealer, new_header
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
