"""Key providers: wrap and unwrap per-upload data keys under key-encryption keys."""

from gateway.keys.base import KeyProvider, KeyUnusable, WrappedKey

__all__ = ["KeyProvider", "KeyUnusable", "WrappedKey"]
