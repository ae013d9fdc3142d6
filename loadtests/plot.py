"""The plot of a stepped run: users against the p99 acknowledgement time and the
throughput, as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server

import matplotlib.pyplot as plt

from loadtests.steps import ACK_LIMIT_MS, TARGET_CHUNK, Step, percentile

FLOOR_S = 0.001  # the log scale's floor: a millisecond


def seconds(ms: float) -> float:
    return max(FLOOR_S, ms / 1000)


def plot(steps: list[Step], path: Path, title: str) -> None:
    users = [s.users for s in steps]
    figure, latency = plt.subplots(figsize=(8, 4.5), dpi=100)
    p99 = [seconds(percentile(s.acks, 0.99)) for s in steps]
    latency.plot(users, p99, "o-", color="tab:red", label="ACK p99, all chunks")
    target = [
        seconds(percentile(s.target_acks, 0.99)) if s.target_acks else float("nan") for s in steps
    ]
    if any(s.target_acks for s in steps):
        latency.plot(
            users, target, "s--", color="tab:orange", label=f"ACK p99, {TARGET_CHUNK} chunks"
        )
    latency.plot(
        users,
        [seconds(percentile(s.acks, 0.5)) for s in steps],
        "^:",
        color="tab:blue",
        label="ACK p50",
    )
    latency.axhline(ACK_LIMIT_MS / 1000, color="grey", linewidth=0.8)
    latency.set_xlabel("concurrent users")
    latency.set_ylabel("s from the gateway having a chunk to its answer")
    latency.set_yscale("log")
    throughput = latency.twinx()
    throughput.plot(users, [s.mb_s for s in steps], "d-", color="tab:green", label="MB/s taken")
    throughput.set_ylabel("MB/s sent to the gateway")
    throughput.set_ylim(bottom=0)
    lines = latency.get_legend_handles_labels()
    more = throughput.get_legend_handles_labels()
    latency.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize="small")
    latency.set_title(title, fontsize="medium")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
