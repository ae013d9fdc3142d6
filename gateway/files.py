"""Durable local files: written whole or not at all, and on disk before we answer."""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path

from gateway.types import Buffer


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` durable (a file created or renamed into it).

    fsync of a file does not make its name durable: after a power cut the file could
    be gone from its directory, or a rename undone.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: Buffer, offset: int = 0) -> None:
    """pwrite all of `data` at `offset` (a single call may write less)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def write_atomically(path: Path, data: Buffer, *, exclusive: bool = False) -> None:
    """Write `data` to `path` through a temporary file renamed into place, so readers
    see the whole file or none; file and name are durable on return.

    The file is created 0600, so its contents are never readable by others, not even
    before the rename. If `exclusive`, a file already at `path` wins and is kept:
    link() fails if its target exists, unlike rename(), so the first writer wins.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if exclusive:
            with suppress(FileExistsError):
                os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)
