"""Benchmark the gateway against @tus/server (+ @tus/file-store) with the same clients.

    .venv/bin/python benchmarks/run.py            # full: 64 + 512 MiB, 4 runs each (ABBA ABBA),
                                                  # machine limits, memory, py-spy profile
    .venv/bin/python benchmarks/run.py --quick    # 64 MiB only, 1 run each, limits only

Both servers run on 127.0.0.1 with free ports: `gateway serve` (folder store, fresh
data dir, bearer token in every client) and benchmarks/tus_node_server.mjs (no auth).
Cases: curl (POST, then one PATCH of the whole file with `-T`), tus-js-client under
Node (chunkSize Infinity and 8 MiB), tuspy (8 MiB chunks; and 512 KiB chunks of a
64 MiB file, as mobile clients send them), and 8 concurrent 64 MiB curl uploads. Runs alternate between the servers in ABBA order. Every upload is
checked: the gateway's by decrypting it with the project's Reader, the peer's by
hashing the stored file; both against the source's SHA-256.

Per case: median MB/s (10^6 B/s), server CPU seconds (utime+stime of the server
process tree, from /proc/PID/stat), peak RSS (VmRSS sampled every 50 ms; VmHWM reset
per run) and the ratio gateway / peer. Prints a table; writes
benchmarks/.work/results-<timestamp>.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import limits as limits_mod
from benchlib import (
    ROOT,
    RUNS_DIR,
    WORK,
    Gateway,
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


def cases(sizes: list[int]) -> list[Case]:
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
    out.append(Case("8 x 64 MiB concurrent curl", f64, lambda s, f: curl_concurrent(s, f, 8)))
    return out


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


def abba(runs: int, flip: bool) -> list[int]:
    """Server order for `runs` runs per server: 0 1 1 0 0 1 1 0 ... (flipped: 1 0 0 1 ...)."""
    order: list[int] = []
    for i in range(runs):
        pair = [0, 1] if (i % 2 == 0) != flip else [1, 0]
        order += pair
    return order


def summarize(case: Case, rows: list[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {"case": case.name, "bytes_per_run": rows[0]["bytes"]}
    for name in ("gateway", "tus-node"):
        mine = [r for r in rows if r["server"] == name]
        out[name] = {
            "runs": len(mine),
            "mb_s_median": round(median([float(r["mb_s"]) for r in mine]), 1),
            "mb_s_all": [r["mb_s"] for r in mine],
            "cpu_s_median": round(median([float(r["cpu_s"]) for r in mine]), 2),
            "peak_rss_mib": max(float(r["peak_rss_mib"]) for r in mine),
            "vmhwm_mib": max(float(r["vmhwm_mib"]) for r in mine),
        }
    gw, peer = out["gateway"], out["tus-node"]
    out["ratio"] = round(gw["mb_s_median"] / peer["mb_s_median"], 2)  # type: ignore[index]
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
                "cryptography", "tuspy", "requests", "py-spy"):  # fmt: skip
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


def print_table(summaries: list[dict]) -> None:
    print("\nThroughput (median MB/s, 10^6 B/s), server CPU s per run (median), peak RSS MiB (max)")
    head = (f"  {'case':<36} {'runs':>4} {'gw MB/s':>8} {'peer MB/s':>9} {'ratio':>6} "
            f"{'gw CPU':>7} {'peer CPU':>8} {'gw RSS':>7} {'peer RSS':>8}")  # fmt: skip
    print(head)
    print("  " + "-" * (len(head) - 2))
    for s in summaries:
        gw, peer = s["gateway"], s["tus-node"]
        print(f"  {s['case']:<36} {gw['runs']:>4} {gw['mb_s_median']:>8.1f} "
              f"{peer['mb_s_median']:>9.1f} {s['ratio']:>6.2f} {gw['cpu_s_median']:>7.2f} "
              f"{peer['cpu_s_median']:>8.2f} {gw['peak_rss_mib']:>7.1f} "
              f"{peer['peak_rss_mib']:>8.1f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB only, 1 run each")
    parser.add_argument("--full", action="store_true", help="the default; kept for clarity")
    parser.add_argument("--runs", type=int, help="runs per server per case (default 4; quick 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory benchmark")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    args = parser.parse_args()
    quick = args.quick
    runs = args.runs or (1 if quick else 4)
    sizes = [64] if quick else [64, 512]
    started = time.time()

    node_versions = ensure_node_packages()
    all_cases = cases(sizes)
    info = machine(node_versions)
    log(f"machine: {info['nproc']} x {info['cpu']}, {info['mem_gib']} GiB, "
        f"Python {info['python']}, Node {info['node']}")  # fmt: skip

    log("measuring machine limits")
    lim = limits_mod.measure(quick=quick)

    gateway = Gateway(RUNS_DIR / "gateway")
    peer = TusNode(RUNS_DIR / "tus-node")
    servers: list[Server] = [gateway, peer]
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
            for k in abba(runs, flip=quick and i % 2 == 1):
                row = one_run(servers[k], case)
                row["case"] = case.name
                rows.append(row)
                log(f"  {case.name:<36} {row['server']:<8} {row['mb_s']:>8.1f} MB/s "
                    f"cpu {row['cpu_s']:.2f} s  rss {row['peak_rss_mib']:.0f} MiB")  # fmt: skip
            raw += rows
            summaries.append(summarize(case, rows))
    finally:
        for s in servers:
            s.stop()

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
        "units": {"throughput": "MB/s = 10^6 bytes/s", "rss": "MiB", "cpu": "seconds"},
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
