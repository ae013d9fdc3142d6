"""The `loadtests/run` command: arguments, the processes, the swarm, the report."""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

from loadtests import ending, steps, swarm
from loadtests.context import Context
from loadtests.options import MAX_TOKENS, add_common, check_common
from loadtests.procstats import Sampler
from loadtests.stack import Stack
from loadtests.summary import failures, report
from loadtests.users.scenarios import SCENARIOS


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loadtests/run", description=__doc__)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed")
    add_common(parser, duration=60.0, scale="full")
    parser.add_argument(
        "--steps",
        type=int,
        default=1,
        help="add the users in this many equal steps over the duration; with more than "
        "one, a table per step and a plot (--plot)",
    )
    parser.add_argument(
        "--plot", type=Path, default=Path("load-steps.png"), help="the PNG of a stepped run"
    )
    args = parser.parse_args(argv)
    check_common(parser, args)
    if args.steps < 1:
        parser.error("--steps must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ending.exit_on_signals()
    logging.basicConfig(level=logging.WARNING)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(
        f"scenario={args.scenario} users={args.users} duration={args.duration:.0f}s "
        f"store={args.store} instances={args.instances} scale={args.scale:g} seed={seed}",
        flush=True,
    )
    stack = Stack(store=args.store, instances=args.instances, env={})
    try:
        stack.start()
        ctx = Context(
            hosts=stack.hosts,
            tokens=stack.tokens(min(args.users, MAX_TOKENS)),
            scale=args.scale,
            seed=seed,
        )
        began = time.monotonic()
        with Sampler(stack.pids) as sampler:
            schedule = steps.schedule(args.users, args.duration, args.steps)
            on_step = None
            if args.steps > 1:
                print(steps.HEADER, flush=True)

                def on_step(step: steps.Step) -> None:
                    print(steps.row(step), flush=True)

            environment, log = swarm.run(
                ctx, SCENARIOS[args.scenario], schedule, args.drain, on_step
            )
        seconds = time.monotonic() - began
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        stack.stop()
    if args.steps > 1:
        from loadtests.plot import plot  # matplotlib only when there is something to plot

        print(steps.verdict(log.steps), flush=True)
        title = f"{args.scenario}, {args.store}, {args.instances} gateway(s), seed {seed}"
        plot(log.steps, args.plot, title)
        print(f"plot: {args.plot}", flush=True)
    print(report(environment, ctx, args.users, sampler.peak, seconds), flush=True)
    return 1 if failures(environment) or ctx.tally.uploads != ctx.tally.verified else 0
