"""What HEAD pays for opening sealed Upload-Metadata (a catalog read and an unwrap).

    python benchmarks/head.py [--requests N]

- over HTTP: one gateway on a fresh data dir, two finished uploads (one with a
  200-byte Upload-Metadata header, one without); N sequential HEADs of each on one
  keep-alive connection, after a warm-up: requests per second, median and 95th
  percentile latency;
- in process (the uploads service on a SQLite catalog and a keyring): CPU time per
  call of `get` (what every HEAD does) and of `open_metadata` (what a HEAD of an
  upload with metadata adds), counting the catalog thread's work too. CPU time is
  the steadier figure on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import shutil
import statistics
import time
from urllib.parse import urlsplit

from benchlib import WORK, Gateway, log, request

from gateway.catalog.base import Principal
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import Settings
from gateway.keys.keyring import LocalKeyring
from gateway.store.folder import FolderStore
from gateway.wiring import build_services

METADATA = ",".join(
    f"{key} {base64.b64encode(value.encode()).decode()}"
    for key, value in {
        "filename": "DOE^JOHN_MRN12345_CT-chest_2026-11-29.dcm",
        "patient": "Doe, John Q.",
        "study": "1.2.840.113619.2.55.3.604688119.868.1234567890.123",
        "modality": "CT",
    }.items()
)


def _create(gateway: Gateway, metadata: str | None) -> str:
    headers = {**gateway.headers, "Tus-Resumable": "1.0.0", "Upload-Length": "0"}
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    status, answer = request("POST", gateway.endpoint, headers)
    assert status == 201, status
    return answer["location"]


def _heads(gateway: Gateway, url: str, n: int) -> list[float]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {**gateway.headers, "Tus-Resumable": "1.0.0"}
    times = []
    try:
        for i in range(n + n // 10):
            start = time.perf_counter()
            conn.request("HEAD", parts.path, headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            if i >= n // 10:  # the first tenth warms up
                times.append(time.perf_counter() - start)
    finally:
        conn.close()
    return times


async def _in_process(n: int) -> None:
    data_dir = WORK / "head" / "service"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    services = build_services(
        Settings(data_dir=data_dir),
        store=FolderStore(data_dir / "objects"),
        catalog=catalog,
        keys=LocalKeyring.open(data_dir / "keyring.json"),
    )
    service = services.uploads
    me = Principal("bench", "bench")
    try:
        upload = await service.create(me, length=0, metadata=METADATA)
        for label, call in (
            ("get", lambda: service.get(me, upload.id)),
            ("open_metadata", lambda: service.open_metadata(upload)),
        ):
            start = time.process_time()
            for _ in range(n):
                await call()
            cpu = (time.process_time() - start) / n
            log(f"in process {label:>13}: {cpu * 1e6:5.0f} us CPU per call")
    finally:
        await services.close()
        catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with Gateway(WORK / "head" / "data") as gateway:
        assert isinstance(gateway, Gateway)
        urls = {"with metadata": _create(gateway, METADATA), "without": _create(gateway, None)}
        for label, url in urls.items():
            times = _heads(gateway, url, args.requests)
            ms = sorted(t * 1000 for t in times)
            log(
                f"HEAD {label:>13}: {len(times) / sum(times):7.0f} req/s, "
                f"median {statistics.median(ms):.3f} ms, p95 {ms[int(len(ms) * 0.95)]:.3f} ms"
            )
    asyncio.run(_in_process(args.requests))


if __name__ == "__main__":
    main()
