"""Mutations of a valid request: each changes one thing and names itself in `notes`."""

from __future__ import annotations

import random
from collections.abc import Callable

from loadtests import hostile_values as v
from loadtests.hostile_gen import Context, Request
from loadtests.hostile_targets import Target

# Header name -> what to put in it.
VALUES: dict[str, Callable[[random.Random, Request, Target], str]] = {
    "Upload-Offset": lambda rng, r, t: v.number(rng, t.offset),
    "Upload-Length": lambda rng, r, t: v.number(rng, t.length or 0),
    "Upload-Defer-Length": lambda rng, r, t: rng.choice(["1", "0", "2", "", "1, 1"]),
    "Upload-Metadata": lambda rng, r, t: rng.choice(v.METADATA),
    "Upload-Checksum": lambda rng, r, t: rng.choice(v.CHECKSUMS),
    "Upload-Concat": lambda rng, r, t: rng.choice(v.CONCAT_WORDS),
    "Tus-Resumable": lambda rng, r, t: rng.choice(v.RESUMABLE),
    "Content-Type": lambda rng, r, t: rng.choice(v.CONTENT_TYPES),
    "Range": lambda rng, r, t: rng.choice(v.RANGES),
    "Upload-Draft-Interop-Version": lambda rng, r, t: rng.choice(v.INTEROP),
    "Upload-Complete": lambda rng, r, t: rng.choice(v.BOOLEANS),
    "Upload-Incomplete": lambda rng, r, t: rng.choice(v.BOOLEANS),
    "Transfer-Encoding": lambda rng, r, t: rng.choice(v.TRANSFER),
    "Expect": lambda rng, r, t: rng.choice(v.EXPECT),
    "Connection": lambda rng, r, t: rng.choice(v.CONNECTION),
    "Upgrade": lambda rng, r, t: rng.choice(v.UPGRADE),
    "Content-Disposition": lambda rng, r, t: rng.choice(v.DISPOSITION),
    "X-HTTP-Method-Override": lambda rng, r, t: rng.choice(v.METHODS),
    "X-Request-ID": lambda rng, r, t: rng.choice(["", "x" * 5000, "\u00e9", "a\tb"]),
    "X-Forwarded-For": lambda rng, r, t: rng.choice(["1.2.3.4", "garbage", "::1, 10.0.0.1"]),
    "Origin": lambda rng, r, t: rng.choice(["https://evil.example", "null", ""]),
    "Host": lambda rng, r, t: rng.choice(["", "evil.example", "a b", "127.0.0.1:99999", "[::1"]),
    "Content-Length": lambda rng, r, t: rng.choice(["", "-1", "abc", "1.5", "0x10", "+3"]),
    "Accept-Encoding": lambda rng, r, t: rng.choice(["gzip", "br", "*;q=0", "\x00"]),
}


def header_value(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    name = rng.choice(sorted(VALUES))
    req.set(name, VALUES[name](rng, req, t))
    req.notes.append(f"value:{name}")


def drop_header(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    if req.headers:
        name = rng.choice(req.headers)[0]
        req.drop(name)
        req.notes.append(f"drop:{name}")


def duplicate_header(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    name = rng.choice([*(k for k, _ in req.headers), *sorted(VALUES)])
    maker = VALUES.get(name)
    value = maker(rng, req, t) if maker and rng.random() < 0.7 else dict(req.headers).get(name, "")
    req.headers.append((name, value))
    req.notes.append(f"dup:{name}")


def method(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    req.method = rng.choice(v.METHODS)
    req.notes.append("method")


def path(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    req.path = v.path_for(rng, t, ctx.targets.items)
    req.notes.append("path")


def auth(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    token = ctx.tokens[t.owner]
    others = [k for i, k in enumerate(ctx.tokens) if i != t.owner] or [token]
    value = v.authorization(rng, token, ctx.decoy, others)
    if rng.random() < 0.15:
        req.drop("Authorization")
    else:
        req.set("Authorization", value)
    req.notes.append("auth")


def crlf(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    """A header value carrying line breaks, NULs or bytes outside ASCII."""
    name = rng.choice([k for k, _ in req.headers] or ["Upload-Offset"])
    value = dict(req.headers).get(name, "")
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    evil = rng.choice(
        [
            b"\r\nUpload-Offset: 0",
            b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\nX-Bare-LF: 1",
            b"\rX-Bare-CR: 1",
            b"\x00",
            b"\x7f\x1b[2J",
            "\u00e9\u4e2d".encode(),
            b"\xff\xfe",
            b"\r\n X-Folded: 1",
        ]
    )
    req.set(name, raw + evil if rng.random() < 0.7 else evil + raw)
    req.notes.append(f"crlf:{name}")


def big_headers(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    if rng.random() < 0.5:
        req.set("X-Big", "b" * rng.choice([4000, 60_000, 70_000]))
    else:
        req.headers += [(f"X-H{i}", "v") for i in range(rng.choice([100, 255, 300]))]
    req.notes.append("big-headers")


def non_ascii_name(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    name = rng.choice(["Upload-Offs\u00e9t", "Upload Offset", "Upload-Offset ", ":", "X\x00Y"])
    req.headers.append((name, "0"))
    req.notes.append("bad-name")


def content_length(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    """A Content-Length the body does not match, two of them, or one absurdly large."""
    n = len(req.body)
    choice = rng.choice(["more", "less", "two", "huge", "zero"])
    if choice == "more":
        req.set("Content-Length", str(n + rng.choice([1, 100, 70_000])))
        req.endless = True
    elif choice == "less" and n:
        req.set("Content-Length", str(rng.randrange(n)))
    elif choice == "two":
        req.set("Content-Length", str(n))
        req.headers.append(("Content-Length", str(n + 1)))
    elif choice == "huge":
        req.set("Content-Length", rng.choice([str(1 << 40), str(2**63 - 1), "9" * 30]))
        req.endless = True
    else:
        req.set("Content-Length", "0")
    req.notes.append(f"length:{choice}")


def chunked(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    req.drop("Content-Length")
    req.set("Transfer-Encoding", "chunked")
    req.framing, req.endless = v.broken_chunks(rng, req.body)
    if rng.random() < 0.2:
        req.headers.append(("Content-Length", str(len(req.body))))
    req.notes.append("chunked")


def body(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    req.body = rng.randbytes(rng.choice([0, 1, 17, 65_535, 65_537, 250_000]))
    req.notes.append("body")


def version(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    req.version = rng.choice(v.VERSIONS)
    req.notes.append("version")


def pipeline(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    token = ctx.tokens[t.owner]
    second = (
        f"HEAD {t.path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    junk = rng.choice([second, second * 3, b"\x16\x03\x01\x02\x00", b"GARBAGE\r\n\r\n", b"\r\n"])
    req.tail = junk
    req.answers = 1 + junk.count(b"HEAD ")
    req.notes.append("pipeline")


MUTATIONS: list[tuple[float, Callable[[random.Random, Request, Target, Context], None]]] = [
    (10, header_value),
    (3, drop_header),
    (3, duplicate_header),
    (2, method),
    (3, path),
    (3, auth),
    (2, crlf),
    (1, big_headers),
    (1, non_ascii_name),
    (2, content_length),
    (2, chunked),
    (1, body),
    (1, version),
    (1, pipeline),
]


def mutate(rng: random.Random, req: Request, t: Target, ctx: Context) -> None:
    count = rng.choice([0, 1, 1, 1, 2, 2, 3, 4])
    funcs = rng.choices([f for _, f in MUTATIONS], [w for w, _ in MUTATIONS], k=count)
    for func in funcs:
        func(rng, req, t, ctx)
