"""The `gateway` commands of data lifecycle: hold, release-hold, delete, receipt.

All take `--data-dir`/`--config` like `serve` and are safe while the gateway runs: holds
only change catalog rows, and `delete` takes the upload's lease as a client's DELETE does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gateway import audit, holds, receipts
from gateway.auditing import Audit, operator
from gateway.config import Settings, add_settings_options, settings_of
from gateway.errors import ERR, GatewayError
from gateway.jws import JWSError, PublicSigningKey
from gateway.keys.providers import open_provider, provider_configured
from gateway.opening import open_catalog, open_store
from gateway.tus.headers import is_valid_upload_id
from gateway.verify import load_jwks

COMMANDS = ("hold", "release-hold", "delete", "receipt")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hold = sub.add_parser("hold", help="place a legal hold on an upload (nobody can delete it)")
    hold.add_argument("upload_id")
    hold.add_argument(
        "--case", help="case reference: A-Z a-z 0-9 . _ : / -, at most 64; never patient data"
    )
    release = sub.add_parser("release-hold", help="lift an upload's legal hold")
    release.add_argument("upload_id")
    delete = sub.add_parser(
        "delete", help="delete any owner's upload (not a held one); prints its deletion receipt"
    )
    delete.add_argument("upload_id")
    receipt = sub.add_parser(
        "receipt",
        help="print an upload's deletion receipt, or check one: receipt verify FILE|-",
    )
    receipt.add_argument("target", nargs="+", metavar="ID | verify FILE")
    receipt.add_argument("--jwks", help="JWKS file or https URL (default: the configured keys)")
    for parser in (hold, release, delete, receipt):
        add_settings_options(parser)
    for parser in (hold, release, delete):
        parser.add_argument("--by", default=operator(), help="who acts (default: cli:<user>)")


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    name = f"gateway {args.command}"
    if args.command == "receipt":
        if args.target[0] == "verify" and len(args.target) == 2:
            return _verify(settings, args.target[1], args.jwks)
        if len(args.target) != 1:
            print(f"{name}: give an upload id, or: verify FILE|-", file=sys.stderr)
            return 2
        upload_id = args.target[0]
    else:
        upload_id = args.upload_id
    if not is_valid_upload_id(upload_id):
        print(f"{name}: {upload_id[:80]!r} is not an upload id", file=sys.stderr)
        return 2
    try:
        if args.command == "delete":
            return _delete(settings, upload_id, args.by)
        return _catalog_command(settings, args, upload_id)
    except GatewayError as exc:
        print(f"{name}: {exc.code}: {exc.detail}", file=sys.stderr)
        return 2 if exc.err is ERR.INVALID_CASE_REFERENCE else 1


def _catalog_command(settings: Settings, args: argparse.Namespace, upload_id: str) -> int:
    catalog = open_catalog(settings)
    try:
        if args.command == "hold":
            with _audited(Audit(catalog), audit.HOLD_PLACED, args.by, upload_id, case=args.case):
                hold = holds.place(
                    catalog, upload_id, case=args.case, placed_by=args.by, now=time.time()
                )
            print(json.dumps(holds.describe(upload_id, hold)))
        elif args.command == "release-hold":
            with _audited(Audit(catalog), audit.HOLD_LIFTED, args.by, upload_id):
                holds.release(catalog, upload_id)
            print(json.dumps(holds.describe(upload_id, None)))
        else:
            stored = catalog.receipt(upload_id)
            if stored is None:
                print(f"gateway receipt: no deletion receipt for {upload_id}", file=sys.stderr)
                return 1
            print(stored.jws)
    finally:
        catalog.close()
    return 0


def _delete(settings: Settings, upload_id: str, by: str) -> int:
    from gateway.wiring import build_services  # the services a removal needs: only here

    catalog = open_catalog(settings)
    try:
        services = build_services(
            settings, store=open_store(settings), catalog=catalog, keys=open_provider(settings)
        )

        async def delete() -> str | None:
            try:
                return await services.removal.delete_as_admin(by, upload_id)
            finally:
                await services.close()

        receipt = asyncio.run(delete())
    finally:
        catalog.close()
    if receipt is None:
        print(
            f"{upload_id}: retired (a final concatenation still reads it); it is removed, "
            "with a receipt, when the last final using it is deleted"
        )
    else:
        print(receipt)
    return 0


def _verify(settings: Settings, source: str, jwks: str | None) -> int:
    keys: dict[str, PublicSigningKey]
    if jwks is not None:
        if jwks.lower().startswith("http://"):
            print("gateway receipt verify: refusing an http:// JWKS; use https", file=sys.stderr)
            return 2
        try:
            keys = load_jwks(jwks)
        except (OSError, ValueError, TypeError, JWSError) as exc:
            print(f"gateway receipt verify: cannot use --jwks {jwks}: {exc}", file=sys.stderr)
            return 2
    elif provider_configured(settings):
        keys = {k.kid: k for k in open_provider(settings).public_signing_keys()}
    else:
        print("gateway receipt verify: no keys configured; pass --jwks FILE|URL", file=sys.stderr)
        return 2
    try:
        token = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"gateway receipt verify: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    try:
        kid, payload = receipts.verify(token, keys)
    except receipts.ReceiptError as exc:
        print(f"FAILED: {exc}")
        return 1
    print(f"OK: a deletion receipt signed by {kid}")
    print(receipts.pretty(payload))
    return 0


@contextlib.contextmanager
def _audited(
    log: Audit, action: str, by: str, upload_id: str, **details: audit.Detail
) -> Iterator[None]:
    """Append `action` for what the block did: ok, or refused with the error's code."""
    actor = audit.Actor(by)
    try:
        yield
    except GatewayError as exc:
        if exc.err is not ERR.INVALID_CASE_REFERENCE:  # nothing an entry may quote
            outcome = audit.FAILED if exc.status >= 500 else audit.REFUSED
            log.record_now(action, actor, upload_id, outcome=outcome, code=exc.code)
        raise
    log.record_now(action, actor, upload_id, details=details)
