"""The end of a chaos run, once no fault is left: every upload any user created is
checked against what its client knows.

- `HEAD` answers 200 with an offset no lower than the highest one acknowledged (the
  difference is `lost_bytes`) and no higher than what was ever sent;
- an unfinished upload is resumed from there to its end (no upload may be stuck);
- every completed upload is downloaded whole and compared with the bytes sent, and
  `gateway verify` (the signed manifest against the stored object) runs on a sample.

Anything that does not hold is a failure, or `stuck` with its reason when an upload
could not be taken to its end."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from loadtests.body import Body
from tests.server import GatewayProcess

RETRY = (423, 429, 503, 507)
TRIES = 30
CHUNK = 4 << 20


class Study(Protocol):
    """What a client knows of an upload (loadtests.context.Study; no Locust import here)."""

    body: Body
    path: str  # /files/<id>
    token: str
    acked: int  # the highest offset acknowledged
    sent: int  # the furthest offset ever sent


@dataclass
class Checked:
    uploads: int = 0  # every upload a user created
    completed: int = 0  # complete at the end (by the users, or resumed here)
    resumed: int = 0  # unfinished at the end of the run, resumed to their end here
    verified: int = 0  # completed, downloaded and the same bytes as sent
    gateway_verified: int = 0  # ... and `gateway verify` OK
    lost_bytes: int = 0  # acknowledged bytes the gateway no longer has
    failures: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)


class Stuck(Exception):
    """The upload could not be taken further; the message says why."""


class Checker:
    def __init__(self, gateways: list[GatewayProcess], rng: random.Random) -> None:
        self.gateways = gateways
        self.rng = rng
        self.client = httpx.Client(timeout=120)

    def close(self) -> None:
        self.client.close()

    def _request(
        self,
        study: Study,
        method: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """A request to any gateway, retried while refused or unanswered."""
        headers = {
            "Authorization": f"Bearer {study.token}",
            "Tus-Resumable": "1.0.0",
            **(headers or {}),
        }
        last = ""
        for _ in range(TRIES):
            url = self.rng.choice(self.gateways).url + study.path
            try:
                response = self.client.request(method, url, headers=headers, content=content)
            except httpx.HTTPError as exc:
                last = repr(exc)
                time.sleep(1.0)
                continue
            if response.status_code not in RETRY:
                return response
            last = f"{response.status_code} {response.text[:200]}"
            time.sleep(min(5.0, float(response.headers.get("Retry-After", "1") or 1)))
        raise Stuck(f"{method} still refused after {TRIES} tries: {last}")

    def offset(self, study: Study) -> int:
        response = self._request(study, "HEAD")
        if response.status_code != 200:
            raise Stuck(f"HEAD answered {response.status_code}")
        return int(response.headers["Upload-Offset"])

    def resume(self, study: Study, offset: int) -> None:
        """PATCH the rest of the study from `offset`, resuming from HEAD after a refusal."""
        length = study.body.length
        for _ in range(TRIES):
            if offset >= length:
                return
            end = min(length, offset + CHUNK)
            response = self._request(
                study,
                "PATCH",
                content=study.body.read(offset, end - offset),
                headers={
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            if response.status_code == 204:
                offset = int(response.headers["Upload-Offset"])
                study.acked = max(study.acked, offset)
                study.sent = max(study.sent, offset)
                continue
            if response.status_code != 409:
                raise Stuck(f"PATCH at {offset} answered {response.status_code}: {response.text}")
            offset = self.offset(study)
        if offset < length:
            raise Stuck(f"still at {offset} of {length} after {TRIES} PATCHes")

    def download_matches(self, study: Study) -> bool:
        digest = hashlib.sha256()
        with self.client.stream(
            "GET",
            self.gateways[0].url + study.path,
            headers={"Authorization": f"Bearer {study.token}"},
        ) as response:
            if response.status_code != 200:
                raise Stuck(f"GET answered {response.status_code}")
            for piece in response.iter_bytes(1 << 20):
                digest.update(piece)
        return digest.digest() == study.body.sha256()


def gateway_verify(gateway: GatewayProcess, upload_id: str) -> str:
    """`gateway verify` of one upload on the gateway's data dir and settings; "" if OK."""
    command = [sys.executable, "-m", "gateway.cli", "verify"]
    done = subprocess.run(
        [*command, "--data-dir", str(gateway.data_dir), "--", upload_id],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **gateway.env},
    )
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip()[-500:]


def check(
    studies: Sequence[Study],
    gateways: list[GatewayProcess],
    rng: random.Random,
    *,
    verify_sample: int,
    deadline: float,
) -> Checked:
    """Check every study (see the module's text); `verify_sample` < 0: verify them all."""
    out = Checked(uploads=len(studies))
    checker = Checker(gateways, rng)
    sample = set(range(len(studies)))
    if verify_sample >= 0:
        sample = set(rng.sample(sorted(sample), min(verify_sample, len(studies))))
    try:
        for index, study in enumerate(studies):
            name = study.path.rsplit("/", 1)[-1]
            if time.monotonic() > deadline:
                out.stuck.append(f"{name}: not checked, the run's time was up")
                continue
            try:
                offset = checker.offset(study)
                if offset < study.acked:
                    out.lost_bytes += study.acked - offset
                    out.failures.append(
                        f"{name}: HEAD offset {offset} below the acknowledged {study.acked}"
                    )
                    continue
                if offset > study.sent:
                    out.failures.append(f"{name}: HEAD offset {offset} beyond sent {study.sent}")
                    continue
                if offset < study.body.length:
                    checker.resume(study, offset)
                    out.resumed += 1
                out.completed += 1
                if not checker.download_matches(study):
                    out.failures.append(f"{name}: the downloaded bytes differ from those sent")
                    continue
                out.verified += 1
                if index in sample:
                    problem = gateway_verify(gateways[0], name)
                    if problem:
                        out.failures.append(f"{name}: gateway verify failed: {problem}")
                    else:
                        out.gateway_verified += 1
            except Stuck as exc:
                out.stuck.append(f"{name}: {exc}")
            except httpx.HTTPError as exc:
                out.stuck.append(f"{name}: {exc!r}")
    finally:
        checker.close()
    return out
