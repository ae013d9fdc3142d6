"""docs/CLIENTS.md stays true: its snippets, read out of the file, run against a gateway.

Each code block after a `<!-- snippet: NAME -->` marker is run as written where this
machine can run it: curl and `gateway upload` with bash, tuspy with Python,
tus-js-client and Uppy with Node (installed with npm once into `.pytest_cache/`, as
tests/test_tus_js_client.py does). What cannot run here is replayed request by
request: URLSession's (iOS 17 and 18) over a socket, tus-java-client's through the
JDK's HttpURLConnection (the library is not in the package registries this project
uses; scripts/check-android-snippet compiles and runs the Android snippet against a
gateway given its source). The gateway sends 104s (GATEWAY_IETF_SEND_104), so every
client is shown to cope with them.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from gateway.ietf import headers as fields
from gateway.ietf.versions import VERSIONS
from tests.conftest import read_stored
from tests.server import GatewayProcess
from tests.tushttp import upload_id

SERVER_ENV = {"GATEWAY_IETF_SEND_104": "true"}
DOC = Path(__file__).resolve().parent.parent / "docs" / "CLIENTS.md"
_SNIPPET = re.compile(
    r"<!-- snippet: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.DOTALL
)
KiB = 1 << 10
MiB = 1 << 20
NPM_PACKAGES = ("tus-js-client@4.3.1", "@uppy/core@6.3.1", "@uppy/tus@6.0.0")


def snippets() -> dict[str, str]:
    found: dict[str, str] = {}
    for match in _SNIPPET.finditer(DOC.read_text()):
        assert match["name"] not in found, f"two snippets named {match['name']}"
        found[match["name"]] = match["code"] + "\n"
    return found


def snippet(name: str) -> str:
    return snippets()[name]


def test_every_snippet_is_run_here() -> None:
    """A snippet added to the doc needs a test here (and a marker the pattern finds)."""
    assert set(snippets()) == {
        "swift-urlsession",
        "android-java",
        "uppy",
        "tus-js-client",
        "tuspy",
        "gateway-upload",
        "curl-tus-create",
        "curl-tus-send",
        "curl-ietf-create",
        "curl-ietf-resume",
    }
    markers = re.findall(r"^<!-- snippet:", DOC.read_text(), re.MULTILINE)
    assert len(markers) == len(snippets()), "a marker not right above its code block"


# -- helpers ---------------------------------------------------------------------------


def _file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _stored(server: GatewayProcess, url: str) -> bytes:
    return read_stored(server.data_dir, upload_id(url))


def _filename(server: GatewayProcess, url: str) -> str:
    head = httpx.head(url, headers=server.auth, timeout=30)
    assert head.status_code == 200, head.headers
    pairs = dict(item.strip().split(" ") for item in head.headers["Upload-Metadata"].split(","))
    return base64.b64decode(pairs["filename"]).decode()


def _bash(
    script: str, cwd: Path, env: dict[str, str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + script],
        cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result


def _env(server: GatewayProcess, **more: str) -> dict[str, str]:
    return {"ENDPOINT": server.files_url, "TOKEN": server.token, **more}


@pytest.fixture
def curl_home(tmp_path: Path) -> Path:
    """An empty CURL_HOME: no ~/.curlrc changes what the snippets do."""
    home = tmp_path / "curl-home"
    home.mkdir()
    (home / ".curlrc").write_text("")
    return home


# -- curl ------------------------------------------------------------------------------


def test_curl_tus(server: GatewayProcess, tmp_path: Path, curl_home: Path) -> None:
    data = _file(tmp_path / "scan.dcm", 3 * MiB + 5)
    env = _env(server, FILE="scan.dcm", CURL_HOME=str(curl_home))
    script = snippet("curl-tus-create") + snippet("curl-tus-send") + 'echo "$URL"\n'
    url = _bash(script, tmp_path, env).stdout.strip().splitlines()[-1]
    assert _stored(server, url) == data
    assert _filename(server, url) == "scan.dcm"


def test_curl_tus_resumes(server: GatewayProcess, tmp_path: Path, curl_home: Path) -> None:
    data = _file(tmp_path / "scan.dcm", 2 * MiB + 3)
    env = _env(server, FILE="scan.dcm", CURL_HOME=str(curl_home))
    url = _bash(snippet("curl-tus-create") + 'echo "$URL"\n', tmp_path, env).stdout.strip()
    part = httpx.patch(
        url,
        headers={
            **server.auth,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        content=data[: 700 * KiB],
        timeout=30,
    )
    assert part.status_code == 204, part.text
    _bash(snippet("curl-tus-send"), tmp_path, {**env, "URL": url})
    assert _stored(server, url) == data


def test_curl_ietf_whole_file(server: GatewayProcess, tmp_path: Path, curl_home: Path) -> None:
    data = _file(tmp_path / "scan.dcm", 3 * MiB + 1)
    env = _env(server, FILE="scan.dcm", CURL_HOME=str(curl_home))
    url = _bash(snippet("curl-ietf-create") + 'echo "$URL"\n', tmp_path, env).stdout.strip()
    assert _stored(server, url) == data
    # The 104 and the 201 both name the upload.
    assert (tmp_path / "headers.txt").read_text().count("104 Upload Resumption Supported") == 1


def test_curl_ietf_cut_off_then_resumed(
    server: GatewayProcess, tmp_path: Path, curl_home: Path
) -> None:
    """The creation is cut off (curl gives up after 2 s at 256 KiB/s, set in a .curlrc);
    the URL the 104 gave is in headers.txt and the resume snippet finishes the upload."""
    data = _file(tmp_path / "scan.dcm", 4 * MiB)
    slow = tmp_path / "slow-curl"
    slow.mkdir()
    (slow / ".curlrc").write_text("limit-rate = 256K\nmax-time = 2\n")
    cut = _bash(
        snippet("curl-ietf-create") + 'echo "$URL"\n',
        tmp_path,
        _env(server, FILE="scan.dcm", CURL_HOME=str(slow)),
        check=False,
    )
    assert cut.returncode == 28, cut.stderr  # curl: operation timed out
    url = _location(tmp_path / "headers.txt")
    time.sleep(0.5)  # the gateway notices the close and saves what came
    env = _env(server, FILE="scan.dcm", CURL_HOME=str(curl_home), URL=url)
    _bash(snippet("curl-ietf-resume"), tmp_path, env)
    assert _stored(server, url) == data


def _location(headers: Path) -> str:
    text = headers.read_text()
    assert "104 Upload Resumption Supported" in text, text
    assert " 201 " not in text, text
    found = re.search(r"^location: (\S+)", text, re.MULTILINE | re.IGNORECASE)
    assert found is not None, text
    return found[1]


# -- Python ----------------------------------------------------------------------------


def test_tuspy(server: GatewayProcess, tmp_path: Path) -> None:
    """Run twice: the second run finds the upload in its URL storage and sends nothing."""
    data = _file(tmp_path / "scan.dcm", 20 * MiB + 11)
    (tmp_path / "upload.py").write_text(snippet("tuspy"))
    urls = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "upload.py"],
            cwd=tmp_path, env={**os.environ, **_env(server)}, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        urls.append(result.stdout.strip())
    assert urls[0] == urls[1]
    assert _stored(server, urls[0]) == data
    assert _filename(server, urls[0]) == "scan.dcm"


def test_gateway_upload(server: GatewayProcess, tmp_path: Path) -> None:
    study = tmp_path / "study-1234"
    study.mkdir()
    files = {f"IM{n:04d}.dcm": _file(study / f"IM{n:04d}.dcm", 300 * KiB + n) for n in range(3)}
    gateway = Path(sys.executable).parent / "gateway"
    env = _env(server, PATH=f"{gateway.parent}:{os.environ['PATH']}")
    result = _bash(snippet("gateway-upload"), tmp_path, env)
    # One line per file: path, upload URL, SHA-256, and the manifest check's verdict.
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert sorted(Path(path).name for path, *_ in lines) == sorted(files), result.stdout
    for path, url, _, verdict in lines:
        assert verdict == "verified"
        assert _stored(server, url) == files[Path(path).name]


# -- Node: tus-js-client and Uppy -------------------------------------------------------

RUNNER = r"""
import fs from "node:fs";

const [which, endpoint, token, path, protocol] = process.argv.slice(2);
// Node's tus-js-client reads Buffers, not Files: the bytes, with a File's name and type.
const file = Object.assign(fs.readFileSync(path), { name: "scan.dcm", type: "application/dicom" });
let url;
let progress = 0;
if (which === "tus-js-client") {
  const { uploadFile } = await import("./tus-js-client.mjs");
  const onProgress = (sent) => { progress = sent; };
  url = await uploadFile(file, { endpoint, token, protocol, onProgress });
} else {
  const { makeUppy } = await import("./uppy.mjs");
  const uppy = makeUppy({ endpoint, token });
  uppy.on("upload-progress", (_, p) => { progress = p.bytesUploaded; });
  uppy.addFile({ name: file.name, type: file.type, data: file });
  const { successful, failed } = await uppy.upload();
  if (failed.length > 0) throw failed[0].error;
  url = successful[0].uploadURL;
}
console.log(JSON.stringify({ url, progress }));
"""


@pytest.fixture(scope="session")
def node_modules(pytestconfig: pytest.Config) -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("node is installed but npm is not")
    tag = "-".join(p.replace("/", "+").replace("@", "") for p in NPM_PACKAGES)
    cache = pytestconfig.rootpath / ".pytest_cache" / f"clients-doc-{tag}"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f"clients-doc-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / "node_modules" / "@uppy" / "tus" / "package.json").is_file():
            scratch = Path(tempfile.mkdtemp(prefix="clients-doc-", dir=cache.parent))
            (scratch / "package.json").write_text('{"private": true}\n')
            try:
                result = subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                     *NPM_PACKAGES],
                    cwd=scratch, capture_output=True, text=True, timeout=300, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                shutil.rmtree(scratch, ignore_errors=True)
                pytest.fail("`npm install` did not finish in 300 s (no network?)")
            if result.returncode != 0:
                shutil.rmtree(scratch, ignore_errors=True)
                pytest.fail(f"`npm install {' '.join(NPM_PACKAGES)}` failed:\n{result.stderr}")
            shutil.rmtree(cache, ignore_errors=True)
            scratch.rename(cache)
    return cache / "node_modules"


def _node(
    node_modules: Path, tmp_path: Path, server: GatewayProcess, which: str, protocol: str = ""
) -> dict[str, object]:
    work = tmp_path / "node"
    work.mkdir()
    (work / "node_modules").symlink_to(node_modules)
    (work / "tus-js-client.mjs").write_text(snippet("tus-js-client"))
    (work / "uppy.mjs").write_text(snippet("uppy"))
    (work / "run.mjs").write_text(RUNNER)
    path = tmp_path / "scan.dcm"
    result = subprocess.run(
        ["node", "run.mjs", which, server.files_url, server.token, str(path), protocol],
        cwd=work, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{which} failed:\n{result.stderr}\n{server.log()}"
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("protocol", ["tus-v1", "ietf-draft-05", "ietf-draft-03"])
def test_tus_js_client(
    node_modules: Path, server: GatewayProcess, tmp_path: Path, protocol: str
) -> None:
    data = _file(tmp_path / "scan.dcm", 18 * MiB + 3)  # three 8 MiB chunks
    out = _node(node_modules, tmp_path, server, "tus-js-client", protocol)
    url = str(out["url"])
    assert out["progress"] == len(data)
    assert _stored(server, url) == data
    assert _filename(server, url) == "scan.dcm"


def test_uppy(node_modules: Path, server: GatewayProcess, tmp_path: Path) -> None:
    data = _file(tmp_path / "scan.dcm", 10 * MiB + 3)
    out = _node(node_modules, tmp_path, server, "uppy")
    url = str(out["url"])
    assert out["progress"] == len(data)
    assert _stored(server, url) == data
    assert _filename(server, url) == "scan.dcm"


# -- Android: tus-java-client ----------------------------------------------------------

# What tus-java-client (0.5) sends, through the same JDK class (HttpURLConnection): the
# creation; appends as POST + X-HTTP-Method-Override with Expect: 100-continue and a
# chunked body; after an interruption, HEAD and the appends from its offset.
JDK_REPLAY = r"""
import java.io.*;
import java.net.*;
import java.nio.file.*;
import java.util.Base64;

public class Replay {
    static final int PAYLOAD = 8 * 1024 * 1024;

    static HttpURLConnection open(URL url, String token) throws IOException {
        HttpURLConnection c = (HttpURLConnection) url.openConnection();
        c.setInstanceFollowRedirects(false);
        c.setRequestProperty("Tus-Resumable", "1.0.0");
        c.setRequestProperty("Authorization", "Bearer " + token);
        return c;
    }

    static long append(URL url, String token, byte[] data, long offset, long end)
            throws IOException {
        HttpURLConnection c = open(url, token);
        c.setRequestProperty("Upload-Offset", Long.toString(offset));
        c.setRequestProperty("Content-Type", "application/offset+octet-stream");
        c.setRequestProperty("Expect", "100-continue");
        try {
            c.setRequestMethod("PATCH");
        } catch (ProtocolException e) {
            c.setRequestMethod("POST");
            c.setRequestProperty("X-HTTP-Method-Override", "PATCH");
        }
        c.setDoOutput(true);
        c.setChunkedStreamingMode(0);
        try (OutputStream out = c.getOutputStream()) {
            for (long at = offset; at < end; at += 1024 * 1024) {
                out.write(data, (int) at, (int) Math.min(1024 * 1024, end - at));
            }
        }
        if (c.getResponseCode() != 204) throw new IOException("append: " + c.getResponseCode());
        return Long.parseLong(c.getHeaderField("Upload-Offset"));
    }

    public static void main(String[] args) throws Exception {
        URL endpoint = new URL(args[0]);
        String token = args[1];
        byte[] data = Files.readAllBytes(Paths.get(args[2]));
        long cut = Long.parseLong(args[3]);

        HttpURLConnection c = open(endpoint, token);
        c.setRequestMethod("POST");
        String name = Base64.getEncoder().encodeToString("scan.dcm".getBytes("UTF-8"));
        c.setRequestProperty("Upload-Metadata", "filename " + name);
        c.addRequestProperty("Upload-Length", Long.toString(data.length));
        c.connect();
        if (c.getResponseCode() != 201) throw new IOException("create: " + c.getResponseCode());
        URL url = new URL(c.getURL(), c.getHeaderField("Location"));

        long offset = append(url, token, data, 0, cut);  // then the app was killed
        c = open(url, token);
        c.setRequestMethod("HEAD");
        if (c.getResponseCode() != 200) throw new IOException("head: " + c.getResponseCode());
        offset = Long.parseLong(c.getHeaderField("Upload-Offset"));
        while (offset < data.length) {
            offset = append(url, token, data, offset, Math.min(data.length, offset + PAYLOAD));
        }
        System.out.println(url);
    }
}
"""


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        pytest.skip("java is not installed")
    return java


def test_android_request_sequence(server: GatewayProcess, tmp_path: Path) -> None:
    java = _java()
    data = _file(tmp_path / "scan.dcm", 20 * MiB + 9)
    (tmp_path / "Replay.java").write_text(JDK_REPLAY)
    result = subprocess.run(
        [java, "Replay.java", server.files_url, server.token, "scan.dcm", str(3 * MiB + 1)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stderr}\n{server.log()}"
    url = result.stdout.strip()
    assert _stored(server, url) == data
    assert _filename(server, url) == "scan.dcm"


# -- iOS: URLSession -------------------------------------------------------------------

# The headers URLSession adds to an upload task's request besides the app's own.
APPLE = {
    "Accept": "*/*",
    "Accept-Language": "en-GB,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br",
    "User-Agent": "Viewer/1 CFNetwork/1490.0.4 Darwin/23.2.0",
}


def _heads(sock: socket.socket, buf: bytes) -> tuple[int, dict[str, str], bytes]:
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(65536)
        assert piece, f"closed before a response: {buf!r}"
        buf += piece
    top, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split(" ")[1]), headers, rest


@pytest.mark.parametrize("number", [3, 5, 6], ids=["iOS17", "iOS18.0", "iOS18.1"])
def test_urlsession_request_sequence(server: GatewayProcess, number: int) -> None:
    """URLSession's resumable upload: the POST carrying the file gets a 104 with the
    upload's URL, the connection drops midway; on resume HEAD then PATCH the rest."""
    version = VERSIONS[number]
    data = os.urandom(2 * MiB + 7)
    cut = 900 * KiB
    head = {
        "Host": f"127.0.0.1:{server.port}",
        "Content-Type": "application/dicom",
        "Authorization": f"Bearer {server.token}",
        **APPLE,
        fields.INTEROP_HEADER: str(number),
        **fields.complete_field(version, True),  # 3: Upload-Incomplete: ?0
        "Content-Length": str(len(data)),
    }
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        request = "POST /files/ HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
        sock.sendall(request.encode("latin-1") + b"\r\n")
        status, got, _ = _heads(sock, b"")
        assert status == 104  # URLSession resumes only after this
        assert got["upload-draft-interop-version"] == str(number)
        url = got["location"]
        sock.sendall(data[:cut])
        time.sleep(0.2)
    auth = {"Authorization": f"Bearer {server.token}", **APPLE, fields.INTEROP_HEADER: str(number)}
    with httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 10
        while True:
            offered = client.head(url, headers=auth)
            assert offered.status_code == 204, offered.text
            offset = int(offered.headers["Upload-Offset"])
            if offset == cut or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert offset == cut
        extra = {"Upload-Offset": str(offset), **fields.complete_field(version, True)}
        if version.partial_upload_type:
            extra["Content-Type"] = fields.PARTIAL_UPLOAD
        done = client.patch(url, headers={**auth, **extra}, content=data[offset:])
    assert done.status_code == 201, done.text
    assert fields.parse_complete(version, [done.headers[fields.complete_field_name(version)]])
    assert _stored(server, url) == data
