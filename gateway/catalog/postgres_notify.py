"""Lease signals between gateways sharing a PostgreSQL catalog, by LISTEN/NOTIFY.

The transaction that flags a release request, and the one that frees an upload someone
asked for, send `pg_notify(CHANNEL, payload)` (`notify`); PostgreSQL delivers it at
commit to every connection of the database listening on the channel. A holder
elsewhere then stops at once and a waiter retries at once, instead of at their next
poll. Signals are hints: one sent while a listener reconnects is lost, and the polling
that every holder and waiter keeps doing catches up.

Payloads are a kind letter and an upload id, never more; a release request names the
fencing token of the lease it asks to end first (`r<token> <upload id>`). It may be
heard late, after that holder let go and a newer request took the upload: only a
holder whose token is at most the one named stops. A request without a token (from
an older gateway during an upgrade) asks whichever holder there is.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from gateway.catalog.postgres_db import Cursor

log = logging.getLogger(__name__)

CHANNEL = "gateway_leases"
RELEASE_REQUESTED = "r"  # someone asked for the upload: its holder should let go
RELEASED = "f"  # the upload is free again: its waiters should try now

# The listener's connection sits idle for hours: TCP keepalives find a vanished server
# (no RST) within about a minute. Used unless the connection string says otherwise.
_CONNECT_DEFAULTS = {
    "application_name": "gateway-lease-signals",
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def notify(cur: Cursor, kind: str, upload_id: str, token: int | None = None) -> None:
    """Signal `kind` for `upload_id` when `cur`'s transaction commits; a release request
    names the `token` of the lease it asks to end."""
    named = upload_id if token is None else f"{token} {upload_id}"
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, kind + named))


def _release_request(named: str) -> tuple[str, int | None]:
    """(upload id, token asked of) from a release request's payload after its kind."""
    token, sep, upload_id = named.partition(" ")
    if not sep:
        return named, None  # no token: an older gateway's request
    return upload_id, int(token)


class PostgresLeaseSignals:
    """`LeaseSignals` of a PostgreSQL database: one dedicated autocommit connection (not
    a pool's: it is held for good) listening on CHANNEL in a daemon thread. When the
    database goes away it reconnects, waiting `retry` seconds at first, twice as long
    after each failure up to `max_retry`."""

    def __init__(
        self,
        conninfo: str,
        *,
        channel: str = CHANNEL,
        retry: float = 0.1,
        max_retry: float = 5.0,
    ) -> None:
        given = conninfo_to_dict(conninfo)
        defaults = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}
        self._conninfo = make_conninfo(conninfo, **defaults)
        self._channel = channel
        self._retry = retry
        self._max_retry = max_retry
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._stopping = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None  # close() wakes _listen
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while LISTEN is in effect
        self.backend_pid: int | None = None  # the listening connection's server process

    def start(
        self,
        on_release_requested: Callable[[str, int | None], None],
        on_released: Callable[[str], None],
    ) -> None:
        if self._thread is not None:
            raise RuntimeError("lease signals already started")
        self._handlers = {
            RELEASE_REQUESTED: lambda named: on_release_requested(*_release_request(named)),
            RELEASED: on_released,
        }
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="lease-signals", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        thread, wake = self._thread, self._wake
        if thread is None or wake is None:
            return
        with contextlib.suppress(OSError):
            wake[1].send(b"\0")
        thread.join(timeout)
        if thread.is_alive():
            # Stuck in a blocking call to an unresponsive server; it is a daemon thread,
            # and it calls no handler after `_stopping`.
            log.warning("lease signals: the listener did not stop within %.0f s", timeout)
            return
        for end in wake:
            end.close()

    def _run(self) -> None:
        delay = self._retry
        lost = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self.backend_pid = conn.info.backend_pid
                    self.listening.set()
                    if lost:
                        log.info("lease signals: listening again")
                    lost, delay = False, self._retry
                    self._listen(conn)
            except (psycopg.Error, OSError) as exc:
                if not lost and not self._stopping.is_set():
                    # No message: it may name the server; the class says enough.
                    log.warning(
                        "lease signals: no connection to the catalog (%s); leases are "
                        "polled until it is back",
                        type(exc).__name__,
                    )
                lost = True
            except Exception:
                log.exception("lease signals: listener failed; starting over")
                lost = True
            finally:
                self.listening.clear()
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, self._max_retry)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        """Hand each notification to its handler until closed; raises psycopg.Error
        when the connection breaks."""
        assert self._wake is not None
        # A selector, not select(): a busy gateway's descriptors pass FD_SETSIZE.
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ, True)
            selector.register(self._wake[0], selectors.EVENT_READ, False)
            while not self._stopping.is_set():
                if not any(key.data for key, _ in selector.select()):
                    continue  # woken by close
                for note in conn.notifies(timeout=0):
                    self._dispatch(note.payload)

    def _dispatch(self, payload: str) -> None:
        handler = self._handlers.get(payload[:1])
        if handler is None or len(payload) < 2 or self._stopping.is_set():
            return  # a kind this version does not know
        try:
            handler(payload[1:])
        except Exception:
            log.exception("lease signals: a handler failed")
