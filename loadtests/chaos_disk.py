"""A gateway data dir on a small tmpfs that chaos can fill and free.

Filling does not write a file: the tmpfs is remounted with a size just above what it
holds (the kernel refuses a size below it: then it tries again), so every write that
needs more space fails with ENOSPC at once, and freeing remounts it at its full size.
Mounting needs root (CAP_SYS_ADMIN)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

SLACK = 64 << 10  # bytes left free when full: less than any segment or tail piece
TRIES = 20


class TmpfsError(Exception):
    """mount/umount failed."""


def can_mount() -> bool:
    return os.geteuid() == 0


class Tmpfs:
    def __init__(self, point: Path, size: int) -> None:
        self.point = point
        self.size = size
        self.mounted = False
        self.full = False

    def _mount(self, *options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(self.point)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def mount(self) -> Tmpfs:
        self.point.mkdir(mode=0o700, parents=True, exist_ok=True)
        done = self._mount(f"size={self.size}", "mode=0700")
        if done.returncode != 0:
            raise TmpfsError(f"mount -t tmpfs {self.point}: {done.stderr.strip()}")
        self.mounted = True
        return self

    def used(self) -> int:
        space = os.statvfs(self.point)
        return (space.f_blocks - space.f_bfree) * space.f_frsize

    def fill(self) -> bool:
        """Leave no more than SLACK bytes free; False if it could not (writes raced)."""
        for _ in range(TRIES):
            size = self.used() + SLACK
            if self._mount("remount", f"size={size}").returncode == 0:
                self.full = True
                return True
            time.sleep(0.05)  # it grew between the reading and the remount
        return False

    def free(self) -> None:
        done = self._mount("remount", f"size={self.size}")
        if done.returncode != 0:
            raise TmpfsError(f"remount {self.point}: {done.stderr.strip()}")
        self.full = False

    def unmount(self) -> None:
        if not self.mounted:
            return
        done = subprocess.run(
            ["umount", str(self.point)], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:  # something still holds a file: detach it anyway
            subprocess.run(["umount", "-l", str(self.point)], check=False, timeout=30)
        self.mounted = False
