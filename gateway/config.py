"""Settings: one strict object, read once from CLI options and the environment."""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from gateway.access import Action, parse_actions
from gateway.memtrim import MMAP_THRESHOLD_MAX

KiB = 1 << 10
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
    # The sealed format's suite for new uploads (FORMAT.md): "aes" (suite 1, AES-256-GCM and
    # SHA-256) or "sm" (suite 2, SM4-GCM and SM3). Uploads of either suite are always read.
    crypto_suite: str = "aes"
    upload_ttl: float = 7 * 24 * 3600.0  # unfinished uploads expire after this idle time
    metadata_max_bytes: int = 4096
    max_concat_parts: int = 100  # partial uploads one final concatenation may list
    lease_ttl: float = 30.0  # a crashed holder's lease dies after this
    acquire_timeout: float = 10.0  # how long a request waits for a busy upload
    network_timeout: float = 60.0  # a PATCH body that stalls this long is cut and saved
    io_threads: int = 8  # storage calls (fdatasync, S3 requests) at once, all uploads
    seal_threads: int = 0  # hashing + encrypting threads; 0: one per CPU core (at least 2)
    pipeline_depth: int = 2  # sealed segments in flight per upload beyond the one filling
    max_writers: int = 2048  # PATCH bodies received at once; more wait, then get 503
    reserved_writers: int = 64  # of those, kept for principals holding none (< max_writers)
    max_writers_per_principal: int = 0  # 0: max_writers - reserved_writers
    s3_max_writers: int = 64  # with S3 (records built whole in memory): writers at most
    receive_budget: int = 64 * MiB  # received plaintext all uploads hold, waiting to be sealed
    # glibc: allocations this large or larger are mapped on their own; 0: glibc's default
    malloc_mmap_threshold: int = MiB + 64 * KiB
    min_receive_rate: int = 1024  # bytes/s a body must average over the window; 0: off
    receive_rate_window: float = 30.0  # seconds of waiting for the client the rate is taken over
    request_rate: float = 200.0  # requests/s per principal (token bucket); 0: off
    request_burst: int = 4000  # requests a principal may send at once
    max_open_uploads: int = 2000  # unfinished uploads per principal; 0: no limit
    max_open_bytes: int = 2048 * GiB  # declared bytes of unfinished uploads per principal
    tail_merge_after: int = 64  # a segment's tail pieces are merged into one beyond this
    reap_interval: float = 300.0
    # Lifecycle: complete uploads are deleted this many days after completion (None:
    # kept until deleted); a held upload never is.
    retention_days: int | None = None
    # The audit log: its head is signed this often (and at shutdown).
    audit_checkpoint_seconds: float = 300.0
    log_level: str = "info"
    log_format: str = "json"  # "json" (one object per line) or "text"
    workers: int = 1  # worker processes sharing the catalog and store
    metrics_token: str = ""  # a bearer token just for Prometheus scrapes of /metrics
    ui: bool = False  # serve the upload page at /ui/ (gateway/ui/)
    shutdown_timeout: float = 30.0  # SIGTERM: running PATCHes save, then this long to finish
    # The HTTP edge: request line + header bytes, and how long they may take to arrive.
    max_header_bytes: int = 64 * 1024  # more is answered 431 and the connection closed
    header_timeout: float = 30.0  # from a request's first byte (or the connection) to its headers
    # An error answered before the body arrived: read and drop the rest of the body for at
    # most this long and this many bytes before closing, so the client sees the answer.
    linger_timeout: float = 10.0
    linger_max_bytes: int = 64 * MiB
    public_url: str = ""  # e.g. https://uploads.example.org: Location is built on it; "" relative
    trusted_proxies: str = ""  # comma list of proxy IPs/CIDRs whose X-Forwarded-For/Proto count
    # Comma list of origins (https://pacs.example.org) whose pages may call the gateway
    # (CORS), or "*" for any; "": no CORS headers at all.
    cors_origins: str = ""
    # IETF resumable uploads: send `104 Upload Resumption Supported` (with Location) on
    # creation, before the body is read, so a creation cut off midway can be resumed
    # (URLSession needs it). Off: some proxies and clients mishandle informational responses.
    ietf_send_104: bool = False
    # Object storage: "" or "folder" for the local folder, or s3://BUCKET[/PREFIX].
    store: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    s3_secure: bool = False  # https to the endpoint (also implied by an https:// endpoint)
    s3_verify_tls: bool = True
    s3_ca_file: str = ""
    s3_create_bucket: bool = True
    s3_retry_seconds: float = 5.0
    # The catalog: "sqlite" (catalog.sqlite3 in the data dir) or a postgresql:// URL that
    # many gateways share; its password, when the URL has none, from catalog_password or
    # the first line of catalog_password_file.
    catalog: str = "sqlite"
    catalog_password: str = field(default="", repr=False)
    catalog_password_file: str = ""
    catalog_pool_size: int = 8  # PostgreSQL connections per gateway process
    # "auto": the catalog's schema is created or upgraded at start; "off": a gateway
    # finding it older refuses to start (run `gateway migrate`).
    migrate: str = "auto"
    # Keys: the keyring file (default <data_dir>/keyring.json) and the secret it is
    # sealed under (a 32-byte key or a passphrase); without it the keyring is plaintext.
    keyring_path: Path = Path("")
    kek_file: str = ""
    require_protected_keys: bool = False
    # Which key provider: "keyring" (the file above) or "pkcs11" (keys in a token, an HSM).
    key_provider: str = "keyring"
    pkcs11_module: str = ""  # path of the PKCS#11 library (.so)
    pkcs11_token: str = ""  # label of the token
    pkcs11_pin: str = field(default="", repr=False)  # the user PIN; prefer pkcs11_pin_file
    pkcs11_pin_file: str = ""  # an owner-only file whose first line is the user PIN
    pkcs11_kek_label: str = "gateway-kek"
    pkcs11_signing_label: str = "gateway-signing"
    # -- identity: OIDC sign-in, API keys, brute-force limiting --------------------------
    # OIDC access tokens (JWTs) are accepted when oidc_issuer is set; API keys always are.
    oidc_issuer: str = ""  # the provider's issuer URL, exactly as its tokens' "iss"
    oidc_audience: str = ""  # what tokens' "aud" must contain (required with an issuer)
    oidc_jwks_url: str = ""  # "": jwks_uri of <issuer>/.well-known/openid-configuration
    oidc_tenant_claim: str = "tenant"  # claim (or dotted path) naming the tenant
    oidc_default_tenant: str = ""  # tenant of tokens without that claim ("": refuse them)
    oidc_roles_claim: str = "roles"  # claim (or dotted path): a list or a space-separated string
    oidc_mfa_acr: str = ""  # comma list of "acr" values that mean a second factor
    oidc_leeway: int = 60  # seconds of clock skew allowed on exp, nbf and iat
    oidc_jwks_refresh: float = 60.0  # an unknown "kid" refetches the JWKS at most this often
    oidc_jwks_max_age: float = 3600.0  # the JWKS is refetched when older than this
    oidc_timeout: float = 5.0  # seconds for a discovery or JWKS fetch
    auth_failure_burst: int = 20  # failed authentications per address or key prefix at once
    auth_failure_rate: float = 10.0  # failures a minute regained; 0: no brute-force limit
    # -- end of identity -----------------------------------------------------------------
    # -- access (gateway/access.py) --
    # Readers see every upload of their tenant, not only those granted to them.
    readers_see_tenant: bool = False
    # Comma list of actions that need a sign-in with a second factor (OIDC amr/acr):
    # create, write, head, download, manifest, delete, grant, admin, audit.
    require_mfa_for: str = ""
    # -- notifications (gateway/hooks/) --
    hook_url: str = ""  # comma list of URLs told of every completed upload (webhooks)
    pre_create_hook_url: str = ""  # asked before each upload is created; may refuse it
    # The HMAC key signing both (Gateway-Signature): from the environment or the first
    # line of an owner-only file; at most one.
    hook_secret: str = field(default="", repr=False)
    hook_secret_file: str = ""
    hook_timeout: float = 5.0  # seconds to connect, and for each read and write of a hook call
    hook_max_attempts: int = 15  # failed deliveries before an event is dead-lettered
    hook_backoff_base: float = 1.0  # seconds after the first failure, doubling each time
    hook_backoff_max: float = 3600.0  # the longest wait between two attempts
    hook_poll_interval: float = 1.0  # how often each process looks for due deliveries

    def __post_init__(self) -> None:
        if self.keyring_path == Path(""):
            object.__setattr__(self, "keyring_path", self.data_dir / "keyring.json")

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite3"

    def validate(self) -> Settings:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, got {self.port}")
        if not (self.base_path.startswith("/") and self.base_path.endswith("/")):
            raise ConfigError("base_path must start and end with '/'")
        if not 64 * 1024 <= self.segment_size <= GiB:
            raise ConfigError("segment_size must be between 64 KiB and 1 GiB")
        if self.crypto_suite not in ("aes", "sm"):
            raise ConfigError(f"crypto_suite must be 'aes' or 'sm', got {self.crypto_suite!r}")
        if self.max_size < 0:
            raise ConfigError("max_size must be >= 0")
        if self.pipeline_depth < 1 or self.io_threads < 1 or self.max_writers < 1:
            raise ConfigError("pipeline_depth, io_threads and max_writers must be >= 1")
        if not 1 <= self.max_concat_parts <= 1000:  # 1000: what Upload-Concat may list
            raise ConfigError("max_concat_parts must be between 1 and 1000")
        if self.seal_threads < 0:
            raise ConfigError("seal_threads must be >= 0 (0: one per CPU core)")
        if self.receive_budget < MiB:
            raise ConfigError("receive_budget must be at least 1 MiB")
        if self.malloc_mmap_threshold != 0 and not (
            64 * KiB <= self.malloc_mmap_threshold <= MMAP_THRESHOLD_MAX
        ):
            raise ConfigError("malloc_mmap_threshold must be 0 (glibc's default) or 64 KiB-32 MiB")
        if not 1024 <= self.max_header_bytes <= 1024 * 1024:
            raise ConfigError("max_header_bytes must be between 1 KiB and 1 MiB")
        if not self.header_timeout > 0:
            raise ConfigError("header_timeout must be > 0 seconds")
        if self.linger_timeout < 0 or self.linger_max_bytes < 0:
            raise ConfigError("linger_timeout and linger_max_bytes must be >= 0")
        _check_public_url(self.public_url)
        if self.key_provider not in ("keyring", "pkcs11"):
            raise ConfigError(
                f"key_provider must be 'keyring' or 'pkcs11', got {self.key_provider!r}"
            )
        if self.key_provider == "pkcs11":
            _ = self.pkcs11_user_pin()
        elif self.kek_file:
            _ = self.kek_secret()
        elif self.require_protected_keys:
            raise ConfigError(
                "GATEWAY_REQUIRE_PROTECTED_KEYS is true but GATEWAY_KEK_FILE is not set: "
                "the keyring would sit unencrypted; mount a key file and set GATEWAY_KEK_FILE"
            )
        _ = self.trusted_proxy_list
        _ = self.cors_origin_list
        if self.s3_max_writers < 1:
            raise ConfigError("s3_max_writers must be >= 1")
        if self.reserved_writers < 0:
            raise ConfigError("reserved_writers must be >= 0 (at most max_writers - 1 apply)")
        if self.max_writers_per_principal < 0:
            raise ConfigError("max_writers_per_principal must be >= 0 (0: no own limit)")
        if self.min_receive_rate < 0 or self.receive_rate_window <= 0:
            raise ConfigError("min_receive_rate must be >= 0 and receive_rate_window > 0")
        if self.request_rate < 0 or self.request_burst < 1:
            raise ConfigError("request_rate must be >= 0 and request_burst >= 1")
        if self.max_open_uploads < 0 or self.max_open_bytes < 0:
            raise ConfigError("max_open_uploads and max_open_bytes must be >= 0 (0: no limit)")
        _check_retention_days(self.retention_days)
        self._check_hooks()
        self._check_catalog()
        self._check_identity()
        _ = self.mfa_actions
        if not self.audit_checkpoint_seconds > 0:
            raise ConfigError("audit_checkpoint_seconds must be > 0")
        if self.tail_merge_after < 2:
            raise ConfigError("tail_merge_after must be at least 2")
        if self.store not in ("", "folder"):
            if not self.store.startswith("s3://"):
                raise ConfigError("store must be 'folder' or s3://BUCKET[/PREFIX]")
            if not self.s3_endpoint:
                raise ConfigError("an s3:// store needs GATEWAY_S3_ENDPOINT (host:port or URL)")
            if self.segment_size < 5 * MiB:
                # S3 wants every part but the last to be at least 5 MiB.
                raise ConfigError("with an S3 store, segment_size must be at least 5 MiB")
        return self

    @property
    def mfa_actions(self) -> frozenset[Action]:
        """require_mfa_for as actions; ConfigError naming an unknown one."""
        try:
            return parse_actions(self.require_mfa_for)
        except ValueError as exc:
            raise ConfigError(f"GATEWAY_REQUIRE_MFA_FOR: {exc}") from None

    @property
    def trusted_proxy_list(self) -> list[str]:
        """trusted_proxies as a list of IP addresses and networks; ConfigError if malformed."""
        entries = [e.strip() for e in self.trusted_proxies.split(",") if e.strip()]
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"trusted_proxies: {entry!r} is not an IP address or network"
                ) from None
        return entries

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """cors_origins as exact origins, ("*",) or (); ConfigError if malformed."""
        return parse_cors_origins(self.cors_origins)

    @property
    def uses_postgres(self) -> bool:
        return self.catalog.startswith(("postgresql://", "postgres://"))

    @property
    def has_catalog(self) -> bool:
        """Whether there is a catalog to open (a SQLite one is not created by asking)."""
        return self.uses_postgres or self.catalog_path.exists()

    def _check_catalog(self) -> None:
        if self.catalog != "sqlite" and not self.uses_postgres:
            raise ConfigError(
                "GATEWAY_CATALOG must be 'sqlite' or a postgresql:// URL, "
                f"got a value starting {self.catalog[:13]!r}"
            )
        if self.migrate not in ("auto", "off"):
            raise ConfigError(f"GATEWAY_MIGRATE must be 'auto' or 'off', got {self.migrate!r}")
        if not 1 <= self.catalog_pool_size <= 1000:
            raise ConfigError("catalog_pool_size must be between 1 and 1000")
        if self.catalog_password and self.catalog_password_file:
            raise ConfigError(
                "set at most one of GATEWAY_CATALOG_PASSWORD and GATEWAY_CATALOG_PASSWORD_FILE"
            )
        if self.uses_postgres:
            _ = self.catalog_conninfo()

    def catalog_conninfo(self) -> str:
        """The PostgreSQL connection string: the URL, with the password from the settings
        added when it has none. ConfigError naming the setting, never the password."""
        url = self.catalog
        try:
            parsed = urllib.parse.urlsplit(url)
            _ = parsed.port
        except ValueError as exc:
            raise ConfigError(f"GATEWAY_CATALOG: not a usable URL ({exc})") from None
        if not parsed.hostname and "host=" not in parsed.query:
            raise ConfigError("GATEWAY_CATALOG: the URL names no host")
        password = self.catalog_password
        if self.catalog_password_file:
            password = _read_secret_line(
                "GATEWAY_CATALOG_PASSWORD_FILE", self.catalog_password_file
            )
        if not password or parsed.password is not None:
            return url
        quoted = urllib.parse.quote(password, safe="")
        sep = "&" if parsed.query else ""
        query = f"{parsed.query}{sep}password={quoted}"
        return urllib.parse.urlunsplit(parsed._replace(query=query))

    def _check_identity(self) -> None:
        if self.oidc_issuer:
            check_oidc_url("GATEWAY_OIDC_ISSUER", self.oidc_issuer)
            if not self.oidc_audience:
                raise ConfigError("GATEWAY_OIDC_ISSUER is set: set GATEWAY_OIDC_AUDIENCE too")
            if not (self.oidc_tenant_claim or self.oidc_default_tenant):
                raise ConfigError(
                    "set GATEWAY_OIDC_TENANT_CLAIM or GATEWAY_OIDC_DEFAULT_TENANT: every "
                    "principal belongs to a tenant"
                )
        elif self.oidc_jwks_url or self.oidc_audience:
            raise ConfigError(
                "GATEWAY_OIDC_JWKS_URL and GATEWAY_OIDC_AUDIENCE need GATEWAY_OIDC_ISSUER"
            )
        if self.oidc_jwks_url:
            check_oidc_url("GATEWAY_OIDC_JWKS_URL", self.oidc_jwks_url)
        if not 0 <= self.oidc_leeway <= 300:
            raise ConfigError("oidc_leeway must be 0..300 seconds")
        if self.oidc_jwks_refresh < 1 or self.oidc_jwks_max_age < self.oidc_jwks_refresh:
            raise ConfigError(
                "oidc_jwks_refresh must be >= 1 second and oidc_jwks_max_age >= oidc_jwks_refresh"
            )
        if not 0 < self.oidc_timeout <= 60:
            raise ConfigError("oidc_timeout must be > 0 and at most 60 seconds")
        if self.auth_failure_burst < 1 or self.auth_failure_rate < 0:
            raise ConfigError("auth_failure_burst must be >= 1 and auth_failure_rate >= 0")

    @property
    def hook_urls(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.hook_url.split(",") if u.strip())

    def _check_hooks(self) -> None:
        for url in self.hook_urls:
            check_oidc_url("GATEWAY_HOOK_URL", url)
        if self.pre_create_hook_url:
            check_oidc_url("GATEWAY_PRE_CREATE_HOOK_URL", self.pre_create_hook_url)
        if self.hook_secret and self.hook_secret_file:
            raise ConfigError("set at most one of GATEWAY_HOOK_SECRET and GATEWAY_HOOK_SECRET_FILE")
        if self.hook_urls or self.pre_create_hook_url:
            _ = self.hook_key()
        if not 0 < self.hook_timeout <= 60:
            raise ConfigError("hook_timeout must be > 0 and at most 60 seconds")
        if not 1 <= self.hook_max_attempts <= 1000:
            raise ConfigError("hook_max_attempts must be between 1 and 1000")
        if not 0 < self.hook_backoff_base <= self.hook_backoff_max:
            raise ConfigError("hook_backoff_base must be > 0 and at most hook_backoff_max")
        if not 0 < self.hook_poll_interval <= 3600:
            raise ConfigError("hook_poll_interval must be > 0 and at most 3600 seconds")

    def hook_key(self) -> bytes:
        """The hooks' signing secret; ConfigError naming the setting (never the secret)
        when it is missing, unreadable or shorter than 16 characters."""
        secret = self.hook_secret
        if self.hook_secret_file:
            secret = _read_secret_line("GATEWAY_HOOK_SECRET_FILE", self.hook_secret_file)
        if not secret:
            raise ConfigError(
                "GATEWAY_HOOK_URL or GATEWAY_PRE_CREATE_HOOK_URL is set: set GATEWAY_HOOK_SECRET "
                "or GATEWAY_HOOK_SECRET_FILE (e.g. the output of `openssl rand -hex 32`)"
            )
        if len(secret) < 16:
            raise ConfigError("the hook secret must be at least 16 characters long")
        return secret.encode("utf-8")

    @property
    def oidc_mfa_acr_values(self) -> frozenset[str]:
        return frozenset(v.strip() for v in self.oidc_mfa_acr.split(",") if v.strip())

    def kek_secret(self) -> bytes | None:
        """The content of kek_file (None if unset); ConfigError naming the setting,
        never the content, if it is missing, unreadable, empty or readable by others."""
        if not self.kek_file:
            return None
        path = Path(self.kek_file)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            secret = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"GATEWAY_KEK_FILE: cannot read {path}: {e.strerror}") from None
        if mode & 0o077:
            raise ConfigError(
                f"GATEWAY_KEK_FILE: {path} has mode {mode:04o}, so other users can read the "
                f"key; run: chmod 600 {path}"
            )
        if not secret.strip():
            raise ConfigError(f"GATEWAY_KEK_FILE: {path} is empty")
        return secret

    def pkcs11_user_pin(self) -> str:
        """The token's user PIN, from pkcs11_pin or the first line of pkcs11_pin_file;
        ConfigError naming the setting (never the PIN) if the pkcs11 settings are unusable."""
        for name in ("pkcs11_module", "pkcs11_token", "pkcs11_kek_label", "pkcs11_signing_label"):
            if not getattr(self, name):
                raise ConfigError(
                    f"GATEWAY_KEY_PROVIDER is pkcs11 but GATEWAY_{name.upper()} is not set"
                )
        if bool(self.pkcs11_pin) == bool(self.pkcs11_pin_file):
            raise ConfigError(
                "GATEWAY_KEY_PROVIDER is pkcs11: set exactly one of GATEWAY_PKCS11_PIN "
                "and GATEWAY_PKCS11_PIN_FILE"
            )
        if self.pkcs11_pin:
            return self.pkcs11_pin
        return _read_secret_line("GATEWAY_PKCS11_PIN_FILE", self.pkcs11_pin_file)

    @property
    def uses_s3(self) -> bool:
        return self.store.startswith("s3://")

    @property
    def sealing_threads(self) -> int:
        """seal_threads, or one per core this process may run on, at least 2.

        Two, so that one upload's plaintext hash and its encryption run side by side.
        """
        if self.seal_threads:
            return self.seal_threads
        if hasattr(os, "sched_getaffinity"):
            cores = len(os.sched_getaffinity(0))
        else:
            cores = os.cpu_count() or 2
        return max(2, cores)


def _read_secret_line(setting: str, name: str) -> str:
    """The first line of an owner-only file holding a secret; ConfigError naming the
    setting (never the secret) if it is unreadable, readable by others or empty."""
    path = Path(name)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        content = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not text"
        raise ConfigError(f"{setting}: cannot read {path}: {reason}") from None
    if mode & 0o077:
        raise ConfigError(
            f"{setting}: {path} has mode {mode:04o}, so other users can read the secret; "
            f"run: chmod 600 {path}"
        )
    lines = content.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ConfigError(f"{setting}: the first line of {path} is empty")
    return secret


MAX_RETENTION_DAYS = 36600  # a hundred years


def _check_retention_days(days: object) -> None:
    if days is None:
        return
    if type(days) is not int or not 1 <= days <= MAX_RETENTION_DAYS:
        raise ConfigError(
            f"retention_days must be a whole number of days from 1 to {MAX_RETENTION_DAYS} "
            f"(unset: keep uploads until deleted), got {days!r}"
        )


def _check_public_url(url: str) -> None:
    """'' or scheme://host[:port], nothing more: Location is this + base_path + id."""
    if not url:
        return
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"public_url {url!r} is not a URL") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "?" in url
        or "#" in url
        or (port is not None and not 0 < port < 65536)
        or not url.isascii()
        or any(c.isspace() for c in url)
    ):
        raise ConfigError(
            f"public_url {url!r} must be http(s)://host[:port] with no path, query or fragment"
        )


def parse_cors_origins(value: str) -> tuple[str, ...]:
    """GATEWAY_CORS_ORIGINS as a tuple: () for "", ("*",), or exact origins, each
    written as browsers serialise them (scheme://host[:port], lower case, no default
    port, no path): anything else would never match. ConfigError naming the first
    entry that is not."""
    entries = [e.strip() for e in value.split(",")]
    if entries == [""]:
        return ()
    if "*" in entries:
        if len(entries) > 1:
            raise ConfigError("GATEWAY_CORS_ORIGINS: '*' allows every origin: give it alone")
        return ("*",)
    for entry in entries:
        problem = _origin_problem(entry)
        if problem:
            raise ConfigError(f"GATEWAY_CORS_ORIGINS: {problem}")
    return tuple(dict.fromkeys(entries))


def _origin_problem(entry: str) -> str:
    """Why `entry` is not an origin as browsers send it; "" if it is."""
    if not entry:
        return "an empty entry (two commas in a row, or a trailing comma)"
    if entry == "null":
        # Sent by sandboxed frames and file:// pages: anyone can make a page send it.
        return "'null' is the origin of any sandboxed or local page; it is refused"
    try:
        parts = urllib.parse.urlsplit(entry)
        port = parts.port
    except ValueError:
        return f"{entry!r} is not a scheme://host[:port] origin"
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or "?" in entry
        or "#" in entry
        or not entry.isascii()
        or any(c.isspace() for c in entry)
    ):
        return (
            f"{entry!r} must be scheme://host[:port] with scheme http or https and no path "
            "(not even a trailing '/')"
        )
    netloc = parts.netloc.lower()
    if port == (443 if parts.scheme == "https" else 80):
        netloc = netloc.rsplit(":", 1)[0]
    serialised = f"{parts.scheme}://{netloc}"
    return "" if serialised == entry else f"{entry!r}: write it as browsers send it, {serialised!r}"


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where plain http is acceptable (tests, local IdPs)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_oidc_url(name: str, url: str) -> None:
    """An https:// URL, or http:// on a loopback host; ConfigError naming `name` otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{name}: {url!r} is not a URL") from None
    host = parts.hostname or ""
    if not host or "@" in parts.netloc or parts.fragment or not url.isascii():
        raise ConfigError(f"{name}: {url!r} must be https://host[:port][/path]")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback_host(host):
        return
    raise ConfigError(
        f"{name}: {url!r} must use https (plain http only on localhost, 127.0.0.0/8 or ::1)"
    )


# Settings that can come from the environment, as GATEWAY_<NAME>.
_ENV_FIELDS = {f.name for f in fields(Settings)}
# Whole numbers whose default, None, means "not set".
_OPTIONAL_INTS = frozenset({"retention_days"})


def _coerce(name: str, raw: str) -> object:
    default = getattr(Settings, name)
    try:
        if name in _OPTIONAL_INTS:
            return int(raw.strip())
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
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
) -> Settings:
    """Defaults, then a TOML config file, then GATEWAY_* variables, then CLI options."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    if config_file is not None:
        values.update(_read_config_file(config_file))
    for name in _ENV_FIELDS:
        raw = env.get(f"GATEWAY_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return Settings(**values).validate()  # type: ignore[arg-type]


def export_environment(settings: Settings) -> dict[str, str]:
    """GATEWAY_* variables that rebuild `settings` in another process (worker processes).

    Unset settings stay unset. The PKCS#11 PIN and the catalog's password are left out:
    workers inherit them from this process's environment, or read their files themselves.
    So is the hooks' secret."""
    return {
        f"GATEWAY_{f.name.upper()}": str(getattr(settings, f.name))
        for f in fields(settings)
        if f.name not in _NOT_EXPORTED and getattr(settings, f.name) is not None
    }


_NOT_EXPORTED = {"pkcs11_pin", "catalog_password", "hook_secret"}


def _read_config_file(path: Path) -> dict[str, object]:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    values: dict[str, object] = {}
    for name, value in document.items():
        if name not in _ENV_FIELDS:
            raise ConfigError(f"{path}: unknown setting {name!r}")
        values[name] = _coerce(name, str(value))
    return values


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """--data-dir and --config, as every command that works on a gateway's state takes."""
    parser.add_argument("--data-dir", type=Path, help="state folder (GATEWAY_DATA_DIR)")
    parser.add_argument(
        "--config", type=Path, help="TOML file of settings (keys as the option names, with _)"
    )


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings a command's --data-dir and --config name (see add_settings_options)."""
    return load_settings({"data_dir": args.data_dir}, config_file=args.config)
