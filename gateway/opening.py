"""Opening what a gateway process works on from its settings: the data dir, the catalog
and the object store. Light on imports, so that the commands that need only these
(keys, audit, token, hooks, migrate) start quickly."""

from __future__ import annotations

import os
import stat

from gateway.catalog.base import Catalog
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import Settings
from gateway.store.base import ObjectStore
from gateway.store.folder import FolderStore


class UnsafeDataDir(Exception):
    """The data dir cannot be made owner-only; the message names it and the fix."""


def prepare_data_dir(settings: Settings) -> None:
    """Create the data dir owner-only (0700), and make an existing one so."""
    path = settings.data_dir
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise UnsafeDataDir(
            f"cannot make the data dir {path} owner-only ({exc.strerror}); "
            f"give it to the user the gateway runs as, then run: chmod 700 {path}"
        ) from None


def open_catalog(settings: Settings, *, migrate: bool | None = None) -> Catalog:
    """The catalog GATEWAY_CATALOG names; its schema is upgraded if `migrate` (default:
    GATEWAY_MIGRATE is auto), else an older one raises SchemaMismatch."""
    apply = settings.migrate == "auto" if migrate is None else migrate
    if settings.uses_postgres:
        # Imported here: psycopg is the `postgres` extra, not needed for SQLite.
        from gateway.catalog.postgres import PostgresCatalog

        return PostgresCatalog(
            settings.catalog_conninfo(),
            min_size=1,
            max_size=settings.catalog_pool_size,
            migrate=apply,
        )
    prepare_data_dir(settings)
    return SQLiteCatalog(settings.catalog_path, migrate=apply)


def open_store(settings: Settings) -> ObjectStore:
    if not settings.uses_s3:
        return FolderStore(settings.objects_dir)
    # Imported here: the S3 client costs every process that starts half a CPU-second.
    from gateway.store.s3 import S3Settings, S3Store, parse_store_url

    bucket, prefix = parse_store_url(settings.store)
    return S3Store(
        S3Settings(
            endpoint=settings.s3_endpoint,
            bucket=bucket,
            prefix=prefix,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            region=settings.s3_region,
            secure=settings.s3_secure,
            verify_tls=settings.s3_verify_tls,
            ca_file=settings.s3_ca_file or None,
            create_bucket=settings.s3_create_bucket,
            retry_seconds=settings.s3_retry_seconds,
            pool_size=max(settings.io_threads, 4),
        )
    )
