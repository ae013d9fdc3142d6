"""IETF Resumable Uploads for HTTP (draft-ietf-httpbis-resumable-upload), next to tus 1.0.

`versions` holds what each interop version changes, `headers` parses and formats its
fields (pure), `problems` renders its errors, and `handler` maps its requests onto the
uploads service the tus handler uses: an upload made here is a tus upload like any other
(same catalog row, sealed records, manifest), so download, manifests and
`gateway verify` work unchanged. A request carrying `Upload-Draft-Interop-Version` is
answered here, every other one by the tus handler (`IetfHandler.dispatch`).
"""
