"""What verified key shredding costs a DELETE, by catalog size.

    python benchmarks/shred.py [UPLOADS ...]

For a SQLite catalog holding UPLOADS uploads (each with its key and 64 record rows,
about a 512 MiB upload), prints the time of terminate + shred with the key's bytes
known (checkpoint, then a search of the files: the usual path) and unknown (also a
rebuild of the key table: after a restart, or a stale copy found), and the file size.
Scratch lives in benchmarks/.work/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.catalog.base import ACTIVE  # noqa: E402
from gateway.catalog.sqlite import SQLiteCatalog  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work" / "shred"
RECORDS = 64


def fill(path: Path, uploads: int) -> None:
    """Rows as the gateway writes them, in one transaction (the catalog's own API
    commits each durably, which would take minutes here)."""
    SQLiteCatalog(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    for i in range(uploads):
        uid = os.urandom(16).hex()
        db.execute(
            "INSERT INTO uploads (id, owner, tenant, length, upload_offset, metadata, state, "
            "created_at, expires_at, segment_size, header, dek_id, multipart_id, concat, "
            "parts, checksum, completed_at) VALUES (?, 'admin', 'default', 0, 0, NULL, ?, "
            "0, 0, 8388608, ?, ?, 'mp', NULL, '[]', NULL, NULL)",
            (uid, ACTIVE, os.urandom(120), f"dek-{i}".encode()),
        )
        db.execute(
            "INSERT INTO wrapped_keys VALUES (?, ?, 'local-1', 1, ?)",
            (f"dek-{i}".encode(), uid, os.urandom(60)),
        )
        db.executemany(
            "INSERT INTO records VALUES (?, ?, 8388608, 0, 8388636, ?, ?)",
            [(uid, r, os.urandom(32), os.urandom(32).hex()) for r in range(RECORDS)],
        )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def measure(uploads: int, rounds: int = 5) -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    path = WORK / "catalog.sqlite3"
    fill(path, uploads)
    ids = [
        r[0] for r in sqlite3.connect(path).execute(f"SELECT id FROM uploads LIMIT {2 * rounds}")
    ]
    known, unknown = [], []
    cat = SQLiteCatalog(path)
    for uid in ids[:rounds]:
        start = time.perf_counter()
        cat.terminate(uid)
        assert cat.shred(uid)
        known.append(time.perf_counter() - start)
        cat.forget(uid)
    for uid in ids[rounds:]:
        cat.terminate(uid)
        cat._shredding.clear()  # as if another process had terminated it
        start = time.perf_counter()
        assert cat.shred(uid)
        unknown.append(time.perf_counter() - start)
        cat.forget(uid)
    cat.close()
    size = path.stat().st_size / 2**20
    print(
        f"{uploads:>8} uploads  catalog {size:7.1f} MiB  "
        f"shred, key known: {1000 * statistics.median(known):7.1f} ms  "
        f"key unknown (rebuild): {1000 * statistics.median(unknown):7.1f} ms"
    )
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [1_000, 10_000, 50_000]:
        measure(n)
