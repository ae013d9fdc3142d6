"""The gateway's app under uvicorn + httptools (`gateway serve`) against Granian.

    .venv/bin/python benchmarks/servers.py [--runs 4] [--servers uvicorn,granian[,peer]]

Both run the same app on a fresh data dir each (benchmarks/granian_app.py for Granian:
one worker, uvloop). Cases: one 256 MiB curl PATCH, 16 concurrent 64 MiB curl PATCHes,
and tuspy with 512 KiB chunks of a 64 MiB file. Runs alternate in ABBA order, with an
`os.sync()` before each; every upload is decrypted and checked against its SHA-256.
Per case and server: median and range of MB/s (10^6 B/s) and of CPU-s per GiB taken
(utime + stime of the server's process tree, Granian's supervisor included), and the
peak RSS. The crypto floor (limits.py) is measured first, for comparison.
Writes benchmarks/.work/servers-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import limits as limits_mod
from benchlib import ROOT, WORK, MiB, curl_concurrent, curl_single, log, random_file, tuspy
from run import Case, machine, make_server, measure_cases, parse_servers

SHORT = {"gateway": "uvicorn", "gateway-granian": "granian", "tus-node": "peer"}


def ab_cases() -> list[Case]:
    f256, f64 = random_file(256 * MiB), random_file(64 * MiB)
    return [
        Case("curl 1 PATCH, 256 MiB", f256, curl_single),
        Case("16 x 64 MiB concurrent curl", f64, lambda s, f: curl_concurrent(s, f, 16)),
        Case("tuspy chunk 512 KiB, 64 MiB", f64, lambda s, f: tuspy(s, f, 512 * 1024)),
    ]


def print_table(summaries: list[dict[str, Any]]) -> None:
    names = [n for n in SHORT if n in summaries[0]]
    print("\nMedian (range) per server; MB/s = 10^6 B/s; CPU-s per GiB taken; peak RSS MiB")
    print(f"  {'case':<30} {'server':<8} {'runs':>4} {'MB/s':>22} {'CPU-s/GiB':>22} {'RSS':>5}")
    for s in summaries:
        for n in names:
            r = s[n]
            lo, hi = r["mb_s_range"]
            clo, chi = r["cpu_s_per_gib_range"]
            mb = f"{r['mb_s_median']:.0f} ({lo:.0f}-{hi:.0f})"
            cpu = f"{r['cpu_s_per_gib_median']:.2f} ({clo:.2f}-{chi:.2f})"
            print(f"  {s['case']:<30} {SHORT[n]:<8} {r['runs']:>4} {mb:>22} {cpu:>22} "
                  f"{r['peak_rss_mib']:>5.0f}")  # fmt: skip
    floor = summaries[0].get("crypto_floor_cpu_s_per_gib")
    if floor is not None:
        print(f"  crypto floor: {floor:.3f} CPU-s/GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="runs per server per case")
    parser.add_argument("--servers", type=parse_servers, default=["uvicorn", "granian"])
    args = parser.parse_args()
    started = time.time()
    info = machine({})
    floors = [limits_mod.crypto_floor_cpu_s_per_gib(256 * MiB) for _ in range(3)]
    floor = round(sorted(floors)[1], 3)
    log(f"crypto floor {floor:.3f} CPU-s/GiB")
    servers = [make_server(k) for k in args.servers]
    summaries, raw = measure_cases(servers, ab_cases(), args.runs, floor)
    print_table(summaries)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = WORK / f"servers-{stamp}.json"
    out.write_text(json.dumps({
        "timestamp": stamp,
        "servers": args.servers,
        "runs_per_server_per_case": args.runs,
        "elapsed_s": round(time.time() - started, 1),
        "units": {"throughput": "MB/s = 10^6 bytes/s", "rss": "MiB",
                  "cpu_per_gib": "CPU seconds per 2^30 bytes taken"},
        "crypto_floor_cpu_s_per_gib": floor,
        "crypto_floor_runs": [round(x, 3) for x in floors],
        "machine": info,
        "cases": summaries,
        "runs": raw,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\n{len(raw)} uploads verified (SHA-256); wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
