"""Sending one file with tuspy, resumed from the state file and retried with backoff.

tuspy (1.1) already puts a per-chunk `Upload-Checksum` on each PATCH, with the algorithm
of its class attribute CHECKSUM_ALGORITHM_PAIR (sha1 by default): the subclass sets it to
sha256. What tuspy lacks is timeouts (it calls requests.post/head/patch without one), a
session kept alive across requests, and retries beyond a fixed delay on PATCH: the subclass
replaces create_url, get_offset and _do_request; the chunk loop, the tus headers, chunk
sizes and metadata encoding stay tuspy's.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin

import requests
from tusclient.client import TusClient
from tusclient.request import TusRequest
from tusclient.uploader.uploader import Uploader

from gateway.client.files import LocalFile
from gateway.client.http import Aborted, Backoff, Gone, UploadError, check, send
from gateway.client.state import StateFile


class TusUploader(Uploader):
    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)

    def __init__(
        self,
        stream: BinaryIO,
        *,
        endpoint: str,
        http: requests.Session,
        chunk_size: int,
        metadata: dict[str, str],
    ) -> None:
        self.http = http  # before tuspy's constructor, which may call get_offset
        self.endpoint = endpoint
        super().__init__(
            file_stream=stream,
            client=TusClient(endpoint),
            chunk_size=chunk_size,
            metadata=metadata,
            upload_checksum=True,
        )

    def create_url(self) -> str:
        # tuspy's own headers (Tus-Resumable, Upload-Length, Upload-Metadata); tuspy 1.1
        # leaves some of its methods unannotated, hence the ignores on calls into them.
        headers = self.get_url_creation_headers()  # type: ignore[no-untyped-call]
        response = send(self.http, "POST", self.endpoint, headers=headers)
        check(response, "creating the upload", lambda status: status == 201)
        location = response.headers.get("Location")
        if not location:
            raise UploadError("creating the upload: the gateway sent no Location")
        return urljoin(self.endpoint, location)

    def get_offset(self) -> int:
        assert isinstance(self.url, str)
        return head(self.http, self.url)[1]

    def _do_request(self) -> None:
        request = _Patch(self)
        request.perform()
        self.request = request  # type: ignore[assignment]  # tuspy declares it as None


class _Patch(TusRequest):
    """One PATCH of one chunk through the uploader's session."""

    def __init__(self, uploader: TusUploader) -> None:
        super().__init__(uploader)  # type: ignore[no-untyped-call]
        self.http = uploader.http

    def perform(self) -> None:
        chunk = self.file.read(self._content_length)
        if len(chunk) != self._content_length:
            raise UploadError("the file became shorter while being sent")
        self.add_checksum(chunk)  # sets upload-checksum: sha256 <base64>
        response = send(self.http, "PATCH", self._url, data=chunk, headers=self._request_headers)
        check(response, "sending a chunk", lambda status: status == 204)
        self.status_code = response.status_code
        self.response_headers = {k.lower(): v for k, v in response.headers.items()}
        if not self.response_headers.get("upload-offset", "").isdigit():
            raise UploadError("sending a chunk: the gateway sent no Upload-Offset")


def head(http: requests.Session, url: str) -> tuple[int | None, int]:
    """(Upload-Length or None if deferred, Upload-Offset) of an upload."""
    response = send(http, "HEAD", url, headers={"Tus-Resumable": "1.0.0"})
    check(response, "asking for the offset", lambda status: status in (200, 204))
    offset = response.headers.get("Upload-Offset", "")
    length = response.headers.get("Upload-Length", "")
    if not offset.isdigit():
        raise UploadError("asking for the offset: the gateway sent no Upload-Offset")
    return (int(length) if length.isdigit() else None), int(offset)


@dataclass
class Sender:
    """What every file's upload shares."""

    endpoint: str
    state: StateFile
    backoff: Backoff
    chunk_size: int
    metadata: dict[str, str]
    stop: threading.Event

    def send(
        self,
        file: LocalFile,
        *,
        key: str,
        size: int,
        http: requests.Session,
        progress: Callable[[int], None],
    ) -> str:
        """Upload `file` (resuming from the state file's URL if the gateway still has it);
        returns the upload URL once the gateway reports every byte."""
        with open(file.path, "rb") as stream:
            uploader = TusUploader(
                stream,
                endpoint=self.endpoint,
                http=http,
                chunk_size=self.chunk_size,
                metadata={**self.metadata, "filename": file.name},
            )
            if uploader.stop_at != size:  # tuspy's Upload-Length: the size it sees now
                raise UploadError("the file changed size since the run began")
            url, offset = self._resume(http, key, size)
            if url is None:
                url = self.backoff.run(uploader.create_url)
                self.state.put(key, url)
                offset = 0
            uploader.set_url(url)
            uploader.offset = offset
            progress(offset)

            def reread_offset() -> None:
                uploader.offset = self.backoff.run(lambda: head(http, url))[1]

            while uploader.offset < size:
                if self.stop.is_set():
                    raise Aborted("stopped")
                self.backoff.run(uploader.upload_chunk, before_retry=reread_offset)
                progress(uploader.offset)
        return url

    def _resume(self, http: requests.Session, key: str, size: int) -> tuple[str | None, int]:
        url = self.state.get(key)
        if url is None:
            return None, 0
        try:
            length, offset = self.backoff.run(lambda: head(http, url))
        except Gone:
            length, offset = None, 0
        if length != size or offset > size:
            # Expired, removed, or not this file after all: start over.
            self.state.drop(key)
            return None, 0
        return url, offset
