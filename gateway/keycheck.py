"""Shared keys: every gateway on a catalog must hold the keys its data keys are wrapped in.

Gateways sharing a catalog (PostgreSQL, or SQLite between worker processes) must use the
same key provider. Before a gateway serves, it unwraps one check per KEK version any
gateway has used: a random value wrapped under that version, kept in the catalog by the
first gateway that wrapped under it. A gateway with other keys (another keyring, another
token, a KEK file that differs) refuses to start instead of wrapping data keys no other
instance can read, or failing every download of what they wrote.
"""

from __future__ import annotations

import secrets

from gateway.catalog.base import KeyCheckCatalog
from gateway.keys.base import KeyProvider, KeyUnusable

# What key checks are bound to, in place of an upload id (never a valid one: upload ids
# have no dots).
CHECK_SUBJECT = "gateway.key-check"


def check_shared_keys(catalog: KeyCheckCatalog, keys: KeyProvider) -> None:
    """Raise KeyUnusable unless `keys` unwraps every check in the catalog; then add a
    check for the current KEK version if it has none."""
    for check_id, wrapped in catalog.key_checks():
        try:
            keys.unwrap(wrapped, upload_id=CHECK_SUBJECT, dek_id=check_id)
        except KeyUnusable:
            raise KeyUnusable(
                f"this gateway's keys cannot unwrap what KEK {wrapped.kek_id!r} version "
                f"{wrapped.kek_version} wrapped in the catalog: every gateway sharing a "
                "catalog must use the same key provider (the same keyring and "
                "GATEWAY_KEK_FILE, or the same PKCS#11 token)"
            ) from None
    check_id = secrets.token_bytes(16)
    wrapped = keys.wrap(secrets.token_bytes(32), upload_id=CHECK_SUBJECT, dek_id=check_id)
    catalog.add_key_check(check_id, wrapped)


def check_suite_keys(keys: KeyProvider, crypto_suite: str) -> None:
    """KeyUnusable unless `keys` can sign what `crypto_suite` seals: with "sm" (suite 2)
    every manifest is signed with SM2 as well, which the pkcs11 provider cannot (KEYS.md),
    so such a gateway refuses to start rather than fail every upload as it completes."""
    if crypto_suite == "sm":
        keys.sm2_signing_key()
