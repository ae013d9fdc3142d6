"""The PostgreSQL catalog's lease signals: NOTIFY sent by the catalog, heard by the
listener, which outlives its connection and stops when closed."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.catalog.postgres import PostgresCatalog
from gateway.catalog.postgres_notify import CHANNEL, PostgresLeaseSignals
from tests.postgres import PostgresServer, start_postgres

Heard = queue.Queue[tuple[str, str] | tuple[str, str, int | None]]


def requested(heard: Heard) -> Callable[[str, int | None], None]:
    """The release-request callback: what it heard, with the token it names."""
    return lambda upload_id, token: heard.put(("requested", upload_id, token))


@pytest.fixture
def cat(dsn: str) -> Iterator[PostgresCatalog]:
    catalog = PostgresCatalog(dsn)
    yield catalog
    catalog.close()


@pytest.fixture
def heard() -> Heard:
    return queue.Queue()


@pytest.fixture
def signals(dsn: str, heard: Heard) -> Iterator[PostgresLeaseSignals]:
    listener = PostgresLeaseSignals(dsn, retry=0.05, max_retry=0.2)
    listener.start(
        requested(heard),
        lambda upload_id: heard.put(("released", upload_id)),
    )
    assert listener.listening.wait(10)
    yield listener
    listener.close()


def _send(dsn: str, payload: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def test_a_notify_reaches_its_callback(
    signals: PostgresLeaseSignals, dsn: str, heard: Heard
) -> None:
    _send(dsn, "zignored")  # a kind this version does not know
    _send(dsn, "r17 u1")
    _send(dsn, "fu2")
    _send(dsn, "ru3")  # an older gateway's request names no token: any holder
    assert heard.get(timeout=5) == ("requested", "u1", 17)
    assert heard.get(timeout=5) == ("released", "u2")
    assert heard.get(timeout=5) == ("requested", "u3", None)
    assert heard.empty()


def test_the_catalog_signals_a_request_once_and_a_release_only_when_asked(
    signals: PostgresLeaseSignals, cat: PostgresCatalog, heard: Heard
) -> None:
    now = time.time()
    quiet = cat.acquire_lease("u0", "a", 30.0, now)
    assert quiet is not None
    cat.release_lease(quiet)  # nobody asked: no signal
    lease = cat.acquire_lease("u1", "a", 30.0, now)
    assert lease is not None
    assert cat.acquire_lease("u1", "b", 30.0, now) is None
    assert cat.acquire_lease("u1", "b", 30.0, now) is None  # asked already: no second signal
    assert heard.get(timeout=5) == ("requested", "u1", lease.token)  # the holder asked
    cat.release_lease(lease)
    assert heard.get(timeout=5) == ("released", "u1")
    time.sleep(0.2)
    assert heard.empty()


def test_the_listener_survives_its_connection_being_terminated(
    signals: PostgresLeaseSignals, dsn: str, heard: Heard
) -> None:
    first = signals.backend_pid
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()
    assert row == (True,)
    deadline = time.monotonic() + 10
    while signals.backend_pid == first or not signals.listening.is_set():
        assert time.monotonic() < deadline, "the listener did not reconnect"
        time.sleep(0.02)
    _send(dsn, "r3 u3")
    assert heard.get(timeout=5) == ("requested", "u3", 3)


def test_close_stops_the_thread_at_once(dsn: str) -> None:
    listener = PostgresLeaseSignals(dsn)
    listener.start(lambda _, __: None, lambda _: None)
    assert listener.listening.wait(10)
    before = {t.name for t in threading.enumerate()}
    assert "lease-signals" in before
    started = time.monotonic()
    listener.close()
    assert time.monotonic() - started < 1.0
    assert "lease-signals" not in {t.name for t in threading.enumerate()}


def test_a_listener_without_its_database_retries_and_still_closes(
    postgres: PostgresServer,
) -> None:
    """While the database is down (here: it does not exist) the listener keeps trying
    quietly; polling does the work meanwhile."""
    listener = PostgresLeaseSignals(postgres.dsn("no_such_database"), retry=0.01, max_retry=0.05)
    listener.start(lambda _, __: None, lambda _: None)
    time.sleep(0.3)
    assert not listener.listening.is_set()
    started = time.monotonic()
    listener.close()
    assert time.monotonic() - started < 1.0
    assert "lease-signals" not in {t.name for t in threading.enumerate()}


def _restart(server: PostgresServer) -> None:
    """Stop the server ("fast" shutdown, every connection cut) and start it again on the
    same data and port, as its owner."""
    process = server.process
    command = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    process.send_signal(signal.SIGINT)
    process.wait(timeout=20)
    owner = os.stat(server.root / "data")
    root = os.geteuid() == 0  # then switch to the data's owner, as start_postgres did
    server.process = subprocess.Popen(  # stopped by PID, by the fixture
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=server.root,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
        user=owner.st_uid if root else None,
        group=owner.st_gid if root else None,
        extra_groups=[] if root else None,
    )


def test_the_listener_outlives_a_restart_of_postgresql(heard: Heard) -> None:
    """A server of its own: restarting the session's would disturb the other tests."""
    server = start_postgres()
    listener = PostgresLeaseSignals(server.dsn(), retry=0.05, max_retry=0.2)
    try:
        listener.start(requested(heard), lambda _: None)
        assert listener.listening.wait(10)
        first = listener.backend_pid
        _restart(server)
        deadline = time.monotonic() + 30
        while True:
            try:
                _send(server.dsn(), "ru1")
            except psycopg.OperationalError:
                pass  # not up yet
            else:
                if listener.listening.is_set():
                    try:
                        assert heard.get(timeout=0.5)[:2] == ("requested", "u1")
                        assert listener.backend_pid != first
                        break
                    except queue.Empty:
                        pass  # sent before the listener was back
            assert time.monotonic() < deadline, "the listener did not come back"
            time.sleep(0.05)
    finally:
        listener.close()
        server.stop()
    assert "lease-signals" not in {t.name for t in threading.enumerate()}
