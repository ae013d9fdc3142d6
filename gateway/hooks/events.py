"""The events hooks receive, as JSON. Never metadata values: a completion names the
upload, its owner and length and carries its signed manifest (which holds no patient
data); a pre-create request carries the metadata's keys and value sizes only."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Callable

from gateway.catalog.base import HookEvent, Principal, Upload
from gateway.signer import rfc3339

COMPLETED = "upload.completed"
PRE_CREATE = "upload.pre_create"


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


def encode(document: dict[str, object]) -> str:
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


class CompletionEvents:
    """Builds the upload.completed event a completion writes to the outbox, addressed
    to every configured hook URL."""

    def __init__(self, targets: tuple[str, ...], clock: Callable[[], float] = time.time) -> None:
        self.targets = targets
        self._clock = clock

    def completed(self, upload: Upload, manifest_jws: str, completed_at: float) -> HookEvent:
        """`manifest_jws`: the stored (bucket) view, compact JWS; it discloses no digest
        of the plaintext (docs/MANIFEST.md), unlike the reader's view."""
        event_id, now = new_event_id(), self._clock()
        body = encode(
            {
                "id": event_id,
                "type": COMPLETED,
                "created": rfc3339(now),
                "upload": {
                    "id": upload.id,
                    "tenant": upload.tenant,
                    "principal": upload.owner,
                    "length": upload.length,
                    "concat": _concat_kind(upload.concat),
                    "completed": rfc3339(completed_at),
                },
                "manifest": manifest_jws,
            }
        )
        return HookEvent(event_id, COMPLETED, upload.id, body, now, self.targets)


def pre_create_body(
    event_id: str,
    now: float,
    principal: Principal,
    *,
    length: int | None,
    metadata: str | None,
    concat: str | None,
) -> str:
    """The pre-create request: who, how long, and the metadata's keys with the size of
    each decoded value; values never leave the gateway unsealed."""
    keys = [{"key": k, "size": n} for k, n in metadata_sizes(metadata)]
    return encode(
        {
            "id": event_id,
            "type": PRE_CREATE,
            "created": rfc3339(now),
            "upload": {
                "tenant": principal.tenant,
                "principal": principal.id,
                "length": length,
                "concat": _concat_kind(concat),
                "metadata": keys,
            },
        }
    )


def metadata_sizes(metadata: str | None) -> list[tuple[str, int]]:
    """(key, decoded size) of each pair of an Upload-Metadata value the handler has
    already validated; a value that does not decode counts as its encoded length."""
    pairs: list[tuple[str, int]] = []
    for pair in (metadata or "").split(","):
        key, _, value = pair.strip().partition(" ")
        if not key:
            continue
        try:
            size = len(base64.b64decode(value.strip(), validate=True))
        except (binascii.Error, ValueError):
            size = len(value)
        pairs.append((key, size))
    return pairs


def _concat_kind(concat: str | None) -> str | None:
    """ "partial", "final" or None: a final's Upload-Concat lists URLs, left out here."""
    if concat is None:
        return None
    return "final" if concat.startswith("final") else "partial"
