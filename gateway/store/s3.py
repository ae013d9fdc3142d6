"""The S3 object store: DESIGN.md's layout in one bucket, through the `minio` client.

This is the only module that imports `minio`. Storage layout, under `PREFIX/` when the
store URL has one (`s3://BUCKET/PREFIX`), for an upload id U:

    U/data                    the sealed object (FORMAT.md), built as ONE multipart upload
                              with one record per part: part 1 = HEADER || REC_0,
                              part k = REC_{k-1}. S3 wants every part but the last to be
                              at least 5 MiB (MIN_PART_SIZE), so segments must be that big.
    U/tail/<segment>/<piece>  tail pieces: small objects, one PUT each
    U/manifest.json, U/manifest.jws

Integrity. Every part and every small object is sent with its SHA-256
(`x-amz-checksum-sha256`, base64 of the digest); multipart uploads are created with
`x-amz-checksum-algorithm: SHA256`, and completion lists each part's ETag and
ChecksumSHA256, as S3 requires for such uploads. The server refuses a part whose bytes do
not match (BadDigest). `put_part` therefore returns a *part token*,
`<etag>;sha256=<base64 digest>` (just `<etag>` when checksums are off), which the catalog
records and hands back in PartRef.etag at completion. Completion names each part by the
recorded ETag, so a part rewritten by a stale writer does not end up in the object: AWS S3
fails the completion (InvalidPart); SeaweedFS keeps every upload of a part number and
assembles the one whose ETag was recorded. Either way the object holds exactly the
recorded parts, or completion raises StoreUnavailable.

Checksums are `S3Settings.checksums`: "auto" (default) sends them, and if the server
refuses the checksum headers (InvalidRequest, InvalidArgument or NotImplemented on a
request that carried them) turns them off for this store and logs a warning; "on" sends
them and fails if refused; "off" never sends them. `S3Store.checksums_verified` says
whether the server confirmed them (it echoes `x-amz-checksum-sha256` when it checked the
digest, as SeaweedFS 4.x and AWS do): None before the first write, then True or False.

Errors. Transient failures (connection refused or reset, timeouts, HTTP 5xx, SlowDown)
are retried with exponential backoff within `retry_seconds`, then raise StoreUnavailable;
so does any other refusal (access denied, missing bucket, bad digest). A missing key
raises ObjectNotFound. The HTTP pool holds `pool_size` connections (the service's I/O
thread pool size); the minio client is thread-safe.

Copies. minio sends a `bytes` body as it is, and urllib3 sends any buffer without copying,
so a one-chunk part (every part but the first) goes out as a memoryview of the caller's
buffer, with no copy. Part 1 (a ~120-byte header and an 8 MiB record) is joined: one
memcpy, about 1 ms for 8 MiB (measured), against ~5 ms for the SHA-256 that minio
computes anyway to sign a plain-HTTP request, or ~11 ms for the Content-MD5 it computes
over HTTPS (where it signs UNSIGNED-PAYLOAD).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.datatypes import ListMultipartUploadsResult
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import SSLError as Urllib3SSLError

from gateway.layout import key_segments
from gateway.store.base import ObjectNotFound, PartRef, StoreUnavailable
from gateway.types import Buffer

_log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_PART_SIZE = 5 << 20  # S3: every part but the last is at least 5 MiB
_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_TOKEN_SHA256 = ";sha256="

Checksums = Literal["auto", "on", "off"]


# --- The minio calls this module depends on -----------------------------------------
# Public: bucket_exists, make_bucket, get_object, stat_object, remove_object,
# list_objects, remove_objects. Multipart uploads are private API in minio 7.2 (the
# public put_object hides them), so pyproject pins minio to >=7.2.20,<7.3. Each private
# call is made in one small function below, and tests/test_store_s3.py runs them all
# against a real server:
#   _create_multipart_upload, _abort_multipart_upload, _list_multipart_uploads;
#   _put_object for UploadPart (query partNumber/uploadId: what minio's _upload_part
#     does, but we need the response headers to see the checksum echo) and for PutObject
#     (the public put_object copies the body and goes multipart above 5 MiB);
#   _execute for CompleteMultipartUpload, with our own XML: minio's
#     _complete_multipart_upload cannot send the per-part ChecksumSHA256.


class _Minio(Minio):
    """minio's client, told to reuse a payload SHA-256 we already computed.

    Over plain HTTP, SigV4 signs the payload's SHA-256 and minio hashes every body
    for it; the gateway hashes each part anyway (for its checksum and the manifest),
    so a part sent with `x-amz-content-sha256` is signed with that digest instead of
    being hashed a second time. `_build_headers` is private API (minio is pinned).
    """

    def _build_headers(
        self,
        host: str,
        headers: dict[str, Any] | None = None,
        body: bytes | None = None,
        creds: Any = None,
    ) -> tuple[dict[str, Any], Any]:
        known = (headers or {}).get("x-amz-content-sha256")
        if known is None or body is None or self._base_url.is_https:
            return super()._build_headers(host, headers, body, creds)
        built, date = super()._build_headers(host, headers, None, creds)
        built["Content-Length"] = str(len(body))
        built["x-amz-content-sha256"] = known
        return built, date


def _mp_create(client: Minio, bucket: str, key: str, headers: dict[str, str]) -> str:
    return client._create_multipart_upload(bucket, key, dict(headers))


def _mp_put(
    client: Minio,
    bucket: str,
    key: str,
    body: Buffer,
    headers: dict[str, str],
    query: dict[str, str] | None = None,
) -> tuple[str, Mapping[str, str]]:
    """PutObject (no query) or UploadPart; returns the ETag and the response headers.

    The body may be any contiguous byte buffer: minio only takes len() and hashes it,
    and urllib3 sends buffers as they are, so no copy is made.
    """
    result = client._put_object(
        bucket, key, cast(bytes, body), dict(headers), query_params=dict(query) if query else None
    )
    return cast(str, result.etag), cast(Mapping[str, str], result.http_headers)


def _mp_complete(client: Minio, bucket: str, key: str, upload_id: str, body: bytes) -> bytes:
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    response = client._execute(
        "POST",
        bucket,
        key,
        body=body,
        headers={"Content-Type": "application/xml", "Content-MD5": md5},
        query_params={"uploadId": upload_id},
    )
    return bytes(response.data)


def _mp_abort(client: Minio, bucket: str, key: str, upload_id: str) -> None:
    client._abort_multipart_upload(bucket, key, upload_id)


def _mp_list(
    client: Minio, bucket: str, prefix: str, key_marker: str | None, upload_id_marker: str | None
) -> ListMultipartUploadsResult:
    return client._list_multipart_uploads(
        bucket, prefix=prefix, key_marker=key_marker, upload_id_marker=upload_id_marker
    )


# --- Settings and store URLs ---------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    endpoint: str  # "127.0.0.1:8333", or with a scheme: "https://s3.example" (sets secure)
    bucket: str
    prefix: str = ""  # keys are prefix + "/" + key when prefix is non-empty
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    secure: bool = False
    verify_tls: bool = True
    ca_file: str | None = None
    create_bucket: bool = True
    retry_seconds: float = 5.0
    pool_size: int = 16
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    checksums: Checksums = "auto"


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def check_bucket_name(bucket: str) -> None:
    """Raise ValueError unless `bucket` follows S3's bucket naming rules."""
    problem = None
    if not _BUCKET_RE.fullmatch(bucket):
        problem = (
            "must be 3-63 characters of lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    elif ".." in bucket or ".-" in bucket or "-." in bucket:
        problem = "must not contain '..', '.-' or '-.'"
    elif bucket.startswith(_BUCKET_BAD_PREFIXES) or bucket.endswith(_BUCKET_BAD_SUFFIXES):
        problem = "uses a prefix or suffix that S3 reserves"
    else:
        with contextlib.suppress(ValueError):
            ipaddress.IPv4Address(bucket)
            problem = "must not look like an IP address"
    if problem:
        raise ValueError(f"invalid S3 bucket name {bucket!r}: {problem}")


def _check_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if prefix:
        segments = prefix.split("/")
        if any(s in ("", ".", "..") for s in segments) or any(
            ord(c) < 0x20 or c == "\x7f" for c in prefix
        ):
            raise ValueError(
                f"invalid S3 key prefix {prefix!r}: no empty, '.' or '..' segments, "
                "no control characters"
            )
        if len(prefix.encode()) > 512:
            raise ValueError("invalid S3 key prefix: longer than 512 bytes")
    return prefix


def parse_store_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET[/PREFIX]` -> (bucket, prefix); ValueError with the reason otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "s3":
        raise ValueError(f"invalid store URL {url!r}: expected s3://BUCKET[/PREFIX]")
    if "?" in rest or "#" in rest:
        raise ValueError(f"invalid store URL {url!r}: no query or fragment allowed")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"invalid store URL {url!r}: the bucket name is missing")
    if "@" in bucket or ":" in bucket:
        raise ValueError(
            f"invalid store URL {url!r}: the endpoint and credentials are separate settings"
        )
    check_bucket_name(bucket)
    return bucket, _check_prefix(prefix)


def _split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """An endpoint "host:port" keeps `secure`; "http(s)://host:port" sets it."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"invalid S3 endpoint {endpoint!r}: scheme must be http or https")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"invalid S3 endpoint {endpoint!r}: only scheme://host[:port]")
        endpoint, secure = parts.netloc, parts.scheme == "https"
    if not endpoint or "/" in endpoint:
        raise ValueError(f"invalid S3 endpoint {endpoint!r}: expected host[:port]")
    return endpoint, secure


# --- Errors --------------------------------------------------------------------------

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "OperationAborted",
    }
)
# Codes a server gives when it does not take the checksum headers.
_CHECKSUM_REFUSED_CODES = frozenset({"InvalidRequest", "InvalidArgument", "NotImplemented"})


class _TransientCompletionError(Exception):
    """CompleteMultipartUpload answered 200 with a retryable <Error> body."""


_STORE_ERRORS = (MinioException, Urllib3HTTPError, OSError, _TransientCompletionError)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, Urllib3SSLError):
        return False  # a certificate problem does not heal by retrying
    if isinstance(exc, (Urllib3HTTPError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, _TransientCompletionError):
        return True
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        return int(getattr(exc, "_code", 0) or 0) >= 500
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES or exc.response.status >= 500
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, ServerError):
        return f"HTTP {exc.status_code}"
    return f"{type(exc).__name__}: {exc}"


def _code(exc: BaseException | None) -> str | None:
    return exc.code if isinstance(exc, S3Error) else None


# --- The store -----------------------------------------------------------------------


class S3Store:
    """ObjectStore on an S3 bucket: multipart uploads for sealed objects, PUTs for the rest."""

    def __init__(self, settings: S3Settings, *, http: urllib3.PoolManager | None = None) -> None:
        """`http`: the connection pool to send requests through (tests inject faults
        there); by default one built from the settings."""
        check_bucket_name(settings.bucket)
        if settings.checksums not in ("auto", "on", "off"):
            raise ValueError(f"checksums must be auto, on or off, not {settings.checksums!r}")
        if settings.pool_size < 1 or settings.retry_seconds < 0:
            raise ValueError("pool_size must be >= 1 and retry_seconds >= 0")
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = _check_prefix(settings.prefix)
        host, secure = _split_endpoint(settings.endpoint, settings.secure)
        self._send_checksums = settings.checksums != "off"
        self.checksums_verified: bool | None = None
        self._http = http or urllib3.PoolManager(
            maxsize=settings.pool_size,
            block=False,
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
            retries=False,  # we retry, within retry_seconds (see _run)
            cert_reqs="CERT_REQUIRED" if settings.verify_tls else "CERT_NONE",
            ca_certs=settings.ca_file,
        )
        self._client = _Minio(
            host,
            access_key=settings.access_key or None,
            secret_key=settings.secret_key or None,
            secure=secure,
            region=settings.region,
            http_client=self._http,
        )
        if settings.create_bucket:
            self._ensure_bucket()

    def close(self) -> None:
        self._http.clear()

    # -- keys

    def _key(self, key: str) -> str:
        key_segments(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- retries

    def _run(self, what: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying transient failures until retry_seconds have passed."""
        deadline = time.monotonic() + self.settings.retry_seconds
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except (ObjectNotFound, StoreUnavailable, ValueError):
                raise
            except Exception as exc:
                if not isinstance(exc, _STORE_ERRORS):
                    raise
                if not _is_transient(exc):
                    raise StoreUnavailable(f"S3 {what} failed: {_describe(exc)}") from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailable(
                        f"S3 {what} failed after {attempt} attempts: {_describe(exc)}"
                    ) from exc
                _log.info("S3 %s: %s; retrying (attempt %d)", what, _describe(exc), attempt)
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 2.0)

    def _with_checksums(self, what: str, call: Callable[[bool], T]) -> T:
        """Run `call(send_checksums)`; in "auto" mode, drop checksums if the server refuses."""
        send = self._send_checksums
        try:
            return self._run(what, lambda: call(send))
        except StoreUnavailable as exc:
            refused = _code(exc.__cause__) in _CHECKSUM_REFUSED_CODES
            if not (send and refused and self.settings.checksums == "auto"):
                raise
        result = self._run(what, lambda: call(False))  # raises if that was not the reason
        _log.warning(
            "S3 server refused the SHA-256 checksum headers (%s); sending none from now on",
            what,
        )
        self._send_checksums = False
        return result

    def _note_checksum_echo(self, headers: Mapping[str, str], sent: str) -> None:
        echo = headers.get("x-amz-checksum-sha256")
        if echo is None:
            if self.checksums_verified is None:
                _log.warning("S3 server does not confirm SHA-256 checksums; it may ignore them")
                self.checksums_verified = False
        elif echo != sent:
            raise StoreUnavailable("S3 server computed a different SHA-256 than we sent")
        else:
            self.checksums_verified = True

    # -- bucket

    def _ensure_bucket(self) -> None:
        def ensure() -> None:
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket, location=self.settings.region)
                _log.info("created S3 bucket %s", self.bucket)
            except S3Error as exc:
                # Someone (another gateway) created it between our two calls.
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
                if not self._client.bucket_exists(self.bucket):
                    raise

        self._run(f"create bucket {self.bucket}", ensure)

    def check(self) -> None:
        """One cheap request (HeadBucket), no retries: for /readyz."""
        try:
            exists = self._client.bucket_exists(self.bucket)
        except Exception as exc:
            if not isinstance(exc, (MinioException, Urllib3HTTPError, OSError)):
                raise
            raise StoreUnavailable(f"S3 is not usable: {_describe(exc)}") from exc
        if not exists:
            raise StoreUnavailable(f"S3 bucket {self.bucket} does not exist")

    # -- multipart

    def start_multipart(self, key: str) -> str:
        name = self._key(key)

        def create(send: bool) -> str:
            headers = {"Content-Type": "application/octet-stream"}
            if send:
                headers["x-amz-checksum-algorithm"] = "SHA256"
            return _mp_create(self._client, self.bucket, name, headers)

        return self._with_checksums(f"create multipart {key}", create)

    def put_part(
        self,
        key: str,
        multipart_id: str,
        number: int,
        offset: int,
        chunks: Sequence[Buffer],
        sha256: bytes,
    ) -> str:
        # No fence: completion names each part by its recorded ETag.
        name = self._key(key)
        if not 1 <= number <= 10_000:
            raise ValueError(f"part number {number} is outside 1..10000")
        body = _one_buffer(chunks)
        digest = base64.b64encode(sha256).decode()
        query = {"partNumber": str(number), "uploadId": multipart_id}

        def upload(send: bool) -> tuple[str, bool]:
            request = {**_checksum_headers(digest, send), "x-amz-content-sha256": sha256.hex()}
            etag, headers = _mp_put(self._client, self.bucket, name, body, request, query)
            if send:
                self._note_checksum_echo(headers, digest)
            return etag, send

        etag, sent = self._with_checksums(f"upload part {number} of {key}", upload)
        if not etag:
            raise StoreUnavailable(f"S3 returned no ETag for part {number} of {key}")
        return f"{etag}{_TOKEN_SHA256}{digest}" if sent else etag

    def complete_multipart(self, key: str, multipart_id: str, parts: Sequence[PartRef]) -> None:
        name = self._key(key)
        ordered = sorted(parts, key=lambda p: p.number)
        expected_end = 0
        for part in ordered:
            if part.offset != expected_end:
                raise StoreUnavailable(f"part {part.number} does not follow its neighbour")
            expected_end = part.offset + part.size
        body = _completion_xml(ordered)

        def complete() -> None:
            answer = _mp_complete(self._client, self.bucket, name, multipart_id, body)
            # S3 may answer 200 and still fail, with an <Error> body.
            try:
                root = ET.fromstring(answer) if answer.strip() else None
            except ET.ParseError as exc:
                raise StoreUnavailable(f"S3 complete {key}: unreadable answer") from exc
            if root is not None and root.tag.rsplit("}", 1)[-1] == "Error":
                code = root.findtext("Code") or "InternalError"
                if code in _TRANSIENT_CODES:
                    raise _TransientCompletionError(code)
                raise StoreUnavailable(f"S3 complete {key} failed: {code}")

        try:
            self._run(f"complete {key}", complete)
        except StoreUnavailable as exc:
            if _code(exc.__cause__) == "NoSuchUpload" and self._already_completed(
                name, ordered, expected_end
            ):
                return  # completed before (by us, or a retry that lost its answer)
            if _code(exc.__cause__) in ("InvalidPart", "InvalidPartOrder", "BadDigest"):
                raise StoreUnavailable(
                    f"S3 complete {key}: a stored part differs from the recorded one "
                    f"({_code(exc.__cause__)})"
                ) from exc
            raise

    def _already_completed(self, name: str, parts: Sequence[PartRef], size: int) -> bool:
        try:
            stat = self._run("stat", lambda: self._client.stat_object(self.bucket, name))
        except StoreUnavailable:
            return False
        expected = _multipart_etag(parts)
        if expected is not None and stat.etag is not None:
            return stat.etag.strip('"') == expected
        return stat.size == size

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        name = self._key(key)
        try:
            self._run(
                f"abort multipart {key}",
                lambda: _mp_abort(self._client, self.bucket, name, multipart_id),
            )
        except StoreUnavailable as exc:
            if _code(exc.__cause__) != "NoSuchUpload":
                raise

    # -- small objects

    def put(self, key: str, data: Buffer, *, fresh: bool = False) -> None:
        """PutObject: S3 shows an object whole or not at all, fresh or not."""
        name = self._key(key)
        body = _as_bytes_like(data)
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()

        def upload(send: bool) -> None:
            _, headers = _mp_put(
                self._client,
                self.bucket,
                name,
                body,
                {"Content-Type": "application/octet-stream", **_checksum_headers(digest, send)},
            )
            if send:
                self._note_checksum_echo(headers, digest)

        self._with_checksums(f"put {key}", upload)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        name = self._key(key)
        if start < 0 or (length is not None and length < 0):
            raise ValueError("start and length must not be negative")
        if length == 0:
            self.size(key)  # ObjectNotFound for a missing key, like a full read
            return b""

        def read() -> bytes:
            try:
                response = self._client.get_object(
                    self.bucket, name, offset=start, length=length or 0
                )
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    raise ObjectNotFound(key) from exc
                if exc.code == "InvalidRange":
                    return b""  # start at or past the end, like reading a file there
                raise
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return self._run(f"get {key}", read)

    def size(self, key: str) -> int:
        name = self._key(key)

        def stat() -> int:
            try:
                return int(self._client.stat_object(self.bucket, name).size or 0)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                    raise ObjectNotFound(key) from exc
                raise

        return self._run(f"stat {key}", stat)

    def delete(self, key: str) -> None:
        name = self._key(key)
        self._run(f"delete {key}", lambda: self._client.remove_object(self.bucket, name))

    def delete_prefix(self, prefix: str) -> None:
        """Abort the multipart uploads under `prefix`, then delete its objects (batches)."""
        folder = self._key(prefix.rstrip("/")) + "/"
        self._run(f"abort uploads under {prefix}", lambda: self._abort_uploads(folder))
        self._run(f"delete {prefix}", lambda: self._delete_objects(folder))

    def _abort_uploads(self, folder: str) -> None:
        key_marker: str | None = None
        upload_marker: str | None = None
        for _ in range(10_000):  # a bound, not a limit we expect to meet
            page = _mp_list(self._client, self.bucket, folder, key_marker, upload_marker)
            for upload in page.uploads:
                if upload.upload_id and upload.object_name.startswith(folder):
                    try:
                        _mp_abort(self._client, self.bucket, upload.object_name, upload.upload_id)
                    except S3Error as exc:
                        if exc.code != "NoSuchUpload":  # gone already is fine
                            raise
            if not page.is_truncated or not page.uploads:
                return
            # (minio 7.2 drops NextUploadIdMarker; the last entry is the same marker)
            key_marker = page.uploads[-1].object_name
            upload_marker = page.uploads[-1].upload_id

    def _delete_objects(self, folder: str) -> None:
        names: Iterator[str] = (
            str(obj.object_name)
            for obj in self._client.list_objects(self.bucket, prefix=folder, recursive=True)
            if obj.object_name and not obj.is_dir
        )
        errors = [
            error
            for error in self._client.remove_objects(self.bucket, (DeleteObject(n) for n in names))
            if error.code not in ("NoSuchKey", "NoSuchObject")
        ]
        if errors:
            first = errors[0]
            raise StoreUnavailable(
                f"S3 could not delete {len(errors)} objects, e.g. {first.name}: {first.code}"
            )


# --- Helpers -------------------------------------------------------------------------


def _checksum_headers(digest: str, send: bool) -> dict[str, str]:
    if not send:
        return {}
    return {"x-amz-checksum-sha256": digest, "x-amz-sdk-checksum-algorithm": "SHA256"}


def _as_bytes_like(data: Buffer) -> Buffer:
    """A contiguous byte view of `data` (bytes stay bytes), without copying."""
    if isinstance(data, bytes):
        return data
    view = memoryview(data)
    if not view.c_contiguous:
        return view.tobytes()
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _one_buffer(chunks: Sequence[Buffer]) -> Buffer:
    """The part body: the single chunk as it is, or (part 1) the chunks joined."""
    if len(chunks) == 1:
        return _as_bytes_like(chunks[0])
    return b"".join(chunks)


def _parse_token(token: str) -> tuple[str, str | None]:
    """A part token -> (ETag, base64 SHA-256 or None)."""
    etag, sep, digest = token.partition(_TOKEN_SHA256)
    return etag.strip('"'), (digest if sep and digest else None)


def _completion_xml(parts: Sequence[PartRef]) -> bytes:
    root = ET.Element("CompleteMultipartUpload", xmlns=_S3_NS)
    for part in parts:
        etag, digest = _parse_token(part.etag)
        element = ET.SubElement(root, "Part")
        ET.SubElement(element, "PartNumber").text = str(part.number)
        ET.SubElement(element, "ETag").text = f'"{etag}"'
        if digest:
            ET.SubElement(element, "ChecksumSHA256").text = digest
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=False))


def _multipart_etag(parts: Sequence[PartRef]) -> str | None:
    """S3's ETag of a completed multipart object: MD5 of the parts' MD5s, "-N"."""
    md5s = bytearray()
    for part in parts:
        etag, _ = _parse_token(part.etag)
        if not re.fullmatch(r"[0-9a-fA-F]{32}", etag):
            return None  # not an MD5 (SSE-KMS, some servers): cannot predict it
        md5s += bytes.fromhex(etag)
    return f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(parts)}"
