"""`gateway verify`: prove a stored upload is exactly what its signed manifest says."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import jws, manifest
from gateway.catalog.base import KeyCatalog
from gateway.jws import PublicSigningKey
from gateway.keys.base import KeyProvider, KeyUnusable
from gateway.layout import data_key, manifest_keys, reader_manifest_key, sm2_manifest_keys
from gateway.reader import read_header
from gateway.sealed import (
    RECORD_OVERHEAD,
    Header,
    InvalidSealedData,
    Sealer,
    object_layout,
)
from gateway.signer import PLAINTEXT_DIGEST, open_reader_manifest, open_reader_sm2
from gateway.store.base import ObjectNotFound, ObjectStore


@dataclass
class Report:
    """What was checked, in order; `failures` names each check that failed."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def ok(self, what: str) -> None:
        self.lines.append(f"ok    {what}")

    def fail(self, what: str) -> None:
        self.lines.append(f"FAIL  {what}")
        self.failures.append(what)


class InsecureJWKSSource(ValueError):
    """A JWKS location that is neither a file nor an https:// URL."""


def load_jwks_all(sources: list[str]) -> dict[str, PublicSigningKey]:
    """The keys of several JWK Sets (e.g. jwks.json and sm2-manifest-keys.json); a kid
    in two of them is an error."""
    result: dict[str, PublicSigningKey] = {}
    for source in sources:
        for kid, key in load_jwks(source).items():
            if kid in result:
                raise jws.JWSError(f"kid {kid!r} is in more than one JWKS")
            result[kid] = key
    return result


def load_jwks(source: str) -> dict[str, PublicSigningKey]:
    """A JWKS from a file path or an https:// URL (the system's trusted CAs).

    The JWKS is what makes a signature mean anything: over plain http anyone on the
    path could hand over their own keys, so http:// (and any other scheme) is refused."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", source)
    if scheme is not None and scheme.group(1).lower() != "https":
        raise InsecureJWKSSource(
            f"refusing a {scheme.group(1)}:// JWKS: fetch it over https:// or give a file"
        )
    if scheme is not None:
        context = ssl.create_default_context()
        with urllib.request.urlopen(source, timeout=10, context=context) as response:
            document = json.load(response)
    else:
        document = json.loads(Path(source).read_text())
    return jws.keys_from_jwks(document)


def verify_upload(
    upload_id: str,
    *,
    store: ObjectStore,
    public_keys: Mapping[str, PublicSigningKey],
    unwrap: Callable[[str, bytes], bytes] | None,
    report: Report,
    whole: Any = None,
    current_known: bool = False,
) -> Report:
    """Check one upload against its signed manifest; `whole`, if given, is a hasher fed
    with the decrypted plaintext (a concatenation hashes its partials in order).
    `current_known`: the keys come from the provider, which knows the current one."""
    json_key, jws_key = manifest_keys(upload_id)
    try:
        token = store.get(jws_key).decode("ascii")
        doc = manifest.verify(token, public_keys)
    except ObjectNotFound:
        report.fail(f"manifest: {jws_key} does not exist")
        return report
    except (manifest.ManifestError, UnicodeDecodeError) as exc:
        report.fail(f"signature: {exc}")
        return report
    signer: Any = doc["signer"]
    which = ""
    if current_known:
        current = public_keys[signer["kid"]].current
        which = " (the current signing key)" if current else " (an older key, still published)"
    report.ok(f"signature: {signer['alg']} by {signer['kid']}{which}")
    if manifest.needs_sm2(doc):
        _check_sm2(upload_id, doc, store, public_keys, report, current_known=current_known)
    try:
        stored_json = store.get(json_key)
    except ObjectNotFound:
        stored_json = b""
    if stored_json != manifest.canonical_json(doc):
        report.fail("manifest.json: differs from the signed manifest")
    else:
        report.ok("manifest.json: identical to the signed manifest")
    if doc["upload"]["id"] != upload_id:  # type: ignore[index]
        report.fail("manifest: it names another upload")
        return report
    if doc.get("kind") == "concatenation":
        _check_concatenation(doc, store, public_keys, unwrap, report)
    else:
        _check_object(upload_id, doc, store, public_keys, unwrap, report, whole)
    return report


def _check_sm2(
    upload_id: str,
    doc: dict[str, Any],
    store: ObjectStore,
    public_keys: Mapping[str, PublicSigningKey],
    report: Report,
    *,
    current_known: bool,
) -> None:
    """A suite-2 manifest's SM2 form: signed by a published SM2 key, over the same
    manifest as the JWS (MANIFEST.md, "SM2")."""
    sm2_key, _ = sm2_manifest_keys(upload_id)
    try:
        token = store.get(sm2_key).decode("ascii")
        signed = manifest.verify_sm2(token, public_keys)
    except ObjectNotFound:
        report.fail(f"sm2 signature: {sm2_key} does not exist (a suite-2 manifest needs one)")
        return
    except (manifest.ManifestError, UnicodeDecodeError) as exc:
        report.fail(f"sm2 signature: {exc}")
        return
    if manifest.canonical_json(signed) != manifest.canonical_json(doc):
        report.fail("sm2 signature: it signs another manifest than the JWS")
        return
    kid = jws.header_of(token)["kid"]
    which = ""
    if current_known and isinstance(kid, str):
        current = public_keys[kid].current
        which = " (the current SM2 key)" if current else " (an older SM2 key, still published)"
    report.ok(f"sm2 signature: SM2 with SM3 by {kid}{which}, over the same manifest")


def _check_concatenation(
    doc: dict[str, Any],
    store: ObjectStore,
    public_keys: Mapping[str, PublicSigningKey],
    unwrap: Callable[[str, bytes], bytes] | None,
    report: Report,
) -> None:
    """A final upload: each partial as pinned, and as its own manifest says (MANIFEST.md)."""
    whole = hashlib.sha256()
    size = 0
    for pinned_partial in doc["parts"]:
        partial_id = pinned_partial["id"]
        _, jws_key = manifest_keys(partial_id)
        try:
            pinned_jws = store.get(jws_key)
            pinned = hashlib.sha256(pinned_jws).hexdigest() == pinned_partial["manifest_jws_sha256"]
        except ObjectNotFound:
            pinned = False
        if not pinned:
            report.fail(f"partial {partial_id}: its manifest is missing or not the one pinned")
            continue
        try:
            partial_doc = json.loads(manifest.payload(pinned_jws.decode("ascii")))
            partial_length = partial_doc["upload"]["length"]
        except (ValueError, KeyError, TypeError, manifest.ManifestError):
            partial_length = None  # its own check below names what is wrong with it
        if partial_length != pinned_partial["length"]:
            report.fail(f"partial {partial_id}: its manifest gives another length")
        sub = verify_upload(
            partial_id,
            store=store,
            public_keys=public_keys,
            unwrap=unwrap,
            report=Report(),
            whole=whole,
        )
        for line in sub.lines:
            report.lines.append(f"{line[:6]}partial {partial_id}: {line[6:]}")
        report.failures.extend(f"partial {partial_id}: {f}" for f in sub.failures)
        size += int(pinned_partial["length"])
    if size != doc["plaintext"]["size"]:
        report.fail(f"plaintext: the partials hold {size} bytes, the manifest says otherwise")
    if unwrap is None:
        report.lines.append("skip  plaintext: no keys given, not decrypted")
        return
    if report.failures:
        return
    expected = doc["plaintext"].get("sha256")
    if expected is None:
        # Version 2: no digest of the whole (SHA-256 does not compose); each partial's
        # plaintext was checked against its own manifest above.
        report.ok(f"plaintext: {size} bytes of {len(doc['parts'])} partials, each as signed")
    elif whole.hexdigest() != expected:
        report.fail("plaintext: the partials joined differ from the manifest's SHA-256")
    else:
        report.ok(f"plaintext: {size} bytes of {len(doc['parts'])} partials, SHA-256 matches")


def _check_object(
    upload_id: str,
    doc: dict[str, Any],
    store: ObjectStore,
    public_keys: Mapping[str, PublicSigningKey],
    unwrap: Callable[[str, bytes], bytes] | None,
    report: Report,
    whole: Any = None,
) -> None:
    key = data_key(upload_id)
    try:
        size = store.size(key)
    except ObjectNotFound:
        report.fail(f"object: {key} does not exist")
        return
    if size != doc["storage"]["size"]:
        report.fail(f"object: {size} bytes stored, manifest says {doc['storage']['size']}")
        return
    try:
        raw_header = read_header(store, key)
        header = Header.decode(raw_header)
    except InvalidSealedData as exc:
        report.fail(f"header: {exc}")
        return
    # Every digest of the manifest is in the object's suite's hash (MANIFEST.md).
    suite = header.cipher_suite
    if doc.get("suite", 1) != header.suite:
        report.fail(f"header: suite {header.suite}, the manifest says {doc.get('suite', 1)}")
        return
    if suite.hash(raw_header).hexdigest() != doc["encryption"]["header_sha256"]:
        report.fail(f"header: its {suite.hash_label} differs from the manifest")
        return
    report.ok(f"object: {size} bytes, suite {suite.id}, header matches")
    sealer = None
    if unwrap is not None:
        try:
            sealer = Sealer(unwrap(upload_id, header.dek_id), header)
        except (KeyUnusable, InvalidSealedData) as exc:
            report.fail(f"key: the data key cannot be used ({type(exc).__name__})")
    try:
        layout = object_layout(header, len(raw_header), size)
    except InvalidSealedData as exc:
        report.fail(f"layout: {exc}")
        return
    stored = sum(rsize - RECORD_OVERHEAD for _, _, rsize, _ in layout)
    if stored != doc["plaintext"]["size"]:
        report.fail(
            f"layout: the records hold {stored} bytes, the manifest says {doc['plaintext']['size']}"
        )
        return
    hashes, plain, plain_size = [], suite.hash(), 0
    for index, offset, rsize, final in layout:
        record = store.get(key, offset, rsize)
        hashes.append(suite.hash(record).digest())
        if sealer is not None:
            try:
                chunk = sealer.open_record(index, final, record)
            except InvalidSealedData:
                report.fail(f"decrypt: record {index} fails authentication")
                sealer = None
                continue
            plain.update(chunk)
            if whole is not None:
                whole.update(chunk)
            plain_size += len(chunk)
    try:
        manifest.verify_records(doc, hashes)
        report.ok(f"records: {len(hashes)} record hashes and the Merkle root match")
    except manifest.ManifestError as exc:
        report.fail(f"records: {exc}")
    if sealer is not None:
        expected = doc["plaintext"]
        digest = plain.digest()
        if "sha256" in expected:  # version 1: the stored manifest carries the digest itself
            same = digest.hex() == expected["sha256"]
        else:  # version 2: a keyed digest only the data key can recompute
            same = sealer.keyed_digest(PLAINTEXT_DIGEST, digest).hex() == expected.get(
                "sha256_hmac"
            )
        name = suite.hash_label
        if plain_size != expected["size"] or not same:
            report.fail(f"plaintext: decrypted size or {name} differs from the manifest")
        else:
            report.ok(f"plaintext: {plain_size} bytes decrypted, {name} matches")
        if doc["manifest_version"] >= 2:
            _check_reader_manifest(upload_id, doc, store, public_keys, sealer, digest, report)
    elif unwrap is None:
        report.lines.append("skip  plaintext: no keys given, not decrypted")
        if doc["manifest_version"] >= 2:
            report.lines.append("skip  reader manifest: sealed, needs the keys")


def _check_reader_manifest(
    upload_id: str,
    doc: dict[str, Any],
    store: ObjectStore,
    public_keys: Mapping[str, PublicSigningKey],
    sealer: Sealer,
    plaintext_sha256: bytes,
    report: Report,
) -> None:
    """The reader's manifest: signed, the stored one plus the disclosed digests, and its
    plaintext SHA-256 that of the bytes just decrypted."""
    try:
        reader = manifest.verify(open_reader_manifest(store, upload_id, sealer), public_keys)
        manifest.check_views(reader, doc)
    except ObjectNotFound:
        report.fail(f"reader manifest: {reader_manifest_key(upload_id)} does not exist")
        return
    except InvalidSealedData:
        report.fail("reader manifest: it fails authentication under the data key")
        return
    except (manifest.ManifestError, UnicodeDecodeError) as exc:
        report.fail(f"reader manifest: {exc}")
        return
    if reader["plaintext"]["sha256"] != plaintext_sha256.hex():  # type: ignore[index]
        report.fail("reader manifest: its plaintext SHA-256 differs from the decrypted bytes")
        return
    report.ok("reader manifest: signed, matches the stored one and the plaintext SHA-256")
    if manifest.needs_sm2(doc):
        try:
            reader_sm2 = manifest.verify_sm2(open_reader_sm2(store, upload_id, sealer), public_keys)
        except ObjectNotFound:
            report.fail(f"reader manifest sm2: {sm2_manifest_keys(upload_id)[1]} does not exist")
            return
        except InvalidSealedData:
            report.fail("reader manifest sm2: it fails authentication under the data key")
            return
        except (manifest.ManifestError, UnicodeDecodeError) as exc:
            report.fail(f"reader manifest sm2: {exc}")
            return
        if manifest.canonical_json(reader_sm2) != manifest.canonical_json(reader):
            report.fail("reader manifest sm2: it signs another manifest than the reader's JWS")
            return
        report.ok("reader manifest sm2: signed with SM2, the same manifest as its JWS")


def catalog_unwrapper(catalog: KeyCatalog, keys: KeyProvider) -> Callable[[str, bytes], bytes]:
    def unwrap(upload_id: str, dek_id: bytes) -> bytes:
        wrapped = catalog.wrapped_key(dek_id)
        if wrapped is None:
            raise KeyUnusable("no wrapped key for this upload (shredded?)")
        return keys.unwrap(wrapped, upload_id=upload_id, dek_id=dek_id)

    return unwrap
