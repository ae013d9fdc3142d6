"""The PostgreSQL catalog's database: a connection pool, the schema, short transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from gateway.catalog.postgres_schema import migrate

Cursor = psycopg.Cursor[Any]


class PostgresDatabase:
    """The pool the PostgreSQL catalog's parts share; safe to share between threads.
    The schema is created on first use."""

    def __init__(self, conninfo: str, *, min_size: int = 1, max_size: int = 4) -> None:
        self._conninfo = conninfo
        self._pool = ConnectionPool(
            conninfo, min_size=min_size, max_size=max_size, open=False, name="catalog"
        )
        self._pool.open(wait=True, timeout=30.0)
        try:
            with self._pool.connection() as conn:
                migrate(conn)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[Cursor]:
        """One transaction; any exception rolls everything back.

        `durable=False` lets this commit return before its WAL is flushed (lease
        bookkeeping: a lease lost to a crash of the database is harmless).
        """
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if not durable:
                cur.execute("SET LOCAL synchronous_commit = off")
            yield cur

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def check(self) -> None:
        rows = self._query("SELECT 1")
        if rows != [(1,)]:
            raise RuntimeError("catalog check query returned an unexpected result")

    def close(self) -> None:
        self._pool.close()
