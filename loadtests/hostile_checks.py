"""What the hostile run checks besides the answers: which 5xx are allowed, whether the
gateway is still alive and serving a round trip, and its log's unhandled errors."""

from __future__ import annotations

import json

import httpx

from loadtests.hostile_targets import OCTET, pattern

# 501: a transfer coding other than chunked (documented). 503 and 507: a documented
# transient refusal, with Retry-After.
RETRY_LATER = {503, 507}


def bad_status(status: int, retry_after: bool) -> bool:
    if status < 500 or status == 501:
        return False
    return not (status in RETRY_LATER and retry_after)


def alive(base_url: str, token: str) -> bool:
    """/healthz and /readyz answer 200, and an upload goes in and reads back."""
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    data = pattern(100_000, "alive")
    try:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            if client.get("/healthz").status_code != 200:
                return False
            if client.get("/readyz").status_code != 200:
                return False
            r = client.post("/files/", headers={**auth, "Upload-Length": str(len(data))})
            if r.status_code != 201:
                return False
            path = "/files/" + r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
            headers = {**auth, "Upload-Offset": "0", "Content-Type": OCTET}
            if client.patch(path, headers=headers, content=data).status_code != 204:
                return False
            got = client.get(path, headers=auth)
            return got.status_code == 200 and got.content == data
    except httpx.HTTPError:
        return False


# The documented 503/507 refusals, which the gateway logs at error level on purpose.
_EXPECTED = (
    "ERR_STORE_UNAVAILABLE",
    "ERR_CATALOG_UNAVAILABLE",
    "ERR_SERVER_BUSY",
    "ERR_SERVER_SHUTDOWN",
    "ERR_KEY_SHRED_PENDING",
    "ERR_INSUFFICIENT_STORAGE",
)


def _expected(message: str) -> bool:
    return message.startswith("request failed: ") and message.split()[-1] in _EXPECTED


def log_errors(log: str) -> list[str]:
    """Log lines of an unhandled exception: an error-level entry other than a documented
    refusal, or a traceback (GATEWAY_LOG_FORMAT=text) that does not follow one."""
    found = []
    after_expected = False
    for line in log.splitlines():
        if line.startswith("ERROR ") or line.startswith("CRITICAL "):
            after_expected = _expected(line.split(" ", 2)[-1])
            if not after_expected:
                found.append(line[:500])
            continue
        if "Traceback" in line:
            if not after_expected:
                found.append(line)
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        error = isinstance(entry, dict) and entry.get("level") in ("error", "critical")
        if error and not _expected(str(entry.get("msg", ""))):
            found.append(line[:500])
    return found
