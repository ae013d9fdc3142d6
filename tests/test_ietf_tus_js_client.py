"""tus-js-client in its IETF modes, run by Node against a real gateway.

`protocol: 'ietf-draft-03'` sends interop version 5, `'ietf-draft-05'` version 6 (what
iOS 18.1's URLSession speaks). Installed and skipped as in test_tus_js_client.py, whose
fixture installs it; the script here is its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import read_stored, sha256
from tests.server import GatewayProcess
from tests.test_tus_js_client import pytestmark as node_required
from tests.test_tus_js_client import tus_js  # noqa: F401 - the installed client, a fixture
from tests.tushttp import upload_id

MiB = 1 << 20
PROTOCOLS = {"ietf-draft-03": 5, "ietf-draft-05": 6}
pytestmark = node_required

# Run as `node ietf.cjs <endpoint> <token> <file> <chunkSize|Infinity> <protocol> <mode>`;
# prints one JSON line. Modes: plain; with-creation (the first chunk in the POST);
# resume (stop after the first chunk, then resume from the URL via HEAD); interrupt
# (a single-request PATCH whose connection is cut midway, then resume via HEAD).
SCRIPT = r"""
"use strict";
const fs = require("fs");
const tus = require("tus-js-client");

const [endpoint, token, path, chunkArg, protocol, mode] = process.argv.slice(2);
const chunkSize = chunkArg === "Infinity" ? Infinity : Number(chunkArg);
const size = fs.statSync(path).size;

let last = null; // the latest Upload, for its URL after a failure

function run(extra) {
  return new Promise((resolve, reject) => {
    let chunks = 0;
    let firstProgress = null;
    const upload = new tus.Upload(fs.createReadStream(path), {
      endpoint,
      protocol,
      headers: { Authorization: `Bearer ${token}` },
      chunkSize,
      retryDelays: null, // a failure must show, not be retried away
      metadata: { filename: "scan.dcm", filetype: "application/dicom" },
      ...extra,
      onError: reject,
      onProgress: (sent) => {
        if (firstProgress === null) firstProgress = sent;
      },
      onChunkComplete: () => {
        chunks += 1;
        if (extra.onChunk) extra.onChunk(upload, chunks, resolve);
      },
      onSuccess: () => resolve({ url: upload.url, chunks, done: true, firstProgress }),
    });
    last = upload;
    upload.start();
  });
}

function stopped(upload, resolve, why) {
  upload.abort().then(() => resolve({ url: upload.url, done: false, why }));
}

async function resumed(first) {
  if (first.done) throw new Error("the upload finished before it could be stopped");
  const second = await run({ uploadUrl: first.url });
  return { ...second, resumedFrom: second.firstProgress };
}

async function main() {
  if (mode === "plain") return run({});
  if (mode === "with-creation") return run({ uploadDataDuringCreation: true });
  if (mode === "resume") {
    return resumed(await run({
      onChunk: (upload, chunks, resolve) => {
        if (chunks === 1) stopped(upload, resolve, "chunk");
      },
    }));
  }
  if (mode === "interrupt") {
    // The connection is cut midway by the proxy in front of the gateway.
    const first = await run({}).then(
      () => ({ done: true }),
      (err) => ({ url: last.url, done: false, why: String(err) }),
    );
    return resumed(first);
  }
  throw new Error(`unknown mode ${mode}`);
}

main().then(
  (result) => { console.log(JSON.stringify(result)); },
  (err) => { console.error(String(err && err.stack || err)); process.exit(1); },
);
"""


class CuttingProxy:
    """A TCP proxy in front of the gateway that cuts the first connection to carry more
    than `cut` bytes from its client, both ways at once, as a dropped network would."""

    def __init__(self, target_port: int, cut: int) -> None:
        self.target_port = target_port
        self.cut = cut
        self.cut_done = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                pair = (client, upstream)
                threading.Thread(target=self._pump, args=(*pair, pair, True), daemon=True).start()
                threading.Thread(
                    target=self._pump, args=(upstream, client, pair, False), daemon=True
                ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, ...], up: bool
    ) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if up and not self.cut_done.is_set() and sent + len(data) > self.cut:
                    dst.sendall(data[: self.cut - sent])
                    self.cut_done.set()
                    break
                sent += len(data)
                dst.sendall(data)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


def _node_upload(
    client_dir: Path,
    server: GatewayProcess,
    path: Path,
    chunk: str,
    protocol: str,
    mode: str,
    endpoint: str = "",
) -> dict[str, object]:
    script = client_dir / "ietf.cjs"
    script.write_text(SCRIPT)
    endpoint = endpoint or server.files_url
    result = subprocess.run(
        ["node", str(script), endpoint, server.token, str(path), chunk, protocol, mode],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"tus-js-client failed:\n{result.stderr}\n{server.log()}"
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def _random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _ietf_head(server: GatewayProcess, url: str, protocol: str) -> httpx.Response:
    headers = {
        "Authorization": f"Bearer {server.token}",
        "Upload-Draft-Interop-Version": str(PROTOCOLS[protocol]),
    }
    response = httpx.head(url, headers=headers, timeout=30)
    assert response.status_code == 204, response.headers
    return response


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("chunk", "mode", "requests"),
    [(str(4 * MiB), "plain", 3), ("Infinity", "plain", 1), (str(4 * MiB), "with-creation", 3)],
    ids=["4MiB", "Infinity", "with-creation"],
)
def test_tus_js_client_uploads(
    tus_js: Path,  # noqa: F811
    gateway: GatewayProcess,
    tmp_path: Path,
    protocol: str,
    chunk: str,
    mode: str,
    requests: int,
) -> None:
    path = tmp_path / "scan.dcm"
    size = 10 * MiB + 5
    digest = _random_file(path, size)

    result = _node_upload(tus_js, gateway, path, chunk, protocol, mode)

    assert result["done"] is True and result["chunks"] == requests, result
    url = str(result["url"])
    head = _ietf_head(gateway, url, protocol)
    assert head.headers["Upload-Offset"] == str(size)
    assert head.headers["Upload-Complete"] == "?1"
    assert sha256(read_stored(gateway.data_dir, upload_id(url))) == digest
    # tus sees the metadata the client sent.
    tus_head = httpx.head(url, headers=gateway.auth, timeout=30)
    assert "filename c2Nhbi5kY20=" in tus_head.headers["Upload-Metadata"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tus_js_client_resumes_a_stopped_upload(
    tus_js: Path,  # noqa: F811
    gateway: GatewayProcess,
    tmp_path: Path,
    protocol: str,
) -> None:
    """Stopped after its first chunk, a new Upload on the same URL retrieves the offset
    (HEAD) and appends the rest."""
    path = tmp_path / "resume.bin"
    size = 10 * MiB + 1
    digest = _random_file(path, size)

    result = _node_upload(tus_js, gateway, path, str(4 * MiB), protocol, "resume")

    assert result["done"] is True and result["resumedFrom"] == 4 * MiB, result
    assert sha256(read_stored(gateway.data_dir, upload_id(str(result["url"])))) == digest


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tus_js_client_resumes_after_a_dropped_connection(
    tus_js: Path,  # noqa: F811
    gateway_factory: Callable[..., GatewayProcess],
    tmp_path: Path,
    protocol: str,
) -> None:
    """The whole file in one PATCH, whose connection drops after 4 MiB: what arrived is
    kept, and a new Upload on the URL resumes from there."""
    server = gateway_factory(GATEWAY_PUBLIC_URL="")  # relative Location: via the proxy
    path = tmp_path / "dropped.bin"
    size = 10 * MiB + 3
    digest = _random_file(path, size)
    proxy = CuttingProxy(server.port, 4 * MiB)
    try:
        endpoint = f"http://127.0.0.1:{proxy.port}/files/"
        result = _node_upload(tus_js, server, path, "Infinity", protocol, "interrupt", endpoint)
    finally:
        proxy.close()

    assert proxy.cut_done.is_set()
    assert result["done"] is True, result
    resumed_from = result["resumedFrom"]
    assert isinstance(resumed_from, int) and 0 < resumed_from < 4 * MiB, result
    assert sha256(read_stored(server.data_dir, upload_id(str(result["url"])))) == digest
