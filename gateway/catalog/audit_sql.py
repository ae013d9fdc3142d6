"""The audit log in the catalog, one implementation for both catalogs (`PortableSQL`):
appends that never fork the chain, queries, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from gateway.catalog.base import AUDIT_GENESIS, AuditQuery, AuditRecord, StoredCheckpoint
from gateway.catalog.portable import Cursor, PortableSQL

# The columns are AuditRecord's fields, in its order.
_FIELDS = tuple(f.name for f in fields(AuditRecord))
_COLUMNS = ", ".join(_FIELDS)


class AuditLogSQL(PortableSQL):
    """`AuditCatalog`; mixed into both catalogs."""

    def _lock_audit_head(self, cur: Cursor) -> None:
        """Serialise appends in this transaction before the head is read (nothing where
        the transaction's write lock already does)."""

    def append_audit(self, entry_for: Callable[[int, str], AuditRecord]) -> AuditRecord:
        # The head is locked before it is read (SQLite: BEGIN IMMEDIATE's write lock;
        # PostgreSQL: an advisory lock): two processes appending at once are
        # serialised, each chains onto the other's entry (no fork, no gap).
        with self._tx() as cur:
            self._lock_audit_head(cur)
            row = cur.execute(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = (int(row[0]), str(row[1])) if row is not None else (0, AUDIT_GENESIS)
            record = entry_for(seq + 1, prev)
            if record.seq != seq + 1:
                raise ValueError(f"audit entry {record.seq} built for seq {seq + 1}")
            marks = ", ".join("?" * len(_FIELDS))
            cur.execute(
                self._sql(f"INSERT INTO audit_log ({_COLUMNS}) VALUES ({marks})"),
                tuple(getattr(record, name) for name in _FIELDS),
            )
        return record

    def audit_records(self, query: AuditQuery) -> list[AuditRecord]:
        where = ["seq > ?"]
        params: list[object] = [query.after]
        for column, value in (
            ("upload_id", query.upload_id),
            ("principal", query.principal),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.tenant is not None:
            where.append("(tenant = ? OR upload_tenant = ?)")
            params += [query.tenant, query.tenant]
        if query.since is not None:
            where.append("time >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("time < ?")
            params.append(query.until)
        params.append(query.limit)
        rows = self._select(
            f"SELECT {_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            tuple(params),
        )
        return [_record(row) for row in rows]

    def audit_head(self) -> tuple[int, str]:
        rows = self._query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, AUDIT_GENESIS)

    def add_audit_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        added = self._change(
            "INSERT INTO audit_checkpoints (seq, issued_at, jws) VALUES (?, ?, ?) "
            "ON CONFLICT (seq) DO NOTHING",
            (checkpoint.seq, checkpoint.issued_at, checkpoint.jws),
        )
        return added == 1

    def audit_checkpoints(self, after: int = 0) -> list[StoredCheckpoint]:
        rows = self._select(
            "SELECT seq, issued_at, jws FROM audit_checkpoints WHERE seq > ? ORDER BY seq",
            (after,),
        )
        return [StoredCheckpoint(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def _record(row: Any) -> AuditRecord:
    return AuditRecord(**dict(zip(_FIELDS, row, strict=True)))
