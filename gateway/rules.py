"""The upload services' rules: who may see an upload, how many it may open, store outages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway import metrics
from gateway.catalog.base import Principal, Upload, UploadCatalog, UploadState
from gateway.errors import ERR, GatewayError
from gateway.runner import Runner
from gateway.store.base import StoreFull, StoreUnavailable
from gateway.suites import SUITE_AES256GCM

T = TypeVar("T")

# How long a DELETE waits for readers of the catalog to let a deleted key be erased.
SHRED_WAIT = 2.0


@dataclass(frozen=True)
class UploadRules:
    """The settings the upload services act on; the app builds it from `Settings`."""

    segment_size: int  # plaintext bytes per sealed record
    max_size: int  # Tus-Max-Size
    upload_ttl: float  # unfinished uploads expire after this idle time
    store_name: str  # "folder" or "s3", as the manifest names it
    max_open_uploads: int = 0  # per principal; 0: no limit
    max_open_bytes: int = 0  # declared bytes of unfinished uploads per principal; 0: no limit
    max_partials: int = 100  # partial uploads one final may list
    pipeline_depth: int = 2  # sealed segments in flight per upload beyond the one filling
    tail_merge_after: int = 64  # a segment's tail pieces are merged into one beyond this
    reap_interval: float = 300.0  # seconds between passes of the reaper
    shred_wait: float = SHRED_WAIT  # how long a DELETE waits to erase a key
    retention_days: int | None = None  # complete uploads go this long after completion
    retention_batch: int = 100  # uploads past retention one reaper pass removes at most
    suite: int = SUITE_AES256GCM  # the sealed format's suite for new uploads


def check_owned(principal: Principal, upload: Upload | None, now: float) -> Upload:
    """`upload` if `principal` may see it; someone else's is indistinguishable from none."""
    if (
        upload is None
        or upload.state == UploadState.TERMINATED
        or upload.owner != principal.id
        or upload.tenant != principal.tenant
    ):
        raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
    return check_live(upload, now)


def check_live(upload: Upload, now: float) -> Upload:
    """`upload`, unless it expired unfinished (410: it is being removed)."""
    expires_at = upload.expires_at
    if upload.state == UploadState.ACTIVE and expires_at is not None and expires_at <= now:
        raise GatewayError(ERR.UPLOAD_GONE, "this upload expired and is being removed")
    return upload


async def store_call(runner: Runner, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in the storage pool; an unavailable store answers 503, a full one
    507, retry later."""
    try:
        return await runner.io(fn, *args)
    except StoreFull as exc:
        raise insufficient_storage() from exc
    except StoreUnavailable as exc:
        raise GatewayError(
            ERR.STORE_UNAVAILABLE,
            "object storage is unavailable; try again later",
            headers={"Retry-After": "5"},
        ) from exc


def catalog_unavailable(offset: int | None = None) -> GatewayError:
    """503 for a catalog that cannot be reached now; nothing was recorded by the call
    that failed. For a PATCH, `offset` is what is recorded: resume from it later."""
    return _try_later(
        ERR.CATALOG_UNAVAILABLE, "the catalog is unavailable", retry_after=5, offset=offset
    )


def insufficient_storage(offset: int | None = None) -> GatewayError:
    """507 for a disk (the store's or the catalog's) with no space left; nothing was
    recorded by the call that failed. For a PATCH, `offset` is what is recorded."""
    return _try_later(
        ERR.INSUFFICIENT_STORAGE, "the gateway's storage is full", retry_after=30, offset=offset
    )


def _try_later(err: ERR, what: str, *, retry_after: int, offset: int | None) -> GatewayError:
    headers = {"Retry-After": str(retry_after)}
    if offset is not None:
        headers["Upload-Offset"] = str(offset)
    return GatewayError(
        err, f"{what}; try again later (resume from Upload-Offset)", headers=headers
    )


async def check_quota(
    rules: UploadRules, runner: Runner, catalog: UploadCatalog, principal: Principal, length: int
) -> None:
    """Refuse a new upload beyond the principal's open uploads or open bytes.

    Checked before the upload is inserted: creations racing each other may pass
    the limit by as many as run at once, never by more.
    """
    most, most_bytes = rules.max_open_uploads, rules.max_open_bytes
    if not most and not most_bytes:
        return
    count, size = await runner.db(catalog.open_uploads, principal.id, principal.tenant)
    if most and count >= most:
        metrics.REFUSED.labels("open-uploads").inc()
        raise GatewayError(
            ERR.QUOTA_EXCEEDED,
            f"this principal has {count} unfinished uploads, the most it may have; "
            "finish or delete some first",
            headers={"Retry-After": "60"},
        )
    if most_bytes and size + length > most_bytes:
        metrics.REFUSED.labels("open-bytes").inc()
        raise GatewayError(
            ERR.QUOTA_EXCEEDED,
            f"this principal's unfinished uploads would pass {most_bytes} bytes; "
            "finish or delete some first",
            headers={"Retry-After": "60"},
        )
