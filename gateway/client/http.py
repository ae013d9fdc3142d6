"""One HTTP session per file: bearer auth, timeouts, and the classification of every
answer into success, a transient failure worth retrying, or a final one.

    UploadError          a file failed (its message is for the technician)
     +-- Refused         401/403: the credential is wrong; no file can succeed
     +-- Gone            404/410: the upload URL is unknown or expired
     +-- Transient       connection errors, 5xx, 409, 423, 429, 460: retry after a pause
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import requests

TIMEOUT = (10.0, 120.0)  # connect, and between bytes of the answer (a PATCH is sealed first)
# 409: our offset is stale (re-HEAD); 423: another request holds the upload; 429: rate or
# writer limits; 460: the chunk arrived damaged; 5xx: the gateway, its store or catalog.
RETRY_STATUSES = frozenset({409, 423, 429, 460})
T = TypeVar("T")


class UploadError(Exception):
    """A file could not be sent or checked."""


class Refused(UploadError):
    """The gateway refused the credential: every file would fail the same way."""


class Gone(UploadError):
    """The upload URL is unknown to the gateway or has expired."""


class Transient(UploadError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Aborted(UploadError):
    """The run is stopping (interrupted, or the credential was refused)."""


class _Bearer(requests.auth.AuthBase):
    """Explicit auth, so requests never replaces the header with ~/.netrc's."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._header
        return r


def session(token: str) -> requests.Session:
    s = requests.Session()
    s.auth = _Bearer(token)
    s.headers["User-Agent"] = "gateway-upload/1"
    return s


def send(s: requests.Session, method: str, url: str, **kwargs: object) -> requests.Response:
    """One request; a failed connection is Transient, never a requests exception."""
    try:
        return s.request(method, url, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    except requests.RequestException as exc:
        raise Transient(f"{method} failed: {type(exc).__name__}: {_short(exc)}") from None


def check(response: requests.Response, what: str, ok: Callable[[int], bool]) -> None:
    """Raise the UploadError an answer means unless `ok(status)`."""
    status = response.status_code
    if ok(status):
        return
    message = f"{what}: {status} {problem(response)}".rstrip()
    if status in (401, 403):
        raise Refused(message)
    if status in (404, 410):
        raise Gone(message)
    if status >= 500 or status in RETRY_STATUSES:
        raise Transient(message, _retry_after(response))
    raise UploadError(message)


def problem(response: requests.Response) -> str:
    """The gateway's stable code and sentence from an RFC 9457 body, if it sent one."""
    try:
        body = json.loads(response.content[:4096])
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    code, detail = body.get("code"), body.get("detail")
    return " ".join(str(x) for x in (code, detail and f"({detail})") if x)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


@dataclass
class Backoff:
    """Exponential backoff with jitter: base, 2*base, ... up to cap; `attempts` retries."""

    attempts: int = 8
    base: float = 0.5
    cap: float = 30.0
    stop: threading.Event | None = None
    sleep: Callable[[float], object] = time.sleep

    def delays(self) -> Iterator[float]:
        for n in range(self.attempts):
            delay = min(self.cap, self.base * 2**n)
            yield delay * (0.5 + 0.5 * random.random())

    def pause(self, seconds: float) -> None:
        if self.stop is not None:
            if self.stop.wait(seconds):
                raise Aborted("stopped")
        else:
            self.sleep(seconds)

    def run(self, call: Callable[[], T], *, before_retry: Callable[[], None] | None = None) -> T:
        """`call()`, retried after each Transient failure; the last one is raised."""
        delays = self.delays()
        while True:
            try:
                return call()
            except Transient as exc:
                delay = next(delays, None)
                if delay is None:
                    raise UploadError(f"{exc} (gave up after {self.attempts} retries)") from None
                self.pause(min(self.cap, max(delay, exc.retry_after or 0.0)))
                if before_retry is not None:
                    before_retry()
