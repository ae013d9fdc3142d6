"""How far HEAD's offset lags behind the bytes a slow PATCH has sent.

    python benchmarks/head_lag.py [--size-mib 40] [--rate-mib 2] [--segment-mib 8]

One `gateway serve` (folder store, default settings unless --segment-mib), one upload
sent in a single PATCH at a steady rate (64 KiB writes, paced), HEAD polled every
0.25 s from another connection. Prints each sample (seconds, bytes sent, HEAD's
offset, the lag between them), then the largest lag, the mean lag once the first
segment was sent, and when HEAD first moved. The PATCH must end 204 (polling must
not interrupt it) and the stored bytes must match.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import OCTET, WORK, Gateway, MiB, random_file, request

WRITE = 64 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=40)
    parser.add_argument("--rate-mib", type=float, default=2.0)
    parser.add_argument("--segment-mib", type=int, default=0, help="0: the default (8)")
    args = parser.parse_args()
    env = {"GATEWAY_SEGMENT_SIZE": str(args.segment_mib * MiB)} if args.segment_mib else {}
    segment = args.segment_mib * MiB or 8 * MiB
    source = random_file(args.size_mib * MiB)
    data = source.path.read_bytes()
    with Gateway(WORK / "head-lag", env) as server:
        url = server.create(len(data))
        sent = 0
        outcome: list[int] = []

        def body() -> Iterator[bytes]:
            nonlocal sent
            started = time.monotonic()
            for at in range(0, len(data), WRITE):
                due = started + at / (args.rate_mib * MiB)
                time.sleep(max(0.0, due - time.monotonic()))
                yield data[at : at + WRITE]
                sent = min(at + WRITE, len(data))

        def send() -> None:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
            headers = {
                **server.headers,
                "Tus-Resumable": "1.0.0",
                "Content-Type": OCTET,
                "Upload-Offset": "0",
                "Content-Length": str(len(data)),
            }
            conn.request("PATCH", parts.path, body=body(), headers=headers)
            response = conn.getresponse()
            response.read()
            outcome.append(response.status)
            conn.close()

        sender = threading.Thread(target=send, daemon=True)
        t0 = time.monotonic()
        sender.start()
        samples: list[tuple[float, int, int]] = []
        while sender.is_alive():
            before = sent
            status, headers = request("HEAD", url, {**server.headers, "Tus-Resumable": "1.0.0"})
            if status != 200:
                raise RuntimeError(f"HEAD answered {status}")
            samples.append((time.monotonic() - t0, before, int(headers["upload-offset"])))
            time.sleep(0.25)
        sender.join()
        print(f"{'s':>6} {'sent MiB':>9} {'HEAD MiB':>9} {'lag MiB':>8}")
        for at, before, offset in samples:
            print(
                f"{at:6.2f} {before / MiB:9.2f} {offset / MiB:9.2f} {(before - offset) / MiB:8.2f}"
            )
        lags = [before - offset for _, before, offset in samples if before >= segment]
        moved = next((at for at, _, offset in samples if offset > 0), None)
        print(f"PATCH answered {outcome[0] if outcome else 'nothing'}")
        print(f"largest lag {max(lags) / MiB:.2f} MiB, mean {statistics.mean(lags) / MiB:.2f} MiB")
        print(f"HEAD first moved after {moved:.2f} s" if moved is not None else "HEAD never moved")
        server.verify(url, source)
        print("stored bytes match")


if __name__ == "__main__":
    main()
