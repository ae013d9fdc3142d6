"""Object stores: where sealed bytes live (a local folder by default, or S3)."""

from gateway.store.base import ObjectNotFound, ObjectStore, PartRef, StoreUnavailable

__all__ = ["ObjectNotFound", "ObjectStore", "PartRef", "StoreUnavailable"]
