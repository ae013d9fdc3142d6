"""GET /files/{id}: the decrypted upload, whole or one byte range, over real HTTP.

Black-box: a real `gateway serve` with 64 KiB segments, so modest files span several
sealed records and ranges cross record (and, for concatenations, partial) boundaries.
Every response passes the Tus-Resumable hook of tests/tushttp.py; errors are
problem+json with their stable code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.layout import data_key
from gateway.store.base import ObjectNotFound
from tests.blackbox import flip_stored_byte, segment_size, upload
from tests.server import GatewayProcess, mint_token, store_for
from tests.tushttp import (
    OCTET,
    UNKNOWN_ID,
    assert_problem,
    start_server,
    tus_client,
    upload_id,
)

SEG_ENV = {"GATEWAY_SEGMENT_SIZE": "65536"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = start_server(tmp_path_factory, "downloads", SEG_ENV)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with tus_client() as c:
        yield c


@dataclass(frozen=True)
class Finished:
    url: str
    data: bytes

    @property
    def id(self) -> str:
        return upload_id(self.url)


@pytest.fixture(scope="module")
def three_records(server: GatewayProcess) -> Finished:
    """An upload of two full records and a short final one."""
    seg = segment_size(server)
    data = os.urandom(2 * seg + 12_345)
    return Finished(upload(server, data, [seg - 3, 7, len(data) - seg - 4]), data)


def get(client: httpx.Client, server: GatewayProcess, url: str, **headers: str) -> httpx.Response:
    return client.get(url, headers={**server.auth, **headers})


def assert_download_headers(response: httpx.Response, uid: str, length: int) -> None:
    h = response.headers
    assert h["Content-Length"] == str(length), h
    assert h["ETag"] == f'"{uid}"', h
    assert h["Accept-Ranges"] == "bytes", h
    assert h["Content-Type"] == "application/octet-stream", h
    directives = {d.strip() for d in h["Cache-Control"].split(",")}
    assert "no-store" in directives, h


# -- whole downloads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        lambda s: 0,
        lambda s: 1,
        lambda s: s - 1,
        lambda s: s,
        lambda s: s + 1,
        lambda s: 3 * s + 5,
    ],
    ids=["empty", "one-byte", "segment-minus-1", "one-segment", "segment-plus-1", "four-records"],
)
def test_owner_downloads_the_decrypted_bytes(
    server: GatewayProcess, client: httpx.Client, size: Callable[[int], int]
) -> None:
    data = os.urandom(size(segment_size(server)))
    url = upload(server, data)
    response = get(client, server, url)
    assert response.status_code == 200, response.text
    assert response.content == data, "the download is not the uploaded plaintext"
    assert_download_headers(response, upload_id(url), len(data))
    assert "Content-Range" not in response.headers


def test_download_sent_in_odd_pieces(server: GatewayProcess, client: httpx.Client) -> None:
    """Tail pieces and records written by many requests read back as one file."""
    seg = segment_size(server)
    sizes = [1, seg - 2, 3, seg + 7, 11, 2 * seg - 19, 5]
    data = os.urandom(sum(sizes))
    url = upload(server, data, sizes)
    response = get(client, server, url)
    assert response.status_code == 200
    assert response.content == data


# -- Range ----------------------------------------------------------------------------------

# (Range header, first byte, end) as functions of the segment size s and file size n.
RangeCase = Callable[[int, int], tuple[str, int, int]]
RANGES: dict[str, RangeCase] = {
    "across-first-boundary": lambda s, n: (f"bytes={s - 6}-{s + 9}", s - 6, s + 10),
    "first-byte-of-record-1": lambda s, n: (f"bytes={s}-{s}", s, s + 1),
    "last-byte-of-record-0": lambda s, n: (f"bytes={s - 1}-{s - 1}", s - 1, s),
    "first-byte": lambda s, n: ("bytes=0-0", 0, 1),
    "last-byte": lambda s, n: (f"bytes={n - 1}-{n - 1}", n - 1, n),
    "suffix-1": lambda s, n: ("bytes=-1", n - 1, n),
    "suffix-100000": lambda s, n: ("bytes=-100000", max(n - 100_000, 0), n),
    "suffix-larger-than-file": lambda s, n: (f"bytes=-{n + 100_000}", 0, n),
    "to-end-from-record-1": lambda s, n: (f"bytes={s + 100}-", s + 100, n),
    "last-record-to-end": lambda s, n: (f"bytes={2 * s}-", 2 * s, n),
    "spans-three-records": lambda s, n: (f"bytes={s - 1}-{2 * s}", s - 1, 2 * s + 1),
    "whole-record-1": lambda s, n: (f"bytes={s}-{2 * s - 1}", s, 2 * s),
    "end-past-the-file": lambda s, n: (f"bytes=10-{n + 5000}", 10, n),
    "everything": lambda s, n: ("bytes=0-", 0, n),
}


@pytest.mark.parametrize("case", RANGES.values(), ids=RANGES.keys())
def test_single_range(
    server: GatewayProcess, client: httpx.Client, three_records: Finished, case: RangeCase
) -> None:
    data = three_records.data
    n = len(data)
    header, start, end = case(segment_size(server), n)
    response = get(client, server, three_records.url, Range=header)
    assert response.status_code == 206, (header, response.status_code, response.text[:200])
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{n}", header
    assert response.content == data[start:end], f"{header}: wrong bytes"
    assert_download_headers(response, three_records.id, end - start)


@pytest.mark.parametrize(
    "header",
    [
        lambda n: f"bytes={n}-",
        lambda n: f"bytes={n}-{n + 10}",
        lambda n: f"bytes={n + 1000}-",
        lambda n: "bytes=-0",
    ],
    ids=["start-at-size", "start-at-size-with-end", "start-past-size", "empty-suffix"],
)
def test_unsatisfiable_range_is_416(
    server: GatewayProcess,
    client: httpx.Client,
    three_records: Finished,
    header: Callable[[int], str],
) -> None:
    n = len(three_records.data)
    response = get(client, server, three_records.url, Range=header(n))
    assert_problem(response, 416, "ERR_RANGE_NOT_SATISFIABLE")
    assert response.headers["Content-Range"] == f"bytes */{n}"


def test_range_on_an_empty_upload(server: GatewayProcess, client: httpx.Client) -> None:
    url = upload(server, b"")
    response = get(client, server, url, Range="bytes=0-")
    assert_problem(response, 416, "ERR_RANGE_NOT_SATISFIABLE")
    assert response.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize(
    "header",
    ["bytes=0-1,5-9", "bytes=0-0, 70000-70010", "bytes=9-3", "items=0-1", "bytes=x-"],
    ids=["two-ranges", "two-ranges-across-records", "last-before-first", "other-unit", "junk"],
)
def test_ranges_we_do_not_serve_get_the_whole_file(
    server: GatewayProcess, client: httpx.Client, three_records: Finished, header: str
) -> None:
    """Several ranges (or a malformed one) are ignored: a full 200 is always valid."""
    response = get(client, server, three_records.url, Range=header)
    assert response.status_code == 200, (header, response.status_code)
    assert "Content-Range" not in response.headers
    assert response.content == three_records.data
    assert_download_headers(response, three_records.id, len(three_records.data))


def test_if_range(server: GatewayProcess, client: httpx.Client, three_records: Finished) -> None:
    data, etag = three_records.data, f'"{three_records.id}"'
    same = get(client, server, three_records.url, Range="bytes=5-9", **{"If-Range": etag})
    assert same.status_code == 206
    assert same.content == data[5:10]
    for other in ('"something-else"', f"W/{etag}", "Tue, 01 Jan 2030 00:00:00 GMT"):
        response = get(client, server, three_records.url, Range="bytes=5-9", **{"If-Range": other})
        assert response.status_code == 200, (other, response.status_code)
        assert "Content-Range" not in response.headers
        assert response.content == data, other


def test_failed_if_range_ignores_an_unsatisfiable_range(
    server: GatewayProcess, client: httpx.Client, three_records: Finished
) -> None:
    """RFC 9110 section 13.1.5: when If-Range does not match, the server MUST ignore
    Range, so a client whose cached copy is stale gets the whole new file (200), even
    if its range lies beyond it, instead of a 416 it cannot act on."""
    n = len(three_records.data)
    response = get(
        client,
        server,
        three_records.url,
        Range=f"bytes={n + 10}-",
        **{"If-Range": '"an-old-etag"'},
    )
    assert response.status_code == 200, (
        f"a non-matching If-Range must make the server ignore Range (RFC 9110 13.1.5); got "
        f"{response.status_code}: downloads.py evaluates parse_range (416) before If-Range"
    )
    assert response.content == three_records.data


# -- who may read what ----------------------------------------------------------------------


def test_unfinished_uploads_cannot_be_downloaded(
    server: GatewayProcess, client: httpx.Client
) -> None:
    seg = segment_size(server)
    fresh = client.post(server.files_url, headers={**server.auth, "Upload-Length": "10"})
    half = client.post(
        server.files_url,
        headers={**server.auth, "Upload-Length": str(2 * seg), "Content-Type": OCTET},
        content=os.urandom(seg + 3),
    )
    deferred = client.post(
        server.files_url,
        headers={**server.auth, "Upload-Defer-Length": "1", "Content-Type": OCTET},
        content=b"abc",
    )
    for created in (fresh, half, deferred):
        assert created.status_code == 201, created.text
        url = created.headers["Location"]
        for headers in ({}, {"Range": "bytes=0-0"}):
            response = get(client, server, url, **headers)
            assert_problem(response, 400, "ERR_UPLOAD_NOT_FINISHED")


def test_unknown_ids_are_404(server: GatewayProcess, client: httpx.Client) -> None:
    for uid in (UNKNOWN_ID, "not-an-upload-id!", "x" * 200):
        response = get(client, server, server.files_url + uid)
        assert_problem(response, 404, "ERR_UPLOAD_NOT_FOUND")


def test_another_principals_upload_is_404(
    server: GatewayProcess, client: httpx.Client, three_records: Finished
) -> None:
    other = mint_token(server.data_dir, principal="other")
    for path in ("", "/manifest"):
        response = client.get(
            three_records.url + path,
            headers={"Authorization": f"Bearer {other}", "Range": "bytes=0-0"},
        )
        assert_problem(response, 404, "ERR_UPLOAD_NOT_FOUND")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer gwt_not-a-real-token"}, {"Authorization": "Basic YTpi"}],
    ids=["no-token", "unknown-token", "basic-auth"],
)
def test_download_needs_a_token(
    server: GatewayProcess,
    client: httpx.Client,
    three_records: Finished,
    headers: dict[str, str],
) -> None:
    for path in ("", "/manifest"):
        response = client.get(three_records.url + path, headers=headers)
        assert_problem(response, 401, "ERR_UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


# -- concatenation --------------------------------------------------------------------------


def test_final_concatenation_reads_its_partials_in_order(
    server: GatewayProcess, client: httpx.Client
) -> None:
    seg = segment_size(server)
    pieces = [os.urandom(seg + 100), os.urandom(5), os.urandom(2 * seg), b""]
    urls = [upload(server, p, None, **{"Upload-Concat": "partial"}) for p in pieces]
    # Listed out of creation order (the final upload follows the list), with an empty
    # partial between two others.
    order = [2, 3, 0, 1]
    final = client.post(
        server.files_url,
        headers={**server.auth, "Upload-Concat": "final;" + " ".join(urls[i] for i in order)},
    )
    assert final.status_code == 201, final.text
    url = final.headers["Location"]
    whole = b"".join(pieces[i] for i in order)
    n = len(whole)

    response = get(client, server, url)
    assert response.status_code == 200, response.text
    assert response.content == whole, "the final upload is not its partials in order"
    assert_download_headers(response, upload_id(url), n)

    b1, b2 = len(pieces[2]), len(pieces[2]) + len(pieces[0])  # the partial boundaries
    for start, end in [
        (b1 - 3, b1 + 3),  # across the first boundary
        (b2 - 1, b2 + 5),  # the end of one partial and all of the 5-byte one
        (b2, b2 + 5),  # exactly the middle partial
        (b1 - 1, n),  # from the last byte of the first partial to the end
        (seg - 2, b2 + 2),  # a record boundary inside a partial, then two partials
        (0, n),
    ]:
        part = get(client, server, url, Range=f"bytes={start}-{end - 1}")
        assert part.status_code == 206, (start, end, part.text[:200])
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{n}"
        assert part.content == whole[start:end], (start, end)
    suffix = get(client, server, url, Range="bytes=-7")
    assert suffix.status_code == 206
    assert suffix.content == whole[-7:]
    beyond = get(client, server, url, Range=f"bytes={n}-")
    assert_problem(beyond, 416, "ERR_RANGE_NOT_SATISFIABLE")
    assert beyond.headers["Content-Range"] == f"bytes */{n}"
    # The partials stay readable on their own.
    for piece, part_url in zip(pieces, urls, strict=True):
        assert get(client, server, part_url).content == piece


# -- damaged objects ------------------------------------------------------------------------


def test_damaged_first_record_is_a_clean_500(server: GatewayProcess, client: httpx.Client) -> None:
    seg = segment_size(server)
    data = os.urandom(2 * seg + 10)
    url = upload(server, data)
    uid = upload_id(url)
    flip_stored_byte(server.data_dir, data_key(uid), len(uid) + 104 + 12 + 50)
    for headers in ({}, {"Range": "bytes=0-9"}):
        response = get(client, server, url, **headers)
        assert_problem(response, 500, "ERR_STORED_DATA_CORRUPT")
    # Records that were not touched still read back: only what a range needs is opened.
    tail = get(client, server, url, Range=f"bytes={seg}-")
    assert tail.status_code == 206
    assert tail.content == data[seg:]


def test_damaged_last_record_never_yields_a_whole_body(
    server: GatewayProcess, client: httpx.Client
) -> None:
    """The status line is out before the last record is opened: the body must be cut
    short (so the client sees an incomplete response), never completed with bad bytes."""
    seg = segment_size(server)
    data = os.urandom(2 * seg + 10)
    url = upload(server, data)
    flip_stored_byte(server.data_dir, data_key(upload_id(url)), -1)  # the last tag
    try:
        response = get(client, server, url)
    except httpx.RemoteProtocolError:
        pass  # cut short: the client knows the body is incomplete
    else:
        assert response.status_code == 500, response.status_code
    head = get(client, server, url, Range=f"bytes=0-{seg - 1}")
    assert head.status_code == 206
    assert head.content == data[:seg]


def test_final_concatenation_outlives_a_deleted_partial(
    server: GatewayProcess, client: httpx.Client
) -> None:
    """DESIGN.md, "Deleting partials": deleting a partial that a live final lists hides
    it (404) but keeps its data and key, so the final still reads whole; both go with
    the last final that uses them."""
    pieces = [os.urandom(1000), os.urandom(2000)]
    urls = [upload(server, p, None, **{"Upload-Concat": "partial"}) for p in pieces]
    final = client.post(
        server.files_url, headers={**server.auth, "Upload-Concat": "final;" + " ".join(urls)}
    )
    assert final.status_code == 201, final.text
    url = final.headers["Location"]
    whole = b"".join(pieces)
    assert client.delete(urls[1], headers=server.auth).status_code == 204
    assert_problem(get(client, server, urls[1]), 404, "ERR_UPLOAD_NOT_FOUND")
    response = get(client, server, url)
    assert response.status_code == 200, response.text
    assert response.content == whole
    ranged = get(client, server, url, Range="bytes=990-1009")
    assert ranged.status_code == 206
    assert ranged.content == whole[990:1010]
    store = store_for(server.data_dir)
    assert store.size(data_key(upload_id(urls[1]))) > 0
    assert client.delete(url, headers=server.auth).status_code == 204
    assert_problem(get(client, server, url), 404, "ERR_UPLOAD_NOT_FOUND")
    with pytest.raises(ObjectNotFound):
        store.size(data_key(upload_id(urls[1])))
    assert get(client, server, urls[0]).content == pieces[0]  # never deleted
