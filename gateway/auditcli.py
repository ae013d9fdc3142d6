"""`gateway audit verify|export|checkpoint`: the audit log from the command line.

    gateway audit verify [--jwks FILE|https-URL]   exit 0 whole, 1 a bad entry, 2 usage
    gateway audit export [--since T] [--until T]   JSON lines on stdout, one entry each
    gateway audit checkpoint                       sign the head now

All are safe while gateways run; `export` appends an `audit.exported` entry when it is
done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from gateway import audit
from gateway.auditing import Audit, operator
from gateway.catalog.base import AuditCatalog, AuditQuery, AuditRecord
from gateway.config import Settings, add_settings_options, settings_of
from gateway.jws import JWSError, PublicSigningKey
from gateway.keys.providers import open_provider, provider_configured
from gateway.opening import open_catalog
from gateway.verify import load_jwks

PAGE = 1000


def add_parser(sub: Any) -> None:
    """Register `audit` and its commands on the `gateway` parser's subparsers."""
    parser = sub.add_parser("audit", help="the audit log: verify, export")
    commands = parser.add_subparsers(dest="audit_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
        add_settings_options(parser)
        return parser

    verify = command("verify", help="recompute the chain, check the signed checkpoints")
    verify.add_argument("--jwks", help="JWKS file or https URL (default: the configured keys)")
    export = command("export", help="entries as JSON lines on stdout (for a SIEM)")
    export.add_argument("--since", help="RFC 3339 time, inclusive (e.g. 2026-12-01T00:00:00Z)")
    export.add_argument("--until", help="RFC 3339 time, exclusive")
    export.add_argument("--by", default=operator(), help="who exports (default: cli:<user>)")
    command("checkpoint", help="sign the log's head now (as gateways do at intervals)")


def main(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    name = f"gateway audit {args.audit_command}"
    if not settings.has_catalog:
        print(f"{name}: no catalog at {settings.catalog_path}", file=sys.stderr)
        return 2
    if args.audit_command == "checkpoint":
        provider = open_provider(settings)
        catalog = open_catalog(settings)
        try:
            seq = Audit(catalog, keys=provider).checkpoint_now()
        finally:
            catalog.close()
        print(f"checkpoint at entry {seq}" if seq else "nothing new to sign")
        return 0
    if args.audit_command == "verify":
        keys = _keys(settings, args.jwks)
        if keys is None:
            return 2
        catalog = open_catalog(settings)
        try:
            return _verify(catalog, keys)
        finally:
            catalog.close()
    try:
        since = audit.parse_time(args.since) if args.since else None
        until = audit.parse_time(args.until) if args.until else None
    except ValueError as exc:
        print(f"{name}: --since/--until: {exc}", file=sys.stderr)
        return 2
    catalog = open_catalog(settings)
    try:
        count = 0
        for record in records(catalog, AuditQuery(since=since, until=until)):
            sys.stdout.write(record.entry + "\n")
            count += 1
        sys.stdout.flush()
        Audit(catalog).record_now(
            audit.AUDIT_EXPORTED, audit.Actor(args.by), details={"count": count}
        )
    finally:
        catalog.close()
    return 0


def records(catalog: AuditCatalog, query: AuditQuery) -> Iterator[AuditRecord]:
    """Every record the query selects, in seq order, a page at a time."""
    after = query.after
    while True:
        page = catalog.audit_records(
            AuditQuery(
                upload_id=query.upload_id,
                principal=query.principal,
                tenant=query.tenant,
                since=query.since,
                until=query.until,
                after=after,
                limit=PAGE,
            )
        )
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].seq


def _verify(catalog: AuditCatalog, keys: dict[str, PublicSigningKey]) -> int:
    # Checkpoints first: entries appended meanwhile come after them, never before.
    checkpoints = catalog.audit_checkpoints()
    report = audit.verify(records(catalog, AuditQuery()), checkpoints, keys)
    for line in report.unverifiable:
        print(f"warning: {line} (not checked; later checkpoints cover its entries)")
    if report.failure is not None:
        print(f"FAILED: {report.failure.message}")
        print(f"first bad entry: {report.failure.seq}")
        return 1
    n = report.entries
    print(f"chain: {n} entries, each chained to the one before (head {report.head})")
    last = report.last_checkpoint
    if last is None:
        print("checkpoints: none verified; the entries are protected by the chain only")
    else:
        print(f"checkpoints: {report.checkpoints} verified, the last at entry {last}")
        if last < n:
            print(
                f"entries {last + 1} to {n} come after the last checkpoint: the chain alone "
                "protects them (removing them from the end would not be detected)"
            )
    print(f"OK: the audit log is whole ({n} entries)")
    return 0


def _keys(settings: Settings, jwks: str | None) -> dict[str, PublicSigningKey] | None:
    if jwks is not None:
        try:
            return load_jwks(jwks)
        except (OSError, ValueError, TypeError, JWSError) as exc:
            print(f"gateway audit verify: cannot use --jwks {jwks}: {exc}", file=sys.stderr)
            return None
    if provider_configured(settings):
        return {k.kid: k for k in open_provider(settings).public_signing_keys()}
    print("gateway audit verify: no keys configured; pass --jwks FILE|URL", file=sys.stderr)
    return None
