"""The S3 store's rare branches, reached by a connection pool that injects S3's faults.

Requests go to the session's SeaweedFS through `FaultyPool`, which may answer one
instead (a refused checksum header, a 200 carrying `<Error>`, NoSuchUpload) or forward
it and lose the answer. Each test fails if the branch it covers is removed from s3.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from urllib3.exceptions import ProtocolError

from gateway.store.base import ObjectNotFound, PartRef, StoreUnavailable
from gateway.store.s3 import Checksums, S3Settings, S3Store

if TYPE_CHECKING:
    from tests.s3server import SeaweedS3


@dataclass
class Request:
    method: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def is_completion(self) -> bool:
        return self.method == "POST" and "uploadId" in self.query

    @property
    def has_checksum(self) -> bool:
        return any(name.lower().startswith("x-amz-checksum-") for name in self.headers)


# A fault looks at a request and answers it, or returns None to let it through; `forward`
# sends it to the real server (for faults that lose the real answer).
Fault = Callable[[Request, Callable[[], urllib3.BaseHTTPResponse]], urllib3.BaseHTTPResponse | None]


class FaultyPool(urllib3.PoolManager):
    """A urllib3 pool in front of SeaweedFS; `faults` are tried in order on each request."""

    def __init__(self) -> None:
        super().__init__(maxsize=4, retries=False)
        self.faults: list[Fault] = []
        self.seen: list[Request] = []

    def urlopen(  # type: ignore[override]
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> urllib3.BaseHTTPResponse:
        headers = {str(k): str(v) for k, v in (kw.get("headers") or {}).items()}
        request = Request(method, parse_qs(urlsplit(url).query, keep_blank_values=True), headers)
        self.seen.append(request)

        def forward() -> urllib3.BaseHTTPResponse:
            return super(FaultyPool, self).urlopen(method, url, redirect, **kw)

        for fault in self.faults:
            answer = fault(request, forward)
            if answer is not None:
                return answer
        return forward()


def s3_answer(status: int, body: str) -> urllib3.HTTPResponse:
    return urllib3.HTTPResponse(
        body=body.encode(),
        status=status,
        headers={"Content-Type": "application/xml"},
        preload_content=True,
    )


def error_xml(code: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>injected</Message>"
        "<Resource>/x</Resource><RequestId>1</RequestId></Error>"
    )


@pytest.fixture
def pool() -> Iterator[FaultyPool]:
    faulty = FaultyPool()
    yield faulty
    faulty.clear()


def make_store(s3: SeaweedS3, pool: FaultyPool, checksums: Checksums = "auto") -> S3Store:
    settings = S3Settings(
        endpoint=s3.endpoint,
        bucket=s3.fresh_bucket("f"),
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        retry_seconds=1.0,
        checksums=checksums,
    )
    return S3Store(settings, http=pool)


def upload(store: S3Store, key: str, data: bytes) -> tuple[str, list[PartRef]]:
    mid = store.start_multipart(key)
    etag = store.put_part(key, mid, 1, 0, [data], hashlib.sha256(data).digest())
    return mid, [PartRef(1, 0, len(data), etag)]


def refuse_checksums(request: Request, forward: object) -> urllib3.HTTPResponse | None:
    return s3_answer(400, error_xml("InvalidRequest")) if request.has_checksum else None


def test_refused_checksum_headers_are_dropped_in_auto_mode(
    s3_server: SeaweedS3, pool: FaultyPool
) -> None:
    store = make_store(s3_server, pool)
    pool.faults.append(refuse_checksums)
    mid, refs = upload(store, "U/data", b"sealed bytes")
    assert ";sha256=" not in refs[0].etag  # the part token carries no checksum
    store.complete_multipart("U/data", mid, refs)
    store.put("U/manifest.json", b"{}")
    assert store.get("U/data") == b"sealed bytes"
    refused = [r for r in pool.seen if r.has_checksum]
    assert len(refused) == 1  # refused once, then never sent again
    assert store.checksums_verified is None  # nothing was confirmed


def test_refused_checksum_headers_fail_when_required(
    s3_server: SeaweedS3, pool: FaultyPool
) -> None:
    store = make_store(s3_server, pool, checksums="on")
    pool.faults.append(refuse_checksums)
    with pytest.raises(StoreUnavailable, match="InvalidRequest"):
        store.start_multipart("U/data")


def error_on_completion(code: str, times: int) -> Fault:
    """Answer the first `times` completions 200 with an <Error> body, as S3 may."""
    left = [times]

    def fault(request: Request, forward: object) -> urllib3.HTTPResponse | None:
        if request.is_completion and left[0] > 0:
            left[0] -= 1
            return s3_answer(200, error_xml(code))
        return None

    return fault


def completions(pool: FaultyPool) -> int:
    return sum(r.is_completion for r in pool.seen)


def test_a_transient_error_in_a_200_completion_is_retried(
    s3_server: SeaweedS3, pool: FaultyPool
) -> None:
    store = make_store(s3_server, pool)
    mid, refs = upload(store, "U/data", b"sealed bytes")
    pool.faults.append(error_on_completion("InternalError", times=1))
    store.complete_multipart("U/data", mid, refs)
    assert completions(pool) == 2
    assert store.get("U/data") == b"sealed bytes"


def test_a_lasting_error_in_a_200_completion_fails(s3_server: SeaweedS3, pool: FaultyPool) -> None:
    store = make_store(s3_server, pool)
    mid, refs = upload(store, "U/data", b"sealed bytes")
    pool.faults.append(error_on_completion("AccessDenied", times=1))
    with pytest.raises(StoreUnavailable, match="AccessDenied"):
        store.complete_multipart("U/data", mid, refs)
    assert completions(pool) == 1  # not retried
    with pytest.raises(ObjectNotFound):
        store.get("U/data")


def answer_lost_then_no_such_upload(forward_first: bool) -> Fault:
    """The first completion's answer is lost (after reaching the server when
    `forward_first`); the retry is told NoSuchUpload, as S3 says once it completed."""
    calls = [0]

    def fault(
        request: Request, forward: Callable[[], urllib3.BaseHTTPResponse]
    ) -> urllib3.BaseHTTPResponse | None:
        if not request.is_completion:
            return None
        calls[0] += 1
        if calls[0] == 1:
            if forward_first:
                forward().drain_conn()
            raise ProtocolError("Connection aborted: the answer was lost")
        return s3_answer(404, error_xml("NoSuchUpload"))

    return fault


def test_no_such_upload_after_a_completion_that_happened_is_success(
    s3_server: SeaweedS3, pool: FaultyPool
) -> None:
    store = make_store(s3_server, pool)
    mid, refs = upload(store, "U/data", b"sealed bytes")
    pool.faults.append(answer_lost_then_no_such_upload(forward_first=True))
    store.complete_multipart("U/data", mid, refs)  # recognised as done
    assert completions(pool) == 2
    assert store.get("U/data") == b"sealed bytes"


def test_no_such_upload_without_the_object_fails(s3_server: SeaweedS3, pool: FaultyPool) -> None:
    store = make_store(s3_server, pool)
    mid, refs = upload(store, "U/data", b"sealed bytes")
    pool.faults.append(answer_lost_then_no_such_upload(forward_first=False))
    with pytest.raises(StoreUnavailable, match="NoSuchUpload"):
        store.complete_multipart("U/data", mid, refs)


def test_no_such_upload_with_another_object_in_place_fails(
    s3_server: SeaweedS3, pool: FaultyPool
) -> None:
    store = make_store(s3_server, pool)
    mid, refs = upload(store, "U/data", b"sealed bytes")
    store.put("U/data", b"something else")  # not what the recorded parts make
    pool.faults.append(answer_lost_then_no_such_upload(forward_first=False))
    with pytest.raises(StoreUnavailable, match="NoSuchUpload"):
        store.complete_multipart("U/data", mid, refs)
