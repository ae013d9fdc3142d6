"""The SQLite catalog's hooks outbox: events written with their completion, claimed for
delivery under the database's one write lock."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from gateway.catalog.base import HookDelivery, HookEvent

COLUMNS = (
    "event_id, target, type, upload_id, body, created_at, attempts, next_attempt_at, "
    "last_error, dead"
)


def delivery_from(row: Any) -> HookDelivery:
    return HookDelivery(
        event_id=str(row[0]),
        target=str(row[1]),
        type=str(row[2]),
        upload_id=str(row[3]),
        body=str(row[4]),
        created_at=float(row[5]),
        attempts=int(row[6]),
        next_attempt_at=float(row[7]),
        last_error=None if row[8] is None else str(row[8]),
        dead=bool(row[9]),
    )


def event_rows(event: HookEvent) -> list[tuple[object, ...]]:
    """The outbox rows of `event`: one per target, due at once."""
    return [
        (
            event.id,
            target,
            event.type,
            event.upload_id,
            event.body,
            event.created_at,
            event.created_at,
        )
        for target in event.targets
    ]


INSERT_EVENT = (
    "INSERT INTO hook_outbox (event_id, target, type, upload_id, body, created_at, "
    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, target) DO NOTHING"
)


def add_event(cur: sqlite3.Cursor, event: HookEvent | None) -> None:
    """Put `event` in the outbox, in the caller's transaction."""
    if event is not None:
        cur.executemany(INSERT_EVENT, event_rows(event))


class SQLiteHookOutbox:
    """`HookCatalog` on the catalog's own connection; mixed into `SQLiteCatalog`."""

    def _tx(self, *, durable: bool = True) -> AbstractContextManager[sqlite3.Cursor]:
        raise NotImplementedError

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        raise NotImplementedError

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

    def hook_delivered(self, event_id: str, target: str) -> None:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM hook_outbox WHERE event_id = ? AND target = ?", (event_id, target)
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
                "UPDATE hook_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
                "last_error = ?, dead = ?, claimed_by = NULL, claimed_until = NULL "
                "WHERE event_id = ? AND target = ? AND claimed_by = ?",
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
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        if dead is not None:
            where.append("dead = ?")
            params.append(dead)
        if after is not None:
            where.append("(created_at, event_id, target) > (?, ?, ?)")
            params.extend(after)
        rows = self._query(
            f"SELECT {COLUMNS} FROM hook_outbox WHERE {' AND '.join(where)} "
            "ORDER BY created_at, event_id, target LIMIT ?",
            (*params, limit),
        )
        return [delivery_from(r) for r in rows]

    def retry_hook_deliveries(self, now: float, event_id: str | None = None) -> int:
        with self._tx() as cur:
            cur.execute(
                "UPDATE hook_outbox SET dead = FALSE, attempts = 0, next_attempt_at = ?, "
                "claimed_by = NULL, claimed_until = NULL "
                "WHERE dead AND (? IS NULL OR event_id = ?)",
                (now, event_id, event_id),
            )
            return cur.rowcount

    def hook_outbox_depth(self) -> tuple[int, int]:
        rows = self._query(
            "SELECT COALESCE(SUM(CASE WHEN dead THEN 0 ELSE 1 END), 0), "
            "COALESCE(SUM(CASE WHEN dead THEN 1 ELSE 0 END), 0) FROM hook_outbox"
        )
        return int(rows[0][0]), int(rows[0][1])
