"""The roles a principal may hold, and what a principal without any gets.

- `uploader`: create uploads and write, inspect, download and delete its own;
- `reader`: download and fetch manifests of uploads shared with it (grants), or of its
  tenant where the policy says so;
- `auditor`: manifests and the audit log, never plaintext;
- `admin`: tokens, legal holds and key status.

A principal with no role (tokens minted before roles existed) is an uploader.
"""

from __future__ import annotations

UPLOADER = "uploader"
READER = "reader"
AUDITOR = "auditor"
ADMIN = "admin"
ROLES = frozenset({UPLOADER, READER, AUDITOR, ADMIN})


def effective(roles: frozenset[str]) -> frozenset[str]:
    """The roles a principal acts with: its own, or `uploader` if it has none."""
    return roles or frozenset({UPLOADER})
