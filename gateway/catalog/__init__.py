"""Catalogs: the durable state of uploads (SQLite by default, PostgreSQL later)."""

from gateway.catalog.base import (
    Catalog,
    KeyCatalog,
    Lease,
    LeaseCatalog,
    LeaseLost,
    LeaseState,
    LegacyMetadataCatalog,
    OffsetConflict,
    Principal,
    Progress,
    RecordRow,
    RemovalCatalog,
    TailPiece,
    TokenStore,
    Upload,
    UploadCatalog,
)

__all__ = [
    "Catalog",
    "KeyCatalog",
    "Lease",
    "LeaseCatalog",
    "LeaseLost",
    "LeaseState",
    "LegacyMetadataCatalog",
    "OffsetConflict",
    "Principal",
    "Progress",
    "RecordRow",
    "RemovalCatalog",
    "TailPiece",
    "TokenStore",
    "Upload",
    "UploadCatalog",
]
