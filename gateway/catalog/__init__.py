"""Catalogs: the durable state of uploads (SQLite by default, PostgreSQL later)."""

from gateway.catalog.base import (
    Catalog,
    Lease,
    LeaseLost,
    LeaseState,
    OffsetConflict,
    Principal,
    Progress,
    RecordRow,
    TailPiece,
    Upload,
)

__all__ = [
    "Catalog",
    "Lease",
    "LeaseLost",
    "LeaseState",
    "OffsetConflict",
    "Principal",
    "Progress",
    "RecordRow",
    "TailPiece",
    "Upload",
]
