"""Memory benchmark: gateway peak RSS for big and concurrent uploads; flat in file size.

    python benchmarks/memory.py [--no-peer] [--runs N]

Scenarios, each on a freshly started server (fresh data dir), curl single PATCHes:
  - 1 x 256 MiB upload;
  - 1 x 1 GiB and 1 x 2 GiB uploads (files made from a random 64 MiB pattern + counter,
    cached);
  - 16 concurrent 64 MiB uploads.
Each scenario runs twice per server (--runs), every time on a fresh server; the
table shows the max. Peak RSS = max of VmRSS sampled every 50 ms; VmHWM (reset through
clear_refs at the start of the upload) is reported too. @tus/server is measured the
same way for context. Every upload is checked byte for byte (SHA-256) before the numbers count.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    RUNS_DIR,
    WORK,
    Gateway,
    GiB,
    Meter,
    MiB,
    Server,
    TestFile,
    TusNode,
    UploadResult,
    curl_concurrent,
    curl_single,
    ensure_node_packages,
    log,
    median,
    pattern_file,
    random_file,
    tree_rss_kib,
)

# Peak RSS of identical single uploads varies by up to ~25 MiB from one fresh gateway
# to the next on this machine (allocator arenas of the I/O threads). Anything kept per
# byte would add hundreds of MiB between 256 MiB and 2 GiB; a difference in the max
# peak above this many MiB counts as growing with the file size.
GROWTH_TOLERANCE_MIB = 64


def _scenarios() -> list[tuple[str, TestFile, Callable[[Server, TestFile], UploadResult]]]:
    return [
        ("1 x 256 MiB", random_file(256 * MiB), curl_single),
        ("1 x 1 GiB", pattern_file(GiB), curl_single),
        ("1 x 2 GiB", pattern_file(2 * GiB), curl_single),
        ("16 x 64 MiB concurrent", random_file(64 * MiB), lambda s, f: curl_concurrent(s, f, 16)),
    ]


def _measure(server: Server, name: str, f: TestFile, fn: Callable[..., UploadResult]) -> dict:
    with server:
        time.sleep(0.5)
        idle = tree_rss_kib(server.pid) / 1024
        with Meter(server.pid) as meter:
            result = fn(server, f)
        for url in result.urls:
            server.verify(url, f)
            server.delete(url)
    row = {"server": server.name, "scenario": name, "idle_rss_mib": round(idle, 1),
           "mb_s": round(result.mb_s, 1), "bytes": result.bytes, **meter.as_dict()}  # fmt: skip
    log(f"  {server.name:<8} {name:<24} peak RSS {row['peak_rss_mib']:7.1f} MiB "
        f"(VmHWM {row['vmhwm_mib']:.1f}, idle {row['idle_rss_mib']:.1f}) "
        f"{row['mb_s']:.1f} MB/s")  # fmt: skip
    return row


def run(peer: bool = True, runs: int = 2) -> dict[str, Any]:
    """Each scenario `runs` times per server, each time on a fresh server (ABBA order)."""
    if peer:
        ensure_node_packages()
    rows = []
    for name, f, fn in _scenarios():
        for i in range(runs):
            servers = [Gateway(RUNS_DIR / "memory-gateway")]
            if peer:
                servers.append(TusNode(RUNS_DIR / "memory-tus-node"))
            for server in servers if i % 2 == 0 else servers[::-1]:
                rows.append(_measure(server, name, f, fn))
    summary = []
    for name, _, _ in _scenarios():
        for server in ("gateway", "tus-node"):
            mine = [r for r in rows if r["scenario"] == name and r["server"] == server]
            if mine:
                summary.append({
                    "scenario": name, "server": server, "runs": len(mine),
                    "idle_rss_mib": max(r["idle_rss_mib"] for r in mine),
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
                    "peak_rss_mib_all": [r["peak_rss_mib"] for r in mine],
                    "vmhwm_mib": max(r["vmhwm_mib"] for r in mine),
                    "mb_s_median": median([r["mb_s"] for r in mine]),
                })  # fmt: skip
    gw = {r["scenario"]: r["peak_rss_mib"] for r in summary if r["server"] == "gateway"}
    growth = gw["1 x 2 GiB"] - gw["1 x 256 MiB"]
    growth_1g = gw["1 x 2 GiB"] - gw["1 x 1 GiB"]
    return {
        "summary": summary,
        "rows": rows,
        "gateway_growth_2gib_vs_256mib_mib": round(growth, 1),
        "gateway_growth_2gib_vs_1gib_mib": round(growth_1g, 1),
        "grows_with_file_size": max(growth, growth_1g) > GROWTH_TOLERANCE_MIB,
        "tolerance_mib": GROWTH_TOLERANCE_MIB,
    }


def print_table(mem: dict[str, Any]) -> None:
    print("\nMemory: peak RSS of the server process tree (MiB, max over runs; each run on a")
    print("fresh server); curl single PATCH per upload")
    print(f"  {'scenario':<24} {'server':<9} {'runs':>4} {'idle':>6} {'peak RSS':>9} "
          f"{'(all runs)':<16} {'VmHWM':>7} {'MB/s':>7}")  # fmt: skip
    for r in mem["summary"]:
        runs = ", ".join(f"{x:.0f}" for x in r["peak_rss_mib_all"])
        print(f"  {r['scenario']:<24} {r['server']:<9} {r['runs']:>4} {r['idle_rss_mib']:>6.1f} "
              f"{r['peak_rss_mib']:>9.1f} {'(' + runs + ')':<16} {r['vmhwm_mib']:>7.1f} "
              f"{r['mb_s_median']:>7.1f}")  # fmt: skip
    verdict = "GROWS" if mem["grows_with_file_size"] else "does not grow"
    d256 = mem["gateway_growth_2gib_vs_256mib_mib"]
    d1g = mem["gateway_growth_2gib_vs_1gib_mib"]
    print(
        f"  gateway peak RSS, 2 GiB minus 256 MiB: {d256:+.1f} MiB; 2 GiB minus 1 GiB: "
        f"{d1g:+.1f} MiB -> {verdict} with file size (tolerance {mem['tolerance_mib']} MiB)"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-peer", action="store_true", help="the gateway only")
    parser.add_argument("--runs", type=int, default=2, help="runs per scenario per server")
    args = parser.parse_args()
    mem = run(peer=not args.no_peer, runs=args.runs)
    print_table(mem)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = WORK / f"results-memory-{stamp}.json"
    out.write_text(json.dumps(mem, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(WORK.parent.parent)}")
    sys.exit(1 if mem["grows_with_file_size"] else 0)
