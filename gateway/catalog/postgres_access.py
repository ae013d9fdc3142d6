"""The PostgreSQL catalog's leases (fencing tokens from a sequence, changes signalled by
NOTIFY: postgres_notify.py) and the lock a grant takes on its upload; the rest of
grants and API keys is access_sql.py."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.catalog.access_sql import AccessSQL
from gateway.catalog.base import Lease, LeaseState, UploadState
from gateway.catalog.portable import Cursor
from gateway.catalog.postgres_db import PostgresDatabase
from gateway.catalog.postgres_notify import (
    RELEASE_REQUESTED,
    RELEASED,
    PostgresLeaseSignals,
    notify,
)
from gateway.catalog.postgres_schema import LOCK_LEASE


class PostgresAccess(PostgresDatabase, AccessSQL):
    """`LeaseCatalog`, `GrantCatalog` and `TokenStore` (on access_sql.py); mixed into
    `PostgresCatalog`."""

    # leases

    def acquire_lease(self, upload_id: str, holder: str, ttl: float, now: float) -> Lease | None:
        taken = self.try_lease(upload_id, holder, ttl, now)
        return taken if isinstance(taken, Lease) else None

    def try_lease(
        self, upload_id: str, holder: str, ttl: float, now: float, *, ask_up_to: int | None = None
    ) -> Lease | int:
        with self._tx() as cur:
            # No row may exist yet to lock: the advisory lock on the id serialises
            # acquirers, the row lock serialises against renewals and commits.
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_LEASE, upload_id))
            row = cur.execute(
                "SELECT holder, expires_at, release_requested, token FROM leases "
                "WHERE upload_id = %s FOR UPDATE",
                (upload_id,),
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                # The holder is told once (it polls the flag too), and only if it was
                # there when the waiter arrived.
                if not row[2] and (ask_up_to is None or row[3] <= ask_up_to):
                    cur.execute(
                        "UPDATE leases SET release_requested = TRUE WHERE upload_id = %s",
                        (upload_id,),
                    )
                    notify(cur, RELEASE_REQUESTED, upload_id, token=int(row[3]))
                return int(row[3])
            token_row = cur.execute("SELECT nextval('fencing_tokens')").fetchone()
            assert token_row is not None
            token = int(token_row[0])
            expires_at = now + ttl
            cur.execute(
                "INSERT INTO leases (upload_id, holder, token, expires_at, release_requested) "
                "VALUES (%s, %s, %s, %s, FALSE) ON CONFLICT (upload_id) DO UPDATE SET "
                "holder = excluded.holder, token = excluded.token, "
                "expires_at = excluded.expires_at, release_requested = FALSE",
                (upload_id, holder, token, expires_at),
            )
            return Lease(upload_id=upload_id, holder=holder, token=token, expires_at=expires_at)

    def renew_leases(self, leases: Sequence[Lease], ttl: float, now: float) -> list[LeaseState]:
        if not leases:
            return []
        # One statement for all. Even past its expiry a lease is still ours while nobody
        # has taken it (taking it always changes the token).
        with self._tx(durable=False) as cur:
            rows = cur.execute(
                "UPDATE leases AS l SET expires_at = %s "
                "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS r(upload_id, holder, token) "
                "WHERE l.upload_id = r.upload_id AND l.holder = r.holder AND l.token = r.token "
                "RETURNING l.upload_id, l.token, l.release_requested",
                (
                    now + ttl,
                    [lease.upload_id for lease in leases],
                    [lease.holder for lease in leases],
                    [lease.token for lease in leases],
                ),
            ).fetchall()
        # A token is never handed out twice, so (upload_id, token) names one lease.
        renewed = {(str(row[0]), int(row[1])): bool(row[2]) for row in rows}
        states: list[LeaseState] = []
        for lease in leases:
            requested = renewed.get((lease.upload_id, lease.token))
            if requested is None:
                states.append(LeaseState(valid=False, release_requested=False))
            else:
                states.append(LeaseState(valid=True, release_requested=requested))
        return states

    def last_fencing_token(self) -> int:
        rows = self._select(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM fencing_tokens", ()
        )
        return int(rows[0][0])

    def release_lease(self, lease: Lease) -> None:
        with self._tx(durable=False) as cur:
            row = cur.execute(
                "DELETE FROM leases WHERE upload_id = %s AND holder = %s AND token = %s "
                "RETURNING release_requested",
                (lease.upload_id, lease.holder, lease.token),
            ).fetchone()
            # Only an upload someone asked for has waiters to wake; NOTIFY serialises
            # committing transactions, so uncontended releases send none.
            if row is not None and row[0]:
                notify(cur, RELEASED, lease.upload_id)

    def lease_signals(self) -> PostgresLeaseSignals:
        """`SignallingCatalog`: a listener on this catalog's database (not started)."""
        return PostgresLeaseSignals(self._conninfo)

    # grants

    def _upload_live(self, cur: Cursor, upload_id: str) -> bool:
        """Whether the upload exists and is not terminated; FOR SHARE: a terminate
        cannot slip in between this check and the caller's insert."""
        row = cur.execute(
            "SELECT 1 FROM uploads WHERE id = %s AND state <> %s FOR SHARE",
            (upload_id, str(UploadState.TERMINATED)),
        ).fetchone()
        return row is not None
