"""Legal holds: placing, lifting and describing one (blocking; the CLI and the admin API).

A held upload cannot be deleted by anyone: its client's DELETE and `gateway delete`
answer 409 `ERR_UPLOAD_ON_HOLD`, and neither the expiry reaper nor the retention pass
touch it. The catalog refuses to terminate a held upload in the transaction that would
delete its key, so a hold placed while a removal starts wins or loses cleanly.

A hold may name a case reference: a short token from the legal system (a case or
matter number such as `LIT-2026-0042`). It is stored and logged in clear, so it must
never carry patient data; the strict character set (no spaces) keeps names out.
"""

from __future__ import annotations

import re
from typing import Protocol

from gateway.catalog.base import Hold, HoldCatalog, Upload, UploadState
from gateway.errors import ERR, GatewayError
from gateway.signer import rfc3339

CASE_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


class HoldingCatalog(HoldCatalog, Protocol):
    def get_upload(self, upload_id: str) -> Upload | None: ...


def check_case(case: object) -> str | None:
    """`case` if it is None or a valid case reference; else 400 ERR_INVALID_CASE_REFERENCE."""
    if case is None:
        return None
    if not isinstance(case, str) or not CASE_REFERENCE.fullmatch(case):
        raise GatewayError(
            ERR.INVALID_CASE_REFERENCE,
            "a case reference is 1 to 64 characters of A-Z a-z 0-9 . _ : / - starting with a "
            "letter or digit (a case number, never patient data)",
        )
    return case


def place(
    catalog: HoldingCatalog,
    upload_id: str,
    *,
    case: str | None,
    placed_by: str,
    now: float,
    tenant: str | None = None,
) -> Hold:
    """Place (or replace) the hold. `tenant`: only on that tenant's uploads (an admin
    over HTTP); None for the operator's command line."""
    hold = Hold(case=check_case(case), placed_by=placed_by, placed_at=now)
    if tenant is not None:
        _live(catalog, upload_id, tenant)
    if not catalog.place_hold(upload_id, hold):
        raise _not_found()
    return hold


def release(catalog: HoldingCatalog, upload_id: str, *, tenant: str | None = None) -> bool:
    """Lift the hold; False if there was none. 404 for an unknown or removed upload, or
    one of another tenant than `tenant` (if given)."""
    if tenant is not None:
        _live(catalog, upload_id, tenant)
    if catalog.release_hold(upload_id):
        return True
    _live(catalog, upload_id)
    return False


def current(catalog: HoldingCatalog, upload_id: str, *, tenant: str | None = None) -> Hold | None:
    _live(catalog, upload_id, tenant)
    return catalog.hold(upload_id)


def describe(upload_id: str, hold: Hold | None) -> dict[str, object]:
    """The JSON the admin API answers (and the CLI prints)."""
    if hold is None:
        return {"upload_id": upload_id, "held": False}
    return {
        "upload_id": upload_id,
        "held": True,
        "case": hold.case,
        "placed_by": hold.placed_by,
        "placed_at": rfc3339(hold.placed_at),
    }


def _live(catalog: HoldingCatalog, upload_id: str, tenant: str | None = None) -> Upload:
    upload = catalog.get_upload(upload_id)
    if upload is None or upload.state == UploadState.TERMINATED:
        raise _not_found()
    if tenant is not None and upload.tenant != tenant:
        raise _not_found()  # another tenant's upload: as if there were none
    return upload


def _not_found() -> GatewayError:
    return GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
