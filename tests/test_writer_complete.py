"""Completion: the recorded records must form a whole object before it is assembled."""

from __future__ import annotations

import hashlib

import pytest

from gateway.catalog.base import RecordRow
from gateway.errors import ERR, GatewayError
from gateway.store.base import PartRef
from gateway.writer import RunningHash, part_offset
from gateway.writer.complete import part_refs, plaintext_sha256


def row(index: int, final: bool = False, size: int = 100) -> RecordRow:
    return RecordRow(index, size - 28, final, size, b"", f"etag{index}")


def test_part_offsets_leave_room_for_the_header_in_part_one() -> None:
    assert part_offset(90, 1000, 0) == 0
    assert part_offset(90, 1000, 1) == 90 + 1028
    assert part_offset(90, 1000, 3) == 90 + 3 * 1028


def test_the_parts_of_a_whole_object() -> None:
    rows = [row(0, size=1118), row(1), row(2, final=True, size=50)]
    assert part_refs(rows, 90, 1000) == [
        PartRef(1, 0, 1118, "etag0"),
        PartRef(2, 1118, 100, "etag1"),
        PartRef(3, 2146, 50, "etag2"),
    ]


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [row(0), row(1)],  # no final record
        [row(0), row(2, final=True)],  # a gap
        [row(0, final=True), row(1, final=True)],  # a final record that is not the last
    ],
)
def test_anything_else_is_refused(rows: list[RecordRow]) -> None:
    with pytest.raises(GatewayError) as caught:
        part_refs(rows, 90, 1000)
    assert caught.value.err is ERR.STORED_DATA_CORRUPT


def test_the_plaintext_digest_only_when_the_running_hash_saw_every_record() -> None:
    running = RunningHash(2, hashlib.sha256(b"ab"))
    assert plaintext_sha256(running, 2) == hashlib.sha256(b"ab").digest()
    assert plaintext_sha256(running, 3) is None
    assert plaintext_sha256(None, 2) is None
