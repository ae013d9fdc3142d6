"""Key providers: wrap and unwrap per-upload data keys under key-encryption keys."""

from gateway.keys.base import KeyError_, KeyProvider, WrappedKey

__all__ = ["KeyError_", "KeyProvider", "WrappedKey"]
