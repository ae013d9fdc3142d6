"""A phone on a bad network: 20-300 MiB studies in 1-5 MiB chunks at 2-40 Mbit/s, the
connection cut mid-chunk now and then (resume from HEAD), sometimes with the app killed
(a cold start from the stored upload URL)."""

from __future__ import annotations

from locust import between, task

from loadtests.body import Body
from loadtests.throttle import TokenBucket
from loadtests.tus import Failed, TusUser

DROP = 0.08  # chance a chunk's connection is cut mid-body
KILL = 0.25  # chance a cut is an app kill with a cold resume
LINKS_MBIT = (2, 5, 10, 20, 40)


class MobileUser(TusUser):
    weight = 6
    wait_time = between(1, 5)  # the user between two studies

    @task
    def send_study(self) -> None:
        self.check_stop()
        ctx = self.ctx
        name = f"mobile-{self.number}-{ctx.tally.uploads}-{self.rng.getrandbits(32):08x}.dcm"
        body = Body(ctx.seed, name, ctx.size(self.rng, 20, 300))
        chunk = ctx.chunk(self.rng, 1, 5)
        bucket = TokenBucket(self.rng.choice(LINKS_MBIT) * 125_000)
        try:
            study = self.create(body)
            sha256 = self.upload(study, chunk, bucket, drop=DROP, kill=KILL)
            if sha256 is not None:
                self.verify(study, sha256)
        except Failed:
            pass  # recorded; the next study starts afresh
