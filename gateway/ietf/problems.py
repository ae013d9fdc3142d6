"""Errors as the resumable-upload drafts want them: problem+json with their problem types.

Every error keeps the gateway's stable `code` and its RFC 9457 document
(gateway.middleware.problem_body). Where the client's version registers a problem type
for the error (mismatching offset, completed upload, inconsistent length), `type` is that
type's IANA URI and the extension members it defines are added (`expected-offset`,
`provided-offset`). A creation or append that did not complete the upload says so in
its version's completion field, as drafts -06 on require of every such response.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import ERR, GatewayError
from gateway.ietf import headers
from gateway.ietf.versions import (
    COMPLETED_UPLOAD,
    INCONSISTENT_LENGTH,
    MISMATCHING_OFFSET,
    PROBLEM_BASE,
    Version,
)
from gateway.middleware import problem_body

log = logging.getLogger("gateway.ietf")

_TYPES = {
    ERR.MISMATCHED_OFFSET: MISMATCHING_OFFSET,
    ERR.UPLOAD_COMPLETED: COMPLETED_UPLOAD,
    ERR.INCONSISTENT_UPLOAD_LENGTH: INCONSISTENT_LENGTH,
}


def problem_response(
    request: Request,
    version: Version | None,
    exc: GatewayError,
    *,
    writing: bool = False,
    provided_offset: int | None = None,
) -> Response:
    """`exc` as the response; `writing`: the request was a creation or an append."""
    request.state.error_code = exc.code
    if exc.status >= 500:
        log.error("request failed: %s", exc.code, exc_info=exc.__cause__ or exc)
    document = json.loads(problem_body(exc))
    kind = _TYPES.get(exc.err)
    if version is not None and kind in version.problem_types:
        document["type"] = PROBLEM_BASE + kind
        if kind == MISMATCHING_OFFSET:
            expected = exc.headers.get("Upload-Offset")
            if expected is not None and expected.isdigit():
                document["expected-offset"] = int(expected)
            if provided_offset is not None:
                document["provided-offset"] = provided_offset
    extra = dict(exc.headers)
    if version is not None and writing:
        extra.update(headers.complete_field(version, False))
    return Response(
        json.dumps(document).encode(),
        status_code=exc.status,
        headers=extra,
        media_type="application/problem+json",
    )
