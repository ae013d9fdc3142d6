"""Settings: defaults, a TOML file, GATEWAY_* variables and options, in that order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Settings, export_environment, load_settings

MiB = 1024 * 1024


def test_the_defaults_are_valid() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.store == "" and not settings.uses_s3
    assert settings.receive_budget == 64 * MiB


def test_later_sources_win(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('port = 9001\nmax_writers = 7\nlog_format = "text"\n')
    env = {"GATEWAY_PORT": "9002", "GATEWAY_MAX_WRITERS": ""}  # empty: not set
    settings = load_settings({"port": 9003, "log_level": None}, env, config_file=config)
    assert settings.port == 9003  # the option over the variable over the file
    assert settings.max_writers == 7  # an empty variable does not override
    assert settings.log_format == "text"
    assert settings.log_level == "info"  # an option left out (None) keeps the default


def test_variables_are_read_as_their_setting_s_type() -> None:
    settings = load_settings(
        environ={
            "GATEWAY_RECEIVE_BUDGET": str(2 * MiB),
            "GATEWAY_NETWORK_TIMEOUT": "2.5",
            "GATEWAY_S3_CREATE_BUCKET": "no",
            "GATEWAY_DATA_DIR": "/srv/gateway",
        }
    )
    assert settings.receive_budget == 2 * MiB
    assert settings.network_timeout == 2.5
    assert settings.s3_create_bucket is False
    assert settings.data_dir == Path("/srv/gateway")


def test_a_bad_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_MAX_WRITERS"):
        load_settings(environ={"GATEWAY_MAX_WRITERS": "many"})


@pytest.mark.parametrize(
    ("text", "message"),
    [("colour = 'blue'\n", "unknown setting 'colour'"), ("port = \n", "cannot read")],
)
def test_a_bad_config_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, config_file=config)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": 0}, "port"),
        ({"base_path": "/files"}, "base_path"),
        ({"segment_size": 1000}, "segment_size"),
        ({"max_writers": 0}, "max_writers"),
        ({"receive_budget": MiB - 1}, "receive_budget"),
        ({"malloc_mmap_threshold": 1000}, "malloc_mmap_threshold"),
        ({"malloc_mmap_threshold": 33 * MiB}, "malloc_mmap_threshold"),
        ({"seal_threads": -1}, "seal_threads"),
        ({"reserved_writers": -1}, "reserved_writers"),
        ({"max_writers_per_principal": -1}, "max_writers_per_principal"),
        ({"s3_max_writers": 0}, "s3_max_writers"),
        ({"min_receive_rate": -1}, "min_receive_rate"),
        ({"receive_rate_window": 0}, "receive_rate_window"),
        ({"request_burst": 0}, "request_burst"),
        ({"max_open_uploads": -1}, "max_open_uploads"),
        ({"tail_merge_after": 1}, "tail_merge_after"),
        ({"store": "ftp://x"}, "store must be"),
        ({"store": "s3://bucket"}, "GATEWAY_S3_ENDPOINT"),
        ({"store": "s3://b", "s3_endpoint": "127.0.0.1:9000", "segment_size": MiB}, "5 MiB"),
    ],
)
def test_invalid_settings_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(values, environ={})


def test_sealing_gets_a_thread_per_core_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert load_settings(environ={}).sealing_threads == 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert load_settings(environ={}).sealing_threads == 2  # hash and encrypt side by side
    assert load_settings(environ={"GATEWAY_SEAL_THREADS": "3"}).sealing_threads == 3


def test_worker_processes_rebuild_the_same_settings() -> None:
    settings = load_settings(
        {"store": "s3://b/p", "s3_endpoint": "127.0.0.1:9000", "receive_budget": 8 * MiB},
        environ={},
    )
    assert load_settings(environ=export_environment(settings)) == settings


@pytest.mark.parametrize(
    "url",
    [
        "uploads.example.org",
        "ftp://uploads.example.org",
        "https://",
        "https://uploads.example.org/files",
        "https://uploads.example.org?x=1",
        "https://uploads.example.org#top",
        "https://user@uploads.example.org",
        "https://uploads.example.org:99999",
        "https://uploads.example.org\r\nX: y",
    ],
)
def test_a_public_url_is_scheme_host_and_port_only(url: str) -> None:
    with pytest.raises(ConfigError, match="public_url"):
        load_settings({"public_url": url}, environ={})


@pytest.mark.parametrize("url", ["https://uploads.example.org", "http://10.0.0.5:8080/"])
def test_good_public_urls(url: str) -> None:
    assert load_settings({"public_url": url}, environ={}).public_url == url


def test_trusted_proxies_are_addresses_or_networks() -> None:
    settings = load_settings(environ={"GATEWAY_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16,::1"})
    assert settings.trusted_proxy_list == ["10.0.0.1", "192.168.0.0/16", "::1"]
    assert load_settings(environ={}).trusted_proxy_list == []  # none by default
    for bad in ("*", "proxy.local", "10.0.0.0/33"):
        with pytest.raises(ConfigError, match="trusted_proxies"):
            load_settings(environ={"GATEWAY_TRUSTED_PROXIES": bad})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_header_bytes": 100}, "max_header_bytes"),
        ({"max_header_bytes": 4 << 20}, "max_header_bytes"),
        ({"header_timeout": 0.0}, "header_timeout"),
        ({"linger_timeout": -1.0}, "linger"),
        ({"linger_max_bytes": -1}, "linger"),
    ],
)
def test_edge_limits_are_checked(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(values, environ={})


def test_the_keyring_lives_in_the_data_dir_unless_told(tmp_path: Path) -> None:
    assert load_settings({"data_dir": tmp_path}, environ={}).keyring_path == (
        tmp_path / "keyring.json"
    )
    elsewhere = tmp_path / "secrets" / "ring.json"
    env = {"GATEWAY_KEYRING_PATH": str(elsewhere)}
    assert load_settings({"data_dir": tmp_path / "d"}, environ=env).keyring_path == elsewhere


def test_a_kek_file_must_be_readable_owner_only_and_not_empty(tmp_path: Path) -> None:
    kek = tmp_path / "kek"
    with pytest.raises(ConfigError, match="GATEWAY_KEK_FILE: cannot read"):
        load_settings(environ={"GATEWAY_KEK_FILE": str(kek)})
    kek.write_bytes(b"")
    kek.chmod(0o600)
    with pytest.raises(ConfigError, match=r"GATEWAY_KEK_FILE: .* is empty"):
        load_settings(environ={"GATEWAY_KEK_FILE": str(kek)})
    kek.write_bytes(b"a secret passphrase")
    kek.chmod(0o640)
    with pytest.raises(ConfigError, match=r"GATEWAY_KEK_FILE: .* mode 0640") as info:
        load_settings(environ={"GATEWAY_KEK_FILE": str(kek)})
    assert "a secret passphrase" not in str(info.value)
    kek.chmod(0o600)
    settings = load_settings(environ={"GATEWAY_KEK_FILE": str(kek)})
    assert settings.kek_secret() == b"a secret passphrase"


def test_protected_keys_can_be_required(tmp_path: Path) -> None:
    assert not Settings().require_protected_keys
    with pytest.raises(ConfigError, match=r"GATEWAY_REQUIRE_PROTECTED_KEYS .* GATEWAY_KEK_FILE"):
        load_settings(environ={"GATEWAY_REQUIRE_PROTECTED_KEYS": "true"})
    kek = tmp_path / "kek"
    kek.write_bytes(os.urandom(32))
    kek.chmod(0o600)
    env = {"GATEWAY_REQUIRE_PROTECTED_KEYS": "true", "GATEWAY_KEK_FILE": str(kek)}
    assert load_settings(environ=env).require_protected_keys


def test_retention_is_whole_days_or_unset(tmp_path: Path) -> None:
    assert load_settings(environ={}).retention_days is None
    assert load_settings(environ={"GATEWAY_RETENTION_DAYS": "30"}).retention_days == 30
    config = tmp_path / "gateway.toml"
    config.write_text("retention_days = 3650\n")
    assert load_settings(environ={}, config_file=config).retention_days == 3650
    for bad in ("0", "-1", "1.5", "30d", "36601"):
        with pytest.raises(ConfigError, match=r"(?i)retention_days"):
            load_settings(environ={"GATEWAY_RETENTION_DAYS": bad})
    for value in (0, True, 2.0):
        with pytest.raises(ConfigError, match="retention_days"):
            Settings(retention_days=value).validate()  # type: ignore[arg-type]
    # Worker processes see the same: set, and unset.
    for settings in (Settings(retention_days=7), Settings()):
        again = load_settings(environ=export_environment(settings))
        assert again.retention_days == settings.retention_days


def test_the_catalog_is_sqlite_or_a_postgresql_url() -> None:
    assert not load_settings(environ={}).uses_postgres
    url = "postgresql://gateway@db.example.org:5432/gateway?sslmode=verify-full"
    settings = load_settings(environ={"GATEWAY_CATALOG": url})
    assert settings.uses_postgres and settings.catalog_conninfo() == url
    for bad in ("mysql://db/gateway", "postgresql://", "postgresql://db:notaport/x"):
        with pytest.raises(ConfigError, match="GATEWAY_CATALOG"):
            load_settings(environ={"GATEWAY_CATALOG": bad})
    with pytest.raises(ConfigError, match="GATEWAY_MIGRATE"):
        load_settings(environ={"GATEWAY_MIGRATE": "sometimes"})


def test_the_catalog_password_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    url = "postgresql://gateway@127.0.0.1:5432/gateway?sslmode=disable"
    settings = load_settings(
        environ={"GATEWAY_CATALOG": url, "GATEWAY_CATALOG_PASSWORD": "p@ss word&x"}
    )
    assert settings.catalog_conninfo() == url + "&password=p%40ss%20word%26x"
    assert "p@ss" not in repr(settings)
    assert "GATEWAY_CATALOG_PASSWORD" not in export_environment(settings)
    secret = tmp_path / "db-password"
    secret.write_text("from-file\n")
    secret.chmod(0o644)
    env = {"GATEWAY_CATALOG": url, "GATEWAY_CATALOG_PASSWORD_FILE": str(secret)}
    with pytest.raises(ConfigError, match="other users can read the secret"):
        load_settings(environ=env)
    secret.chmod(0o600)
    assert load_settings(environ=env).catalog_conninfo().endswith("&password=from-file")
    # A password in the URL itself is kept as it is.
    inline = "postgresql://gateway:inline@127.0.0.1/gateway"
    assert load_settings(environ={**env, "GATEWAY_CATALOG": inline}).catalog_conninfo() == inline
    with pytest.raises(ConfigError, match="at most one"):
        load_settings(environ={**env, "GATEWAY_CATALOG_PASSWORD": "x"})
