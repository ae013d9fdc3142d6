"""`gateway keys ...` as commands: on a data dir, and against a running gateway under
upload load (rotate, rewrap, rotate-signing, retire) without a single failed request."""

from __future__ import annotations

import io
import json
import os
import random
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import httpx
import pytest

from gateway import keycli, manifest
from gateway.catalog.base import StoredKey
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.jws import keys_from_jwks
from gateway.keys.base import (
    KEY_REFRESH_SECONDS,
    AdministeredProvider,
    KekVersion,
    WrappedKey,
)
from gateway.keys.keyring import LocalKeyring
from tests.fakes import upload_row
from tests.server import GatewayProcess
from tests.softhsm import SoftHsmToken
from tests.tushttp import patch_headers, upload_id


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\n{self.stdout}{self.stderr}"


def keys(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    """`python -m gateway.cli keys ARGS --data-dir DATA_DIR` as a subprocess."""
    command, *rest = args
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", command, "--data-dir", str(data_dir), *rest],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return Run(out.returncode, out.stdout, out.stderr)


def data_keys_under(listing: str, version: int) -> int:
    """The data-key count on `keys list`'s line for KEK `version`."""
    for line in listing.splitlines():
        m = re.match(r"^[* ] +(\d+) +\S+ +(\d+)", line)
        if m and int(m.group(1)) == version:
            return int(m.group(2))
    raise AssertionError(f"no line for version {version} in\n{listing}")


def signing_states(listing: str) -> dict[str, str]:
    """kid -> state from `keys list`'s signing key lines."""
    rows = re.findall(r"^  (ed25519-[\w-]+) +Ed25519 +(\w+)", listing, re.MULTILINE)
    return dict(rows)


def backdate_kek_versions(path: Path) -> None:
    """Make the keyring's KEK versions look old, so rewrap need not wait for gateways."""
    doc = json.loads(path.read_text())
    for entry in doc["keks"]:
        entry["created"] = "2020-01-01T00:00:00+00:00"
    path.write_text(json.dumps(doc))


# -- the commands on a data dir ----------------------------------------------------------


def test_commands_on_a_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init = keys(data, "init")
    assert init.code == 0 and "created KEK" in init.stdout, str(init)
    assert "created signing key" in init.stdout, str(init)
    again = keys(data, "init")
    assert again.code == 0 and "nothing to create" in again.stdout, str(again)

    rotated = keys(data, "rotate")
    assert rotated.code == 0 and "version 2 is current" in rotated.stdout, str(rotated)
    assert f"within {KEY_REFRESH_SECONDS:g} s" in rotated.stdout, str(rotated)
    listing = keys(data, "list")
    assert listing.code == 0, str(listing)
    assert data_keys_under(listing.stdout, 1) == 0 and data_keys_under(listing.stdout, 2) == 0
    assert re.search(r"^\* +2 .*\(current\)$", listing.stdout, re.MULTILINE), listing.stdout
    (old,) = signing_states(listing.stdout)

    new_signing = keys(data, "rotate-signing")
    assert new_signing.code == 0, str(new_signing)
    new = new_signing.stdout.splitlines()[-1]
    assert signing_states(keys(data, "list").stdout) == {old: "published", new: "signing"}

    current = keys(data, "retire", new)
    assert current.code == 2 and "current" in current.stderr, str(current)
    unknown = keys(data, "retire", "ed25519-nothere")
    assert unknown.code == 2 and "no signing key" in unknown.stderr, str(unknown)
    retired = keys(data, "retire", old)
    assert retired.code == 0, str(retired)
    assert signing_states(keys(data, "list").stdout) == {old: "retired", new: "signing"}


def test_usage_and_configuration_errors_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing_kid = keys(data, "retire")
    assert missing_kid.code == 2, str(missing_kid)
    bad_config = keys(data, "list", "--config", str(tmp_path / "none.toml"))
    assert bad_config.code == 2 and "config" in bad_config.stderr, str(bad_config)
    batch = keys(data, "rewrap", "--batch-size", "0")
    assert batch.code == 2 and "batch-size" in batch.stderr, str(batch)
    kek = tmp_path / "kek"
    kek.write_bytes(b"a passphrase")
    kek.chmod(0o600)
    sealed = keys(tmp_path / "sealed", "init", env={"GATEWAY_KEK_FILE": str(kek)})
    assert sealed.code == 0, str(sealed)
    no_kek = keys(tmp_path / "sealed", "list")  # sealed keyring, no GATEWAY_KEK_FILE
    assert no_kek.code == 2 and "GATEWAY_KEK_FILE" in no_kek.stderr, str(no_kek)
    assert "Traceback" not in no_kek.stderr + bad_config.stderr + batch.stderr


def _catalog_with_keys(data: Path, n: int) -> tuple[LocalKeyring, dict[bytes, bytes]]:
    """A catalog with `n` uploads' keys wrapped under the keyring's version 1, and one
    whose wrapped key is garbage; returns the DEKs by dek id."""
    ring = LocalKeyring.open(data / "keyring.json")
    catalog = SQLiteCatalog(data / "catalog.sqlite3")
    deks = {}
    try:
        for i in range(n):
            row = upload_row(f"up{i:03d}")
            deks[row.dek_id] = os.urandom(32)
            catalog.create_upload(
                row, ring.wrap(deks[row.dek_id], upload_id=row.id, dek_id=row.dek_id)
            )
        bad = upload_row("broken")
        catalog.create_upload(bad, WrappedKey(ring.kek_id, 1, os.urandom(60)))
    finally:
        catalog.close()
    return ring, deks


def test_rewrap_counts_and_fails_honestly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys(data, "init")
    ring, deks = _catalog_with_keys(data, 25)
    assert keys(data, "rotate").code == 0
    backdate_kek_versions(data / "keyring.json")
    assert data_keys_under(keys(data, "list").stdout, 1) == 26

    run = keys(data, "rewrap", "--batch-size", "7")
    assert run.code == 1, str(run)  # one key does not unwrap
    assert "rewrapped: 25" in run.stdout and "failed: 1" in run.stdout, str(run)
    assert "skipped: 0" in run.stdout and "left under other versions: 1" in run.stdout
    assert re.search(r"rewrap: \d+/\d+ keys", run.stderr), run.stderr  # progress
    listing = keys(data, "list").stdout
    assert (data_keys_under(listing, 1), data_keys_under(listing, 2)) == (1, 25)

    catalog = SQLiteCatalog(data / "catalog.sqlite3")
    try:
        ring.refresh()
        for i in range(25):
            row = upload_row(f"up{i:03d}")
            wrapped = catalog.wrapped_key(row.dek_id)
            assert wrapped is not None and wrapped.kek_version == 2
            assert ring.unwrap(wrapped, upload_id=row.id, dek_id=row.dek_id) == deks[row.dek_id]
    finally:
        catalog.close()
    rerun = keys(data, "rewrap")
    assert rerun.code == 1 and "rewrapped: 0" in rerun.stdout, str(rerun)


class _Interrupting:
    """A catalog that is interrupted (Ctrl-C) after `after` replacements, or that loses
    every race (a concurrent delete or rewrap) if `after` is negative."""

    def __init__(self, catalog: SQLiteCatalog, after: int) -> None:
        self.catalog = catalog
        self.after = after

    def wrapped_key_counts(self) -> dict[tuple[str, int], int]:
        return self.catalog.wrapped_key_counts()

    def wrapped_keys_not_under(
        self, kek_id: str, kek_version: int, after: bytes = b"", limit: int = 100
    ) -> list[StoredKey]:
        return self.catalog.wrapped_keys_not_under(kek_id, kek_version, after, limit)

    def replace_wrapped_key(self, dek_id: bytes, old: WrappedKey, new: WrappedKey) -> bool:
        if self.after < 0:  # the upload is deleted just before its key is replaced
            rows = self.catalog.wrapped_keys_not_under("", 0, limit=1000)
            self.catalog.terminate(next(r.upload_id for r in rows if r.dek_id == dek_id))
            return self.catalog.replace_wrapped_key(dek_id, old, new)
        if self.after == 0:
            raise KeyboardInterrupt
        self.after -= 1
        return self.catalog.replace_wrapped_key(dek_id, old, new)


def test_rewrap_is_resumable_after_an_interruption(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ring, _ = _catalog_with_keys(data, 20)
    ring.rotate()
    backdate_kek_versions(data / "keyring.json")
    ring.refresh()
    catalog = SQLiteCatalog(data / "catalog.sqlite3")
    try:
        out = io.StringIO()
        code = keycli.rewrap(ring, _Interrupting(catalog, 8), batch=3, out=out, err=io.StringIO())
        assert code == 130 and "rewrapped: 8" in out.getvalue(), out.getvalue()
        assert "run again" in out.getvalue()
        assert catalog.wrapped_key_counts() == {(ring.kek_id, 1): 13, (ring.kek_id, 2): 8}
        out = io.StringIO()
        assert keycli.rewrap(ring, catalog, batch=3, out=out, err=io.StringIO()) == 1
        assert "rewrapped: 12" in out.getvalue() and "failed: 1" in out.getvalue()
        assert catalog.wrapped_key_counts() == {(ring.kek_id, 1): 1, (ring.kek_id, 2): 20}
    finally:
        catalog.close()


def test_keys_deleted_while_rewrapping_are_skipped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ring, _ = _catalog_with_keys(data, 3)
    ring.rotate()
    backdate_kek_versions(data / "keyring.json")
    catalog = SQLiteCatalog(data / "catalog.sqlite3")
    try:
        out = io.StringIO()
        code = keycli.rewrap(ring, _Interrupting(catalog, -1), batch=10, out=out, err=io.StringIO())
        text = out.getvalue()
        assert code == 1, text  # the broken key still fails
        assert "skipped: 3" in text and "rewrapped: 0" in text and "failed: 1" in text, text
        assert "left under other versions: 1" in text, text
        assert catalog.wrapped_key_counts() == {(ring.kek_id, 1): 1}
    finally:
        catalog.close()


class _FakeClock:
    """time.time and time.sleep for keycli: sleeping moves the clock; too many sleeps
    mean rewrap never finishes."""

    def __init__(self) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) > 3:
            raise AssertionError(f"rewrap keeps waiting: {self.sleeps}")
        self.now += seconds


class _Undated:
    """The keyring as a provider that records no creation time (as a PKCS#11 token)."""

    def __init__(self, ring: LocalKeyring) -> None:
        self.ring = ring
        self.kek_id = ring.kek_id

    def __getattr__(self, name: str) -> object:
        return getattr(self.ring, name)

    def kek_versions(self) -> list[KekVersion]:
        return [replace(v, created=None) for v in self.ring.kek_versions()]


def test_rewrap_waits_once_when_the_provider_records_no_creation_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    ring, _ = _catalog_with_keys(data, 4)
    ring.rotate()
    clock = _FakeClock()
    monkeypatch.setattr(keycli, "time", clock)
    catalog = SQLiteCatalog(data / "catalog.sqlite3")
    try:
        out = io.StringIO()
        provider = cast(AdministeredProvider, _Undated(ring))
        assert keycli.rewrap(provider, catalog, batch=10, out=out, err=io.StringIO()) == 1
        assert "rewrapped: 4" in out.getvalue(), out.getvalue()
        # Settled KEY_REFRESH_SECONDS (and a margin) after rewrap first saw the version.
        want = KEY_REFRESH_SECONDS + keycli.SETTLE_MARGIN_SECONDS
        assert len(clock.sleeps) == 1 and clock.sleeps[0] == pytest.approx(want, abs=0.5)
    finally:
        catalog.close()


# -- against a gateway under upload load -------------------------------------------------


@dataclass
class Load:
    """Uploads running in threads until `stop`; every request's failure is recorded."""

    server: GatewayProcess
    stop: threading.Event = field(default_factory=threading.Event)
    done: dict[str, bytes] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set() and not self.failures:
                data = rng.randbytes(rng.randrange(20_000, 300_000))
                uid = self.one(client, rng, data)
                if uid is not None:
                    with self.lock:
                        self.done[uid] = data

    def one(self, client: httpx.Client, rng: random.Random, data: bytes) -> str | None:
        server = self.server
        created = client.post(
            server.files_url, headers={**server.auth, "Upload-Length": str(len(data))}
        )
        if created.status_code != 201:
            self.fail("POST", created)
            return None
        url = created.headers["Location"]
        offset = 0
        while offset < len(data):
            piece = data[offset : offset + rng.randrange(16_000, 120_000)]
            response = client.patch(url, content=piece, headers=patch_headers(server, offset))
            if response.status_code != 204:
                self.fail("PATCH", response)
                return None
            offset += len(piece)
            time.sleep(rng.uniform(0, 0.05))
        return upload_id(url)

    def fail(self, what: str, response: httpx.Response) -> None:
        with self.lock:
            self.failures.append(f"{what} {response.status_code}: {response.text[:200]}")


def jwks_kids(server: GatewayProcess) -> list[str]:
    response = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=30)
    assert response.status_code == 200
    return [k["kid"] for k in response.json()["keys"]]


def wait_for(check: Callable[[], bool], timeout: float = KEY_REFRESH_SECONDS + 2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the gateway did not pick up the change in time"
        time.sleep(0.2)


def cli_verify(server: GatewayProcess, uid: str, jwks: str) -> Run:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "verify",
            "--data-dir",
            str(server.data_dir),
            "--jwks",
            jwks,
            "--",
            uid,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **server.env},
    )
    return Run(out.returncode, out.stdout, out.stderr)


@pytest.mark.parametrize("provider", ["keyring", "pkcs11"])
def test_rotation_under_upload_load(
    gateway_factory: Callable[..., GatewayProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    provider: str,
) -> None:
    """Rotate, rewrap, rotate-signing and retire while uploads run, on the keyring and on a
    PKCS#11 token (SoftHSM2): not one request fails, every upload reads back, and old and
    new manifests verify against the JWKS."""
    env = {"GATEWAY_SEGMENT_SIZE": "65536"}
    if provider == "pkcs11":
        softhsm: SoftHsmToken = request.getfixturevalue("softhsm")
        env |= softhsm.env(f"l{secrets.token_hex(4)}-")
        (tmp_path / "data").mkdir()
        made = keys(tmp_path / "data", "init", env=env)
        assert made.code == 0, str(made)
    server = gateway_factory(**env)
    data = server.data_dir
    (old_kid,) = jwks_kids(server)
    load = Load(server)
    threads = [threading.Thread(target=load.run, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        rotated = keys(data, "rotate", env=env)
        assert rotated.code == 0, str(rotated)
        # At once: the gateway may still wrap under version 1 for a moment; rewrap must
        # wait for that and leave nothing behind.
        rewrapped = keys(data, "rewrap", "--batch-size", "4", env=env)
        assert rewrapped.code == 0, str(rewrapped)
        assert "failed: 0" in rewrapped.stdout, str(rewrapped)
        assert "left under other versions: 0" in rewrapped.stdout, str(rewrapped)
        signing = keys(data, "rotate-signing", env=env)
        assert signing.code == 0, str(signing)
        new_kid = signing.stdout.splitlines()[-1]
        wait_for(lambda: jwks_kids(server) == [new_kid, old_kid])  # the current one first
        time.sleep(1.5)  # more uploads, signed with the new key
    finally:
        load.stop.set()
        for t in threads:
            t.join(120)
    assert not load.failures, load.failures
    assert len(load.done) >= 8, f"only {len(load.done)} uploads finished"
    listing = keys(data, "list", env=env)
    assert data_keys_under(listing.stdout, 1) == 0, listing.stdout
    assert data_keys_under(listing.stdout, 2) >= len(load.done), listing.stdout

    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_bytes(httpx.get(f"{server.url}/.well-known/jwks.json", timeout=30).content)
    published = keys_from_jwks(json.loads(jwks_file.read_text()))
    signed_by: dict[str, list[str]] = {old_kid: [], new_kid: []}
    with httpx.Client(timeout=60, headers=server.auth) as client:
        for uid, data_sent in load.done.items():
            got = client.get(f"{server.files_url}{uid}")
            assert got.status_code == 200 and got.content == data_sent, uid
            token = client.get(f"{server.files_url}{uid}/manifest").text
            doc = manifest.verify(token, published)
            signed_by[doc["signer"]["kid"]].append(uid)  # type: ignore[index]
    assert signed_by[old_kid] and signed_by[new_kid], {k: len(v) for k, v in signed_by.items()}
    for kid in (old_kid, new_kid):
        result = cli_verify(server, signed_by[kid][0], str(jwks_file))
        assert result.code == 0, str(result)
        assert f"signature: Ed25519 by {kid}" in result.stdout, str(result)

    retired = keys(data, "retire", old_kid, env=env)
    assert retired.code == 0, str(retired)
    wait_for(lambda: jwks_kids(server) == [new_kid])
    assert signing_states(keys(data, "list", env=env).stdout) == {
        old_kid: "retired",
        new_kid: "signing",
    }


@pytest.mark.parametrize("scheme", ["http", "ftp"])
def test_verify_refuses_a_jwks_url_without_tls(gateway: GatewayProcess, scheme: str) -> None:
    result = cli_verify(gateway, "A" * 22, f"{scheme}://127.0.0.1:{gateway.port}/x")
    assert result.code == 2, str(result)
    assert "refusing" in result.stderr and "https" in result.stderr, str(result)
