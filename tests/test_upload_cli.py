"""`gateway upload` as a technician runs it: the real command in a subprocess, against a
real gateway process, through a small fault-injecting HTTP proxy that records every
request and can hang, fail or alter answers (as tusd's end-to-end tests do)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import read_stored
from tests.server import GatewayProcess

KiB = 1 << 10
MiB = 1 << 20
CHUNK = 256 * KiB
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: int


@dataclass
class Proxy:
    """A threaded HTTP/1.1 proxy in front of a gateway. `hang_after` PATCHes forwarded, the
    next ones wait for `release`; `fail` answers the next PATCHes with these statuses;
    `on_manifest` may rewrite (or act on) a manifest's body."""

    target: str
    seen: list[Seen] = field(default_factory=list)
    hang_after: int | None = None
    fail: list[int] = field(default_factory=list)
    on_manifest: Callable[[bytes], bytes] | None = None
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        proxy = self
        self.client = httpx.Client(base_url=self.target, timeout=60)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True  # the client went away (killed)

            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                with proxy.lock:
                    lower = {k.lower(): v for k, v in headers.items()}
                    proxy.seen.append(Seen(self.command, self.path, lower, len(body)))
                    patches = sum(1 for s in proxy.seen if s.method == "PATCH")
                    status = proxy.fail.pop(0) if self.command == "PATCH" and proxy.fail else 0
                hang = proxy.hang_after is not None and patches > proxy.hang_after
                if self.command == "PATCH" and hang:
                    proxy.release.wait(60)
                    self.close_connection = True
                    return
                if status:
                    self._answer(status, {"Content-Type": "application/problem+json"}, b"{}")
                    return
                response = proxy.client.request(
                    self.command, self.path, headers=headers, content=body
                )
                content = response.content
                if self.path.endswith("/manifest") and proxy.on_manifest is not None:
                    content = proxy.on_manifest(content)
                self._answer(response.status_code, dict(response.headers), content)

            def _answer(self, status: int, headers: dict[str, str], content: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in HOP_BY_HOP | {"content-length", "content-encoding"}:
                        self.send_header(name, value)
                if self.command == "HEAD":
                    lower = {k.lower(): v for k, v in headers.items()}
                    self.send_header("Content-Length", lower.get("content-length", "0"))
                else:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_POST = do_PATCH = do_HEAD = do_DELETE = do_any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def files_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/files/"

    def of(self, method: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == method]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@pytest.fixture
def server(gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    # Relative Location headers, so that every request goes through the proxy.
    return gateway_factory(GATEWAY_PUBLIC_URL="")


@pytest.fixture
def proxy(server: GatewayProcess) -> Iterator[Proxy]:
    p = Proxy(server.url)
    try:
        yield p
    finally:
        p.close()


def _command(url: str, state: Path) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "upload", "--url", url, "--state", str(state)]


def _upload(
    server: GatewayProcess, url: str, state: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    return _run(url, state, *args, token=server.token if token is None else token)


def _run(url: str, state: Path, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_TOKEN": token}
    return subprocess.run(
        [*_command(url, state), "--chunk-size", str(CHUNK), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _results(stdout: str) -> dict[str, tuple[str, str, str]]:
    """path -> (url, sha256, verdict) from the command's closing lines."""
    rows = [line.split("\t") for line in stdout.splitlines()]
    assert all(len(row) == 4 for row in rows), stdout
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def _metadata(header: str) -> dict[str, str]:
    pairs = (item.split(" ") for item in header.split(","))
    return {k: base64.b64decode(v).decode() for k, v in pairs}


def _state(path: Path) -> dict[str, str]:
    uploads: dict[str, str] = json.loads(path.read_text())["uploads"]
    return uploads


def test_a_folder_is_sent_whole_and_every_file_verified(
    server: GatewayProcess, proxy: Proxy, tmp_path: Path
) -> None:
    folder = tmp_path / "series"
    digests = {
        "IM0001.dcm": _write(folder / "IM0001.dcm", 1 * MiB + 17),
        "empty.dcm": _write(folder / "empty.dcm", 0),
        "sub/IM0002.dcm": _write(folder / "sub/IM0002.dcm", 700 * KiB),
        "sub/deeper/IM0003.dcm": _write(folder / "sub/deeper/IM0003.dcm", 2 * MiB),
        "sub/deeper/zero": _write(folder / "sub/deeper/zero", 0),
        "sub/échographie €.dcm": _write(folder / "sub/échographie €.dcm", 10),
    }
    (folder / "outside").symlink_to(tmp_path)  # a link out of the tree: not followed
    state = tmp_path / "state" / "upload.json"

    done = _upload(
        server, proxy.files_url, state, str(folder), "--parallel", "3", "--metadata", "ward=CT-2"
    )

    assert done.returncode == 0, done.stderr
    results = _results(done.stdout)
    assert list(results) == [str(folder / name) for name in sorted(digests)]
    for name, digest in digests.items():
        url, sha, verdict = results[str(folder / name)]
        assert (sha, verdict) == (digest, "verified")
        assert url.startswith(proxy.files_url)
    # The gateway holds exactly these bytes.
    url, _, _ = results[str(folder / "sub/deeper/IM0003.dcm")]
    stored = read_stored(server.data_dir, url.rsplit("/", 1)[1])
    assert hashlib.sha256(stored).hexdigest() == digests["sub/deeper/IM0003.dcm"]
    assert "skipping" in done.stderr and "outside" in done.stderr
    # filename is the path below the folder; several PATCHes per file, each with its SHA-256.
    sent = [_metadata(s.headers["upload-metadata"]) for s in proxy.of("POST")]
    assert {m["filename"] for m in sent} == set(digests)
    assert {m["ward"] for m in sent} == {"CT-2"}
    patches = proxy.of("PATCH")
    assert len(patches) == 5 + 3 + 8 + 1  # ceil(size / CHUNK) of the non-empty files
    for patch in patches:
        assert re.fullmatch(r"sha256 [A-Za-z0-9+/]{43}=", patch.headers["upload-checksum"])
    # Finished uploads leave nothing behind in the owner-only state file; no token in it.
    assert _state(state) == {}
    assert state.stat().st_mode & 0o777 == 0o600
    assert server.token not in state.read_text()
    assert server.token not in done.stdout + done.stderr
    # Without a terminal: one line per finished file on stderr, no bars.
    assert done.stderr.count("gateway upload: done ") == 6
    assert "[#" not in done.stderr


def test_an_interrupted_run_resumes_from_the_state_file(
    server: GatewayProcess, proxy: Proxy, tmp_path: Path
) -> None:
    study = tmp_path / "study.dcm"
    digest = _write(study, 3 * MiB)
    state = tmp_path / "state.json"
    proxy.hang_after = 4  # the fifth PATCH never gets an answer: then the run is killed
    env = {**os.environ, "GATEWAY_TOKEN": server.token}
    first = subprocess.Popen(
        [*_command(proxy.files_url, state), "--chunk-size", str(CHUNK), str(study)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while len(proxy.of("PATCH")) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(proxy.of("PATCH")) == 5
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    entries = _state(state)
    assert len(entries) == 1
    (url,) = entries.values()
    assert server.token not in state.read_text()
    offset = int(httpx.head(url, headers=server.auth).headers["Upload-Offset"])
    assert offset == 4 * CHUNK

    proxy.release.set()
    proxy.hang_after = None
    with proxy.lock:
        proxy.seen.clear()
    again = _upload(server, proxy.files_url, state, str(study))

    assert again.returncode == 0, again.stderr
    assert _results(again.stdout)[str(study)] == (url, digest, "verified")
    assert proxy.of("POST") == []  # the same upload, resumed
    patches = proxy.of("PATCH")
    assert patches[0].headers["upload-offset"] == str(offset)
    assert sum(p.body for p in patches) == 3 * MiB - offset
    assert _state(state) == {}


def test_failed_chunks_are_retried_and_a_conflict_rereads_the_offset(
    server: GatewayProcess, proxy: Proxy, tmp_path: Path
) -> None:
    study = tmp_path / "study.dcm"
    digest = _write(study, 1 * MiB)
    proxy.fail = [503, 409, 423]  # the first three PATCHes

    done = _upload(server, proxy.files_url, tmp_path / "state.json", str(study))

    assert done.returncode == 0, done.stderr
    assert _results(done.stdout)[str(study)][1:] == (digest, "verified")
    assert len(proxy.of("HEAD")) == 3  # the offset asked again before each retry
    assert len(proxy.of("PATCH")) == 3 + 4


def test_a_tampered_manifest_fails(server: GatewayProcess, proxy: Proxy, tmp_path: Path) -> None:
    study = tmp_path / "study.dcm"
    _write(study, 300 * KiB)

    def tamper(token: bytes) -> bytes:
        header, payload, signature = token.split(b".")
        flipped = bytes([signature[0] ^ 1]) + signature[1:]
        return b".".join((header, payload, flipped))

    proxy.on_manifest = tamper
    done = _upload(server, proxy.files_url, tmp_path / "state.json", str(study))

    assert done.returncode == 1
    assert _results(done.stdout)[str(study)][2] == "FAILED"
    assert "the manifest does not verify" in done.stderr


def test_a_file_changed_before_the_check_fails(
    server: GatewayProcess, proxy: Proxy, tmp_path: Path
) -> None:
    study = tmp_path / "study.dcm"
    _write(study, 300 * KiB)

    def change_the_file(token: bytes) -> bytes:
        with open(study, "r+b") as f:
            f.write(b"X")  # same size, other content
        return token

    proxy.on_manifest = change_the_file
    done = _upload(server, proxy.files_url, tmp_path / "state.json", str(study))

    assert done.returncode == 1
    assert _results(done.stdout)[str(study)][2] == "FAILED"
    assert "SHA-256 differs" in done.stderr


def test_a_bad_token_fails_clearly_and_is_never_shown(
    server: GatewayProcess, tmp_path: Path
) -> None:
    folder = tmp_path / "series"
    for i in range(4):
        _write(folder / f"IM{i}.dcm", 10 * KiB)
    bad = "gwt_" + "x" * 43
    state = tmp_path / "state.json"

    for args, token in (((), bad), (("--token", bad), "")):
        done = _upload(server, server.files_url, state, *args, str(folder), token=token)
        assert done.returncode == 1
        assert "401 ERR_UNAUTHORIZED" in done.stderr
        assert "the gateway refused the token" in done.stderr
        assert bad not in done.stdout + done.stderr
    assert not state.exists() or bad not in state.read_text()


NOWHERE = "http://127.0.0.1:9/files/"  # nothing is sent: these fail before any request


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--metadata", "filename=x"), "filename is set for each file"),
        (("--metadata", "bad key=x"), "KEY=VALUE"),
        (("--chunk-size", "0"), "not a size"),
        (("--parallel", "0"), "not a number"),
        (("--jwks", "http://gw.example/.well-known/jwks.json"), "refusing an http:// JWKS"),
        (("--jwks", "/nonexistent/jwks.json"), "no such file"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    study = tmp_path / "study.dcm"
    _write(study, 10)
    done = _run(NOWHERE, tmp_path / "state.json", *args, str(study), token="gwt_x")
    assert done.returncode == 2
    assert message in done.stderr


def test_missing_inputs_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    missing = _run(NOWHERE, state, str(tmp_path / "nothing"), token="gwt_x")
    assert (missing.returncode, "no such file or folder" in missing.stderr) == (2, True)
    no_url = _run("", state, str(tmp_path), token="gwt_x")
    assert (no_url.returncode, "--url" in no_url.stderr) == (2, True)
    no_token = _run(NOWHERE, state, str(tmp_path), token="")
    assert (no_token.returncode, "GATEWAY_TOKEN" in no_token.stderr) == (2, True)


def test_ctrl_c_stops_after_the_chunk_in_flight_and_keeps_the_state(
    server: GatewayProcess, proxy: Proxy, tmp_path: Path
) -> None:
    study = tmp_path / "study.dcm"
    _write(study, 2 * MiB)
    state = tmp_path / "state.json"
    proxy.hang_after = 2
    run = subprocess.Popen(
        [*_command(proxy.files_url, state), "--chunk-size", str(CHUNK), str(study)],
        env={**os.environ, "GATEWAY_TOKEN": server.token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(proxy.of("PATCH")) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        run.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proxy.release.set()  # the hung PATCH fails; the run stops instead of retrying
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, stderr
    assert "run it again to resume" in stderr
    assert len(_state(state)) == 1
    assert "Traceback" not in stderr


def test_manifests_are_checked_against_a_pinned_jwks(
    server: GatewayProcess, tmp_path: Path
) -> None:
    study = tmp_path / "study.dcm"
    digest = _write(study, 100 * KiB)
    state = tmp_path / "state.json"
    own = tmp_path / "jwks.json"
    own.write_bytes(httpx.get(f"{server.url}/.well-known/jwks.json").content)
    done = _upload(server, server.files_url, state, "--jwks", str(own), str(study))
    assert done.returncode == 0, done.stderr
    assert _results(done.stdout)[str(study)][1:] == (digest, "verified")

    other = Ed25519PrivateKey.generate().public_key()
    raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "kid": "someone-else", "x": _b64url(raw)}
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"keys": [jwk]}))
    done = _upload(server, server.files_url, state, "--jwks", str(foreign), str(study))
    assert done.returncode == 1
    assert "the manifest does not verify: unknown kid" in done.stderr


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
