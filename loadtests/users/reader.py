"""A viewer or PACS reading finished studies: Range requests compared with the bytes
sent, manifest fetches, now and then a whole download."""

from __future__ import annotations

import hashlib
import json
import time

from locust import between, task

from loadtests.context import MiB, Study
from loadtests.tus import TusUser, why


class ReaderUser(TusUser):
    weight = 2
    wait_time = between(0.5, 2)

    def pick(self) -> Study | None:
        self.check_stop()
        if not self.ctx.finished:
            time.sleep(1)
            return None
        return self.rng.choice(self.ctx.finished)

    def auth(self, study: Study) -> dict[str, str]:
        return {"Authorization": f"Bearer {study.token}"}

    @task(6)
    def read_range(self) -> None:
        study = self.pick()
        if study is None:
            return
        length = study.body.length
        if self.rng.random() < 0.2:
            size = self.rng.randint(1, min(length, MiB))
            first, spec = length - size, f"bytes=-{size}"
        else:
            first = self.rng.randrange(length)
            size = min(length - first, self.rng.randint(1, max(1, int(4 * MiB * self.ctx.scale))))
            spec = f"bytes={first}-{first + size - 1}"
        with self.client.get(
            self.gateway() + study.path,
            headers={**self.auth(study), "Range": spec},
            name="GET range",
            catch_response=True,
        ) as response:
            if response.status_code != 206:
                response.failure(f"range {spec}: {why(response)}")
            elif response.content != study.body.read(first, size):
                response.failure(f"{study.path} {spec}: the bytes differ from those sent")

    @task(3)
    def read_manifest(self) -> None:
        study = self.pick()
        if study is None:
            return
        with self.client.get(
            self.gateway() + study.path + "/manifest",
            headers={**self.auth(study), "Accept": "application/json"},
            name="GET manifest",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"manifest: {why(response)}")
                return
            payload = json.loads(response.content)
            if payload["plaintext"]["sha256"] != study.sha256:
                response.failure(f"{study.path}: the manifest's SHA-256 differs")

    @task(1)
    def read_whole(self) -> None:
        study = self.pick()
        if study is None:
            return
        digest = hashlib.sha256()
        with self.client.get(
            self.gateway() + study.path,
            headers=self.auth(study),
            name="GET whole",
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"download: {why(response)}")
                return
            for piece in response.iter_content(1 << 20):
                digest.update(piece)
            if digest.hexdigest() != study.sha256:
                response.failure(f"{study.path}: downloaded bytes differ from those sent")
