"""The audit log's format: entries, their SHA-256 chain, signed checkpoints, verification.

An entry is canonical JSON (RFC 8785) with exactly these members:

    {"v": 1, "seq": n, "time": RFC 3339 UTC, "action": ACTIONS, "principal", "tenant",
     "upload_id", "upload_tenant", "outcome": "ok"|"refused"|"failed", "code": ERR_... | null,
     "client", "request_id", "details": {DETAILS: str|int|bool|null}, "prev": hex}

`prev` is the SHA-256 (hex) of the previous entry's canonical JSON, 64 zeros for the
first. A checkpoint is a compact JWS (typ `imgw-audit-checkpoint+jws`) of
{"checkpoint_version": 1, "seq", "hash", "time"}: the chain's head signed with the key
provider's signing key. `verify` recomputes the chain and checks every checkpoint
against it, naming the first bad entry. Entries carry no metadata values, file names or
tokens: `details` takes only the keys in DETAILS. docs/AUDIT.md describes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway import jws
from gateway.catalog.base import AUDIT_GENESIS, AuditRecord, StoredCheckpoint
from gateway.manifest import canonical_json
from gateway.signer import rfc3339

VERSION = 1
CHECKPOINT_TYP = "imgw-audit-checkpoint+jws"
CHECKPOINT_VERSION = 1

OK, REFUSED, FAILED = "ok", "refused", "failed"
OUTCOMES = frozenset({OK, REFUSED, FAILED})

UPLOAD_CREATED = "upload.created"
UPLOAD_COMPLETED = "upload.completed"
UPLOAD_DOWNLOADED = "upload.downloaded"
MANIFEST_FETCHED = "manifest.fetched"
UPLOAD_DELETED = "upload.deleted"  # by its client or an admin (details.reason)
UPLOAD_EXPIRED = "upload.expired"  # unfinished, past its expiry (the reaper)
UPLOAD_RETENTION_ENDED = "upload.retention_ended"  # complete, past retention (the reaper)
HOLD_PLACED = "hold.placed"
HOLD_LIFTED = "hold.lifted"
ACCESS_REFUSED = "access.refused"  # 401 for a token that failed, 403, 404 for an upload
KEY_ROTATED = "key.rotated"
KEY_REWRAPPED = "key.rewrapped"
SIGNING_KEY_ROTATED = "key.signing_rotated"
SIGNING_KEY_RETIRED = "key.signing_retired"
AUDIT_QUERIED = "audit.queried"
AUDIT_EXPORTED = "audit.exported"
GRANT_CREATED = "grant.created"
GRANT_REVOKED = "grant.revoked"
TOKEN_CREATED = "token.created"
TOKEN_REVOKED = "token.revoked"
HOOKS_RETRIED = "hooks.retried"  # dead webhook deliveries made due again
ACTIONS = frozenset(
    {
        UPLOAD_CREATED,
        UPLOAD_COMPLETED,
        UPLOAD_DOWNLOADED,
        MANIFEST_FETCHED,
        UPLOAD_DELETED,
        UPLOAD_EXPIRED,
        UPLOAD_RETENTION_ENDED,
        HOLD_PLACED,
        HOLD_LIFTED,
        ACCESS_REFUSED,
        KEY_ROTATED,
        KEY_REWRAPPED,
        SIGNING_KEY_ROTATED,
        SIGNING_KEY_RETIRED,
        AUDIT_QUERIED,
        AUDIT_EXPORTED,
        GRANT_CREATED,
        GRANT_REVOKED,
        TOKEN_CREATED,
        TOKEN_REVOKED,
        HOOKS_RETRIED,
    }
)
# The only keys `details` may have: what is safe to keep in clear for years.
DETAILS = frozenset(
    {
        "range",  # a download's byte range, "first-last" (inclusive)
        "bytes",  # bytes served
        "reason",  # a deletion's: client, admin, expiry, retention
        "case",  # a legal hold's case reference (a case number, never patient data)
        "attempted",  # what a refused request tried: an action or "METHOD /route"
        "kid",  # a signing key id
        "kek_version",
        "rewrapped",
        "failed",
        "count",
        "grant",  # a grant's id
        "grantee",  # whom a grant is for: "<tenant>/<principal>"
        "expires_at",  # a grant's or an API key's expiry (RFC 3339), or null
        "key_id",  # an API key's id (never the key)
        "subject",  # whom an API key is for: "<tenant>/<principal>"
        "roles",  # an API key's roles, comma-separated
        "event_id",  # a webhook event's id (Gateway-Event-Id)
    }
)
_MAX_TEXT = 256
_MEMBERS = frozenset(
    {
        "v",
        "seq",
        "time",
        "action",
        "principal",
        "tenant",
        "upload_id",
        "upload_tenant",
        "outcome",
        "code",
        "client",
        "request_id",
        "details",
        "prev",
    }
)
# Members repeated in columns for queries, in AuditRecord's order.
_INDEXED = ("time", "action", "principal", "tenant", "upload_id", "upload_tenant")
_CHECKPOINT_MEMBERS = frozenset({"checkpoint_version", "seq", "hash", "time"})

Detail = str | int | bool | None


@dataclass(frozen=True)
class Actor:
    """Who acted, and from where: a principal (with its tenant), `cli:<user>`, `reaper`."""

    principal: str | None
    tenant: str | None = None
    client: str | None = None  # the client's address
    request_id: str | None = None


@dataclass(frozen=True)
class Event:
    """What happened, before it is given its place in the chain."""

    action: str
    actor: Actor
    upload_id: str | None = None
    outcome: str = OK
    code: str | None = None  # the error code of a refused or failed action
    details: Mapping[str, Detail] = field(default_factory=dict)
    # The tenant the upload belongs to, where the gateway knows it (never for a refusal,
    # which must not tell whether the upload exists): its auditors see the entry too.
    upload_tenant: str | None = None


def check(event: Event) -> None:
    """ValueError unless the event is one an entry may record."""
    if event.action not in ACTIONS:
        raise ValueError(f"unknown audit action {event.action!r}")
    if event.outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {event.outcome!r}")
    unknown = set(event.details) - DETAILS
    if unknown:
        raise ValueError(f"audit details may not carry {', '.join(sorted(unknown))}")
    texts = [
        event.actor.principal,
        event.actor.tenant,
        event.actor.client,
        event.actor.request_id,
        event.upload_id,
        event.upload_tenant,
        event.code,
        *event.details.values(),
    ]
    for value in texts:
        if value is not None and not isinstance(value, str | int | bool):
            raise ValueError(f"audit values are strings, integers or booleans: {value!r}")
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            raise ValueError(f"audit values are at most {_MAX_TEXT} characters")


def entry(event: Event, *, seq: int, prev: str, at: float) -> dict[str, object]:
    check(event)
    return {
        "v": VERSION,
        "seq": seq,
        "time": rfc3339(at),
        "action": event.action,
        "principal": event.actor.principal,
        "tenant": event.actor.tenant,
        "upload_id": event.upload_id,
        "upload_tenant": event.upload_tenant,
        "outcome": event.outcome,
        "code": event.code,
        "client": event.actor.client,
        "request_id": event.actor.request_id,
        "details": dict(event.details),
        "prev": prev,
    }


def entry_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def builder(event: Event, at: float) -> Callable[[int, str], AuditRecord]:
    """What `AuditCatalog.append_audit` calls with the next seq and the head's hash."""
    check(event)  # before the write transaction: a bad event never takes the lock

    def build(seq: int, prev: str) -> AuditRecord:
        document = entry(event, seq=seq, prev=prev, at=at)
        text = canonical_json(document).decode("utf-8")
        return AuditRecord(
            seq=seq,
            time=str(document["time"]),
            action=event.action,
            principal=event.actor.principal,
            tenant=event.actor.tenant,
            upload_id=event.upload_id,
            upload_tenant=event.upload_tenant,
            entry=text,
            hash=entry_hash(text),
        )

    return build


def parse_time(text: str) -> str:
    """An RFC 3339 time with a zone as stored entries write it (ValueError if not one)."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text[:40]!r} has no time zone (add Z for UTC)")
    return rfc3339(moment.timestamp())


# --- checkpoints ----------------------------------------------------------------------------


def sign_checkpoint(seq: int, head: str, at: float, key: jws.SigningKey) -> str:
    payload = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "seq": seq,
        "hash": head,
        "time": rfc3339(at),
    }
    return jws.sign(canonical_json(payload), typ=CHECKPOINT_TYP, key=key)


def verify_checkpoint(token: str, keys: Mapping[str, jws.PublicSigningKey]) -> tuple[str, int, str]:
    """(kid, seq, hash) of a validly signed checkpoint; JWSError or ValueError if not."""
    kid, raw = jws.verify(token, typ=CHECKPOINT_TYP, keys=keys)
    payload = _load(raw.decode("utf-8"))
    if set(payload) != _CHECKPOINT_MEMBERS or payload["checkpoint_version"] != CHECKPOINT_VERSION:
        raise ValueError("the payload is not a version 1 checkpoint")
    seq, head = payload["seq"], payload["hash"]
    if type(seq) is not int or not isinstance(head, str):
        raise ValueError("the checkpoint's seq or hash is malformed")
    return kid, seq, head


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """The first bad entry (its seq), and what is wrong."""

    seq: int
    message: str


@dataclass
class Report:
    entries: int = 0
    head: str = AUDIT_GENESIS
    checkpoints: int = 0  # verified and matching the chain
    last_checkpoint: int | None = None  # seq of the last of those
    unverifiable: list[str] = field(default_factory=list)  # checkpoints no key checks
    failure: Finding | None = None


class _Bad(Exception):
    def __init__(self, seq: int, message: str) -> None:
        super().__init__(message)
        self.finding = Finding(seq, message)


def verify(
    records: Iterable[AuditRecord],
    checkpoints: Sequence[StoredCheckpoint],
    keys: Mapping[str, jws.PublicSigningKey],
) -> Report:
    """Recompute the chain from the first entry, then check every checkpoint against it."""
    report = Report()
    wanted = {c.seq for c in checkpoints}
    hashes: dict[int, str] = {}
    try:
        for record in records:
            report.head = _check_record(record, report.entries + 1, report.head)
            report.entries += 1
            if record.seq in wanted:
                hashes[record.seq] = report.head
        _check_checkpoints(checkpoints, keys, hashes, report)
    except _Bad as bad:
        report.failure = bad.finding
    return report


def _check_record(record: AuditRecord, expected: int, prev: str) -> str:
    """The record's hash, if it is entry `expected` chained onto `prev`."""
    seq = record.seq
    if seq != expected:
        raise _Bad(expected, f"entry {expected} is missing (the next stored is {seq})")
    try:
        document = _load(record.entry)
        if canonical_json(document).decode("utf-8") != record.entry:
            raise ValueError("not in canonical form (RFC 8785)")
    except ValueError as exc:
        raise _Bad(seq, f"entry {seq} is not a canonical JSON object: {exc}") from None
    if set(document) != _MEMBERS or document["v"] != VERSION:
        raise _Bad(seq, f"entry {seq} does not have exactly a version 1 entry's members")
    claimed = document["seq"]
    if type(claimed) is not int or claimed != seq:
        first = min(seq, claimed) if type(claimed) is int and claimed > 0 else seq
        raise _Bad(
            first,
            f"the entry stored as {seq} says it is entry {claimed}: "
            "entries were deleted, inserted or reordered",
        )
    if document["prev"] != prev:
        if seq == 1:
            raise _Bad(1, "entry 1's prev is not 64 zeros: entries before it were removed")
        raise _Bad(
            seq - 1,
            f"entry {seq - 1} does not hash to the prev of entry {seq}: "
            f"entry {seq - 1} was changed (or entry {seq} was)",
        )
    digest = entry_hash(record.entry)
    columns = (
        record.time,
        record.action,
        record.principal,
        record.tenant,
        record.upload_id,
        record.upload_tenant,
    )
    members = tuple(document[k] for k in _INDEXED)
    if columns != members or record.hash != digest:
        raise _Bad(seq, f"entry {seq}'s indexed columns or stored hash disagree with the entry")
    return digest


def _check_checkpoints(
    checkpoints: Sequence[StoredCheckpoint],
    keys: Mapping[str, jws.PublicSigningKey],
    hashes: Mapping[int, str],
    report: Report,
) -> None:
    good = 0  # seq of the last checkpoint that matched
    for stored in sorted(checkpoints, key=lambda c: c.seq):
        try:
            kid, seq, head = verify_checkpoint(stored.jws, keys)
        except jws.JWSError as exc:
            if str(exc).startswith("unknown kid"):
                report.unverifiable.append(f"checkpoint {stored.seq}: {exc}")
                continue
            raise _Bad(stored.seq, f"checkpoint {stored.seq}: {exc}") from None
        except ValueError as exc:
            raise _Bad(stored.seq, f"checkpoint {stored.seq}: {exc}") from None
        if seq != stored.seq:
            raise _Bad(stored.seq, f"checkpoint stored as {stored.seq} signs seq {seq}")
        if seq > report.entries:
            raise _Bad(
                report.entries + 1,
                f"the log ends at entry {report.entries} but checkpoint {seq} (signed by "
                f"{kid}) covers entries up to {seq}: entries {report.entries + 1} to {seq} "
                "were removed",
            )
        if hashes.get(seq) != head:
            raise _Bad(
                good + 1,
                f"entries {good + 1} to {seq} differ from what checkpoint {seq} (signed by "
                f"{kid}) covers: one of them was changed, removed or inserted and the chain "
                "recomputed",
            )
        good = seq
        report.checkpoints += 1
        report.last_checkpoint = seq


def _load(text: str) -> dict[str, object]:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ValueError("duplicate member name")
        return result

    try:
        value = json.loads(text, object_pairs_hook=no_duplicates)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
