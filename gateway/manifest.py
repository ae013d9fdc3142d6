"""Signed upload manifests: RFC 8785 JSON, an RFC 6962 Merkle root, a JWS (MANIFEST.md)."""

from __future__ import annotations

import copy
import datetime
import json
import re
from collections.abc import Iterable, Mapping, Sequence

from gateway import jws, sm2
from gateway.jws import PublicSigningKey, SigningKey
from gateway.suites import AES, SUITES, Suite

MANIFEST_VERSION = 2
# Version 1 manifests (plaintext SHA-256 in the stored copy) are still read and verified.
READABLE_VERSIONS = frozenset({1, 2})
# The two views of an object's manifest (MANIFEST.md): the reader's, served to the owner,
# and the stored one, which leaves out what a digest of the plaintext would disclose.
VIEW_READER = "reader"
VIEW_STORED = "stored"
JWS_TYP = "imgw-manifest+jws"
# The SM2 form of a suite-2 manifest (MANIFEST.md, "SM2"): the same payload, signed again.
SM2_TYP = "imgw-manifest+sm2"
SUITE_SM = 2  # SM4-GCM + SM3: its manifests carry an SM2 signature besides the JWS
MERKLE_SCHEME = "rfc6962-sha256"  # suite 1's; a manifest's scheme is its suite's (suites.py)

# I-JSON (RFC 7493 section 2.2), which RFC 8785 requires: integers outside this
# range lose precision in IEEE 754 doubles, so other verifiers could disagree.
MAX_SAFE_INTEGER = 2**53 - 1

SHA256_LEN = 32

# Defence in depth: tus upload metadata and file names may carry patient data.
FORBIDDEN_KEYS = frozenset({"metadata", "filename"})

_REQUIRED = {
    "upload": ("id", "created", "completed", "uploader", "length", "client_checksum"),
    "uploader": ("principal", "tenant"),
    "storage": ("key", "size", "part_size", "part_count", "store"),
    "encryption": (
        "segment_size",
        "segment_count",
        "header_sha256",
        "dek_id",
        "kek_id",
        "kek_version",
    ),
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
# RFC 3339 section 5.6 restricted to UTC ("Z") so that equal instants compare equal as text.
_RFC3339_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
# RFC 9110 Digest-style "<algorithm> <base64>", as the tus checksum extension sends it.
_CLIENT_CHECKSUM = re.compile(r"[a-z0-9-]+ [A-Za-z0-9+/]+={0,2}")


class ManifestError(Exception):
    """Verification failed; the message names what failed."""


# --- RFC 8785 JSON Canonicalization Scheme (subset) ---------------------------------------


def canonical_json(value: object) -> bytes:
    """Serialize `value` per RFC 8785 (JCS); only dict/list/str/int/bool/None, never floats."""
    out: list[str] = []
    _encode(value, out)
    try:
        # RFC 8785 section 3.2.4: UTF-8. Lone surrogates are not valid I-JSON strings.
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("string is not valid Unicode (lone surrogate)") from e


def _encode(value: object, out: list[str]) -> None:
    # bool before int: bool is an int subclass in Python.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} outside the I-JSON range (RFC 7493 section 2.2)")
        # For integers in that range ES6 Number serialization (RFC 8785 section 3.2.2.3)
        # is the plain decimal form.
        out.append(str(int(value)))
    elif isinstance(value, float):
        # We never put floats in manifests, which avoids number-formatting ambiguity.
        raise ValueError("floats are not allowed in canonical JSON here")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"object key {key!r} is not a string")
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_units)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    else:
        raise ValueError(f"type {type(value).__name__} is not allowed in canonical JSON")


def _utf16_units(key: str) -> bytes:
    # RFC 8785 section 3.2.3: sort by UTF-16 code units, not code points (U+1F600 is
    # D83D DE00 and sorts before U+FB33). Big-endian UTF-16 bytes compare in the same
    # order as their code units; lone surrogates are reported later, by the UTF-8 step.
    return key.encode("utf-16-be", "surrogatepass")


def _string(s: str) -> str:
    # RFC 8785 section 3.2.2.2: escape only " \ and U+0000..U+001F, using \b \t \n \f \r
    # where they exist and \u00xx (lowercase hex) otherwise; everything else is literal.
    # json.dumps with ensure_ascii=False does exactly this (checked in the tests).
    return json.dumps(s, ensure_ascii=False)


# --- RFC 6962 Merkle Tree Hash --------------------------------------------------------------


def merkle_root(leaves: Sequence[bytes], suite: Suite = AES) -> bytes:
    """RFC 6962 section 2.1 Merkle Tree Hash of `leaves`, with the suite's hash (SHA-256
    for suite 1, SM3 for suite 2)."""
    if not leaves:
        return suite.hash(b"").digest()
    return _mth(leaves, 0, len(leaves), suite)


def _mth(leaves: Sequence[bytes], lo: int, hi: int, suite: Suite) -> bytes:
    n = hi - lo
    if n == 1:
        # The 0x00 / 0x01 prefixes separate leaves from nodes (second-preimage resistance).
        return suite.hash(b"\x00" + bytes(leaves[lo])).digest()
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    node = b"\x01" + _mth(leaves, lo, lo + k, suite) + _mth(leaves, lo + k, hi, suite)
    return suite.hash(node).digest()


def manifest_suite(manifest: Mapping[str, object]) -> Suite:
    """The suite a manifest's digests are in (1 where it names none); ManifestError for
    one this build does not know."""
    suite_id = manifest.get("suite", AES.id)
    if type(suite_id) is not int or suite_id not in SUITES:
        raise ManifestError(f"unsupported suite {suite_id!r}")
    return SUITES[suite_id]


# --- building ---------------------------------------------------------------------------------


def build_manifest(
    *,
    upload: dict[str, object],
    storage: dict[str, object],
    encryption: dict[str, object],
    plaintext_size: int,
    plaintext_sha256: bytes,
    plaintext_sha256_hmac: bytes,
    record_sha256: Sequence[bytes],
    retention: dict[str, object] | None,
    signer_kid: str,
    signer_alg: str = jws.ALG_ED25519,
    suite: int = 1,
) -> dict[str, object]:
    """Assemble the reader's manifest of a completed upload (stored_view() gives the one for
    the bucket); ValueError on missing or forbidden fields."""
    sections: dict[str, object] = {
        "upload": upload,
        "storage": storage,
        "encryption": encryption,
        "retention": retention,
    }
    for name, section in sections.items():
        if section is None and name == "retention":
            continue
        if not isinstance(section, dict):
            raise ValueError(f"{name} must be a dict")
        _reject_forbidden(section, name)
    for name in ("upload", "storage", "encryption"):
        _require(sections[name], _REQUIRED[name], name)
    _require(upload["uploader"], _REQUIRED["uploader"], "upload.uploader")
    for field in ("created", "completed"):
        stamp = upload[field]
        if not isinstance(stamp, str) or not _is_rfc3339_utc(stamp):
            raise ValueError(f"upload.{field} must be an RFC 3339 UTC timestamp ending in Z")
    checksum = upload["client_checksum"]
    if checksum is not None and (
        not isinstance(checksum, str) or not _CLIENT_CHECKSUM.fullmatch(checksum)
    ):
        raise ValueError("upload.client_checksum must be '<algorithm> <base64>' or None")
    if not _is_uint(plaintext_size):
        raise ValueError("plaintext_size must be a non-negative int")
    if upload["length"] != plaintext_size:
        raise ValueError("upload.length differs from plaintext_size")
    _check_digest(plaintext_sha256, "plaintext_sha256")
    _check_digest(plaintext_sha256_hmac, "plaintext_sha256_hmac")
    if not record_sha256:
        # docs/FORMAT.md: a sealed object always has at least one record.
        raise ValueError("record_sha256 is empty; an object has at least one record")
    for i, digest in enumerate(record_sha256):
        _check_digest(digest, f"record_sha256[{i}]")
    if not isinstance(signer_kid, str) or not signer_kid:
        raise ValueError("signer_kid must be a non-empty string")
    if not _is_uint(suite) or suite not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}")

    leaves = [bytes(d) for d in record_sha256]
    manifest: dict[str, object] = {
        "manifest_version": MANIFEST_VERSION,
        "view": VIEW_READER,
        "suite": suite,
        # Deep copies: the signed manifest must not change if the caller's dicts do.
        "upload": copy.deepcopy(upload),
        "storage": copy.deepcopy(storage),
        "encryption": copy.deepcopy(encryption),
        "plaintext": {
            "size": plaintext_size,
            "sha256": bytes(plaintext_sha256).hex(),
            "sha256_hmac": bytes(plaintext_sha256_hmac).hex(),
        },
        "records": {
            "count": len(leaves),
            "sha256": [d.hex() for d in leaves],
            "merkle_root": merkle_root(leaves, SUITES[suite]).hex(),
            "merkle": SUITES[suite].merkle,
        },
        "retention": copy.deepcopy(retention),
        "signer": {"kid": signer_kid, "alg": signer_alg},
    }
    canonical_json(manifest)  # fail here, not at signing time, on floats and the like
    return manifest


def stored_view(manifest: Mapping[str, object]) -> dict[str, object]:
    """The bucket's copy of a reader's manifest: the same document without the plaintext
    SHA-256 and the client's checksum, which would let anyone who can read the bucket test
    whether a known file was uploaded. Only the keyed `plaintext.sha256_hmac` stays."""
    if manifest.get("view") != VIEW_READER:
        raise ValueError("stored_view() takes a reader's manifest")
    stored = copy.deepcopy(dict(manifest))
    stored["view"] = VIEW_STORED
    del stored["plaintext"]["sha256"]  # type: ignore[attr-defined]
    del stored["upload"]["client_checksum"]  # type: ignore[attr-defined]
    return stored


def check_views(reader: Mapping[str, object], stored: Mapping[str, object]) -> None:
    """ManifestError unless `stored` is exactly the stored view of `reader`."""
    try:
        expected = stored_view(reader)
    except (ValueError, KeyError, TypeError):
        raise ManifestError("the reader's manifest is not a reader's manifest") from None
    if canonical_json(expected) != canonical_json(dict(stored)):
        raise ManifestError("the reader's manifest and the stored manifest differ")


def build_concat_manifest(
    *,
    upload: dict[str, object],
    parts: Sequence[dict[str, object]],
    plaintext_size: int,
    signer_kid: str,
    signer_alg: str = jws.ALG_ED25519,
) -> dict[str, object]:
    """The manifest of a final concatenation: its partials in order, each pinned by the
    SHA-256 of its own signed (stored) manifest. No digest of the whole plaintext: SHA-256
    does not compose, and computing it would mean reading every partial again."""
    _reject_forbidden(upload, "upload")
    _require(upload, ("id", "created", "completed", "uploader", "length"), "upload")
    if not parts:
        raise ValueError("a concatenation has at least one partial")
    for i, part in enumerate(parts):
        _reject_forbidden(part, f"parts[{i}]")
        _require(part, ("id", "length", "manifest_jws_sha256"), "part")
        if "plaintext_sha256" in part:
            raise ValueError("a part's plaintext SHA-256 is not stored readable")
    lengths = [p["length"] for p in parts]
    if upload["length"] != plaintext_size or sum(lengths) != plaintext_size:  # type: ignore[arg-type]
        raise ValueError("the partials' lengths do not add up to the upload's length")
    manifest: dict[str, object] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": "concatenation",
        "upload": copy.deepcopy(upload),
        "parts": copy.deepcopy(list(parts)),
        "plaintext": {"size": plaintext_size},
        "signer": {"kid": signer_kid, "alg": signer_alg},
    }
    canonical_json(manifest)
    return manifest


def _reject_forbidden(value: object, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if isinstance(key, str) and key.casefold() in FORBIDDEN_KEYS:
                raise ValueError(f"forbidden key {where}: manifests carry no patient data")
            _reject_forbidden(item, where)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _reject_forbidden(item, f"{path}[{i}]")


def _require(section: object, keys: Iterable[str], name: str) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"{name} must be a dict")
    missing = [k for k in keys if k not in section]
    if missing:
        raise ValueError(f"{name} lacks {', '.join(missing)}")


def _is_rfc3339_utc(stamp: str) -> bool:
    if not _RFC3339_UTC.fullmatch(stamp):
        return False
    try:
        datetime.datetime.fromisoformat(stamp)  # rejects month 13, Feb 30, hour 25 ...
    except ValueError:
        return False
    return True


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_digest(digest: object, name: str) -> None:
    if not isinstance(digest, bytes | bytearray) or len(digest) != SHA256_LEN:
        raise ValueError(f"{name} must be {SHA256_LEN} bytes")


# --- JWS -------------------------------------------------------------------------------------


def sign(manifest: dict[str, object], key: SigningKey) -> str:
    """Compact JWS of canonical_json(manifest) by `key`, with typ JWS_TYP."""
    signer = manifest.get("signer")
    if isinstance(signer, dict) and signer.get("kid") != key.kid:
        raise ValueError("manifest signer.kid differs from the signing kid")
    if isinstance(signer, dict) and signer.get("alg") != key.alg:
        raise ValueError("manifest signer.alg differs from the signing key's")
    return jws.sign(canonical_json(manifest), typ=JWS_TYP, key=key)


def verify_canonical(
    token: str,
    *,
    typ: str,
    keys: Mapping[str, PublicSigningKey],
    algorithms: frozenset[str] = jws.ALGORITHMS,
) -> tuple[str, dict[str, object]]:
    """(kid, payload) of a compact JWS of `typ` whose payload is one JSON object in
    canonical form (manifests, deletion receipts); JWSError or ValueError naming the check.

    One document, one byte string: a payload that is valid but not canonical would let a
    stored copy and the signed bytes drift apart without anyone noticing."""
    kid, raw = jws.verify(token, typ=typ, keys=keys, algorithms=algorithms)
    payload = jws.parse_json(raw, "payload")
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    try:
        canonical = canonical_json(payload)
    except ValueError as e:
        raise ValueError(f"payload is not canonical JSON (RFC 8785): {e}") from None
    if canonical != raw:
        raise ValueError("payload is not canonical JSON (RFC 8785)")
    return kid, payload


def verify(token: str, keys: Mapping[str, PublicSigningKey]) -> dict[str, object]:
    """Check a compact JWS from sign() strictly and return its manifest; ManifestError if not."""
    try:
        kid, manifest = verify_canonical(token, typ=JWS_TYP, keys=keys)
    except (jws.JWSError, ValueError) as e:
        raise ManifestError(str(e)) from None
    version = manifest.get("manifest_version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # not True, not 1.0
        raise ManifestError(f"unsupported manifest_version {manifest.get('manifest_version')!r}")
    signer = manifest.get("signer")
    if (
        not isinstance(signer, dict)
        or signer.get("kid") != kid
        or signer.get("alg") != keys[kid].alg
    ):
        raise ManifestError("manifest signer does not match the JWS header")
    return manifest


def sign_sm2(manifest: dict[str, object], key: SigningKey) -> str:
    """The SM2 form of a suite-2 manifest: compact serialization with alg SM2-SM3 and typ
    SM2_TYP over the same canonical payload as its JWS (MANIFEST.md, "SM2")."""
    if manifest.get("suite") != SUITE_SM:
        raise ValueError("only a suite-2 manifest is signed with SM2")
    if key.alg != sm2.ALG_SM2:
        raise ValueError(f"an SM2 signature needs an SM2 key, not {key.alg}")
    return jws.sign(canonical_json(manifest), typ=SM2_TYP, key=key, algorithms=jws.SM2_ALGORITHMS)


def verify_sm2(token: str, keys: Mapping[str, PublicSigningKey]) -> dict[str, object]:
    """Check the SM2 form of a suite-2 manifest strictly and return its manifest (alg SM2-SM3
    only, with an SM2 key; canonical payload; suite 2); ManifestError if not."""
    try:
        _, manifest = verify_canonical(token, typ=SM2_TYP, keys=keys, algorithms=jws.SM2_ALGORITHMS)
    except (jws.JWSError, ValueError) as e:
        raise ManifestError(str(e)) from None
    version = manifest.get("manifest_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ManifestError(f"unsupported manifest_version {manifest.get('manifest_version')!r}")
    if manifest.get("suite") != SUITE_SM:
        raise ManifestError("an SM2-signed manifest must be of suite 2")
    return manifest


def needs_sm2(manifest: Mapping[str, object]) -> bool:
    """Whether a manifest must carry an SM2 signature besides its JWS (suite 2)."""
    return manifest.get("suite") == SUITE_SM


def payload(token: str) -> bytes:
    """The payload bytes of a compact JWS made by sign() (the canonical manifest JSON)."""
    try:
        return jws.payload_of(token)
    except jws.JWSError as e:
        raise ManifestError(str(e)) from None


# --- records --------------------------------------------------------------------------------


def verify_records(manifest: Mapping[str, object], record_sha256: Sequence[bytes]) -> None:
    """Check the record hashes of a stored object (in the manifest's suite's hash) against
    the manifest; ManifestError if not."""
    suite = manifest_suite(manifest)
    records = manifest.get("records")
    if not isinstance(records, dict):
        raise ManifestError("manifest has no records section")
    listed = records.get("sha256")
    if not isinstance(listed, list) or not all(
        isinstance(h, str) and _HEX64.fullmatch(h) for h in listed
    ):
        raise ManifestError("manifest records.sha256 is not a list of SHA-256 hex digests")
    if records.get("count") != len(listed):
        raise ManifestError("manifest records.count does not match records.sha256")
    if records.get("merkle") != suite.merkle:
        raise ManifestError(f"unsupported Merkle scheme {records.get('merkle')!r}")
    actual = [bytes(d).hex() for d in record_sha256]
    for i, (want, got) in enumerate(zip(listed, actual, strict=False)):
        if want != got:
            raise ManifestError(f"record {i} differs: manifest {want}, object {got}")
    if len(actual) != len(listed):
        first = min(len(actual), len(listed))
        raise ManifestError(
            f"record {first} differs: manifest has {len(listed)} records, object {len(actual)}"
        )
    root = merkle_root([bytes(d) for d in record_sha256], suite).hex()
    if records.get("merkle_root") != root:
        raise ManifestError(f"merkle_root differs: manifest {records.get('merkle_root')}, {root}")
