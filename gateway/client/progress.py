"""Progress on stderr: on a terminal, a bar per file being sent and one for the whole run,
redrawn in place; elsewhere (a log, a pipe) one line per finished file."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TextIO

WIDTH = 24
REDRAW_EVERY = 0.1  # seconds
MiB = 1 << 20


@dataclass
class _File:
    name: str
    size: int
    done: int = 0
    started: float = 0.0


def human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < MiB:
        return f"{n / 1024:.1f} KiB"
    if n < 1 << 30:
        return f"{n / MiB:.1f} MiB"
    return f"{n / (1 << 30):.2f} GiB"


def bar(done: int, size: int) -> str:
    fraction = 1.0 if size == 0 else min(1.0, done / size)
    filled = int(fraction * WIDTH)
    return f"[{'#' * filled}{'.' * (WIDTH - filled)}] {fraction * 100:5.1f}%"


class Progress:
    """Thread-safe; `tty` chooses live bars or one line per finished file."""

    def __init__(self, out: TextIO, *, total: int, files: int, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.total = total
        self.files = files
        self._active: dict[str, _File] = {}
        self._done_bytes = 0  # of finished files
        self._finished = 0
        self._drawn = 0  # live lines on screen
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self, name: str, size: int) -> None:
        with self._lock:
            self._active[name] = _File(name, size, started=time.monotonic())
            self._draw(force=True)

    def update(self, name: str, done: int) -> None:
        with self._lock:
            self._active[name].done = done
            self._draw(force=False)

    def finish(self, name: str, *, ok: bool, note: str = "") -> None:
        with self._lock:
            file = self._active.pop(name, None)
            size = file.size if file is not None else 0
            self._done_bytes += size
            self._finished += 1
            took = time.monotonic() - file.started if file is not None else 0.0
            status = "done" if ok else "FAILED"
            line = f"{status} {name} ({human(size)}, {took:.1f} s){': ' + note if note else ''}"
            if self.tty:
                self._clear()
                self.out.write(line + "\n")
                self._draw(force=True)
            else:
                self.out.write(f"gateway upload: {line} [{self._finished}/{self.files}]\n")
            self.out.flush()

    def close(self) -> None:
        with self._lock:
            if self.tty:
                self._clear()
                self.out.flush()

    def _clear(self) -> None:
        if self._drawn:
            # Up to the first live line, then erase everything below it.
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, *, force: bool) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last < REDRAW_EVERY:
            return
        self._last = now
        self._clear()
        lines = [
            f"{bar(f.done, f.size)} {human(f.done)}/{human(f.size)} {f.name[-50:]}"
            for f in self._active.values()
        ]
        done = self._done_bytes + sum(f.done for f in self._active.values())
        lines.append(
            f"{bar(done, self.total)} {human(done)}/{human(self.total)} "
            f"total, {self._finished}/{self.files} files"
        )
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)
