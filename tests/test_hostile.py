"""loadtests/hostile: its generator is reproducible, and a short run of the command
against a real gateway finds no 500, no unanswered request, no unhandled error, and
leaves the well-behaved users untouched."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from loadtests.hostile_build import build
from loadtests.hostile_checks import log_errors
from loadtests.hostile_gen import Context
from loadtests.hostile_targets import Target, Targets
from loadtests.hostile_wire import Send

ROOT = Path(__file__).resolve().parent.parent


def _context(seed: int) -> Context:
    targets = Targets(
        [
            Target("partial", "/files/" + "A" * 22, 0, 1000, 10),
            Target("deferred", "/files/" + "B" * 22, 0, None, 5),
            Target("complete", "/files/" + "C" * 22, 0, 70_000, 70_000),
        ]
    )
    return Context(seed, 8080, targets, ["gwt_" + "k" * 43], "gwt_" + "d" * 43)


def test_a_request_is_built_again_from_the_seed_and_its_index() -> None:
    first = [build(_context(7), i) for i in range(200)]
    again = [build(_context(7), i) for i in range(200)]
    assert [(h.data, h.mode, h.cut, h.source) for h in first] == [
        (h.data, h.mode, h.cut, h.source) for h in again
    ]
    other = [build(_context(8), i).data for i in range(200)]
    assert other != [h.data for h in first]


def test_a_body_that_never_ends_is_never_sent_whole() -> None:
    """Framing that promises more than is sent must end with the socket, or the gateway
    would rightly wait for the rest (a hang that is the generator's fault)."""
    for i in range(2000):
        hostile = build(_context(3), i)
        chunked = b"Transfer-Encoding" in hostile.data.partition(b"\r\n\r\n")[0]
        if chunked and hostile.mode in (Send.WHOLE, Send.TRICKLE, Send.STALL):
            # The last chunk and the end of the trailers (then any pipelined bytes).
            ends = (b"\r\n\r\n", b"\n\n", b"\x16\x03\x01\x02\x00")
            assert hostile.data.endswith(ends), hostile.describe()


def test_a_short_hostile_run_finds_no_500_and_leaves_others_unaffected() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "hostile"), "--requests", "800", "--seed", "11"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    found = re.search(
        r"requests=(\d+) status_500=(\d+) alive=(\w+) good_users_failures=(\d+)", last
    )
    assert found, last
    assert found.groups() == ("800", "0", "yes", "0")
    assert "hangs=0" in last and "log_errors=0" in last


def test_the_log_check_passes_documented_refusals_only() -> None:
    busy = '{"level": "error", "msg": "request failed: ERR_SERVER_BUSY"}'
    unexpected = '{"level": "error", "msg": "unexpected error", "error": "RuntimeError: x"}'
    assert log_errors(busy + '\n{"level": "warning", "msg": "x"}') == []
    assert log_errors(busy + "\n" + unexpected) == [unexpected]
    text = "ERROR gateway.app request failed: ERR_SERVER_BUSY\nTraceback (most recent call last):"
    assert log_errors(text) == []
    assert log_errors("ERROR gateway.http unexpected error\nTraceback (most recent call last):")
