"""What a run's users share: the gateways, tokens, sizes, the finished studies and tallies."""

from __future__ import annotations

import itertools
import random
import threading
import weakref
from dataclasses import dataclass, field

from locust.env import Environment

from loadtests.body import Body

MiB = 1 << 20
SCALES = {"small": 1 / 64, "medium": 1 / 8, "full": 1.0}
MIN_CHUNK = 64 << 10


def parse_scale(text: str) -> float:
    value = SCALES[text] if text in SCALES else float(text)
    if not 0 < value <= 1:
        raise ValueError(f"scale must be small, medium, full or a number in (0, 1]: {text!r}")
    return value


@dataclass
class Study:
    """One upload as its client knows it: what a mobile app would keep on disk."""

    body: Body
    path: str  # /files/<id>
    token: str
    acked: int = 0  # the highest Upload-Offset the gateway acknowledged
    sent: int = 0  # the furthest offset ever sent
    sha256: str = ""  # hex, once complete and verified


@dataclass
class Tally:
    uploads: int = 0  # completed: the last PATCH acknowledged the whole length
    verified: int = 0  # completed and read back with the same SHA-256
    abandoned: int = 0  # unfinished when the run stopped (their acknowledged bytes checked)
    cuts: int = 0  # connections cut mid-body on purpose
    kills: int = 0  # app kills followed by a cold resume
    resumes: int = 0  # HEADs after a cut, a kill or a refusal
    waits: int = 0  # 423/429/503 answers with Retry-After, waited out
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0


@dataclass
class Context:
    hosts: list[str]  # http://127.0.0.1:PORT of every gateway
    tokens: list[str]
    scale: float
    seed: int
    tally: Tally = field(default_factory=Tally)
    finished: list[Study] = field(default_factory=list)  # verified, for the readers
    stopping: threading.Event = field(default_factory=threading.Event)
    busy: int = 0  # users inside an upload or a verification
    # Chaos (loadtests/chaos): gateways die and come back, so no answer, a reset or a
    # 503/507 is waited out and retried, not a failure. Every study created is kept.
    chaos: bool = False
    studies: list[Study] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)  # answers waited out, by status
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def next_user(self) -> tuple[int, random.Random, str]:
        """A user's number, its random generator and its token (round robin)."""
        n = next(self._ids)
        return n, random.Random(self.seed * 1_000_003 + n), self.tokens[n % len(self.tokens)]

    def size(self, rng: random.Random, low_mib: float, high_mib: float) -> int:
        return max(1, int(rng.uniform(low_mib, high_mib) * MiB * self.scale))

    def chunk(self, rng: random.Random, low_mib: float, high_mib: float) -> int:
        return max(MIN_CHUNK, int(rng.uniform(low_mib, high_mib) * MiB * self.scale))


_CONTEXTS: weakref.WeakKeyDictionary[Environment, Context] = weakref.WeakKeyDictionary()


def attach(environment: Environment, context: Context) -> None:
    _CONTEXTS[environment] = context


def of(environment: Environment) -> Context:
    return _CONTEXTS[environment]
