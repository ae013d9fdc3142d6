"""The S3 store against a real SeaweedFS: the folder store's tests, plus S3's own cases."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest
from minio.error import ServerError
from urllib3.exceptions import NewConnectionError

from gateway.store.base import ObjectNotFound, PartRef, StoreUnavailable
from gateway.store.s3 import S3Settings, S3Store, _is_transient, parse_store_url
from gateway.types import Buffer
from tests.server import free_port

if TYPE_CHECKING:
    from tests.s3server import SeaweedS3

MiB = 1 << 20


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def settings(server: SeaweedS3, bucket: str | None = None, **overrides: object) -> S3Settings:
    values: dict[str, object] = {
        "endpoint": server.endpoint,
        "bucket": bucket or server.fresh_bucket(),
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "retry_seconds": 2.0,
    }
    values.update(overrides)
    return S3Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(s3_server: SeaweedS3) -> Iterator[S3Store]:
    s = S3Store(settings(s3_server))
    yield s
    s.close()


def pending_uploads(server: SeaweedS3, bucket: str, prefix: str) -> list[str]:
    result = server.client()._list_multipart_uploads(bucket, prefix=prefix)
    return [u.object_name for u in result.uploads]


def listed(server: SeaweedS3, bucket: str, prefix: str = "") -> list[str]:
    objects = server.client().list_objects(bucket, prefix=prefix, recursive=True)
    return sorted(o.object_name for o in objects if not o.is_dir)


def test_put_get_ranges_and_delete(store: S3Store, s3_server: SeaweedS3) -> None:
    store.put("U/tail/0/0", b"0123456789")
    assert store.get("U/tail/0/0") == b"0123456789"
    assert store.get("U/tail/0/0", 3, 4) == b"3456"
    assert store.get("U/tail/0/0", 7) == b"789"
    assert store.get("U/tail/0/0", 8, 100) == b"89"
    assert store.get("U/tail/0/0", 10) == b""  # at the end, like a file
    assert store.get("U/tail/0/0", 2, 0) == b""
    assert store.size("U/tail/0/0") == 10
    store.put("U/tail/0/0", memoryview(bytearray(b"new")))  # replaced; any buffer
    assert store.get("U/tail/0/0") == b"new"
    store.put("U/empty", b"")
    assert store.get("U/empty") == b""
    assert store.size("U/empty") == 0
    store.delete("U/empty")
    assert listed(s3_server, store.bucket) == ["U/tail/0/0"]
    store.delete("U/tail/0/0")
    store.delete("U/tail/0/0")  # missing is fine
    with pytest.raises(ObjectNotFound):
        store.get("U/tail/0/0")
    with pytest.raises(ObjectNotFound):
        store.get("U/tail/0/0", 2, 3)
    with pytest.raises(ObjectNotFound):
        store.size("U/tail/0/0")
    assert store.checksums_verified is True  # SeaweedFS checks and echoes the SHA-256


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "U/../../x", "U//data", "U/./data"])
def test_bad_keys_are_refused(store: S3Store, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")


def write_parts(store: S3Store, key: str, mid: str, parts: list[bytes]) -> list[PartRef]:
    """Parts arrive out of order and concurrently; part 1 comes in two chunks."""

    def put(number: int) -> PartRef:
        data = parts[number - 1]
        start = sum(len(p) for p in parts[: number - 1])
        chunks: list[Buffer] = (
            [data[:5], memoryview(data)[5:]] if number == 1 else [memoryview(data)]
        )
        etag = store.put_part(key, mid, number, start, chunks, sha(data))
        return PartRef(number, start, len(data), etag)

    with ThreadPoolExecutor(4) as pool:
        refs = list(pool.map(put, reversed(range(1, len(parts) + 1))))
    return sorted(refs, key=lambda r: r.number)


def test_multipart_assembles_in_order(store: S3Store) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(10)]
    mid = store.start_multipart("U/data")
    refs = write_parts(store, "U/data", mid, parts)
    assert all(";sha256=" in r.etag for r in refs)  # the token carries the checksum
    with pytest.raises(ObjectNotFound):
        store.get("U/data")  # invisible until completed
    store.complete_multipart("U/data", mid, refs)
    whole = b"".join(parts)
    assert store.size("U/data") == len(whole)
    assert store.get("U/data") == whole
    # Ranged reads, across a part boundary too.
    assert store.get("U/data", 5 * MiB - 3, 6) == whole[5 * MiB - 3 : 5 * MiB + 3]
    assert store.get("U/data", 10 * MiB) == parts[2]
    store.complete_multipart("U/data", mid, refs)  # completing again is harmless


def test_a_single_small_part_is_a_whole_object(store: S3Store) -> None:
    # An empty upload is HEADER || REC_0: one part, far below 5 MiB.
    data = os.urandom(133)
    mid = store.start_multipart("E/data")
    ref = PartRef(1, 0, len(data), store.put_part("E/data", mid, 1, 0, [data], sha(data)))
    store.complete_multipart("E/data", mid, [ref])
    assert store.get("E/data") == data


def test_a_stale_part_never_reaches_the_object(store: S3Store) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    mid = store.start_multipart("U/data")
    refs = write_parts(store, "U/data", mid, parts)
    stale = os.urandom(1000)  # a writer that lost its lease rewrites part 2
    store.put_part("U/data", mid, 2, 5 * MiB, [stale], sha(stale))
    try:
        store.complete_multipart("U/data", mid, refs)
    except StoreUnavailable:
        return  # AWS S3: the part's ETag differs from the recorded one (InvalidPart)
    # SeaweedFS keeps each upload of a part and assembles the one whose ETag was recorded.
    assert store.get("U/data") == b"".join(parts)


def test_completion_with_an_unknown_etag_fails(store: S3Store) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    mid = store.start_multipart("U/data")
    refs = write_parts(store, "U/data", mid, parts)
    forged = PartRef(2, refs[1].offset, refs[1].size, "0" * 32 + refs[1].etag[32:])
    with pytest.raises(StoreUnavailable):
        store.complete_multipart("U/data", mid, [refs[0], forged])
    with pytest.raises(ObjectNotFound):
        store.get("U/data")
    gap = PartRef(2, refs[1].offset + 1, refs[1].size, refs[1].etag)
    with pytest.raises(StoreUnavailable, match="does not follow"):
        store.complete_multipart("U/data", mid, [refs[0], gap])
    store.complete_multipart("U/data", mid, refs)  # the recorded parts still complete
    assert store.get("U/data") == b"".join(parts)


def test_a_part_that_does_not_match_its_sha256_is_refused(store: S3Store) -> None:
    mid = store.start_multipart("U/data")
    data = os.urandom(1000)
    with pytest.raises(StoreUnavailable, match="BadDigest"):
        store.put_part("U/data", mid, 1, 0, [data], sha(b"something else"))
    store.put_part("U/data", mid, 1, 0, [data], sha(data))
    assert store.checksums_verified is True


def test_checksums_off_still_completes(s3_server: SeaweedS3) -> None:
    store = S3Store(settings(s3_server, checksums="off"))
    parts = [os.urandom(5 * MiB), os.urandom(10)]
    mid = store.start_multipart("U/data")
    refs = write_parts(store, "U/data", mid, parts)
    assert not any(";sha256=" in r.etag for r in refs)
    store.complete_multipart("U/data", mid, refs)
    assert store.get("U/data") == b"".join(parts)
    assert store.checksums_verified is None


def test_abort_and_delete_prefix(store: S3Store, s3_server: SeaweedS3) -> None:
    mid = store.start_multipart("U/data")
    store.put_part("U/data", mid, 1, 0, [b"abc"], sha(b"abc"))
    store.abort_multipart("U/data", mid)
    store.abort_multipart("U/data", mid)  # twice is fine
    assert pending_uploads(s3_server, store.bucket, "U/") == []
    with pytest.raises(StoreUnavailable):
        store.put_part("U/data", mid, 1, 0, [b"abc"], sha(b"abc"))

    # delete_prefix removes the objects and the unfinished multipart upload, nothing else.
    mid = store.start_multipart("U/data")
    store.put_part("U/data", mid, 1, 0, [b"abc"], sha(b"abc"))
    for name in ("U/tail/3/1", "U/tail/3/2", "U/manifest.json", "UV/data", "V/tail/0/0"):
        store.put(name, b"x")
    store.delete_prefix("U/")
    assert listed(s3_server, store.bucket) == ["UV/data", "V/tail/0/0"]
    assert pending_uploads(s3_server, store.bucket, "U/") == []
    store.delete_prefix("U/")  # twice is fine


def test_many_objects_under_a_prefix_are_deleted_in_batches(store: S3Store) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put(f"U/tail/{i // 100}/{i % 100}", b"."), range(1100)))
    store.delete_prefix("U")
    with pytest.raises(ObjectNotFound):
        store.get("U/tail/10/99")


def test_keys_live_under_the_prefix(s3_server: SeaweedS3) -> None:
    bucket, prefix = parse_store_url(f"s3://{s3_server.fresh_bucket()}/gw/objects/")
    store = S3Store(settings(s3_server, bucket, prefix=prefix))
    store.put("U/tail/0/0", b"x")
    mid = store.start_multipart("U/data")
    store.put_part("U/data", mid, 1, 0, [b"abc"], sha(b"abc"))
    assert pending_uploads(s3_server, bucket, "gw/objects/U/") == ["gw/objects/U/data"]
    assert listed(s3_server, bucket) == ["gw/objects/U/tail/0/0"]
    store.delete_prefix("U/")
    assert listed(s3_server, bucket) == []
    assert pending_uploads(s3_server, bucket, "gw/") == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("S3://my.bucket-1/a/b/", ("my.bucket-1", "a/b")),
        ("s3://abc/gateway", ("abc", "gateway")),
    ],
)
def test_parse_store_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_store_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("bucket", "expected s3://"),
        ("https://bucket/x", "expected s3://"),
        ("s3://", "missing"),
        ("s3:///prefix", "missing"),
        ("s3://ab", "3-63 characters"),
        ("s3://" + "a" * 64, "3-63 characters"),
        ("s3://Bucket", "lowercase"),
        ("s3://bucket_1", "lowercase"),
        ("s3://-bucket", "starting and ending"),
        ("s3://bucket-", "starting and ending"),
        ("s3://a..b", "'..'"),
        ("s3://a.-b", "'.-'"),
        ("s3://192.168.1.1", "IP address"),
        ("s3://xn--bucket", "reserves"),
        ("s3://bucket-s3alias", "reserves"),
        ("s3://key:secret@bucket", "separate settings"),
        ("s3://bucket?x=1", "query"),
        ("s3://bucket/a//b", "segments"),
        ("s3://bucket/a/../b", "segments"),
    ],
)
def test_parse_store_url_refuses(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_store_url(url)


def test_the_bucket_is_created_once_even_by_racing_stores(s3_server: SeaweedS3) -> None:
    bucket = s3_server.fresh_bucket()
    assert not s3_server.client().bucket_exists(bucket)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def make() -> None:
        barrier.wait()
        try:
            S3Store(settings(s3_server, bucket)).check()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert s3_server.client().bucket_exists(bucket)


def test_a_missing_bucket_that_may_not_be_created(s3_server: SeaweedS3) -> None:
    store = S3Store(settings(s3_server, create_bucket=False))
    with pytest.raises(StoreUnavailable, match="does not exist"):
        store.check()


def test_wrong_credentials(s3_server: SeaweedS3) -> None:
    bucket = s3_server.fresh_bucket()
    S3Store(settings(s3_server, bucket)).check()
    store = S3Store(settings(s3_server, bucket, secret_key="wrong", create_bucket=False))
    with pytest.raises(StoreUnavailable):
        store.check()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"AccessDenied|SignatureDoesNotMatch"):
        store.put("U/tail/0/0", b"x")
    assert time.monotonic() - started < 1.5  # a refusal is not retried
    with pytest.raises(StoreUnavailable):
        S3Store(settings(s3_server, bucket, access_key="nobody"))


def test_endpoint_with_a_scheme(s3_server: SeaweedS3) -> None:
    store = S3Store(settings(s3_server, endpoint=f"http://{s3_server.endpoint}"))
    store.put("k", b"v")
    assert store.get("k") == b"v"
    with pytest.raises(ValueError, match="endpoint"):
        S3Store(settings(s3_server, endpoint=f"http://{s3_server.endpoint}/path"))
    with pytest.raises(ValueError, match="endpoint"):
        S3Store(settings(s3_server, endpoint=f"ftp://{s3_server.endpoint}"))


def test_what_is_retried() -> None:
    assert _is_transient(ServerError("busy", 503))
    assert not _is_transient(ServerError("refused", 400))
    assert _is_transient(NewConnectionError(None, "refused"))  # type: ignore[arg-type]
    assert not _is_transient(ValueError("a bug"))


class FlakyS3(BaseHTTPRequestHandler):
    """Answers `failures` requests with 503 SlowDown, then PUTs with 200 and an ETag."""

    failures = 2
    seen = 0

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).seen += 1
        if type(self).seen <= self.failures:
            body = b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
        else:
            body = b""
            self.send_response(200)
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("failures", [2, 1000])
def test_slowdown_is_retried_within_the_budget(failures: int) -> None:
    class Handler(FlakyS3):
        pass

    Handler.failures, Handler.seen = failures, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = S3Store(
            S3Settings(
                endpoint=f"127.0.0.1:{server.server_address[1]}",
                bucket="flaky",
                access_key="k",
                secret_key="s",
                create_bucket=False,
                retry_seconds=1.0,
            )
        )
        started = time.monotonic()
        if failures > 10:
            with pytest.raises(StoreUnavailable, match="SlowDown"):
                store.put("k", b"v")
            assert 1.0 <= time.monotonic() - started < 3.0
            assert 3 <= Handler.seen <= 10
        else:
            store.put("k", b"v")
            assert Handler.seen == failures + 1
            assert store.checksums_verified is False  # this server echoes no checksum
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_listening_gives_store_unavailable_within_the_budget() -> None:
    port = free_port()
    store = S3Store(
        S3Settings(
            endpoint=f"127.0.0.1:{port}", bucket="nobody", create_bucket=False, retry_seconds=0.5
        )
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="attempts"):
        store.put("k", b"v")
    assert time.monotonic() - started < 2.0
    with pytest.raises(StoreUnavailable):
        store.check()


def test_a_restarted_server_is_used_again(s3_server: SeaweedS3) -> None:
    store = S3Store(settings(s3_server, retry_seconds=1.0))
    mid = store.start_multipart("U/data")
    first = os.urandom(5 * MiB)
    ref1 = PartRef(1, 0, len(first), store.put_part("U/data", mid, 1, 0, [first], sha(first)))
    s3_server.kill()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="attempts"):
            store.put("U/tail/0/0", b"x")
        assert time.monotonic() - started < 4.0
        with pytest.raises(StoreUnavailable):
            store.check()
    finally:
        s3_server.start()
    store.put("U/tail/0/0", b"x")  # the same store, new connections
    assert store.get("U/tail/0/0") == b"x"
    # The multipart upload begun before the restart goes on.
    last = os.urandom(10)
    ref2 = PartRef(
        2, len(first), 10, store.put_part("U/data", mid, 2, len(first), [last], sha(last))
    )
    store.complete_multipart("U/data", mid, [ref1, ref2])
    assert store.get("U/data") == first + last
