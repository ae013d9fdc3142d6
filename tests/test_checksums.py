"""Tests for the tus checksum extension's algorithms."""

from __future__ import annotations

import base64

import pytest

from gateway import checksums

# Published test vectors: FIPS 180 examples for "abc", RFC 1321 for md5, GB/T 32905 for
# sm3, and the
# standard "123456789" check values for CRC-32 and CRC-32C.
KNOWN = [
    ("sha1", b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
    ("sha256", b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        "sha512",
        b"abc",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    ),
    ("md5", b"abc", "900150983cd24fb0d6963f7d28e17f72"),
    ("md5", b"", "d41d8cd98f00b204e9800998ecf8427e"),
    ("crc32", b"123456789", "cbf43926"),
    ("crc32c", b"123456789", "e3069283"),
    ("crc32", b"", "00000000"),
    ("crc32c", b"", "00000000"),
    # GB/T 32905-2016 appendix A, examples 1 and 2.
    ("sm3", b"abc", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
    ("sm3", b"abcd" * 16, "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"),
]


@pytest.mark.parametrize(("algorithm", "data", "hexdigest"), KNOWN)
def test_known_digests(algorithm: str, data: bytes, hexdigest: str) -> None:
    hasher = checksums.new_hasher(algorithm)
    hasher.update(data)
    assert hasher.digest().hex() == hexdigest


@pytest.mark.parametrize("algorithm", checksums.SUPPORTED)
def test_incremental_equals_one_shot(algorithm: str) -> None:
    data = bytes(range(256)) * 300  # spans several blocks and the GIL-release size
    one_shot = checksums.new_hasher(algorithm)
    one_shot.update(data)
    incremental = checksums.new_hasher(algorithm)
    # Mixed buffer types, as the upload path hands over bytes, bytearrays and views.
    incremental.update(data[:1])
    incremental.update(bytearray(data[1:1000]))
    incremental.update(b"")
    incremental.update(memoryview(data)[1000:])
    assert incremental.digest() == one_shot.digest()


@pytest.mark.parametrize("algorithm", checksums.SUPPORTED)
def test_digest_size_matches_digest(algorithm: str) -> None:
    hasher = checksums.new_hasher(algorithm)
    hasher.update(b"x")
    assert len(hasher.digest()) == checksums.digest_size(algorithm)


@pytest.mark.parametrize("algorithm", checksums.SUPPORTED)
def test_digest_is_stable_and_hashers_are_independent(algorithm: str) -> None:
    first = checksums.new_hasher(algorithm)
    second = checksums.new_hasher(algorithm)
    first.update(b"abc")
    assert first.digest() == first.digest()
    second.update(b"abd")
    assert first.digest() != second.digest()


def test_crc32_is_big_endian_like_tus_clients() -> None:
    # What tusd and tus-js-client send for "123456789": base64 of CB F4 39 26.
    hasher = checksums.new_hasher("crc32")
    hasher.update(b"123456789")
    assert base64.b64encode(hasher.digest()) == b"y/Q5Jg=="


def test_supported_order_and_sizes() -> None:
    assert checksums.SUPPORTED == ("sha1", "sha256", "sha512", "md5", "crc32", "crc32c", "sm3")
    assert [checksums.digest_size(a) for a in checksums.SUPPORTED] == [20, 32, 64, 16, 4, 4, 32]


@pytest.mark.parametrize("algorithm", ["", "SHA1", "sha-1", "sha384", "blake2b", "crc64"])
def test_unknown_algorithm_raises_key_error(algorithm: str) -> None:
    with pytest.raises(KeyError):
        checksums.new_hasher(algorithm)
    with pytest.raises(KeyError):
        checksums.digest_size(algorithm)
