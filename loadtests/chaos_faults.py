"""The faults a chaos run injects while the users upload, each kind on a schedule of
its own (random moments over the run, seeded), so they overlap as real ones do:

- kill: `kill -9` of a gateway (by PID), started again at once on the same port and
  data dir (its start is retried until it is healthy: it may meet a full disk or S3
  down);
- s3: SeaweedFS stopped (SIGTERM, then SIGKILL by PID) and, 3-10 s later, started
  again on the same ports and data;
- disk: the data dir's tmpfs filled (no space left), then freed 3-8 s later;
- cut: a few of the users' connections to a gateway reset (`ss -K`: the client's
  socket is destroyed and the gateway gets an RST).

`stop()` ends the schedules and puts everything back: the disk freed, S3 and every
gateway running."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtests.chaos_disk import Tmpfs
from loadtests.stack import Stack
from tests.server import GatewayProcess

RESTART_WITHIN = 120.0  # seconds a gateway or S3 gets to come back


@dataclass
class Counts:
    kills: int = 0
    s3_restarts: int = 0
    disk_fulls: int = 0
    cuts: int = 0
    problems: list[str] = field(default_factory=list)  # faults that could not be undone


def moments(rng: random.Random, count: int, duration: float) -> list[float]:
    """`count` random moments in the run, spread over it (one per equal slice)."""
    if count <= 0:
        return []
    low, high = min(1.0, duration / 4), max(duration - 1.0, duration * 3 / 4)
    width = (high - low) / count
    return [low + width * (i + rng.random()) for i in range(count)]


class Faults:
    def __init__(
        self,
        stack: Stack,
        rng: random.Random,
        duration: float,
        *,
        kills: int,
        s3_restarts: int,
        disk_fulls: int,
        cuts: int,
        tmpfs: Tmpfs | None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.stack = stack
        self.duration = duration
        self.tmpfs = tmpfs
        self.say = say
        self.counts = Counts()
        self._stop = threading.Event()
        self._began = 0.0
        plans: list[tuple[Callable[[random.Random], None], int]] = [
            (self._kill, kills),
            (self._restart_s3, s3_restarts if stack.weed is not None else 0),
            (self._fill_disk, disk_fulls if tmpfs is not None else 0),
            (self._cut, cuts),
        ]
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(action, moments(rng, count, duration), random.Random(rng.random())),
                daemon=True,
            )
            for action, count in plans
            if count > 0
        ]

    def start(self) -> Faults:
        self._began = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def _run(
        self, action: Callable[[random.Random], None], at: list[float], rng: random.Random
    ) -> None:
        for moment in at:
            delay = self._began + moment - time.monotonic()
            if self._stop.wait(max(0.0, delay)):
                return
            try:
                action(rng)
            except Exception as exc:  # a fault that failed is reported, not fatal
                self.counts.problems.append(f"{action.__name__}: {exc!r}")

    # -- the faults -----------------------------------------------------------------

    def _kill(self, rng: random.Random) -> None:
        gateway = rng.choice(self.stack.gateways)
        gateway.kill()
        self.counts.kills += 1
        time.sleep(rng.uniform(0.0, 1.0))
        self.restart(gateway)

    def restart(self, gateway: GatewayProcess) -> None:
        """Start `gateway` again (same port, data dir, keys) until it is healthy."""
        deadline = time.monotonic() + RESTART_WITHIN
        last = ""
        while time.monotonic() < deadline:
            if gateway.proc is not None and gateway.proc.poll() is None:
                return
            try:
                gateway.start(timeout=30.0)
                return
            except RuntimeError as exc:  # a full disk, S3 away: not yet
                last = str(exc).splitlines()[0]
                gateway.kill()
            time.sleep(1.0)
        self.counts.problems.append(f"gateway {gateway.url} did not come back: {last}")

    def _restart_s3(self, rng: random.Random) -> None:
        weed = self.stack.weed
        assert weed is not None
        weed.stop(grace=rng.choice((0.0, 3.0)))  # a crash, or a stop
        self.counts.s3_restarts += 1
        self._stop.wait(rng.uniform(3.0, 10.0))
        self.start_s3()

    def start_s3(self) -> None:
        weed = self.stack.weed
        if weed is not None:
            weed.start(timeout=RESTART_WITHIN)

    def _fill_disk(self, rng: random.Random) -> None:
        assert self.tmpfs is not None
        if not self.tmpfs.fill():
            self.counts.problems.append("the disk could not be filled (writes raced)")
            return
        self.counts.disk_fulls += 1
        self._stop.wait(rng.uniform(3.0, 8.0))
        self.tmpfs.free()

    def _cut(self, rng: random.Random) -> None:
        ports = [g.port for g in self.stack.gateways]
        listed = subprocess.run(
            ["ss", "-Htn", "state", "established"], capture_output=True, text=True, timeout=10
        )
        pairs = []  # (client port, gateway port) of the users' connections
        for line in listed.stdout.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            local, peer = fields[-2], fields[-1]
            if peer.startswith("127.0.0.1:") and int(peer.rsplit(":", 1)[1]) in ports:
                pairs.append((int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])))
        for sport, dport in rng.sample(pairs, min(len(pairs), rng.randint(1, 3))):
            killed = subprocess.run(
                [
                    "ss",
                    "-K",
                    "-tn",
                    "state",
                    "established",
                    "sport",
                    "=",
                    f":{sport}",
                    "dport",
                    "=",
                    f":{dport}",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if killed.returncode == 0:
                self.counts.cuts += 1

    # -- the end ----------------------------------------------------------------------

    def stop(self) -> None:
        """No more faults; the disk freed, S3 and every gateway up again."""
        self._stop.set()
        for thread in self._threads:
            thread.join(RESTART_WITHIN * 2)
        if self.tmpfs is not None and self.tmpfs.full:
            self.tmpfs.free()
        self.start_s3()
        for gateway in self.stack.gateways:
            self.restart(gateway)
