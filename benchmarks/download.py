"""What the checks of a read cost: GET throughput, and the reader's work per record.

    .venv/bin/python benchmarks/download.py            # 256 MiB, 3 GETs
    .venv/bin/python benchmarks/download.py --size-mib 64 --runs 1

Starts `gateway serve` (folder store, 8 MiB segments) on 127.0.0.1, uploads a random
file with one PATCH (curl -T), then:
- GETs it `runs` times with curl into /dev/null: MB/s (10^6 B/s, curl's own
  %{speed_download}) and the server's CPU seconds per GET;
- reads it in this process with the project's Reader (store + catalog + keyring),
  then times the pieces of that work over the same records on their own: reading
  them from the store, SHA-256 of each record (the check against the SHA-256 the
  catalog recorded) and AES-GCM opening.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import MB, WORK, Gateway, MiB, curl_single, log, random_file, tree_cpu


def curl_get(gateway: Gateway, url: str) -> float:
    headers = [arg for k, v in gateway.headers.items() for arg in ("-H", f"{k}: {v}")]
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_download}", *headers, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    code, speed = out.split()
    if code != "200":
        raise RuntimeError(f"GET answered {code}")
    return float(speed)


def reader_figures(gateway: Gateway, url: str, size: int) -> dict[str, float]:
    from gateway.catalog.sqlite import SQLiteCatalog
    from gateway.keys.keyring import LocalKeyring
    from gateway.layout import data_key
    from gateway.reader import Reader
    from gateway.sealed import Header, Sealer
    from gateway.store.folder import FolderStore

    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    catalog = SQLiteCatalog(gateway.data_dir / "catalog.sqlite3")
    keys = LocalKeyring.open(gateway.data_dir / "keyring.json")
    store = FolderStore(gateway.data_dir / "objects")
    try:
        upload = catalog.get_upload(upload_id)
        assert upload is not None
        figures: dict[str, float] = {}
        started = time.perf_counter()
        got = sum(len(chunk) for chunk in Reader(store, catalog, keys).read(upload))
        figures["reader (all checks)"] = time.perf_counter() - started
        assert got == size, (got, size)

        rows = catalog.records(upload_id)
        hlen = len(upload.header)
        stride = upload.segment_size + 28
        spans = [(hlen + r.index * stride, r.size - (hlen if r.index == 0 else 0)) for r in rows]
        key = data_key(upload_id)
        started = time.perf_counter()
        records = [store.get(key, offset, length) for offset, length in spans]
        figures["store reads"] = time.perf_counter() - started
        started = time.perf_counter()
        for record in records:
            hashlib.sha256(record).digest()
        figures["SHA-256 of the records"] = time.perf_counter() - started
        wrapped = catalog.wrapped_key(upload.dek_id)
        assert wrapped is not None
        dek = keys.unwrap(wrapped, upload_id=upload_id, dek_id=upload.dek_id)
        sealer = Sealer(dek, Header.decode(upload.header))
        started = time.perf_counter()
        for row, record in zip(rows, records, strict=True):
            sealer.open_record(row.index, row.final, record)
        figures["AES-GCM open"] = time.perf_counter() - started
        return figures
    finally:
        catalog.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    source = random_file(args.size_mib * MiB)
    with Gateway(WORK / "download-gateway").start() as gateway:
        assert isinstance(gateway, Gateway)
        url = curl_single(gateway, source).urls[0]
        log(f"uploaded {source.size / MiB:.0f} MiB; GET x{args.runs}")
        for run in range(args.runs):
            cpu = tree_cpu(gateway.pid)
            speed = curl_get(gateway, url)
            cpu = tree_cpu(gateway.pid) - cpu
            print(f"GET {run + 1}: {speed / MB:7.1f} MB/s   server CPU {cpu:5.2f} s")
        figures = reader_figures(gateway, url, source.size)
    for what, seconds in figures.items():
        print(f"{what:24s} {seconds:6.3f} s   {source.size / seconds / MB:7.1f} MB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
