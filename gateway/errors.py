"""The error catalogue: one stable code and HTTP status per thing that can go wrong.

    GatewayError  (err, detail, headers)  -> RFC 9457 application/problem+json
      .err   one member of ERR: a stable code such as ERR_MISMATCHED_OFFSET
      .status  the HTTP status that code always maps to

The service raises `GatewayError(ERR.X, "a sentence for a human")`; only the HTTP
layer turns it into a response. Codes reuse tusd's names where tusd has one, so
dashboards and client code written for tusd keep working.
"""

from __future__ import annotations

import enum


class ERR(enum.Enum):
    """Stable error codes. The value is (code, HTTP status); codes are unique."""

    UNSUPPORTED_VERSION = ("ERR_UNSUPPORTED_VERSION", 412)
    INVALID_CONTENT_TYPE = ("ERR_INVALID_CONTENT_TYPE", 415)
    MISMATCHED_OFFSET = ("ERR_MISMATCHED_OFFSET", 409)
    CHECKSUM_MISMATCH = ("ERR_CHECKSUM_MISMATCH", 460)
    MAX_SIZE_EXCEEDED = ("ERR_MAX_SIZE_EXCEEDED", 413)
    UPLOAD_SIZE_EXCEEDED = ("ERR_UPLOAD_SIZE_EXCEEDED", 413)
    UPLOAD_NOT_FOUND = ("ERR_UPLOAD_NOT_FOUND", 404)
    UPLOAD_GONE = ("ERR_UPLOAD_GONE", 410)
    UPLOAD_LOCKED = ("ERR_UPLOAD_LOCKED", 423)
    UPLOAD_ON_HOLD = ("ERR_UPLOAD_ON_HOLD", 409)  # a legal hold: nobody may delete it
    UPLOAD_NOT_FINISHED = ("ERR_UPLOAD_NOT_FINISHED", 400)
    MODIFY_FINAL = ("ERR_MODIFY_FINAL", 403)
    INVALID_HEADER = ("ERR_INVALID_HEADER", 400)
    INVALID_UPLOAD_LENGTH = ("ERR_INVALID_UPLOAD_LENGTH", 400)
    INVALID_UPLOAD_DEFER_LENGTH = ("ERR_INVALID_UPLOAD_LENGTH_DEFER", 400)
    AMBIGUOUS_UPLOAD_LENGTH = ("ERR_AMBIGUOUS_UPLOAD_LENGTH", 400)  # both of the two above
    INVALID_OFFSET = ("ERR_INVALID_OFFSET", 400)
    INVALID_METADATA = ("ERR_INVALID_METADATA", 400)
    INVALID_CHECKSUM = ("ERR_INVALID_CHECKSUM", 400)
    UNSUPPORTED_CHECKSUM_ALGORITHM = ("ERR_UNSUPPORTED_CHECKSUM_ALGORITHM", 400)
    INVALID_CONCAT = ("ERR_INVALID_CONCAT", 400)
    LENGTH_ALREADY_SET = ("ERR_UPLOAD_LENGTH_ALREADY_SET", 400)
    UNAUTHORIZED = ("ERR_UNAUTHORIZED", 401)
    FORBIDDEN = ("ERR_FORBIDDEN", 403)  # authenticated, but without the role this needs
    # Access (gateway/access.py, gateway/grants.py).
    MFA_REQUIRED = ("ERR_MFA_REQUIRED", 403)  # the action needs a sign-in with a second factor
    INVALID_GRANT = ("ERR_INVALID_GRANT", 400)  # a grant request's body is not valid
    GRANT_NOT_FOUND = ("ERR_GRANT_NOT_FOUND", 404)
    INVALID_TOKEN_REQUEST = ("ERR_INVALID_TOKEN_REQUEST", 400)  # POST /admin/tokens body
    TOKEN_NOT_FOUND = ("ERR_TOKEN_NOT_FOUND", 404)  # no API key of this id in the tenant
    INVALID_CASE_REFERENCE = ("ERR_INVALID_CASE_REFERENCE", 400)
    ORIGIN_NOT_ALLOWED = ("ERR_ORIGIN_NOT_ALLOWED", 403)  # a CORS preflight from another origin
    METHOD_NOT_ALLOWED = ("ERR_METHOD_NOT_ALLOWED", 405)
    NOT_FOUND = ("ERR_NOT_FOUND", 404)
    UPLOAD_INTERRUPTED = ("ERR_UPLOAD_INTERRUPTED", 400)
    RANGE_NOT_SATISFIABLE = ("ERR_RANGE_NOT_SATISFIABLE", 416)
    INVALID_HOST = ("ERR_INVALID_HOST", 400)
    MALFORMED_REQUEST = ("ERR_MALFORMED_REQUEST", 400)
    HEADER_TIMEOUT = ("ERR_HEADER_TIMEOUT", 408)
    HEADERS_TOO_LARGE = ("ERR_HEADERS_TOO_LARGE", 431)
    UNSUPPORTED_TRANSFER_CODING = ("ERR_UNSUPPORTED_TRANSFER_CODING", 501)
    STORE_UNAVAILABLE = ("ERR_STORE_UNAVAILABLE", 503)
    CATALOG_UNAVAILABLE = ("ERR_CATALOG_UNAVAILABLE", 503)
    # The data dir's disk (or quota) is full: nothing was recorded; retry once space returns.
    INSUFFICIENT_STORAGE = ("ERR_INSUFFICIENT_STORAGE", 507)
    SERVER_SHUTDOWN = ("ERR_SERVER_SHUTDOWN", 503)
    SERVER_BUSY = ("ERR_SERVER_BUSY", 503)
    KEY_SHRED_PENDING = ("ERR_KEY_SHRED_PENDING", 503)
    TOO_MANY_WRITERS = ("ERR_TOO_MANY_WRITERS", 429)
    RATE_LIMITED = ("ERR_RATE_LIMITED", 429)
    QUOTA_EXCEEDED = ("ERR_QUOTA_EXCEEDED", 429)
    # -- identity: API keys, OIDC sign-in, brute-force limiting --
    TOKEN_EXPIRED = ("ERR_TOKEN_EXPIRED", 401)  # an API key or access token past its expiry
    TOKEN_REVOKED = ("ERR_TOKEN_REVOKED", 401)  # an API key revoked by `gateway token revoke`
    AUTH_THROTTLED = ("ERR_AUTH_THROTTLED", 429)  # too many failed authentications
    IDENTITY_PROVIDER_UNAVAILABLE = ("ERR_IDENTITY_PROVIDER_UNAVAILABLE", 503)
    # -- end of identity --
    # -- IETF resumable uploads (gateway/ietf) --
    UNSUPPORTED_INTEROP_VERSION = ("ERR_UNSUPPORTED_INTEROP_VERSION", 400)
    INVALID_UPLOAD_COMPLETE = ("ERR_INVALID_UPLOAD_COMPLETE", 400)  # Upload-(In)Complete
    INCONSISTENT_UPLOAD_LENGTH = ("ERR_INCONSISTENT_UPLOAD_LENGTH", 400)
    UPLOAD_COMPLETED = ("ERR_UPLOAD_COMPLETED", 400)  # an append to a completed upload
    # -- end of IETF resumable uploads --
    STORED_DATA_CORRUPT = ("ERR_STORED_DATA_CORRUPT", 500)
    INTERNAL = ("ERR_INTERNAL_SERVER_ERROR", 500)
    # the audit log
    INVALID_AUDIT_QUERY = ("ERR_INVALID_AUDIT_QUERY", 400)
    # notifications (gateway/hooks/): the pre-create hook refused, or could not be asked
    REJECTED_BY_HOOK = ("ERR_REJECTED_BY_HOOK", 403)
    HOOK_UNAVAILABLE = ("ERR_HOOK_UNAVAILABLE", 503)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]


class GatewayError(Exception):
    """An error with a stable code that the HTTP layer renders as problem+json."""

    def __init__(self, err: ERR, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{err.code}: {detail}")
        self.err = err
        self.detail = detail
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return self.err.status

    @property
    def code(self) -> str:
        return self.err.code
