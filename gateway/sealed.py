"""The sealed object format v1: AEAD records under HKDF keys, suite 1 (AES-256-GCM, SHA-256)
or suite 2 (SM4-GCM, SM3) (docs/FORMAT.md)."""

from __future__ import annotations

import dataclasses
import hmac
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.suites import SUITE_AES256GCM as SUITE_AES256GCM
from gateway.suites import SUITE_SM4GCM as SUITE_SM4GCM
from gateway.suites import SUITES, Suite
from gateway.types import Buffer

FORMAT_LABEL = b"imgw-seal/v1"
MAGIC = b"IMGWSEAL"
VERSION = 1

FLAG_LENGTH_DEFERRED = 0x01

KEY_LEN = 32  # suite 1's DEK; suite 2's is 16 bytes (Suite.key_len)
NONCE_LEN = 12
TAG_LEN = 16
CTR_BLOCK = 16  # the block of AES and SM4 alike: GCM's counter counts these
RECORD_OVERHEAD = NONCE_LEN + TAG_LEN
SALT_LEN = 32
DEK_ID_LEN = 16
COMMITMENT_LEN = 32
MAX_UPLOAD_ID_LEN = 64

MIN_SEGMENT_SIZE = 64 * 1024
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024

# magic | version | suite | flags | segment_size | plaintext_size | upload_id_len
_PREFIX = struct.Struct(">8sBBBIQB")
HEADER_PREFIX_LEN = _PREFIX.size  # 24: enough to learn the whole header's length
_TRAILER_LEN = SALT_LEN + DEK_ID_LEN + COMMITMENT_LEN
MIN_HEADER_LEN = HEADER_PREFIX_LEN + 1 + _TRAILER_LEN
MAX_HEADER_LEN = HEADER_PREFIX_LEN + MAX_UPLOAD_ID_LEN + _TRAILER_LEN

_U32_LIMIT = 1 << 32
_U64_LIMIT = 1 << 64
_UPLOAD_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")

_VALUE_NAME = re.compile(rb"[a-z0-9_.-]{1,64}")
_SEG_AAD = struct.Struct(">QBI")  # index | final | plaintext_len
_TAIL_AAD = struct.Struct(">QIII")  # segment | piece | start | length


class InvalidSealedData(Exception):
    """One opaque error for every authentication failure (like Fernet's InvalidToken)."""


class SealedFormatError(InvalidSealedData, ValueError):
    """Malformed header or layout."""


def _view(buf: Buffer) -> memoryview:
    # Lengths below are in bytes, whatever item format a caller's memoryview has.
    return memoryview(buf).cast("B")


def _check_upload_id(raw: bytes) -> None:
    # The id ends up in storage keys and the KDF info; a tight alphabet keeps both sane.
    if _UPLOAD_ID.fullmatch(raw) is None:
        raise SealedFormatError(
            f"upload id must be 1..{MAX_UPLOAD_ID_LEN} characters from [A-Za-z0-9_-], got {raw!r}"
        )


@dataclass(frozen=True)
class Header:
    """The sealed object's header; constructing one validates every field."""

    suite: int
    segment_size: int
    plaintext_size: int  # 0 when deferred
    length_deferred: bool
    upload_id: str
    salt: bytes
    dek_id: bytes
    commitment: bytes

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise SealedFormatError(f"unsupported suite {self.suite}")
        if not MIN_SEGMENT_SIZE <= self.segment_size <= MAX_SEGMENT_SIZE:
            raise SealedFormatError(
                f"segment size {self.segment_size} outside {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}"
            )
        if not 0 <= self.plaintext_size < _U64_LIMIT:
            raise SealedFormatError(f"plaintext size {self.plaintext_size} does not fit u64")
        if self.length_deferred and self.plaintext_size != 0:
            raise SealedFormatError("a deferred-length header must carry plaintext size 0")
        if not self.upload_id.isascii():
            raise SealedFormatError(f"upload id must be ASCII, got {self.upload_id!r}")
        _check_upload_id(self.upload_id.encode("ascii"))
        for name, value, size in (
            ("salt", self.salt, SALT_LEN),
            ("dek_id", self.dek_id, DEK_ID_LEN),
            ("commitment", self.commitment, COMMITMENT_LEN),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise SealedFormatError(f"{name} must be {size} bytes")

    def _encode_uncommitted(self) -> bytes:
        # Everything but the commitment: the commitment is derived from exactly these bytes.
        uid = self.upload_id.encode("ascii")
        flags = FLAG_LENGTH_DEFERRED if self.length_deferred else 0
        prefix = _PREFIX.pack(
            MAGIC, VERSION, self.suite, flags, self.segment_size, self.plaintext_size, len(uid)
        )
        return prefix + uid + self.salt + self.dek_id

    def encode(self) -> bytes:
        return self._encode_uncommitted() + self.commitment

    @classmethod
    def decode(cls, data: Buffer) -> Header:
        """Parse exactly one encoded header (find its length with `header_length`)."""
        view = _view(data)
        length = header_length(view[:HEADER_PREFIX_LEN])
        if view.nbytes != length:
            raise SealedFormatError(f"header is {length} bytes, got {view.nbytes}")
        _, _, suite, flags, segment_size, plaintext_size, uid_len = _PREFIX.unpack_from(view)
        pos = HEADER_PREFIX_LEN
        raw_uid = bytes(view[pos : pos + uid_len])
        _check_upload_id(raw_uid)
        pos += uid_len
        salt = bytes(view[pos : pos + SALT_LEN])
        pos += SALT_LEN
        dek_id = bytes(view[pos : pos + DEK_ID_LEN])
        pos += DEK_ID_LEN
        commitment = bytes(view[pos : pos + COMMITMENT_LEN])
        return cls(
            suite=suite,
            segment_size=segment_size,
            plaintext_size=plaintext_size,
            length_deferred=bool(flags & FLAG_LENGTH_DEFERRED),
            upload_id=raw_uid.decode("ascii"),
            salt=salt,
            dek_id=dek_id,
            commitment=commitment,
        )

    @property
    def cipher_suite(self) -> Suite:
        return SUITES[self.suite]

    @property
    def digest(self) -> bytes:
        """The suite's hash of the full encoded header; every record's AAD carries it."""
        return self.cipher_suite.hash(self.encode()).digest()


def header_length(prefix: Buffer) -> int:
    """Total header length, given at least its first HEADER_PREFIX_LEN (24) bytes."""
    view = _view(prefix)
    if view.nbytes < len(MAGIC):
        raise SealedFormatError(f"header truncated: {view.nbytes} bytes")
    if view[: len(MAGIC)] != MAGIC:
        raise SealedFormatError("not a sealed object (bad magic)")
    # Version first: a future version may lay out everything after it differently.
    if view.nbytes <= len(MAGIC):
        raise SealedFormatError("header truncated before the version byte")
    if view[len(MAGIC)] != VERSION:
        raise SealedFormatError(f"unsupported sealed format version {view[len(MAGIC)]}")
    if view.nbytes < HEADER_PREFIX_LEN:
        raise SealedFormatError(
            f"need {HEADER_PREFIX_LEN} bytes to read the header prefix, got {view.nbytes}"
        )
    # Fixed offsets within the prefix: suite 9, flags 10, upload_id_len is its last byte.
    suite, flags, uid_len = view[9], view[10], view[HEADER_PREFIX_LEN - 1]
    if suite not in SUITES:
        raise SealedFormatError(f"unsupported suite {suite}")
    if flags & ~FLAG_LENGTH_DEFERRED:
        raise SealedFormatError(f"unknown header flags {flags:#04x}")
    if not 1 <= uid_len <= MAX_UPLOAD_ID_LEN:
        raise SealedFormatError(f"upload id length {uid_len} outside 1..{MAX_UPLOAD_ID_LEN}")
    return HEADER_PREFIX_LEN + uid_len + _TRAILER_LEN


def _check_dek(dek: bytes, suite: Suite) -> None:
    if len(dek) != suite.key_len:
        raise ValueError(f"a suite {suite.id} DEK must be {suite.key_len} bytes, got {len(dek)}")


def _hkdf(header: Header, dek: bytes, info: bytes, length: int) -> bytes:
    suite = header.cipher_suite
    _check_dek(dek, suite)
    return HKDF(algorithm=suite.hkdf_hash(), length=length, salt=header.salt, info=info).derive(dek)


def _info(label: bytes, header: Header) -> bytes:
    return FORMAT_LABEL + label + bytes([header.suite]) + header.upload_id.encode("ascii")


def derive_commitment(dek: bytes, header: Header) -> bytes:
    """The key commitment for `header` under `dek` (ignores header.commitment)."""
    covered = header.cipher_suite.hash(header._encode_uncommitted()).digest()
    return _hkdf(header, dek, FORMAT_LABEL + b"/commit" + covered, COMMITMENT_LEN)


def derive_content_key(dek: bytes, header: Header) -> bytes:
    """The AEAD key for the records and tail pieces of `header`'s object."""
    return _hkdf(header, dek, _info(b"/content", header), header.cipher_suite.key_len)


def derive_value_key(dek: bytes, header: Header) -> bytes:
    """The AEAD key for sealed values (metadata, digests) that describe the object."""
    return _hkdf(header, dek, _info(b"/value", header), header.cipher_suite.key_len)


def derive_digest_key(dek: bytes, header: Header) -> bytes:
    """The HMAC key (the suite's hash) for keyed digests of the plaintext."""
    return _hkdf(header, dek, _info(b"/digest", header), COMMITMENT_LEN)


def new_header(
    dek: bytes,
    *,
    upload_id: str,
    dek_id: bytes,
    segment_size: int,
    plaintext_size: int | None,
    salt: bytes | None = None,
    suite: int = SUITE_AES256GCM,
) -> Header:
    """A committed header; plaintext_size None means the length is deferred."""
    unsigned = Header(
        suite=suite,
        segment_size=segment_size,
        plaintext_size=0 if plaintext_size is None else plaintext_size,
        length_deferred=plaintext_size is None,
        upload_id=upload_id,
        salt=os.urandom(SALT_LEN) if salt is None else salt,
        dek_id=dek_id,
        commitment=bytes(COMMITMENT_LEN),
    )
    return dataclasses.replace(unsigned, commitment=derive_commitment(dek, unsigned))


def _random_nonce() -> bytes:
    return os.urandom(NONCE_LEN)


def _check_range(name: str, value: int, limit: int) -> None:
    if not 0 <= value < limit:
        raise ValueError(f"{name} {value} out of range")


class RecordStream:
    """One record sealed as its plaintext arrives: nonce || ciphertext || tag.

    The bytes are those `Sealer.seal_record_into` writes for the same plaintext and
    nonce. Made by `Sealer.record_stream`, which draws the nonce: a stream is never
    started twice under one nonce, and `recover` only decrypts (CTR), never seals.
    """

    def __init__(
        self, suite: Suite, content_key: bytes, nonce: bytes, aad: bytes, length: int
    ) -> None:
        self.nonce = nonce
        self.length = length  # plaintext bytes the record holds when finished
        self.done = 0  # plaintext bytes sealed so far
        self.tag = b""
        self._suite = suite
        self._key = content_key
        self._encryptor = Cipher(suite.block_cipher(content_key), modes.GCM(nonce)).encryptor()
        self._encryptor.authenticate_additional_data(aad)

    def update(self, plain: Buffer, out: Buffer) -> memoryview:
        """Encrypt `plain` into the front of `out`, which has TAG_LEN bytes to spare.

        Returns the ciphertext written (a view of `out`, as long as `plain`).
        """
        src, dst = _view(plain), _view(out)
        if self.done + src.nbytes > self.length:
            raise ValueError(f"a record of {self.length} bytes cannot take more")
        n = self._encryptor.update_into(src, dst)
        if n != src.nbytes:
            raise RuntimeError("GCM held back ciphertext")  # a stream mode never does
        self.done += n
        return dst[:n]

    def finish(self) -> bytes:
        """The tag, once every byte of the record went through `update`."""
        if self.done != self.length:
            raise ValueError(f"record of {self.length} bytes finished after {self.done}")
        self._encryptor.finalize()
        self.tag = self._encryptor.tag
        return self.tag

    def recover(self, ciphertext: Buffer) -> bytes:
        """The plaintext of this record's first ciphertext bytes, without the tag.

        GCM encrypts in CTR mode from counter block nonce || 2; this is that
        keystream. Only for bytes this stream sealed and the caller checked by its own
        digest (an unfinished record cut short), never for data read from elsewhere.
        """
        out = bytearray(_view(ciphertext).nbytes)
        self.recover_into(ciphertext, out)
        return bytes(out)

    def recover_into(self, ciphertext: Buffer, out: Buffer, *, at: int = 0) -> memoryview:
        """`recover` of ciphertext that starts at byte `at` of the record, written into
        the front of `out` (a pooled buffer, so a cut record's megabytes are not
        allocated afresh); returns the plaintext, a view of `out`. The keystream starts
        at the counter block holding byte `at`: a range costs its own length only."""
        src, dst = _view(ciphertext), _view(out)
        if at < 0 or at + src.nbytes > self.done:
            raise ValueError("more ciphertext than this record has sealed")
        if dst.nbytes < src.nbytes:
            raise ValueError(f"output buffer is {dst.nbytes} bytes, need {src.nbytes}")
        block, skip = divmod(at, CTR_BLOCK)
        counter = self.nonce + (2 + block).to_bytes(4, "big")
        decryptor = Cipher(self._suite.block_cipher(self._key), modes.CTR(counter)).decryptor()
        if skip:
            decryptor.update(bytes(skip))  # the block's bytes before `at`
        n = decryptor.update_into(src, dst[: src.nbytes])  # CTR: no bytes held back
        return dst[:n]


class Sealer:
    """Seals and opens the records and tail pieces of one object."""

    def __init__(
        self, dek: bytes, header: Header, *, nonce: Callable[[], bytes] = _random_nonce
    ) -> None:
        # Commitment first: a wrong DEK must fail here, before any ciphertext is touched,
        # so no record can ever decrypt "successfully" under a different key.
        if len(dek) != header.cipher_suite.key_len or not hmac.compare_digest(
            derive_commitment(dek, header), header.commitment
        ):
            raise InvalidSealedData("key does not match the header's commitment")
        self.header = header
        self.suite = header.cipher_suite
        self._digest = header.digest
        self._segment_size = header.segment_size
        self._content_key = derive_content_key(dek, header)
        self._aead = self.suite.aead(self._content_key)
        self._values = self.suite.aead(derive_value_key(dek, header))
        self._digest_key = derive_digest_key(dek, header)
        self._nonce = nonce

    def _fresh_nonce(self) -> bytes:
        nonce = self._nonce()
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"nonce source returned {len(nonce)} bytes, need {NONCE_LEN}")
        return nonce

    def _record_aad(self, index: int, final: bool, length: int) -> bytes:
        _check_range("record index", index, _U64_LIMIT)
        return FORMAT_LABEL + b"/seg" + self._digest + _SEG_AAD.pack(index, final, length)

    def _tail_aad(self, segment: int, piece: int, start: int, length: int) -> bytes:
        _check_range("segment", segment, _U64_LIMIT)
        _check_range("piece", piece, _U32_LIMIT)
        _check_range("start", start, self._segment_size)
        return (
            FORMAT_LABEL + b"/tail" + self._digest + _TAIL_AAD.pack(segment, piece, start, length)
        )

    def seal_record_into(self, index: int, final: bool, plaintext: Buffer, out: Buffer) -> None:
        """Write REC_index = nonce || ciphertext || tag into `out` (len(plaintext) + 28)."""
        src, dst = _view(plaintext), _view(out)
        length = src.nbytes
        if length > self._segment_size or (not final and length != self._segment_size):
            raise ValueError(
                f"record {index}: {length} bytes; non-final records hold exactly "
                f"{self._segment_size}, the final one at most that"
            )
        if dst.nbytes != length + RECORD_OVERHEAD:
            raise ValueError(f"output buffer is {dst.nbytes} bytes, need {length + 28}")
        aad = self._record_aad(index, final, length)
        nonce = self._fresh_nonce()
        dst[:NONCE_LEN] = nonce
        self._aead.encrypt_into(nonce, src, aad, dst[NONCE_LEN:])

    def record_stream(self, index: int, final: bool, length: int) -> RecordStream:
        """Seal REC_index as its plaintext arrives, under a fresh nonce of its own."""
        if length > self._segment_size or (not final and length != self._segment_size):
            raise ValueError(f"record {index}: {length} bytes is not a valid record length")
        aad = self._record_aad(index, final, length)
        return RecordStream(self.suite, self._content_key, self._fresh_nonce(), aad, length)

    def seal_record(self, index: int, final: bool, plaintext: Buffer) -> bytes:
        out = bytearray(record_size(_view(plaintext).nbytes))
        self.seal_record_into(index, final, plaintext, out)
        return bytes(out)

    def open_record(self, index: int, final: bool, record: Buffer) -> bytes:
        """Authenticate and decrypt REC_index; raises InvalidSealedData on any failure."""
        view = _view(record)
        aad = self._opened_record_aad(index, final, view)
        try:
            return self._aead.decrypt(view[:NONCE_LEN], view[NONCE_LEN:], aad)
        except InvalidTag:
            raise InvalidSealedData(f"record {index} failed authentication") from None

    def open_record_into(self, index: int, final: bool, record: Buffer, out: Buffer) -> None:
        """`open_record` written into `out` (len(record) - 28 bytes), such as a pooled
        buffer. On failure `out` may hold bytes that failed authentication: the caller
        must not use them."""
        view = _view(record)
        aad = self._opened_record_aad(index, final, view)
        if _view(out).nbytes != view.nbytes - RECORD_OVERHEAD:
            raise ValueError(f"output buffer is {_view(out).nbytes} bytes, need {view.nbytes - 28}")
        try:
            self._aead.decrypt_into(view[:NONCE_LEN], view[NONCE_LEN:], aad, out)
        except InvalidTag:
            raise InvalidSealedData(f"record {index} failed authentication") from None

    def open_record_in_place(self, index: int, final: bool, record: Buffer) -> memoryview:
        """`open_record` where the record lies, in a writable buffer: its plaintext is
        decrypted over its ciphertext and returned as a view of `record`
        ([NONCE_LEN : len - TAG_LEN]), so a read needs no second buffer. On failure
        that view may hold bytes that failed authentication: the caller must not use
        them."""
        view = _view(record)
        aad = self._opened_record_aad(index, final, view)
        plain = view[NONCE_LEN : view.nbytes - TAG_LEN]
        try:
            # GCM decrypts in place (the same buffer in and out), as it seals tail pieces.
            self._aead.decrypt_into(view[:NONCE_LEN], view[NONCE_LEN:], aad, plain)
        except InvalidTag:
            raise InvalidSealedData(f"record {index} failed authentication") from None
        return plain

    def _opened_record_aad(self, index: int, final: bool, view: memoryview) -> bytes:
        """The AAD of REC_index as stored in `view`, once its size is checked."""
        length = view.nbytes - RECORD_OVERHEAD
        if length < 0 or length > self._segment_size:
            raise SealedFormatError(f"record {index}: impossible size {view.nbytes}")
        if not final and length != self._segment_size:
            raise SealedFormatError(f"record {index}: non-final record is not a full segment")
        return self._record_aad(index, final, length)

    def seal_tail(self, segment: int, piece: int, start: int, plaintext: Buffer) -> bytes:
        """Seal bytes [start, start+len) of unfinished `segment` as tail piece `piece`."""
        out = bytearray(_view(plaintext).nbytes + RECORD_OVERHEAD)
        self.seal_tail_into(segment, piece, start, plaintext, out)
        return bytes(out)

    def seal_tail_into(
        self, segment: int, piece: int, start: int, plaintext: Buffer, out: Buffer
    ) -> None:
        """`seal_tail` written into `out` (len(plaintext) + 28 bytes)."""
        src, dst = _view(plaintext), _view(out)
        if start + src.nbytes > self._segment_size:
            raise ValueError(f"tail piece runs past the end of segment {segment}")
        if dst.nbytes != src.nbytes + RECORD_OVERHEAD:
            raise ValueError(f"output buffer is {dst.nbytes} bytes, need {src.nbytes + 28}")
        aad = self._tail_aad(segment, piece, start, src.nbytes)
        nonce = self._fresh_nonce()
        dst[:NONCE_LEN] = nonce
        self._aead.encrypt_into(nonce, src, aad, dst[NONCE_LEN:])

    def seal_tail_in_place(self, segment: int, piece: int, start: int, room: Buffer) -> None:
        """`seal_tail_into` where the plaintext already lies in `room`, at
        [NONCE_LEN : len(room) - TAG_LEN]: sealed where it is, so a tail piece needs no
        second buffer. Both suites' GCM encrypt in place (the same buffer in and out)."""
        dst = _view(room)
        length = dst.nbytes - RECORD_OVERHEAD
        if length < 0:
            raise ValueError(f"room of {dst.nbytes} bytes holds no tail piece")
        if start + length > self._segment_size:
            raise ValueError(f"tail piece runs past the end of segment {segment}")
        aad = self._tail_aad(segment, piece, start, length)
        nonce = self._fresh_nonce()
        dst[:NONCE_LEN] = nonce
        self._aead.encrypt_into(nonce, dst[NONCE_LEN : NONCE_LEN + length], aad, dst[NONCE_LEN:])

    def open_tail(self, segment: int, piece: int, start: int, data: Buffer) -> bytes:
        """Authenticate and decrypt a tail piece; raises InvalidSealedData on any failure."""
        out = bytearray(max(_view(data).nbytes - RECORD_OVERHEAD, 0))
        self.open_tail_into(segment, piece, start, data, out)
        return bytes(out)

    def open_tail_into(
        self, segment: int, piece: int, start: int, data: Buffer, out: Buffer
    ) -> None:
        """`open_tail` written into `out` (len(data) - 28 bytes). On failure `out` may
        hold bytes that failed authentication: the caller must not use them."""
        view = _view(data)
        length = view.nbytes - RECORD_OVERHEAD
        if length < 0:
            raise SealedFormatError(f"tail piece {segment}/{piece}: only {view.nbytes} bytes")
        if start + length > self._segment_size:
            raise SealedFormatError(f"tail piece {segment}/{piece} runs past its segment")
        if _view(out).nbytes != length:
            raise ValueError(f"output buffer is {_view(out).nbytes} bytes, need {length}")
        aad = self._tail_aad(segment, piece, start, length)
        try:
            self._aead.decrypt_into(view[:NONCE_LEN], view[NONCE_LEN:], aad, out)
        except InvalidTag:
            raise InvalidSealedData(f"tail piece {segment}/{piece} failed authentication") from None

    def seal_value(self, name: str, plaintext: Buffer) -> bytes:
        """Seal a small value that describes the object (metadata, a digest) under `name`."""
        nonce = self._fresh_nonce()
        return nonce + self._values.encrypt(nonce, _view(plaintext), self._value_aad(name))

    def open_value(self, name: str, data: Buffer) -> bytes:
        """Authenticate and decrypt a value sealed under `name` for this object."""
        view = _view(data)
        if view.nbytes < RECORD_OVERHEAD:
            raise SealedFormatError(f"sealed value {name!r}: only {view.nbytes} bytes")
        try:
            return self._values.decrypt(view[:NONCE_LEN], view[NONCE_LEN:], self._value_aad(name))
        except InvalidTag:
            raise InvalidSealedData(f"sealed value {name!r} failed authentication") from None

    def keyed_digest(self, name: str, data: Buffer) -> bytes:
        """HMAC (the suite's hash) of `data` under this object's digest key, bound to `name`
        and the header: a digest that only a holder of the data key can recompute or test."""
        raw = self._value_aad(name)[len(FORMAT_LABEL) + len(b"/value") :]
        prefix = FORMAT_LABEL + b"/digest" + raw  # header_digest || u8(len(name)) || name
        mac = hmac.new(self._digest_key, prefix, self.suite.hash_name)
        mac.update(_view(data))
        return mac.digest()

    def _value_aad(self, name: str) -> bytes:
        raw = name.encode("ascii")
        if not _VALUE_NAME.fullmatch(raw):
            raise ValueError(f"value name {name!r} must match [a-z0-9_.-]{{1,64}}")
        return FORMAT_LABEL + b"/value" + self._digest + bytes([len(raw)]) + raw


def record_size(plaintext_len: int) -> int:
    return plaintext_len + RECORD_OVERHEAD


def record_offset(header_len: int, segment_size: int, index: int) -> int:
    """Byte offset of REC_index in the object; all records before it are full."""
    return header_len + index * (segment_size + RECORD_OVERHEAD)


def iter_records(
    header_len: int, segment_size: int, object_size: int
) -> Iterator[tuple[int, int, int, bool]]:
    """Yield (index, offset, size, final) for each record of an object of object_size bytes."""
    if not MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise SealedFormatError(f"impossible header length {header_len}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise SealedFormatError(f"impossible segment size {segment_size}")
    body = object_size - header_len
    if body < RECORD_OVERHEAD:
        # Even an empty upload has one (empty) final record.
        raise SealedFormatError(f"object of {object_size} bytes holds no complete record")
    stride = segment_size + RECORD_OVERHEAD
    full, rest = divmod(body, stride)
    if 0 < rest < RECORD_OVERHEAD:
        raise SealedFormatError(f"object ends {rest} bytes into a record")
    # A remainder of 0 means the last full record is the final one; otherwise the
    # remainder is a shorter (possibly empty) final record.
    count = full if rest == 0 else full + 1
    for index in range(count):
        final = index == count - 1
        size = rest if final and rest else stride
        yield index, header_len + index * stride, size, final


def object_layout(
    header: Header, header_len: int, object_size: int
) -> list[tuple[int, int, int, bool]]:
    """(index, offset, size, final) of each record of an object of object_size bytes,
    checked against the header's declared plaintext size (FORMAT.md, "Reading", steps
    6 and 7). The layout alone fixes the plaintext size: no need to decrypt anything."""
    layout = list(iter_records(header_len, header.segment_size, object_size))
    total = sum(size - RECORD_OVERHEAD for _, _, size, _ in layout)
    if not header.length_deferred and total != header.plaintext_size:
        raise SealedFormatError(
            f"header says {header.plaintext_size} plaintext bytes, records hold {total}"
        )
    return layout


def open_object(dek: bytes, data: Buffer) -> bytes:
    """Authenticate and decrypt a whole sealed object held in memory."""
    view = _view(data)
    hlen = header_length(view[:HEADER_PREFIX_LEN])
    if view.nbytes < hlen:
        raise SealedFormatError(f"object of {view.nbytes} bytes is shorter than its header")
    header = Header.decode(view[:hlen])
    sealer = Sealer(dek, header)
    layout = object_layout(header, hlen, view.nbytes)
    return b"".join(
        sealer.open_record(index, final, view[offset : offset + size])
        for index, offset, size, final in layout
    )
