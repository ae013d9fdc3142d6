"""Shared pieces of the benchmarks: test files, the two servers, clients, /proc sampling.

Everything runs on 127.0.0.1 with free ports; every process started here is stopped
by its PID. Scratch lives in benchmarks/.work/ (git-ignored).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
NODE_DIR = WORK / "node"
FILES_DIR = WORK / "files"
RUNS_DIR = WORK / "runs"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1 << 20
GiB = 1 << 30
MB = 1_000_000  # throughput is reported in MB/s = 10^6 bytes per second

NPM_PACKAGES = ("@tus/server@2", "@tus/file-store@2", "tus-js-client@4")
CLK_TCK = os.sysconf("SC_CLK_TCK")
OCTET = "application/offset+octet-stream"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- test files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TestFile:
    path: Path
    size: int
    sha256: str


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _cached(path: Path, size: int) -> TestFile | None:
    digest_path = path.with_name(path.name + ".sha256")
    if path.is_file() and path.stat().st_size == size and digest_path.is_file():
        return TestFile(path, size, digest_path.read_text().strip())
    return None


def _write_file(path: Path, size: int, blocks: Iterator[bytes]) -> TestFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    h = hashlib.sha256()
    written = 0
    with open(tmp, "wb") as f:
        for block in blocks:
            block = block[: size - written]
            f.write(block)
            h.update(block)
            written += len(block)
            if written >= size:
                break
    os.replace(tmp, path)
    digest = h.hexdigest()
    path.with_name(path.name + ".sha256").write_text(digest + "\n")
    return TestFile(path, size, digest)


def random_file(size: int) -> TestFile:
    """A file of `size` random bytes, cached under benchmarks/.work/files/."""
    path = FILES_DIR / f"random-{size // MiB}MiB.bin"
    cached = _cached(path, size)
    if cached is not None:
        return cached
    log(f"making {path.name} ({size // MiB} MiB of random bytes)")

    def blocks() -> Iterator[bytes]:
        while True:
            yield os.urandom(8 * MiB)

    return _write_file(path, size, blocks())


def pattern_file(size: int) -> TestFile:
    """A large file made quickly: a random 64 MiB pattern repeated, every 1 MiB of each
    copy stamped with a counter, so no two MiB are the same (not compressible by any
    compressor whose window is below 64 MiB)."""
    path = FILES_DIR / f"pattern-{size // MiB}MiB.bin"
    cached = _cached(path, size)
    if cached is not None:
        return cached
    log(f"making {path.name} ({size // MiB} MiB, repeated random pattern + counter)")
    pattern = bytearray(os.urandom(64 * MiB))

    def blocks() -> Iterator[bytes]:
        copy = 0
        while True:
            block = bytearray(pattern)
            for i in range(0, len(block), MiB):
                block[i : i + 16] = (copy * 64 + i // MiB).to_bytes(16, "big")
            copy += 1
            yield bytes(block)

    return _write_file(path, size, blocks())


# -- /proc: CPU and memory of a process tree ------------------------------------------------


def _children(pid: int) -> list[int]:
    """Child processes of any thread of `pid` (/proc/PID/task/TID/children)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _stat_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime (waited-for children) of one process, seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime..cstime are fields 14..17.
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def tree_cpu(pid: int) -> float:
    return sum(_stat_cpu(p) for p in process_tree(pid))


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid: int) -> int:
    return sum(_status_kib(p, "VmRSS") for p in process_tree(pid))


def tree_hwm_kib(pid: int) -> int:
    return sum(_status_kib(p, "VmHWM") for p in process_tree(pid))


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (writing 5 to clear_refs), for every process in the tree."""
    ok = True
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


class Meter:
    """CPU seconds and peak RSS of a process tree over one measured interval.

    RSS is sampled every `interval` seconds (VmRSS summed over the tree); VmHWM is
    reset at the start (clear_refs) and read at the end as a second, exact figure.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss_kib = 0
        self.hwm_kib = 0
        self.hwm_reset = False
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_kib = max(self.peak_rss_kib, tree_rss_kib(self.pid))
            self._stop.wait(self.interval)
        self.peak_rss_kib = max(self.peak_rss_kib, tree_rss_kib(self.pid))

    def __enter__(self) -> Meter:
        self.hwm_reset = reset_hwm(self.pid)
        self._cpu0 = tree_cpu(self.pid)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.cpu_s = tree_cpu(self.pid) - self._cpu0
        self.hwm_kib = tree_hwm_kib(self.pid)

    def as_dict(self) -> dict[str, object]:
        return {
            "cpu_s": round(self.cpu_s, 3),
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "vmhwm_mib": round(self.hwm_kib / 1024, 1),
            "vmhwm_reset": self.hwm_reset,
        }


# -- HTTP helpers (stdlib only) -------------------------------------------------------------


def request(
    method: str, url: str, headers: dict[str, str], timeout: float = 60
) -> tuple[int, dict[str, str]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path or "/", headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


# -- the servers ---------------------------------------------------------------------------


class Server:
    name = ""
    label = ""
    proc: subprocess.Popen[bytes] | None = None
    port = 0
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    @property
    def headers(self) -> dict[str, str]:
        return {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def create(self, length: int) -> str:
        status, headers = request(
            "POST",
            self.endpoint,
            {**self.headers, "Tus-Resumable": "1.0.0", "Upload-Length": str(length)},
        )
        if status != 201:
            raise RuntimeError(f"{self.name}: POST answered {status}")
        return urljoin(self.endpoint, headers["location"])

    def delete(self, url: str) -> None:
        status, _ = request("DELETE", url, {**self.headers, "Tus-Resumable": "1.0.0"})
        if status != 204:
            log(f"warning: {self.name}: DELETE {url} answered {status}")

    def stored_sha256(self, url: str) -> tuple[int, str]:
        raise NotImplementedError

    def verify(self, url: str, expected: TestFile) -> None:
        size, digest = self.stored_sha256(url)
        if size != expected.size or digest != expected.sha256:
            raise AssertionError(
                f"{self.name}: {url} holds {size} bytes sha256 {digest}, "
                f"expected {expected.size} bytes sha256 {expected.sha256}"
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def _wait_ready(self, probe: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()}")
            try:
                status, _ = request("GET" if probe.endswith("healthz") else "OPTIONS", probe, {})
                if status in (200, 204):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log_text()}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> Server:
        # `with server.start() as s:` must not start a second process and lose the first.
        if self.proc is not None and self.proc.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Server:
        raise NotImplementedError


class Gateway(Server):
    """`gateway serve` (folder store, SQLite catalog, local keyring) on a fresh data dir."""

    name = "gateway"

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = env or {}
        self.token = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _prepare(self) -> Path:
        """A fresh data dir with an API key, a free port; the log's path."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "token", "--data-dir", str(self.data_dir)],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        self.token = out.stdout.strip().splitlines()[-1]
        self.port = free_port()
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        return self.log_path

    def start(self) -> Gateway:
        log_path = self._prepare()
        with open(log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--data-dir", str(self.data_dir),
                 "--log-level", "warning"],
                stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, **self.env},
            )  # fmt: skip
        self._wait_ready(f"http://127.0.0.1:{self.port}/healthz")
        return self

    def stored_sha256(self, url: str) -> tuple[int, str]:
        # The approach of tests/conftest.py read_stored: the project's own decrypting
        # reader over the data dir (store + catalog + keyring), streamed into SHA-256.
        from gateway.catalog.sqlite import SQLiteCatalog
        from gateway.config import load_settings
        from gateway.keys.keyring import LocalKeyring
        from gateway.opening import open_store
        from gateway.reader import Reader

        upload_id = url.rstrip("/").rsplit("/", 1)[1]
        catalog = SQLiteCatalog(self.data_dir / "catalog.sqlite3")
        # The store the server was configured with: the folder, or S3 from its env.
        settings = load_settings({"data_dir": self.data_dir}, environ=self.env)
        try:
            reader = Reader(
                open_store(settings),
                catalog,
                LocalKeyring.open(self.data_dir / "keyring.json"),
            )
            upload = catalog.get_upload(upload_id)
            if upload is None:
                raise AssertionError(f"gateway: no upload {upload_id} in the catalog")
            h, size = hashlib.sha256(), 0
            for chunk in reader.read(upload):
                h.update(chunk)
                size += len(chunk)
            return size, h.hexdigest()
        finally:
            catalog.close()


class GranianGateway(Gateway):
    """The same gateway app (benchmarks/granian_app.py) served by Granian instead of
    uvicorn + httptools: one worker, uvloop, HTTP/1.1, no WebSockets."""

    name = "gateway-granian"

    def start(self) -> GranianGateway:
        log_path = self._prepare()
        granian = Path(sys.executable).with_name("granian")
        # Granian's own header deadline (ms, at most 60 s) set to the gateway's.
        header_ms = min(60_000, int(1000 * float(self.env.get("GATEWAY_HEADER_TIMEOUT", 30))))
        env = {
            **os.environ,
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_LOG_LEVEL": "warning",
            **self.env,
        }
        with open(log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                [str(granian), "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1", "--loop", "uvloop", "--http", "1",
                 "--no-ws", "--http1-header-read-timeout", str(header_ms),
                 "--log-level", "warning", "--working-dir", str(BENCH), "granian_app:app"],
                stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            )  # fmt: skip
        self._wait_ready(f"http://127.0.0.1:{self.port}/healthz")
        return self


class TusNode(Server):
    """@tus/server + @tus/file-store (benchmarks/tus_node_server.mjs), no auth."""

    name = "tus-node"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def start(self) -> TusNode:
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        self.port = free_port()
        self.log_path = self.directory.parent / f"{self.directory.name}.log"
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                ["node", str(BENCH / "tus_node_server.mjs"), str(self.port),
                 str(self.directory)],
                stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "TUS_NODE_DIR": str(NODE_DIR)},
            )  # fmt: skip
        self._wait_ready(self.endpoint)
        return self

    def stored_sha256(self, url: str) -> tuple[int, str]:
        path = self.directory / url.rstrip("/").rsplit("/", 1)[1]
        return path.stat().st_size, _hash_file(path)


def ensure_node_packages() -> dict[str, str]:
    """npm install the peer and tus-js-client into benchmarks/.work/node (once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("node and npm are needed (Node 20.19+)")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    manifest = NODE_DIR / "package.json"
    if not manifest.exists():
        manifest.write_text('{"private": true}\n')
    names = [p.rsplit("@", 1)[0] for p in NPM_PACKAGES]
    if not all((NODE_DIR / "node_modules" / n / "package.json").is_file() for n in names):
        log("npm install " + " ".join(NPM_PACKAGES))
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *NPM_PACKAGES],
            cwd=NODE_DIR, check=True,
        )  # fmt: skip
    versions = {}
    for n in [*names, "@tus/utils"]:
        pj = NODE_DIR / "node_modules" / n / "package.json"
        if pj.is_file():
            versions[n] = json.loads(pj.read_text())["version"]
    return versions


# -- clients -------------------------------------------------------------------------------


def _curl_patch_cmd(server: Server, url: str, path: Path) -> list[str]:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_upload} %{time_total}",
           "-X", "PATCH", "-T", str(path),
           "-H", "Tus-Resumable: 1.0.0", "-H", f"Content-Type: {OCTET}",
           "-H", "Upload-Offset: 0"]  # fmt: skip
    for k, v in server.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    return [*cmd, url]


def _parse_curl(out: str, what: str) -> tuple[float, float]:
    code, speed, total = out.split()
    if code != "204":
        raise RuntimeError(f"{what}: PATCH answered {code}")
    return float(speed), float(total)


@dataclass
class UploadResult:
    urls: list[str]
    seconds: float  # what the throughput is computed from
    bytes: int
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / MB


def curl_single(server: Server, f: TestFile) -> UploadResult:
    """POST with Upload-Length, then one PATCH of the whole file (`curl -T`).
    Throughput is curl's own %{speed_upload} of the PATCH."""
    url = server.create(f.size)
    out = subprocess.run(
        _curl_patch_cmd(server, url, f.path), check=True, capture_output=True, text=True
    ).stdout
    speed, total = _parse_curl(out, server.name)
    return UploadResult(
        [url], f.size / speed, f.size, {"curl_speed_upload": speed, "curl_time_total": total}
    )


def curl_concurrent(server: Server, f: TestFile, n: int) -> UploadResult:
    """n uploads created first, then n curl PATCHes started together; wall time to the last."""
    urls = [server.create(f.size) for _ in range(n)]
    cmds = [_curl_patch_cmd(server, u, f.path) for u in urls]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    for p, out in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"{server.name}: curl exited {p.returncode}")
        _parse_curl(out, server.name)
    speeds = [float(o.split()[1]) / MB for o in outs]
    return UploadResult(urls, wall, n * f.size, {"per_upload_mb_s": [round(s, 1) for s in speeds]})


def tus_js(server: Server, f: TestFile, chunk: str) -> UploadResult:
    """tus-js-client (Node): elapsed from Upload.start() to onSuccess, creation included."""
    out = subprocess.run(
        ["node", str(BENCH / "upload_js.mjs"), server.endpoint, str(f.path), chunk,
         json.dumps(server.headers)],
        check=True, capture_output=True, text=True,
        env={**os.environ, "TUS_NODE_DIR": str(NODE_DIR)},
    ).stdout  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    return UploadResult([result["url"]], result["seconds"], f.size)


def tuspy(server: Server, f: TestFile, chunk: int) -> UploadResult:
    """tuspy in its own process: elapsed around uploader.upload(), creation included."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "upload_tuspy.py"), server.endpoint, str(f.path),
         str(chunk), json.dumps(server.headers)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    return UploadResult([result["url"]], result["seconds"], f.size)


# -- small statistics ----------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- PostgreSQL with pg_stat_statements ------------------------------------------------------


def start_postgres_with_statements() -> tuple[PostgresServer, bool]:
    """tests/postgres.py's server (temp cluster, 127.0.0.1, free port, fsync off),
    restarted once with pg_stat_statements preloaded so every statement's calls, time
    and rows can be counted (BEGIN, COMMIT and SET included: track_utility is on by default).

    Returns the server and whether pg_stat_statements is on (False, with a warning, when
    the module is not installed). FileNotFoundError when PostgreSQL is not installed.
    """
    import psycopg

    from tests import postgres

    server = postgres.start_postgres()
    try:
        bin_dir = postgres.find_bin_dir()
        lib_dir = bin_dir.parent / "lib" if bin_dir is not None else Path("/nonexistent")
        if not (lib_dir / "pg_stat_statements.so").is_file():
            log(f"warning: no pg_stat_statements module in {lib_dir}: statements not counted")
            return server, False
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        old = server.process
        old.send_signal(signal.SIGINT)  # fast shutdown, then the same command again
        old.wait(30)
        owner = postgres._run_as()
        root = server.root
        with open(root / "server.log", "ab") as logf:
            server.process = subprocess.Popen(
                old.args,
                stdout=logf, stderr=subprocess.STDOUT, cwd=root,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                     "HOME": str(root)},
                user=None if owner is None else owner.pw_uid,
                group=None if owner is None else owner.pw_gid,
                extra_groups=None if owner is None else [],
            )  # fmt: skip
        postgres._wait_ready(server)
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    except BaseException:
        server.stop()
        raise
    return server, True
