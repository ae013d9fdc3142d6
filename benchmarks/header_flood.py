"""Header flood: server memory while clients send one endless header line each.

    python benchmarks/header_flood.py [--connections 20] [--mib 50]

Starts a fresh gateway, opens N connections and on each sends a request line and then
one header line of M MiB that never ends (64 KiB writes, no CRLF), all at once. Prints
the gateway's RSS before, its peak while the flood runs (VmRSS sampled every 50 ms)
and afterwards, how many bytes each connection could send before the server closed
it, and what it answered (the gateway answers 431 after GATEWAY_MAX_HEADER_BYTES).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import WORK, Gateway, Meter, MiB, tree_rss_kib

CHUNK = b"a" * (64 * 1024)


def flood(port: int, total: int, result: dict[str, object]) -> None:
    sent = 0
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ")
            while sent < total:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(200)
            result["answer"] = answer.split(b"\r\n", 1)[0].decode("latin-1") or "closed"
    except OSError as exc:
        result["answer"] = type(exc).__name__
    result["sent_mib"] = round(sent / MiB, 1)
    result["seconds"] = round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--mib", type=int, default=50)
    args = parser.parse_args()
    with Gateway(WORK / "header-flood" / "data").start() as gateway:
        time.sleep(1)
        before = tree_rss_kib(gateway.pid) / 1024
        results: list[dict[str, object]] = [{} for _ in range(args.connections)]
        threads = [
            threading.Thread(target=flood, args=(gateway.port, args.mib * MiB, r)) for r in results
        ]
        with Meter(gateway.pid) as meter:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        time.sleep(1)
        after = tree_rss_kib(gateway.pid) / 1024
    answers: dict[str, int] = {}
    for r in results:
        answers[str(r["answer"])] = answers.get(str(r["answer"]), 0) + 1
    sent = [float(r["sent_mib"]) for r in results]  # type: ignore[arg-type]
    summary = {
        "connections": args.connections,
        "line_mib": args.mib,
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(meter.peak_rss_kib / 1024, 1),
        "rss_after_mib": round(after, 1),
        "sent_mib_min_max": [min(sent), max(sent)],
        "answers": answers,
        "wall_s": round(meter.wall_s, 1),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
