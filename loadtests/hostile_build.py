"""Request `index` of a run: a target, a valid request, mutations, then the bytes on the
wire and how they go out (whole, cut, half-closed, trickled) and from which address."""

from __future__ import annotations

import random

from loadtests.hostile_gen import HOSTILE_ADDRESS, Context, Hostile, Request, template
from loadtests.hostile_mutate import mutate
from loadtests.hostile_wire import Send


def _encode(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def serialize(req: Request, port: int) -> bytes:
    line = f"{req.method} {req.path} {req.version}".rstrip(" ")
    head = [_encode(line)]
    headers = list(req.headers)
    names = {k.lower() for k, _ in headers}
    if "host" not in names:
        headers.insert(0, ("Host", f"127.0.0.1:{port}"))
    body = req.framing if req.framing is not None else req.body
    framed = req.framing is not None or names & {"content-length", "transfer-encoding"}
    if not framed and (req.body or req.method in ("POST", "PATCH", "PUT")):
        headers.append(("Content-Length", str(len(req.body))))
    head += [_encode(k) + b": " + _encode(val) for k, val in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body + req.tail


def build(ctx: Context, index: int) -> Hostile:
    rng = random.Random(f"{ctx.seed}:{index}")
    target = rng.choice(ctx.targets.items)
    req = template(rng, target, ctx)
    mutate(rng, req, target, ctx)
    if req.framing is None and req.has("Transfer-Encoding"):
        req.endless = True  # a body announced as chunked but sent bare: it never ends
    data = serialize(req, ctx.port)
    roll = rng.random()
    if req.endless:
        # The framing promises more than is sent: the socket must end, or the gateway
        # rightly waits for the rest until its timeouts.
        mode = rng.choice([Send.CUT, Send.RESET, Send.HALF])
    elif roll < 0.06:
        mode = Send.CUT
    elif roll < 0.09:
        mode = Send.RESET
    elif roll < 0.15:
        mode = Send.HALF
    elif roll < 0.19:
        mode = Send.TRICKLE
    elif roll < 0.21:
        mode = Send.STALL
    else:
        mode = Send.WHOLE
    cut = len(data) if req.endless and mode is Send.HALF else rng.randrange(len(data) + 1)
    if rng.random() < 0.1:
        source = HOSTILE_ADDRESS
    else:
        source = f"127.1.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    overrides = [
        str(val).strip().upper() for k, val in req.headers if k.lower() == "x-http-method-override"
    ]
    heads = req.method.upper() == "HEAD" or (req.method == "POST" and "HEAD" in overrides)
    return Hostile(
        index=index,
        kind=target.kind,
        method="HEAD" if heads else req.method,
        data=data,
        mode=mode,
        cut=cut,
        answers=req.answers,
        source=source,
        target=target,
        notes=req.notes,
    )
