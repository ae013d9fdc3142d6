"""What the SQL of both catalogs needs from its database: `PortableSQL`.

Some parts of the catalog (key rotation, the audit log) run the same statements on
SQLite and PostgreSQL. They are written once, with `?` marking parameters, as mixins of
`PortableSQL`; each catalog provides `_query` (one read) and `_tx` (one write
transaction) and says how its driver marks a parameter (`PARAM`).
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

    def _sql(self, statement: str) -> str:
        """`statement`, written with ?, in the driver's marks."""
        return statement if self.PARAM == "?" else statement.replace("?", self.PARAM)
