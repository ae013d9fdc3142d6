"""`gateway token create|list|revoke`: API keys for machines (PACS, modality gateways,
scripts).

A key is shown once, when created; the catalog keeps only its SHA-256 hash, so neither
`list` nor anything else can show it again. Revocation and expiry apply on the next
request in every gateway process (keys are looked up on every request).
`gateway token [--principal P ...]` without a command is `gateway token create`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from gateway import audit
from gateway.auditing import Audit, operator
from gateway.auth import describe_key, mint_api_key, rfc3339_seconds
from gateway.catalog.base import ApiKey, AuditCatalog, Catalog, Principal
from gateway.config import ConfigError, add_settings_options, settings_of
from gateway.opening import open_catalog
from gateway.roles import ROLES

COMMANDS = ("create", "list", "revoke")
DEFAULT_PRINCIPAL = "admin"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
MAX_EXPIRY_DAYS = 3660


def add_parser(sub: Any) -> None:
    """Register `token` and its commands on the `gateway` parser's subparsers."""
    token = sub.add_parser("token", help="API keys: create (the default), list, revoke")
    commands = token.add_subparsers(dest="token_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
        add_settings_options(parser)
        return parser

    create = command("create", help="create an API key; the token is printed on the last line")
    create.add_argument("--principal", default=DEFAULT_PRINCIPAL, help="who the key acts as")
    create.add_argument("--tenant", default="default", help="the principal's tenant")
    create.add_argument(
        "--role",
        action="append",
        choices=sorted(ROLES),
        default=[],
        help="a role (repeatable); without one the key acts as an uploader",
    )
    create.add_argument(
        "--expires", type=duration, help="lifetime such as 90d, 12h, 30m, 2w (default: never)"
    )
    listing = command("list", help="every key: id, principal, tenant, roles, times; never the key")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = command("revoke", help="revoke a key; refused from the next request on")
    revoke.add_argument("id", help="the key's id (see `gateway token list`)")


def with_default_command(argv: list[str]) -> list[str]:
    """`gateway token [options]` (the form before commands existed) means `token create`."""
    if argv[:1] == ["token"] and (len(argv) == 1 or argv[1] not in (*COMMANDS, "-h", "--help")):
        return ["token", "create", *argv[1:]]
    return argv


def duration(text: str) -> float:
    """Seconds in '90d', '12h', '30m', '45s' or '2w' (argparse type)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90d, 12h or 30m")
    seconds = float(int(match[1]) * _UNITS[match[2]])
    if seconds > MAX_EXPIRY_DAYS * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than {MAX_EXPIRY_DAYS} days")
    return seconds


def main(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    catalog = open_catalog(settings)
    try:
        if args.token_command == "create":
            return _create(catalog, args)
        if args.token_command == "list":
            return _list(catalog.api_keys(), as_json=args.json)
        if catalog.revoke_token(args.id, time.time()):
            _audit(catalog, audit.TOKEN_REVOKED, key_id=args.id)
            print(f"revoked API key {args.id}; it is refused from the next request on")
            return 0
        print(f"gateway token revoke: no API key {args.id!r} that is not revoked", file=sys.stderr)
        return 1
    finally:
        catalog.close()


def _audit(catalog: AuditCatalog, action: str, **details: audit.Detail) -> None:
    Audit(catalog).record_now(action, audit.Actor(operator()), details=details)


def _create(catalog: Catalog, args: argparse.Namespace) -> int:
    if not args.principal or not args.tenant:
        raise ConfigError("--principal and --tenant must not be empty")
    principal = Principal(args.principal, args.tenant, frozenset(args.role))
    now = time.time()
    expires_at = None if args.expires is None else now + args.expires
    token_id, token = mint_api_key(catalog, principal, expires_at=expires_at, now=now)
    _audit(
        catalog,
        audit.TOKEN_CREATED,
        key_id=token_id,
        roles=",".join(sorted(principal.roles)),
        expires_at=rfc3339_seconds(expires_at),
        subject=f"{principal.tenant}/{principal.id}",
    )
    roles = ", ".join(sorted(principal.roles))
    roles = f"with roles {roles}" if roles else "with no role (an uploader)"
    until = "never expires" if expires_at is None else f"expires {rfc3339_seconds(expires_at)}"
    print(
        f"# API key {token_id} for principal {principal.id!r} of tenant {principal.tenant!r} "
        f"{roles}; it {until}; the token is shown only now"
    )
    print(token)
    return 0


def _list(keys: list[ApiKey], *, as_json: bool) -> int:
    rows = [describe_key(key) for key in keys]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return 0
    columns = ("id", "principal", "tenant", "roles", "created", "expires", "last_used", "revoked")
    table = [columns, *[tuple(str(row[c] or "-") for c in columns) for row in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0
