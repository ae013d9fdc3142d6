"""Notifications end to end: a real gateway process, a webhook receiver on loopback that
fails, hangs, dies and recovers, and `gateway hooks list|retry` run as commands."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.hooks.signing import verify
from tests.hook_receiver import HookReceiver, ReceiverProcess
from tests.postgres import PostgresServer
from tests.server import GatewayProcess, free_port
from tests.test_audit_http import entries
from tests.tushttp import assert_problem, create, send, upload, upload_id

SECRET = "test-hook-secret-0123456789abcdef"
FAST = {
    "GATEWAY_HOOK_SECRET": SECRET,
    "GATEWAY_HOOK_POLL_INTERVAL": "0.1",
    "GATEWAY_HOOK_BACKOFF_BASE": "0.2",
    "GATEWAY_HOOK_BACKOFF_MAX": "0.4",
    "GATEWAY_HOOK_TIMEOUT": "2",
}
STUDY_METADATA = "filename c3R1ZHkuZGNt"  # study.dcm


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    r = HookReceiver()
    yield r
    r.close()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(token: str = "", **env: str) -> GatewayProcess:
        server = GatewayProcess(tmp_path / "data", env={**FAST, **env}, token=token).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def hooks_cli(server: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "hooks", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def outbox(server: GatewayProcess, *, dead: bool = False) -> list[dict[str, Any]]:
    done = hooks_cli(server, "list", "--json", *(["--dead"] if dead else []))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def uploads_in_catalog(server: GatewayProcess) -> int:
    with contextlib.closing(sqlite3.connect(server.data_dir / "catalog.sqlite3")) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0])


def jws_payload(jws: str) -> dict[str, Any]:
    payload = jws.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def metric(server: GatewayProcess, line_start: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=server.auth, timeout=10).text
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def test_a_completed_upload_is_delivered_signed(
    receiver: HookReceiver, start_gateway: Callable[..., GatewayProcess]
) -> None:
    server = start_gateway(GATEWAY_HOOK_URL=receiver.url)
    url = create(server, 11, **{"Upload-Metadata": STUDY_METADATA})
    assert send(server, url, b"hello world", 0) == 11
    upload_id = url.rsplit("/", 1)[1]
    (request,) = receiver.wait_for(1)
    verify(SECRET.encode(), request.body, request.headers["gateway-signature"], now=time.time())
    assert request.headers["content-type"] == "application/json"
    event = request.json()
    assert request.event_id == event["id"] and event["type"] == "upload.completed"
    assert event["upload"] == {
        "id": upload_id,
        "tenant": "default",
        "principal": "admin",
        "length": 11,
        "concat": None,
        "completed": event["upload"]["completed"],
    }
    manifest = jws_payload(event["manifest"])
    assert manifest["upload"]["id"] == upload_id
    assert "plaintext_sha256" not in json.dumps(manifest)  # the bucket's view only
    # Never a metadata value: neither the encoded nor the decoded file name.
    assert b"c3R1ZHkuZGNt" not in request.body and b"study.dcm" not in request.body
    wait_until(lambda: outbox(server) == [])
    wait_until(lambda: metric(server, 'gateway_hook_deliveries_total{outcome="delivered"}') == 1)
    assert metric(server, "gateway_hook_delivery_latency_seconds_count") == 1
    # The served manifest is the reader's view of the same upload.
    served = httpx.get(f"{url}/manifest", headers=server.auth, timeout=10)
    assert jws_payload(served.text)["upload"]["id"] == upload_id
    log = server.log()
    assert SECRET not in log and "c3R1ZHkuZGNt" not in log and event["manifest"] not in log


def test_a_failing_receiver_gets_the_event_once_it_recovers(
    receiver: HookReceiver, start_gateway: Callable[..., GatewayProcess]
) -> None:
    receiver.status = 500
    # Far from dead-lettering however slowly the test runs (attempts every 0.4 s).
    server = start_gateway(GATEWAY_HOOK_URL=receiver.url, GATEWAY_HOOK_MAX_ATTEMPTS="1000")
    upload(server, b"x" * 100)
    failed = receiver.wait_for(3)
    assert len({r.event_id for r in failed}) == 1
    (pending,) = outbox(server)
    assert pending["state"] == "pending" and pending["last_error"] == "HTTP 500"
    assert pending["attempts"] >= 1
    receiver.status = 200
    wait_until(lambda: outbox(server) == [])
    assert {r.event_id for r in receiver.received} == {failed[0].event_id}
    assert metric(server, 'gateway_hook_deliveries_total{outcome="failed"}') >= 3
    assert metric(server, 'gateway_hook_deliveries_total{outcome="delivered"}') == 1


def test_a_receiver_killed_during_delivery_gets_the_event_after_its_restart(
    tmp_path: Path, start_gateway: Callable[..., GatewayProcess]
) -> None:
    process = ReceiverProcess(free_port(), tmp_path / "received.jsonl").start("hang")
    try:
        server = start_gateway(GATEWAY_HOOK_URL=process.url, GATEWAY_HOOK_TIMEOUT="10")
        upload(server, b"y" * 1000)
        (first,) = process.wait_for(1)  # the receiver has it, and has not answered
        process.kill()
        process.start("ok")
        second = process.wait_for(2)[1]
        wait_until(lambda: outbox(server) == [])
    finally:
        process.kill()
    # At least once: the same event again, which a receiver deduplicates by its id.
    assert first["event_id"] == second["event_id"] and first["body"] == second["body"]
    assert json.loads(second["body"])["id"] == second["event_id"]


def test_undelivered_events_are_delivered_after_a_gateway_restart(
    receiver: HookReceiver, start_gateway: Callable[..., GatewayProcess]
) -> None:
    receiver.status = 503
    server = start_gateway(GATEWAY_HOOK_URL=receiver.url)
    first = upload(server, b"a" * 10).rsplit("/", 1)[1]
    second = upload(server, b"b" * 20).rsplit("/", 1)[1]
    receiver.wait_for(2)
    server.stop()
    assert {row["upload_id"] for row in outbox(server)} == {first, second}
    receiver.status = 204
    count = len(receiver.received)
    again = start_gateway(token=server.token, GATEWAY_HOOK_URL=receiver.url)
    wait_until(lambda: outbox(again) == [])
    delivered = receiver.received[count:]
    assert {r.json()["upload"]["id"] for r in delivered} >= {first, second}


def test_a_dead_event_is_listed_and_sent_again_by_gateway_hooks_retry(
    receiver: HookReceiver, start_gateway: Callable[..., GatewayProcess]
) -> None:
    receiver.status = 500
    server = start_gateway(GATEWAY_HOOK_URL=receiver.url, GATEWAY_HOOK_MAX_ATTEMPTS="3")
    upload_id = upload(server, b"z").rsplit("/", 1)[1]
    receiver.wait_for(3)
    wait_until(lambda: len(outbox(server, dead=True)) == 1)
    (dead,) = outbox(server, dead=True)
    assert (dead["upload_id"], dead["attempts"], dead["state"]) == (upload_id, 3, "dead")
    assert dead["target"] == receiver.url and "body" not in dead
    listing = hooks_cli(server, "list", "--dead")
    assert dead["event_id"] in listing.stdout and "HTTP 500" in listing.stdout
    time.sleep(0.5)
    assert len(receiver.received) == 3  # dead: no more attempts
    receiver.status = 204
    assert hooks_cli(server, "retry", "evt_unknown").returncode == 1
    done = hooks_cli(server, "retry", dead["event_id"])
    assert done.returncode == 0 and "1 dead delivery due again" in done.stdout
    wait_until(lambda: outbox(server) == [])
    assert receiver.received[-1].event_id == dead["event_id"]
    assert hooks_cli(server, "retry", "--all-dead").returncode == 1  # none left
    assert metric(server, 'gateway_hook_deliveries_total{outcome="dead"}') == 1
    # An operator sending deliveries again is on the record; a retry of nothing is not.
    retried = [e for e in entries(server.data_dir) if e["action"] == "hooks.retried"]
    assert [e["details"] for e in retried] == [{"event_id": dead["event_id"], "count": 1}]
    assert str(retried[0]["principal"]).startswith("cli")


def test_the_pre_create_hook_accepts_rejects_and_fails_closed(
    receiver: HookReceiver, start_gateway: Callable[..., GatewayProcess]
) -> None:
    receiver.status, receiver.document = 200, {"accept": True}
    server = start_gateway(GATEWAY_PRE_CREATE_HOOK_URL=receiver.url)
    create(server, 5, **{"Upload-Metadata": STUDY_METADATA})
    (asked,) = receiver.received
    verify(SECRET.encode(), asked.body, asked.headers["gateway-signature"], now=time.time())
    assert asked.json()["upload"] == {
        "tenant": "default",
        "principal": "admin",
        "length": 5,
        "concat": None,
        "metadata": [{"key": "filename", "size": 9}],
    }
    assert b"c3R1ZHkuZGNt" not in asked.body and b"study" not in asked.body

    receiver.document = {"accept": False, "reason": "no study is scheduled for this patient"}
    headers = {**server.auth, "Upload-Length": "5"}
    refused = httpx.post(server.files_url, headers=headers, timeout=30)
    problem = assert_problem(refused, 403, "ERR_REJECTED_BY_HOOK")
    assert problem["detail"] == (
        "rejected by the pre-create hook: no study is scheduled for this patient"
    )
    assert uploads_in_catalog(server) == 1  # nothing of the refused one was stored

    receiver.close()  # unreachable: refused, not let through
    unavailable = httpx.post(server.files_url, headers=headers, timeout=30)
    assert_problem(unavailable, 503, "ERR_HOOK_UNAVAILABLE")
    assert uploads_in_catalog(server) == 1
    assert unavailable.headers["Retry-After"] == "10"
    assert metric(server, 'gateway_hook_pre_create_total{outcome="rejected"}') == 1
    assert metric(server, 'gateway_hook_pre_create_total{outcome="unavailable"}') == 1


def test_a_final_concatenation_is_announced_like_any_upload(
    receiver: HookReceiver, start_gateway: Callable[..., GatewayProcess]
) -> None:
    server = start_gateway(GATEWAY_HOOK_URL=receiver.url)
    partial = {"Upload-Concat": "partial"}
    partials = [upload(server, part, None, **partial) for part in (b"ab", b"cd")]
    final = httpx.post(
        server.files_url,
        headers={**server.auth, "Upload-Concat": "final;" + " ".join(partials)},
        timeout=30,
    )
    assert final.status_code == 201, final.text
    events = [r.json() for r in receiver.wait_for(3)]
    kinds = {e["upload"]["id"]: (e["upload"]["concat"], e["upload"]["length"]) for e in events}
    final_id = final.headers["Location"].rsplit("/", 1)[1]
    assert kinds == {
        partials[0].rsplit("/", 1)[1]: ("partial", 2),
        partials[1].rsplit("/", 1)[1]: ("partial", 2),
        final_id: ("final", 4),
    }
    final_event = next(e for e in events if e["upload"]["id"] == final_id)
    assert jws_payload(final_event["manifest"])["upload"]["id"] == final_id


def test_a_final_made_before_its_partials_finished_is_announced_when_it_completes(
    receiver: HookReceiver, start_gateway: Callable[..., GatewayProcess]
) -> None:
    server = start_gateway(GATEWAY_HOOK_URL=receiver.url)
    partial = create(server, 4, **{"Upload-Concat": "partial"})
    final = httpx.post(
        server.files_url,
        headers={**server.auth, "Upload-Concat": "final;" + partial},
        timeout=30,
    )
    assert final.status_code == 201, final.text
    final_id = upload_id(final.headers["Location"])
    assert send(server, partial, b"abcd", 0) == 4  # completes the partial, then the final
    events = [r.json() for r in receiver.wait_for(2)]
    assert {e["upload"]["id"] for e in events} == {upload_id(partial), final_id}
    final_event = next(e for e in events if e["upload"]["id"] == final_id)
    assert final_event["upload"]["length"] == 4
    assert jws_payload(final_event["manifest"])["upload"]["id"] == final_id


def test_gateways_sharing_a_postgresql_catalog_deliver_each_event_once(
    receiver: HookReceiver, postgres: PostgresServer, tmp_path: Path
) -> None:
    database = postgres.create_database()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "kek").write_bytes(os.urandom(32))
    (keys / "kek").chmod(0o600)
    shared = {
        **FAST,
        "GATEWAY_CATALOG": postgres.dsn(database),
        "GATEWAY_KEYRING_PATH": str(keys / "keyring.json"),
        "GATEWAY_KEK_FILE": str(keys / "kek"),
        "GATEWAY_HOOK_URL": receiver.url,
        "GATEWAY_HOOK_POLL_INTERVAL": "0.05",
    }
    gateways: list[GatewayProcess] = []
    try:
        for name in ("a", "b", "c"):
            gateways.append(GatewayProcess(tmp_path / name, env=dict(shared)).start())
        ids = [upload(gateways[i % 3], b"s" * i).rsplit("/", 1)[1] for i in range(12)]
        received = receiver.wait_for(12)

        def delivered() -> float:
            label = 'gateway_hook_deliveries_total{outcome="delivered"}'
            return sum(metric(g, label) for g in gateways)

        wait_until(lambda: delivered() == 12)
        time.sleep(0.5)  # a second delivery of any row would have come by now
        assert sorted(r.json()["upload"]["id"] for r in receiver.received) == sorted(ids)
        assert len({r.event_id for r in received}) == 12
        assert delivered() == 12
    finally:
        for gateway in gateways:
            gateway.stop()
        postgres.drop_database(database)
