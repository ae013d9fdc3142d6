"""Many slow clients at once, and a trickle attack, against a real `gateway serve`.

    python benchmarks/slow_clients.py --clients 300 --rate 1000000 --size 8388608
    python benchmarks/slow_clients.py --clients 1000 --rate 128000 --size 4194304
    python benchmarks/slow_clients.py --trickle 70          # one principal trickles
    python benchmarks/slow_clients.py ... --env GATEWAY_MAX_WRITERS=64

Each client is an asyncio connection on 127.0.0.1 that creates its upload (POST),
then sends one PATCH of `size` bytes whose body is paced on the socket: a piece at a
time, never ahead of `rate` bytes/s since the body started (no sleeps between whole
requests). All clients use ONE token (one principal), the hardest case for fairness
limits. The gateway runs on its default settings (plus --env) on a fresh data dir.
Prints errors by status/code, p50/p99/max durations, and the server's peak RSS
(VmRSS summed over its process tree, sampled every 50 ms) and CPU seconds. The
stored bytes of a sample of uploads are checked (SHA-256, decrypted).

--trickle N: N PATCHes of one principal that send a byte every 25 s, while another
principal uploads 1 MiB ten times in a row; prints that principal's latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urljoin, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, WORK, Gateway, Meter

OCTET = "application/offset+octet-stream"


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n"

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def upload(
        self, data: bytes, rate: float, piece: int, *, trickle: float = 0.0
    ) -> tuple[str, float, str]:
        """(outcome, seconds, upload path): outcome "ok" or "STATUS CODE"."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        answer: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        try:
            writer.write(
                f"POST /files/ HTTP/1.1\r\nHost: x\r\n{self.auth}Upload-Length: {len(data)}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            status, headers, body = await self._response(reader)
            if status != 201:
                return f"{status} {_code(body)} (POST)", 0.0, ""
            path = urlsplit(urljoin(f"http://127.0.0.1:{self.port}/", headers["location"])).path
            started = time.monotonic()
            writer.write(
                f"PATCH {path} HTTP/1.1\r\nHost: x\r\n{self.auth}Content-Type: {OCTET}\r\n"
                f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            )
            sent = 0
            answer = asyncio.ensure_future(self._response(reader))
            while sent < len(data) and not answer.done():
                if trickle:
                    n = 1
                    await asyncio.sleep(trickle)
                else:
                    n = min(piece, len(data) - sent)
                    ahead = (sent + n) / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                writer.write(data[sent : sent + n])
                await writer.drain()
                sent += n
            status, headers, body = await answer
            took = time.monotonic() - started
            if status != 204:
                return f"{status} {_code(body)}", took, path
            return "ok", took, path
        except (OSError, asyncio.IncompleteReadError) as exc:
            return f"connection {type(exc).__name__}", 0.0, ""
        finally:
            if answer is not None and not answer.done():
                answer.cancel()
            writer.close()


def _code(body: bytes) -> str:
    text = body.decode(errors="replace")
    at = text.find('"code":')
    return text[at + 8 : text.find('"', at + 9)] if at >= 0 else ""


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0.0


def _mint(gw: Gateway, principal: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "token", "--data-dir", str(gw.data_dir),
         "--principal", principal],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


async def _many(gw: Gateway, args: argparse.Namespace) -> None:
    client = Client(gw.port, gw.token)
    blobs = [os.urandom(args.size) for _ in range(4)]  # clients share a few bodies
    tasks = [client.upload(blobs[i % 4], args.rate, args.piece) for i in range(args.clients)]
    with Meter(gw.pid) as meter:
        results = await asyncio.gather(*tasks)
    outcomes = Counter(r[0] for r in results)
    took = [r[1] for r in results if r[0] == "ok"]
    ideal = args.size / args.rate
    print(
        f"{args.clients} clients x {args.rate / 1e3:.0f} kB/s x {args.size / 2**20:.1f} MiB "
        f"(ideal {ideal:.1f} s each)"
    )
    print(f"  outcomes: {dict(outcomes)}")
    print(f"  duration: p50 {_pct(took, 0.5):.1f} s, p99 {_pct(took, 0.99):.1f} s, "
          f"max {max(took, default=0):.1f} s; wall {meter.wall_s:.1f} s")  # fmt: skip
    print(f"  server: peak RSS {meter.peak_rss_kib / 1024:.0f} MiB (VmHWM "
          f"{meter.hwm_kib / 1024:.0f} MiB), CPU {meter.cpu_s:.1f} s")  # fmt: skip
    checked = 0
    for i, (outcome, _, path) in enumerate(results[:8]):
        if outcome == "ok":
            _, digest = gw.stored_sha256(f"http://127.0.0.1:{gw.port}{path}")
            assert digest == hashlib.sha256(blobs[i % 4]).hexdigest(), path
            checked += 1
    print(f"  stored bytes checked for {checked} uploads")


async def _trickle(gw: Gateway, args: argparse.Namespace) -> None:
    attacker = Client(gw.port, gw.token)
    victim = Client(gw.port, _mint(gw, "victim"))
    tricklers = [
        asyncio.ensure_future(attacker.upload(b"x" * (1 << 20), 1.0, 1, trickle=25.0))
        for _ in range(args.trickle)
    ]
    await asyncio.sleep(2)
    data = os.urandom(1 << 20)
    latencies, outcomes = [], Counter()
    for _ in range(10):
        started = time.monotonic()
        outcome, _, _ = await victim.upload(data, 1e12, 1 << 20)
        latencies.append(time.monotonic() - started)
        outcomes[outcome] += 1
    print(f"{args.trickle} tricklers (1 byte / 25 s, one principal); another principal's "
          f"10 x 1 MiB uploads:")  # fmt: skip
    print(f"  outcomes: {dict(outcomes)}; latency p50 {_pct(latencies, 0.5) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")  # fmt: skip
    for t in tricklers:
        t.cancel()
    await asyncio.gather(*tricklers, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--rate", type=float, default=1_000_000, help="bytes/s per client")
    parser.add_argument("--size", type=int, default=8 << 20)
    parser.add_argument(
        "--piece", type=int, default=0, help="bytes per socket write (default: 1/16 s worth)"
    )
    parser.add_argument("--trickle", type=int, default=0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    args.piece = args.piece or max(4096, min(64 << 10, int(args.rate / 16)))
    gw = Gateway(WORK / "slow-clients", env)
    with gw.start():
        asyncio.run(_trickle(gw, args) if args.trickle else _many(gw, args))


if __name__ == "__main__":
    main()
