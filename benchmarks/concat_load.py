"""Another user's small uploads while final concatenations are being created.

    python benchmarks/concat_load.py [--partials 8] [--partial-mib 8] [--finals 8]
                                     [--repeat 1000] [--small 20]

User A uploads `--partials` partials of `--partial-mib` MiB, then sends `--finals`
final concatenations at once, twice over: each listing all its partials, then each
listing the first partial `--repeat` times. Meanwhile user B uploads `--small`
1 KiB files one after the other (POST, then PATCH). Printed: how long the finals
took and how they were answered, and B's upload latencies (median, max) with and
without the finals running. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import OCTET, ROOT, WORK, Gateway, MiB, median


def call(method: str, url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        conn.request(method, parts.path, body=body or None, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location") or ""
    finally:
        conn.close()


def upload(server: Gateway, token: str, data: bytes, concat: str | None = None) -> str:
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    create = {**auth, "Upload-Length": str(len(data))}
    if concat:
        create["Upload-Concat"] = concat
    status, location = call("POST", server.endpoint, create)
    assert status == 201, status
    url = urljoin(server.endpoint, location)
    patch = {**auth, "Upload-Offset": "0", "Content-Type": OCTET}
    status, _ = call("PATCH", url, patch, data)
    assert status == 204, status
    return url


def small_uploads(server: Gateway, token: str, n: int, stop: threading.Event) -> list[float]:
    times = []
    for _ in range(n):
        if stop.is_set():
            break
        t0 = time.perf_counter()
        upload(server, token, os.urandom(1024))
        times.append(time.perf_counter() - t0)
    return times


def finals(server: Gateway, token: str, lists: list[list[str]]) -> tuple[float, dict[int, int]]:
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}

    def one(paths: list[str]) -> int:
        concat = "final;" + " ".join(paths)
        return call("POST", server.endpoint, {**auth, "Upload-Concat": concat})[0]

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(len(lists)) as pool:
        statuses = list(pool.map(one, lists))
    counts: dict[int, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return time.perf_counter() - t0, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partials", type=int, default=8)
    ap.add_argument("--partial-mib", type=int, default=8)
    ap.add_argument("--finals", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1000)
    ap.add_argument("--small", type=int, default=20)
    args = ap.parse_args()

    server = Gateway(WORK / "concat-load" / "data").start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "token", "--data-dir", str(server.data_dir),
             "--principal", "bob"],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        bob = out.stdout.strip().splitlines()[-1]
        alice = server.token
        size = args.partial_mib * MiB
        paths = [
            urlsplit(upload(server, alice, os.urandom(size), "partial")).path
            for _ in range(args.partials)
        ]
        quiet = small_uploads(server, bob, args.small, threading.Event())
        print(f"B alone: {len(quiet)} uploads of 1 KiB, median {median(quiet) * 1000:.0f} ms, "
              f"max {max(quiet) * 1000:.0f} ms")  # fmt: skip
        for name, listed in (
            (f"{args.partials} distinct partials", paths),
            (f"one partial x{args.repeat}", [paths[0]] * args.repeat),
        ):
            stop = threading.Event()
            with cf.ThreadPoolExecutor(1) as pool:
                busy = pool.submit(small_uploads, server, bob, 10**6, stop)
                took, counts = finals(server, alice, [listed] * args.finals)
                stop.set()
                loaded = busy.result()
            print(f"{args.finals} finals of {name}: {took:.2f} s, answered {counts}; "
                  f"B meanwhile: {len(loaded)} uploads, median {median(loaded) * 1000:.0f} ms, "
                  f"max {max(loaded) * 1000:.0f} ms")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
