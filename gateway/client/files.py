"""The files one `gateway upload` sends: given files as they are, folders walked in a
stable order (every regular file below, recursively, sorted by relative path)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_INSIDE = "a symlink within the folder (its target is sent under its own name)"


class NoSuchInput(Exception):
    """A path on the command line that is neither a file nor a folder."""


@dataclass(frozen=True)
class LocalFile:
    path: Path  # absolute
    name: str  # sent as metadata `filename`: the path relative to the folder given, with "/"


def collect(paths: Iterable[Path], *, skipped: Callable[[Path, str], None]) -> list[LocalFile]:
    """Files to upload, in the order given, each folder's files sorted; duplicates dropped.

    Within a folder symlinks are never followed: a link out of the tree would send what
    the folder does not hold, a link within it a second copy. They are skipped and
    `skipped(path, why)` is told, as it is of sockets, FIFOs and devices."""
    found: list[LocalFile] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(os.path.abspath(given))
        if path.is_dir():
            files = list(_walk(path, skipped))
        elif path.is_file() and _utf8(path.name):
            files = [LocalFile(path, path.name)]
        elif path.is_file():
            raise NoSuchInput(f"{given}: the name is not UTF-8, as tus metadata must be")
        else:
            raise NoSuchInput(f"{given}: no such file or folder")
        for file in files:
            key = file.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found


def _walk(root: Path, skipped: Callable[[Path, str], None]) -> Iterable[LocalFile]:
    real_root = root.resolve()
    entries: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root, followlinks=False, onerror=None):
        base = Path(folder)
        for name in dirs:
            if (base / name).is_symlink():
                skipped(base / name, "a symlinked folder (not followed)")
        for name in names:
            path = base / name
            if path.is_symlink():
                # A link to a file inside the folder is a copy of one the walk sends anyway.
                inside = path.resolve().is_relative_to(real_root)
                skipped(path, _INSIDE if inside else "a symlink out of the folder (not followed)")
                continue
            if not path.is_file():
                skipped(path, "not a regular file")
                continue
            if not _utf8(path.name):
                skipped(path, "a name that is not UTF-8 (metadata values are)")
                continue
            entries.append((path.relative_to(root).as_posix(), path))
    for name, path in sorted(entries):
        yield LocalFile(path, name)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept as surrogates by os.fsdecode
        return False
    return True
