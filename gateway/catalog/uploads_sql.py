"""Uploads in the catalog, one implementation for both catalogs (`PortableSQL`): an
upload's row, its records, tail pieces and wrapped key, the rows a commit writes, the
owner's open uploads and the expired ones. Each catalog checks a commit's lease and
offset itself, under its own locks (sqlite.py, postgres.py)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from gateway.catalog.base import (
    HookEvent,
    Lease,
    LeaseLost,
    OffsetConflict,
    Progress,
    RecordRow,
    TailPiece,
    Upload,
    UploadState,
)
from gateway.catalog.portable import Cursor, PortableSQL
from gateway.keys.base import WrappedKey

# Column order follows the Upload dataclass; legacy metadata is a TEXT value of the
# metadata column (SQLite only), never a column of its own.
UPLOAD_FIELDS = tuple(f.name for f in fields(Upload) if f.name != "legacy_metadata")
# Two fields keep older column names: "offset" is an SQL word, and "parts" predates
# the name "partials" (a store's multipart parts are another thing).
_COLUMN_OF = {"offset": "upload_offset", "partials": "parts"}
UPLOAD_COLUMNS = ", ".join(_COLUMN_OF.get(n, n) for n in UPLOAD_FIELDS)


def check_lease(row: Any, lease: Lease) -> None:
    """LeaseLost unless the lease row (holder, token) is still `lease`'s. Expiry is the
    holder's own business; a takeover shows as a different token."""
    if row is None or row[0] != lease.holder or row[1] != lease.token:
        raise LeaseLost(lease.upload_id)


def check_offset(row: Any, upload_id: str, progress: Progress) -> None:
    """LeaseLost unless the upload row (upload_offset, state) is active: a terminated
    (or vanished) upload must never move forward again, least of all back to
    "complete". OffsetConflict unless it is at the offset the commit builds on."""
    if row is None or row[1] != UploadState.ACTIVE:
        raise LeaseLost(upload_id)
    if row[0] != progress.expected_offset:
        raise OffsetConflict(f"{upload_id}: offset is {row[0]}, not {progress.expected_offset}")


class UploadsSQL(PortableSQL):
    """`UploadCatalog` but for `commit`'s checks; mixed into both catalogs."""

    if TYPE_CHECKING:

        def _add_event(self, cur: Cursor, event: HookEvent | None) -> None: ...

    # How the ids of a final upload's partials are stored: JSON text here, a text[]
    # in PostgreSQL (which overrides both).

    def _parts_value(self, partials: tuple[str, ...]) -> object:
        return json.dumps(list(partials))

    def _parts_from(self, value: Any) -> tuple[str, ...]:
        return tuple(json.loads(value))

    def _upload_from(self, values: Any) -> Upload:
        row = dict(zip(UPLOAD_FIELDS, values, strict=True))
        row["partials"] = self._parts_from(row["partials"])
        row["state"] = UploadState(row["state"])
        row["held"] = bool(row["held"])  # SQLite hands booleans back as 0/1
        if isinstance(row["metadata"], str):  # a version 1 SQLite catalog's plain text
            row["legacy_metadata"], row["metadata"] = row["metadata"], None
        return Upload(**row)

    def _insert_key(self, cur: Cursor, dek_id: bytes, upload_id: str, wrapped: WrappedKey) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO wrapped_keys (dek_id, upload_id, kek_id, kek_version, blob) "
                "VALUES (?, ?, ?, ?, ?)"
            ),
            (dek_id, upload_id, wrapped.kek_id, wrapped.kek_version, wrapped.blob),
        )

    def create_upload(
        self, upload: Upload, wrapped: WrappedKey | None, event: HookEvent | None = None
    ) -> None:
        if upload.legacy_metadata is not None:
            raise ValueError("plain-text metadata is never written to the catalog")
        values = [getattr(upload, name) for name in UPLOAD_FIELDS]
        values[UPLOAD_FIELDS.index("partials")] = self._parts_value(upload.partials)
        values[UPLOAD_FIELDS.index("state")] = str(upload.state)
        marks = ", ".join("?" * len(values))
        with self._tx() as cur:
            cur.execute(
                self._sql(f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ({marks})"), values
            )
            if wrapped is not None:
                self._insert_key(cur, upload.dek_id, upload.id, wrapped)
            self._add_event(cur, event)

    def get_upload(self, upload_id: str) -> Upload | None:
        rows = self._select(f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?", (upload_id,))
        return self._upload_from(rows[0]) if rows else None

    def records(self, upload_id: str) -> list[RecordRow]:
        rows = self._select(
            "SELECT idx, plaintext_len, final, size, sha256, etag FROM records "
            "WHERE upload_id = ? ORDER BY idx",
            (upload_id,),
        )
        # SQLite hands booleans back as 0/1.
        return [RecordRow(r[0], r[1], bool(r[2]), r[3], r[4], r[5]) for r in rows]

    def tail_pieces(self, upload_id: str) -> list[TailPiece]:
        rows = self._select(
            "SELECT segment, piece, start, length FROM tail_pieces "
            "WHERE upload_id = ? ORDER BY segment, piece",
            (upload_id,),
        )
        return [TailPiece(*r) for r in rows]

    def wrapped_key(self, dek_id: bytes) -> WrappedKey | None:
        rows = self._select(
            "SELECT kek_id, kek_version, blob FROM wrapped_keys WHERE dek_id = ?", (dek_id,)
        )
        if not rows:
            return None
        kek_id, version, blob = rows[0]
        return WrappedKey(kek_id=kek_id, kek_version=version, blob=bytes(blob))

    def _write_progress(self, cur: Cursor, upload_id: str, progress: Progress) -> None:
        """What `commit` writes once it has checked the lease and the offset, in its
        transaction: the records, the tail pieces, the offset (and completion), the
        event."""
        uid = upload_id
        if progress.records:
            cur.executemany(
                self._sql(
                    "INSERT INTO records (upload_id, idx, plaintext_len, final, size, sha256, "
                    "etag) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id, idx) "
                    "DO UPDATE SET plaintext_len = excluded.plaintext_len, "
                    "final = excluded.final, size = excluded.size, sha256 = excluded.sha256, "
                    "etag = excluded.etag"
                ),
                [
                    (uid, r.index, r.plaintext_len, r.final, r.size, r.sha256, r.etag)
                    for r in progress.records
                ],
            )
        p = progress.add_piece
        if p is not None:
            cur.execute(
                self._sql(
                    "INSERT INTO tail_pieces (upload_id, segment, piece, start, length) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (upload_id, segment, piece) "
                    "DO UPDATE SET start = excluded.start, length = excluded.length"
                ),
                (uid, p.segment, p.piece, p.start, p.length),
            )
        if progress.drop_pieces:
            cur.executemany(
                self._sql(
                    "DELETE FROM tail_pieces WHERE upload_id = ? AND segment = ? AND piece = ?"
                ),
                [(uid, d.segment, d.piece) for d in progress.drop_pieces],
            )
        if progress.drop_pieces_below is not None:
            cur.execute(
                self._sql("DELETE FROM tail_pieces WHERE upload_id = ? AND segment < ?"),
                (uid, progress.drop_pieces_below),
            )
        # One statement: the state and completion time change only with complete_at.
        cur.execute(
            self._sql(
                "UPDATE uploads SET upload_offset = ?, "
                "expires_at = COALESCE(?, expires_at), checksum = COALESCE(?, checksum), "
                "state = CASE WHEN CAST(? AS DOUBLE PRECISION) IS NULL THEN state ELSE ? END, "
                "completed_at = COALESCE(?, completed_at) WHERE id = ?"
            ),
            (
                progress.offset,
                progress.expires_at,
                progress.checksum,
                progress.complete_at,
                str(UploadState.COMPLETE),
                progress.complete_at,
                uid,
            ),
        )
        self._add_event(cur, progress.event)

    def set_length(self, upload_id: str, length: int) -> None:
        self._change(
            "UPDATE uploads SET length = ? WHERE id = ? AND length IS NULL", (length, upload_id)
        )

    def open_uploads(self, owner: str, tenant: str) -> tuple[int, int]:
        rows = self._select(
            "SELECT COUNT(*), COALESCE(SUM(COALESCE(length, upload_offset)), 0) "
            "FROM uploads WHERE tenant = ? AND owner = ? AND state = ?",
            (tenant, owner, str(UploadState.ACTIVE)),
        )
        return int(rows[0][0]), int(rows[0][1])

    def expired(self, now: float, limit: int = 100) -> list[str]:
        rows = self._select(
            "SELECT id FROM uploads WHERE state = ? AND expires_at IS NOT NULL "
            "AND expires_at <= ? AND NOT held ORDER BY expires_at LIMIT ?",
            (str(UploadState.ACTIVE), now, limit),
        )
        return [str(r[0]) for r in rows]
