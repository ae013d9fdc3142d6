"""Benchmark the gateway against @tus/server (+ @tus/file-store) with the same clients.

    .venv/bin/python benchmarks/run.py            # full: 64 + 512 MiB, 4 runs each (ABBA ABBA),
                                                  # machine limits, memory, py-spy profile
    .venv/bin/python benchmarks/run.py --quick    # 64 MiB and 16 x 64 MiB, 1 run each, limits only
    .venv/bin/python benchmarks/run.py --servers uvicorn,granian,peer   # the gateway under both

All servers run on 127.0.0.1 with free ports: `gateway serve` (uvicorn + httptools;
folder store, fresh data dir, bearer token in every client), optionally the same app
under Granian (benchmarks/granian_app.py), and benchmarks/tus_node_server.mjs (no
auth). Cases: curl (POST, then one PATCH of the whole file with `-T`), tus-js-client
under Node (chunkSize Infinity and 8 MiB), tuspy (8 MiB chunks; and 512 KiB chunks of
a 64 MiB file, as mobile clients send them), and 16 (full runs also 8) concurrent
64 MiB curl uploads. Runs alternate between the servers in ABBA order (A B C C B A
with three). Every upload is checked: the gateway's by decrypting it with the
project's Reader, the peer's by hashing the stored file; both against the source's
SHA-256.

Per case and server: median MB/s (10^6 B/s), server CPU seconds (utime+stime of the
server process tree, from /proc/PID/stat) per run and per GiB taken (CPU-s/GiB, 2^30
bytes of upload), peak RSS (VmRSS sampled every 50 ms; VmHWM reset per run) and the
ratio gateway / peer. The crypto floor (limits.py: the CPU-s/GiB of the gateway's
mandated hashing and encryption alone) is measured in the same run; per case the
summary shows the peer's CPU-s/GiB plus the floor, and whether the gateway is at or
below it. Prints a table; writes benchmarks/.work/results-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import limits as limits_mod
from benchlib import (
    ROOT,
    RUNS_DIR,
    WORK,
    Gateway,
    GiB,
    GranianGateway,
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
    random_file,
    tus_js,
    tuspy,
)


@dataclass(frozen=True)
class Case:
    name: str
    file: TestFile
    upload: Callable[[Server, TestFile], UploadResult]


SERVER_KINDS = ("uvicorn", "granian", "peer")
PEER = "tus-node"


def make_server(kind: str) -> Server:
    if kind == "uvicorn":
        return Gateway(RUNS_DIR / "gateway")
    if kind == "granian":
        return GranianGateway(RUNS_DIR / "gateway-granian")
    if kind == "peer":
        return TusNode(RUNS_DIR / "tus-node")
    raise ValueError(f"unknown server {kind!r}: one of {', '.join(SERVER_KINDS)}")


def cases(sizes: list[int], *, concurrency: tuple[int, ...] = (16,)) -> list[Case]:
    out = []
    for size in sizes:
        f = random_file(size * MiB)
        tag = f"{size} MiB"
        out += [
            Case(f"curl 1 PATCH, {tag}", f, curl_single),
            Case(f"tus-js-client chunk Inf, {tag}", f, lambda s, f: tus_js(s, f, "Infinity")),
            Case(f"tus-js-client chunk 8 MiB, {tag}", f, lambda s, f: tus_js(s, f, str(8 * MiB))),
            Case(f"tuspy chunk 8 MiB, {tag}", f, lambda s, f: tuspy(s, f, 8 * MiB)),
        ]
    f64 = random_file(64 * MiB)
    # Mobile clients send small chunks over flaky networks; most PATCHes end mid-segment.
    out.append(Case("tuspy chunk 512 KiB, 64 MiB", f64, lambda s, f: tuspy(s, f, 512 * 1024)))
    out += [Case(f"{n} x 64 MiB concurrent curl", f64, _concurrent(n)) for n in concurrency]
    return out


def _concurrent(n: int) -> Callable[[Server, TestFile], UploadResult]:
    return lambda s, f: curl_concurrent(s, f, n)


def one_run(server: Server, case: Case) -> dict[str, object]:
    # Start each run with no dirty pages left over from the one before (either server's),
    # so that no run pays for an earlier run's writeback.
    os.sync()
    with Meter(server.pid) as meter:
        result = case.upload(server, case.file)
    for url in result.urls:  # outside the measurement: bytes checked, then removed
        server.verify(url, case.file)
        server.delete(url)
    return {
        "server": server.name,
        "mb_s": round(result.mb_s, 2),
        "seconds": round(result.seconds, 4),
        "bytes": result.bytes,
        "wall_s": round(meter.wall_s, 4),
        **meter.as_dict(),
        **({"extra": result.extra} if result.extra else {}),
    }


def abba(runs: int, flip: bool, servers: int = 2) -> list[int]:
    """Server order for `runs` runs per server: 0 1 1 0 0 1 1 0 ... (flipped: 1 0 0 1 ...);
    with three servers 0 1 2 2 1 0 ..."""
    forward = list(range(servers))
    order: list[int] = []
    for i in range(runs):
        order += forward if (i % 2 == 0) != flip else forward[::-1]
    return order


def cpu_s_per_gib(row: dict[str, Any]) -> float:
    return float(row["cpu_s"]) / (int(row["bytes"]) / GiB)


def summarize(case: Case, rows: list[dict[str, Any]], floor: float | None = None) -> dict[str, Any]:
    """Medians (and ranges) per server; with the peer and the crypto floor, the peer's
    CPU-s/GiB + the floor and whether each gateway is at or below it."""
    out: dict[str, Any] = {"case": case.name, "bytes_per_run": rows[0]["bytes"]}
    names = list(dict.fromkeys(str(r["server"]) for r in rows))
    for name in names:
        mine = [r for r in rows if r["server"] == name]
        mb = [float(r["mb_s"]) for r in mine]
        per_gib = [cpu_s_per_gib(r) for r in mine]
        out[name] = {
            "runs": len(mine),
            "mb_s_median": round(median(mb), 1),
            "mb_s_range": [round(min(mb), 1), round(max(mb), 1)],
            "mb_s_all": [r["mb_s"] for r in mine],
            "cpu_s_median": round(median([float(r["cpu_s"]) for r in mine]), 2),
            "cpu_s_per_gib_median": round(median(per_gib), 3),
            "cpu_s_per_gib_range": [round(min(per_gib), 3), round(max(per_gib), 3)],
            "peak_rss_mib": max(float(r["peak_rss_mib"]) for r in mine),
            "vmhwm_mib": max(float(r["vmhwm_mib"]) for r in mine),
        }
    if floor is not None:
        out["crypto_floor_cpu_s_per_gib"] = floor
    if PEER in out:
        peer: dict[str, Any] = out[PEER]
        if floor is not None:
            limit = round(peer["cpu_s_per_gib_median"] + floor, 3)
            out["peer_plus_floor_cpu_s_per_gib"] = limit
        for name in names:
            if name == PEER:
                continue
            gw: dict[str, Any] = out[name]
            gw["ratio_to_peer"] = round(gw["mb_s_median"] / peer["mb_s_median"], 2)
            if floor is not None:
                gw["at_or_below_peer_plus_floor"] = gw["cpu_s_per_gib_median"] <= limit
        if "gateway" in out:
            out["ratio"] = out["gateway"]["ratio_to_peer"]
    return out


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


def machine(node_versions: dict[str, str]) -> dict[str, object]:
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    py_pkgs = {}
    for pkg in ("imaging-upload-gateway", "starlette", "uvicorn", "uvloop", "httptools",
                "cryptography", "tuspy", "requests", "py-spy", "granian"):  # fmt: skip
        try:
            py_pkgs[pkg] = version(pkg)
        except PackageNotFoundError:
            py_pkgs[pkg] = "not installed"
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = bool(_version(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"]))
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _version(["node", "--version"]),
        "curl": (_version(["curl", "--version"]).splitlines() or ["n/a"])[0],
        "python_packages": py_pkgs,
        "node_packages": node_versions,
        "gateway_commit": commit + ("+uncommitted changes in gateway/" if dirty else ""),
    }


SHORT = {"gateway": "gw", "gateway-granian": "granian", PEER: "peer"}


def print_table(summaries: list[dict[str, Any]]) -> None:
    names = [k for k in SHORT if k in summaries[0]]
    gateways = [n for n in names if n != PEER]
    with_peer = PEER in names
    print("\nThroughput (median MB/s, 10^6 B/s), server CPU-s per GiB taken (median),"
          " peak RSS MiB (max)")  # fmt: skip
    cols = [f"{SHORT[n]} MB/s" for n in names]
    cols += [f"{SHORT[n]} ratio" for n in gateways if with_peer]
    cols += [f"{SHORT[n]} CPU/GiB" for n in names]
    if with_peer:
        cols += ["peer+floor"] + [f"{SHORT[n]} <=" for n in gateways]
    cols += [f"{SHORT[n]} RSS" for n in names]
    widths = [max(8, len(c)) for c in cols]
    head = f"  {'case':<36} {'runs':>4} " + " ".join(
        f"{c:>{w}}" for c, w in zip(cols, widths, strict=True)
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for s in summaries:
        cells = [f"{s[n]['mb_s_median']:.1f}" for n in names]
        cells += [f"{s[n]['ratio_to_peer']:.2f}" for n in gateways if with_peer]
        cells += [f"{s[n]['cpu_s_per_gib_median']:.2f}" for n in names]
        if with_peer:
            cells.append(f"{s.get('peer_plus_floor_cpu_s_per_gib', float('nan')):.2f}")
            cells += [
                {True: "yes", False: "no"}.get(s[n].get("at_or_below_peer_plus_floor"), "-")
                for n in gateways
            ]
        cells += [f"{s[n]['peak_rss_mib']:.0f}" for n in names]
        runs = s[names[0]]["runs"]
        print(f"  {s['case']:<36} {runs:>4} " + " ".join(
            f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)
        ))  # fmt: skip
    floor = summaries[0].get("crypto_floor_cpu_s_per_gib")
    if floor is not None:
        print(
            f"  crypto floor (SHA-256 + AES-256-GCM + SHA-256, 8 MiB records, median of 3):"
            f" {floor:.3f} CPU-s/GiB"
        )
        print("  '<=': the gateway's CPU-s/GiB is at or below the peer's plus the floor")


def measure_cases(
    servers: list[Server],
    all_cases: list[Case],
    runs: int,
    floor: float | None,
    *,
    flip_odd: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Start the servers, warm each up, run every case in ABBA order, stop them."""
    summaries, raw = [], []
    try:
        for s in servers:
            s.start()
        warm = random_file(64 * MiB)
        for s in servers:  # warm-up, not measured
            r = curl_single(s, warm)
            s.verify(r.urls[0], warm)
            s.delete(r.urls[0])
        for i, case in enumerate(all_cases):
            rows = []
            for k in abba(runs, flip=flip_odd and i % 2 == 1, servers=len(servers)):
                row = one_run(servers[k], case)
                row["case"] = case.name
                rows.append(row)
                log(f"  {case.name:<36} {row['server']:<15} {row['mb_s']:>8.1f} MB/s "
                    f"cpu {row['cpu_s']:.2f} s ({cpu_s_per_gib(row):.2f}/GiB)  "
                    f"rss {row['peak_rss_mib']:.0f} MiB")  # fmt: skip
            raw += rows
            summaries.append(summarize(case, rows, floor))
    finally:
        for s in servers:
            s.stop()
    return summaries, raw


def parse_servers(value: str) -> list[str]:
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SERVER_KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(f"a list of distinct {', '.join(SERVER_KINDS)}")
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="64 MiB (and 16 x 64 MiB) only, 1 run each"
    )
    parser.add_argument("--full", action="store_true", help="the default; kept for clarity")
    parser.add_argument("--runs", type=int, help="runs per server per case (default 4; quick 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory benchmark")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--servers", type=parse_servers, default=["uvicorn", "peer"],
        help="comma-separated, in ABBA order: uvicorn (gateway serve), granian "
        "(the same app under Granian), peer (@tus/server); default uvicorn,peer",
    )  # fmt: skip
    args = parser.parse_args()
    kinds: list[str] = args.servers
    quick = args.quick
    runs = args.runs or (1 if quick else 4)
    sizes = [64] if quick else [64, 512]
    started = time.time()

    node_versions = ensure_node_packages()
    all_cases = cases(sizes, concurrency=(16,) if quick else (8, 16))
    info = machine(node_versions)
    log(f"machine: {info['nproc']} x {info['cpu']}, {info['mem_gib']} GiB, "
        f"Python {info['python']}, Node {info['node']}")  # fmt: skip

    log("measuring machine limits")
    lim = limits_mod.measure(quick=quick)

    floor = float(lim["crypto_floor_cpu_s_per_gib"])  # type: ignore[arg-type]
    servers = [make_server(k) for k in kinds]
    summaries, raw = measure_cases(servers, all_cases, runs, floor, flip_odd=quick)

    mem = prof = None
    if not quick and not args.no_memory:
        import memory

        log("memory benchmark")
        mem = memory.run(peer=True)
    if not quick and not args.no_profile:
        import profile_gateway as profile_mod

        prof = profile_mod.run(512)

    print(f"\nMachine: {info['nproc']} x {info['cpu']}, {info['mem_gib']} GiB RAM, "
          f"kernel {info['kernel']}, Python {info['python']}, Node {info['node']}")  # fmt: skip
    print_table(summaries)
    limits_mod.print_table(lim)
    if mem is not None:
        import memory

        memory.print_table(mem)
    if prof is not None:
        import profile_gateway as profile_mod

        profile_mod.print_summary(prof)

    elapsed = time.time() - started
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = WORK / f"results-{stamp}.json"
    out.write_text(json.dumps({
        "timestamp": stamp,
        "mode": "quick" if quick else "full",
        "runs_per_server_per_case": runs,
        "elapsed_s": round(elapsed, 1),
        "servers": kinds,
        "units": {"throughput": "MB/s = 10^6 bytes/s", "rss": "MiB", "cpu": "seconds",
                  "cpu_per_gib": "CPU seconds per 2^30 bytes taken"},
        "crypto_floor_cpu_s_per_gib": floor,
        "machine": info,
        "limits": lim,
        "cases": summaries,
        "runs": raw,
        "memory": mem,
        "profile": prof,
    }, indent=2) + "\n")  # fmt: skip
    print(
        f"\n{len(raw)} uploads verified (SHA-256); {elapsed:.0f} s; wrote {out.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
