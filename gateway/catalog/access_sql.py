"""Who may touch an upload, one implementation for both catalogs (`PortableSQL`):
whether a lease is held, grants (read access to one upload) and API keys. Taking,
renewing and releasing leases is each catalog's own (sqlite_leases.py,
postgres_access.py), as is how `add_grant` keeps the upload from being terminated
meanwhile (`_upload_live`)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from gateway.catalog.base import ApiKey, Grant, Principal, UploadState
from gateway.catalog.portable import Cursor, PortableSQL

_GRANT_FIELDS = tuple(f.name for f in fields(Grant))
_GRANT_COLUMNS = ", ".join(_GRANT_FIELDS)
_KEY_COLUMNS = "id, principal_id, tenant, roles, created_at, expires_at, revoked_at, last_used_at"


class AccessSQL(PortableSQL):
    """`LeaseCatalog.lease_held`, `GrantCatalog` and `TokenStore`; mixed into both
    catalogs."""

    def _upload_live(self, cur: Cursor, upload_id: str) -> bool:
        """Whether the upload exists and is not terminated, and stays so until this
        transaction ends (here the transaction's write lock sees to that; PostgreSQL
        locks the row)."""
        found = cur.execute(
            self._sql("SELECT 1 FROM uploads WHERE id = ? AND state <> ?"),
            (upload_id, str(UploadState.TERMINATED)),
        )
        return found.fetchone() is not None

    def lease_held(self, upload_id: str, now: float) -> bool:
        rows = self._select(
            "SELECT 1 FROM leases WHERE upload_id = ? AND expires_at > ?", (upload_id, now)
        )
        return bool(rows)

    # grants

    def add_grant(self, grant: Grant) -> bool:
        with self._tx() as cur:
            if not self._upload_live(cur, grant.upload_id):
                return False
            cur.execute(
                self._sql("DELETE FROM grants WHERE upload_id = ? AND expires_at <= ?"),
                (grant.upload_id, grant.created_at),
            )
            cur.execute(
                self._sql(f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"),
                tuple(getattr(grant, name) for name in _GRANT_FIELDS),
            )
            return True

    def grants(self, upload_id: str, now: float) -> list[Grant]:
        rows = self._select(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE upload_id = ? AND expires_at > ? "
            "ORDER BY created_at, id",
            (upload_id, now),
        )
        return [Grant(**dict(zip(_GRANT_FIELDS, row, strict=True))) for row in rows]

    def revoke_grant(self, upload_id: str, grant_id: str) -> bool:
        revoked = self._change(
            "DELETE FROM grants WHERE upload_id = ? AND id = ?", (upload_id, grant_id)
        )
        return revoked == 1

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
        self._change(
            "INSERT INTO tokens (token_hash, principal_id, tenant, created_at, roles, id, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (token_hash) DO UPDATE SET "
            "principal_id = excluded.principal_id, tenant = excluded.tenant, "
            "roles = excluded.roles, id = excluded.id, expires_at = excluded.expires_at, "
            "revoked_at = NULL",
            (token_hash, principal.id, principal.tenant, now, roles, token_id, expires_at),
        )
        return token_id

    def api_key(self, token_hash: bytes) -> ApiKey | None:
        rows = self._select(
            f"SELECT {_KEY_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,)
        )
        return _api_key_from(rows[0]) if rows else None

    def principal_for(self, token_hash: bytes) -> Principal | None:
        key = self.api_key(token_hash)
        return key.principal if key is not None and key.usable(time.time()) else None

    def api_keys(self) -> list[ApiKey]:
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM tokens ORDER BY created_at, id")
        return [_api_key_from(row) for row in rows]

    def revoke_token(self, token_id: str, now: float) -> bool:
        revoked = self._change(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, token_id),
        )
        return revoked == 1

    def token_used(self, token_id: str, now: float, *, every: float = 60.0) -> None:
        # Not durable: a last-use time lost to a power cut (or a crash of the
        # database) is harmless.
        self._change(
            "UPDATE tokens SET last_used_at = ? WHERE id = ? "
            "AND (last_used_at IS NULL OR last_used_at <= ?)",
            (now, token_id, now - every),
            durable=False,
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
