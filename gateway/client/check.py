"""Proving an upload arrived intact: its reader's manifest (GET <upload URL>/manifest), a
JWS checked against the gateway's JWKS, must name this upload and carry the SHA-256 and
size of the local file as it is now."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from gateway import jws, manifest
from gateway.client.http import Backoff, Transient, UploadError, check, problem, send
from gateway.jws import PublicSigningKey

JWKS_PATH = "/.well-known/jwks.json"
BLOCK = 1 << 20


class Mismatch(UploadError):
    """The manifest does not verify, or does not match the local file."""


def default_jwks_url(endpoint: str) -> str:
    return urljoin(endpoint, JWKS_PATH)


class Keys:
    """The gateway's public signing keys from an https:// (or the endpoint's own) URL,
    fetched once, and again if a manifest names a kid that is not in them (a key rotated
    during the run); or from a file, pinned."""

    def __init__(self, source: str, *, pinned: bool) -> None:
        self.source = source
        self.pinned = pinned
        self._keys: dict[str, PublicSigningKey] | None = None
        self._lock = threading.Lock()

    def get(
        self, http: requests.Session, backoff: Backoff, *, refresh: bool = False
    ) -> dict[str, PublicSigningKey]:
        with self._lock:
            if self._keys is None or (refresh and not self.pinned):
                self._keys = self._load(http, backoff)
            return self._keys

    def _load(self, http: requests.Session, backoff: Backoff) -> dict[str, PublicSigningKey]:
        try:
            if self.pinned:
                document = json.loads(Path(self.source).read_text())
            else:
                # The JWKS is public: no credential goes with it.
                def fetch() -> requests.Response:
                    with requests.Session() as public:
                        response = send(public, "GET", self.source)
                    check(response, "fetching the JWKS", lambda status: status == 200)
                    return response

                document = backoff.run(fetch).json()
            return jws.keys_from_jwks(document)
        except (OSError, ValueError, jws.JWSError) as exc:
            raise UploadError(f"cannot use the JWKS {self.source}: {exc}") from None


def fetch_manifest(http: requests.Session, backoff: Backoff, url: str) -> str:
    def fetch() -> str:
        response = send(http, "GET", url.rstrip("/") + "/manifest")
        if response.status_code == 400 and "ERR_UPLOAD_NOT_FINISHED" in problem(response):
            # Completion may trail the last PATCH's answer by a moment.
            raise Transient(f"fetching the manifest: 400 {problem(response)}")
        check(response, "fetching the manifest", lambda status: status == 200)
        return response.text.strip()

    return backoff.run(fetch)


def verified_manifest(
    token: str, keys: Keys, http: requests.Session, backoff: Backoff
) -> dict[str, object]:
    try:
        return manifest.verify(token, keys.get(http, backoff))
    except manifest.ManifestError as exc:
        if "unknown kid" not in str(exc) or keys.pinned:
            raise Mismatch(f"the manifest does not verify: {exc}") from None
    try:
        return manifest.verify(token, keys.get(http, backoff, refresh=True))
    except manifest.ManifestError as exc:
        raise Mismatch(f"the manifest does not verify: {exc}") from None


def compare(signed: dict[str, object], *, url: str, path: Path, size: int) -> str:
    """The local file's digest (hex; SHA-256, or SM3 for a suite-2 upload) if the verified
    manifest describes exactly it."""
    upload = signed.get("upload")
    plaintext = signed.get("plaintext")
    if not isinstance(upload, dict) or not isinstance(plaintext, dict):
        raise Mismatch("the manifest has no upload or plaintext section")
    upload_id = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    if upload.get("id") != upload_id:
        raise Mismatch(f"the manifest is for upload {upload.get('id')!r}, not {upload_id!r}")
    expected = plaintext.get("sha256")
    if not isinstance(expected, str):
        raise Mismatch("the manifest discloses no plaintext SHA-256 (not the reader's view)")
    if upload.get("length") != size or plaintext.get("size") != size:
        raise Mismatch(f"the gateway holds {upload.get('length')} bytes; the file has {size}")
    try:
        suite = manifest.manifest_suite(signed)
    except manifest.ManifestError as exc:
        raise Mismatch(str(exc)) from None
    local = sha256_file(path, suite.hash_name)
    if local != expected:
        raise Mismatch(
            f"{suite.hash_label} differs: the gateway holds {expected}, the local file "
            f"is {local} (was it changed during the upload?)"
        )
    return local


def sha256_file(path: Path, algorithm: str = "sha256") -> str:
    """The file's digest in hex; SHA-256 unless another hashlib name is given."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
