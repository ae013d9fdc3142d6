"""The SQLite catalog's leases: taken, renewed and released under the database's one
write lock, fencing tokens from one counter row (`lease_tokens`) handed out from
blocks reserved durably, so that taking a lease needs no fsync of its own."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from gateway.catalog.base import Lease, LeaseState
from gateway.catalog.portable import PortableSQL

# Fencing tokens reserved with one fsync; a restart skips what is left of a block.
FENCING_BLOCK = 1024


def resume_fencing(cur: sqlite3.Cursor) -> None:
    """Move the fencing counter past the last reserved block (at open, in a durable
    transaction): tokens handed out before a power cut may be lost, the block's end not."""
    cur.execute(
        "UPDATE lease_tokens SET last_token = MAX(last_token, "
        "(SELECT last_token FROM lease_tokens WHERE name = 'reserved')) WHERE name = 'fencing'"
    )


class SQLiteLeases(PortableSQL):
    """`LeaseCatalog` but for `lease_held` (access_sql.py); mixed into `SQLiteCatalog`."""

    def acquire_lease(self, upload_id: str, holder: str, ttl: float, now: float) -> Lease | None:
        taken = self.try_lease(upload_id, holder, ttl, now)
        return taken if isinstance(taken, Lease) else None

    def try_lease(
        self, upload_id: str, holder: str, ttl: float, now: float, *, ask_up_to: int | None = None
    ) -> Lease | int:
        taken = self._try_lease(upload_id, holder, ttl, now, ask_up_to, reserve=False)
        if taken is None:  # the reserved block is used up: reserve the next one
            taken = self._try_lease(upload_id, holder, ttl, now, ask_up_to, reserve=True)
        assert taken is not None
        return taken

    def _try_lease(
        self,
        upload_id: str,
        holder: str,
        ttl: float,
        now: float,
        ask_up_to: int | None,
        *,
        reserve: bool,
    ) -> Lease | int | None:
        # Tokens come from a block whose end (`reserved`) is committed with an fsync
        # before any token in it is handed out; the tokens themselves are committed
        # without one. A power cut may lose the last tokens handed out, never the
        # block's end, and opening the catalog moves the counter past it
        # (`resume_fencing`): the counter never goes back to a token a store has seen.
        with self._tx(durable=reserve) as cur:
            row = cur.execute(
                "SELECT holder, expires_at, token FROM leases WHERE upload_id = ?", (upload_id,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                if ask_up_to is None or row[2] <= ask_up_to:
                    cur.execute(
                        "UPDATE leases SET release_requested = ? WHERE upload_id = ?",
                        (True, upload_id),
                    )
                return int(row[2])
            token, reserved = cur.execute(
                "SELECT f.last_token + 1, r.last_token FROM lease_tokens AS f, lease_tokens AS r "
                "WHERE f.name = 'fencing' AND r.name = 'reserved'"
            ).fetchone()
            if token > reserved:
                if not reserve:
                    return None
                cur.execute(
                    "UPDATE lease_tokens SET last_token = ? WHERE name = 'reserved'",
                    (token + FENCING_BLOCK - 1,),
                )
            cur.execute("UPDATE lease_tokens SET last_token = ? WHERE name = 'fencing'", (token,))
            expires_at = now + ttl
            cur.execute(
                "INSERT INTO leases (upload_id, holder, token, expires_at, release_requested) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (upload_id) DO UPDATE SET "
                "holder = excluded.holder, token = excluded.token, "
                "expires_at = excluded.expires_at, release_requested = excluded.release_requested",
                (upload_id, holder, token, expires_at, False),
            )
            return Lease(
                upload_id=upload_id, holder=holder, token=int(token), expires_at=expires_at
            )

    def renew_leases(self, leases: Sequence[Lease], ttl: float, now: float) -> list[LeaseState]:
        if not leases:
            return []
        states: list[LeaseState] = []
        with self._tx(durable=False) as cur:
            for lease in leases:
                row = cur.execute(
                    "SELECT holder, token, release_requested FROM leases WHERE upload_id = ?",
                    (lease.upload_id,),
                ).fetchone()
                # Even past its expiry the lease is still ours while nobody has taken it
                # (taking it always changes the token).
                if row is None or row[0] != lease.holder or row[1] != lease.token:
                    states.append(LeaseState(valid=False, release_requested=False))
                    continue
                cur.execute(
                    "UPDATE leases SET expires_at = ? WHERE upload_id = ? AND token = ?",
                    (now + ttl, lease.upload_id, lease.token),
                )
                states.append(LeaseState(valid=True, release_requested=bool(row[2])))
        return states

    def last_fencing_token(self) -> int:
        rows = self._select("SELECT last_token FROM lease_tokens WHERE name = 'fencing'", ())
        return int(rows[0][0])

    def release_lease(self, lease: Lease) -> None:
        # Deleting the row is safe for fencing: tokens come from the global counter.
        with self._tx(durable=False) as cur:
            cur.execute(
                "DELETE FROM leases WHERE upload_id = ? AND holder = ? AND token = ?",
                (lease.upload_id, lease.holder, lease.token),
            )
