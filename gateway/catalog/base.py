"""The catalog protocols and their rows: uploads, records, tail pieces, keys, leases, tokens,
grants, legal holds and deletion receipts.

`Catalog` is the union of one small protocol per concern (`UploadCatalog`,
`RemovalCatalog`, `HoldCatalog`, `LegacyMetadataCatalog`, `KeyRotationCatalog`,
`LeaseCatalog`, `GrantCatalog`, `TokenStore`, `AuditCatalog`, `HookCatalog`), so each
consumer is typed by what it uses and a new backend (PostgreSQL, an external token
store) can come one concern at a time.

Calls are blocking and short; the service runs them on one dedicated thread. Every
write that moves an upload forward is a single transaction guarded by the writer's
lease (fencing token) and by the offset it expects, so a stale writer can never
record anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from gateway.keys.base import WrappedKey


class UploadState(StrEnum):
    """An upload's state; the values are what the catalog stores."""

    ACTIVE = "active"  # receiving bytes (or waiting for them)
    COMPLETE = "complete"
    TERMINATED = "terminated"  # deleted by its client or retired; its rows go soon


@dataclass
class Upload:
    id: str
    owner: str
    tenant: str
    length: int | None  # None while the length is deferred (or for a final not yet known)
    offset: int
    # The Upload-Metadata header as received, sealed under the upload's key (the sealed
    # value "metadata", see docs/FORMAT.md); only the service can open it.
    metadata: bytes | None
    state: UploadState
    created_at: float
    expires_at: float | None
    segment_size: int
    # The sealed object's encoded header. A final concatenation has one too, for an
    # object never written: it keys the final's sealed values (empty in old catalogs).
    header: bytes
    dek_id: bytes
    multipart_id: str | None = None
    concat: str | None = None  # None | "partial" | "final"
    partials: tuple[str, ...] = ()  # for a final upload: the partial upload ids, in order
    # The client's checksum of the whole upload ("algo base64", given when one request
    # body carried all of it), sealed under the data key: it is a digest of the plaintext.
    checksum: bytes | None = None
    completed_at: float | None = None
    # Under a legal hold (`HoldCatalog`): nobody and nothing may delete it until released.
    held: bool = False
    # Only in rows written before metadata was sealed: the header in plain text, until
    # the service seals it in place (`LegacyMetadataCatalog.seal_legacy_metadata`). Never stored.
    legacy_metadata: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RecordRow:
    """One sealed record REC_index, stored as part index+1 of the multipart upload."""

    index: int
    plaintext_len: int
    final: bool
    size: int  # bytes of the part (record, plus the header for index 0)
    sha256: bytes  # of the record's ciphertext (nonce || ct || tag), not of the part
    etag: str


@dataclass(frozen=True)
class TailPiece:
    """A sealed piece of the unfinished segment, stored as its own object."""

    segment: int
    piece: int
    start: int  # offset of the piece's plaintext inside the segment
    length: int


@dataclass(frozen=True)
class Lease:
    upload_id: str
    holder: str
    token: int  # fencing token: strictly increases each time the lease changes hands
    expires_at: float


@dataclass(frozen=True)
class LeaseState:
    valid: bool  # still ours
    release_requested: bool  # someone else asked for the upload


class LeaseLost(Exception):
    """The writer's lease expired or was taken over; nothing was recorded."""


class OffsetConflict(Exception):
    """The upload's offset is not the one the writer expected; nothing was recorded."""


class UploadHeld(Exception):
    """The upload is under a legal hold; nothing was deleted or retired."""


class CatalogUnavailable(Exception):
    """The catalog's database cannot be reached now (a restart, a network cut); the
    call did nothing that was committed. Answered 503 with Retry-After."""


class CatalogFull(CatalogUnavailable):
    """The catalog's disk is full (SQLite's "database or disk is full"); the call did
    nothing that was committed. Answered 507 with Retry-After."""


class SchemaMismatch(Exception):
    """The catalog's schema is not this gateway's: older (run `gateway migrate`) or
    newer (a later release wrote it; migrations only go forward)."""


@dataclass(frozen=True)
class Principal:
    id: str
    tenant: str
    # gateway/roles.py: uploader, reader, auditor, admin; none acts as an uploader.
    roles: frozenset[str] = frozenset()
    # Whether the sign-in showed a second factor (an OIDC token's amr/acr); API keys
    # never do.
    mfa: bool = False


@dataclass(frozen=True)
class Grant:
    """Read access to one upload for one principal (possibly of another tenant) until
    `expires_at`: download and manifest, nothing else (gateway/access.py)."""

    id: str
    upload_id: str
    principal: str
    tenant: str
    granted_by: str  # "<tenant>/<principal>" of the owner or tenant admin who granted it
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class Hold:
    """A legal hold: a case reference (never patient data), who placed it and when."""

    case: str | None
    placed_by: str
    placed_at: float


@dataclass(frozen=True)
class Deletion:
    """What a removal's receipt will say, recorded when the key is deleted, so that a
    removal finished later (by the reaper, after a 503) still names who asked and why."""

    upload_id: str
    requested_at: float
    reason: str  # "client" | "admin" | "expiry" | "retention"
    deleted_by: Mapping[str, str]  # {"principal", "tenant"} | {"reaper": ...} | {"admin": ...}
    manifest_sha256: str | None  # hex SHA-256 of the stored manifest.jws (complete uploads)
    dek_id: bytes
    kek_id: str | None
    kek_version: int | None


@dataclass(frozen=True)
class StoredReceipt:
    upload_id: str
    issued_at: float
    jws: str  # compact JWS, typ imgw-deletion-receipt+jws (gateway/receipts.py)


@dataclass
class Progress:
    """One atomic step forward for an upload, recorded by `UploadCatalog.commit`."""

    expected_offset: int
    offset: int
    records: Sequence[RecordRow] = ()
    add_piece: TailPiece | None = None
    drop_pieces_below: int | None = None  # delete piece rows of segments < this
    drop_pieces: Sequence[TailPiece] = ()  # delete these piece rows (merged into add_piece)
    complete_at: float | None = None  # mark the upload complete
    expires_at: float | None = field(default=None)
    checksum: bytes | None = None  # record the (sealed) client checksum of the whole upload
    # With complete_at: the notification of the completion, put in the outbox in this
    # same transaction (gateway/hooks/), so it exists exactly when the completion does.
    event: HookEvent | None = None


class KeyCatalog(Protocol):
    """Wrapped data keys, by key id. `UploadCatalog.create_upload` stores them and
    `RemovalCatalog.terminate` deletes them, in the same transactions as the rows."""

    def wrapped_key(self, dek_id: bytes) -> WrappedKey | None: ...


class UploadCatalog(KeyCatalog, Protocol):
    """Uploads, their records and tail pieces, and the fenced commits that move them on."""

    def create_upload(
        self, upload: Upload, wrapped: WrappedKey | None, event: HookEvent | None = None
    ) -> None:
        """Store the upload's row and wrapped key, and `event` (a final created complete)
        in the hooks' outbox, in one transaction."""

    def get_upload(self, upload_id: str) -> Upload | None: ...
    def records(self, upload_id: str) -> list[RecordRow]: ...
    def tail_pieces(self, upload_id: str) -> list[TailPiece]: ...
    def commit(self, lease: Lease, progress: Progress) -> None:
        """Apply `progress` atomically iff `lease` is current and the offset matches.

        Raises LeaseLost or OffsetConflict, having changed nothing.
        """

    def set_length(self, upload_id: str, length: int) -> None: ...

    def open_uploads(self, owner: str, tenant: str) -> tuple[int, int]:
        """How many of the principal's uploads are unfinished, and their bytes (each
        one's length, or its offset while the length is deferred)."""

    def expired(self, now: float, limit: int = 100) -> list[str]:
        """Ids of active uploads whose expiry has passed, but not those on hold."""


class RemovalCatalog(Protocol):
    """Removing uploads: terminate, shred the key, delete the objects, then forget the
    rows and keep the deletion's receipt."""

    def terminate(self, upload_id: str, deletion: Deletion | None = None) -> None:
        """Mark the upload terminated, delete its wrapped key and record `deletion` (what
        its receipt will say); `shred` comes next. UploadHeld, changing nothing, if the
        upload is on hold."""

    def shred(self, upload_id: str) -> bool:
        """Make the wrapped key `terminate` deleted unrecoverable from the catalog's own
        storage (logs, free space). False while that is not possible yet (a reader holds
        an old snapshot): call again later, before `forget`."""

    def removals_pending(self, limit: int = 100) -> list[str]:
        """Ids of terminated uploads whose key is deleted but whose rows remain: their
        key may still need shredding, then the rows forgetting."""

    def retire(self, upload_id: str) -> None:
        """Hide a finished partial (state terminated) but keep its data and key: a final
        concatenation still reads it. UploadHeld if it is on hold."""

    def finals_using(self, upload_id: str) -> list[str]:
        """Ids of live final uploads that list `upload_id` among their partials."""

    def retention_due(self, completed_before: float, limit: int = 100) -> list[str]:
        """Ids of complete uploads completed at or before `completed_before`, oldest
        first, but not those on hold."""

    def deletion(self, upload_id: str) -> Deletion | None:
        """What `terminate` recorded for the upload's receipt (None: nothing was)."""

    def forget(self, upload_id: str, receipt: StoredReceipt | None = None) -> None:
        """Delete every row of a terminated or expired upload (after its objects), and
        keep `receipt` in the same transaction."""

    def receipt(self, upload_id: str) -> StoredReceipt | None:
        """The deletion receipt of a removed upload, kept for auditors."""


class HoldCatalog(Protocol):
    """Legal holds on uploads; `RemovalCatalog.terminate` and `retire` refuse held ones."""

    def place_hold(self, upload_id: str, hold: Hold) -> bool:
        """Hold the upload (replacing the case of a hold in place); False if there is no
        such upload or it is already terminated."""

    def release_hold(self, upload_id: str) -> bool:
        """Lift the upload's hold; False if it had none (or there is no such upload)."""

    def hold(self, upload_id: str) -> Hold | None: ...


class LegacyMetadataCatalog(KeyCatalog, Protocol):
    """Metadata written in plain text by older versions, and sealing it in place (under
    each upload's key, hence the wrapped keys)."""

    def legacy_metadata(self, after: str = "", limit: int = 100) -> list[Upload]:
        """Uploads (ids > `after`, in id order) whose metadata is still plain text."""

    def seal_legacy_metadata(self, sealed: Sequence[tuple[Upload, WrappedKey | None]]) -> int:
        """Replace plain-text metadata by each upload's `metadata` (sealed, or None), with
        its `header` and `dek_id` and a new wrapped key where one is given (a final from
        before finals had a key); rows no longer plain are left alone. Returns how many
        rows changed; the plain text is then gone from the catalog's files."""


@dataclass(frozen=True)
class StoredKey:
    """One row of the key table: a wrapped data key and whose it is."""

    dek_id: bytes
    upload_id: str
    wrapped: WrappedKey


class KeyRotationCatalog(Protocol):
    """What `gateway keys` needs to rewrap data keys under a new KEK version while
    gateways write: each call is one short transaction."""

    def wrapped_key_counts(self) -> dict[tuple[str, int], int]:
        """How many wrapped keys each (kek_id, kek_version) holds."""

    def wrapped_keys_not_under(
        self, kek_id: str, kek_version: int, after: bytes = b"", limit: int = 100
    ) -> list[StoredKey]:
        """Keys wrapped under anything but (kek_id, kek_version), dek_id > `after`, in
        dek_id order."""

    def replace_wrapped_key(self, dek_id: bytes, old: WrappedKey, new: WrappedKey) -> bool:
        """Put `new` in place of `old` only if the row still holds `old` exactly; False
        (nothing changed) if it was deleted, shredded or rewrapped meanwhile."""


class KeyCheckCatalog(Protocol):
    """The key checks (gateway/keycheck.py): one value wrapped under each KEK version
    gateways used, which a gateway must unwrap to start."""

    def key_checks(self) -> list[tuple[bytes, WrappedKey]]:
        """Every key check: its id and its wrapped value."""

    def add_key_check(self, check_id: bytes, wrapped: WrappedKey) -> bool:
        """Keep a check for `wrapped`'s KEK version unless it has one; True if added."""


class LeaseCatalog(Protocol):
    """Per-upload leases with fencing tokens; `UploadCatalog.commit` checks them, so
    they live in the same database as the uploads."""

    def acquire_lease(self, upload_id: str, holder: str, ttl: float, now: float) -> Lease | None:
        """Take the lease if free or expired; otherwise flag a release request, return None."""

    def try_lease(
        self, upload_id: str, holder: str, ttl: float, now: float, *, ask_up_to: int | None = None
    ) -> Lease | int:
        """`acquire_lease`, but a refusal returns the holder's token, and the holder is
        asked to let go only if its token is at most `ask_up_to` (when given): a waiter
        asks only holders that were there when it arrived."""

    def renew_leases(self, leases: Sequence[Lease], ttl: float, now: float) -> list[LeaseState]:
        """Extend each lease to `now + ttl` in one transaction; their states, in the order
        given. A lease stays valid, even past its expiry, while its holder and token are
        still the row's (taking it over always changes the token); an empty `leases`
        touches nothing."""

    def release_lease(self, lease: Lease) -> None: ...
    def last_fencing_token(self) -> int:
        """The last fencing token handed out (0 before the first): every lease taken
        after this call gets a larger one."""

    def lease_held(self, upload_id: str, now: float) -> bool:
        """Whether someone holds the upload's lease (expiring after `now`); only reads,
        so unlike a failed `acquire_lease` it asks no one to let go."""


class LeaseSignals(Protocol):
    """Word from the catalog's other users that a lease may change hands, sooner than a
    poll would tell (`SignallingCatalog`). Hints only: a signal may be lost or late, so
    holders and waiters keep polling as well."""

    def start(
        self,
        on_release_requested: Callable[[str, int | None], None],
        on_released: Callable[[str], None],
    ) -> None:
        """Listen; the callbacks get an upload id, on a background thread: someone asked
        for an upload held elsewhere (and the token of the lease it asked to end, or
        None when not known: any holder), or its holder let go after being asked."""

    def close(self) -> None:
        """Stop listening (the callbacks are not called once this returns)."""


class SignallingCatalog(Protocol):
    """A `LeaseCatalog` able to signal its lease changes (PostgreSQL; SQLite is not)."""

    def lease_signals(self) -> LeaseSignals:
        """A new listener on this catalog's database, not started yet."""


class GrantCatalog(Protocol):
    """Grants of read access to single uploads. `RemovalCatalog.terminate`, `retire` and
    `forget` delete an upload's grants with it."""

    def add_grant(self, grant: Grant) -> bool:
        """Store `grant`; False (nothing stored) if its upload is missing or terminated.
        Expired grants of the upload are dropped in the same transaction."""

    def grants(self, upload_id: str, now: float) -> list[Grant]:
        """The upload's grants that have not expired at `now`, oldest first."""

    def revoke_grant(self, upload_id: str, grant_id: str) -> bool:
        """Delete the grant; False if the upload has no such grant."""


@dataclass(frozen=True)
class ApiKey:
    """One API key (a bearer token minted by `gateway token create`), without its hash."""

    id: str
    principal: Principal
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class TokenStore(Protocol):
    """Bearer tokens (API keys), stored as SHA-256 hashes only, with the principal (and
    its roles) each stands for; shares nothing with the uploads."""

    def add_token(
        self,
        token_hash: bytes,
        principal: Principal,
        now: float,
        *,
        token_id: str | None = None,
        expires_at: float | None = None,
    ) -> str:
        """Store a token's hash; returns its id (`token_id`, or a random one)."""

    def api_key(self, token_hash: bytes) -> ApiKey | None:
        """The key with this hash, revoked and expired ones included."""

    def principal_for(self, token_hash: bytes) -> Principal | None:
        """The principal of a usable key (neither revoked nor expired now)."""

    def api_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""

    def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke the key; False if there is no such key or it was already revoked."""

    def token_used(self, token_id: str, now: float, *, every: float = 60.0) -> None:
        """Record `now` as the key's last use, unless one was recorded less than `every`
        seconds before (a write at most that often per key)."""

    def token_count(self) -> int: ...


# --- notifications: the hooks' outbox (gateway/hooks/) ---------------------------------


@dataclass(frozen=True)
class HookEvent:
    """An event to notify, written to the outbox once per target URL. `body` is the JSON
    POSTed, exactly; it never holds metadata values."""

    id: str  # "evt_...": receivers deduplicate on it (delivery is at least once)
    type: str  # "upload.completed"
    upload_id: str
    body: str
    created_at: float
    targets: tuple[str, ...]


@dataclass(frozen=True)
class HookDelivery:
    """One row of the outbox: an event on its way to one target."""

    event_id: str
    target: str
    type: str
    upload_id: str
    body: str
    created_at: float
    attempts: int  # failed attempts so far
    next_attempt_at: float
    last_error: str | None  # e.g. "HTTP 500", "timeout"; never a response body
    dead: bool  # attempts ran out: only `gateway hooks retry` sends it again


class HookCatalog(Protocol):
    """The outbox of webhook deliveries. Events enter with the completion that causes
    them (`Progress.event`, `create_upload`); deliverers claim due rows for a while, so
    several gateways never send the same row at once."""

    def claim_hook_deliveries(
        self, holder: str, now: float, claim_for: float, limit: int = 10
    ) -> list[HookDelivery]:
        """Live rows due at `now` that nobody holds, oldest first, now held by `holder`
        until `now + claim_for`."""

    def hook_delivered(self, event_id: str, target: str) -> None:
        """Delete the row: the target answered 2xx."""

    def hook_failed(
        self,
        event_id: str,
        target: str,
        holder: str,
        *,
        next_attempt_at: float,
        error: str,
        dead: bool,
    ) -> bool:
        """Count a failed attempt and release the claim, if `holder` still holds the row;
        `dead`: no further attempt. False (nothing changed) if it does not."""

    def hook_deliveries(
        self,
        *,
        dead: bool | None = None,
        after: tuple[float, str, str] | None = None,
        limit: int = 100,
    ) -> list[HookDelivery]:
        """Rows (only dead or live ones, or both), oldest first, after the row whose
        (created_at, event_id, target) is `after`."""

    def retry_hook_deliveries(self, now: float, event_id: str | None = None) -> int:
        """Make dead rows (of one event, or all) due at `now` with no attempts counted;
        how many."""

    def hook_outbox_depth(self) -> tuple[int, int]:
        """How many rows are live and how many dead."""


# --- end of notifications -------------------------------------------------------------------


# --- the audit log (gateway/audit.py) ------------------------------------------------------


# The `prev` of the first entry: no entry before it.
AUDIT_GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    """One stored audit entry: its canonical JSON exactly as hashed, its SHA-256, and
    members of it repeated for queries."""

    seq: int
    time: str  # RFC 3339 UTC, fixed width: text order is time order
    action: str
    principal: str | None
    tenant: str | None
    upload_id: str | None
    upload_tenant: str | None  # the tenant the upload belongs to, where known
    entry: str  # canonical JSON (RFC 8785)
    hash: str  # hex SHA-256 of `entry`


@dataclass(frozen=True)
class AuditQuery:
    """Filters of an audit query; None: any. Entries come in seq order after `after`."""

    upload_id: str | None = None
    principal: str | None = None
    # Entries of this tenant: those its principals made and those on its uploads.
    tenant: str | None = None
    since: str | None = None  # RFC 3339 in AuditRecord.time's form, inclusive
    until: str | None = None  # exclusive
    after: int = 0
    limit: int = 100


@dataclass(frozen=True)
class StoredCheckpoint:
    seq: int
    issued_at: str
    jws: str  # compact JWS, typ imgw-audit-checkpoint+jws


class AuditCatalog(Protocol):
    """The append-only audit log and its signed checkpoints."""

    def append_audit(self, entry_for: Callable[[int, str], AuditRecord]) -> AuditRecord:
        """In one write transaction: read the last entry's (seq, hash) ((0, 64 zeros) for
        none), build the next with `entry_for(seq + 1, hash)` and store it."""

    def audit_records(self, query: AuditQuery) -> list[AuditRecord]: ...
    def audit_head(self) -> tuple[int, str]:
        """The last entry's (seq, hash); (0, 64 zeros) while the log is empty."""

    def add_audit_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        """Keep a signed checkpoint; False if one for that seq exists already."""

    def audit_checkpoints(self, after: int = 0) -> list[StoredCheckpoint]:
        """The checkpoints of seq > `after`, in seq order."""


# --- end of the audit log -------------------------------------------------------------------


class Catalog(
    UploadCatalog,
    RemovalCatalog,
    HoldCatalog,
    LegacyMetadataCatalog,
    KeyRotationCatalog,
    KeyCheckCatalog,
    LeaseCatalog,
    GrantCatalog,
    TokenStore,
    AuditCatalog,
    HookCatalog,
    Protocol,
):
    """Everything the service keeps durably, in one backend (`SQLiteCatalog`, or
    `PostgresCatalog` for many gateways)."""

    # The schema's versions before and after the catalog was opened (equal: no migration).
    schema_change: tuple[int, int]

    def check(self) -> None:
        """Raise unless the catalog is usable now (for /readyz)."""

    def close(self) -> None: ...
