"""The hooks' outbox in the catalog, what both catalogs run as it is (`PortableSQL`):
adding an event's rows (in the transaction of the change it reports), marking
deliveries and failures, listing and retrying. Claiming rows for delivery is each
catalog's own (sqlite_hooks.py, postgres_hooks.py)."""

from __future__ import annotations

from typing import Any

from gateway.catalog.base import HookDelivery, HookEvent
from gateway.catalog.portable import Cursor, PortableSQL

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


def _event_rows(event: HookEvent) -> list[tuple[object, ...]]:
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


_INSERT_EVENT = (
    "INSERT INTO hook_outbox (event_id, target, type, upload_id, body, created_at, "
    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, target) DO NOTHING"
)


class HookOutboxSQL(PortableSQL):
    """`HookCatalog` but for claiming; mixed into both catalogs."""

    def _add_event(self, cur: Cursor, event: HookEvent | None) -> None:
        """Put `event` in the outbox, in the caller's transaction."""
        if event is not None and event.targets:
            cur.executemany(self._sql(_INSERT_EVENT), _event_rows(event))

    def hook_delivered(self, event_id: str, target: str) -> None:
        self._change(
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
        marked = self._change(
            "UPDATE hook_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
            "last_error = ?, dead = ?, claimed_by = NULL, claimed_until = NULL "
            "WHERE event_id = ? AND target = ? AND claimed_by = ?",
            (next_attempt_at, error, dead, event_id, target, holder),
        )
        return marked == 1

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
        rows = self._select(
            f"SELECT {COLUMNS} FROM hook_outbox WHERE {' AND '.join(where)} "
            "ORDER BY created_at, event_id, target LIMIT ?",
            (*params, limit),
        )
        return [delivery_from(r) for r in rows]

    def retry_hook_deliveries(self, now: float, event_id: str | None = None) -> int:
        return self._change(
            "UPDATE hook_outbox SET dead = FALSE, attempts = 0, next_attempt_at = ?, "
            "claimed_by = NULL, claimed_until = NULL "
            "WHERE dead AND (CAST(? AS TEXT) IS NULL OR event_id = ?)",
            (now, event_id, event_id),
        )

    def hook_outbox_depth(self) -> tuple[int, int]:
        rows = self._query(
            "SELECT COALESCE(SUM(CASE WHEN dead THEN 0 ELSE 1 END), 0), "
            "COALESCE(SUM(CASE WHEN dead THEN 1 ELSE 0 END), 0) FROM hook_outbox"
        )
        return int(rows[0][0]), int(rows[0][1])
