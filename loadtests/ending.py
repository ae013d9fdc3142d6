"""Ends a run told to stop from outside (SIGTERM, SIGHUP, SIGINT) the way its own end
does: the signal becomes SystemExit in the main thread, so its `finally` blocks stop the
gateways and servers the run started and remove its folders. Under Locust the handler
runs in gevent's hub, which passes SystemExit on to the main greenlet."""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def exit_on_signals() -> None:
    """Call from the main thread before starting anything."""
    for signum in SIGNALS:
        signal.signal(signum, _exit)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
