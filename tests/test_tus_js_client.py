"""tus-js-client, the reference JavaScript tus client, run by Node against a real gateway.

tus-js-client is installed with npm once into `.pytest_cache/` at the repository root
(ignored by git) and reused afterwards. Without `node` on the PATH these tests skip;
with node but a failing npm install they fail, saying why.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import read_stored, sha256
from tests.server import GatewayProcess
from tests.tushttp import upload_id

MiB = 1 << 20
TUS_JS_CLIENT = "4.3.1"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

# Run as `node upload.cjs <endpoint> <token> <file> <chunkSize|Infinity> <mode>`; prints
# one JSON line. Modes: plain; parallel (3 partial uploads and a final concatenation);
# resume (abort after the first chunk, then resume from the upload URL via HEAD).
SCRIPT = r"""
"use strict";
const fs = require("fs");
const tus = require("tus-js-client");

const [endpoint, token, path, chunkArg, mode] = process.argv.slice(2);
const chunkSize = chunkArg === "Infinity" ? Infinity : Number(chunkArg);

function options(extra) {
  return {
    endpoint,
    headers: { Authorization: `Bearer ${token}` },
    chunkSize,
    retryDelays: null, // a failure must show, not be retried away
    metadata: { filename: "scan.dcm", filetype: "application/dicom" },
    ...extra,
  };
}

function run(extra) {
  return new Promise((resolve, reject) => {
    let chunks = 0;
    const upload = new tus.Upload(fs.createReadStream(path), options({
      ...extra,
      onError: reject,
      onChunkComplete: () => {
        chunks += 1;
        if (extra.onChunk) extra.onChunk(upload, chunks, resolve);
      },
      onSuccess: () => resolve({ url: upload.url, chunks, done: true }),
    }));
    upload.start();
  });
}

async function main() {
  if (mode === "plain") return run({});
  if (mode === "parallel") return run({ parallelUploads: 3 });
  if (mode === "resume") {
    const first = await run({
      onChunk: (upload, chunks, resolve) => {
        if (chunks !== 1) return;
        upload.abort().then(() => resolve({ url: upload.url, chunks, done: false }));
      },
    });
    if (first.done) throw new Error("the upload finished before it could be aborted");
    let resumedFrom = null;
    const second = await run({
      uploadUrl: first.url,
      onProgress: (sent) => { if (resumedFrom === null) resumedFrom = sent; },
    });
    return { ...second, firstChunks: first.chunks, resumedFrom };
  }
  throw new Error(`unknown mode ${mode}`);
}

main().then(
  (result) => { console.log(JSON.stringify(result)); },
  (err) => { console.error(String(err && err.stack || err)); process.exit(1); },
);
"""


@pytest.fixture(scope="session")
def tus_js(pytestconfig: pytest.Config) -> Path:
    """A folder with tus-js-client installed and the upload script next to it."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("node is installed but npm is not: cannot install tus-js-client")
    cache = pytestconfig.rootpath / ".pytest_cache" / f"tus-js-client-{TUS_JS_CLIENT}"
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Test processes running side by side (pytest -n) install it once, one at a time.
    with open(cache.parent / f"tus-js-client-{TUS_JS_CLIENT}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _install(npm, cache)
    return cache


def _install(npm: str, cache: Path) -> None:
    if not (cache / "node_modules" / "tus-js-client" / "package.json").is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="tus-js-", dir=cache.parent))
        (scratch / "package.json").write_text('{"private": true}\n')
        try:
            result = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                 f"tus-js-client@{TUS_JS_CLIENT}"],
                cwd=scratch, capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            shutil.rmtree(scratch, ignore_errors=True)
            pytest.fail("`npm install tus-js-client` did not finish in 300 s (no network?)")
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            pytest.fail(
                f"`npm install tus-js-client@{TUS_JS_CLIENT}` failed (is the npm registry "
                f"reachable?):\n{result.stdout}\n{result.stderr}"
            )
        shutil.rmtree(cache, ignore_errors=True)
        scratch.rename(cache)
    if not (cache / "upload.cjs").is_file() or (cache / "upload.cjs").read_text() != SCRIPT:
        (cache / "upload.cjs").write_text(SCRIPT)


def _node_upload(
    tus_js: Path, server: GatewayProcess, path: Path, chunk: str, mode: str = "plain"
) -> dict[str, object]:
    result = subprocess.run(
        ["node", str(tus_js / "upload.cjs"), server.files_url, server.token, str(path), chunk,
         mode],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"tus-js-client failed:\n{result.stderr}\n{server.log()}"
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def _random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _head(server: GatewayProcess, url: str) -> httpx.Response:
    response = httpx.head(url, headers=server.auth, timeout=30)
    assert response.status_code == 200, response.headers
    return response


def _metadata(raw: str) -> dict[str, str]:
    pairs = (item.strip().split(" ") for item in raw.split(","))
    return {p[0]: base64.b64decode(p[1]).decode() for p in pairs}


@pytest.mark.parametrize(
    ("chunk", "chunks"), [(str(5 * MiB), 4), ("Infinity", 1)], ids=["5MiB", "Infinity"]
)
def test_tus_js_client_upload(
    tus_js: Path, gateway: GatewayProcess, tmp_path: Path, chunk: str, chunks: int
) -> None:
    path = tmp_path / "scan.dcm"
    size = 20 * MiB
    digest = _random_file(path, size)

    result = _node_upload(tus_js, gateway, path, chunk)

    assert result["done"] is True and result["chunks"] == chunks, result
    url = str(result["url"])
    head = _head(gateway, url)
    assert head.headers["Upload-Offset"] == str(size)
    assert _metadata(head.headers["Upload-Metadata"]) == {
        "filename": "scan.dcm",
        "filetype": "application/dicom",
    }
    assert sha256(read_stored(gateway.data_dir, upload_id(url))) == digest


def test_tus_js_client_resumes_after_abort(
    tus_js: Path, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """Aborted after its first 5 MiB chunk, a new Upload on the same URL HEADs and resumes."""
    path = tmp_path / "resume.bin"
    size = 12 * MiB + 1
    digest = _random_file(path, size)

    result = _node_upload(tus_js, gateway, path, str(5 * MiB), "resume")

    assert result["done"] is True and result["firstChunks"] == 1, result
    assert isinstance(result["resumedFrom"], int) and result["resumedFrom"] >= 5 * MiB, result
    assert sha256(read_stored(gateway.data_dir, upload_id(str(result["url"])))) == digest


def test_tus_js_client_parallel_uploads_concatenate(
    tus_js: Path, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """parallelUploads: 3 partial uploads at once, then a final concatenation of them."""
    path = tmp_path / "parallel.bin"
    size = 9 * MiB + 7
    digest = _random_file(path, size)

    result = _node_upload(tus_js, gateway, path, str(2 * MiB), "parallel")

    url = str(result["url"])
    head = _head(gateway, url)
    assert head.headers["Upload-Concat"].startswith("final;"), head.headers
    assert head.headers["Upload-Length"] == str(size)
    assert sha256(read_stored(gateway.data_dir, upload_id(url))) == digest


@pytest.mark.parametrize("mode", ["plain", "parallel"])
def test_tus_js_client_follows_a_relative_location(
    tus_js: Path, gateway_factory: Callable[..., GatewayProcess], tmp_path: Path, mode: str
) -> None:
    """Without GATEWAY_PUBLIC_URL, Location is relative: the client resolves it against
    the endpoint (also in the URLs of a final concatenation)."""
    server = gateway_factory(GATEWAY_PUBLIC_URL="")
    path = tmp_path / "relative.bin"
    size = 6 * MiB + 3
    digest = _random_file(path, size)

    result = _node_upload(tus_js, server, path, str(2 * MiB), mode)

    url = str(result["url"])
    assert url.startswith(server.files_url), url
    assert sha256(read_stored(server.data_dir, upload_id(url))) == digest
