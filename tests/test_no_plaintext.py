"""No plaintext at rest: the bytes of an upload appear nowhere in the data dir.

A 1 MiB random pattern is sent in odd PATCHes with 64 KiB segments, so the data dir
holds sealed records, sealed tail pieces, the catalog with its WAL, and the keyring.
Every file is scanned (and the server's log, for good measure) while the upload is
unfinished and again once it is complete:

- an index of every 8-byte window of the plaintext is probed at every 8-byte-aligned
  position of each file, so any run of 15 or more plaintext bytes is found wherever
  it sits (a 64-byte window always covers seven aligned positions);
- a few hundred 32-byte slices at random offsets are searched for as they are and
  hex-encoded, which also catches a copy that is not byte-aligned or was re-encoded.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import read_stored
from tests.rawhttp import RawPatch
from tests.server import GatewayProcess
from tests.tushttp import create, head_offset, patch, patch_headers, upload_id

MiB = 1 << 20
SIZES = [1, 1000, 65536 + 3, 300_001]  # then the rest


@dataclass
class Needles:
    data: bytes
    windows: frozenset[int]  # every 8-byte window of data, as an integer
    slices: list[bytes]  # sampled 32-byte slices, raw and hex-encoded

    @classmethod
    def of(cls, data: bytes, samples: int = 300) -> Needles:
        windows = frozenset(struct.unpack_from("<Q", data, i)[0] for i in range(len(data) - 7))
        rng = random.Random(len(data))
        slices = []
        for _ in range(samples):
            at = rng.randrange(len(data) - 32)
            raw = data[at : at + 32]
            slices += [raw, raw.hex().encode(), raw.hex().upper().encode()]
        return cls(data, windows, slices)

    def leaks(self, blob: bytes) -> Iterator[str]:
        view = memoryview(blob)
        aligned = len(blob) - len(blob) % 8
        hits = [
            i
            for i, (word,) in zip(
                range(0, aligned, 8), struct.iter_unpack("<Q", view[:aligned]), strict=True
            )
            if word in self.windows
        ]
        for i in hits[:3]:
            yield f"8 plaintext bytes at {i}"
        for needle in self.slices:
            at = blob.find(needle)
            if at >= 0:
                yield f"a {len(needle)}-byte sampled slice at {at}"


def _files(server: GatewayProcess) -> list[Path]:
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    if server.log_path is not None and server.log_path.exists():
        files.append(server.log_path)
    return files


def _assert_nowhere(server: GatewayProcess, needles: Needles, *, expect: list[str]) -> list[str]:
    files = _files(server)
    names = [str(p.relative_to(server.data_dir.parent)) for p in files]
    for part in expect:
        assert any(part in n for n in names), f"expected a file matching {part!r}: {names}"
    found = [
        f"{name}: {leak}"
        for path, name in zip(files, names, strict=True)
        for leak in needles.leaks(path.read_bytes())
    ]
    assert not found, "plaintext found at rest:\n" + "\n".join(found)
    return names


@pytest.fixture(scope="module")
def pattern() -> tuple[bytes, Needles]:
    data = os.urandom(MiB)
    return data, Needles.of(data)


def _send(server: GatewayProcess, url: str, data: bytes, sizes: list[int], offset: int) -> int:
    for size in sizes:
        response = patch(server, url, data[offset : offset + size], offset)
        assert response.status_code == 204, response.text
        offset += size
    return offset


@pytest.mark.parametrize("deferred", [False, True], ids=["length", "deferred-length"])
def test_pattern_is_nowhere_in_the_data_dir(
    gateway_factory: Callable[..., GatewayProcess],
    pattern: tuple[bytes, Needles],
    deferred: bool,
) -> None:
    data, needles = pattern
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536")
    url = create(server, None if deferred else len(data))
    uid = upload_id(url)

    offset = _send(server, url, data, SIZES, 0)
    assert head_offset(server, url) == offset
    # Unfinished: records of the whole segments, a tail piece for the rest.
    names = _assert_nowhere(
        server,
        needles,
        expect=[f"{uid}/tail/", ".multipart", "catalog.sqlite3-wal", "keyring"],
    )
    assert any("catalog.sqlite3" in n for n in names)

    rest = data[offset:]
    headers = patch_headers(server, offset)
    if deferred:
        headers["Upload-Length"] = str(len(data))
    response = httpx.patch(url, content=rest, headers=headers, timeout=60)
    assert response.status_code == 204, response.text
    assert head_offset(server, url) == len(data)
    _assert_nowhere(server, needles, expect=[f"{uid}/data", "catalog.sqlite3"])
    assert read_stored(server.data_dir, uid) == data

    # And after a clean stop, when SQLite checkpoints its WAL into the main file.
    server.stop()
    _assert_nowhere(server, needles, expect=[f"{uid}/data", "catalog.sqlite3"])


def test_interrupted_bodies_leave_no_plaintext(
    gateway_factory: Callable[..., GatewayProcess], pattern: tuple[bytes, Needles]
) -> None:
    """Bodies cut short (the client goes away mid-body) are saved sealed, too."""
    data, needles = pattern
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536")
    url = create(server, len(data))
    offset = 0
    for cut in (100_001, 250_007):
        # A body announced longer than what is sent, then the connection drops.
        raw = RawPatch(server, url, offset, len(data) - offset)
        raw.send(data[offset : offset + cut])
        raw.close()
        deadline = 50
        while head_offset(server, url) == offset and deadline:
            time.sleep(0.1)
            deadline -= 1
        new = head_offset(server, url)
        assert offset < new <= offset + cut
        offset = new
    _assert_nowhere(server, needles, expect=[f"{upload_id(url)}/tail/"])
    _send(server, url, data, [len(data) - offset], offset)
    _assert_nowhere(server, needles, expect=[f"{upload_id(url)}/data"])
    assert read_stored(server.data_dir, upload_id(url)) == data


def test_the_scan_finds_planted_plaintext(pattern: tuple[bytes, Needles]) -> None:
    """The detector itself: a 64-byte window at any offset, or a hex copy, is found."""
    data, needles = pattern
    rng = random.Random(3)
    for _ in range(50):
        at, pad = rng.randrange(len(data) - 64), rng.randrange(64)
        blob = os.urandom(4096 + pad) + data[at : at + 64] + os.urandom(4096)
        assert any(needles.leaks(blob)), (at, pad)
    sample = needles.slices[0]
    assert any(needles.leaks(os.urandom(101) + sample.hex().encode() + os.urandom(7)))
    assert not any(needles.leaks(os.urandom(MiB)))
