"""This machine's limits, measured in the same run as the uploads.

    python benchmarks/limits.py [--quick]

- loopback TCP: a Python sender and receiver, each in its own process, 1 MiB writes;
- SHA-256 (hashlib) and AES-256-GCM encryption (cryptography's AESGCM) on 8 MiB buffers,
  one core;
- disk: 256 MiB in 8 MiB writes with fdatasync after each (what the gateway's folder
  store does per segment), and the same without fdatasync (page cache only, what
  @tus/file-store does), in benchmarks/.work/ (the filesystem the data dirs use);
  then once 2 GiB with fdatasync, the rate a long upload can keep up. On a virtual
  disk the two can differ a lot: short runs of writes (and rewrites of blocks freed
  a moment ago, like the 256 MiB file of the run before) may go much faster than a
  long stream of them, which is what a large upload is.
- the crypto floor: CPU seconds per GiB (2^30 bytes) of the work the gateway must do
  for every byte, done as it does it: a running SHA-256 over the plaintext, AES-256-GCM
  encryption and a SHA-256 over each record's ciphertext, in 8 MiB records; process CPU
  time (time.process_time), median of 3. Nothing else (receiving, writing, the catalog).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import MB, WORK, GiB, MiB, median

BUF = 8 * MiB


def _receiver(sock: socket.socket, out: mp.connection.Connection) -> None:
    conn, _ = sock.accept()
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    while n := conn.recv_into(view):
        total += n
    out.send((total, time.perf_counter() - t0))
    conn.close()


def _sender(port: int, size: int) -> None:
    data = memoryview(os.urandom(MiB))
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < size:
            s.sendall(data)
            sent += len(data)


def loopback_mb_s(size: int) -> float:
    ctx = mp.get_context("fork")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    parent, child = ctx.Pipe(duplex=False)
    recv = ctx.Process(target=_receiver, args=(listener, child))
    recv.start()
    send = ctx.Process(target=_sender, args=(port, size))
    send.start()
    send.join()
    total, seconds = parent.recv()
    recv.join()
    listener.close()
    return float(total / seconds / MB)


def sha256_mb_s(total: int) -> float:
    buf = os.urandom(BUF)
    t0 = time.perf_counter()
    for _ in range(total // BUF):
        hashlib.sha256(buf).digest()
    return total / (time.perf_counter() - t0) / MB


def aesgcm_mb_s(total: int) -> float:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    buf = os.urandom(BUF)
    t0 = time.perf_counter()
    for i in range(total // BUF):
        aead.encrypt(i.to_bytes(12, "big"), buf, None)
    return total / (time.perf_counter() - t0) / MB


def crypto_floor_cpu_s_per_gib(total: int) -> float:
    """CPU-s per GiB of the mandated work alone, as the gateway does it per 8 MiB record."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    buf = os.urandom(BUF)
    out = bytearray(BUF + 16)  # ciphertext and tag, into one reused buffer as the gateway does
    plain = hashlib.sha256()
    t0 = time.process_time()
    for i in range(total // BUF):
        plain.update(buf)
        aead.encrypt_into(i.to_bytes(12, "big"), buf, None, out)
        hashlib.sha256(out).digest()
    plain.digest()
    return (time.process_time() - t0) / (total / GiB)


def disk_mb_s(total: int, sync: bool) -> tuple[float, float, float]:
    """MB/s, and mean ms per 8 MiB write() and per fdatasync()."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"disk-probe-{os.getpid()}.bin"
    buf = os.urandom(BUF)
    n = total // BUF
    t_write = t_sync = 0.0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            t1 = time.perf_counter()
            os.write(fd, buf)
            t2 = time.perf_counter()
            if sync:
                os.fdatasync(fd)
            t_write += t2 - t1
            t_sync += time.perf_counter() - t2
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return total / seconds / MB, 1000 * t_write / n, 1000 * t_sync / n


def measure(quick: bool = False) -> dict[str, object]:
    reps = 3
    loop_size = (1 if quick else 2) << 30
    cpu_total = (256 if quick else 512) * MiB
    sustained = [] if quick else [disk_mb_s(2048 * MiB, True)]
    synced = [disk_mb_s(256 * MiB, True) for _ in range(reps)]
    unsynced = [disk_mb_s(256 * MiB, False) for _ in range(reps)]
    results: dict[str, list[float]] = {
        "loopback_tcp_mb_s": [loopback_mb_s(loop_size) for _ in range(reps)],
        "sha256_mb_s": [sha256_mb_s(cpu_total) for _ in range(reps)],
        "aes256gcm_encrypt_mb_s": [aesgcm_mb_s(cpu_total) for _ in range(reps)],
        "crypto_floor_cpu_s_per_gib": [crypto_floor_cpu_s_per_gib(cpu_total) for _ in range(reps)],
        "disk_write_fdatasync_8mib_mb_s": [r[0] for r in synced],
        "disk_write_no_sync_mb_s": [r[0] for r in unsynced],
        "disk_write_fdatasync_2gib_mb_s": [r[0] for r in sustained],
        "disk_ms_per_8mib_write_synced": [r[1] for r in synced],
        "disk_ms_per_fdatasync": [r[2] for r in synced],
    }
    out: dict[str, object] = {
        k: round(median(v), _DIGITS.get(k, 1)) for k, v in results.items() if v
    }
    out["runs"] = {k: [round(x, _DIGITS.get(k, 1)) for x in v] for k, v in results.items()}
    return out


_DIGITS = {"crypto_floor_cpu_s_per_gib": 3}

LABELS = {
    "loopback_tcp_mb_s": "loopback TCP (Python sender -> receiver, 1 MiB writes)",
    "sha256_mb_s": "SHA-256, hashlib, 8 MiB buffers, 1 core",
    "aes256gcm_encrypt_mb_s": "AES-256-GCM encrypt, cryptography AESGCM, 8 MiB, 1 core",
    "disk_write_fdatasync_8mib_mb_s": "disk write, 8 MiB + fdatasync each (256 MiB)",
    "disk_write_no_sync_mb_s": "disk write, 8 MiB, no sync (page cache, 256 MiB)",
    "disk_write_fdatasync_2gib_mb_s": "disk write, 8 MiB + fdatasync each, 2 GiB (1 run)",
}


def print_table(limits: dict[str, Any]) -> None:
    print("\nMachine limits (median of the runs [all runs], MB/s = 10^6 B/s)")
    for key, label in LABELS.items():
        if key not in limits:
            continue
        runs = ", ".join(f"{x:.0f}" for x in limits["runs"][key])
        print(f"  {label:<58} {limits[key]:>8.1f} MB/s  [{runs}]")
    write_ms, sync_ms = limits["disk_ms_per_8mib_write_synced"], limits["disk_ms_per_fdatasync"]
    label = "  with fdatasync: ms per 8 MiB write() / per fdatasync()"
    print(f"  {label:<58} {write_ms:>5.1f} / {sync_ms:.1f} ms")
    floor = limits["crypto_floor_cpu_s_per_gib"]
    runs = ", ".join(f"{x:.3f}" for x in limits["runs"]["crypto_floor_cpu_s_per_gib"])
    label = "crypto floor: SHA-256 + AES-256-GCM + SHA-256, 8 MiB records"
    print(f"  {label:<58} {floor:>8.3f} CPU-s/GiB  [{runs}]")


if __name__ == "__main__":
    limits = measure(quick="--quick" in sys.argv)
    print_table(limits)
    print(json.dumps(limits, indent=2))
