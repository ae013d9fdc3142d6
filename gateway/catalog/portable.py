"""What the SQL of both catalogs needs from its database: `PortableSQL`.

Most of the catalog runs the same statements on SQLite and PostgreSQL. They are written
once, with `?` marking parameters, as mixins of `PortableSQL`: uploads_sql.py (uploads,
records, tail pieces, keys), removal_sql.py (removal, deletion records, receipts,
holds), access_sql.py (lease checks, grants, API keys), keys_sql.py (key rotation and
checks), audit_sql.py (the audit log), hooks_sql.py (the hooks' outbox). Each catalog
provides `_query` (one read) and `_tx` (one write transaction), says how its driver
marks a parameter (`PARAM`), and overrides the few hooks where the databases differ
(locks, column types).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol


class Cursor(Protocol):
    """What sqlite3's and psycopg's cursors both offer."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: Any, params: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: Any, params: Any, /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class PortableSQL:
    PARAM: ClassVar[str] = "?"  # how the driver marks a parameter: sqlite3 ?, psycopg %s

    if TYPE_CHECKING:

        def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]: ...

        def _tx(self, *, durable: bool = True) -> AbstractContextManager[Cursor]: ...

    def check(self) -> None:
        """One round trip to the database (the health check)."""
        rows = self._query("SELECT 1")
        if rows != [(1,)]:
            raise RuntimeError("catalog check query returned an unexpected result")

    def _sql(self, statement: str) -> str:
        """`statement`, written with ?, in the driver's marks."""
        return statement if self.PARAM == "?" else statement.replace("?", self.PARAM)

    def _select(self, statement: str, params: tuple[object, ...] = ()) -> list[Any]:
        """The rows `statement` (written with ?) reads."""
        return self._query(self._sql(statement), params)

    def _change(self, statement: str, params: tuple[object, ...], *, durable: bool = True) -> int:
        """Run `statement` (written with ?) in a transaction of its own; how many rows
        it changed."""
        with self._tx(durable=durable) as cur:
            return cur.execute(self._sql(statement), params).rowcount
