"""The `loadtests/hostile` command: a real gateway, real upload states, N hostile
requests from a seeded generator while well-behaved users upload and verify, then the
checks (no 500, alive, others unaffected, no unhandled exception in the log)."""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loadtests import ending, hostile_checks, hostile_targets, hostile_users
from loadtests.hostile_build import build
from loadtests.hostile_gen import Context, Hostile
from loadtests.hostile_wire import Outcome, Send, exchange
from loadtests.stack import Stack

HOSTILE_PRINCIPALS = 4
GOOD_USERS = 3
# Small records, so a few hundred KB cross record boundaries and make tail pieces.
SERVER_ENV = {"GATEWAY_SEGMENT_SIZE": "65536"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loadtests/hostile", description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--store", choices=("folder", "s3"), default="folder")
    parser.add_argument("--concurrency", type=int, default=16, help="hostile connections at once")
    parser.add_argument("--good-users", type=int, default=GOOD_USERS)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument(
        "--only", default="", help="comma list of request indices to send (a replay)"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="a GATEWAY_*=VALUE setting for the gateway"
    )
    parser.add_argument(
        "--keep-log", default="", help="copy the gateway's log to this file at the end"
    )
    args = parser.parse_args(argv)
    if any("=" not in e or not e.startswith("GATEWAY_") for e in args.env):
        parser.error("--env takes GATEWAY_NAME=VALUE")
    if args.requests < 1 or args.concurrency < 1 or args.good_users < 0:
        parser.error("--requests and --concurrency must be positive")
    return args


def is_bad(outcome: Outcome) -> bool:
    return any(hostile_checks.bad_status(s, r) for s, r in outcome.answers)


def is_hang(hostile: Hostile, outcome: Outcome) -> bool:
    """No answer in time to a request that was not cut, or no connection at all."""
    return (outcome.timed_out and hostile.mode is not Send.CUT) or outcome.refused


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ending.exit_on_signals()
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    indices = (
        [int(i) for i in args.only.split(",") if i.strip()]
        if args.only
        else list(range(args.requests))
    )
    print(
        f"hostile requests={len(indices)} seed={seed} store={args.store} "
        f"concurrency={args.concurrency} good_users={args.good_users}",
        flush=True,
    )
    env = {**SERVER_ENV, **dict(e.split("=", 1) for e in args.env)}
    stack = Stack(store=args.store, instances=1, env=env)
    try:
        stack.start()
        gateway = stack.gateways[0]
        tokens = stack.tokens(HOSTILE_PRINCIPALS + 1 + max(1, args.good_users))
        hostile_tokens, decoy = tokens[:HOSTILE_PRINCIPALS], tokens[HOSTILE_PRINCIPALS]
        good_tokens = tokens[HOSTILE_PRINCIPALS + 1 :]
        targets = hostile_targets.make(gateway.url, hostile_tokens)
        admin = hostile_targets.mint_admin(gateway.data_dir)
        ctx = Context(seed, gateway.port, targets, hostile_tokens, decoy, admin)
        users, threads, stop = hostile_users.start(
            gateway.url, good_tokens[: args.good_users], seed
        )
        began = time.monotonic()

        def one(index: int) -> tuple[Hostile, Outcome]:
            hostile = build(ctx, index)
            outcome = exchange(
                hostile.data,
                port=ctx.port,
                source=hostile.source,
                method=hostile.method,
                mode=hostile.mode,
                cut=hostile.cut,
                answers=hostile.answers,
                timeout=args.timeout,
            )
            if "path" not in hostile.notes:
                targets.note_offset(hostile.target, outcome.offset)
            return hostile, outcome

        pool = ThreadPoolExecutor(args.concurrency)
        try:
            results = list(pool.map(one, indices))
        except BaseException:
            # Stopped (a signal): the requests not yet sent are not sent, and those under
            # way (a hostile one may take its whole timeout) end with the gateway.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        seconds = time.monotonic() - began
        stop.set()
        for thread in threads:
            thread.join(120)
        alive = hostile_checks.alive(gateway.url, good_tokens[-1])
        log = gateway.log()
        log_errors = hostile_checks.log_errors(log)
        if args.keep_log:
            Path(args.keep_log).write_text(log)
    finally:
        stack.stop()
    statuses: Counter[str] = Counter()
    for _, outcome in results:
        statuses[outcome.label] += 1
        for status in outcome.statuses[1:]:
            statuses[f"{status}(pipelined)"] += 1
    bad = [(h, o) for h, o in results if is_bad(o)]
    hangs = [(h, o) for h, o in results if is_hang(h, o)]
    good_failures = [f for u in users for f in u.failures]
    print(f"seed={seed} seconds={seconds:.0f} targets={','.join(targets.kinds())}")
    print(f"good users: rounds={sum(u.rounds for u in users)} waits={sum(u.waits for u in users)}")
    modes = Counter(h.mode.value for h, _ in results)
    print("modes: " + ", ".join(f"{k}={n}" for k, n in sorted(modes.items())))
    for title, rows in (("5xx", bad), ("hangs (no answer in time, or no connection)", hangs)):
        for hostile, outcome in rows[:20]:
            print(f"{title}: {outcome.statuses or outcome.label} {hostile.describe()}")
    for failure in good_failures[:20]:
        print(f"good user failure: {failure}")
    for line in log_errors[:20]:
        print(f"log: {line}")
    status_500 = sum(o.statuses.count(500) for _, o in results)
    histogram = ",".join(f"{k}:{n}" for k, n in sorted(statuses.items()))
    print(
        f"requests={len(results)} status_500={status_500} alive={'yes' if alive else 'no'} "
        f"good_users_failures={len(good_failures)} bad_5xx={len(bad)} hangs={len(hangs)} "
        f"log_errors={len(log_errors)} statuses={histogram}",
        flush=True,
    )
    failed = bad or hangs or good_failures or log_errors or not alive
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
