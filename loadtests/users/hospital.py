"""A hospital system on a LAN: 200 MiB-2 GiB studies in 8-64 MiB chunks, or in one
PATCH, each body with `Upload-Checksum: sha256`."""

from __future__ import annotations

from locust import between, task

from loadtests.body import Body
from loadtests.throttle import TokenBucket
from loadtests.tus import Failed, TusUser

WHOLE = 0.3  # chance a study goes in one PATCH
DROP = 0.02
LINKS_MBIT = (100, 250, 1000)


class HospitalUser(TusUser):
    weight = 1
    wait_time = between(2, 10)

    @task
    def send_study(self) -> None:
        self.check_stop()
        ctx = self.ctx
        name = f"hospital-{self.number}-{self.rng.getrandbits(32):08x}.dcm"
        body = Body(ctx.seed, name, ctx.size(self.rng, 200, 2048))
        whole = self.rng.random() < WHOLE
        chunk = body.length if whole else ctx.chunk(self.rng, 8, 64)
        bucket = TokenBucket(self.rng.choice(LINKS_MBIT) * 125_000, burst=256 << 10)
        try:
            study = self.create(body)
            sha256 = self.upload(study, chunk, bucket, drop=DROP, checksum=True)
            if sha256 is not None:
                self.verify(study, sha256)
        except Failed:
            pass
