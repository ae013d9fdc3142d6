"""Regenerate sealed_v2.json (suite 2: SM4-GCM, HKDF-SM3, SM3) from docs/FORMAT.md alone.

Independent of the gateway and of OpenSSL: SM4 and SM3 come from the pure-Python `gmssl`
package, and GCM, HMAC and HKDF are written out below from NIST SP 800-38D and RFC 2104
and 5869. Run it only when the format deliberately changes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from gmssl import sm3, sm4  # type: ignore[import-untyped]

OUT = Path(__file__).with_name("sealed_v2.json")

LABEL = b"imgw-seal/v1"
SUITE = 2
DEK = bytes(range(16))  # suite 2's data keys are 128-bit
SALT = bytes(range(0x40, 0x60))
DEK_ID = bytes(range(0xD0, 0xE0))
SEGMENT_SIZE = 65536
INLINE_LIMIT = 2048  # records up to this size are written out in full

# (name, upload id, plaintext length, length deferred, final flags of each record)
CASES: list[tuple[str, str, int, bool, list[bool]]] = [
    ("empty", "vector-empty", 0, False, [True]),
    ("small", "vector-small", 100, False, [True]),
    ("two-segments", "vector-two-segments", SEGMENT_SIZE + 1000, False, [False, True]),
    ("deferred-boundary", "vector-deferred_1", SEGMENT_SIZE, True, [False, True]),
]
TAIL: dict[str, Any] = {
    "case": "deferred-boundary",
    "segment": 1,
    "piece": 2,
    "start": 4096,
    "length": 50,
}
DIGEST_NAME = "plaintext.sha256"  # the keyed digest's name, whatever the suite's hash


# --- SM3, HMAC-SM3, HKDF-SM3 -------------------------------------------------------------


def sm3_digest(data: bytes) -> bytes:
    return bytes.fromhex(sm3.sm3_hash(list(data)))


def hmac_sm3(key: bytes, msg: bytes) -> bytes:
    if len(key) > 64:
        key = sm3_digest(key)
    key = key.ljust(64, b"\0")
    inner = sm3_digest(bytes(k ^ 0x36 for k in key) + msg)
    return sm3_digest(bytes(k ^ 0x5C for k in key) + inner)


def hkdf_sm3(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac_sm3(salt, ikm)
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac_sm3(prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


# --- SM4-GCM (NIST SP 800-38D over the SM4 block cipher) -----------------------------------


class SM4Block:
    def __init__(self, key: bytes) -> None:
        self._cipher = sm4.CryptSM4()
        self._cipher.set_key(key, sm4.SM4_ENCRYPT)

    def encrypt(self, block: bytes) -> bytes:
        return bytes(self._cipher.one_round(self._cipher.sk, list(block)))


_R = 0xE1 << 120


def _gf_mul(x: int, y: int) -> int:
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _ghash(h: int, aad: bytes, ct: bytes) -> int:
    def blocks(data: bytes) -> list[bytes]:
        padded = data + bytes(-len(data) % 16)
        return [padded[i : i + 16] for i in range(0, len(padded), 16)]

    y = 0
    lengths = struct.pack(">QQ", len(aad) * 8, len(ct) * 8)
    for block in [*blocks(aad), *blocks(ct), lengths]:
        y = _gf_mul(y ^ int.from_bytes(block, "big"), h)
    return y


def sm4_gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ciphertext || tag, for a 96-bit nonce and a 128-bit tag."""
    cipher = SM4Block(key)
    h = int.from_bytes(cipher.encrypt(bytes(16)), "big")
    ct = bytearray()
    for i in range(0, len(plaintext), 16):
        counter = nonce + struct.pack(">I", 2 + i // 16)  # inc32(J0), J0 = nonce || 1
        stream = cipher.encrypt(counter)
        ct += bytes(a ^ b for a, b in zip(plaintext[i : i + 16], stream, strict=False))
    s = _ghash(h, aad, bytes(ct))
    tag = int.from_bytes(cipher.encrypt(nonce + struct.pack(">I", 1)), "big") ^ s
    return bytes(ct) + tag.to_bytes(16, "big")


# --- the format ---------------------------------------------------------------------------


def plaintext(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def fixed_nonce(label: str, i: int) -> bytes:
    return hashlib.sha256(f"suite2/{label}/{i}".encode()).digest()[:12]


def header_of(upload_id: str, length: int, deferred: bool) -> bytes:
    uid = upload_id.encode("ascii")
    size = 0 if deferred else length
    body = struct.pack(
        ">8sBBBIQB", b"IMGWSEAL", 1, SUITE, int(deferred), SEGMENT_SIZE, size, len(uid)
    )
    body += uid + SALT + DEK_ID
    commitment = hkdf_sm3(DEK, SALT, LABEL + b"/commit" + sm3_digest(body), 32)
    return body + commitment


def subkey(label: bytes, upload_id: str, length: int) -> bytes:
    info = LABEL + label + bytes([SUITE]) + upload_id.encode("ascii")
    return hkdf_sm3(DEK, SALT, info, length)


def build_case(
    name: str, upload_id: str, length: int, deferred: bool, finals: list[bool]
) -> dict[str, Any]:
    header = header_of(upload_id, length, deferred)
    digest = sm3_digest(header)
    key = subkey(b"/content", upload_id, 16)
    nonces = [fixed_nonce(name, i) for i in range(len(finals))]
    data = plaintext(length)
    obj = bytearray(header)
    records = []
    for i, final in enumerate(finals):
        chunk = data[i * SEGMENT_SIZE : (i + 1) * SEGMENT_SIZE]
        aad = LABEL + b"/seg" + digest + struct.pack(">QBI", i, final, len(chunk))
        rec = nonces[i] + sm4_gcm_encrypt(key, nonces[i], chunk, aad)
        obj += rec
        entry: dict[str, Any] = {
            "index": i,
            "final": final,
            "plaintext_len": len(chunk),
            "sm3": sm3_digest(rec).hex(),
        }
        if len(rec) <= INLINE_LIMIT:
            entry["hex"] = rec.hex()
        records.append(entry)
    plain_sm3 = sm3_digest(data)
    name_raw = DIGEST_NAME.encode("ascii")
    keyed = hmac_sm3(
        subkey(b"/digest", upload_id, 32),
        LABEL + b"/digest" + digest + bytes([len(name_raw)]) + name_raw + plain_sm3,
    )
    case: dict[str, Any] = {
        "name": name,
        "upload_id": upload_id,
        "plaintext_len": length,
        "length_deferred": deferred,
        "nonces": [n.hex() for n in nonces],
        "header": header.hex(),
        "header_digest": digest.hex(),
        "commitment": header[-32:].hex(),
        "content_key": key.hex(),
        "value_key": subkey(b"/value", upload_id, 16).hex(),
        "records": records,
        "object_size": len(obj),
        "object_sm3": sm3_digest(bytes(obj)).hex(),
        "plaintext_sm3": plain_sm3.hex(),
        "keyed_digest": {"name": DIGEST_NAME, "hmac_sm3": keyed.hex()},
    }
    if len(obj) <= INLINE_LIMIT:
        case["object"] = obj.hex()
    return case


def tail_piece(case: dict[str, Any], nonce: bytes) -> bytes:
    start, length = TAIL["start"], TAIL["length"]
    aad = (
        LABEL
        + b"/tail"
        + bytes.fromhex(case["header_digest"])
        + struct.pack(">QIII", TAIL["segment"], TAIL["piece"], start, length)
    )
    key = bytes.fromhex(case["content_key"])
    return nonce + sm4_gcm_encrypt(key, nonce, plaintext(start + length)[start:], aad)


def self_check() -> None:
    """The primitives against their published examples before anything is written."""
    # GB/T 32905-2016 appendix A.1 and GB/T 32907-2016 appendix A.1.
    want = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert sm3_digest(b"abc").hex() == want
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert SM4Block(key).encrypt(key).hex() == "681edf34d206965e86b3e94f536e4246"
    # RFC 8998 appendix A.1: SM4-GCM.
    gcm = sm4_gcm_encrypt(
        key,
        bytes.fromhex("00001234567800000000abcd"),
        bytes.fromhex(
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccdddddddddddddddd"
            "eeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa"
        ),
        bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
    )
    assert gcm.hex() == (
        "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735"
        "d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d"
        "83de3541e4c2b58177e065a9bf7b62ec"
    ), gcm.hex()


def main() -> None:
    self_check()
    cases = [build_case(*spec) for spec in CASES]
    (tail_case,) = [c for c in cases if c["name"] == TAIL["case"]]
    nonce = fixed_nonce("tail", 0)
    doc = {
        "format": LABEL.decode(),
        "suite": SUITE,
        "comment": (
            "Suite 2 (SM4-GCM, HKDF-SM3, SM3) vectors for docs/FORMAT.md, made by "
            "make_sealed_v2_vectors.py with gmssl's SM4 and SM3 only. Plaintext of length "
            "n is bytes(i % 251 for i in range(n)); record i seals plaintext[i*S:(i+1)*S] "
            "with nonces[i]. The tail piece seals plaintext[start:start+length]."
        ),
        "dek": DEK.hex(),
        "salt": SALT.hex(),
        "dek_id": DEK_ID.hex(),
        "segment_size": SEGMENT_SIZE,
        "cases": cases,
        "tail": {**TAIL, "nonce": nonce.hex(), "piece_hex": tail_piece(tail_case, nonce).hex()},
    }
    OUT.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
