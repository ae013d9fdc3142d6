"""`gateway upload`: send files or folders to a gateway, resumably, and prove each arrived.

    gateway upload --url https://gw.example/files/ [options] PATH...

Folders are sent whole: every regular file below, in sorted order, with the path below
the folder as metadata `filename`. Exit 0: every file uploaded and its signed manifest
matches the local file; 1: some file failed or did not match; 2: usage or configuration
error; 130: interrupted (run it again to resume).
Needs tuspy: pip install 'imaging-upload-gateway[client]'.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.client.files import NoSuchInput, collect
from gateway.client.state import StateFile, default_path

if TYPE_CHECKING:
    from gateway.client.run import Job

DEFAULT_CHUNK = 8 << 20
_SIZE = re.compile(r"([0-9]+)\s*(|k|kib|m|mib|g|gib)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20}
_UNITS.update({"g": 1 << 30, "gib": 1 << 30})
_METADATA_KEY = re.compile(r"[^\s,]+")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


class Usage(Exception):
    """A bad option or input: exit 2."""


def add_parser(sub: Any) -> None:
    """Register `upload` on the `gateway` parser's subparsers."""
    parser = sub.add_parser(
        "upload",
        help="send files or folders (resumable, checked against the signed manifest)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument("--url", help="the tus endpoint, e.g. https://gw.example/files/")
    parser.add_argument("--token", help="the bearer token (better: the GATEWAY_TOKEN variable)")
    parser.add_argument(
        "--chunk-size", type=_size, default=DEFAULT_CHUNK, help="bytes per PATCH (8M)"
    )
    parser.add_argument("--parallel", type=_positive, default=2, help="files sent at once (2)")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="upload metadata (repeatable); filename is always the path below the folder",
    )
    parser.add_argument("--state", type=Path, help=f"resume state file ({default_path()})")
    parser.add_argument(
        "--retries", type=_count, default=8, help="retries per request, with backoff (8)"
    )
    parser.add_argument(
        "--jwks",
        help="JWKS file or https:// URL to check manifests with (default: the endpoint's "
        "/.well-known/jwks.json)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        from gateway.client.run import Run  # tuspy and requests: the [client] extra
    except ImportError as exc:
        print(
            f"gateway upload: {exc.name or exc} is missing: "
            "pip install 'imaging-upload-gateway[client]'",
            file=sys.stderr,
        )
        return 2
    try:
        job = _job(args)
    except Usage as exc:
        print(f"gateway upload: {exc}", file=sys.stderr)
        return 2
    return Run(job).execute()


def _job(args: argparse.Namespace) -> Job:
    from gateway.client.run import Job

    url = args.url or ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Usage("--url must be the tus endpoint, e.g. https://gw.example/files/")
    token = args.token or os.environ.get("GATEWAY_TOKEN", "")
    if not token:
        raise Usage("no token: set GATEWAY_TOKEN or pass --token")
    if not token.isprintable() or any(c.isspace() for c in token):
        raise Usage("the token contains spaces or control characters")
    metadata = _metadata(args.metadata)
    if args.jwks is not None and args.jwks.lower().startswith("http://"):
        raise Usage("--jwks: refusing an http:// JWKS: give an https:// URL or a file")
    if args.jwks is not None and "://" not in args.jwks and not Path(args.jwks).is_file():
        raise Usage(f"--jwks {args.jwks}: no such file")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        print(
            f"gateway upload: warning: plain http to {parts.hostname}: the token and the "
            "files travel unencrypted",
            file=sys.stderr,
        )

    def skipped(path: Path, why: str) -> None:
        print(f"gateway upload: skipping {path}: {why}", file=sys.stderr)

    try:
        found = collect(args.paths, skipped=skipped)
        files = [(file, file.path.stat().st_size) for file in found]
    except (NoSuchInput, OSError) as exc:
        raise Usage(str(exc)) from None
    if not files:
        raise Usage("no files to upload")
    return Job(
        endpoint=url,
        token=token,
        files=files,
        state=StateFile(args.state or default_path()),
        chunk_size=args.chunk_size,
        parallel=args.parallel,
        retries=args.retries,
        metadata=metadata,
        jwks=args.jwks,
    )


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match[1]) * _UNITS[match[2].lower()] < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 8M, 256K or 65536")
    return int(match[1]) * _UNITS[match[2].lower()]


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 64")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 100")
    return int(text)


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _METADATA_KEY.fullmatch(key):
            raise Usage(f"--metadata takes KEY=VALUE, the key without spaces or commas: {key!r}")
        if key == "filename":
            raise Usage("--metadata filename is set for each file: the path below its folder")
        if key in metadata:
            raise Usage(f"--metadata {key} given twice")
        metadata[key] = value
    return metadata
