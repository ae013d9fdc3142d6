"""tuspy, the reference Python tus client, against a real gateway process.

Each upload is read back from the data dir with the project's own decrypting reader
and compared byte for byte (by SHA-256) with the file that was sent.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client

from tests.conftest import read_stored, sha256
from tests.server import GatewayProcess

MiB = 1 << 20

# tuspy opens the file anew for every request and never closes it (tusclient 1.1);
# that leak is the client's, not what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")


def _random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their SHA-256 hex digest."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _tus(server: GatewayProcess) -> tus_client.TusClient:
    # tuspy adds Tus-Resumable itself; only the bearer token is ours to send.
    return tus_client.TusClient(
        server.files_url, headers={"Authorization": server.auth["Authorization"]}
    )


def _upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def _upload(
    server: GatewayProcess,
    path: Path,
    *,
    chunk_size: int,
    metadata: dict[str, str] | None = None,
    upload_checksum: bool = False,
) -> str:
    uploader = _tus(server).uploader(
        file_path=str(path),
        chunk_size=chunk_size,
        metadata=metadata or {},
        upload_checksum=upload_checksum,
    )
    uploader.upload()
    assert uploader.offset == path.stat().st_size
    assert uploader.url is not None
    return str(uploader.url)


def _head(server: GatewayProcess, url: str) -> httpx.Response:
    response = httpx.head(url, headers=server.auth, timeout=30)
    assert response.status_code == 200, response.text
    return response


def _decode_metadata(raw: str) -> dict[str, str]:
    pairs = (item.strip().split(" ") for item in raw.split(","))
    return {p[0]: base64.b64decode(p[1]).decode() if len(p) > 1 else "" for p in pairs}


@pytest.mark.slow
def test_64_mib_in_8_mib_chunks_default_segment(gateway: GatewayProcess, tmp_path: Path) -> None:
    """The default 8 MiB segment: every PATCH ends exactly on a segment boundary."""
    path = tmp_path / "scan.dcm"
    digest = _random_file(path, 64 * MiB)
    metadata = {"filename": "scan.dcm", "filetype": "application/dicom", "study": "ß-1/2"}

    url = _upload(gateway, path, chunk_size=8 * MiB, metadata=metadata)

    head = _head(gateway, url)
    assert head.headers["Upload-Offset"] == str(64 * MiB)
    assert head.headers["Upload-Length"] == str(64 * MiB)
    assert _decode_metadata(head.headers["Upload-Metadata"]) == metadata
    assert sha256(read_stored(gateway.data_dir, _upload_id(url))) == digest


@pytest.mark.slow
def test_64_mib_in_odd_chunks_default_segment(gateway: GatewayProcess, tmp_path: Path) -> None:
    """3 MB + 7 byte PATCHes never line up with 8 MiB segments: tail pieces every time."""
    path = tmp_path / "odd.bin"
    digest = _random_file(path, 64 * MiB)

    url = _upload(gateway, path, chunk_size=3_000_007, metadata={"filename": "odd.bin"})

    assert _head(gateway, url).headers["Upload-Offset"] == str(64 * MiB)
    assert sha256(read_stored(gateway.data_dir, _upload_id(url))) == digest


def test_odd_chunks_small_segments(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """Many segment boundaries inside each PATCH, and PATCHes ending anywhere in a segment."""
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536")
    path = tmp_path / "small-seg.bin"
    size = 16 * MiB + 12_345
    digest = _random_file(path, size)

    url = _upload(server, path, chunk_size=3_000_007, metadata={"filename": "small-seg.bin"})

    assert _head(server, url).headers["Upload-Offset"] == str(size)
    assert sha256(read_stored(server.data_dir, _upload_id(url))) == digest


@pytest.mark.parametrize("upload_checksum", [False, True], ids=["plain", "sha1"])
def test_mobile_sized_chunks(
    gateway: GatewayProcess, tmp_path: Path, upload_checksum: bool
) -> None:
    """512 KiB chunks of 8 MiB segments, as mobile clients send them: all but one PATCH
    per segment are kept whole and sealed as tail pieces, the last one fills the record."""
    path = tmp_path / "mobile.bin"
    size = 18 * MiB + 777
    digest = _random_file(path, size)

    url = _upload(
        gateway, path, chunk_size=512 * 1024, metadata={"filename": "mobile.bin"},
        upload_checksum=upload_checksum,
    )  # fmt: skip

    assert _head(gateway, url).headers["Upload-Offset"] == str(size)
    assert sha256(read_stored(gateway.data_dir, _upload_id(url))) == digest


@pytest.mark.parametrize("segment_size", [None, "65536"])
def test_upload_checksum_sha1(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path, segment_size: str | None
) -> None:
    """tuspy's upload_checksum=True sends `Upload-Checksum: sha1 <b64>` on every PATCH."""
    env = {"GATEWAY_SEGMENT_SIZE": segment_size} if segment_size else {}
    server = gateway_factory(**env)
    path = tmp_path / "checked.bin"
    size = 20 * MiB + 3
    digest = _random_file(path, size)

    url = _upload(
        server, path, chunk_size=3_000_007, metadata={"filename": "x"}, upload_checksum=True
    )

    assert _head(server, url).headers["Upload-Offset"] == str(size)
    assert sha256(read_stored(server.data_dir, _upload_id(url))) == digest


def test_wrong_sha1_is_refused_and_nothing_recorded(gateway: GatewayProcess) -> None:
    """A body whose sha1 does not match is refused (460) and the offset stays put."""
    data = os.urandom(200_000)
    with httpx.Client(headers=gateway.auth, timeout=30) as http:
        created = http.post(gateway.files_url, headers={"Upload-Length": str(len(data))})
        url = created.headers["Location"]
        wrong = base64.b64encode(hashlib.sha1(data + b"x").digest()).decode()
        right = base64.b64encode(hashlib.sha1(data[:150_000]).digest()).decode()
        patch_headers = {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        bad = http.patch(
            url, content=data, headers={**patch_headers, "Upload-Checksum": f"sha1 {wrong}"}
        )
        assert bad.status_code == 460, bad.text
        assert http.head(url).headers["Upload-Offset"] == "0"
        good = http.patch(
            url,
            content=data[:150_000],
            headers={**patch_headers, "Upload-Checksum": f"sha1 {right}"},
        )
        assert good.status_code == 204, good.text
        assert good.headers["Upload-Offset"] == "150000"
        rest = http.patch(
            url,
            content=data[150_000:],
            headers={**patch_headers, "Upload-Offset": "150000"},
        )
        assert rest.status_code == 204, rest.text
    assert read_stored(gateway.data_dir, _upload_id(url)) == data


def test_tuspy_follows_a_relative_location(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """Without GATEWAY_PUBLIC_URL, Location is relative: tuspy resolves it against the endpoint."""
    server = gateway_factory(GATEWAY_PUBLIC_URL="")
    data = os.urandom(3 * MiB + 5)
    path = tmp_path / "relative.bin"
    path.write_bytes(data)
    url = _upload(server, path, chunk_size=MiB)
    assert url.startswith(server.files_url), url
    assert read_stored(server.data_dir, _upload_id(url)) == data
