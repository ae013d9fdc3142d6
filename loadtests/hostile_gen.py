"""The hostile request generator: a valid request against a real upload, then a few
mutations of its method, path, headers, framing and body, and a way to send it.

Request `index` of a run with `seed` draws from `random.Random(f"{seed}:{index}")`
alone, so it is built again from the two numbers; only the offsets filled in (the last
ones the gateway reported) depend on what ran before.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtests import hostile_values as v
from loadtests.hostile_targets import IETF, OCTET, Target, Targets, pattern
from loadtests.hostile_values import b64
from loadtests.hostile_wire import Send

HOSTILE_ADDRESS = "127.0.0.9"  # a share of requests comes from here, to meet the auth limit


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str | bytes]]
    body: bytes = b""
    version: str = "HTTP/1.1"
    framing: bytes | None = None  # a body framed by a mutation (chunked), sent as is
    endless: bool = False  # the framing announces more than is sent
    tail: bytes = b""  # pipelined bytes after the request
    answers: int = 1
    notes: list[str] = field(default_factory=list)

    def set(self, name: str, value: str | bytes) -> None:
        self.drop(name)
        self.headers.append((name, value))

    def drop(self, name: str) -> None:
        self.headers = [(k, x) for k, x in self.headers if k.lower() != name.lower()]

    def has(self, name: str) -> bool:
        return any(k.lower() == name.lower() for k, _ in self.headers)


@dataclass
class Hostile:
    index: int
    kind: str  # the target's kind
    method: str
    data: bytes
    mode: Send
    cut: int
    answers: int
    source: str
    target: Target
    notes: list[str]

    def describe(self, limit: int = 600) -> str:
        shown = self.data[:limit]
        more = f" ... ({len(self.data)} bytes)" if len(self.data) > limit else ""
        return (
            f"#{self.index} target={self.kind} mode={self.mode.value} cut={self.cut} "
            f"source={self.source} mutations={','.join(self.notes) or '-'}\n    {shown!r}{more}"
        )


@dataclass
class Context:
    seed: int
    port: int
    targets: Targets
    tokens: list[str]  # the hostile principals' keys, by owner index
    decoy: str  # a key only ever sent mangled
    admin: str = ""  # a key with the admin and auditor roles ("": none)


def _tus(token: str) -> list[tuple[str, str | bytes]]:
    return [("Tus-Resumable", "1.0.0"), ("Authorization", f"Bearer {token}")]


def _ietf(token: str) -> list[tuple[str, str | bytes]]:
    return [("Authorization", f"Bearer {token}"), ("Upload-Draft-Interop-Version", IETF)]


def template(rng: random.Random, t: Target, ctx: Context) -> Request:
    """A valid request of a random kind against target `t`, as its owner."""
    token = ctx.tokens[t.owner]
    left = (t.length if t.length is not None else t.offset + 100_000) - t.offset
    size = max(0, min(left, rng.choice([1, 100, 4096, 65_536, 70_000, 200_000])))
    chunk = pattern(size, f"{ctx.seed}:{t.path}:{t.offset}")
    meta = "filename " + b64(b"scan.dcm")
    ops: list[tuple[float, Callable[[], Request]]] = [
        (3, lambda: Request("POST", "/files/", [*_tus(token), ("Upload-Length", str(size))])),
        (2, lambda: Request(
            "POST", "/files/",
            [*_tus(token), ("Upload-Length", str(size + 10)), ("Upload-Metadata", meta),
             ("Content-Type", OCTET)], chunk)),
        (1, lambda: Request("POST", "/files/", [*_tus(token), ("Upload-Defer-Length", "1")])),
        (1, lambda: Request(
            "POST", "/files/",
            [*_tus(token), ("Upload-Length", "10"), ("Upload-Concat", "partial")])),
        (2, lambda: Request(
            "POST", "/files/",
            [*_tus(token), ("Upload-Concat", "final;" + " ".join(
                x.path for x in rng.choices(ctx.targets.items, k=rng.randint(1, 3))))])),
        (8, lambda: _patch(rng, t, token, chunk)),
        (4, lambda: Request("HEAD", t.path, _tus(token))),
        (3, lambda: Request("GET", t.path, [("Authorization", f"Bearer {token}"),
                                           ("Range", rng.choice(v.RANGES))])),
        (2, lambda: Request("GET", t.path + "/manifest", [("Authorization", f"Bearer {token}")])),
        (1, lambda: Request("GET", t.path + "/grants", [("Authorization", f"Bearer {token}")])),
        (1.5, lambda: Request(
            "POST", t.path + "/grants",
            [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")],
            rng.choice(v.GRANT_BODIES).encode())),
        (0.5, lambda: Request("DELETE", t.path, _tus(token))),
        (1, lambda: Request("OPTIONS", "/files/", [])),
        (2, lambda: Request(
            "POST", "/files/",
            [*_ietf(token), ("Upload-Complete", rng.choice(["?0", "?1"])),
             ("Content-Type", "application/octet-stream")], chunk)),
        (4, lambda: Request(
            "PATCH", t.path,
            [*_ietf(token), ("Upload-Offset", str(t.offset)),
             ("Upload-Complete", "?1" if size == left else "?0"),
             ("Content-Type", "application/partial-upload")], chunk)),
        (2, lambda: Request("HEAD", t.path, _ietf(token))),
        (1, lambda: Request(
            "POST", "/files/",
            [("Authorization", f"Bearer {token}"),
             ("Content-Disposition", 'attachment; filename="a.dcm"')], chunk)),
        (2, lambda: _admin(rng, t, ctx)),
        (1, lambda: Request("GET", rng.choice(["/healthz", "/readyz", "/metrics",
                                               "/.well-known/jwks.json"]), [])),
    ]  # fmt: skip
    weights = [w for w, _ in ops]
    make = rng.choices([m for _, m in ops], weights)[0]
    return make()


def _patch(rng: random.Random, t: Target, token: str, chunk: bytes) -> Request:
    req = Request(
        "PATCH",
        t.path,
        [*_tus(token), ("Upload-Offset", str(t.offset)), ("Content-Type", OCTET)],
        chunk,
    )
    if t.length is None and rng.random() < 0.5:
        req.set("Upload-Length", str(t.offset + len(chunk)))
    if rng.random() < 0.3:
        algo = rng.choice(["sha1", "sha256", "md5"])
        req.set("Upload-Checksum", f"{algo} " + b64(hashlib.new(algo, chunk).digest()))
    return req


def _admin(rng: random.Random, t: Target, ctx: Context) -> Request:
    """The admin and audit APIs, as an admin of the hostile principals' tenant."""
    token = ctx.admin or ctx.tokens[t.owner]
    auth: list[tuple[str, str | bytes]] = [("Authorization", f"Bearer {token}")]
    json_type: list[tuple[str, str | bytes]] = [("Content-Type", "application/json")]
    hold = "/admin/holds/" + t.upload_id
    shapes: list[Callable[[], Request]] = [
        lambda: Request("PUT", hold, auth + json_type, rng.choice(v.HOLD_BODIES).encode()),
        lambda: Request("GET", hold, auth),
        lambda: Request("DELETE", hold, auth),
        lambda: Request(
            "POST", "/admin/tokens", auth + json_type, rng.choice(v.TOKEN_BODIES).encode()
        ),
        lambda: Request("GET", "/admin/tokens", auth),
        lambda: Request(
            "DELETE", "/admin/tokens/" + rng.choice(["x", "0" * 40, t.upload_id]), auth
        ),
        lambda: Request("GET", "/admin/keys", auth),
        lambda: Request("GET", "/audit?" + rng.choice(v.AUDIT_QUERIES), auth),
    ]
    return rng.choice(shapes)()
