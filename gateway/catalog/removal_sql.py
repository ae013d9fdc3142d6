"""Removal and legal holds in the catalog, one implementation for both catalogs
(`PortableSQL`): terminating, retiring and forgetting an upload, what is due for
removal, the deletion records and receipts, holds. Each catalog keeps how it locks an
upload (`_lock_upload`), `shred` and `finals_using`; SQLite also remembers a terminated
upload's keys for its `shred` (`_terminate_rows`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.catalog.base import Deletion, Hold, StoredReceipt, UploadHeld, UploadState
from gateway.catalog.portable import Cursor, PortableSQL


class RemovalSQL(PortableSQL):
    """`RemovalCatalog` but for `shred` and `finals_using`, and `HoldCatalog`; mixed
    into both catalogs."""

    def _lock_upload(self, cur: Cursor, upload_id: str) -> bool:
        """Keep others from changing the upload until this transaction ends; whether it
        is held. Here a read only: the transaction's write lock (SQLite's BEGIN
        IMMEDIATE) does the rest. PostgreSQL locks rows, in the order its commits do."""
        row = cur.execute(self._sql("SELECT held FROM uploads WHERE id = ?"), (upload_id,))
        held = row.fetchone()
        return held is not None and bool(held[0])

    def _refuse_held(self, cur: Cursor, upload_id: str) -> None:
        if self._lock_upload(cur, upload_id):
            raise UploadHeld(upload_id)

    # How a deletion's deleted_by is stored: JSON text here, jsonb in PostgreSQL
    # (which overrides both).

    def _json_value(self, value: Mapping[str, Any]) -> object:
        return json.dumps(dict(value), sort_keys=True)

    def _json_from(self, value: Any) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(value)
        return loaded

    def _record_deletion(self, cur: Cursor, upload_id: str, deletion: Deletion) -> None:
        """Keep what the upload's receipt will say; the first request recorded is the
        one the receipt names."""
        cur.execute(
            self._sql(
                "INSERT INTO deletions (upload_id, requested_at, reason, deleted_by, "
                "manifest_sha256, dek_id, kek_id, kek_version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id) DO NOTHING"
            ),
            (
                upload_id,
                deletion.requested_at,
                deletion.reason,
                self._json_value(deletion.deleted_by),
                deletion.manifest_sha256,
                deletion.dek_id,
                deletion.kek_id,
                deletion.kek_version,
            ),
        )

    def _terminate_rows(self, cur: Cursor, upload_id: str) -> None:
        """Mark the upload terminated and delete its key, grants and lease: dropping the
        lease makes any in-flight writer's next commit fail at once."""
        cur.execute(
            self._sql("UPDATE uploads SET state = ? WHERE id = ?"),
            (str(UploadState.TERMINATED), upload_id),
        )
        for table in ("wrapped_keys", "grants", "leases"):
            cur.execute(self._sql(f"DELETE FROM {table} WHERE upload_id = ?"), (upload_id,))

    def terminate(self, upload_id: str, deletion: Deletion | None = None) -> None:
        with self._tx() as cur:
            self._refuse_held(cur, upload_id)
            if deletion is not None:
                self._record_deletion(cur, upload_id, deletion)
            self._terminate_rows(cur, upload_id)

    def retire(self, upload_id: str) -> None:
        with self._tx() as cur:
            self._refuse_held(cur, upload_id)
            cur.execute(
                self._sql("UPDATE uploads SET state = ? WHERE id = ?"),
                (str(UploadState.TERMINATED), upload_id),
            )
            cur.execute(self._sql("DELETE FROM grants WHERE upload_id = ?"), (upload_id,))

    def forget(self, upload_id: str, receipt: StoredReceipt | None = None) -> None:
        with self._tx() as cur:
            self._lock_upload(cur, upload_id)
            tables = ("records", "tail_pieces", "wrapped_keys", "leases", "deletions", "grants")
            for table in tables:
                cur.execute(self._sql(f"DELETE FROM {table} WHERE upload_id = ?"), (upload_id,))
            cur.execute(self._sql("DELETE FROM uploads WHERE id = ?"), (upload_id,))
            if receipt is not None:
                cur.execute(
                    self._sql(
                        "INSERT INTO deletion_receipts (upload_id, issued_at, jws) "
                        "VALUES (?, ?, ?) ON CONFLICT (upload_id) DO NOTHING"
                    ),
                    (receipt.upload_id, receipt.issued_at, receipt.jws),
                )

    def removals_pending(self, limit: int = 100) -> list[str]:
        # Terminated without a key: a retired partial keeps its key until it is removed.
        rows = self._select(
            "SELECT id FROM uploads WHERE state = ? AND NOT EXISTS "
            "(SELECT 1 FROM wrapped_keys WHERE wrapped_keys.upload_id = uploads.id) LIMIT ?",
            (str(UploadState.TERMINATED), limit),
        )
        return [str(r[0]) for r in rows]

    def retention_due(self, completed_before: float, limit: int = 100) -> list[str]:
        rows = self._select(
            "SELECT id FROM uploads WHERE state = ? AND completed_at IS NOT NULL "
            "AND completed_at <= ? AND NOT held ORDER BY completed_at, id LIMIT ?",
            (str(UploadState.COMPLETE), completed_before, limit),
        )
        return [str(r[0]) for r in rows]

    def deletion(self, upload_id: str) -> Deletion | None:
        rows = self._select(
            "SELECT requested_at, reason, deleted_by, manifest_sha256, dek_id, kek_id, "
            "kek_version FROM deletions WHERE upload_id = ?",
            (upload_id,),
        )
        if not rows:
            return None
        at, reason, by, digest, dek_id, kek_id, kek_version = rows[0]
        return Deletion(
            upload_id=upload_id,
            requested_at=float(at),
            reason=str(reason),
            deleted_by=self._json_from(by),
            manifest_sha256=digest,
            dek_id=bytes(dek_id),
            kek_id=kek_id,
            kek_version=kek_version,
        )

    def receipt(self, upload_id: str) -> StoredReceipt | None:
        rows = self._select(
            "SELECT issued_at, jws FROM deletion_receipts WHERE upload_id = ?", (upload_id,)
        )
        if not rows:
            return None
        return StoredReceipt(upload_id=upload_id, issued_at=float(rows[0][0]), jws=str(rows[0][1]))

    # legal holds

    def place_hold(self, upload_id: str, hold: Hold) -> bool:
        placed = self._change(
            "UPDATE uploads SET held = TRUE, hold_case = ?, hold_by = ?, hold_at = ? "
            "WHERE id = ? AND state <> ?",
            (hold.case, hold.placed_by, hold.placed_at, upload_id, str(UploadState.TERMINATED)),
        )
        return placed == 1

    def release_hold(self, upload_id: str) -> bool:
        released = self._change(
            "UPDATE uploads SET held = FALSE, hold_case = NULL, hold_by = NULL, "
            "hold_at = NULL WHERE id = ? AND held",
            (upload_id,),
        )
        return released == 1

    def hold(self, upload_id: str) -> Hold | None:
        rows = self._select(
            "SELECT hold_case, hold_by, hold_at FROM uploads WHERE id = ? AND held", (upload_id,)
        )
        if not rows:
            return None
        case, by, at = rows[0]
        return Hold(case=case, placed_by=str(by), placed_at=float(at))
