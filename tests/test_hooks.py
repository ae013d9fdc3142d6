"""Notifications, unit by unit: the signature and its verification, backoff, the events'
JSON (never a metadata value), the settings, the deliverer against a real SQLite outbox
and the pre-create hook's verdicts, with httpx's MockTransport as the receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.catalog.base import (
    CatalogUnavailable,
    HookEvent,
    Lease,
    Principal,
    Progress,
    UploadState,
)
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import ConfigError, Settings, export_environment, load_settings
from gateway.errors import ERR, GatewayError
from gateway.hooks.delivery import Deliverer, DeliveryPolicy, backoff
from gateway.hooks.events import CompletionEvents, metadata_sizes, pre_create_body
from gateway.hooks.http import safe_url
from gateway.hooks.precreate import REASON_LIMIT, PreCreateHook, sanitize
from gateway.hooks.signing import InvalidSignature, sign, verify
from gateway.keys.base import WrappedKey
from gateway.keys.keyring import LocalKeyring
from gateway.layout import manifest_keys
from gateway.runner import Runner
from gateway.wiring import build_services
from tests.fakes import MemoryStore, upload_row

SECRET = b"0123456789abcdef0123456789abcdef"


# -- signing ---------------------------------------------------------------------------


def test_a_signature_is_t_and_the_hmac_of_t_dot_body() -> None:
    # What a receiver in any language computes.
    expected = hmac.new(b"secret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert sign(b"secret", b'{"a":1}', 1700000000) == f"t=1700000000,v1={expected}"


def test_verification_accepts_a_fresh_signature_and_refuses_the_rest() -> None:
    body = b'{"id":"evt_1"}'
    header = sign(SECRET, body, 1000)
    verify(SECRET, body, header, now=1000 + 299)
    verify(SECRET, body, header, now=1000 - 299)
    verify(SECRET, body, f"v1=deadbeef,{header}", now=1000)  # any v1 may match
    for bad_body, bad_header, now in [
        (body + b" ", header, 1000),  # body changed
        (body, sign(b"another secret 0123", body, 1000), 1000),
        (body, header, 1000 + 301),  # replayed too late
        (body, header, 1000 - 301),
        (body, header.replace("t=1000", "t=1001"), 1001),  # time changed
        (body, "v1=" + header.partition("v1=")[2], 1000),  # no t
        (body, "t=1000", 1000),  # no v1
        (body, "garbage", 1000),
        (body, "t=-5,v1=00", 1000),
    ]:
        with pytest.raises(InvalidSignature):
            verify(SECRET, bad_body, bad_header, now=now)


# -- backoff ---------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_to_the_cap_within_its_jitter() -> None:
    low = [backoff(n, 1.0, 3600.0, lambda: 0.0) for n in range(1, 16)]
    high = [backoff(n, 1.0, 3600.0, lambda: 1.0) for n in range(1, 16)]
    assert high[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert low[:3] == [0.5, 1.0, 2.0]
    assert high[-1] == 3600.0 and low[-1] == 1800.0
    assert backoff(10_000, 1.0, 3600.0, lambda: 1.0) == 3600.0  # no overflow


# -- events ----------------------------------------------------------------------------


def test_a_completion_event_carries_no_metadata_value() -> None:
    upload = upload_row("u1", length=11, state=UploadState.COMPLETE)
    event = CompletionEvents(("https://a.example/h",), clock=lambda: 1700000000.0).completed(
        upload, "hdr.payload.sig", 1700000000.5
    )
    body = json.loads(event.body)
    assert event.id == body["id"] and event.id.startswith("evt_")
    assert (event.type, event.upload_id, event.targets) == (
        "upload.completed",
        "u1",
        ("https://a.example/h",),
    )
    assert body == {
        "id": event.id,
        "type": "upload.completed",
        "created": "2023-11-14T22:13:20.000000Z",
        "upload": {
            "id": "u1",
            "tenant": "t1",
            "principal": "alice",
            "length": 11,
            "concat": None,
            "completed": "2023-11-14T22:13:20.500000Z",
        },
        "manifest": "hdr.payload.sig",
    }
    assert b"sealed metadata" not in event.body.encode()


def test_a_pre_create_body_names_metadata_keys_and_sizes_only() -> None:
    metadata = "filename c3R1ZHkuZGNt,patient Sm9obiBEb2U=,flag"
    body = json.loads(
        pre_create_body(
            "evt_x", 0.0, Principal("pacs", "north"), length=5, metadata=metadata, concat=None
        )
    )
    assert body["upload"] == {
        "tenant": "north",
        "principal": "pacs",
        "length": 5,
        "concat": None,
        "metadata": [
            {"key": "filename", "size": 9},
            {"key": "patient", "size": 8},
            {"key": "flag", "size": 0},
        ],
    }
    text = json.dumps(body)
    assert "John" not in text and "Sm9obiBEb2U" not in text and "study" not in text
    assert metadata_sizes(None) == [] and metadata_sizes("") == []


def test_urls_are_shown_without_credentials_or_query() -> None:
    assert safe_url("https://u:p@hooks.example:8443/in?token=abc#x") == (
        "https://hooks.example:8443/in"
    )


# -- settings --------------------------------------------------------------------------


def test_hook_settings_are_checked(tmp_path: Path) -> None:
    ok = load_settings(
        environ={
            "GATEWAY_HOOK_URL": "https://a.example/h, http://127.0.0.1:9/h",
            "GATEWAY_HOOK_SECRET": "s" * 16,
        }
    )
    assert ok.hook_urls == ("https://a.example/h", "http://127.0.0.1:9/h")
    assert ok.hook_key() == b"s" * 16
    assert "s" * 16 not in repr(ok)
    assert "GATEWAY_HOOK_SECRET" not in export_environment(ok)  # workers inherit it instead
    secret_file = tmp_path / "hook-secret"
    secret_file.write_text("f" * 32 + "\n")
    secret_file.chmod(0o600)
    from_file = load_settings(
        environ={
            "GATEWAY_PRE_CREATE_HOOK_URL": "https://a.example/pre",
            "GATEWAY_HOOK_SECRET_FILE": str(secret_file),
        }
    )
    assert from_file.hook_key() == b"f" * 32
    for env, message in [
        ({"GATEWAY_HOOK_URL": "http://hooks.example/h"}, "must use https"),
        ({"GATEWAY_PRE_CREATE_HOOK_URL": "ftp://x/"}, "must use https"),
        ({"GATEWAY_HOOK_URL": "https://a.example/h"}, "set GATEWAY_HOOK_SECRET"),
        ({"GATEWAY_HOOK_URL": "https://a.example/h", "GATEWAY_HOOK_SECRET": "short"}, "16"),
        (
            {"GATEWAY_HOOK_SECRET": "s" * 16, "GATEWAY_HOOK_SECRET_FILE": str(secret_file)},
            "at most one",
        ),
        ({"GATEWAY_HOOK_MAX_ATTEMPTS": "0"}, "hook_max_attempts"),
        ({"GATEWAY_HOOK_BACKOFF_BASE": "10", "GATEWAY_HOOK_BACKOFF_MAX": "5"}, "backoff"),
        ({"GATEWAY_HOOK_TIMEOUT": "0"}, "hook_timeout"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings(environ=env)
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings(
            environ={
                "GATEWAY_HOOK_URL": "https://a.example/h",
                "GATEWAY_HOOK_SECRET_FILE": str(secret_file),
            }
        )


# -- the deliverer, on a real outbox ---------------------------------------------------


class Receiver:
    """A MockTransport handler: answers `statuses` in turn (then 204), keeps requests."""

    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.statuses.pop(0) if self.statuses else 204
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, headers={"Location": "https://elsewhere.example/"})


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SQLiteCatalog]:
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    event = HookEvent(
        "evt_1", "upload.completed", "u1", '{"id":"evt_1"}', 1000.0, ("https://a.example/h",)
    )
    catalog.create_upload(upload_row("u1"), WrappedKey("k", 1, b"w"), event)
    yield catalog
    catalog.close()


def deliverer(
    catalog: SQLiteCatalog, runner: Runner, receiver: Receiver, clock: Clock
) -> Deliverer:
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    return Deliverer(
        catalog,
        runner,
        secret=SECRET,
        policy=DeliveryPolicy(max_attempts=3, backoff_base=10.0, backoff_max=100.0),
        client=client,
        clock=clock,
        rand=lambda: 1.0,
    )


async def test_a_delivery_is_signed_and_removes_the_row(
    outbox: SQLiteCatalog, runner: Runner
) -> None:
    receiver, clock = Receiver(), Clock(1002.0)
    sender = deliverer(outbox, runner, receiver, clock)
    assert await sender.deliver_once() == 1
    (request,) = receiver.requests
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Gateway-Event-Id"] == "evt_1"
    verify(SECRET, request.content, request.headers["Gateway-Signature"], now=clock.now)
    assert request.content == b'{"id":"evt_1"}'
    assert outbox.hook_deliveries() == []
    assert await sender.deliver_once() == 0


async def test_failures_back_off_and_the_last_one_is_dead(
    outbox: SQLiteCatalog, runner: Runner
) -> None:
    receiver, clock = Receiver(500, httpx.ConnectError("refused"), 302), Clock(1000.0)
    sender = deliverer(outbox, runner, receiver, clock)
    assert await sender.deliver_once() == 1
    row = outbox.hook_deliveries()[0]
    assert (row.attempts, row.next_attempt_at, row.last_error) == (1, 1010.0, "HTTP 500")
    clock.now = 1009.0
    assert await sender.deliver_once() == 0  # not due yet
    clock.now = 1010.0
    assert await sender.deliver_once() == 1
    row = outbox.hook_deliveries()[0]
    assert (row.attempts, row.next_attempt_at, row.last_error) == (2, 1030.0, "ConnectError")
    clock.now = 1030.0
    assert await sender.deliver_once() == 1  # a redirect is not followed: a failure
    assert len(receiver.requests) == 3
    (dead,) = outbox.hook_deliveries(dead=True)
    assert (dead.attempts, dead.last_error) == (3, "HTTP 302")
    clock.now = 10_000.0
    assert await sender.deliver_once() == 0  # dead rows are not sent
    assert outbox.retry_hook_deliveries(clock.now, "evt_1") == 1
    assert await sender.deliver_once() == 1
    assert outbox.hook_deliveries() == []


# -- the pre-create hook ---------------------------------------------------------------


def hook_answering(answer: Callable[[httpx.Request], httpx.Response]) -> PreCreateHook:
    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return PreCreateHook("https://pre.example/h", secret=SECRET, client=client)


async def check(hook: PreCreateHook) -> None:
    await hook.check(Principal("pacs", "north"), length=3, metadata="filename YWJj", concat=None)


async def test_the_pre_create_hook_accepts_and_rejects_with_a_reason() -> None:
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"accept": True})

    await check(hook_answering(accept))
    verify(SECRET, seen[0].content, seen[0].headers["Gateway-Signature"], now=seen_time(seen[0]))
    assert b"YWJj" not in seen[0].content and b"abc" not in seen[0].content

    def reject(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"accept": False, "reason": "no\r\nstudies\x00 today"})

    with pytest.raises(GatewayError) as caught:
        await check(hook_answering(reject))
    assert caught.value.err is ERR.REJECTED_BY_HOOK and caught.value.status == 403
    assert caught.value.detail == "rejected by the pre-create hook: no studies today"


def seen_time(request: httpx.Request) -> float:
    return float(request.headers["Gateway-Signature"].split(",")[0][2:])


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"accept": True}),
        httpx.Response(200, content=b"yes"),
        httpx.Response(200, json={"accept": "true"}),
        httpx.Response(302, headers={"Location": "https://x.example/"}),
        httpx.Response(200, content=b"[" * 20000),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
    ],
)
async def test_a_hook_that_cannot_answer_refuses_the_upload(
    answer: httpx.Response | Exception,
) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(GatewayError) as caught:
        await check(hook_answering(respond))
    assert caught.value.err is ERR.HOOK_UNAVAILABLE and caught.value.status == 503
    assert caught.value.headers["Retry-After"] == "10"


def test_reasons_are_printable_and_short() -> None:
    assert sanitize("a\tb\u202ec") == "a b c"
    long = sanitize("x" * 1000)
    assert len(long) == REASON_LIMIT and long.endswith("…")
    assert os.linesep not in sanitize("a\nb")


def test_the_readme_s_receiver_snippet_verifies_our_signatures() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("import hashlib, hmac, time")
    snippet = readme[start : readme.index("```", start)]
    scope: dict[str, object] = {}
    exec(snippet, scope)
    check = scope["verify_gateway_signature"]
    assert callable(check)
    body, now = b'{"id":"evt_1"}', int(time.time())
    check(SECRET, body, sign(SECRET, body, now))
    for bad_body, header in [
        (body + b"x", sign(SECRET, body, now)),
        (body, sign(SECRET, body, now - 301)),
        (body, sign(b"another-secret-0123456789", body, now)),
    ]:
        with pytest.raises(ValueError):
            check(SECRET, bad_body, header)


# -- a completion and its event are one -------------------------------------------------


class CompletionFailsOnce(SQLiteCatalog):
    """The commit that would complete an upload fails once, as if the gateway died
    between signing the manifest and recording the completion."""

    fail = True

    def commit(self, lease: Lease, progress: Progress) -> None:
        if progress.complete_at is not None and self.fail:
            self.fail = False
            raise CatalogUnavailable("injected")
        super().commit(lease, progress)


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_completion_cut_short_is_announced_once_when_redone(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        segment_size=64 * 1024,
        hook_url="http://127.0.0.1:9/hook",
        hook_secret="s" * 16,
        hook_poll_interval=3600,  # one look at the start, then nothing
    )
    catalog = CompletionFailsOnce(tmp_path / "catalog.sqlite3")
    store = MemoryStore()
    services = build_services(
        settings, store=store, catalog=catalog, keys=LocalKeyring.open(tmp_path / "keyring.json")
    )
    await services.start()
    try:
        me = Principal("alice", "t1")
        upload = await services.uploads.create(me, length=5, metadata="filename YWJj")
        with pytest.raises(GatewayError) as cut:
            await services.uploads.write(me, upload.id, offset=0, body=body(b"hello"))
        assert cut.value.err is ERR.CATALOG_UNAVAILABLE
        assert catalog.hook_deliveries() == []  # signed, but not complete: no event
        done = await services.uploads.get(me, upload.id)  # the completion is redone
        assert done.state is UploadState.COMPLETE
        (row,) = catalog.hook_deliveries()
        event = json.loads(row.body)
        assert (row.upload_id, event["upload"]["id"]) == (upload.id, upload.id)
        _, jws_key = manifest_keys(upload.id)
        assert event["manifest"] == store.objects[jws_key].decode()  # the one kept
    finally:
        await services.close()
        catalog.close()


async def test_a_hook_trickling_its_answer_is_cut_after_twice_the_timeout() -> None:
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(50):
            await asyncio.sleep(0.05)  # each read well within the timeout
            yield b" "

    async def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle())

    client = httpx.AsyncClient(transport=httpx.MockTransport(respond), timeout=0.2)
    hook = PreCreateHook("https://pre.example/h", secret=SECRET, client=client)
    started = time.monotonic()
    with pytest.raises(GatewayError) as caught:
        await check(hook)
    assert caught.value.err is ERR.HOOK_UNAVAILABLE
    assert time.monotonic() - started < 1.0
