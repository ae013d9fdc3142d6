"""The resumable-upload draft's requests mapped onto the uploads service the tus handler uses.

    POST    <base>        creation (with or without content)   -> 201, Location
    HEAD    <base><id>    offset retrieval                     -> 204, Upload-Offset
    PATCH   <base><id>    append                               -> 201 (v3-v6) / 204 (v7+)
    DELETE  <base><id>    cancellation                         -> 204
    OPTIONS either        limits                               -> 204, Upload-Limit

An upload's length is recorded as soon as the client states it (`Upload-Length`, or
`Upload-Complete: ?1` with a Content-Length); until then it is deferred, as with tus's
Upload-Defer-Length, and the request that completes the upload settles it at the
offset reached. The store completes an upload (seals its last record, signs its
manifest) when its offset reaches its length. With GATEWAY_IETF_SEND_104 a creation
sends `104 (Upload Resumption Supported)` with the upload's URL before its body is read,
where the server offers informational responses (gateway/connections.py; docs/DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import audit
from gateway.access import Action
from gateway.audit_http import note
from gateway.auth import Authenticator, client_of
from gateway.catalog.base import Principal, Upload, UploadState
from gateway.config import Settings
from gateway.connections import INFORMATIONAL
from gateway.errors import ERR, GatewayError
from gateway.grants import Grants
from gateway.handler import RECEIPT_HEADER, _body, _media_type
from gateway.ietf import headers as ietf
from gateway.ietf.problems import problem_response
from gateway.ietf.versions import VERSIONS, Version
from gateway.tus import headers as tus
from gateway.uploads import Uploads, empty_body

Endpoint = Callable[[Request], Awaitable[Response]]
_ACTION_OF = {"HEAD": Action.HEAD, "PATCH": Action.WRITE, "DELETE": Action.DELETE}


class IetfHandler:
    def __init__(
        self, settings: Settings, uploads: Uploads, auth: Authenticator, grants: Grants
    ) -> None:
        self.settings = settings
        self.uploads = uploads
        self.auth = auth
        self.grants = grants
        self.base = settings.base_path

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self, tus_routes: list[Route]) -> list[Route]:
        """The tus routes, each answering a request that carries
        Upload-Draft-Interop-Version here instead (whatever else it carries)."""
        routes = []
        for route in tus_routes:
            resource = "{upload_id}" in route.path
            mine = self.resource if resource else self.collection
            ordinary = None if resource else self.ordinary
            endpoint = _either(mine, cast(Endpoint, route.endpoint), ordinary)
            routes.append(Route(route.path, endpoint, methods=sorted(route.methods or ())))
        return routes

    async def collection(self, request: Request) -> Response:
        return await self._answer(request, self._collection)

    async def resource(self, request: Request) -> Response:
        return await self._answer(request, self._resource)

    async def _answer(
        self, request: Request, act: Callable[[Request, Version], Awaitable[Response]]
    ) -> Response:
        version: Version | None = None
        try:
            version = ietf.parse_interop_version(request.headers.getlist(ietf.INTEROP_HEADER))
            return await act(request, version)
        except GatewayError as exc:
            writing = request.method in ("POST", "PATCH")
            provided = getattr(request.state, "provided_offset", None)
            return problem_response(
                request, version, exc, writing=writing, provided_offset=provided
            )

    async def ordinary(self, request: Request) -> Response:
        """A plain POST of a whole body, with no upload protocol at all: stored as an
        upload created complete (as the drafts' creation with the whole body), answered
        201 with its Location, so a client that knows no resumable protocol can still
        send a study in one request."""
        version = VERSIONS[max(VERSIONS)]
        try:
            principal = await self._authenticate(request)
            return await self.create(request, version, principal, whole=True)
        except GatewayError as exc:
            return problem_response(request, None, exc, writing=True)

    async def _collection(self, request: Request, version: Version) -> Response:
        if request.method == "OPTIONS":
            return self.options(version)
        principal = await self._authenticate(request)
        return await self.create(request, version, principal)

    async def _resource(self, request: Request, version: Version) -> Response:
        if request.method == "OPTIONS":
            return self.options(version)
        principal = await self._authenticate(request)
        upload_id = request.path_params["upload_id"]
        if not tus.is_valid_upload_id(upload_id):
            raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
        request.state.upload_id = upload_id
        self.grants.require(principal, _ACTION_OF[request.method])
        if request.method == "PATCH":
            return await self.append(request, version, principal, upload_id)
        _refuse_fields(request, version)
        if request.method == "HEAD":
            return await self.head(version, principal, upload_id)
        note(request, audit.UPLOAD_DELETED, upload_id, reason="client")
        receipt = await self.uploads.terminate(principal, upload_id)
        return Response(
            status_code=204, headers={RECEIPT_HEADER: receipt} if receipt is not None else {}
        )

    async def _authenticate(self, request: Request) -> Principal:
        principal = await self.auth.principal(
            request.headers.getlist("authorization"), client=client_of(request)
        )
        request.state.principal = principal.id
        request.state.tenant = principal.tenant
        return principal

    # -- methods ------------------------------------------------------------------------

    def options(self, version: Version) -> Response:
        found = self._limits(version, None)
        if version.partial_upload_type:
            found["Accept-Patch"] = ietf.PARTIAL_UPLOAD
        return Response(status_code=204, headers=found)

    async def create(
        self, request: Request, version: Version, principal: Principal, *, whole: bool = False
    ) -> Response:
        """An upload creation; `whole`: an ordinary POST, its body the whole upload."""
        h = request.headers
        self.grants.require(principal, Action.CREATE)
        if h.getlist("upload-offset"):
            raise GatewayError(ERR.INVALID_HEADER, "a creation must not carry Upload-Offset")
        field = ietf.complete_field_name(version)
        complete = True if whole else ietf.parse_complete(version, h.getlist(field))
        if complete is None:
            raise GatewayError(
                ERR.INVALID_UPLOAD_COMPLETE,
                f"a creation request needs {field}",
            )
        size = _body_size(request)
        length = _settled_length(ietf.parse_length(h.getlist("upload-length")), complete, 0, size)
        if size != 0:
            self.grants.require(principal, Action.WRITE)
            limit = self.settings.max_size if length is None else length
            if size is not None and size > limit:
                raise GatewayError(ERR.UPLOAD_SIZE_EXCEEDED, f"the body is longer than {limit}")
        upload = await self.uploads.create(principal, length=length, metadata=self._metadata(h))
        request.state.upload_id = upload.id
        note(request, audit.UPLOAD_CREATED, upload.id, settled=True, upload_tenant=upload.tenant)
        location = {"Location": self.settings.public_url.rstrip("/") + self.base + upload.id}
        if not whole:  # an ordinary client expects no 1xx
            await self._resumption_supported(request, version, location["Location"])
        try:
            if upload.state == UploadState.ACTIVE and (size != 0 or complete):
                upload = await self._write(request, principal, upload, 0, complete, None, size)
        except GatewayError as exc:
            exc.headers.update(location)  # the upload exists: the client may resume it
            raise
        headers = {**location, **self._progress(version, upload)}
        return Response(status_code=201, headers=headers)

    async def head(self, version: Version, principal: Principal, upload_id: str) -> Response:
        upload = await self.uploads.get(principal, upload_id)  # 404 unless the owner's
        if upload.state == UploadState.ACTIVE and upload.offset != upload.length:
            # A client asks for the offset only once it gave up on its last request,
            # whose bytes may still be arriving: that request is stopped (it saves what
            # came) before the offset is read, so the next append is accepted at it (the
            # drafts' offset retrieval; tus's HEAD leaves a live PATCH alone instead).
            # One that has all its bytes may be completing the object: left alone.
            leases = self.uploads.leases
            await leases.release(await leases.acquire(upload_id))
        upload = await self.uploads.head(principal, upload_id)
        headers = {"Cache-Control": "no-store", **self._progress(version, upload)}
        if version.lengths_and_limits and upload.length is not None:
            headers["Upload-Length"] = str(upload.length)
        return Response(status_code=204, headers=headers)

    async def append(
        self, request: Request, version: Version, principal: Principal, upload_id: str
    ) -> Response:
        h = request.headers
        if version.partial_upload_type:
            values = h.getlist("content-type")
            if len(values) != 1 or _media_type(values[0]) != ietf.PARTIAL_UPLOAD:
                raise GatewayError(
                    ERR.INVALID_CONTENT_TYPE, f"appends must be sent as {ietf.PARTIAL_UPLOAD}"
                )
        offset = ietf.parse_offset(h.getlist("upload-offset"))
        if offset is None:
            raise GatewayError(ERR.INVALID_OFFSET, "an append needs Upload-Offset")
        request.state.provided_offset = offset
        complete = ietf.parse_complete(version, h.getlist(ietf.complete_field_name(version)))
        if complete is None:
            if version.complete_required:
                raise GatewayError(
                    ERR.INVALID_UPLOAD_COMPLETE,
                    f"an append needs {ietf.complete_field_name(version)}",
                )
            complete = version.absent_means_complete
        size = _body_size(request)
        stated = ietf.parse_length(h.getlist("upload-length"))
        upload = await self.uploads.get(principal, upload_id)
        if upload.state == UploadState.COMPLETE:
            return self._completed(version, upload, offset, complete, size)
        length = _settled_length(stated, complete, offset, size)
        if length is not None and upload.length is not None and length != upload.length:
            raise GatewayError(
                ERR.INCONSISTENT_UPLOAD_LENGTH,
                f"the upload's length is {upload.length}, this request says {length}",
                headers={"Upload-Offset": str(upload.offset)},
            )
        upload = await self._write(request, principal, upload, offset, complete, length, size)
        return Response(status_code=version.append_status, headers=self._progress(version, upload))

    # -- helpers ------------------------------------------------------------------------

    async def _resumption_supported(self, request: Request, version: Version, url: str) -> None:
        """104 with the new upload's URL, before its body is read: a client whose creation
        is cut off resumes there (URLSession resumes only after one). Opt-in: a proxy may
        not pass it on and some clients (Python's http.client) take it for the answer."""
        if self.settings.ietf_send_104 and INFORMATIONAL in request.scope.get("extensions", {}):
            headers = [
                (ietf.INTEROP_HEADER.lower().encode(), str(version.number).encode()),
                (b"location", url.encode("latin-1")),
            ]
            await request._send({"type": INFORMATIONAL, "status": 104, "headers": headers})

    async def _write(
        self,
        request: Request,
        principal: Principal,
        upload: Upload,
        offset: int,
        complete: bool,
        length: int | None,
        size: int | None,
    ) -> Upload:
        """Append the body; if the request completes the upload and its body came whole,
        settle a deferred length at the offset reached, and check a stated one is reached."""
        try:
            upload, outcome = await self.uploads.write(
                principal,
                upload.id,
                offset=offset,
                body=_body(request) if size != 0 else empty_body(),
                length=length,
                content_length=size,
            )
        except GatewayError as exc:
            if exc.err is ERR.LENGTH_ALREADY_SET:
                raise GatewayError(ERR.INCONSISTENT_UPLOAD_LENGTH, exc.detail) from exc
            raise
        if complete and outcome.stop_reason is None and upload.state == UploadState.ACTIVE:
            if upload.length is None:
                upload, _ = await self.uploads.write(
                    principal, upload.id, offset=upload.offset, body=empty_body(),
                    length=upload.offset,
                )  # fmt: skip
            else:
                raise GatewayError(
                    ERR.INCONSISTENT_UPLOAD_LENGTH,
                    f"the upload ends at {upload.length} bytes, not at {upload.offset}",
                    headers={"Upload-Offset": str(upload.offset)},
                )
        if upload.state == UploadState.COMPLETE and outcome.stop_reason is None:
            note(
                request, audit.UPLOAD_COMPLETED, upload.id, settled=True,
                upload_tenant=upload.tenant,
            )  # fmt: skip
        return upload

    def _completed(
        self, version: Version, upload: Upload, offset: int, complete: bool, size: int | None
    ) -> Response:
        """An append to a completed upload: the offset is checked first (409); an empty
        one that completes it again is answered as the completing one was (a client that
        lost that response retries it); anything else is refused."""
        if offset != upload.offset:
            raise GatewayError(
                ERR.MISMATCHED_OFFSET,
                f"Upload-Offset {offset} does not match the upload's offset {upload.offset}",
                headers={"Upload-Offset": str(upload.offset)},
            )
        if not complete or size != 0:
            raise GatewayError(
                ERR.UPLOAD_COMPLETED,
                f"the upload is complete at {upload.offset} bytes",
                headers={"Upload-Offset": str(upload.offset)},
            )
        return Response(status_code=version.append_status, headers=self._progress(version, upload))

    def _progress(self, version: Version, upload: Upload) -> dict[str, str]:
        done = upload.state == UploadState.COMPLETE
        return {
            "Upload-Offset": str(upload.offset),
            **ietf.complete_field(version, done),
            **self._limits(version, upload),
        }

    def _limits(self, version: Version, upload: Upload | None) -> dict[str, str]:
        if upload is None:
            age: float | None = self.settings.upload_ttl
        elif upload.state == UploadState.ACTIVE and upload.expires_at is not None:
            age = upload.expires_at - self.uploads.clock()
        else:
            age = None
        return ietf.format_limits(version, max_size=self.settings.max_size, max_age=age)

    def _metadata(self, h: Headers) -> str | None:
        given = tus.parse_metadata(
            h.getlist("upload-metadata"), max_bytes=self.settings.metadata_max_bytes
        )
        if given is not None:
            return given.raw
        return ietf.representation_metadata(
            h.getlist("content-type"),
            h.getlist("content-disposition"),
            max_bytes=self.settings.metadata_max_bytes,
        )


def _either(mine: Endpoint, tus_endpoint: Endpoint, ordinary: Endpoint | None) -> Endpoint:
    """The dispatch rule: Upload-Draft-Interop-Version makes a request ours; so does a
    POST of a body with no upload protocol at all (`ordinary`); the rest is tus's."""

    async def endpoint(request: Request) -> Response:
        if ietf.INTEROP_HEADER in request.headers:
            return await mine(request)
        if ordinary is not None and _is_ordinary_upload(request):
            return await ordinary(request)
        return await tus_endpoint(request)

    return endpoint


def _is_ordinary_upload(request: Request) -> bool:
    """A POST with a body and no upload protocol: no Tus-Resumable, no Upload-* field.
    (A tus creation without Tus-Resumable carries Upload-Length or Upload-Defer-Length:
    it still meets tus's 412.)"""
    h = request.headers
    if request.method != "POST" or "tus-resumable" in h:
        return False
    if any(name.lower().startswith("upload-") for name in h):
        return False
    has_body = "transfer-encoding" in h or h.get("content-length", "0").strip() not in ("", "0")
    return has_body


def _refuse_fields(request: Request, version: Version) -> None:
    """Offset retrieval and cancellation carry no upload state (400, as the drafts say)."""
    names = ["Upload-Offset", ietf.complete_field_name(version)]
    if version.lengths_and_limits:
        names.append("Upload-Length")
    for name in names:
        if name in request.headers:
            raise GatewayError(ERR.INVALID_HEADER, f"a {request.method} must not carry {name}")


def _body_size(request: Request) -> int | None:
    """The body's announced size: Content-Length, None if chunked, 0 if neither."""
    size = tus.parse_non_negative_int(
        "Content-Length", request.headers.getlist("content-length"), ERR.INVALID_HEADER
    )
    if size is None and "transfer-encoding" not in request.headers:
        return 0
    return size


def _settled_length(
    stated: int | None, complete: bool, offset: int, size: int | None
) -> int | None:
    """The upload's length as the request states it: Upload-Length, or the end of a body
    of known size that completes the upload; both must agree. None: not stated."""
    implied = offset + size if complete and size is not None else None
    if stated is not None and implied is not None and stated != implied:
        raise GatewayError(
            ERR.INCONSISTENT_UPLOAD_LENGTH,
            f"Upload-Length says {stated} bytes, the completing body ends at {implied}",
        )
    return stated if stated is not None else implied
