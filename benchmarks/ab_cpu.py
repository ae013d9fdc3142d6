"""A/B: the server's CPU seconds per GiB of two gateway checkouts, side by side.

    python benchmarks/ab_cpu.py --a ../base-checkout [--b .] [--runs 4] [--cases concurrent,single]

Two gateways (folder store, SQLite catalog, fresh data dirs) run at once, one from each
checkout (its own `gateway` package: the process starts in that directory). Each case
runs `--runs` times per gateway in ABBA order (A B, B A, ...), after one warm-up
upload each, with `os.sync()` before every run so no run pays for another's dirty
pages. Cases: `concurrent` (16 curl PATCHes of 64 MiB at once), `single` (one curl
PATCH of 256 MiB). Judged by CPU: utime + stime of the server's process tree from
/proc, per GiB uploaded; MB/s is shown too, but on a shared machine it follows the
other load. The first run of each case and side is read back and checked (SHA-256).
Writes benchmarks/.work/ab-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import (
    RUNS_DIR,
    WORK,
    Gateway,
    MiB,
    TestFile,
    UploadResult,
    curl_concurrent,
    curl_single,
    log,
    median,
    random_file,
    tree_cpu,
)

GiB = 1 << 30

CASES: dict[str, tuple[int, Callable[[Gateway, TestFile], UploadResult]]] = {
    "concurrent": (64, lambda gw, f: curl_concurrent(gw, f, 16)),
    "single": (256, curl_single),
}


class CheckoutGateway(Gateway):
    """`gateway serve` started in another checkout, so its own code runs."""

    def __init__(self, data_dir: Path, root: Path) -> None:
        super().__init__(data_dir, {"PYTHONPATH": str(root)})
        self.root = root

    def start(self) -> CheckoutGateway:
        # Gateway runs `python -m gateway.cli` in benchlib.ROOT: our checkout instead.
        saved, benchlib.ROOT = benchlib.ROOT, self.root
        try:
            super().start()
        finally:
            benchlib.ROOT = saved
        return self


def commit_of(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def one_run(gw: Gateway, case: str, f: TestFile, check: bool) -> dict[str, float]:
    _, client = CASES[case]
    os.sync()
    cpu0 = tree_cpu(gw.pid)
    result = client(gw, f)
    time.sleep(0.3)  # let the last commits and lease releases finish
    cpu = tree_cpu(gw.pid) - cpu0
    if check:
        for url in result.urls:
            gw.verify(url, f)
    for url in result.urls:
        gw.delete(url)
    return {
        "mb_s": round(result.mb_s, 1),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_gib": round(cpu * GiB / result.bytes, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout of the base commit")
    parser.add_argument("--b", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=4, help="runs per gateway and case")
    parser.add_argument("--cases", default="concurrent,single")
    args = parser.parse_args()
    cases = args.cases.split(",")
    sides = {"A": args.a.resolve(), "B": args.b.resolve()}
    commits = {k: commit_of(v) for k, v in sides.items()}
    files = {case: random_file(CASES[case][0] * MiB) for case in cases}
    gws = {k: CheckoutGateway(RUNS_DIR / f"ab-{k}", root) for k, root in sides.items()}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {c: {"A": [], "B": []} for c in cases}
    try:
        for gw in gws.values():
            gw.start()
        for case in cases:
            for gw in gws.values():
                one_run(gw, case, files[case], check=False)  # warm-up
            for r in range(args.runs):
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for side in order:
                    row = one_run(gws[side], case, files[case], check=r < 2)
                    runs[case][side].append(row)
                    log(f"{case} {side} ({commits[side]}): {row}")
    finally:
        for gw in gws.values():
            gw.stop()
    summary: dict[str, object] = {"commits": commits, "runs": runs}
    print(f"\nA = {commits['A']}  B = {commits['B']}  ({args.runs} runs each, ABBA; medians)")
    print(
        "| case | A CPU-s/GiB | B CPU-s/GiB | B/A by round | A MB/s | B MB/s | A range | B range |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        a, b = runs[case]["A"], runs[case]["B"]

        def med(rows: list[dict[str, float]], key: str) -> float:
            return median([row[key] for row in rows])

        def span(rows: list[dict[str, float]]) -> str:
            xs = [row["cpu_s_per_gib"] for row in rows]
            return f"{min(xs):.2f}-{max(xs):.2f}"

        # Each round's two runs ran back to back: their ratio cancels slow drifts in load.
        ratios = [y["cpu_s_per_gib"] / x["cpu_s_per_gib"] for x, y in zip(a, b, strict=True)]
        ratio = f"{median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
        print(
            f"| {case} | {med(a, 'cpu_s_per_gib'):.2f} | {med(b, 'cpu_s_per_gib'):.2f} | {ratio} "
            f"| {med(a, 'mb_s'):.0f} | {med(b, 'mb_s'):.0f} | {span(a)} | {span(b)} |"
        )
    out = WORK / f"ab-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{out}")


if __name__ == "__main__":
    main()
