"""Reading back over HTTP: decrypted downloads with Range, manifests, and the JWKS."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway import audit, jws, manifest, sm2
from gateway.access import Action
from gateway.audit_http import note
from gateway.auth import Authenticator, client_of
from gateway.catalog.base import Upload, UploadState
from gateway.config import Settings
from gateway.errors import ERR, GatewayError
from gateway.grants import Grants
from gateway.keys.base import KeyProvider, KeyUnusable
from gateway.ranges import Unsatisfiable, parse_range
from gateway.reader import NotReadable, Reader
from gateway.runner import Runner
from gateway.sealed import InvalidSealedData
from gateway.store.base import ObjectNotFound
from gateway.tus.headers import is_valid_upload_id
from gateway.uploads import Uploads

log = logging.getLogger("gateway.downloads")

# The SM2 keys of suite-2 manifests, apart from /.well-known/jwks.json: a JWK with crv
# "SM2" is registered nowhere, and some JOSE libraries refuse a whole set that has one
# (joserfc 1.8 raises on it). MANIFEST.md, "SM2".
SM2_JWKS_PATH = "/.well-known/sm2-manifest-keys.json"
SM2_PEM_PATH = "/.well-known/sm2-manifest-keys.pem"
# Accept this on GET /files/{id}/manifest for the SM2 form of a suite-2 reader's manifest.
SM2_MEDIA_TYPE = "application/imgw-manifest+sm2"


class DownloadHandler:
    def __init__(
        self,
        settings: Settings,
        *,
        uploads: Uploads,
        reader: Reader,
        keys: KeyProvider,
        runner: Runner,
        auth: Authenticator,
        grants: Grants,
    ) -> None:
        self.settings = settings
        self.uploads = uploads
        self.reader = reader
        self.keys = keys
        self.runner = runner
        self.auth = auth
        self.grants = grants

    def routes(self) -> list[Route]:
        base = self.settings.base_path
        return [
            Route(base + "{upload_id}", self.download, methods=["GET"]),
            Route(base + "{upload_id}/manifest", self.manifest, methods=["GET"]),
            Route("/.well-known/jwks.json", self.jwks, methods=["GET"]),
            Route(SM2_JWKS_PATH, self.sm2_jwks, methods=["GET"]),
            Route(SM2_PEM_PATH, self.sm2_pem, methods=["GET"]),
        ]

    async def _finished(self, request: Request, action: Action) -> Upload:
        principal = await self.auth.principal(
            request.headers.getlist("authorization"), client=client_of(request)
        )
        request.state.principal = principal.id
        request.state.tenant = principal.tenant
        upload_id = request.path_params["upload_id"]
        if not is_valid_upload_id(upload_id):
            raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
        request.state.upload_id = upload_id
        # The owner, a grantee, or a reader or auditor of the tenant (access.py).
        found = await self.grants.authorize(principal, action, upload_id)
        upload = await self.uploads.readable(found)
        if upload.state != UploadState.COMPLETE or upload.length is None:
            raise GatewayError(
                ERR.UPLOAD_NOT_FINISHED, "the upload is not finished; nothing can be read yet"
            )
        return upload

    async def download(self, request: Request) -> Response:
        upload = await self._finished(request, Action.DOWNLOAD)
        size = upload.length or 0
        headers = {
            "Accept-Ranges": "bytes",
            # Finished uploads never change, so the id is a strong validator.
            "ETag": f'"{upload.id}"',
            "Content-Type": "application/octet-stream",
            "Content-Disposition": "attachment",
            "Cache-Control": "private, no-store",
        }
        ranges = request.headers.getlist("range")
        if request.headers.get("if-range") not in (None, headers["ETag"]):
            ranges = []  # RFC 9110 13.1.5: a stale If-Range means "send it all"
        try:
            span = parse_range(ranges, size)
        except Unsatisfiable:
            raise GatewayError(
                ERR.RANGE_NOT_SATISFIABLE,
                f"the range lies outside the {size} bytes of this upload",
                headers={"Content-Range": f"bytes */{size}"},
            ) from None
        start, end = span if span is not None else (0, size)
        byte_range = f"{start}-{end - 1}" if end > start else None
        note(
            request,
            audit.UPLOAD_DOWNLOADED,
            upload.id,
            upload_tenant=upload.tenant,
            range=byte_range,
            bytes=end - start,
        )
        chunks = self.reader.read(upload, start, end)
        # Read the first record before answering, so a missing key or a damaged
        # object is a clean error status rather than a cut-off body.
        first = await self._next(chunks)
        headers["Content-Length"] = str(end - start)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return StreamingResponse(
            self._rest(request, first, chunks), status_code=status, headers=headers
        )

    async def _next(self, chunks: Iterator[bytes]) -> bytes | None:
        try:
            return await self.runner.io(next, chunks, None)
        except (InvalidSealedData, ObjectNotFound) as exc:
            raise GatewayError(
                ERR.STORED_DATA_CORRUPT, "the stored upload failed verification"
            ) from exc
        except NotReadable as exc:
            raise GatewayError(ERR.UPLOAD_GONE, str(exc)) from exc
        except KeyUnusable as exc:
            # As for writes (UploadKeys.sealer): a KEK this provider does not hold.
            raise GatewayError(ERR.STORED_DATA_CORRUPT, "the upload's key cannot be used") from exc

    async def _rest(
        self, request: Request, first: bytes | None, chunks: Iterator[bytes]
    ) -> AsyncIterator[bytes]:
        chunk = first
        while chunk is not None:
            yield chunk
            try:
                chunk = await self._next(chunks)
            except GatewayError as exc:
                # The status line is out: the error escapes to the server, which drops
                # the connection, so the client gets fewer bytes than Content-Length
                # and knows the body is incomplete. The reader holds the last byte
                # back until every check has passed, so this never ends as complete.
                request.state.error_code = exc.code
                log.error(
                    "download cut short: %s",
                    exc.code,
                    extra={"upload_id": request.path_params["upload_id"]},
                )
                raise

    async def manifest(self, request: Request) -> Response:
        upload = await self._finished(request, Action.MANIFEST)
        note(request, audit.MANIFEST_FETCHED, upload.id, upload_tenant=upload.tenant)
        accept = request.headers.get("accept", "")
        if SM2_MEDIA_TYPE in accept:
            return await self._sm2_manifest(upload)
        want_json = "application/json" in accept
        try:
            # The reader's view where there is one: it discloses the plaintext SHA-256
            # (MANIFEST.md); a final concatenation's own signed manifest otherwise.
            token = await self.uploads.signed_manifest(upload)
        except ObjectNotFound as exc:
            if upload.partials:
                # Signed before the final existed: gone only if the store lost it.
                raise GatewayError(
                    ERR.NOT_FOUND, "this final concatenation's manifest is missing from the store"
                ) from exc
            raise GatewayError(ERR.UPLOAD_NOT_FINISHED, "the manifest is not written yet") from exc
        media = "application/json" if want_json else "application/jose"
        body = manifest.payload(token) if want_json else token.encode("ascii")
        return Response(body, media_type=media, headers={"Cache-Control": "private, no-store"})

    async def _sm2_manifest(self, upload: Upload) -> Response:
        try:
            token = await self.uploads.upload_keys.signed_sm2_manifest(upload)
        except ObjectNotFound as exc:
            raise GatewayError(
                ERR.NOT_FOUND, "this upload's manifest has no SM2 form: it is not of suite 2"
            ) from exc
        return Response(
            token.encode("ascii"),
            media_type=SM2_MEDIA_TYPE,
            headers={"Cache-Control": "private, no-store"},
        )

    async def jwks(self, request: Request) -> Response:
        document = jws.jwks(self.keys.public_signing_keys())
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

    async def sm2_jwks(self, request: Request) -> Response:
        document = jws.jwks(await self.runner.io(self.keys.public_sm2_keys))
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

    async def sm2_pem(self, request: Request) -> Response:
        keys = await self.runner.io(self.keys.public_sm2_keys)
        ordered = [k for k in keys if k.current] + [k for k in keys if not k.current]
        pairs = [(k.kid, k.key) for k in ordered if isinstance(k.key, sm2.Sm2PublicKey)]
        return Response(
            sm2.pem_bundle(pairs),
            media_type="application/x-pem-file",
            headers={"Cache-Control": "public, max-age=300"},
        )
