"""Picks the key provider the settings name: the local keyring or a PKCS#11 token."""

from __future__ import annotations

from gateway.config import Settings
from gateway.keys.base import AdministeredProvider
from gateway.keys.keyring import open_configured


def open_provider(settings: Settings) -> AdministeredProvider:
    """The configured provider, ready to use; KeyUnusable (or ConfigError) says why not."""
    if settings.key_provider == "pkcs11":
        # Imported here: python-pkcs11 is an optional extra, needed only with a token.
        from gateway.keys.pkcs11 import Pkcs11Provider

        return Pkcs11Provider.from_settings(settings)
    return open_configured(settings)


def provider_configured(settings: Settings) -> bool:
    """Whether there are keys to open without creating any: a token, or a keyring file
    (opening the keyring provider makes a new keyring when none exists)."""
    return settings.key_provider != "keyring" or settings.keyring_path.exists()
