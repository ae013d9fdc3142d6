"""loadtests/chaos: its pieces (the schedule, the tmpfs, the end checks, which must
catch a lost byte), and a short bounded run of the command: gateways killed -9 and
restarted, the disk filled (as root), connections cut, and every upload then found
whole, resumed or verified: failures=0 stuck=0 lost_bytes=0."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtests.body import Body
from loadtests.chaos_check import check
from loadtests.chaos_disk import Tmpfs, can_mount
from loadtests.chaos_faults import moments
from tests.server import GatewayProcess
from tests.tushttp import create, patch

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Tracked:
    body: Body
    path: str
    token: str
    acked: int = 0
    sent: int = 0


def test_moments_spread_the_faults_over_the_run() -> None:
    at = moments(random.Random(1), 100, 600.0)
    assert len(at) == 100 and at == sorted(at)
    assert 0 < at[0] < 10 and 590 < at[-1] < 600
    assert moments(random.Random(1), 0, 600.0) == []
    assert all(0 < t < 40 for t in moments(random.Random(2), 5, 40.0))


def test_end_checks_resume_verify_and_catch_lost_bytes(gateway: GatewayProcess) -> None:
    """An unfinished upload is resumed and verified; one whose client was told more
    than the gateway has is a failure with its lost bytes counted."""
    studies = []
    for n, acked in enumerate((1000, 1500)):
        body = Body(3, f"study-{n}", 5000)
        url = create(gateway, body.length)
        assert patch(gateway, url, body.read(0, 1000), 0).status_code == 204
        path = "/files/" + url.rsplit("/", 1)[1]
        studies.append(Tracked(body, path, gateway.token, acked=acked, sent=2000))
    checked = check(studies, [gateway], random.Random(0), verify_sample=-1, deadline=float("inf"))
    assert checked.uploads == 2
    assert (checked.resumed, checked.completed, checked.verified) == (1, 1, 1)
    assert checked.gateway_verified == 1
    assert checked.lost_bytes == 500
    assert len(checked.failures) == 1 and "below the acknowledged 1500" in checked.failures[0]
    assert checked.stuck == []


def test_tmpfs_fills_and_frees() -> None:
    if not can_mount():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: this test must run as root (it mounts a tmpfs)")
        pytest.skip("mounting a tmpfs needs root")
    point = Path(tempfile.mkdtemp(prefix="chaos-tmpfs-"))
    disk = Tmpfs(point / "data", 8 << 20).mount()
    try:
        (disk.point / "some").write_bytes(os.urandom(100_000))
        assert disk.fill()
        with pytest.raises(OSError) as raised, open(disk.point / "more", "wb") as f:
            f.write(os.urandom(1 << 20))
            f.flush()
        assert raised.value.errno == errno.ENOSPC
        disk.free()
        (disk.point / "more").write_bytes(os.urandom(1 << 20))
    finally:
        disk.unmount()
        (point / "data").rmdir()
        point.rmdir()


def test_short_chaos_run_loses_nothing() -> None:
    """About 45 s: 3 mobile users for 20 s, 4 kills -9 (a kill that cannot be made
    before the run's end because restarts were slow is not made), a full disk (as root),
    cuts."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtests" / "chaos"),
            *("--duration", "20", "--users", "3", "--kills", "4", "--cuts", "4"),
            *("--scale", "small", "--drain", "10", "--check-time", "60"),
            *("--verify-sample", "3", "--seed", "7", "--tmpfs-mib", "512"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    last = out.strip().splitlines()[-1]
    figures = dict(pair.split("=") for pair in last.split())
    assert figures["failures"] == "0" and figures["stuck"] == "0", last
    assert figures["lost_bytes"] == "0", last
    assert int(figures["kills"]) >= 3, last
    assert int(figures["uploads"]) >= 1 and figures["verified"] == figures["uploads"], last
    if can_mount():
        assert int(figures["disk_fulls"]) >= 1, last
