"""One large curl PATCH, the gateway against the peer, in ABBA pairs: MB/s and CPU per GiB.

    python benchmarks/single.py [--pairs 16] [--mib 256]

The gateway (`gateway serve`, folder store, fresh data dir) and the peer
(@tus/server + @tus/file-store) run side by side. After one warm-up upload each, every
pair uploads the same file once to each server (A B, then B A, ...), with `os.sync()`
before each run so no run pays for another's dirty pages; each upload is deleted after
its run. The ratio is taken per pair (gateway / peer of the same pair), since both
servers' throughput follows what else the machine does at that moment; the summary is
the median over the pairs. CPU: utime + stime of each server's process tree, per GiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    RUNS_DIR,
    Gateway,
    GiB,
    MiB,
    Server,
    TusNode,
    curl_single,
    ensure_node_packages,
    log,
    random_file,
    tree_cpu,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    f = random_file(args.mib * MiB)
    ensure_node_packages()
    servers: dict[str, Server] = {
        "gateway": Gateway(RUNS_DIR / "single-gateway"),
        "peer": TusNode(RUNS_DIR / "single-peer"),
    }
    speeds: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.start()
            for url in curl_single(server, f).urls:  # warm-up
                server.delete(url)
        for pair in range(args.pairs):
            order = ("gateway", "peer") if pair % 2 == 0 else ("peer", "gateway")
            for name in order:
                server = servers[name]
                os.sync()
                time.sleep(0.3)
                before = tree_cpu(server.pid)
                result = curl_single(server, f)
                cpu[name].append((tree_cpu(server.pid) - before) / (f.size / GiB))
                speeds[name].append(result.mb_s)
                for url in result.urls:
                    server.delete(url)
            gateway, peer = speeds["gateway"][-1], speeds["peer"][-1]
            log(f"pair {pair + 1}: gateway {gateway:.0f}, peer {peer:.0f} MB/s")
    finally:
        for server in servers.values():
            server.stop()
    ratios = [g / p for g, p in zip(speeds["gateway"], speeds["peer"], strict=True)]
    print(f"\none {args.mib} MiB curl PATCH, {args.pairs} pairs (ABBA), medians (range)")
    for name in servers:
        print(
            f"  {name:8s} {statistics.median(speeds[name]):6.0f} MB/s "
            f"({min(speeds[name]):.0f}-{max(speeds[name]):.0f})  "
            f"{statistics.median(cpu[name]):.2f} CPU-s/GiB "
            f"({min(cpu[name]):.2f}-{max(cpu[name]):.2f})"
        )
    print(
        f"  gateway / peer per pair: {statistics.median(ratios):.3f} "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
