"""Which of the gateway's connection rules (gateway/connections.py) hold under Granian.

    .venv/bin/python benchmarks/granian_edges.py [--servers uvicorn,granian] [--body-mib 1024]

Each server runs the gateway app on a fresh data dir with GATEWAY_HEADER_TIMEOUT=2
and GATEWAY_IETF_SEND_104=true; every check goes over raw sockets (or Node's http
module, as tus-js-client sends) and says whether the rule held:

- header bytes: one endless header line (1 MiB, no CRLF) gets 431, then a close;
- header lines: 300 header lines get 431;
- header timeout: header lines trickled every 0.5 s get 408 within 2 s (+3);
- idle connection: a connection that sends nothing is closed within 2 s (+3);
- linger: a PATCH refused (401) before its 4 MiB body is read: the client sends the
  body without a reset, then the server closes; and Node sends 32 MiB refused PATCHes
  three times and must see 401 each time (not ECONNRESET or EPIPE);
- connection count: with 5 idle connections open, tusd_connections_open >= 5;
- 104: an IETF creation gets `104 Upload Resumption Supported` before its body;
- bodies: a bare app (benchmarks/body_probe.py) under each server takes one curl PATCH
  of --body-mib MiB; the body messages' sizes and type, and the server's CPU-s/GiB
  (the HTTP layer alone).
Prints a table; writes benchmarks/.work/edges-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BENCH,
    ROOT,
    RUNS_DIR,
    WORK,
    Gateway,
    GiB,
    GranianGateway,
    Meter,
    MiB,
    free_port,
    log,
    pattern_file,
)

HEADER_TIMEOUT = 2.0
ENV = {"GATEWAY_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "GATEWAY_IETF_SEND_104": "true"}
UNKNOWN_ID = "A" * 22  # a valid id no upload has

NODE_PATCH = r"""
const http = require("http");
const [url, token, size] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const req = http.request(url, { method: "PATCH", headers: {
  "Tus-Resumable": "1.0.0", Authorization: `Bearer ${token}`, "Upload-Offset": "0",
  "Content-Type": "application/offset+octet-stream", "Content-Length": String(size) } });
let status = null;
req.on("response", (res) => { status = res.statusCode; res.resume();
  res.on("end", () => console.log(JSON.stringify({ status }))); });
req.on("error", (err) => console.log(JSON.stringify({ status, error: err.code || String(err) })));
const chunk = Buffer.alloc(64 * 1024, 120);
let sent = 0;
function pump() {
  while (sent < size) { const n = Math.min(chunk.length, size - sent); sent += n;
    if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
      req.once("drain", pump); return; } }
  req.end();
}
pump();
"""


def _status_of(sock: socket.socket, timeout: float) -> tuple[str, bytes]:
    """The first response's status line ("closed", "reset" or "timeout" if none), and
    what was read."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed", data
            data += chunk
    except TimeoutError:
        return "timeout", data
    except ConnectionResetError:
        return "reset", data
    return data.split(b"\r\n", 1)[0].decode("latin-1"), data


def _closed_within(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return "open"
    except ConnectionResetError:
        return "reset"
    return "closed"


def header_bytes(server: Gateway) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ")
        try:
            for _ in range(16):
                sock.sendall(b"a" * 65536)
        except OSError as exc:
            return {"holds": False, "seen": f"send failed: {exc.__class__.__name__}"}
        status, data = _status_of(sock, 10)
        after = _closed_within(sock, 10)
    code = "ERR_HEADERS_TOO_LARGE" if b"ERR_HEADERS_TOO_LARGE" in data else "no error code"
    held = " 431 " in status + " " and after != "open" and code != "no error code"
    return {"holds": held, "seen": f"{status}; {code}; {after}"}


def header_limit(server: Gateway) -> dict[str, Any]:
    """GATEWAY_MAX_HEADER_BYTES (64 KiB): 70 KiB of headers get 431, 60 KiB are served."""
    seen = []
    for size in (70_000, 60_000):
        head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {'p' * size}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head.encode())
            seen.append(_status_of(sock, 10)[0])
    held = " 431 " in seen[0] + " " and " 200 " in seen[1] + " "
    return {"holds": held, "seen": f"70 KiB: {seen[0]}; 60 KiB: {seen[1]}"}


def header_lines(server: Gateway) -> dict[str, Any]:
    """At most 256 header lines: 300 get 431, 200 are served."""
    seen = []
    for n in (300, 200):
        lines = "".join(f"X-Line-{i}: v\r\n" for i in range(n))
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}\r\n".encode())
            seen.append(_status_of(sock, 10)[0])
    held = " 431 " in seen[0] + " " and " 200 " in seen[1] + " "
    return {"holds": held, "seen": f"300 lines: {seen[0]}; 200 lines: {seen[1]}"}


def header_timeout(server: Gateway) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        status = "timeout"
        for i in range(30):  # 15 s of trickling
            try:
                sock.sendall(f"X-Drip-{i}: v\r\n".encode())
            except OSError as exc:
                status = f"send failed: {exc.__class__.__name__}"
                break
            status, _ = _status_of(sock, 0.5)
            if status != "timeout":
                break
        took = time.monotonic() - start
    held = " 408 " in status + " " and took < HEADER_TIMEOUT + 3
    return {"holds": held, "seen": f"{status} after {took:.1f} s"}


def idle_connection(server: Gateway) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        start = time.monotonic()
        outcome = _closed_within(sock, 15)
        took = time.monotonic() - start
    held = outcome != "open" and took < HEADER_TIMEOUT + 3
    return {"holds": held, "seen": f"{outcome} after {took:.1f} s"}


def _refused_head(server: Gateway, length: int) -> bytes:
    return (f"PATCH /files/{UNKNOWN_ID} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Tus-Resumable: 1.0.0\r\nAuthorization: Bearer not-a-token\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()  # fmt: skip


def linger_raw(server: Gateway) -> dict[str, Any]:
    body = b"x" * (4 * MiB)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_refused_head(server, len(body)))
        status, data = _status_of(sock, 10)
        close_header = b"connection: close" in data.lower()
        try:
            sock.sendall(body)
            sent = "body sent"
        except OSError as exc:
            sent = f"send failed: {exc.__class__.__name__}"
        after = _closed_within(sock, 15)
    held = " 401 " in status + " " and sent == "body sent" and after == "closed"
    seen = f"{status}; Connection: close {'yes' if close_header else 'no'}; {sent}; {after}"
    return {"holds": held, "seen": seen}


def linger_node(server: Gateway) -> dict[str, Any]:
    script = RUNS_DIR / "refused_patch.cjs"
    script.write_text(NODE_PATCH)
    seen = []
    for _ in range(3):
        out = subprocess.run(
            ["node", str(script), f"{server.endpoint}{UNKNOWN_ID}", "not-a-token",
             str(32 * MiB)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        seen.append(json.loads(out.stdout.strip().splitlines()[-1]))
    held = all(s == {"status": 401} for s in seen)
    return {"holds": held, "seen": "; ".join(json.dumps(s) for s in seen)}


def connection_count(server: Gateway) -> dict[str, Any]:
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
    try:
        time.sleep(0.2)
        text = _metrics(server)
    finally:
        for s in socks:
            s.close()
    match = re.search(r"^tusd_connections_open(?:\{[^}]*\})? (\S+)$", text, re.M)
    value = float(match.group(1)) if match else None
    return {"holds": value is not None and value >= 5, "seen": f"tusd_connections_open {value}"}


def _metrics(server: Gateway) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=server.headers)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def informational(server: Gateway) -> dict[str, Any]:
    from gateway.ietf import headers as fields
    from gateway.ietf.versions import SUPPORTED, VERSIONS

    version = VERSIONS[SUPPORTED[-1]]
    data = b"d" * 1000
    head = {"Host": f"127.0.0.1:{server.port}", **server.headers,
            fields.INTEROP_HEADER: str(version.number), **fields.complete_field(version, True),
            "Content-Length": str(len(data))}  # fmt: skip
    lines = ["POST /files/ HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        first, got = _status_of(sock, 2)  # before any body byte
        sock.sendall(data)
        sock.settimeout(10)
        while got.count(b"HTTP/1.1 ") < (2 if first.startswith("HTTP/1.1 104") else 1):
            got += sock.recv(65536)
        final = re.findall(rb"HTTP/1.1 [^\r]*", got)[-1].decode()
    held = first.startswith("HTTP/1.1 104")
    return {"holds": held, "seen": f"before the body: {first}; then {final}"}


CHECKS: dict[str, Callable[[Gateway], dict[str, Any]]] = {
    "431 (ERR_HEADERS_TOO_LARGE) for an endless header line, close": header_bytes,
    "431 for headers over GATEWAY_MAX_HEADER_BYTES (64 KiB)": header_limit,
    "431 for 300 header lines, 200 served": header_lines,
    "408 when headers trickle past the header timeout": header_timeout,
    "an idle connection closed after the header timeout": idle_connection,
    "lingering close: refused 4 MiB body sent, then a clean close": linger_raw,
    "lingering close: Node sees 401 for a refused 32 MiB PATCH": linger_node,
    "open connections counted (tusd_connections_open)": connection_count,
    "104 before the body of an IETF creation": informational,
}


def body_probe(kind: str, size_mib: int) -> dict[str, Any]:
    """One curl PATCH of `size_mib` MiB into benchmarks/body_probe.py under `kind`."""
    port = free_port()
    if kind == "granian":
        granian = Path(sys.executable).with_name("granian")
        cmd = [str(granian), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws",
               "--log-level", "warning", "--working-dir", str(BENCH), "body_probe:app"]  # fmt: skip
    else:
        cmd = [sys.executable, str(BENCH / "body_probe.py"), str(port)]
    f = pattern_file(size_mib * MiB)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        with Meter(proc.pid) as meter:
            out = subprocess.run(
                ["curl", "-sS", "-X", "PATCH", "-T", str(f.path), "-w", "\n%{speed_upload}",
                 f"http://127.0.0.1:{port}/"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    body, speed = out.rsplit("\n", 1)
    return {**json.loads(body), "mb_s": round(float(speed) / 1e6, 1),
            "cpu_s_per_gib": round(meter.cpu_s / (f.size / GiB), 3),
            "peak_rss_mib": round(meter.peak_rss_kib / 1024, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="uvicorn,granian")
    parser.add_argument("--body-mib", type=int, default=1024)
    parser.add_argument("--probes", type=int, default=3, help="body probe runs per server")
    args = parser.parse_args()
    kinds = args.servers.split(",")
    if shutil.which("node") is None:
        raise SystemExit("node is needed (the lingering-close check sends as Node does)")
    results: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        cls = GranianGateway if kind == "granian" else Gateway
        server = cls(RUNS_DIR / f"edges-{kind}", env=ENV)
        results[kind] = {}
        with server:
            for label, check in CHECKS.items():
                log(f"{kind}: {label}")
                try:
                    results[kind][label] = check(server)
                except Exception as exc:  # a check that breaks is a rule not shown to hold
                    results[kind][label] = {"holds": False, "seen": f"error: {exc!r}"[:200]}
                log(f"  -> {results[kind][label]}")
    probes: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(args.probes):  # ABBA
        for kind in kinds if len(probes[kinds[0]]) % 2 == 0 else kinds[::-1]:
            probes[kind].append(body_probe(kind, args.body_mib))
            log(f"body probe {kind}: {probes[kind][-1]}")
    print()
    for label in CHECKS:
        print(f"  {label}")
        for k in kinds:
            r = results[k][label]
            print(f"    {k:<8} {'holds' if r['holds'] else 'LOST '}  {r['seen']}")
    print(f"\nBody of one {args.body_mib} MiB curl PATCH into a bare app (body_probe.py)")
    for k in kinds:
        runs = probes[k]
        if not runs:
            continue
        cpu = sorted(r["cpu_s_per_gib"] for r in runs)
        last = runs[-1]
        print(f"  {k:<8} CPU-s/GiB {cpu[len(cpu) // 2]:.3f} ({cpu[0]:.3f}-{cpu[-1]:.3f}); "
              f"{last['messages']} messages of {last['sizes']['min']}-{last['sizes']['max']} B "
              f"(median {last['sizes']['median']}), type {','.join(last['types'])}; "
              f"extensions {last['extensions']}")  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = WORK / f"edges-{stamp}.json"
    out.write_text(json.dumps({"checks": results, "body_probe": probes}, indent=2) + "\n")
    print(f"\nfull results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
