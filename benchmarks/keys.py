"""What keys in a PKCS#11 token cost, against the local keyring, side by side.

    .venv/bin/python benchmarks/keys.py                 # micro + end to end
    .venv/bin/python benchmarks/keys.py --micro-only    # provider operations only
    .venv/bin/python benchmarks/keys.py --runs 5

1. Provider operations, one thread: wrap, unwrap (a 32-byte DEK) and sign (a 2 KB
   manifest), keyring vs PKCS#11 (SoftHSM2, a token made like the tests'): median µs per
   operation and ops/s (1 / median).
2. The PKCS#11 cost per upload, from the calls the gateway makes per request
   (gateway/uploads.py, writes.py, upload_keys.py, reader.py): POST = 1 wrap; each PATCH
   = 1 unwrap (its sealer); the completing PATCH adds 1 unwrap + 2 signatures (the two
   manifest views); GET = 1 unwrap; GET .../manifest = 1 unwrap; HEAD of an upload with
   metadata = 1 unwrap.
3. End to end: two gateways (keyring; pkcs11 on SoftHSM2), tuspy uploads of 8 MiB and
   64 MiB (8 MiB chunks) and of 8 MiB in 256 KiB chunks (32 PATCHes), runs alternating
   between the gateways; median MB/s, and gateway CPU seconds per GiB uploaded over
   all runs. Every
   upload is downloaded afterwards and compared by SHA-256 (not timed).

Needs SoftHSM2 (Debian: softhsm2). Scratch in benchmarks/.work/keys/.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import MB, WORK, Gateway, MiB, log, random_file, tree_cpu, tuspy

from gateway.keys.base import KeyProvider
from gateway.keys.keyring import LocalKeyring
from gateway.keys.pkcs11 import Pkcs11Provider
from tests.softhsm import SoftHsmToken, make_token

GiB = 1 << 30


def _median_us(op: Callable[[], object], n: int) -> float:
    for _ in range(min(50, n)):
        op()  # warm up
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        op()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


def micro(keys: KeyProvider, n: int) -> dict[str, float]:
    dek = os.urandom(32)
    wrapped = keys.wrap(dek, upload_id="bench", dek_id=b"0123456789abcdef")
    signer = keys.signing_key()
    manifest = os.urandom(1500).hex().encode()[:2048]
    return {
        "wrap": _median_us(lambda: keys.wrap(dek, upload_id="bench", dek_id=b"x" * 16), n),
        "unwrap": _median_us(
            lambda: keys.unwrap(wrapped, upload_id="bench", dek_id=b"0123456789abcdef"), n
        ),
        "sign": _median_us(lambda: signer.sign(manifest), n),
    }


def per_upload(cost: dict[str, float], patches: int) -> dict[str, float]:
    w, u, s = cost["wrap"], cost["unwrap"], cost["sign"]
    return {
        "create (POST)": w,
        "each PATCH": u,
        "complete (last PATCH, extra)": u + 2 * s,
        "download (GET)": u,
        "manifest (GET)": u,
        f"whole upload, {patches} PATCHes + GET": w + patches * u + (u + 2 * s) + u,
    }


def _sha256_of_download(server: Gateway, url: str) -> str:
    import httpx

    h = hashlib.sha256()
    with httpx.stream("GET", url, headers=server.headers, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            h.update(chunk)
    return h.hexdigest()


def end_to_end(token: SoftHsmToken, runs: int) -> None:
    root = WORK / "keys"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    keys = Pkcs11Provider(
        token.module,
        token.label,
        token.pin,
        kek_label="bench-gateway-kek",
        signing_label="bench-gateway-signing",
    )
    keys.init()
    keys.close()
    env = {**token.env("bench-"), "GATEWAY_LOG_LEVEL": "warning"}
    servers = {
        "keyring": Gateway(root / "keyring" / "data"),
        "pkcs11": Gateway(root / "pkcs11" / "data", env=env),
    }
    cases = [(8 * MiB, 8 * MiB), (64 * MiB, 8 * MiB), (8 * MiB, 256 * 1024)]
    results: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    try:
        for s in servers.values():
            s.start()
        for size, chunk in cases:
            f = random_file(size)
            for run in range(runs):
                order = list(servers) if run % 2 == 0 else list(reversed(servers))
                for name in order:
                    server = servers[name]
                    cpu0 = tree_cpu(server.pid)
                    result = tuspy(server, f, chunk)
                    cpu = tree_cpu(server.pid) - cpu0
                    url = result.urls[0]
                    if _sha256_of_download(server, url) != f.sha256:
                        raise AssertionError(f"{name}: {url} differs from what was sent")
                    results.setdefault((name, size, chunk), []).append((result.seconds, cpu))
    finally:
        for s in servers.values():
            s.stop()
    print("\nend to end (tuspy, median of runs; CPU = gateway process tree)")
    print(f"{'case':<28}{'keyring MB/s':>14}{'pkcs11 MB/s':>13}{'keyring CPU-s/GiB':>19}"
          f"{'pkcs11 CPU-s/GiB':>18}")  # fmt: skip
    for size, chunk in cases:
        row = []
        for name in servers:
            rows = results[(name, size, chunk)]
            # CPU over all runs together: /proc counts in 10 ms ticks.
            row.append(
                (
                    size / statistics.median(r[0] for r in rows) / MB,
                    sum(r[1] for r in rows) * GiB / (size * len(rows)),
                )
            )
        case = f"{size // MiB} MiB, {chunk // 1024} KiB chunks"
        print(f"{case:<28}{row[0][0]:>14.1f}{row[1][0]:>13.1f}{row[0][1]:>19.2f}{row[1][1]:>18.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="operations per micro benchmark")
    parser.add_argument("--runs", type=int, default=3, help="uploads per gateway per case")
    parser.add_argument("--micro-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as tmp:
        token = make_token(Path(tmp) / "softhsm", label="bench")
        os.environ["SOFTHSM2_CONF"] = str(token.conf)  # read when the module is loaded
        keyring = LocalKeyring.open(Path(tmp) / "keyring.json")
        p11 = Pkcs11Provider(token.module, token.label, token.pin)
        p11.init()
        log(f"micro benchmarks, {args.n} operations each, one thread")
        costs = {"keyring": micro(keyring, args.n), "pkcs11": micro(p11, args.n)}
        p11.close()
        print(f"\n{'operation':<10}{'keyring µs':>12}{'ops/s':>10}{'pkcs11 µs':>12}{'ops/s':>10}")
        for op in ("wrap", "unwrap", "sign"):
            k, p = costs["keyring"][op], costs["pkcs11"][op]
            print(f"{op:<10}{k:>12.1f}{1e6 / k:>10.0f}{p:>12.1f}{1e6 / p:>10.0f}")
        print("\nprovider time per upload operation (µs), from the calls the gateway makes")
        for patches in (1, 8):
            k = per_upload(costs["keyring"], patches)
            p = per_upload(costs["pkcs11"], patches)
            for what in k:
                if patches == 8 and not what.startswith("whole"):
                    continue
                print(f"  {what:<36}{'keyring':>8} {k[what]:>8.1f}{'pkcs11':>8} {p[what]:>8.1f}")
        if not args.micro_only:
            end_to_end(token, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
