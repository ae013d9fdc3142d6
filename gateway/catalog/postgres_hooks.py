"""The PostgreSQL catalog's hooks outbox: the shared one (hooks_sql.py), rows claimed with
FOR UPDATE SKIP LOCKED and a claim lease, so several gateways never deliver the same row
at once."""

from __future__ import annotations

from gateway.catalog.base import HookDelivery
from gateway.catalog.hooks_sql import COLUMNS, HookOutboxSQL, delivery_from
from gateway.catalog.postgres_db import PostgresDatabase


class PostgresHookOutbox(PostgresDatabase, HookOutboxSQL):
    """`HookCatalog` on the catalog's pool; mixed into `PostgresCatalog`."""

    def claim_hook_deliveries(
        self, holder: str, now: float, claim_for: float, limit: int = 10
    ) -> list[HookDelivery]:
        # SKIP LOCKED: a row another gateway is claiming right now is passed over, not
        # waited for; the claim (claimed_until) keeps it from others once committed.
        with self._tx(durable=False) as cur:
            rows = cur.execute(
                f"UPDATE hook_outbox SET claimed_by = %s, claimed_until = %s "
                "WHERE (event_id, target) IN ("
                "SELECT event_id, target FROM hook_outbox WHERE NOT dead "
                "AND next_attempt_at <= %s AND (claimed_until IS NULL OR claimed_until <= %s) "
                "ORDER BY next_attempt_at, created_at LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"RETURNING {COLUMNS}",
                (holder, now + claim_for, now, now, limit),
            ).fetchall()
        found = [delivery_from(r) for r in rows]
        return sorted(found, key=lambda d: (d.next_attempt_at, d.created_at))
