"""`gateway hooks list|retry`: the webhooks' outbox from the command line.

    gateway hooks list [--dead]            deliveries waiting (or only the dead ones)
    gateway hooks retry EVENT_ID           send an event's dead deliveries again
    gateway hooks retry --all-dead         send every dead delivery again

Safe while gateways run: a retried delivery is due at once, and the next gateway
process to look at the outbox (with GATEWAY_HOOK_URL set) sends it. Exit 0 done, 1
nothing to retry, 2 usage or configuration error. Event bodies are never printed (they
are JSON for the hooks; `--json` prints each row's state, not its body).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from gateway import audit
from gateway.auditing import Audit, operator
from gateway.catalog.base import HookCatalog, HookDelivery
from gateway.config import add_settings_options, settings_of
from gateway.hooks.http import safe_url
from gateway.opening import open_catalog
from gateway.signer import rfc3339

PAGE = 500


def add_parser(sub: Any) -> None:
    """Register `hooks` and its commands on the `gateway` parser's subparsers."""
    parser = sub.add_parser("hooks", help="the webhooks' outbox: list, retry dead deliveries")
    commands = parser.add_subparsers(dest="hooks_command", required=True)
    listing = commands.add_parser("list", help="deliveries waiting in the outbox")
    listing.add_argument("--dead", action="store_true", help="only the dead-lettered ones")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    add_settings_options(listing)
    retry = commands.add_parser("retry", help="make dead deliveries due again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("event_id", nargs="?", help="the event (Gateway-Event-Id) to resend")
    which.add_argument("--all-dead", action="store_true", help="every dead delivery")
    add_settings_options(retry)


def main(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    name = f"gateway hooks {args.hooks_command}"
    if not settings.has_catalog:
        print(f"{name}: no catalog at {settings.catalog_path}", file=sys.stderr)
        return 2
    catalog = open_catalog(settings)
    try:
        if args.hooks_command == "list":
            for row in deliveries(catalog, dead=True if args.dead else None):
                print(json.dumps(_document(row)) if args.json else _line(row))
            return 0
        event_id = None if args.all_dead else args.event_id
        count = catalog.retry_hook_deliveries(time.time(), event_id)
        if count:
            details: dict[str, audit.Detail] = {"event_id": event_id, "count": count}
            Audit(catalog).record_now(audit.HOOKS_RETRIED, audit.Actor(operator()), details=details)
    finally:
        catalog.close()
    if count == 0:
        what = "no dead delivery" if event_id is None else f"no dead delivery of {event_id}"
        print(f"{name}: {what}", file=sys.stderr)
        return 1
    print(f"{count} dead deliver{'y' if count == 1 else 'ies'} due again")
    return 0


def deliveries(catalog: HookCatalog, *, dead: bool | None) -> Iterator[HookDelivery]:
    """Every row of the outbox (or only dead ones), oldest first, a page at a time."""
    after: tuple[float, str, str] | None = None
    while True:
        page = catalog.hook_deliveries(dead=dead, after=after, limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        last = page[-1]
        after = (last.created_at, last.event_id, last.target)


def _document(row: HookDelivery) -> dict[str, object]:
    return {
        "event_id": row.event_id,
        "type": row.type,
        "upload_id": row.upload_id,
        "target": safe_url(row.target),
        "created": rfc3339(row.created_at),
        "state": "dead" if row.dead else "pending",
        "attempts": row.attempts,
        "next_attempt": None if row.dead else rfc3339(row.next_attempt_at),
        "last_error": row.last_error,
    }


def _line(row: HookDelivery) -> str:
    d = _document(row)
    when = "" if row.dead else f" next {d['next_attempt']}"
    error = f" last error: {row.last_error}" if row.last_error else ""
    return (
        f"{row.event_id} {d['state']} {row.type} upload {row.upload_id} to {d['target']} "
        f"attempts {row.attempts}{when}{error}"
    )
