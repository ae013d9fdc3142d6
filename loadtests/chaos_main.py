"""The `loadtests/chaos` command: a load scenario with faults injected while it runs
(loadtests/chaos_faults.py), then every upload checked (loadtests/chaos_check.py)."""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import time
from pathlib import Path

from locust import User

from loadtests import ending, swarm
from loadtests.chaos_check import Checked, check
from loadtests.chaos_disk import Tmpfs, can_mount
from loadtests.chaos_faults import Counts, Faults
from loadtests.context import Context
from loadtests.options import MAX_TOKENS, add_common, check_common
from loadtests.procstats import Peak
from loadtests.stack import Stack
from loadtests.summary import failures, report
from loadtests.users.hospital import HospitalUser
from loadtests.users.mobile import MobileUser

MiB = 1 << 20
SCENARIOS: dict[str, list[type[User]]] = {
    "mobile": [MobileUser],
    "hospital": [HospitalUser],
    "uploads": [MobileUser, HospitalUser],
}
SUMMARY = (
    "kills",
    "s3_restarts",
    "disk_fulls",
    "cuts",
    "uploads",
    "completed",
    "verified",
    "failures",
    "stuck",
    "lost_bytes",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loadtests/chaos", description=__doc__)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="mobile")
    add_common(parser, duration=600.0, scale="small")
    parser.add_argument("--kills", type=int, default=100, help="kill -9 of a gateway")
    parser.add_argument(
        "--s3-restarts", type=int, default=None, help="with --store s3 (default: one a minute)"
    )
    parser.add_argument(
        "--disk-fulls",
        type=int,
        default=None,
        help="with --store folder, as root (default: one every 45 s)",
    )
    parser.add_argument("--cuts", type=int, default=None, help="default: one every 5 s")
    parser.add_argument(
        "--tmpfs-mib", type=int, default=4096, help="the data dir's tmpfs (--store folder)"
    )
    parser.add_argument(
        "--verify-sample",
        type=int,
        default=20,
        help="completed uploads `gateway verify` checks; -1: all",
    )
    parser.add_argument("--check-time", type=float, default=600.0, help="seconds at most")
    args = parser.parse_args(argv)
    check_common(parser, args)
    if args.kills < 0:
        parser.error("--kills must not be negative")
    minutes = args.duration / 60
    if args.s3_restarts is None:
        args.s3_restarts = max(1, round(minutes)) if args.store == "s3" else 0
    if args.disk_fulls is None:
        args.disk_fulls = max(1, round(args.duration / 45)) if args.store == "folder" else 0
    if args.cuts is None:
        args.cuts = max(1, round(args.duration / 5))
    return args


def summary_line(counts: Counts, checked: Checked, failed: int) -> str:
    figures = {
        "kills": counts.kills,
        "s3_restarts": counts.s3_restarts,
        "disk_fulls": counts.disk_fulls,
        "cuts": counts.cuts,
        "uploads": checked.uploads,
        "completed": checked.completed,
        "verified": checked.verified,
        "failures": failed,
        "stuck": len(checked.stuck),
        "lost_bytes": checked.lost_bytes,
    }
    return " ".join(f"{name}={figures[name]}" for name in SUMMARY)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ending.exit_on_signals()
    logging.basicConfig(level=logging.WARNING)
    # Its one retry of a request that got no answer is expected here, a thousand times.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(
        f"chaos scenario={args.scenario} users={args.users} duration={args.duration:.0f}s "
        f"store={args.store} instances={args.instances} scale={args.scale:g} seed={seed} "
        f"kills={args.kills} s3_restarts={args.s3_restarts} disk_fulls={args.disk_fulls} "
        f"cuts={args.cuts}",
        flush=True,
    )
    tmpfs: Tmpfs | None = None
    if args.store == "folder" and args.disk_fulls > 0 and not can_mount():
        print(
            "disk-full faults need root (they mount a tmpfs for the data dir): "
            "running without them (--disk-fulls 0)",
            flush=True,
        )
        args.disk_fulls = 0
    if args.cuts > 0 and not (can_mount() and shutil.which("ss")):
        print(
            "connection cuts by the driver need root and `ss` (iproute2): running without "
            "them (--cuts 0; the users still cut their own)",
            flush=True,
        )
        args.cuts = 0
    stack = Stack(store=args.store, instances=args.instances, env={})
    if args.store == "folder" and args.disk_fulls > 0:
        tmpfs = Tmpfs(Path(stack.root) / "gateway", args.tmpfs_mib * MiB)
    rng = random.Random(seed)
    faults: Faults | None = None
    try:
        if tmpfs is not None:
            tmpfs.mount()
        stack.start()
        ctx = Context(
            hosts=stack.hosts,
            tokens=stack.tokens(min(args.users, MAX_TOKENS)),
            scale=args.scale,
            seed=seed,
            chaos=True,
        )
        faults = Faults(
            stack,
            random.Random(rng.random()),
            args.duration,
            kills=args.kills,
            s3_restarts=args.s3_restarts,
            disk_fulls=args.disk_fulls,
            cuts=args.cuts,
            tmpfs=tmpfs,
        )
        began = time.monotonic()
        faults.start()
        try:
            environment, _ = swarm.run(
                ctx, SCENARIOS[args.scenario], [(args.users, args.duration)], args.drain
            )
        finally:
            faults.stop()
        seconds = time.monotonic() - began
        print(report(environment, ctx, args.users, Peak(), seconds), flush=True)
        checked = check(
            ctx.studies,
            stack.gateways,
            random.Random(rng.random()),
            verify_sample=args.verify_sample,
            deadline=time.monotonic() + args.check_time,
        )
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        for gateway in stack.gateways:
            gateway.stop()
        if tmpfs is not None:
            tmpfs.unmount()
        stack.stop()
    counts = faults.counts
    failed = failures(environment) + len(checked.failures) + len(counts.problems)
    for line in counts.problems + checked.failures + checked.stuck:
        print(f"chaos: {line}")
    print(
        f"end checks: uploads={checked.uploads} resumed={checked.resumed} "
        f"completed={checked.completed} verified={checked.verified} "
        f"gateway_verify_ok={checked.gateway_verified} in {time.monotonic() - began:.0f} s"
    )
    names = {0: "no_answer", 400: "interrupted"}
    waited = " ".join(f"{names.get(k, k)}={v}" for k, v in sorted(ctx.refused.items()))
    print(f"answers the users waited out and retried: {waited or 'none'}")
    print(summary_line(counts, checked, failed), flush=True)
    return 1 if failed or checked.stuck or checked.lost_bytes else 0
