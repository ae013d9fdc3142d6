"""loadtests/: the pieces that need no Locust, and a short smoke run of the command."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from loadtests import steps, wire
from loadtests.body import BLOCK, Body, RunningHash
from loadtests.line import format_line, parse_line
from loadtests.plot import plot
from loadtests.sizes import size_class
from loadtests.throttle import TokenBucket
from loadtests.wire import patch
from tests.server import GatewayProcess
from tests.tushttp import create, head_offset

ROOT = Path(__file__).resolve().parent.parent


def test_body_is_the_same_bytes_at_any_offset() -> None:
    body = Body(7, "study.dcm", 3 * BLOCK + 123)
    whole = body.read(0, body.length)
    assert len(whole) == body.length
    for offset, size in [(0, 1), (1, 15), (17, 4096), (BLOCK - 3, 10), (body.length - 5, 99)]:
        assert body.read(offset, size) == whole[offset : offset + size]
    assert Body(7, "other.dcm", 64).read(0, 64) != whole[:64]
    assert Body(8, "study.dcm", 64).read(0, 64) != whole[:64]
    assert body.sha256() == hashlib.sha256(whole).digest()
    assert body.sha256(5, 4000) == hashlib.sha256(whole[5:4000]).digest()


def test_running_hash_skips_resent_bytes_and_catches_up() -> None:
    body = Body(1, "s", 1000)
    hasher = RunningHash(body)
    hasher.feed(0, body.read(0, 600))
    hasher.feed(400, body.read(400, 300))  # resent from an earlier offset after a cut
    cold = RunningHash(body)  # an app killed: it hashes again what the gateway has
    cold.catch_up(700)
    for h in (hasher, cold):
        h.feed(700, body.read(700, 300))
        assert h.hexdigest() == hashlib.sha256(body.read(0, 1000)).hexdigest()
    with pytest.raises(ValueError, match="gap"):
        RunningHash(body).feed(10, b"x")
    with pytest.raises(ValueError, match="hashed 0 of 1000"):
        RunningHash(body).hexdigest()


def test_token_bucket_paces_bytes() -> None:
    bucket = TokenBucket(1_000_000, burst=50_000)
    started = time.monotonic()
    for _ in range(10):
        bucket.take(25_000)
    # 250 kB at 1 MB/s, less the burst the bucket starts with: 0.2 s at least.
    assert time.monotonic() - started >= 0.19


def test_size_classes() -> None:
    assert size_class(1) == "1B"
    assert size_class(1 << 20) == "1MiB"
    assert size_class((1 << 20) + 1) == "2MiB"
    assert size_class(48 << 10) == "64KiB"
    assert size_class(3 << 30) == "4GiB"


def test_summary_line_round_trip() -> None:
    figures = dict(
        users=4,
        uploads=5,
        verified=5,
        failures=0,
        p50_patch_ms=11.4,
        p99_patch_ms=93,
        peak_rss_mib=74.2,
    )
    line = format_line(figures)
    assert (
        line
        == "users=4 uploads=5 verified=5 failures=0 p50_patch_ms=11 p99_patch_ms=93 peak_rss_mib=74"
    )
    assert parse_line("a table\n" + line + "\n")["peak_rss_mib"] == 74
    with pytest.raises(ValueError):
        parse_line(line + "\ntrailing words")


def settled_offset(gateway: GatewayProcess, url: str) -> int:
    """The offset once a cut body is done with: the same in two HEADs 0.2 s apart."""
    last = -1
    for _ in range(50):
        offset = head_offset(gateway, url)
        if offset == last:
            return offset
        last = offset
        time.sleep(0.2)
    raise AssertionError("the offset did not settle")


HIGH_FD = 1100  # past select()'s 1024: a thousand users' load generator has such


def test_waiting_for_delivery_takes_a_descriptor_past_1024() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > HIGH_FD, f"needs a descriptor limit above {HIGH_FD} (hard limit {hard})"
    if soft <= HIGH_FD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        low = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()  # never reads: what is sent stays unacknowledged
        sock = socket.socket(fileno=os.dup2(low.fileno(), HIGH_FD))
        low.close()
        try:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.send(b"x" * 65536)
            assert wire._unacknowledged(sock) > 0
            started = time.monotonic()
            wire._wait_delivered(sock, started + 0.2)  # select() raised ValueError here
            assert time.monotonic() - started >= 0.2
        finally:
            sock.close()
            peer.close()


def test_raw_patch_cut_mid_body_then_resumed(gateway: GatewayProcess) -> None:
    """The mobile user's wire: a body cut after some bytes (FIN or RST), the offset
    asked again, the rest sent paced; the download is what the running hash says."""
    body = Body(3, "cut.dcm", 3 * BLOCK + 999)
    url = create(gateway, body.length)
    hasher = RunningHash(body)
    offset = 0
    for cut, reset in ((BLOCK + 6, False), (2 * BLOCK + 7, True)):
        sent = patch(
            url,
            gateway.auth,
            body,
            offset,
            body.length,
            bucket=None,
            hasher=hasher,
            cut_after=cut - offset,
            reset=reset,
        )
        assert sent.reply is None and sent.sent == cut - offset
        offset = settled_offset(gateway, url)
        if not reset:
            assert offset == cut  # after a FIN every byte sent arrived, and is kept
        else:
            assert BLOCK + 6 <= offset <= cut  # an RST drops what the kernel still held
    hasher.catch_up(offset)
    started = time.monotonic()
    sent = patch(
        url,
        gateway.auth,
        body,
        offset,
        body.length,
        bucket=TokenBucket(4_000_000, burst=16 << 10),
        hasher=hasher,
    )
    assert sent.reply is not None and sent.reply.status == 204, sent.reply
    assert int(sent.reply.header("Upload-Offset")) == body.length
    assert time.monotonic() - started >= (body.length - offset - (16 << 10)) / 4_000_000
    download = httpx.get(url, headers=gateway.auth, timeout=30).content
    assert hashlib.sha256(download).hexdigest() == hasher.hexdigest()
    assert download == body.read(0, body.length)


def test_mixed_scenario_smoke_run(tmp_path: Path) -> None:
    """The command as CI runs it: a few users of every kind for 60 s on small studies,
    added in two steps, every completed upload read back; exit 0 only with no failure,
    and the stepped run's table and plot."""
    plot = tmp_path / "steps.png"
    command = [
        sys.executable,
        str(ROOT / "loadtests" / "run"),
        *("--scenario", "mixed", "--users", "4", "--duration", "60", "--scale", "small"),
        *("--steps", "2", "--plot", str(plot)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = parse_line(done.stdout)
    assert figures["users"] == 4
    assert figures["failures"] == 0
    assert figures["verified"] >= 1
    assert figures["verified"] == figures["uploads"]
    assert "held at every step" in done.stdout or "breaks at users=" in done.stdout
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_schedule_adds_users_in_equal_steps() -> None:
    assert steps.schedule(10, 60, 1) == [(10, 60)]
    assert steps.schedule(500, 600, 10) == [(50 * (i + 1), 60.0) for i in range(10)]
    assert steps.schedule(3, 30, 6)[0] == (1, 5.0)  # never a step of no users


def test_percentile_is_nearest_rank() -> None:
    assert steps.percentile([], 0.99) == 0
    values = [float(v) for v in range(1, 101)]
    assert steps.percentile(values, 0.5) == 50
    assert steps.percentile(values, 0.99) == 99
    assert steps.percentile([5.0], 0.99) == 5


def test_step_log_sorts_requests_into_steps_and_finds_where_it_breaks(tmp_path: Path) -> None:
    listeners: list[Callable[..., None]] = []
    # Locust's Environment as far as the log uses it (importing locust here would patch
    # the test process's standard library for gevent).
    environment = SimpleNamespace(
        events=SimpleNamespace(request=SimpleNamespace(add_listener=listeners.append))
    )
    now = [0.0]
    ended: list[steps.Step] = []
    log = steps.StepLog(
        environment,  # type: ignore[arg-type]
        clock=lambda: now[0],
        on_step=ended.append,
    )

    def fire(kind: str, name: str, ms: float, size: int = 0, error: bool = False) -> None:
        for listener in listeners:
            listener(
                request_type=kind,
                name=name,
                response_time=ms,
                response_length=size,
                exception=AssertionError("x") if error else None,
                context={},
            )

    fire("ACK", "2MiB", 5000)  # before the first step: not counted
    log.begin(10)
    for _ in range(99):
        fire("ACK", "2MiB", 20)
    fire("ACK", "4MiB", 3000)  # slow, but not of the target's size
    fire("PATCH", "2MiB", 900, 2_000_000)
    fire("CUT", "4MiB", 100, 1_000_000)
    now[0] = 10.0
    log.begin(20)
    fire("ACK", "2MiB", 30)
    fire("ACK", "2MiB", 1500)
    now[0] = 20.0
    log.begin(30)
    fire("HEAD", "HEAD", 5, error=True)
    now[0] = 30.0
    log.end()
    fire("ACK", "2MiB", 9000)  # the drain: not counted
    first, second, third = log.steps
    assert ended == log.steps  # each told as it ended
    assert len(first.acks) == 100 and len(first.target_acks) == 99
    assert first.mb_s == pytest.approx(0.3) and not first.broken
    assert second.broken and not second.failures  # the target's p99 passed 1 s
    assert third.broken and third.failures == 1
    table = steps.table(log.steps)
    assert table.splitlines()[-1] == "breaks at users=20: ACK p99 above 1000 ms"
    assert steps.table(log.steps[:1]).endswith(
        "held at every step: no failure, ACK p99 within 1000 ms"
    )
    png = tmp_path / "p.png"
    plot(log.steps, png, "a title")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


RUN = ["--users", "2", "--duration", "120", "--scale", "small"]


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--scenario", "mobile", *RUN],
        ["chaos", "--kills", "0", "--cuts", "0", "--disk-fulls", "0", *RUN],
        ["hostile", "--requests", "100000", "--concurrency", "4"],
    ],
    ids=["run", "chaos", "hostile"],
)
def test_terminated_command_stops_what_it_started(tmp_path: Path, command: list[str]) -> None:
    """SIGTERM from outside (a CI timeout, an operator) ends the run as its own end does:
    the gateway it started is stopped and its temporary folder removed."""
    program, *options = command
    argv = [sys.executable, str(ROOT / "loadtests" / program), *options]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    gateways: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not gateways and time.monotonic() < deadline:
            time.sleep(0.5)
            gateways = [c for c in _children(proc.pid) if b"gateway.cli" in _cmdline(c)]
        assert gateways, "no gateway started"
        time.sleep(3)  # the users are at work
        proc.terminate()
        output, _ = proc.communicate(timeout=120)  # the gateway may take its grace of 30 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = [pid for pid in gateways if _alive(pid)]
        for pid in left:  # whatever happened, nothing this test started outlives it
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert not left, output.decode()[-3000:]
    assert not list(tmp_path.glob("gateway-load-*")), output.decode()[-3000:]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""
