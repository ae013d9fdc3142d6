"""A SoftHSM2 token (a real PKCS#11 module) in a temp dir, with its own config.

SoftHSM reads SOFTHSM2_CONF and lists its tokens once, when a process first loads the
module (C_Initialize): a token made later is invisible to that process. So the tests
share one token per session, and each test isolates itself with its own key labels.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def find_module() -> str | None:
    return next((m for m in MODULE_CANDIDATES if Path(m).exists()), None)


@dataclass(frozen=True)
class SoftHsmToken:
    conf: Path  # the SOFTHSM2_CONF that lists this token's directory
    module: str
    label: str
    pin: str
    pin_file: Path

    def env(self, prefix: str = "") -> dict[str, str]:
        """Settings for a gateway process using this token; `prefix` makes its key labels
        (and so its keys) its own."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "GATEWAY_KEY_PROVIDER": "pkcs11",
            "GATEWAY_PKCS11_MODULE": self.module,
            "GATEWAY_PKCS11_TOKEN": self.label,
            "GATEWAY_PKCS11_PIN_FILE": str(self.pin_file),
            "GATEWAY_PKCS11_KEK_LABEL": f"{prefix}gateway-kek",
            "GATEWAY_PKCS11_SIGNING_LABEL": f"{prefix}gateway-signing",
        }


def make_token(root: Path, label: str = "gateway-test") -> SoftHsmToken:
    """A fresh SoftHSM2 config and token under `root` (made with softhsm2-util)."""
    module = find_module()
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        missing = "SoftHSM2 is not installed (Debian: apt-get install softhsm2)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)  # CI installs it (scripts/test): missing there is a failure
        pytest.skip(missing)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = root / "tokens"
    tokens.mkdir(mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    pin = secrets.token_hex(8)
    pin_file = root / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            secrets.token_hex(8),
            "--pin",
            pin,
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        timeout=60,
    )
    return SoftHsmToken(conf=conf, module=module, label=label, pin=pin, pin_file=pin_file)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """The session's token; SOFTHSM2_CONF points at it in this process while tests run."""
    token = make_token(tmp_path_factory.mktemp("softhsm"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(token.conf))
        yield token
