"""`gateway migrate`: bring the catalog's schema to this gateway's version.

Migrations are versioned and forward-only (gateway/catalog/sqlite_schema.py,
gateway/catalog/postgres_schema.py); each runs in one transaction, and gateways or
commands migrating at once take turns. With `--check` nothing changes: exit 1 if
migrations are pending, 0 if the schema is current.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.catalog.base import SchemaMismatch
from gateway.config import add_settings_options, settings_of
from gateway.opening import open_catalog


def add_parser(sub: Any) -> None:
    """Register `migrate` on the `gateway` parser's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "migrate", help="create or upgrade the catalog's schema (GATEWAY_CATALOG)"
    )
    add_settings_options(parser)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if migrations are pending"
    )


def main(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if args.check and not settings.has_catalog:
        print(f"gateway migrate: no catalog at {settings.catalog_path} yet", file=sys.stderr)
        return 1
    try:
        catalog = open_catalog(settings, migrate=not args.check)
    except SchemaMismatch as exc:
        print(f"gateway migrate: {exc}", file=sys.stderr)
        return 1
    try:
        before, after = catalog.schema_change
    finally:
        catalog.close()
    if before == after:
        print(f"catalog schema: version {after}, up to date")
    else:
        print(f"catalog schema: migrated from version {before} to {after}")
    return 0
