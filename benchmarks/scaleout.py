"""Scale-out: 1, 2 and 3 gateways on one PostgreSQL catalog against 1 on SQLite.

    .venv/bin/python benchmarks/scaleout.py                  # ~3-4 min on 2 cores
    .venv/bin/python benchmarks/scaleout.py --seconds 60 --repeat 3 --clients 12

Starts one SeaweedFS server (`weed server -s3`, tests/s3server.py) and one PostgreSQL
15 cluster (tests/postgres.py, fsync and synchronous_commit off, restarted once with
pg_stat_statements preloaded), both on 127.0.0.1 on free ports, then for each
configuration -- SQLite x1, PostgreSQL x1, x2, x3 -- that many `gateway serve`
processes on a fresh bucket of that one S3 server, so only the catalog differs. The
PostgreSQL instances share a fresh database and one keyring file (GATEWAY_KEYRING_PATH,
outside their data dirs). One unmeasured upload per instance warms everything up.

Then `--clients` threads (round-robin over the instances, one keep-alive connection
each) upload `--file-mib` MiB files in `--patch-mib` MiB PATCHes back to back, starting
new uploads for `--seconds`; every upload is finished. Measured over that interval:

- aggregate MB/s (10^6 B/s): bytes acknowledged / wall time from start to last answer;
- PATCH latency p50/p95, client side (request sent to answer read, body included);
- CPU seconds (utime+stime from /proc/PID/stat, whole process trees) of the gateways
  (summed), of PostgreSQL (postmaster + backends) and of SeaweedFS, per GB and per
  request (POSTs + PATCHes); and how many of the machine's cores were busy (/proc/stat);
- the catalog as the gateways see it: the delta of their
  gateway_catalog_operation_duration_seconds histograms (/metrics, scraped with a
  metrics token so scraping costs no catalog call): calls and ms per PATCH;
- the catalog as PostgreSQL sees it: the delta of pg_stat_statements for the run's
  database: round trips (every top-level statement, BEGIN, COMMIT and SET LOCAL
  included: psycopg sends each as one exchange and the catalog uses no pipelining;
  SET LOCALs are counted from the lease calls that send them, see SET_LOCAL_OPERATIONS),
  SQL statements (the same without BEGIN/COMMIT/ROLLBACK/SET), transactions
  (COMMIT + ROLLBACK), server execution ms, rows and WAL bytes, per PATCH.

"Per PATCH" divides everything the run cost by its PATCHes: the POSTs, lease renewals
and background work are spread over them. After the run one upload per client is
downloaded from another instance (GET) and checked against the source's SHA-256. Prints
tables; writes benchmarks/.work/scaleout-<timestamp>.json. Every process started is
stopped by its PID in `finally` blocks; SIGALRM after --time-limit seconds ends a run
that hangs.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    MB,
    ROOT,
    WORK,
    GiB,
    MiB,
    log,
    random_file,
    start_postgres_with_statements,
    tree_cpu,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.postgres import PostgresServer
from tests.s3server import SeaweedS3
from tests.server import GatewayProcess, S3Target

GB = 1_000_000_000
CATALOG_HISTOGRAM = "gateway_catalog_operation_duration_seconds"
TX_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})
# The catalog calls that send SET LOCAL synchronous_commit = off (the `durable=False`
# transactions of gateway/catalog/postgres_access.py). PostgreSQL 15's pg_stat_statements
# does not count a utility statement run as a prepared statement, and psycopg prepares
# any statement run 5 times on a connection: those SETs are counted from these calls.
SET_LOCAL_OPERATIONS = ("renew_leases", "release_lease", "token_used")
IDLE_REOPEN = 3.0  # seconds a client's connection may sit idle before it opens a new one


@dataclass(frozen=True)
class Config:
    catalog: str  # "sqlite" or "postgres"
    instances: int

    @property
    def name(self) -> str:
        return f"{self.catalog} x{self.instances}"

    @property
    def slug(self) -> str:
        return f"{'pg' if self.catalog == 'postgres' else 'sqlite'}{self.instances}"


ALL_CONFIGS = {
    c.slug: c
    for c in (
        Config("sqlite", 1),
        Config("postgres", 1),
        Config("postgres", 2),
        Config("postgres", 3),
    )
}


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Endpoint:
    host: str
    port: int
    token: str


@dataclass
class ClientStats:
    patch_s: list[float] = field(default_factory=list)
    post_s: list[float] = field(default_factory=list)
    bytes: int = 0
    uploads: list[str] = field(default_factory=list)  # paths of finished uploads
    finished_at: float = 0.0
    error: str = ""


class Client:
    """One uploading client: a keep-alive connection per instance it talks to."""

    def __init__(self, endpoints: list[Endpoint], data: bytes, patch: int) -> None:
        self.endpoints = endpoints
        self.data = memoryview(data)
        self.patch = patch
        self.stats = ClientStats()
        self._conns: dict[int, http.client.HTTPConnection] = {}
        self._used: dict[int, float] = {}

    def _request(
        self, which: int, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> http.client.HTTPResponse:
        ep = self.endpoints[which]
        conn = self._conns.get(which)
        if conn is not None and time.monotonic() - self._used[which] > IDLE_REOPEN:
            conn.close()  # the server may be closing it (uvicorn keeps idle ones 5 s)
            conn = None
        if conn is None:
            conn = self._conns[which] = http.client.HTTPConnection(ep.host, ep.port, timeout=120)
        try:
            conn.request(
                method,
                path,
                body=body,
                headers={
                    "Authorization": f"Bearer {ep.token}",
                    "Tus-Resumable": "1.0.0",
                    **headers,
                },
            )
        except (BrokenPipeError, ConnectionResetError) as exc:
            # Answered and closed before the body was all sent: say what the answer was.
            try:
                early = conn.getresponse()
                text = early.read()[:300]
            except (OSError, http.client.HTTPException):
                raise exc from None
            raise RuntimeError(
                f"{method} to instance {which} answered {early.status} before the body "
                f"was sent: {text!r}"
            ) from exc
        response = conn.getresponse()
        response.read()
        self._used[which] = time.monotonic()
        return response

    def upload(self, first: int, spread: bool) -> None:
        size = len(self.data)
        t0 = time.perf_counter()
        r = self._request(first, "POST", "/files/", {"Upload-Length": str(size)})
        self.stats.post_s.append(time.perf_counter() - t0)
        if r.status != 201:
            raise RuntimeError(f"POST answered {r.status}")
        path = urlsplit(r.headers["Location"]).path
        offset, which = 0, first
        while offset < size:
            end = min(size, offset + self.patch)
            headers = {
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(end - offset),
            }
            t0 = time.perf_counter()
            r = self._request(which, "PATCH", path, headers, self.data[offset:end])
            self.stats.patch_s.append(time.perf_counter() - t0)
            if r.status != 204 or r.headers.get("Upload-Offset") != str(end):
                raise RuntimeError(
                    f"PATCH to instance {which} answered {r.status}, "
                    f"Upload-Offset {r.headers.get('Upload-Offset')}"
                )
            self.stats.bytes += end - offset
            offset = end
            if spread:
                which = (which + 1) % len(self.endpoints)
        self.stats.uploads.append(path)

    def run(self, home: int, spread: bool, deadline: float) -> None:
        try:
            while True:
                self.upload(home, spread)
                if time.perf_counter() >= deadline:
                    break
        except Exception as exc:  # reported by the main thread
            self.stats.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.stats.finished_at = time.perf_counter()
            for conn in self._conns.values():
                conn.close()


def sha256_of_download(ep: Endpoint, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(ep.host, ep.port, timeout=120)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {ep.token}"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
        h, size = hashlib.sha256(), 0
        while chunk := response.read(MiB):
            h.update(chunk)
            size += len(chunk)
        return size, h.hexdigest()
    finally:
        conn.close()


# -- what the gateways and PostgreSQL counted -----------------------------------------------


Tally = dict[str, float]


def _minus(a: Tally, b: Tally) -> Tally:
    return {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0)}


def _plus(a: Tally, b: Tally) -> Tally:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}


def _add(tally: Tally, key: str, value: float) -> None:
    tally[key] = tally.get(key, 0) + value


def _most(tally: Tally, n: int | None = None) -> list[tuple[str, float]]:
    return sorted(tally.items(), key=lambda kv: -kv[1])[:n]


@dataclass
class Scrape:
    calls: Tally = field(default_factory=dict)  # catalog calls by operation
    seconds: Tally = field(default_factory=dict)  # catalog seconds by operation
    requests: Tally = field(default_factory=dict)  # requests by method

    def __sub__(self, other: Scrape) -> Scrape:
        return Scrape(
            _minus(self.calls, other.calls),
            _minus(self.seconds, other.seconds),
            _minus(self.requests, other.requests),
        )

    def __add__(self, other: Scrape) -> Scrape:
        return Scrape(
            _plus(self.calls, other.calls),
            _plus(self.seconds, other.seconds),
            _plus(self.requests, other.requests),
        )


def scrape(gw: GatewayProcess, token: str) -> Scrape:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        text = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
    finally:
        conn.close()
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == CATALOG_HISTOGRAM + "_count":
                _add(out.calls, s.labels["operation"], s.value)
            elif s.name == CATALOG_HISTOGRAM + "_sum":
                _add(out.seconds, s.labels["operation"], s.value)
            elif s.name == "tusd_requests_total":
                _add(out.requests, s.labels["method"], s.value)
    return out


@dataclass
class Statements:
    """pg_stat_statements of one database, by statement text."""

    calls: Tally = field(default_factory=dict)
    ms: Tally = field(default_factory=dict)
    rows: Tally = field(default_factory=dict)
    wal_bytes: Tally = field(default_factory=dict)

    def __sub__(self, other: Statements) -> Statements:
        return Statements(
            _minus(self.calls, other.calls),
            _minus(self.ms, other.ms),
            _minus(self.rows, other.rows),
            _minus(self.wal_bytes, other.wal_bytes),
        )


def statements(pg: PostgresServer, dbname: str) -> Statements:
    import psycopg

    out = Statements()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT s.query, sum(s.calls), sum(s.total_exec_time), sum(s.rows),"
            " sum(s.wal_bytes) FROM pg_stat_statements s JOIN pg_database d"
            " ON d.oid = s.dbid WHERE d.datname = %s AND s.toplevel GROUP BY s.query",
            (dbname,),
        ).fetchall()
    for query, calls, ms, nrows, wal in rows:
        q = " ".join(str(query).split())
        _add(out.calls, q, int(calls))
        _add(out.ms, q, float(ms))
        _add(out.rows, q, int(nrows))
        _add(out.wal_bytes, q, int(wal))
    return out


def _kind(query: str) -> str:
    head = query.split(" ", 1)[0].upper()
    return head if head in TX_CONTROL or head == "SET" else "SQL"


# -- CPU -------------------------------------------------------------------------------------


def _cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)


@dataclass
class CpuSnapshot:
    gateways: float
    postgres: float
    seaweed: float
    client: float
    idle_ticks: int
    total_ticks: int


def cpu_snapshot(gateways: list[GatewayProcess], pg: PostgresServer, s3: SeaweedS3) -> CpuSnapshot:
    assert s3.proc is not None
    idle, total = _cpu_ticks()
    return CpuSnapshot(
        gateways=sum(tree_cpu(gw.proc.pid) for gw in gateways if gw.proc is not None),
        postgres=tree_cpu(pg.process.pid),
        seaweed=tree_cpu(s3.proc.pid),
        client=time.process_time(),
        idle_ticks=idle,
        total_ticks=total,
    )


# -- one configuration -----------------------------------------------------------------------


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_config(
    cfg: Config,
    pg: PostgresServer,
    s3: SeaweedS3,
    args: argparse.Namespace,
    data: bytes,
    digest: str,
    index: int,
) -> dict[str, Any]:
    run_dir = WORK / "scaleout" / f"{index:02d}-{cfg.slug}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    target = S3Target(s3.endpoint, s3.access_key, s3.secret_key, s3.fresh_bucket("scale"))
    metrics_token = secrets.token_urlsafe(24)
    env = {
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_SEGMENT_SIZE": str(args.segment_mib * MiB),
        "GATEWAY_METRICS_TOKEN": metrics_token,
    }
    dbname = ""
    counted = cfg.catalog == "postgres" and args.statements
    if cfg.catalog == "postgres":
        dbname = pg.create_database()
        env["GATEWAY_CATALOG"] = pg.dsn(dbname)
        env["GATEWAY_KEYRING_PATH"] = str(run_dir / "keyring.json")
    gateways: list[GatewayProcess] = []
    try:
        for i in range(cfg.instances):  # one after the other: the first makes the keyring
            gw = GatewayProcess(run_dir / f"gw{i}", env=dict(env), s3=target)
            gateways.append(gw)
            gw.start(timeout=90)
        endpoints = [Endpoint("127.0.0.1", gw.port, gw.token) for gw in gateways]
        for i in range(cfg.instances):  # warm-up, not measured
            Client(endpoints, data, args.patch_mib * MiB).upload(i, spread=False)

        clients = [Client(endpoints, data, args.patch_mib * MiB) for _ in range(args.clients)]
        scrape0 = _sum_scrapes(gateways, metrics_token)
        stmts0 = statements(pg, dbname) if counted else Statements()
        cpu0 = cpu_snapshot(gateways, pg, s3)
        t0 = time.perf_counter()
        deadline = t0 + args.seconds
        threads = [
            threading.Thread(
                target=c.run,
                args=(i % cfg.instances, args.spread == "patch", deadline),
                daemon=True,
            )
            for i, c in enumerate(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu1 = cpu_snapshot(gateways, pg, s3)
        stmts1 = statements(pg, dbname) if counted else Statements()
        scrape1 = _sum_scrapes(gateways, metrics_token)
        errors = [c.stats.error for c in clients if c.stats.error]
        if errors:
            raise RuntimeError(f"{cfg.name}: {len(errors)} clients failed: {errors[0]}")
        wall = max(c.stats.finished_at for c in clients) - t0

        for i, c in enumerate(clients):  # read back through another instance
            ep = endpoints[(i + 1) % cfg.instances]
            got = sha256_of_download(ep, c.stats.uploads[-1])
            if got != (len(data), digest):
                raise AssertionError(f"{cfg.name}: {c.stats.uploads[-1]} reads back as {got}")
        stmts = stmts1 - stmts0 if counted else None
        return summarize(cfg, clients, wall, cpu0, cpu1, scrape1 - scrape0, stmts)
    except BaseException:
        for gw in gateways:
            log(f"--- {cfg.name}, gateway on port {gw.port}, end of its log:\n{gw.log()[-3000:]}")
        raise
    finally:
        for gw in gateways:
            gw.stop()
        if dbname:
            pg.drop_database(dbname)
        shutil.rmtree(run_dir, ignore_errors=True)


def _sum_scrapes(gateways: list[GatewayProcess], token: str) -> Scrape:
    total = Scrape()
    for gw in gateways:
        total = total + scrape(gw, token)
    return total


def summarize(
    cfg: Config,
    clients: list[Client],
    wall: float,
    cpu0: CpuSnapshot,
    cpu1: CpuSnapshot,
    seen: Scrape,
    stmts: Statements | None,
) -> dict[str, Any]:
    patch_s = [x for c in clients for x in c.stats.patch_s]
    post_s = [x for c in clients for x in c.stats.post_s]
    nbytes = sum(c.stats.bytes for c in clients)
    patches, posts = len(patch_s), len(post_s)
    requests = patches + posts
    gw_cpu = cpu1.gateways - cpu0.gateways
    pg_cpu = cpu1.postgres - cpu0.postgres if cfg.catalog == "postgres" else 0.0
    weed_cpu = cpu1.seaweed - cpu0.seaweed
    idle = cpu1.idle_ticks - cpu0.idle_ticks
    total = max(1, cpu1.total_ticks - cpu0.total_ticks)
    out: dict[str, Any] = {
        "config": cfg.name,
        "instances": cfg.instances,
        "catalog": cfg.catalog,
        "wall_s": round(wall, 2),
        "bytes": nbytes,
        "uploads": sum(len(c.stats.uploads) for c in clients),
        "patches": patches,
        "posts": posts,
        "mb_s": round(nbytes / wall / MB, 1),
        "patch_p50_ms": round(percentile(patch_s, 50) * 1000, 1),
        "patch_p95_ms": round(percentile(patch_s, 95) * 1000, 1),
        "post_p50_ms": round(percentile(post_s, 50) * 1000, 1),
        "cores_busy": round((os.cpu_count() or 1) * (1 - idle / total), 2),
        "cpu_s": {
            "gateways": round(gw_cpu, 2),
            "postgres": round(pg_cpu, 2),
            "seaweedfs": round(weed_cpu, 2),
            "clients": round(cpu1.client - cpu0.client, 2),
        },
        "gateway_cpu_s_per_gb": round(gw_cpu / (nbytes / GB), 2),
        "gateway_cpu_ms_per_request": round(gw_cpu / requests * 1000, 1),
        "postgres_cpu_s_per_gb": round(pg_cpu / (nbytes / GB), 3),
        "postgres_cpu_ms_per_request": round(pg_cpu / requests * 1000, 2),
        "seaweedfs_cpu_s_per_gb": round(weed_cpu / (nbytes / GB), 2),
        "server_requests": {k: int(v) for k, v in seen.requests.items()},
        "catalog_calls_per_patch": round(sum(seen.calls.values()) / patches, 2),
        "catalog_ms_per_patch": round(sum(seen.seconds.values()) * 1000 / patches, 2),
        "catalog_by_operation": {
            op: {
                "calls_per_patch": round(n / patches, 3),
                "ms_per_call": round(seen.seconds[op] * 1000 / n, 3),
            }
            for op, n in _most(seen.calls)
        },
    }
    if stmts is not None:
        by_kind: Tally = {}
        for q, n in stmts.calls.items():
            _add(by_kind, _kind(q), n)
        sets = sum(seen.calls.get(op, 0) for op in SET_LOCAL_OPERATIONS)
        counted = sum(stmts.calls.values()) - by_kind.get("SET", 0) + sets
        out["pg"] = {
            "round_trips_per_patch": round(counted / patches, 2),
            "statements_per_patch": round(by_kind.get("SQL", 0) / patches, 2),
            "transactions_per_patch": round(
                (by_kind.get("COMMIT", 0) + by_kind.get("ROLLBACK", 0)) / patches, 2
            ),
            "rollbacks": int(by_kind.get("ROLLBACK", 0)),
            "set_per_patch": round(sets / patches, 2),
            "set_seen_by_pg_stat_statements_per_patch": round(by_kind.get("SET", 0) / patches, 2),
            "exec_ms_per_patch": round(sum(stmts.ms.values()) / patches, 3),
            "rows_per_patch": round(sum(stmts.rows.values()) / patches, 2),
            "wal_kb_per_patch": round(sum(stmts.wal_bytes.values()) / 1000 / patches, 2),
            "top_statements": [
                {
                    "query": q[:160],
                    "calls_per_patch": round(n / patches, 3),
                    "ms_per_call": round(stmts.ms[q] / n, 4),
                }
                for q, n in _most(stmts.calls, 20)
            ],
        }
    return out


# -- the whole run ---------------------------------------------------------------------------


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric figures of one configuration's runs (the first run's rest)."""
    if len(rows) == 1:
        return rows[0]
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(float(r[key]) for r in rows)
    if "pg" in rows[0]:
        out["pg"] = dict(rows[0]["pg"])
        for key, value in rows[0]["pg"].items():
            if isinstance(value, int | float):
                out["pg"][key] = statistics.median(float(r["pg"][key]) for r in rows)
    out["runs"] = len(rows)
    return out


def print_tables(summary: list[dict[str, Any]], args: argparse.Namespace) -> None:
    runs = summary[0].get("runs", 1)
    print(
        f"\n{args.clients} clients, {args.file_mib} MiB files in {args.patch_mib} MiB PATCHes, "
        f"{args.seconds:g} s per configuration, {runs} run(s) each (medians); "
        f"spread per {args.spread}; {os.cpu_count()} cores"
    )
    head = (
        f"  {'config':<12} {'MB/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'busy':>5} "
        f"{'gw CPU-s/GB':>11} {'gw ms/req':>9} {'pg CPU-s/GB':>11} {'pg ms/req':>9} "
        f"{'weed CPU-s/GB':>13}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for s in summary:
        print(
            f"  {s['config']:<12} {s['mb_s']:>6.1f} {s['patch_p50_ms']:>7.0f} "
            f"{s['patch_p95_ms']:>7.0f} {s['cores_busy']:>5.2f} "
            f"{s['gateway_cpu_s_per_gb']:>11.2f} {s['gateway_cpu_ms_per_request']:>9.1f} "
            f"{s['postgres_cpu_s_per_gb']:>11.3f} {s['postgres_cpu_ms_per_request']:>9.2f} "
            f"{s['seaweedfs_cpu_s_per_gb']:>13.2f}"
        )
    print("\nCatalog cost per PATCH (all the run's catalog work / PATCHes)")
    head = (
        f"  {'config':<12} {'calls':>6} {'call ms':>8} {'round trips':>11} {'SQL stmts':>9} "
        f"{'xacts':>6} {'exec ms':>8} {'rows':>6} {'WAL kB':>7}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for s in summary:
        pg = s.get("pg")
        tail = (
            f"{pg['round_trips_per_patch']:>11.1f} {pg['statements_per_patch']:>9.1f} "
            f"{pg['transactions_per_patch']:>6.1f} {pg['exec_ms_per_patch']:>8.2f} "
            f"{pg['rows_per_patch']:>6.1f} {pg['wal_kb_per_patch']:>7.1f}"
            if pg
            else f"{'-':>11} {'-':>9} {'-':>6} {'-':>8} {'-':>6} {'-':>7}"
        )
        print(
            f"  {s['config']:<12} {s['catalog_calls_per_patch']:>6.1f} "
            f"{s['catalog_ms_per_patch']:>8.2f} {tail}"
        )


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("the benchmark ran past --time-limit")


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=6, help="concurrent uploaders (6)")
    parser.add_argument("--file-mib", type=int, default=32, help="upload size (32 MiB)")
    parser.add_argument("--patch-mib", type=int, default=8, help="PATCH body size (8 MiB)")
    parser.add_argument("--segment-mib", type=int, default=8, help="GATEWAY_SEGMENT_SIZE (8)")
    parser.add_argument(
        "--seconds", type=float, default=20, help="new uploads start this long (20)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of every configuration, order alternating"
    )
    parser.add_argument(
        "--configs",
        default=",".join(ALL_CONFIGS),
        help=f"which, comma-separated ({','.join(ALL_CONFIGS)})",
    )
    parser.add_argument(
        "--spread",
        choices=("client", "patch"),
        default="client",
        help="round-robin clients over instances (client), or each PATCH too (patch)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        help="stop everything after this many seconds (default: 120 + 90 per configuration "
        "run + the --seconds of every run)",
    )
    args = parser.parse_args()
    configs = [ALL_CONFIGS[name] for name in args.configs.split(",")]
    if args.segment_mib < 5:
        parser.error("S3 needs segments of at least 5 MiB")
    if args.patch_mib * MiB > GiB or args.file_mib < args.patch_mib:
        parser.error("--patch-mib must be at most --file-mib")

    # The in-process token minting's "schema migrated" warnings are not news here.
    logging.getLogger("gateway").setLevel(logging.ERROR)
    limit = args.time_limit or 120 + len(configs) * args.repeat * (90 + args.seconds)
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGTERM, _terminated)  # so that the finally blocks stop everything
    signal.alarm(max(1, int(limit)))
    started = time.time()
    f = random_file(args.file_mib * MiB)
    data = f.path.read_bytes()
    seaweed_dir = WORK / "seaweed-scaleout"
    shutil.rmtree(seaweed_dir, ignore_errors=True)
    s3 = SeaweedS3(seaweed_dir)
    pg: PostgresServer | None = None
    rows: list[dict[str, Any]] = []
    try:
        log("starting SeaweedFS and PostgreSQL")
        s3.start(timeout=60)
        pg, args.statements = start_postgres_with_statements()
        index = 0
        for r in range(args.repeat):
            for cfg in configs if r % 2 == 0 else reversed(configs):
                log(f"run {r + 1}/{args.repeat}: {cfg.name}")
                row = run_config(cfg, pg, s3, args, data, f.sha256, index)
                index += 1
                row["run"] = r
                rows.append(row)
                log(
                    f"  {row['mb_s']:.1f} MB/s, PATCH p50 {row['patch_p50_ms']:.0f} ms "
                    f"p95 {row['patch_p95_ms']:.0f} ms, {row['patches']} PATCHes, "
                    f"catalog {row['catalog_calls_per_patch']:.1f} calls "
                    f"{row['catalog_ms_per_patch']:.2f} ms per PATCH"
                )
    finally:
        signal.alarm(0)
        if pg is not None:
            pg.stop()
        s3.close()
        shutil.rmtree(seaweed_dir, ignore_errors=True)
        shutil.rmtree(WORK / "scaleout", ignore_errors=True)

    summary = [_median_row([r for r in rows if r["config"] == c.name]) for c in configs]
    print_tables(summary, args)
    elapsed = time.time() - started
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = WORK / f"scaleout-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "timestamp": stamp,
                "elapsed_s": round(elapsed, 1),
                "nproc": os.cpu_count(),
                "settings": {k: v for k, v in vars(args).items()},
                "units": {"throughput": "MB/s = 10^6 bytes/s", "GB": "10^9 bytes"},
                "summary": summary,
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\n{len(rows)} runs, {elapsed:.0f} s; wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
