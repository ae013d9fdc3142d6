"""Well-behaved users during the hostile run: each uploads (tus, in chunks, some with
checksums; or one IETF creation), reads back whole and by a range, fetches the manifest
and checks every byte, until told to stop. Each has its own key and its own loopback
address, as other people's phones would: what the hostile traffic does must not show
here. A `429`/`503` with `Retry-After` is waited out (counted), anything else unexpected
is a failure."""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from dataclasses import dataclass, field

import httpx

from loadtests.hostile_targets import OCTET, pattern

TUS = {"Tus-Resumable": "1.0.0"}


class Failure(Exception):
    pass


@dataclass
class GoodUser:
    base_url: str
    token: str
    address: str
    seed: int
    stop: threading.Event
    rounds: int = 0
    waits: int = 0
    failures: list[str] = field(default_factory=list)

    def run(self) -> None:
        rng = random.Random(self.seed)
        transport = httpx.HTTPTransport(local_address=self.address, retries=1)
        with httpx.Client(base_url=self.base_url, transport=transport, timeout=60) as client:
            while not self.stop.is_set():
                try:
                    self.round(client, rng)
                    self.rounds += 1
                except (Failure, httpx.HTTPError) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def _call(
        self, client: httpx.Client, method: str, url: str, ok: int, **kw: object
    ) -> httpx.Response:
        for _ in range(10):
            r = client.request(method, url, **kw)  # type: ignore[arg-type]
            if r.status_code in (429, 503) and "Retry-After" in r.headers:
                self.waits += 1
                time.sleep(min(float(r.headers["Retry-After"]), 5.0))
                continue
            if r.status_code != ok:
                raise Failure(f"{method} {url} answered {r.status_code}: {r.text[:300]}")
            return r
        raise Failure(f"{method} {url}: still refused after 10 waits")

    def round(self, client: httpx.Client, rng: random.Random) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        size = rng.choice([1, 1000, 65_536, 200_000, 700_000])
        data = pattern(size, f"good:{self.seed}:{self.rounds}")
        if rng.random() < 0.25:
            headers = {**auth, "Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"}
            r = self._call(client, "POST", "/files/", 201, headers=headers, content=data)
        else:
            headers = {**TUS, **auth, "Upload-Length": str(size)}
            r = self._call(client, "POST", "/files/", 201, headers=headers)
        path = "/files/" + r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
        if "Upload-Draft-Interop-Version" not in headers:
            self._send(client, rng, auth, path, data)
        got = self._call(client, "GET", path, 200, headers=auth).content
        if got != data:
            raise Failure(f"GET {path}: {len(got)} bytes differ from the {size} sent")
        start = rng.randrange(size)
        end = min(size - 1, start + rng.randrange(1, 5000))
        part = self._call(
            client, "GET", path, 206, headers={**auth, "Range": f"bytes={start}-{end}"}
        ).content
        if part != data[start : end + 1]:
            raise Failure(f"GET {path} bytes={start}-{end}: wrong bytes")
        manifest = self._call(
            client, "GET", path + "/manifest", 200, headers={**auth, "Accept": "application/json"}
        )
        if hashlib.sha256(data).hexdigest() not in manifest.text:
            raise Failure(f"GET {path}/manifest: the SHA-256 sent is not in it")
        if rng.random() < 0.3:
            self._call(client, "DELETE", path, 204, headers={**TUS, **auth})

    def _send(
        self, client: httpx.Client, rng: random.Random, auth: dict[str, str], path: str, data: bytes
    ) -> None:
        offset = 0
        step = rng.choice([65_536, 100_000, 1 << 20])
        while offset < len(data):
            chunk = data[offset : offset + step]
            headers = {**TUS, **auth, "Upload-Offset": str(offset), "Content-Type": OCTET}
            if rng.random() < 0.5:
                digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
                headers["Upload-Checksum"] = f"sha256 {digest}"
            r = self._call(client, "PATCH", path, 204, headers=headers, content=chunk)
            offset += len(chunk)
            if r.headers.get("Upload-Offset") != str(offset):
                raise Failure(f"PATCH {path}: Upload-Offset {r.headers.get('Upload-Offset')}")
        r = self._call(client, "HEAD", path, 200, headers={**TUS, **auth})
        if r.headers.get("Upload-Offset") != str(len(data)):
            raise Failure(f"HEAD {path}: Upload-Offset {r.headers.get('Upload-Offset')}")


def start(
    base_url: str, tokens: list[str], seed: int
) -> tuple[list[GoodUser], list[threading.Thread], threading.Event]:
    stop = threading.Event()
    users = [
        GoodUser(base_url, token, f"127.0.2.{i + 1}", seed * 1000 + i, stop)
        for i, token in enumerate(tokens)
    ]
    threads = [threading.Thread(target=u.run, daemon=True) for u in users]
    for thread in threads:
        thread.start()
    return users, threads, stop
