"""Object keys of one upload U in the store (the layout of DESIGN.md)."""

from __future__ import annotations


def key_segments(key: str) -> list[str]:
    """The segments of an object key, which every store checks before use: a relative
    path of plain names (no empty, '.' or '..' segment), so it names nothing outside."""
    segments = key.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"invalid object key {key!r}")
    return segments


def data_key(upload_id: str) -> str:
    """U/data: the sealed object."""
    return f"{upload_id}/data"


def tail_key(upload_id: str, segment: int, piece: int) -> str:
    """U/tail/<segment>/<piece>: a sealed piece of the unfinished segment."""
    return f"{upload_id}/tail/{segment}/{piece}"


def tail_prefix(upload_id: str) -> str:
    return f"{upload_id}/tail"


def manifest_keys(upload_id: str) -> tuple[str, str]:
    """U/manifest.json (canonical JSON) and U/manifest.jws (its signed form)."""
    return f"{upload_id}/manifest.json", f"{upload_id}/manifest.jws"


def reader_manifest_key(upload_id: str) -> str:
    """U/manifest.sealed: the reader's signed manifest, sealed under the upload's data key."""
    return f"{upload_id}/manifest.sealed"


def sm2_manifest_keys(upload_id: str) -> tuple[str, str]:
    """U/manifest.sm2 (the stored manifest's SM2 form) and U/manifest.sm2.sealed (the
    reader's, sealed under the data key): suite-2 uploads only (MANIFEST.md, "SM2")."""
    return f"{upload_id}/manifest.sm2", f"{upload_id}/manifest.sm2.sealed"


def upload_prefix(upload_id: str) -> str:
    return f"{upload_id}/"
