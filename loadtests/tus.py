"""The tus client every load user is built on: create, HEAD, PATCH (over raw sockets,
see wire.py), resume, and read back to verify. Its rules are those of a careful
client: resume from the gateway's `Upload-Offset`, wait out `Retry-After`, and never
accept fewer bytes than were acknowledged."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

from locust import HttpUser
from locust.exception import StopUser
from requests.adapters import HTTPAdapter
from requests.exceptions import RequestException
from urllib3.util.retry import Retry

from loadtests import context
from loadtests.body import Body, RunningHash
from loadtests.context import Context, Study
from loadtests.sizes import size_class
from loadtests.throttle import TokenBucket
from loadtests.wire import ConnectionLost, Reply, Sent, patch

WAIT = (423, 429, 503, 507)  # busy, rate limited, unavailable, disk full: wait, ask again
MAX_WAIT = 10.0
TRIES = 30
CHAOS_TRIES = 120  # under chaos an outage (a restart, S3 coming back) lasts longer


def why(response: Any) -> str:
    """A failed response in a few words: the status and the problem's code, or the
    connection error (Locust reports those as status 0)."""
    if response.status_code == 0:
        return f"no answer: {response.error!r}"[:300]
    text = response.text[:300] if response.headers.get("Content-Type", "").endswith("json") else ""
    return f"{response.status_code} {text}".strip()


class Failed(Exception):
    """The study cannot go on (already recorded as a Locust failure)."""


class TusUser(HttpUser):
    abstract = True
    ctx: Context

    def on_start(self) -> None:
        self.ctx = context.of(self.environment)
        self.number, self.rng, self.token = self.ctx.next_user()
        self.client.headers.update(
            {"Authorization": f"Bearer {self.token}", "Tus-Resumable": "1.0.0"}
        )
        # A pooled connection the gateway closed after its keep-alive time (5 s) can be
        # reused just as it closes: the request then gets no answer. Like any careful
        # HTTP client, try such a request once more on a new connection.
        once = Retry(
            total=1,
            connect=1,
            read=1,
            status=0,
            other=0,
            redirect=0,
            allowed_methods=None,
            raise_on_status=False,
        )
        for adapter in self.client.adapters.values():
            if isinstance(adapter, HTTPAdapter):
                adapter.max_retries = once

    # -- bookkeeping --------------------------------------------------------------------

    def check_stop(self) -> None:
        if self.ctx.stopping.is_set():
            raise StopUser()

    def gateway(self) -> str:
        """The gateway the next connection goes to (any instance serves any upload)."""
        return self.rng.choice(self.ctx.hosts)

    def record(self, kind: str, name: str, seconds: float, size: int, error: str = "") -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=seconds * 1000,
            response_length=size,
            exception=AssertionError(error) if error else None,
            context={},
        )

    def fail(self, kind: str, name: str, error: str) -> Failed:
        self.record(kind, name, 0.0, 0, error)
        return Failed(error)

    def tries(self) -> range:
        return range(CHAOS_TRIES if self.ctx.chaos else TRIES)

    def retry(self, response: Any) -> bool:
        """Whether to wait and ask again: a refusal with Retry-After, or under chaos a
        request that got no answer (the gateway was killed, or is starting)."""
        status = response.status_code
        if not (status in WAIT or (self.ctx.chaos and status == 0)):
            return False
        self.ctx.refused[status] = self.ctx.refused.get(status, 0) + 1
        return True

    def interrupted(self, reply: Reply) -> bool:
        """Under chaos, `400 ERR_UPLOAD_INTERRUPTED` (another request for the upload took
        it over: here an earlier one of this user's, cut but still waiting for the lease
        at the gateway) is resumed from HEAD, as DESIGN.md tells clients to."""
        return self.ctx.chaos and reply.status == 400 and b"ERR_UPLOAD_INTERRUPTED" in reply.body

    def wait_out(self, headers: Any) -> None:
        self.ctx.tally.waits += 1
        try:
            delay = float(headers.get("Retry-After", "1"))
        except ValueError:
            delay = 1.0
        time.sleep(min(MAX_WAIT, max(0.1, delay)) * self.rng.uniform(1.0, 1.5))

    # -- requests -----------------------------------------------------------------------

    def create(self, body: Body) -> Study:
        metadata = "filename " + base64.b64encode(body.name.encode()).decode()
        headers = {"Upload-Length": str(body.length), "Upload-Metadata": metadata}
        for _ in self.tries():
            with self.client.post(
                self.gateway() + "/files/", headers=headers, name="POST", catch_response=True
            ) as response:
                if response.status_code == 201:
                    path = urlsplit(response.headers["Location"]).path
                    study = Study(body=body, path=path, token=self.token)
                    self.ctx.studies.append(study)
                    return study
                if self.retry(response):
                    response.success()
                    self.wait_out(response.headers)
                    continue
                response.failure(f"create: {why(response)}")
                raise Failed("create")
        raise self.fail("POST", "POST", "create: still refused after retries")

    def head(self, study: Study) -> int:
        """The gateway's offset, checked: never below what it acknowledged, never beyond
        what was sent."""
        self.ctx.tally.resumes += 1
        for _ in self.tries():
            with self.client.head(
                self.gateway() + study.path, name="HEAD", catch_response=True
            ) as response:
                if self.retry(response):
                    response.success()
                    self.wait_out(response.headers)
                    continue
                if response.status_code != 200:
                    response.failure(f"HEAD: {why(response)}")
                    raise Failed("head")
                offset = int(response.headers["Upload-Offset"])
                if not study.acked <= offset <= study.sent:
                    response.failure(
                        f"HEAD offset {offset} outside [acked {study.acked}, sent {study.sent}]"
                    )
                    raise Failed("head")
                return offset
        raise self.fail("HEAD", "HEAD", "still refused after retries")

    def send(
        self,
        study: Study,
        start: int,
        end: int,
        *,
        bucket: TokenBucket | None,
        hasher: RunningHash | None,
        cut_after: int | None = None,
        checksum: bool = False,
    ) -> Sent:
        headers = {"Authorization": f"Bearer {study.token}", "Tus-Resumable": "1.0.0"}
        if checksum:
            digest = study.body.sha256(start, end)
            headers["Upload-Checksum"] = "sha256 " + base64.b64encode(digest).decode()
        url = self.gateway() + study.path
        name = size_class(end - start)
        try:
            sent = patch(
                url,
                headers,
                study.body,
                start,
                end,
                bucket=bucket,
                hasher=hasher,
                cut_after=cut_after,
                reset=self.rng.random() < 0.5,
                stop=self.ctx.stopping.is_set,
            )
        except (ConnectionLost, OSError) as exc:
            if not self.ctx.chaos:
                raise self.fail("PATCH", name, f"{exc!r}") from exc
            # The gateway died or was cut off: as a network drop, resume from HEAD.
            # How much went out is unknown; the gateway may have any of it.
            study.sent = max(study.sent, end)
            self.record("LOST", name, 0.0, 0)
            return Sent(None, 0, 0.0, 0.0)
        study.sent = max(study.sent, start + sent.sent)
        self.ctx.tally.uploaded_bytes += sent.sent
        if sent.reply is None:  # cut: a network drop, or the run's end
            kind = "STOP" if self.ctx.stopping.is_set() else "CUT"
            self.record(kind, name, sent.send_s, sent.sent)
        elif sent.reply.status == 204:
            self.record("PATCH", name, sent.send_s + sent.ack_s, sent.sent)
            self.record("ACK", name, sent.ack_s, 0)
        return sent

    def upload(
        self,
        study: Study,
        chunk: int,
        bucket: TokenBucket | None,
        *,
        drop: float = 0.0,
        kill: float = 0.0,
        checksum: bool = False,
    ) -> str | None:
        """Send the study to its end, resuming after cuts, kills and refusals. Returns
        the SHA-256 (hex) of what was sent; None when the run stopped first."""
        hasher = RunningHash(study.body)
        offset, length = 0, study.body.length
        self.ctx.busy += 1
        try:
            while offset < length:
                if self.ctx.stopping.is_set():
                    self.abandon(study)
                    return None
                end = min(offset + chunk, length)
                cut_after = None
                if end - offset > 1 and self.rng.random() < drop:
                    cut_after = self.rng.randint(1, end - offset - 1)
                sent = self.send(
                    study,
                    offset,
                    end,
                    bucket=bucket,
                    hasher=hasher,
                    cut_after=cut_after,
                    checksum=checksum,
                )
                reply = sent.reply
                if reply is None:
                    if self.ctx.stopping.is_set():
                        self.abandon(study)
                        return None
                    self.ctx.tally.cuts += 1
                    self.client.close()  # the network went: no pooled connection survives
                    if cut_after is not None and self.rng.random() < kill:
                        # The app is killed mid-chunk: memory is gone, the URL was kept.
                        self.ctx.tally.kills += 1
                        hasher = RunningHash(study.body)
                        time.sleep(self.rng.uniform(1.0, 5.0))
                    else:
                        time.sleep(self.rng.uniform(0.2, 2.0))  # the network comes back
                    offset = self.head(study)
                    hasher.catch_up(offset)
                elif reply.status == 204:
                    acked = int(reply.header("Upload-Offset"))
                    if acked != end:
                        raise self.fail("PATCH", size_class(end - offset), f"offset {acked}")
                    study.acked = offset = acked
                elif reply.status == 409 or reply.status in WAIT or self.interrupted(reply):
                    self.ctx.refused[reply.status] = self.ctx.refused.get(reply.status, 0) + 1
                    if reply.status in WAIT:
                        self.wait_out(reply.headers)
                    offset = self.head(study)
                    hasher.catch_up(offset)
                else:
                    raise self.fail(
                        "PATCH",
                        size_class(end - offset),
                        f"{reply.status} {reply.body[:200]!r}",
                    )
            self.ctx.tally.uploads += 1
            return hasher.hexdigest()
        finally:
            self.ctx.busy -= 1

    def abandon(self, study: Study) -> None:
        """The run stops mid-upload: the acknowledged bytes must still be there."""
        self.ctx.tally.abandoned += 1
        self.head(study)

    def verify(self, study: Study, sha256: str) -> None:
        """Download the study and compare its SHA-256, then the reader's manifest."""
        self.ctx.busy += 1
        try:
            for _ in self.tries():
                got = self.download(study)
                if got is not None:
                    break
            else:
                raise self.fail("GET", "GET verify", "download still refused after retries")
            if got != sha256:
                raise self.fail("GET", "GET verify", f"{study.path}: downloaded bytes differ")
            self.check_manifest(study, sha256)
            study.sha256 = sha256
            self.ctx.tally.verified += 1
            self.ctx.finished.append(study)
        finally:
            self.ctx.busy -= 1

    def download(self, study: Study) -> str | None:
        """The study's SHA-256 (hex) as downloaded; None to try again (a refusal with
        Retry-After, or under chaos a download cut off)."""
        digest = hashlib.sha256()
        with self.client.get(
            self.gateway() + study.path, name="GET verify", stream=True, catch_response=True
        ) as response:
            if self.retry(response):
                response.success()
                self.wait_out(response.headers)
                return None
            if response.status_code != 200:
                response.failure(f"download: {why(response)}")
                raise Failed("download")
            try:
                for piece in response.iter_content(1 << 20):
                    digest.update(piece)
                    self.ctx.tally.downloaded_bytes += len(piece)
            except RequestException:
                if not self.ctx.chaos:
                    raise
                response.success()  # the gateway died mid-download: read it again
                self.wait_out({})
                return None
            return digest.hexdigest()

    def check_manifest(self, study: Study, sha256: str) -> None:
        for _ in self.tries():
            with self.client.get(
                self.gateway() + study.path + "/manifest",
                headers={"Accept": "application/json"},
                name="GET manifest",
                catch_response=True,
            ) as response:
                not_yet = response.status_code == 400 and "ERR_UPLOAD_NOT_FINISHED" in response.text
                if self.retry(response) or not_yet:
                    response.success()
                    time.sleep(0.2)
                    continue
                if response.status_code != 200:
                    response.failure(f"manifest: {why(response)}")
                    raise Failed("manifest")
                payload = json.loads(response.content)
                if (
                    payload["plaintext"]["sha256"] != sha256
                    or payload["upload"]["length"] != study.body.length
                ):
                    response.failure(f"{study.path}: the manifest differs from what was sent")
                    raise Failed("manifest")
                return
        raise self.fail("GET", "GET manifest", "manifest not written after retries")
