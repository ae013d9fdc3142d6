"""One run of `gateway upload`: every file sent (a few at once), its manifest checked, and
one line per file at the end."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from dataclasses import dataclass, field

from gateway.client import check as checks
from gateway.client import http as client_http
from gateway.client.files import LocalFile
from gateway.client.http import Aborted, Backoff, Gone, Refused, UploadError
from gateway.client.progress import Progress
from gateway.client.state import StateError, StateFile, file_key
from gateway.client.uploader import Sender

NOT_SENT = "not sent"


@dataclass
class Job:
    """What the command line asked for, checked."""

    endpoint: str
    token: str
    files: list[tuple[LocalFile, int]]  # with their sizes when the run began
    state: StateFile
    chunk_size: int
    parallel: int
    retries: int
    metadata: dict[str, str] = field(default_factory=dict)
    jwks: str | None = None  # a file, or an https:// URL; None: the endpoint's own


@dataclass
class Outcome:
    file: LocalFile
    url: str = ""
    sha256: str = ""
    error: str = ""


class Run:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.stop = threading.Event()
        self.backoff = Backoff(attempts=job.retries, stop=self.stop)
        self.sender = Sender(
            endpoint=job.endpoint,
            state=job.state,
            backoff=self.backoff,
            chunk_size=job.chunk_size,
            metadata=job.metadata,
            stop=self.stop,
        )
        jwks = job.jwks or checks.default_jwks_url(job.endpoint)
        self.keys = checks.Keys(jwks, pinned=not jwks.startswith(("https://", "http://")))

    def execute(self) -> int:
        files = self.job.files
        total = sum(size for _, size in files)
        progress = Progress(sys.stderr, total=total, files=len(files), tty=sys.stderr.isatty())
        pool = concurrent.futures.ThreadPoolExecutor(self.job.parallel, "upload")
        try:
            futures = [pool.submit(self._one, file, size, progress) for file, size in files]
            outcomes = [future.result() for future in futures]
        except KeyboardInterrupt:
            self.stop.set()
            print(
                "gateway upload: stopping after the chunks in flight (Ctrl-C again: at once); "
                "run it again to resume",
                file=sys.stderr,
            )
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except KeyboardInterrupt:
                # The state file is only ever replaced whole, and the gateway keeps what
                # it acknowledged: nothing is lost by not waiting.
                os._exit(130)
            progress.close()
            return 130
        finally:
            pool.shutdown(wait=True)
        progress.close()
        failed = [o for o in outcomes if o.error]
        for o in outcomes:
            verdict = "FAILED" if o.error else "verified"
            print(f"{o.file.path}\t{o.url or '-'}\t{o.sha256 or '-'}\t{verdict}", flush=True)
        if failed:
            unsent = sum(1 for o in failed if o.error == NOT_SENT)
            print(
                f"gateway upload: {len(failed)} of {len(outcomes)} failed"
                + (f" ({unsent} not sent: the token was refused)" if unsent else ""),
                file=sys.stderr,
            )
            return 1
        return 0

    def _one(self, file: LocalFile, size: int, progress: Progress) -> Outcome:
        outcome = Outcome(file)
        if self.stop.is_set():
            outcome.error = NOT_SENT
            return outcome
        progress.start(file.name, size)
        key = ""
        try:
            if file.path.stat().st_size != size:
                raise UploadError("the file changed size since the run began")
            with client_http.session(self.job.token) as http:
                key = file_key(self.job.endpoint, file.path)
                outcome.url = self.sender.send(
                    file,
                    key=key,
                    size=size,
                    http=http,
                    progress=lambda done: progress.update(file.name, done),
                )
                signed = checks.verified_manifest(
                    checks.fetch_manifest(http, self.backoff, outcome.url),
                    self.keys,
                    http,
                    self.backoff,
                )
                outcome.sha256 = checks.compare(signed, url=outcome.url, path=file.path, size=size)
            self.job.state.drop(key)
        except Refused as exc:
            # The same credential would fail for every other file too.
            self.stop.set()
            outcome.error = f"{exc}: the gateway refused the token"
        except (Gone, checks.Mismatch) as exc:
            # Expired or removed, or complete but not what was sent: a new run starts over.
            if key:
                self.job.state.drop(key)
            outcome.error = str(exc)
        except Aborted:
            outcome.error = "not finished (stopped); run again to resume"
        except (UploadError, StateError, OSError) as exc:
            outcome.error = str(exc)
        progress.finish(file.name, ok=not outcome.error, note=outcome.error)
        return outcome
