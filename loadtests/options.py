"""The options `loadtests/run` and `loadtests/chaos` share: the users, the stack they
run against and how long."""

from __future__ import annotations

import argparse

from loadtests import swarm
from loadtests.context import parse_scale

MAX_TOKENS = 1000  # API keys minted for a run; users beyond share them round robin


def add_common(parser: argparse.ArgumentParser, *, duration: float, scale: str) -> None:
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--duration", type=float, default=duration, help="seconds of load")
    parser.add_argument("--store", choices=("folder", "s3"), default="folder")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument(
        "--scale",
        default=scale,
        help="study and chunk sizes: small (1/64), medium (1/8), full, or a factor",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--drain", type=float, default=swarm.DRAIN, help="seconds to finish verifying"
    )


def check_common(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2) what `add_common`'s options may not be; the scale as a factor."""
    try:
        args.scale = parse_scale(args.scale)
    except (KeyError, ValueError) as exc:
        parser.error(str(exc))
    if args.users < 1 or args.duration <= 0 or args.instances < 1:
        parser.error("--users, --duration and --instances must be positive")
    if args.instances > 1 and args.store != "s3":
        parser.error("--instances above 1 needs --store s3")
