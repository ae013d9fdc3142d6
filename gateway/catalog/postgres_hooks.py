"""The PostgreSQL catalog's hooks outbox: rows claimed with FOR UPDATE SKIP LOCKED and a
claim lease, so several gateways never deliver the same row at once."""

from __future__ import annotations

from gateway.catalog.base import HookDelivery, HookEvent
from gateway.catalog.postgres_db import Cursor, PostgresDatabase
from gateway.catalog.sqlite_hooks import COLUMNS, delivery_from, event_rows

_INSERT_EVENT = (
    "INSERT INTO hook_outbox (event_id, target, type, upload_id, body, created_at, "
    "next_attempt_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (event_id, target) DO NOTHING"
)


def add_event(cur: Cursor, event: HookEvent | None) -> None:
    """Put `event` in the outbox, in the caller's transaction."""
    if event is not None and event.targets:
        cur.executemany(_INSERT_EVENT, event_rows(event))


class PostgresHookOutbox(PostgresDatabase):
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

    def hook_delivered(self, event_id: str, target: str) -> None:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM hook_outbox WHERE event_id = %s AND target = %s", (event_id, target)
            )

    def hook_failed(
        self,
        event_id: str,
        target: str,
        holder: str,
        *,
        next_attempt_at: float,
        error: str,
        dead: bool,
    ) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE hook_outbox SET attempts = attempts + 1, next_attempt_at = %s, "
                "last_error = %s, dead = %s, claimed_by = NULL, claimed_until = NULL "
                "WHERE event_id = %s AND target = %s AND claimed_by = %s",
                (next_attempt_at, error, dead, event_id, target, holder),
            )
            return cur.rowcount == 1

    def hook_deliveries(
        self,
        *,
        dead: bool | None = None,
        after: tuple[float, str, str] | None = None,
        limit: int = 100,
    ) -> list[HookDelivery]:
        where: list[str] = ["TRUE"]
        params: list[object] = []
        if dead is not None:
            where.append("dead = %s")
            params.append(dead)
        if after is not None:
            where.append("(created_at, event_id, target) > (%s, %s, %s)")
            params.extend(after)
        rows = self._query(
            f"SELECT {COLUMNS} FROM hook_outbox WHERE {' AND '.join(where)} "
            "ORDER BY created_at, event_id, target LIMIT %s",
            (*params, limit),
        )
        return [delivery_from(r) for r in rows]

    def retry_hook_deliveries(self, now: float, event_id: str | None = None) -> int:
        with self._tx() as cur:
            cur.execute(
                "UPDATE hook_outbox SET dead = FALSE, attempts = 0, next_attempt_at = %s, "
                "claimed_by = NULL, claimed_until = NULL "
                "WHERE dead AND (%s::text IS NULL OR event_id = %s)",
                (now, event_id, event_id),
            )
            return cur.rowcount

    def hook_outbox_depth(self) -> tuple[int, int]:
        rows = self._query(
            "SELECT COUNT(*) FILTER (WHERE NOT dead), COUNT(*) FILTER (WHERE dead) FROM hook_outbox"
        )
        return int(rows[0][0]), int(rows[0][1])
