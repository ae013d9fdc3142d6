"""Regenerate sealed_v1.json; run it only when the format deliberately changes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway import sealed

OUT = Path(__file__).with_name("sealed_v1.json")

DEK = bytes(range(32))
SALT = bytes(range(0x40, 0x60))
DEK_ID = bytes(range(0xD0, 0xE0))
SEGMENT_SIZE = 65536
# Records up to this size are written out in full; bigger ones only by digest,
# which keeps the file small while still pinning every byte.
INLINE_LIMIT = 2048

# (name, upload id, plaintext length, length deferred, final flags of each record)
CASES: list[tuple[str, str, int, bool, list[bool]]] = [
    ("empty", "vector-empty", 0, False, [True]),
    ("small", "vector-small", 100, False, [True]),
    ("two-segments", "vector-two-segments", SEGMENT_SIZE + 1000, False, [False, True]),
    # A deferred upload that ended exactly on a boundary after REC_0 was sealed
    # non-final: it closes with an empty final record.
    ("deferred-boundary", "vector-deferred_1", SEGMENT_SIZE, True, [False, True]),
]
TAIL: dict[str, Any] = {
    "case": "deferred-boundary",
    "segment": 1,
    "piece": 2,
    "start": 4096,
    "length": 50,
}


def plaintext(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def fixed_nonce(label: str, i: int) -> bytes:
    return hashlib.sha256(f"{label}/{i}".encode()).digest()[: sealed.NONCE_LEN]


def nonce_source(nonces: list[bytes]) -> Callable[[], bytes]:
    it: Iterator[bytes] = iter(nonces)
    return lambda: next(it)


def build_case(
    name: str, upload_id: str, length: int, deferred: bool, finals: list[bool]
) -> tuple[dict[str, Any], sealed.Header]:
    header = sealed.new_header(
        DEK,
        upload_id=upload_id,
        dek_id=DEK_ID,
        segment_size=SEGMENT_SIZE,
        plaintext_size=None if deferred else length,
        salt=SALT,
    )
    nonces = [fixed_nonce(name, i) for i in range(len(finals))]
    sealer = sealed.Sealer(DEK, header, nonce=nonce_source(nonces))
    data = plaintext(length)
    obj = bytearray(header.encode())
    records = []
    for i, final in enumerate(finals):
        rec = sealer.seal_record(i, final, data[i * SEGMENT_SIZE : (i + 1) * SEGMENT_SIZE])
        obj += rec
        entry: dict[str, Any] = {
            "index": i,
            "final": final,
            "plaintext_len": len(rec) - sealed.RECORD_OVERHEAD,
            "sha256": hashlib.sha256(rec).hexdigest(),
        }
        if len(rec) <= INLINE_LIMIT:
            entry["hex"] = rec.hex()
        records.append(entry)
    case: dict[str, Any] = {
        "name": name,
        "upload_id": upload_id,
        "plaintext_len": length,
        "length_deferred": deferred,
        "nonces": [n.hex() for n in nonces],
        "header": header.encode().hex(),
        "header_digest": header.digest.hex(),
        "commitment": header.commitment.hex(),
        "content_key": sealed.derive_content_key(DEK, header).hex(),
        "records": records,
        "object_size": len(obj),
        "object_sha256": hashlib.sha256(obj).hexdigest(),
    }
    if len(obj) <= INLINE_LIMIT:
        case["object"] = obj.hex()
    return case, header


def main() -> None:
    cases = []
    headers = {}
    for name, upload_id, length, deferred, finals in CASES:
        case, header = build_case(name, upload_id, length, deferred, finals)
        cases.append(case)
        headers[name] = header
    nonce = fixed_nonce("tail", 0)
    sealer = sealed.Sealer(DEK, headers[TAIL["case"]], nonce=lambda: nonce)
    start, length = TAIL["start"], TAIL["length"]
    piece = sealer.seal_tail(
        TAIL["segment"], TAIL["piece"], start, plaintext(start + length)[start:]
    )
    doc = {
        "format": sealed.FORMAT_LABEL.decode(),
        "suite": sealed.SUITE_AES256GCM,
        "comment": (
            "Vectors for docs/FORMAT.md. Plaintext of length n is bytes(i % 251 for i in "
            "range(n)); record i seals plaintext[i*S:(i+1)*S] with nonces[i]. The tail "
            "piece seals plaintext[start:start+length] of that stream."
        ),
        "dek": DEK.hex(),
        "salt": SALT.hex(),
        "dek_id": DEK_ID.hex(),
        "segment_size": SEGMENT_SIZE,
        "cases": cases,
        "tail": {**TAIL, "nonce": nonce.hex(), "piece_hex": piece.hex()},
    }
    OUT.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
