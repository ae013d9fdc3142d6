"""The PostgreSQL catalog's database: a connection pool, the schema, short transactions."""

from __future__ import annotations

import logging
import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.catalog.base import CatalogUnavailable
from gateway.catalog.postgres_schema import migrate

Cursor = psycopg.Cursor[Any]
Connection = psycopg.Connection[Any]

log = logging.getLogger("gateway.catalog")

# How long a call waits for a connection of the pool (all busy, or the database down)
# before it answers CatalogUnavailable (503, retry later).
CONNECTION_WAIT = 5.0


class PostgresDatabase:
    """The pool the PostgreSQL catalog's parts share; safe to share between threads.

    With `migrate`, the schema is created or upgraded on opening; without, a schema
    older than this gateway's raises SchemaMismatch. A database that cannot be reached
    (at a call, not at opening) raises CatalogUnavailable; connections it broke are
    dropped, and the pool opens new ones once the database is back.
    """

    PARAM = "%s"  # psycopg's parameter mark (for the shared SQL: catalog/portable.py)

    def __init__(
        self, conninfo: str, *, min_size: int = 1, max_size: int = 4, migrate: bool = True
    ) -> None:
        self._conninfo = conninfo
        self._pool = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            open=False,
            name="catalog",
            timeout=CONNECTION_WAIT,
            # Autocommit: a lone read is one round trip; `_tx` opens real transactions.
            kwargs={"autocommit": True},
        )
        try:
            self._pool.open(wait=True, timeout=30.0)
        except PoolTimeout as exc:
            self._pool.close()
            raise CatalogUnavailable(
                "cannot connect to the catalog's database (GATEWAY_CATALOG) within 30 s"
            ) from exc
        try:
            with self._pool.connection() as conn:
                self.schema_change = _migrate(conn, migrate)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A live connection of the pool; CatalogUnavailable if the database is
        unreachable or the connection breaks under the call."""
        conn = self._live_connection()
        try:
            yield conn
        except psycopg.OperationalError as exc:
            broken = conn.broken
            self._pool.putconn(conn)
            if not broken:
                raise  # an error of the statement (a deadlock, a cancel), not the link
            log.warning("catalog connection lost: %s", type(exc).__name__)
            # Others opened before the database went away are broken too: drop them
            # now rather than fail one request each.
            self._pool.check()
            raise CatalogUnavailable("the catalog's database connection was lost") from exc
        except BaseException:
            self._pool.putconn(conn)
            raise
        else:
            self._pool.putconn(conn)

    def _live_connection(self) -> Connection:
        """A connection of the pool the server has not closed. One it closed while idle
        (a restart of the database) is dropped with every other such one, so the first
        calls after the database comes back do not fail."""
        conn = self._getconn()
        if _closed_while_idle(conn):
            conn.close()  # the pool drops a closed connection
            self._pool.putconn(conn)
            self._pool.check()
            conn = self._getconn()
        return conn

    def _getconn(self) -> Connection:
        try:
            return self._pool.getconn()
        except PoolTimeout as exc:
            raise CatalogUnavailable("no catalog connection could be had in time") from exc

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[Cursor]:
        """One transaction; any exception rolls everything back.

        `durable=False` lets this commit return before its WAL is flushed (lease
        bookkeeping: a lease lost to a crash of the database is harmless).
        """
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            if not durable:
                cur.execute("SET LOCAL synchronous_commit = off")
            yield cur

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self._pool.close()


def _closed_while_idle(conn: Connection) -> bool:
    """Whether the server closed an idle connection: it then has something to read (its
    end of stream, or an error) where a live idle one has nothing. A syscall, no round
    trip."""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _migrate(conn: Connection, apply: bool) -> tuple[int, int]:
    before, after = migrate(conn, apply=apply)
    if before != after:
        log.warning("catalog schema migrated from version %d to %d", before, after)
    return before, after
