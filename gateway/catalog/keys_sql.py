"""Key rotation and key checks, one implementation for both catalogs (`PortableSQL`)."""

from __future__ import annotations

from gateway.catalog.base import StoredKey
from gateway.catalog.portable import PortableSQL
from gateway.keys.base import WrappedKey


class KeyRotationSQL(PortableSQL):
    """`KeyRotationCatalog` and `KeyCheckCatalog`; mixed into both catalogs."""

    def wrapped_key_counts(self) -> dict[tuple[str, int], int]:
        rows = self._query(
            "SELECT kek_id, kek_version, COUNT(*) FROM wrapped_keys GROUP BY kek_id, kek_version"
        )
        return {(str(r[0]), int(r[1])): int(r[2]) for r in rows}

    def wrapped_keys_not_under(
        self, kek_id: str, kek_version: int, after: bytes = b"", limit: int = 100
    ) -> list[StoredKey]:
        rows = self._select(
            "SELECT dek_id, upload_id, kek_id, kek_version, blob FROM wrapped_keys "
            "WHERE dek_id > ? AND NOT (kek_id = ? AND kek_version = ?) "
            "ORDER BY dek_id LIMIT ?",
            (after, kek_id, kek_version, limit),
        )
        return [
            StoredKey(bytes(r[0]), str(r[1]), WrappedKey(str(r[2]), int(r[3]), bytes(r[4])))
            for r in rows
        ]

    def replace_wrapped_key(self, dek_id: bytes, old: WrappedKey, new: WrappedKey) -> bool:
        changed = (new.kek_id, new.kek_version, new.blob)
        expected = (dek_id, old.kek_id, old.kek_version, old.blob)
        replaced = self._change(
            "UPDATE wrapped_keys SET kek_id = ?, kek_version = ?, blob = ? "
            "WHERE dek_id = ? AND kek_id = ? AND kek_version = ? AND blob = ?",
            (*changed, *expected),
        )
        return replaced == 1

    def key_checks(self) -> list[tuple[bytes, WrappedKey]]:
        rows = self._query("SELECT dek_id, kek_id, kek_version, blob FROM key_checks")
        return [(bytes(r[0]), WrappedKey(str(r[1]), int(r[2]), bytes(r[3]))) for r in rows]

    def add_key_check(self, check_id: bytes, wrapped: WrappedKey) -> bool:
        added = self._change(
            "INSERT INTO key_checks (kek_id, kek_version, dek_id, blob) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (wrapped.kek_id, wrapped.kek_version, check_id, wrapped.blob),
        )
        return added == 1
