"""GET /files/{id}: the decrypted upload, whole or one byte range, over real HTTP.

Black-box: a real `gateway serve` with 64 KiB segments, so modest files span several
sealed records and ranges cross record (and, for concatenations, partial) boundaries.
Every response passes the Tus-Resumable hook of tests/tushttp.py; errors are
problem+json with their stable code.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.catalog.sqlite import SQLiteCatalog
from gateway.keys.keyring import LocalKeyring
from gateway.layout import data_key
from gateway.sealed import Header, Sealer
from gateway.store.base import ObjectNotFound
from tests.rawhttp import RawPatch
from tests.server import GatewayProcess, mint_token, store_for
from tests.tushttp import (
    OCTET,
    UNKNOWN_ID,
    assert_problem,
    checksum_header,
    create,
    flip_stored_byte,
    patch,
    patch_headers,
    segment_size,
    send,
    upload,
    upload_id,
)

SEG_ENV = {"GATEWAY_SEGMENT_SIZE": "65536"}
SERVER_ENV = SEG_ENV  # for the module's `server` (conftest.py)


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
    assert_cut_short(client, server, url)
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


# -- tampered objects: a read checks what it returns against what the catalog recorded ------

RECORD_OVERHEAD = 28
# Reaches into the folder store's unfinished multipart file: scripts/test's S3 run
# deselects it (`-m "not folder_only"`).
folder_only = pytest.mark.folder_only


def header_len(uid: str) -> int:
    return 104 + len(uid)


def set_catalog_length(data_dir: Path, uid: str, length: int) -> None:
    """Change the upload's `length` in the SQLite catalog behind the gateway's back."""
    db = sqlite3.connect(data_dir / "catalog.sqlite3", timeout=30)
    try:
        with db:
            changed = db.execute("UPDATE uploads SET length = ? WHERE id = ?", (length, uid))
            assert changed.rowcount == 1
    finally:
        db.close()


def rewrite_object(data_dir: Path, uid: str, change: Callable[[bytes], bytes]) -> None:
    store = store_for(data_dir)
    store.put(data_key(uid), change(store.get(data_key(uid))))


def assert_corrupt(response: httpx.Response) -> None:
    """A clean 500 ERR_STORED_DATA_CORRUPT, before any byte of the body."""
    assert response.status_code == 500, (response.status_code, len(response.content))
    assert_problem(response, 500, "ERR_STORED_DATA_CORRUPT")


def assert_cut_short(client: httpx.Client, server: GatewayProcess, url: str, **h: str) -> None:
    """The status line went out, but the body ends before its Content-Length: the client
    knows the transfer failed (never a clean end of a wrong or partial file)."""
    with client.stream("GET", url, headers={**server.auth, **h}) as response:
        assert response.status_code in (200, 206), response.status_code
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


@pytest.mark.parametrize(
    "lower",
    [lambda n, s: n - 1, lambda n, s: s, lambda n, s: 10],
    ids=["one-byte-less", "one-record", "ten-bytes"],
)
def test_a_lowered_catalog_length_is_refused(
    server: GatewayProcess, client: httpx.Client, lower: Callable[[int, int], int]
) -> None:
    """The catalog's length must match the stored records and the header's declared
    size before a byte is sent: a lowered one is not a shorter study."""
    seg = segment_size(server)
    data = os.urandom(2 * seg + 10)
    url = upload(server, data)
    set_catalog_length(server.data_dir, upload_id(url), lower(len(data), seg))
    for headers in ({}, {"Range": "bytes=0-9"}, {"Range": "bytes=-1"}):
        assert_corrupt(get(client, server, url, **headers))


@pytest.fixture
def on_boundary(server: GatewayProcess) -> Finished:
    """A deferred-length upload of exactly two segments: its object ends with an empty
    final record (the second record was sealed before the length was known)."""
    seg = segment_size(server)
    data = os.urandom(2 * seg)
    url = create(server, None)
    assert send(server, url, data, 0) == len(data)
    done = httpx.patch(
        url,
        content=b"",
        headers=patch_headers(server, len(data), **{"Upload-Length": str(len(data))}),
        timeout=30,
    )
    assert done.status_code == 204, done.text
    uid = upload_id(url)
    size = store_for(server.data_dir).size(data_key(uid))
    assert size == header_len(uid) + 2 * (seg + RECORD_OVERHEAD) + RECORD_OVERHEAD
    return Finished(url, data)


@pytest.mark.parametrize("junk", [1, RECORD_OVERHEAD, 1000])
def test_junk_after_the_empty_final_record_is_refused(
    server: GatewayProcess, client: httpx.Client, on_boundary: Finished, junk: int
) -> None:
    rewrite_object(server.data_dir, on_boundary.id, lambda blob: blob + os.urandom(junk))
    for headers in ({}, {"Range": "bytes=0-9"}, {"Range": "bytes=-1"}):
        assert_corrupt(get(client, server, on_boundary.url, **headers))


def test_a_replaced_empty_final_record_is_refused(
    server: GatewayProcess, client: httpx.Client, on_boundary: Finished
) -> None:
    """All the plaintext lies in the records before it, so the empty final record must
    be authenticated before the last byte goes out."""
    rewrite_object(
        server.data_dir,
        on_boundary.id,
        lambda blob: blob[:-RECORD_OVERHEAD] + os.urandom(RECORD_OVERHEAD),
    )
    assert_cut_short(client, server, on_boundary.url)
    # A range that reaches the end checks the final record too; one that does not
    # still reads.
    assert_corrupt(get(client, server, on_boundary.url, Range="bytes=-1"))
    head = get(client, server, on_boundary.url, Range="bytes=0-9")
    assert head.status_code == 206
    assert head.content == on_boundary.data[:10]


def test_a_dropped_empty_final_record_is_refused(
    server: GatewayProcess, client: httpx.Client, on_boundary: Finished
) -> None:
    rewrite_object(server.data_dir, on_boundary.id, lambda blob: blob[:-RECORD_OVERHEAD])
    for headers in ({}, {"Range": "bytes=0-9"}):
        assert_corrupt(get(client, server, on_boundary.url, **headers))


def multipart_file(data_dir: Path, uid: str) -> Path:
    folder = data_dir / "objects" / uid / ".multipart"
    found = [p for p in folder.glob("data.*") if not p.name.endswith(".fence")]
    assert len(found) == 1, found
    return found[0]


def wait_for_size(path: Path, size: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while path.stat().st_size < size:
        assert time.monotonic() < deadline, f"{path.name} stays at {path.stat().st_size} bytes"
        time.sleep(0.01)


@folder_only
def test_a_rejected_sealing_spliced_into_the_object_is_refused(
    server: GatewayProcess, client: httpx.Client
) -> None:
    """A PATCH answered 460 sealed record 0 under the upload's key, with the right index
    and final flag: a valid sealing, but not the one the catalog recorded. Copied while
    that body was arriving and spliced into the completed object, it must not be served."""
    seg = segment_size(server)
    data, rejected = os.urandom(seg + 500), os.urandom(seg + 500)
    url = create(server, len(data))
    uid = upload_id(url)
    stride = seg + RECORD_OVERHEAD
    body = RawPatch(
        server,
        url,
        0,
        len(rejected),
        extra={"Upload-Checksum": checksum_header("sha256", b"not the body")},
    )
    try:
        body.send(rejected[:seg])  # exactly record 0: nothing of record 1 is written yet
        area = multipart_file(server.data_dir, uid)
        wait_for_size(area, header_len(uid) + stride)
        copied = area.read_bytes()[header_len(uid) : header_len(uid) + stride]
        body.send(rejected[seg:])
        assert body.read_response(30).status == 460
    finally:
        body.close()
    response = patch(server, url, data, 0)
    assert response.status_code == 204, response.text
    assert get(client, server, url).content == data

    def splice(blob: bytes) -> bytes:
        return blob[: header_len(uid)] + copied + blob[header_len(uid) + stride :]

    rewrite_object(server.data_dir, uid, splice)
    for headers in ({}, {"Range": "bytes=0-9"}):
        response = get(client, server, url, **headers)
        assert_corrupt(response)
    tail = get(client, server, url, Range=f"bytes={seg}-")
    assert tail.status_code == 206, "records that were not touched still read"
    assert tail.content == data[seg:]


@folder_only
def test_a_rejected_body_leaves_no_sealed_records_behind(
    server: GatewayProcess, client: httpx.Client
) -> None:
    """After a 460, the records its body sealed are gone from the unfinished object:
    only what the catalog recorded remains."""
    seg = segment_size(server)
    data = os.urandom(3 * seg + 10)
    url = create(server, len(data))
    uid = upload_id(url)
    area_end = header_len(uid) + seg + RECORD_OVERHEAD
    assert send(server, url, data, 0, [seg]) == seg
    area = multipart_file(server.data_dir, uid)
    assert area.stat().st_size == area_end
    wrong = os.urandom(2 * seg + 7)
    response = httpx.patch(
        url,
        content=wrong,
        headers=patch_headers(
            server, seg, **{"Upload-Checksum": checksum_header("sha256", b"something else")}
        ),
        timeout=30,
    )
    assert response.status_code == 460, response.text
    assert area.stat().st_size == area_end, "the rejected body's records are still stored"
    assert send(server, url, data, seg) == len(data)
    assert get(client, server, url).content == data


@folder_only
def test_a_body_cut_off_with_a_checksum_leaves_no_sealed_records_behind(
    server: GatewayProcess,
) -> None:
    """Nothing of a body with Upload-Checksum is recorded unless all of it arrives and
    verifies: when the client goes away, the records it sealed go too."""
    seg = segment_size(server)
    data = os.urandom(3 * seg)
    url = create(server, len(data))
    uid = upload_id(url)
    body = RawPatch(
        server, url, 0, len(data), extra={"Upload-Checksum": checksum_header("sha256", data)}
    )
    try:
        body.send(data[:seg])
        area = multipart_file(server.data_dir, uid)
        wait_for_size(area, header_len(uid) + seg + RECORD_OVERHEAD)
    finally:
        body.close()
    deadline = time.monotonic() + 30
    while area.stat().st_size != 0:
        assert time.monotonic() < deadline, "the cut-off body's records are still stored"
        time.sleep(0.05)
    assert send(server, url, data, 0) == len(data)
    assert httpx.get(url, headers=server.auth, timeout=30).content == data


def seal_again(data_dir: Path, uid: str, index: int, final: bool, plaintext: bytes) -> bytes:
    """Another sealing of record `index` under the upload's own key: it authenticates
    exactly like the recorded one, as a record sealed for a refused body would."""
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        upload = catalog.get_upload(uid)
        assert upload is not None
        wrapped = catalog.wrapped_key(upload.dek_id)
        assert wrapped is not None
        keys = LocalKeyring.open(data_dir / "keyring.json")
        dek = keys.unwrap(wrapped, upload_id=uid, dek_id=upload.dek_id)
        return Sealer(dek, Header.decode(upload.header)).seal_record(index, final, plaintext)
    finally:
        catalog.close()


@pytest.mark.parametrize("same_bytes", [False, True], ids=["other-bytes", "same-bytes"])
def test_another_sealing_of_a_record_is_refused(
    server: GatewayProcess, client: httpx.Client, same_bytes: bool
) -> None:
    """On any store: a record that authenticates but is not the recorded sealing (even
    of the same plaintext, under a fresh nonce) is never served."""
    seg = segment_size(server)
    data = os.urandom(2 * seg + 10)
    url = upload(server, data)
    uid = upload_id(url)
    plain = data[seg : 2 * seg] if same_bytes else os.urandom(seg)
    other = seal_again(server.data_dir, uid, 1, False, plain)
    at = header_len(uid) + seg + RECORD_OVERHEAD

    rewrite_object(server.data_dir, uid, lambda blob: blob[:at] + other + blob[at + len(other) :])
    assert_corrupt(get(client, server, url, Range=f"bytes={seg}-{seg + 9}"))
    assert_cut_short(client, server, url)  # record 0 is out before record 1 is read
    head = get(client, server, url, Range=f"bytes=0-{seg - 1}")
    assert head.status_code == 206
    assert head.content == data[:seg]


def test_final_concatenation_checks_each_partial(
    server: GatewayProcess, client: httpx.Client
) -> None:
    seg = segment_size(server)
    pieces = [os.urandom(seg + 100), os.urandom(500)]
    urls = [upload(server, p, None, **{"Upload-Concat": "partial"}) for p in pieces]
    final = client.post(
        server.files_url, headers={**server.auth, "Upload-Concat": "final;" + " ".join(urls)}
    )
    assert final.status_code == 201, final.text
    url = final.headers["Location"]
    whole = b"".join(pieces)
    assert get(client, server, url).content == whole
    # The final's own length no longer adds up to its partials'.
    set_catalog_length(server.data_dir, upload_id(url), len(whole) - 1)
    assert_corrupt(get(client, server, url))
    # It does again, but a partial's no longer matches its records.
    set_catalog_length(server.data_dir, upload_id(urls[0]), len(pieces[0]) - 1)
    for headers in ({}, {"Range": "bytes=0-9"}, {"Range": "bytes=-1"}):
        assert_corrupt(get(client, server, url, **headers))
