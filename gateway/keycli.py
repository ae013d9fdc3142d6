"""`gateway keys ...`: create, list, rotate and retire keys, and rewrap data keys.

Every command is safe while gateways run: the provider serialises writers and running
gateways see a change within KEY_REFRESH_SECONDS; rewrapping replaces one wrapped key
at a time, only if its row is unchanged (a concurrent delete or rewrap wins).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from gateway import audit
from gateway.auditing import Audit, operator
from gateway.catalog.base import KeyRotationCatalog
from gateway.config import Settings, add_settings_options, settings_of
from gateway.keys.base import KEY_REFRESH_SECONDS, AdministeredProvider, KeyUnusable
from gateway.keys.providers import open_provider
from gateway.opening import open_catalog

DEFAULT_BATCH = 500
# After a rotation, how long past KEY_REFRESH_SECONDS a gateway may still store a key it
# wrapped under the old version (the time between wrapping and the catalog insert),
# and the rounding of the rotation time (whole seconds).
SETTLE_MARGIN_SECONDS = 2.0


def add_parser(sub: Any) -> None:
    """Register `keys` and its commands on the `gateway` parser's subparsers."""
    keys = sub.add_parser("keys", help="administer keys: init, list, rotate, rewrap, ...")
    commands = keys.add_subparsers(dest="keys_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
        add_settings_options(parser)
        return parser

    command("init", help="create the keys that are missing")
    command("list", help="KEK versions and signing keys, with how many data keys each wraps")
    command("rotate", help="a new KEK version for new uploads")
    rewrap = command("rewrap", help="rewrap every data key still under an older KEK version")
    rewrap.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, help="keys per catalog query"
    )
    command("rotate-signing", help="a new signing key; the old one stays in the JWKS")
    retire = command("retire", help="destroy a published signing key, withdraw it from the JWKS")
    retire.add_argument("kid", help="the key id (see `gateway keys list`)")


def main(args: argparse.Namespace) -> int:
    """Run one `gateway keys` command; exit code 0 ok, 1 partial failure (raises
    ConfigError/KeyUnusable for usage and configuration problems: exit 2)."""
    settings = settings_of(args)
    provider = open_provider(settings)
    command = args.keys_command
    if command == "init":
        return _init(provider)
    if command == "list":
        return _list(provider, settings)
    if command == "rotate":
        version = provider.rotate()
        _audit(settings, audit.KEY_ROTATED, kek_version=version)
        print(f"KEK {provider.kek_id} version {version} is current: it wraps new uploads' keys")
        print(
            f"running gateways pick it up within {KEY_REFRESH_SECONDS:g} s; "
            "`gateway keys rewrap` moves existing keys to it"
        )
        return 0
    if command == "rewrap":
        if args.batch_size < 1:
            raise KeyUnusable("--batch-size must be at least 1")
        catalog = open_catalog(settings)
        try:
            counts = RewrapCounts()
            code = rewrap(
                provider,
                catalog,
                batch=args.batch_size,
                out=sys.stdout,
                err=sys.stderr,
                counts=counts,
            )
            Audit(catalog).record_now(
                audit.KEY_REWRAPPED,
                audit.Actor(operator()),
                outcome=audit.OK if code == 0 else audit.FAILED,
                details={"rewrapped": counts.rewrapped, "failed": counts.failed},
            )
            return code
        finally:
            catalog.close()
    if command == "rotate-signing":
        kid = provider.rotate_signing()
        _audit(settings, audit.SIGNING_KEY_ROTATED, kid=kid)
        print(f"signing key {kid} is current; the one before it stays in the JWKS")
        for sm2_key in (k for k in provider.public_sm2_keys() if k.current):
            _audit(settings, audit.SIGNING_KEY_ROTATED, kid=sm2_key.kid)
            print(f"SM2 signing key {sm2_key.kid} is current; the one before it stays published")
        print(f"running gateways sign with it within {KEY_REFRESH_SECONDS:g} s")
        print(kid)
        return 0
    provider.retire_signing(args.kid)
    _audit(settings, audit.SIGNING_KEY_RETIRED, kid=args.kid)
    print(f"signing key {args.kid} is retired: its private key is destroyed, not in the JWKS")
    return 0


def _audit(settings: Settings, action: str, **details: audit.Detail) -> None:
    """Append a key event to the audit log, where there is a catalog to hold it."""
    if settings.has_catalog:
        catalog = open_catalog(settings)
        try:
            Audit(catalog).record_now(action, audit.Actor(operator()), details=details)
        finally:
            catalog.close()


def _init(provider: AdministeredProvider) -> int:
    created = provider.init()
    for what in created:
        print(f"created {what}")
    if not created:
        print("nothing to create: every key exists")
    return 0


def _list(provider: AdministeredProvider, settings: Settings) -> int:
    counts: dict[tuple[str, int], int] = {}
    if settings.has_catalog:
        catalog = open_catalog(settings)
        try:
            counts = catalog.wrapped_key_counts()
        finally:
            catalog.close()
    kek_id = provider.kek_id
    print(f"KEK {kek_id}")
    print(f"  {'version':>9}  {'created':<25}  data keys")
    for v in provider.kek_versions():
        mark = "* " if v.current else "  "
        note = "  (current)" if v.current else ""
        line = f"{mark}{v.version:>9}  {v.created or '-':<25}  {counts.get((kek_id, v.version), 0)}"
        print(line + note)
    others = {k: n for k, n in counts.items() if k[0] != kek_id}
    for (other, version), n in sorted(others.items()):
        print(f"  data keys under KEK {other} version {version} (another provider): {n}")
    print("signing keys")
    print(f"  {'kid':<24}  {'alg':<8}  {'state':<10}  created")
    for s in provider.signing_keys():
        print(f"  {s.kid:<24}  {s.alg:<8}  {s.state.value:<10}  {s.created or '-'}")
    return 0


@dataclass
class RewrapCounts:
    rewrapped: int = 0
    skipped: int = 0  # the row changed meanwhile (deleted, shredded, rewrapped elsewhere)
    failed: int = 0  # does not unwrap with this provider


def rewrap(
    provider: AdministeredProvider,
    catalog: KeyRotationCatalog,
    *,
    batch: int,
    out: TextIO,
    err: TextIO,
    counts: RewrapCounts | None = None,
) -> int:
    """Rewrap every data key not under the current KEK version, in passes over the key
    table by dek_id, until a pass finds nothing left once no gateway can still be
    wrapping under an older version (KEY_REFRESH_SECONDS after the rotation)."""
    counts = counts if counts is not None else RewrapCounts()
    given_up: set[bytes] = set()  # keys that failed to unwrap: counted once, not retried
    # When each version seen current is settled; fixed the first time it is seen (a
    # provider that records no creation time: from then, which is after the rotation).
    settle: dict[int, float] = {}
    try:
        passes = 0
        while True:
            passes += 1
            provider.refresh()
            current = next(v for v in provider.kek_versions() if v.current)
            if current.version not in settle:
                settle[current.version] = _settle_time(current.created, time.time())
            settled = settle[current.version]
            found = _rewrap_pass(provider, catalog, current.version, batch, counts, given_up, err)
            print(
                f"rewrap: pass {passes} under version {current.version}: {found} keys "
                f"(rewrapped {counts.rewrapped}, skipped {counts.skipped}, "
                f"failed {counts.failed} so far)",
                file=err,
                flush=True,
            )
            if found:
                continue
            wait = settled - time.time()
            if wait <= 0:
                break
            print(
                f"rewrap: waiting {wait:.0f} s until no gateway wraps under an older version",
                file=err,
                flush=True,
            )
            time.sleep(wait)
    except KeyboardInterrupt:
        _print_counts(counts, provider, catalog, out)
        print(
            "interrupted: every key is either rewrapped or untouched; run again to finish", file=out
        )
        return 130
    _print_counts(counts, provider, catalog, out)
    return 1 if counts.failed else 0


def _rewrap_pass(
    provider: AdministeredProvider,
    catalog: KeyRotationCatalog,
    version: int,
    batch: int,
    counts: RewrapCounts,
    given_up: set[bytes],
    err: TextIO,
) -> int:
    """One pass over the keys not under `version`; returns how many it tried."""
    kek_id = provider.kek_id
    total = sum(n for key, n in catalog.wrapped_key_counts().items() if key != (kek_id, version))
    total -= len(given_up)
    found = 0
    after = b""
    while page := catalog.wrapped_keys_not_under(kek_id, version, after, batch):
        after = page[-1].dek_id
        for row in page:
            if row.dek_id in given_up:
                continue
            found += 1
            try:
                new = provider.rewrap(row.wrapped, upload_id=row.upload_id, dek_id=row.dek_id)
            except KeyUnusable:
                counts.failed += 1
                given_up.add(row.dek_id)
                continue
            if catalog.replace_wrapped_key(row.dek_id, row.wrapped, new):
                counts.rewrapped += 1
            else:
                counts.skipped += 1
        print(f"rewrap: {found}/{max(total, found)} keys", file=err, flush=True)
    return found


def _settle_time(created: str | None, now: float) -> float:
    """When every gateway wraps under the version created at `created` (counted from
    now if the provider does not record when)."""
    try:
        start = datetime.fromisoformat(created).timestamp() if created else now
    except ValueError:
        start = now
    return min(start, now) + KEY_REFRESH_SECONDS + SETTLE_MARGIN_SECONDS


def _print_counts(
    counts: RewrapCounts,
    provider: AdministeredProvider,
    catalog: KeyRotationCatalog,
    out: TextIO,
) -> None:
    current = next(v.version for v in provider.kek_versions() if v.current)
    left = sum(
        n for key, n in catalog.wrapped_key_counts().items() if key != (provider.kek_id, current)
    )
    print(f"rewrapped: {counts.rewrapped}", file=out)
    print(f"skipped: {counts.skipped} (changed or deleted while rewrapping)", file=out)
    print(f"failed: {counts.failed} (do not unwrap with this provider)", file=out)
    print(f"left under other versions: {left}", file=out)
    print(f"current version: {current}", file=out, flush=True)
