"""The `gateway` command: serve, API keys (gateway/tokencli.py), verify, administer keys
(gateway/keycli.py), the audit log (gateway/auditcli.py), the webhooks' outbox
(gateway/hookcli.py), the lifecycle commands (hold, release-hold, delete, receipt:
gateway/admincli.py) and the upload client (gateway/uploadcli.py)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import (
    admincli,
    auditcli,
    hookcli,
    keycli,
    logs,
    migratecli,
    tokencli,
    uploadcli,
)
from gateway.auth import mint_token
from gateway.catalog.base import CatalogUnavailable, Principal, SchemaMismatch
from gateway.config import ConfigError, Settings, export_environment, load_settings
from gateway.keycheck import check_shared_keys, check_suite_keys
from gateway.keys.base import KeyUnusable
from gateway.keys.providers import open_provider, provider_configured
from gateway.opening import UnsafeDataDir, open_catalog, open_store
from gateway.tus.headers import is_valid_upload_id

DEFAULT_PRINCIPAL = tokencli.DEFAULT_PRINCIPAL
FIRST_TOKEN_FILE = "first-token"
WORKER_HEALTHCHECK_SECONDS = 60
log = logging.getLogger("gateway.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the upload gateway")
    serve.add_argument("--host", help="address to bind (GATEWAY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (GATEWAY_PORT, default 8080)")
    serve.add_argument("--data-dir", type=Path, help="state folder (GATEWAY_DATA_DIR)")
    serve.add_argument("--base-path", help="tus endpoint path (GATEWAY_BASE_PATH, /files/)")
    serve.add_argument("--max-size", type=int, help="largest upload in bytes (GATEWAY_MAX_SIZE)")
    serve.add_argument("--segment-size", type=int, help="sealed record size (GATEWAY_SEGMENT_SIZE)")
    serve.add_argument("--log-level", help="debug, info, warning (GATEWAY_LOG_LEVEL)")
    serve.add_argument("--workers", type=int, help="worker processes (GATEWAY_WORKERS, 1)")
    serve.add_argument("--store", help="'folder' or s3://BUCKET[/PREFIX] (GATEWAY_STORE)")
    serve.add_argument("--s3-endpoint", help="S3 host:port or URL (GATEWAY_S3_ENDPOINT)")
    serve.add_argument("--s3-region", help="S3 region (GATEWAY_S3_REGION)")
    serve.add_argument("--s3-access-key", help="prefer GATEWAY_S3_ACCESS_KEY")
    serve.add_argument("--s3-secret-key", help="prefer GATEWAY_S3_SECRET_KEY")
    serve.add_argument("--s3-ca-file", help="CA bundle for the S3 endpoint (GATEWAY_S3_CA_FILE)")
    serve.add_argument(
        "--config", type=Path, help="TOML file of settings (keys as the option names, with _)"
    )

    verify = sub.add_parser(
        "verify", help="check a stored upload against its signed manifest; non-zero on failure"
    )
    verify.add_argument("upload_id", help="the upload id (last part of its URL)")
    verify.add_argument("--data-dir", type=Path, help="state folder (GATEWAY_DATA_DIR)")
    verify.add_argument("--store", help="'folder' or s3://BUCKET[/PREFIX] (GATEWAY_STORE)")
    verify.add_argument(
        "--jwks",
        action="append",
        help="JWKS file or https:// URL (default: the keys' provider); repeat it to add the "
        "SM2 keys of suite-2 manifests (sm2-manifest-keys.json)",
    )
    verify.add_argument(
        "--no-decrypt", action="store_true", help="check ciphertext only, even with keys at hand"
    )

    tokencli.add_parser(sub)
    keycli.add_parser(sub)
    auditcli.add_parser(sub)
    hookcli.add_parser(sub)
    migratecli.add_parser(sub)
    admincli.add_parsers(sub)
    uploadcli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Upload ids may start with "-" (base64url): let `verify ... -abc` mean an id.
    dash_id = bool(argv) and argv[-1].startswith("-") and is_valid_upload_id(argv[-1])
    if argv and argv[0] in ("verify", *admincli.COMMANDS) and "--" not in argv and dash_id:
        argv.insert(len(argv) - 1, "--")
    args = _parser().parse_args(tokencli.with_default_command(argv))
    options: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "command"}
    # Every file and folder the gateway creates is owner-only; modes are also given
    # explicitly where files are made, this covers what libraries create.
    os.umask(0o077)
    try:
        if args.command == "keys":
            return keycli.main(args)
        if args.command == "audit":
            return auditcli.main(args)
        if args.command == "hooks":
            return hookcli.main(args)
        if args.command == "migrate":
            return migratecli.main(args)
        if args.command == "upload":
            return uploadcli.main(args)
        if args.command == "verify":
            settings = load_settings({"data_dir": options["data_dir"], "store": options["store"]})
            return _verify(settings, args.upload_id, args.jwks, decrypt=not args.no_decrypt)
        if args.command == "token":
            return tokencli.main(args)
        if args.command in admincli.COMMANDS:
            return admincli.run(args)
        config_file = options.pop("config")
        settings = load_settings(options, config_file=config_file)
        return _serve(settings)
    except (ConfigError, UnsafeDataDir, KeyUnusable, SchemaMismatch, CatalogUnavailable) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2


def _verify(settings: Settings, upload_id: str, jwks: list[str] | None, *, decrypt: bool) -> int:
    from gateway.jws import JWSError
    from gateway.verify import Report, catalog_unwrapper, load_jwks_all, verify_upload

    if not is_valid_upload_id(upload_id):
        print(f"gateway verify: {upload_id[:80]!r} is not an upload id", file=sys.stderr)
        return 2
    store = open_store(settings)
    keyring = open_provider(settings) if provider_configured(settings) else None
    if jwks is not None:
        try:
            public_keys = load_jwks_all(jwks)
        except (OSError, ValueError, TypeError, JWSError) as exc:
            print(f"gateway verify: cannot use --jwks {' '.join(jwks)}: {exc}", file=sys.stderr)
            return 2
    elif keyring is not None:
        published = keyring.public_signing_keys() + keyring.public_sm2_keys()
        public_keys = {k.kid: k for k in published}
    else:
        print("gateway verify: no keyring in the data dir; pass --jwks FILE|URL", file=sys.stderr)
        return 2
    catalog = None
    unwrap = None
    if decrypt and keyring is not None and settings.has_catalog:
        catalog = open_catalog(settings)
        unwrap = catalog_unwrapper(catalog, keyring)
    try:
        report = verify_upload(
            upload_id,
            store=store,
            public_keys=public_keys,
            unwrap=unwrap,
            report=Report(),
            current_known=jwks is None,
        )
    finally:
        if catalog is not None:
            catalog.close()
    print(f"verify {upload_id}")
    for line in report.lines:
        print(f"  {line}")
    if report.failures:
        print(f"FAILED: {'; '.join(report.failures)}")
        return 1
    print("OK: the stored upload is exactly what its signed manifest says")
    return 0


def _serve(settings: Settings) -> int:
    # Imported here: the other commands need neither the server nor the app.
    import uvicorn

    from gateway.app import create_app
    from gateway.connections import protocol_factory

    logs.setup(settings.log_level, json_lines=settings.log_format == "json")
    catalog = open_catalog(settings)
    # Refuse a keyring others can read, or a token without keys, before anything
    # listens (workers open them again).
    keys = open_provider(settings)
    keys.check()
    # GATEWAY_CRYPTO_SUITE (sealed-format suite 2) is read where it is defined; "aes"
    # until it is.
    check_suite_keys(keys, settings.crypto_suite)
    check_shared_keys(catalog, keys)
    if catalog.token_count() == 0:
        # First start: never run open. Mint a token and show how to use it, once.
        _first_token(settings, mint_token(catalog, Principal(DEFAULT_PRINCIPAL, "default")))
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": protocol_factory(settings),
        "ws": "none",  # no WebSocket routes: an Upgrade request stays plain HTTP
        "lifespan": "on",
        # X-Forwarded-For/-Proto only from the configured proxies (uvicorn would trust
        # 127.0.0.1 by default, i.e. anything forwarded by a local process).
        "proxy_headers": bool(settings.trusted_proxy_list),
        "forwarded_allow_ips": settings.trusted_proxy_list,
        "log_config": None,  # keep the JSON logging set up above
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }
    if settings.workers > 1:
        catalog.close()
        # Each worker builds its own app from the environment; metrics are written
        # to a shared folder and summed by whichever worker serves /metrics.
        metrics_dir = settings.data_dir / "metrics-multiproc"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(mode=0o700)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ.update(export_environment(settings))
        uvicorn.run(
            "gateway.app:app_from_environment",
            factory=True,
            workers=settings.workers,
            # uvicorn kills a worker that does not answer its supervisor's ping within
            # this many seconds (default 5), and its running uploads with it: a worker
            # slow under load is not a hung one.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
            **common,
        )
        return 0
    app = create_app(settings, catalog=catalog, keys=keys)
    uvicorn.Server(uvicorn.Config(app, **common)).run()
    return 0


def _first_token(settings: Settings, token: str) -> None:
    """Show the first token on an interactive terminal, as Jupyter does; elsewhere
    stdout is a log stream (a container's), so it goes to an owner-only file."""
    if sys.stdout.isatty():
        url = f"http://{settings.host}:{settings.port}{settings.base_path}"
        print(
            "\nFirst start: created a bearer token (stored hashed; it is shown only now).\n"
            f"Try it:\n  curl -i -X POST {url} -H 'Tus-Resumable: 1.0.0' "
            f"-H 'Upload-Length: 5' -H 'Authorization: Bearer {token}'\n"
            "Create more with: gateway token create --data-dir "
            f"{settings.data_dir}\n",
            flush=True,
        )
        return
    path = (settings.data_dir / FIRST_TOKEN_FILE).absolute()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by an earlier first start whose catalog was removed
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.warning(
        "first start: created a bearer token for principal %r; it is in %s (owner-only). "
        "Read it, then delete the file; create more with `gateway token create`",
        DEFAULT_PRINCIPAL,
        path,
        extra={"token_file": str(path)},
    )


if __name__ == "__main__":
    raise SystemExit(main())
