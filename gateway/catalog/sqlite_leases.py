"""The SQLite catalog's leases: taken, renewed and released under the database's one
write lock, fencing tokens from one counter row (`lease_tokens`)."""

from __future__ import annotations

from gateway.catalog.base import Lease, LeaseState
from gateway.catalog.portable import PortableSQL


class SQLiteLeases(PortableSQL):
    """`LeaseCatalog` but for `lease_held` (access_sql.py); mixed into `SQLiteCatalog`."""

    def acquire_lease(self, upload_id: str, holder: str, ttl: float, now: float) -> Lease | None:
        taken = self.try_lease(upload_id, holder, ttl, now)
        return taken if isinstance(taken, Lease) else None

    def try_lease(
        self, upload_id: str, holder: str, ttl: float, now: float, *, ask_up_to: int | None = None
    ) -> Lease | int:
        # Durable: the fencing token counter must never go back, even after a power
        # cut, or a new holder could be refused by a store that saw a higher token.
        with self._tx() as cur:
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
            cur.execute(
                "UPDATE lease_tokens SET last_token = last_token + 1 WHERE name = 'fencing'"
            )
            (token,) = cur.execute(
                "SELECT last_token FROM lease_tokens WHERE name = 'fencing'"
            ).fetchone()
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

    def renew_lease(self, lease: Lease, ttl: float, now: float) -> LeaseState:
        with self._tx(durable=False) as cur:
            row = cur.execute(
                "SELECT holder, token, release_requested FROM leases WHERE upload_id = ?",
                (lease.upload_id,),
            ).fetchone()
            # Even past its expiry the lease is still ours while nobody has taken it
            # (taking it always changes the token).
            if row is None or row[0] != lease.holder or row[1] != lease.token:
                return LeaseState(valid=False, release_requested=False)
            cur.execute(
                "UPDATE leases SET expires_at = ? WHERE upload_id = ? AND token = ?",
                (now + ttl, lease.upload_id, lease.token),
            )
            return LeaseState(valid=True, release_requested=bool(row[2]))

    def release_lease(self, lease: Lease) -> None:
        # Deleting the row is safe for fencing: tokens come from the global counter.
        with self._tx(durable=False) as cur:
            cur.execute(
                "DELETE FROM leases WHERE upload_id = ? AND holder = ? AND token = ?",
                (lease.upload_id, lease.holder, lease.token),
            )
