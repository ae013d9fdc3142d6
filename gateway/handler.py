"""The tus 1.0 protocol handler: HTTP requests in, service calls, tus responses out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import audit, checksums
from gateway.access import Action
from gateway.audit_http import note
from gateway.auth import Authenticator, client_of
from gateway.catalog.base import Principal, Upload, UploadState
from gateway.config import Settings
from gateway.errors import ERR, GatewayError
from gateway.grants import Grants
from gateway.middleware import BODY_INTO
from gateway.tus import headers as tus
from gateway.uploads import EXTENSIONS, Uploads
from gateway.writer import Body, BodyInterrupted, DirectRead

OFFSET_STREAM = "application/offset+octet-stream"
RECEIPT_HEADER = "Upload-Deletion-Receipt"
_ACTION_OF = {"HEAD": Action.HEAD, "PATCH": Action.WRITE, "DELETE": Action.DELETE}


class TusHandler:
    def __init__(
        self, settings: Settings, uploads: Uploads, auth: Authenticator, grants: Grants
    ) -> None:
        self.settings = settings
        self.uploads = uploads
        self.auth = auth
        self.grants = grants
        self.base = settings.base_path

    def routes(self) -> list[Route]:
        return [
            Route(self.base, self.collection, methods=["POST", "OPTIONS"]),
            Route(self.base.rstrip("/"), self.collection, methods=["POST", "OPTIONS"]),
            Route(
                self.base + "{upload_id}",
                self.resource,
                methods=["HEAD", "PATCH", "DELETE", "OPTIONS"],
            ),
        ]

    # -- dispatch -----------------------------------------------------------------------

    async def collection(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return self.options()
        principal = await self._authenticate(request)
        return await self.post(request, principal)

    async def resource(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return self.options()
        principal = await self._authenticate(request)
        upload_id = request.path_params["upload_id"]
        if not tus.is_valid_upload_id(upload_id):
            raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
        request.state.upload_id = upload_id
        # Role and MFA here; the services refuse (404) an upload not the principal's
        # own, as access.decide does: only owners may do these.
        self.grants.require(principal, _ACTION_OF[request.method])
        if request.method == "HEAD":
            return await self.head(principal, upload_id)
        if request.method == "PATCH":
            return await self.patch(request, principal, upload_id)
        note(request, audit.UPLOAD_DELETED, upload_id, reason="client")
        receipt = await self.uploads.terminate(principal, upload_id)
        # tus clients require exactly 204 No Content: the receipt rides in a header.
        headers = {RECEIPT_HEADER: receipt} if receipt is not None else {}
        return Response(status_code=204, headers=headers)

    async def _authenticate(self, request: Request) -> Principal:
        # The version check comes first: a client speaking another tus version must
        # learn that (412 + Tus-Version) before anything else.
        tus.parse_tus_resumable(request.headers.getlist("tus-resumable"))
        principal = await self.auth.principal(
            request.headers.getlist("authorization"), client=client_of(request)
        )
        request.state.principal = principal.id
        request.state.tenant = principal.tenant
        return principal

    # -- methods ------------------------------------------------------------------------

    def options(self) -> Response:
        return Response(
            status_code=204,
            headers={
                "Tus-Version": tus.TUS_VERSION,
                "Tus-Extension": ",".join(EXTENSIONS),
                "Tus-Max-Size": str(self.settings.max_size),
                "Tus-Checksum-Algorithm": ",".join(checksums.SUPPORTED),
            },
        )

    async def post(self, request: Request, principal: Principal) -> Response:
        h = request.headers
        self.grants.require(principal, Action.CREATE)
        concat = tus.parse_concat(h.getlist("upload-concat"))
        metadata = tus.parse_metadata(
            h.getlist("upload-metadata"), max_bytes=self.settings.metadata_max_bytes
        )
        raw_metadata = metadata.raw if metadata is not None else None
        length = tus.parse_upload_length(h.getlist("upload-length"))
        deferred = tus.parse_defer_length(h.getlist("upload-defer-length"))
        if concat is not None and concat.kind == "final":
            if length is not None or deferred:
                raise GatewayError(
                    ERR.INVALID_UPLOAD_LENGTH, "a final upload takes its length from its partials"
                )
            partial_ids = []
            for url in concat.urls:
                partial_id = tus.upload_id_from_url(url, self.base)
                if partial_id is None:
                    raise GatewayError(ERR.INVALID_CONCAT, f"{url[:80]!r} is not an upload URL")
                partial_ids.append(partial_id)
            upload = await self.uploads.create_final(
                principal, concat=h["upload-concat"], partial_ids=partial_ids, metadata=raw_metadata
            )
            request.state.upload_id = upload.id
            note(
                request, audit.UPLOAD_CREATED, upload.id, settled=True, upload_tenant=upload.tenant
            )
            if upload.state == UploadState.COMPLETE:
                note(
                    request,
                    audit.UPLOAD_COMPLETED,
                    upload.id,
                    settled=True,
                    upload_tenant=upload.tenant,
                )
            return Response(status_code=201, headers=self._created_headers(request, upload))
        if length is not None and deferred:
            raise GatewayError(
                ERR.AMBIGUOUS_UPLOAD_LENGTH, "send Upload-Length or Upload-Defer-Length, not both"
            )
        if length is None and not deferred:
            raise GatewayError(
                ERR.INVALID_UPLOAD_LENGTH, "send Upload-Length, or Upload-Defer-Length: 1"
            )
        with_body = _content_type(request) == OFFSET_STREAM
        if not with_body and _has_body(request):
            # tus creation-with-upload: the body follows PATCH rules. Any other body
            # would be dropped unread while the upload is created empty.
            raise GatewayError(
                ERR.INVALID_CONTENT_TYPE, f"a creation body must be sent as {OFFSET_STREAM}"
            )
        if with_body:  # creation-with-upload writes too
            self.grants.require(principal, Action.WRITE)
        checksum = self._checksum(request) if with_body else None
        content_length = self._content_length(request)
        # Refuse an oversized body before the upload exists, so nothing is left behind.
        if with_body and content_length is not None:
            if length is not None and content_length > length:
                raise GatewayError(
                    ERR.UPLOAD_SIZE_EXCEEDED, "the body is longer than Upload-Length"
                )
            if length is None and content_length > self.settings.max_size:
                raise GatewayError(
                    ERR.UPLOAD_SIZE_EXCEEDED, "the body is longer than Tus-Max-Size allows"
                )
        upload = await self.uploads.create(
            principal,
            length=length,
            metadata=raw_metadata,
            partial_concat="partial" if concat is not None else None,
        )
        request.state.upload_id = upload.id
        note(request, audit.UPLOAD_CREATED, upload.id, settled=True, upload_tenant=upload.tenant)
        headers = self._created_headers(request, upload)
        if with_body:
            try:
                upload, _ = await self.uploads.write(
                    principal,
                    upload.id,
                    offset=0,
                    body=_body(request),
                    checksum=checksum,
                    content_length=content_length,
                )
            except GatewayError as exc:
                exc.headers.setdefault("Location", headers["Location"])
                raise
            if upload.state == UploadState.COMPLETE:
                note(
                    request,
                    audit.UPLOAD_COMPLETED,
                    upload.id,
                    settled=True,
                    upload_tenant=upload.tenant,
                )
            headers.update(_progress_headers(upload))
        return Response(status_code=201, headers=headers)

    async def head(self, principal: Principal, upload_id: str) -> Response:
        upload = await self.uploads.head(principal, upload_id)
        headers = {"Cache-Control": "no-store"}
        if upload.partials and upload.state != UploadState.COMPLETE:
            # An unfinished final: no Upload-Offset until it is concatenated (tus
            # concatenation), Upload-Length once every partial's length is known.
            if upload.length is not None:
                headers["Upload-Length"] = str(upload.length)
        elif upload.length is None:
            headers["Upload-Offset"] = str(upload.offset)
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Offset"] = str(upload.offset)
            headers["Upload-Length"] = str(upload.length)
        metadata = await self.uploads.open_metadata(upload)
        if metadata is not None:
            headers["Upload-Metadata"] = metadata
        if upload.concat is not None:
            headers["Upload-Concat"] = upload.concat
        headers.update(_expires_header(upload))
        return Response(status_code=200, headers=headers)

    async def patch(self, request: Request, principal: Principal, upload_id: str) -> Response:
        h = request.headers
        if _content_type(request) != OFFSET_STREAM:
            raise GatewayError(
                ERR.INVALID_CONTENT_TYPE, f"PATCH bodies must be sent as {OFFSET_STREAM}"
            )
        offset = tus.parse_upload_offset(h.getlist("upload-offset"))
        if offset is None:
            raise GatewayError(ERR.INVALID_OFFSET, "PATCH requires Upload-Offset")
        length = tus.parse_upload_length(h.getlist("upload-length"))
        checksum = self._checksum(request)
        upload, _ = await self.uploads.write(
            principal,
            upload_id,
            offset=offset,
            body=_body(request),
            length=length,
            checksum=checksum,
            content_length=self._content_length(request),
        )
        # Completed by this request: it sent the last bytes, or the length they reach (an
        # empty PATCH to an upload complete already completes nothing).
        if upload.state == UploadState.COMPLETE and (upload.offset > offset or length is not None):
            note(
                request,
                audit.UPLOAD_COMPLETED,
                upload_id,
                settled=True,
                upload_tenant=upload.tenant,
            )
            await self._settle_finals(request, upload)
        return Response(status_code=204, headers=_progress_headers(upload))

    # -- helpers ------------------------------------------------------------------------

    async def _settle_finals(self, request: Request, partial: Upload) -> None:
        """Complete the unfinished finals waiting for `partial` (concatenation-unfinished)."""
        for final in await self.uploads.settle_finals_of(partial):
            note(
                request, audit.UPLOAD_COMPLETED, final.id, settled=True, upload_tenant=final.tenant
            )

    def _checksum(self, request: Request) -> tus.ChecksumHeader | None:
        return tus.parse_upload_checksum(
            request.headers.getlist("upload-checksum"), checksums.SUPPORTED
        )

    def _content_length(self, request: Request) -> int | None:
        return tus.parse_non_negative_int(
            "Content-Length", request.headers.getlist("content-length"), ERR.INVALID_HEADER
        )

    def _created_headers(self, request: Request, upload: Upload) -> dict[str, str]:
        # Never from Host or X-Forwarded-Host: a client could point other clients'
        # uploads anywhere. The configured public URL, else relative (RFC 9110 10.2.2).
        location = self.settings.public_url.rstrip("/") + self.base + upload.id
        return {"Location": location, **_expires_header(upload)}


def _progress_headers(upload: Upload) -> dict[str, str]:
    return {"Upload-Offset": str(upload.offset), **_expires_header(upload)}


def _expires_header(upload: Upload) -> dict[str, str]:
    if upload.state == UploadState.ACTIVE and upload.expires_at is not None:
        return {"Upload-Expires": tus.format_http_date(upload.expires_at)}
    return {}


def _content_type(request: Request) -> str:
    """The request's media type, lower-cased; "" if absent. Two lines are refused:
    a proxy and this server could each pick a different one."""
    values = request.headers.getlist("content-type")
    if len(values) > 1:
        raise GatewayError(ERR.INVALID_CONTENT_TYPE, "send one Content-Type header, not several")
    return _media_type(values[0] if values else None)


def _has_body(request: Request) -> bool:
    """Whether the request has a body: chunked, or a Content-Length other than 0."""
    h = request.headers
    return "transfer-encoding" in h or any(
        v.strip() not in ("", "0") for v in h.getlist("content-length")
    )


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _body(request: Request) -> Body:
    """The request's body, readable straight into the writer's buffers where the server
    offers that (connections.BODY_INTO)."""
    reader = request.scope.get("extensions", {}).get(BODY_INTO)
    return Body(_chunks(request), None if reader is None else _DirectRead(reader))


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise BodyInterrupted from None


class _DirectRead:
    """The server's body reader, its disconnect as the writer knows it."""

    def __init__(self, reader: DirectRead) -> None:
        self._reader = reader

    async def read_into(self, view: memoryview) -> int:
        try:
            return await self._reader.read_into(view)
        except ClientDisconnect:
            raise BodyInterrupted from None

    async def read(self, most: int) -> memoryview:
        try:
            return await self._reader.read(most)
        except ClientDisconnect:
            raise BodyInterrupted from None

    def withdraw(self) -> bool:
        return self._reader.withdraw()
