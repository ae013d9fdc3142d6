"""Real upload states for the hostile requests to aim at: partial, empty, deferred,
complete, concatenation partials and finals (finished and unfinished), terminated, IETF
uploads in progress and done, and an id the gateway never minted.

Made with ordinary, valid requests by the hostile principals themselves before the run,
so a mutated request meets an upload in exactly the state it names.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway import auth
from gateway.catalog.base import Principal
from gateway.catalog.sqlite import SQLiteCatalog

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
UNKNOWN_ID = "Zz" * 11
IETF = "8"


@dataclass
class Target:
    kind: str
    path: str  # /files/<id>
    owner: int  # index of the hostile principal that made it
    length: int | None  # declared length (None: deferred or unknown)
    offset: int = 0  # the last offset the gateway reported

    @property
    def upload_id(self) -> str:
        return self.path.rsplit("/", 1)[1]


@dataclass
class Targets:
    items: list[Target] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def kinds(self) -> list[str]:
        return sorted({t.kind for t in self.items})

    def note_offset(self, target: Target, offset: int | None) -> None:
        if offset is not None:
            with self._lock:
                target.offset = offset


def pattern(size: int, salt: str = "") -> bytes:
    """Deterministic bytes of any size (the SHA-256 chain of a salt)."""
    out = bytearray()
    block = hashlib.sha256(salt.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


class _Maker:
    def __init__(self, client: httpx.Client, token: str, owner: int) -> None:
        self.client = client
        self.auth = {"Authorization": f"Bearer {token}"}
        self.owner = owner

    def _create(self, headers: dict[str, str], body: bytes = b"") -> str:
        extra = {"Content-Type": OCTET} if body else {}
        r = self.client.post(
            "/files/", headers={**TUS, **self.auth, **headers, **extra}, content=body
        )
        if r.status_code != 201:
            raise RuntimeError(f"setup: creation answered {r.status_code}: {r.text[:200]}")
        location = r.headers["Location"]
        return "/files/" + location.rstrip("/").rsplit("/", 1)[1]

    def _patch(self, path: str, offset: int, body: bytes, **extra: str) -> None:
        headers = {**TUS, **self.auth, "Content-Type": OCTET, "Upload-Offset": str(offset)}
        r = self.client.patch(path, headers={**headers, **extra}, content=body)
        if r.status_code != 204:
            raise RuntimeError(f"setup: PATCH answered {r.status_code}: {r.text[:200]}")

    def tus(self, kind: str, length: int, sent: int, **headers: str) -> Target:
        path = self._create({"Upload-Length": str(length), **headers})
        if sent:
            self._patch(path, 0, pattern(sent, path))
        return Target(kind, path, self.owner, length, sent)

    def deferred(self, sent: int) -> Target:
        meta = "filename " + base64.b64encode(b"study.dcm").decode()
        path = self._create({"Upload-Defer-Length": "1", "Upload-Metadata": meta})
        self._patch(path, 0, pattern(sent, path))
        return Target("deferred", path, self.owner, None, sent)

    def final(self, kind: str, parts: list[Target]) -> Target:
        listed = " ".join(p.path for p in parts)
        path = self._create({"Upload-Concat": f"final;{listed}"})
        return Target(kind, path, self.owner, None, 0)

    def terminated(self) -> Target:
        target = self.tus("terminated", 1000, 10)
        r = self.client.delete(target.path, headers={**TUS, **self.auth})
        if r.status_code != 204:
            raise RuntimeError(f"setup: DELETE answered {r.status_code}")
        return target

    def ietf(self, kind: str, length: int, sent: int, complete: bool) -> Target:
        headers = {
            **self.auth,
            "Upload-Draft-Interop-Version": IETF,
            "Upload-Complete": "?1" if complete else "?0",
            "Content-Type": "application/octet-stream",
        }
        if not complete:
            headers["Upload-Length"] = str(length)
        r = self.client.post("/files/", headers=headers, content=pattern(sent, kind))
        if r.status_code != 201:
            raise RuntimeError(f"setup: IETF creation answered {r.status_code}: {r.text[:200]}")
        path = "/files/" + r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
        return Target(kind, path, self.owner, length, sent)


def make(base_url: str, tokens: list[str]) -> Targets:
    """A set of every state for each hostile principal."""
    targets = Targets()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for owner, token in enumerate(tokens):
            m = _Maker(client, token, owner)
            items = targets.items
            for size, sent in [(300_000, 70_000), (200_000, 1), (150_000, 65_536)]:
                items.append(m.tus("partial", size, sent))
            items.append(m.tus("empty", 100_000, 0))
            items.append(m.tus("zero", 0, 0))
            items.append(m.deferred(4096))
            items.append(m.tus("complete", 130_000, 130_000))
            parts = [m.tus("part", n, n, **{"Upload-Concat": "partial"}) for n in (5000, 70_000)]
            items += parts
            items.append(m.final("final", parts))
            open_part = m.tus("part-open", 9000, 100, **{"Upload-Concat": "partial"})
            items.append(open_part)
            items.append(m.final("final-open", [parts[0], open_part]))
            items.append(m.terminated())
            items.append(m.ietf("ietf-open", 120_000, 1000, complete=False))
            items.append(m.ietf("ietf-complete", 3000, 3000, complete=True))
            items.append(Target("unknown", f"/files/{UNKNOWN_ID}", owner, None))
    return targets


def mint_admin(data_dir: Path) -> str:
    """A key with the admin and auditor roles in the hostile principals' tenant."""
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        return auth.mint_token(
            catalog, Principal("hostile-admin", "load", frozenset({"admin", "auditor"}))
        )
    finally:
        catalog.close()
