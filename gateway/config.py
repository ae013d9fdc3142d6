"""Settings: one strict object, read once from CLI options and the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("gateway-data")
    base_path: str = "/files/"
    max_size: int = 64 * GiB  # advertised as Tus-Max-Size
    segment_size: int = 8 * MiB  # plaintext bytes per sealed record
    upload_ttl: float = 7 * 24 * 3600.0  # unfinished uploads expire after this idle time
    metadata_max_bytes: int = 4096
    lease_ttl: float = 30.0  # a crashed holder's lease dies after this
    acquire_timeout: float = 10.0  # how long a request waits for a busy upload
    network_timeout: float = 60.0  # a PATCH body that stalls this long is cut and saved
    io_threads: int = 8  # sealing + storage workers shared by all uploads
    pipeline_depth: int = 2  # sealed segments in flight per upload beyond the one filling
    reap_interval: float = 300.0
    log_level: str = "info"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite3"

    @property
    def keyring_path(self) -> Path:
        return self.data_dir / "keyring.json"

    def validate(self) -> Settings:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, got {self.port}")
        if not (self.base_path.startswith("/") and self.base_path.endswith("/")):
            raise ConfigError("base_path must start and end with '/'")
        if not 64 * 1024 <= self.segment_size <= GiB:
            raise ConfigError("segment_size must be between 64 KiB and 1 GiB")
        if self.max_size < 0:
            raise ConfigError("max_size must be >= 0")
        if self.pipeline_depth < 1 or self.io_threads < 1:
            raise ConfigError("pipeline_depth and io_threads must be >= 1")
        return self


# Settings that can come from the environment, as GATEWAY_<NAME>.
_ENV_FIELDS = {f.name for f in fields(Settings)}


def _coerce(name: str, raw: str) -> object:
    default = getattr(Settings, name)
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(f"GATEWAY_{name.upper()}: {raw!r} is not a valid value") from exc
    return raw


def load_settings(
    overrides: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then GATEWAY_* variables, then explicit overrides (CLI options)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name in _ENV_FIELDS:
        raw = env.get(f"GATEWAY_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return Settings(**values).validate()  # type: ignore[arg-type]
