"""Suite-2 manifests: the SM3 Merkle tree against gmssl's SM3, and the suite setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from gmssl import sm3  # type: ignore[import-untyped]

from gateway import manifest
from gateway.client.check import Mismatch, compare
from gateway.config import ConfigError, load_settings
from gateway.suites import SM
from gateway.wiring import upload_rules


def gm_sm3(data: bytes) -> bytes:
    return bytes.fromhex(sm3.sm3_hash(list(data)))


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 with SM3, from an independent SM3."""
    if not leaves:
        return gm_sm3(b"")
    if len(leaves) == 1:
        return gm_sm3(b"\x00" + leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return gm_sm3(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:]))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8])
def test_sm3_merkle_root(n: int) -> None:
    leaves = [gm_sm3(bytes([i])) for i in range(n)]
    assert manifest.merkle_root(leaves, SM) == reference_mth(leaves)
    if n:
        assert manifest.merkle_root(leaves, SM) != manifest.merkle_root(leaves)


def _records(suite: int, hashes: list[bytes]) -> dict[str, object]:
    scheme = SM if suite == 2 else None
    return {
        "suite": suite,
        "records": {
            "count": len(hashes),
            "sha256": [h.hex() for h in hashes],
            "merkle_root": manifest.merkle_root(hashes, *([scheme] if scheme else [])).hex(),
            "merkle": scheme.merkle if scheme else manifest.MERKLE_SCHEME,
        },
    }


def test_verify_records_follows_the_manifests_suite() -> None:
    hashes = [gm_sm3(b"a"), gm_sm3(b"b"), gm_sm3(b"c")]
    manifest.verify_records(_records(2, hashes), hashes)
    manifest.verify_records(_records(1, hashes), hashes)
    relabelled = _records(2, hashes)
    relabelled["suite"] = 1  # an SM3 tree claimed to be suite 1's
    with pytest.raises(manifest.ManifestError, match="Merkle scheme"):
        manifest.verify_records(relabelled, hashes)
    unknown = _records(2, hashes)
    unknown["suite"] = 7
    with pytest.raises(manifest.ManifestError, match="suite"):
        manifest.verify_records(unknown, hashes)


def test_crypto_suite_setting() -> None:
    assert upload_rules(load_settings(environ={}).validate()).suite == 1
    settings = load_settings(environ={"GATEWAY_CRYPTO_SUITE": "sm"}).validate()
    assert upload_rules(settings).suite == 2
    with pytest.raises(ConfigError, match="crypto_suite"):
        load_settings(environ={"GATEWAY_CRYPTO_SUITE": "sm4"}).validate()


def test_gateway_upload_checks_a_suite_2_upload_with_sm3(tmp_path: Path) -> None:
    path = tmp_path / "study.dcm"
    path.write_bytes(b"DICM" * 1000)
    digest = SM.hash(path.read_bytes()).hexdigest()
    signed: dict[str, object] = {
        "suite": 2,
        "upload": {"id": "abc", "length": 4000},
        "plaintext": {"size": 4000, "sha256": digest},
    }
    assert compare(signed, url="https://gw/files/abc", path=path, size=4000) == digest
    signed["suite"] = 1
    with pytest.raises(Mismatch, match="SHA-256 differs"):
        compare(signed, url="https://gw/files/abc", path=path, size=4000)
