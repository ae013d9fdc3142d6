"""The SQLite catalog's hooks outbox: the shared one (hooks_sql.py), rows claimed for
delivery under the database's one write lock."""

from __future__ import annotations

from gateway.catalog.base import HookDelivery
from gateway.catalog.hooks_sql import COLUMNS, HookOutboxSQL, delivery_from


class SQLiteHookOutbox(HookOutboxSQL):
    """`HookCatalog` on the catalog's own connection; mixed into `SQLiteCatalog`."""

    def claim_hook_deliveries(
        self, holder: str, now: float, claim_for: float, limit: int = 10
    ) -> list[HookDelivery]:
        due = (
            "FROM hook_outbox WHERE NOT dead AND next_attempt_at <= ? "
            "AND (claimed_until IS NULL OR claimed_until <= ?)"
        )
        # A read first: an idle outbox (the common case) costs no write lock each poll.
        if not self._query(f"SELECT 1 {due} LIMIT 1", (now, now)):
            return []
        # BEGIN IMMEDIATE: the write lock is taken before the rows are chosen, so two
        # processes never claim the same row.
        with self._tx(durable=False) as cur:
            rows = cur.execute(
                f"SELECT {COLUMNS} {due} ORDER BY next_attempt_at, created_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            cur.executemany(
                "UPDATE hook_outbox SET claimed_by = ?, claimed_until = ? "
                "WHERE event_id = ? AND target = ?",
                [(holder, now + claim_for, r[0], r[1]) for r in rows],
            )
        return [delivery_from(r) for r in rows]
