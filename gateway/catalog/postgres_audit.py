"""The PostgreSQL catalog's audit log: the shared one (audit_sql.py), its head locked by
an advisory lock, as no row lock can serialise appends before the first entry."""

from __future__ import annotations

from gateway.catalog.audit_sql import AuditLogSQL
from gateway.catalog.portable import Cursor
from gateway.catalog.postgres_db import PostgresDatabase
from gateway.catalog.postgres_schema import LOCK_AUDIT


class PostgresAuditLog(PostgresDatabase, AuditLogSQL):
    """`AuditCatalog` on the catalog's pool; mixed into `PostgresCatalog`."""

    def _lock_audit_head(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_AUDIT,))
