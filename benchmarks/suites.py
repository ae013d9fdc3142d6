"""Sealing and hashing cost of suite 1 (AES-256-GCM, SHA-256) against suite 2 (SM4-GCM, SM3).

    python benchmarks/suites.py [--mib 256] [--runs 3]

One core, in this process, on records of the default segment size (8 MiB): what the
write path does for each record (gateway/writer/record.py): the record sealed through
`Sealer.record_stream` in 1 MiB slices, the running plaintext hash and the record's
digest in the suite's hash, and under suite 2 the part's SHA-256 besides (S3 checks
parts with SHA-256 whatever the suite). Prints MB/s and CPU seconds per GiB of
plaintext for each suite, the median of the runs, and for each primitive alone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.sealed import TAG_LEN, Sealer, new_header
from gateway.suites import SUITES, Aead, Suite

MiB = 1 << 20
GiB = 1 << 30
SEGMENT = 8 * MiB  # GATEWAY_SEGMENT_SIZE's default
SLICE = MiB  # how the writer feeds a record


def seal_records(suite: Suite, data: bytes, records: int) -> None:
    """Seal `records` records of `data` (one segment) as the writer does."""
    dek = os.urandom(suite.key_len)
    header = new_header(
        dek,
        upload_id="bench",
        dek_id=bytes(16),
        segment_size=SEGMENT,
        plaintext_size=None,
        suite=suite.id,
    )
    sealer = Sealer(dek, header)
    out = bytearray(SLICE + TAG_LEN)
    plain_hash = suite.hash()
    view = memoryview(data)
    for index in range(records):
        stream = sealer.record_stream(index, False, SEGMENT)
        record_hash = suite.hash(stream.nonce)
        part_hash = hashlib.sha256(stream.nonce) if suite.hash_name != "sha256" else None
        for at in range(0, SEGMENT, SLICE):
            plain = view[at : at + SLICE]
            plain_hash.update(plain)
            cipher = stream.update(plain, out)
            record_hash.update(cipher)
            if part_hash is not None:
                part_hash.update(cipher)
        tag = stream.finish()
        record_hash.update(tag)
        if part_hash is not None:
            part_hash.update(tag)
    plain_hash.digest()


def measure(fn: Callable[[], None], size: int, runs: int) -> tuple[float, float]:
    """(MB/s, CPU seconds per GiB), medians over `runs`."""
    rates, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(size / wall / 1e6)
        cpus.append(cpu / size * GiB)
    return sorted(rates)[len(rates) // 2], sorted(cpus)[len(cpus) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="plaintext per run (MiB)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    records = max(1, args.mib * MiB // SEGMENT)
    size = records * SEGMENT
    data = os.urandom(SEGMENT)
    print(f"{records} records of {SEGMENT // MiB} MiB per run, {args.runs} runs, one core")
    print(f"{'what':<40} {'MB/s':>8} {'CPU s/GiB':>10}")
    for suite in SUITES.values():
        rate, cpu = measure(partial(seal_records, suite, data, records), size, args.runs)
        print(f"{f'suite {suite.id} ({suite.name}): seal + hashes':<40} {rate:8.0f} {cpu:10.2f}")
    for suite in SUITES.values():
        aead = suite.aead(os.urandom(suite.key_len))
        out = bytearray(SEGMENT + TAG_LEN)

        def encrypt(a: Aead = aead, o: bytearray = out) -> None:
            for _ in range(records):
                a.encrypt_into(os.urandom(12), data, None, o)

        def digest(s: Suite = suite) -> None:
            for _ in range(records):
                s.hash(data).digest()

        cipher = "AES-256-GCM" if suite.id == 1 else "SM4-GCM"
        for name, fn in ((cipher, encrypt), (suite.hash_name.upper(), digest)):
            rate, cpu = measure(fn, size, args.runs)
            print(f"{'  ' + name + ' alone':<40} {rate:8.0f} {cpu:10.2f}")


if __name__ == "__main__":
    main()
