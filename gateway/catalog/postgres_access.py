"""The PostgreSQL catalog's leases (fencing tokens from a sequence, changes signalled by
NOTIFY: postgres_notify.py), grants and API keys."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from gateway.catalog.base import ApiKey, Grant, Lease, LeaseState, Principal, UploadState
from gateway.catalog.postgres_db import PostgresDatabase
from gateway.catalog.postgres_notify import (
    RELEASE_REQUESTED,
    RELEASED,
    PostgresLeaseSignals,
    notify,
)
from gateway.catalog.postgres_schema import LOCK_LEASE

_GRANT_FIELDS = tuple(f.name for f in fields(Grant))
_GRANT_COLUMNS = ", ".join(_GRANT_FIELDS)
_KEY_COLUMNS = "id, principal_id, tenant, roles, created_at, expires_at, revoked_at, last_used_at"


class PostgresAccess(PostgresDatabase):
    """`LeaseCatalog`, `GrantCatalog` and `TokenStore`; mixed into `PostgresCatalog`."""

    # leases

    def acquire_lease(self, upload_id: str, holder: str, ttl: float, now: float) -> Lease | None:
        with self._tx() as cur:
            # No row may exist yet to lock: the advisory lock on the id serialises
            # acquirers, the row lock serialises against renewals and commits.
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_LEASE, upload_id))
            row = cur.execute(
                "SELECT holder, expires_at, release_requested FROM leases "
                "WHERE upload_id = %s FOR UPDATE",
                (upload_id,),
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                if not row[2]:  # the holder is told once; it polls the flag too
                    cur.execute(
                        "UPDATE leases SET release_requested = TRUE WHERE upload_id = %s",
                        (upload_id,),
                    )
                    notify(cur, RELEASE_REQUESTED, upload_id)
                return None
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

    def renew_lease(self, lease: Lease, ttl: float, now: float) -> LeaseState:
        # Even past its expiry the lease is still ours while nobody has taken it
        # (taking it always changes the token).
        with self._tx(durable=False) as cur:
            row = cur.execute(
                "UPDATE leases SET expires_at = %s WHERE upload_id = %s AND holder = %s "
                "AND token = %s RETURNING release_requested",
                (now + ttl, lease.upload_id, lease.holder, lease.token),
            ).fetchone()
        if row is None:
            return LeaseState(valid=False, release_requested=False)
        return LeaseState(valid=True, release_requested=bool(row[0]))

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

    def lease_held(self, upload_id: str, now: float) -> bool:
        rows = self._query(
            "SELECT 1 FROM leases WHERE upload_id = %s AND expires_at > %s", (upload_id, now)
        )
        return bool(rows)

    # grants

    def add_grant(self, grant: Grant) -> bool:
        with self._tx() as cur:
            # FOR SHARE: a terminate cannot slip in between this check and the insert.
            row = cur.execute(
                "SELECT 1 FROM uploads WHERE id = %s AND state <> %s FOR SHARE",
                (grant.upload_id, str(UploadState.TERMINATED)),
            ).fetchone()
            if row is None:
                return False
            cur.execute(
                "DELETE FROM grants WHERE upload_id = %s AND expires_at <= %s",
                (grant.upload_id, grant.created_at),
            )
            cur.execute(
                f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                tuple(getattr(grant, name) for name in _GRANT_FIELDS),
            )
            return True

    def grants(self, upload_id: str, now: float) -> list[Grant]:
        rows = self._query(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE upload_id = %s AND expires_at > %s "
            "ORDER BY created_at, id",
            (upload_id, now),
        )
        return [Grant(**dict(zip(_GRANT_FIELDS, row, strict=True))) for row in rows]

    def revoke_grant(self, upload_id: str, grant_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM grants WHERE upload_id = %s AND id = %s", (upload_id, grant_id)
            )
            return cur.rowcount == 1

    # bearer tokens (API keys)

    def add_token(
        self,
        token_hash: bytes,
        principal: Principal,
        now: float,
        *,
        token_id: str | None = None,
        expires_at: float | None = None,
    ) -> str:
        roles = " ".join(sorted(principal.roles))
        token_id = token_id or secrets.token_hex(8)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO tokens (token_hash, principal_id, tenant, created_at, roles, id, "
                "expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (token_hash) "
                "DO UPDATE SET principal_id = excluded.principal_id, tenant = excluded.tenant, "
                "roles = excluded.roles, id = excluded.id, expires_at = excluded.expires_at, "
                "revoked_at = NULL",
                (token_hash, principal.id, principal.tenant, now, roles, token_id, expires_at),
            )
        return token_id

    def api_key(self, token_hash: bytes) -> ApiKey | None:
        rows = self._query(
            f"SELECT {_KEY_COLUMNS} FROM tokens WHERE token_hash = %s", (token_hash,)
        )
        return _api_key_from(rows[0]) if rows else None

    def principal_for(self, token_hash: bytes) -> Principal | None:
        key = self.api_key(token_hash)
        return key.principal if key is not None and key.usable(time.time()) else None

    def api_keys(self) -> list[ApiKey]:
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM tokens ORDER BY created_at, id")
        return [_api_key_from(row) for row in rows]

    def revoke_token(self, token_id: str, now: float) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (now, token_id),
            )
            return cur.rowcount == 1

    def token_used(self, token_id: str, now: float, *, every: float = 60.0) -> None:
        with self._tx(durable=False) as cur:
            cur.execute(
                "UPDATE tokens SET last_used_at = %s WHERE id = %s "
                "AND (last_used_at IS NULL OR last_used_at <= %s)",
                (now, token_id, now - every),
            )

    def token_count(self) -> int:
        rows = self._query("SELECT COUNT(*) FROM tokens")
        return int(rows[0][0])


def _api_key_from(row: Sequence[Any]) -> ApiKey:
    token_id, principal_id, tenant, roles, created_at, expires_at, revoked_at, last_used = row
    principal = Principal(id=str(principal_id), tenant=str(tenant), roles=frozenset(roles.split()))
    return ApiKey(
        id=str(token_id),
        principal=principal,
        created_at=float(created_at),
        expires_at=expires_at,
        revoked_at=revoked_at,
        last_used_at=last_used,
    )
