"""A full disk: every write that finds no space answers `507 ERR_INSUFFICIENT_STORAGE`
with Retry-After (and, for a PATCH, the recorded Upload-Offset), records nothing that is
not durable, and the same upload resumes and completes bit-exact once space returns.

Injected ENOSPC/EDQUOT in the folder store and SQLite's SQLITE_FULL (unit), a store
that fails its writes in an in-process app, and a real one: the data dir on a small
tmpfs, filled (needs root to mount; under CI=true it fails rather than skips)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from gateway.catalog.base import CatalogFull
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.store.base import StoreFull, StoreUnavailable
from gateway.store.folder import FolderStore
from gateway.types import Buffer
from tests.fakes import read_span
from tests.inprocess import app_client, build_app
from tests.server import GatewayProcess
from tests.tushttp import OCTET, assert_problem, create, head_offset, patch, upload_id

KiB, MiB = 1 << 10, 1 << 20
SEGMENT = 64 * KiB


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_folder_store_writes_on_a_full_disk_raise_store_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    store = FolderStore(tmp_path / "objects")
    mid = store.start_multipart("U/data")
    store.write_span("U/data", mid, 0, [b"kept"], fence=1)

    def full(fd: int, buffers: Sequence[Buffer], offset: int) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "pwritev", full)
    with pytest.raises(StoreFull):
        store.write_span("U/data", mid, 4, [b"more"], fence=1)
    with pytest.raises(StoreFull):
        store.finish_part("U/data", mid, 1, 0, [b"x"], sha(b"x"), fence=1, written=4)
    with pytest.raises(StoreFull):
        store.put("U/tail/0/0", b"piece", fresh=True)
    monkeypatch.undo()
    assert read_span(store, "U/data", mid, 0, 8) == b"kept"  # nothing else landed

    def no_room(fd: int) -> None:  # delayed allocation: ENOSPC shows at the flush
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fdatasync", no_room)
    with pytest.raises(StoreFull):
        store.put("U/tail/0/1", b"piece")  # written atomically: a temp file and a rename
    with pytest.raises(StoreFull):
        store.write_span("U/data", mid, 0, [b"more"], fence=1)  # not flushed: fine
        store.finish_part("U/data", mid, 1, 0, [b"x"], sha(b"x"), fence=1, written=4)
    monkeypatch.undo()
    assert not list((store.root / "U" / "tail" / "0").glob(".*.tmp"))  # no temp file left


def test_store_full_is_a_store_unavailable(tmp_path: Path) -> None:
    """Every caller that handles an unavailable store handles a full one at least so."""
    assert issubclass(StoreFull, StoreUnavailable)


def test_folder_store_check_reports_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FolderStore(tmp_path / "objects")
    store.check()
    real = os.statvfs(store.root)

    class Full:
        f_bavail = 0
        f_frsize = real.f_frsize

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    with pytest.raises(StoreFull):
        store.check()


def test_sqlite_database_or_disk_is_full_raises_catalog_full(tmp_path: Path) -> None:
    """SQLITE_FULL (here from max_page_count, as from ENOSPC): CatalogFull, rolled back."""
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    try:
        conn = catalog._conn  # the test caps the file at its current size
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(CatalogFull), catalog._tx() as cur:
            cur.execute("CREATE TABLE filler (x BLOB)")
            for _ in range(64):
                cur.execute("INSERT INTO filler VALUES (?)", (os.urandom(4096),))
        assert not conn.in_transaction
        tables = conn.execute("SELECT name FROM sqlite_master WHERE name = 'filler'").fetchall()
        assert tables == []
    finally:
        catalog.close()


def test_other_sqlite_errors_are_not_called_full(tmp_path: Path) -> None:
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    try:
        with pytest.raises(sqlite3.OperationalError), catalog._tx() as cur:
            cur.execute("SELECT * FROM no_such_table")
    finally:
        catalog.close()


def test_patch_on_a_full_store_answers_507_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: the store's writes fail with ENOSPC mid-upload; the PATCH gets 507
    with the recorded offset, HEAD agrees, and once writes succeed again the upload
    completes and reads back bit-exact."""
    app, token = build_app(tmp_path / "data", settings={"segment_size": SEGMENT})
    data = os.urandom(5 * SEGMENT + 1234)
    headers = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    real = os.pwritev
    full = {"on": False}

    def pwritev(fd: int, buffers: Sequence[Buffer], offset: int) -> int:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(real(fd, buffers, offset))

    monkeypatch.setattr(os, "pwritev", pwritev)
    with app_client(app) as client:
        created = client.post("/files/", headers={**headers, "Upload-Length": str(len(data))})
        assert created.status_code == 201, created.text
        url = created.headers["Location"]
        first = 2 * SEGMENT
        answer = client.patch(
            url,
            content=data[:first],
            headers={**headers, "Upload-Offset": "0", "Content-Type": OCTET},
        )
        assert answer.status_code == 204, answer.text
        full["on"] = True
        refused = client.patch(
            url,
            content=data[first:],
            headers={**headers, "Upload-Offset": str(first), "Content-Type": OCTET},
        )
        assert_problem(refused, 507, "ERR_INSUFFICIENT_STORAGE")
        assert int(refused.headers["Retry-After"]) > 0
        recorded = int(refused.headers["Upload-Offset"])
        head = client.head(url, headers=headers)
        assert head.status_code == 200
        assert int(head.headers["Upload-Offset"]) == recorded
        assert first <= recorded < len(data)
        full["on"] = False
        rest = client.patch(
            url,
            content=data[recorded:],
            headers={**headers, "Upload-Offset": str(recorded), "Content-Type": OCTET},
        )
        assert rest.status_code == 204, rest.text
        assert int(rest.headers["Upload-Offset"]) == len(data)
        got = client.get(url, headers=headers)
        assert got.status_code == 200
        assert got.content == data


# -- a real full disk -----------------------------------------------------------------


def _can_mount() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on a fresh temp dir; unmounted and removed after."""
    if not _can_mount():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: this test must run as root (it mounts a tmpfs)")
        pytest.skip("mounting a tmpfs needs root")
    point = Path(tempfile.mkdtemp(prefix="gateway-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        point.rmdir()
        pytest.fail(f"could not mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
        point.rmdir()


def fill(path: Path) -> int:
    """Write `path` until the disk refuses; returns the bytes written."""
    written = 0
    block = b"\0" * (64 * KiB)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(block) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (4096, 1):  # the last pages too
            with contextlib.suppress(OSError):
                while True:
                    written += f.write(b"\0" * size) or 0
    return written


def test_real_full_disk_answers_507_and_resumes_after_space_returns() -> None:
    with small_tmpfs("24m") as mount:
        server = GatewayProcess(mount / "data", env={"GATEWAY_SEGMENT_SIZE": str(SEGMENT)})
        server.start()
        try:
            data = os.urandom(6 * MiB + 4321)
            url = create(server, len(data))
            first = MiB
            assert patch(server, url, data[:first], 0).status_code == 204
            filler = mount / "filler"
            fill(filler)
            refused = patch(server, url, data[first:], first)
            assert_problem(refused, 507, "ERR_INSUFFICIENT_STORAGE")
            assert int(refused.headers["Retry-After"]) > 0
            recorded = int(refused.headers["Upload-Offset"])
            assert first <= recorded < len(data)
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["store"] == "failed: StoreFull"
            # A HEAD needs no space: the recorded offset, nothing beyond it.
            assert head_offset(server, url) == recorded
            filler.unlink()
            assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
            assert head_offset(server, url) == recorded
            rest = patch(server, url, data[recorded:], recorded)
            assert rest.status_code == 204, rest.text
            got = httpx.get(url, headers=server.auth, timeout=60)
            assert got.status_code == 200
            assert got.content == data
            verified = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "verify",
                    "--data-dir",
                    str(server.data_dir),
                    upload_id(url),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, **server.env},
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
        finally:
            server.stop()


def test_real_full_disk_refuses_a_new_upload_with_507() -> None:
    """POST on a full disk (the catalog's insert, or the store's first write): 507,
    and the upload can be created once space returns."""
    with small_tmpfs("16m") as mount:
        server = GatewayProcess(mount / "data", env={"GATEWAY_SEGMENT_SIZE": str(SEGMENT)})
        server.start()
        try:
            filler = mount / "filler"
            fill(filler)
            refused = httpx.post(
                server.files_url,
                headers={**server.auth, "Upload-Length": "1000"},
                timeout=30,
            )
            assert_problem(refused, 507, "ERR_INSUFFICIENT_STORAGE")
            filler.unlink()
            url = create(server, 1000)
            assert patch(server, url, b"x" * 1000, 0).status_code == 204
        finally:
            server.stop()
