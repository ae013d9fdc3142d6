"""Samples the gateways' resources from /proc while a run goes: RSS, CPU, open files."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from benchmarks.benchlib import process_tree, tree_cpu, tree_rss_kib


def open_files(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


@dataclass
class Peak:
    rss_mib: float = 0.0  # all gateways together, at the highest sample
    open_files: int = 0
    cpu_s: float = 0.0  # CPU seconds of the gateways over the run


class Sampler:
    def __init__(self, pids: list[int], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = Peak()
        self._cpu0 = sum(tree_cpu(p) for p in pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = sum(tree_rss_kib(p) for p in self.pids) / 1024
        files = sum(open_files(p) for p in self.pids)
        self.peak.rss_mib = max(self.peak.rss_mib, rss)
        self.peak.open_files = max(self.peak.open_files, files)
        self.peak.cpu_s = sum(tree_cpu(p) for p in self.pids) - self._cpu0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
