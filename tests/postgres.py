"""A real PostgreSQL server (Debian's postgresql-15) in a temp dir, one per test session.

`initdb` makes a cluster owned by an unprivileged user (the `postgres` user when the
package created one, else `nobody`, when the tests run as root; the current user
otherwise); the server runs as that user, listens on 127.0.0.1 only, on a free port,
with its Unix socket in the temp dir, and trusts loopback connections. It is stopped by
its PID. Durability is off for speed (fsync, synchronous_commit, full_page_writes): a
crash of the test machine loses nothing anyone needs. Each test takes a fresh database
(`PostgresServer.create_database`).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

USER = "gateway"  # the cluster's superuser (a role name, not a system user)


def find_bin_dir() -> Path | None:
    """The directory with initdb and postgres: Debian's version directories first (they
    are not on PATH), newest first, then whatever PATH has."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("initdb")
    if found is not None:
        candidates.append(str(Path(found).resolve().parent))
    for candidate in candidates:
        if all((Path(candidate) / name).is_file() for name in ("initdb", "postgres")):
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The system user to own the cluster: None to stay who we are (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user to own a PostgreSQL cluster")


@dataclass
class PostgresServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    launch: Callable[[], subprocess.Popen[bytes]]  # starts the server on the same cluster

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def shut_down(self) -> None:
        """Stop the server (a "fast" shutdown: clients are disconnected), keep the cluster."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start_again(self) -> None:
        """Start the shut-down server again on the same cluster and port."""
        self.process = self.launch()
        _wait_ready(self)

    def stop(self) -> None:
        self.shut_down()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(
            "PostgreSQL is not installed (Debian: apt-get install postgresql-15)"
        )
    owner = _run_as()
    root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
    # Python switches user and groups between fork and exec: the PID is the server's.
    uid = gid = None
    groups: list[int] | None = None
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
        uid, gid, groups = owner.pw_uid, owner.pw_gid, []
    os.chmod(root, 0o700)
    data = root / "data"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(root)}
    try:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=root,
            env=env,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        port = _free_port()
        command = [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]

        def launch() -> subprocess.Popen[bytes]:
            with open(root / "server.log", "ab") as log:
                return subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=root,
                    env=env,
                    user=uid,
                    group=gid,
                    extra_groups=groups,
                )

        process = launch()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    server = PostgresServer(root=root, port=port, process=process, launch=launch)
    _wait_ready(server)
    return server


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            output = (server.root / "server.log").read_text(errors="replace")
            server.stop()
            raise RuntimeError(f"PostgreSQL exited at start:\n{output}")
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server; skipped where it is not installed, but under
    CI=true (scripts/test installs it) that is a failure."""
    try:
        server = start_postgres()
    except FileNotFoundError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(str(e))
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    """A fresh empty database on the session's server, dropped after the test."""
    database = postgres.create_database()
    yield postgres.dsn(database)
    postgres.drop_database(database)
