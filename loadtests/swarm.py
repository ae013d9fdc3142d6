"""Runs a scenario headless through Locust's library API for a fixed time, in one step or
several (users added at each), then lets the users finish what they are verifying
(uploads still in flight are checked and given up) and stops them."""

from __future__ import annotations

import time
from collections.abc import Callable

from locust import User
from locust.env import Environment

from loadtests import context
from loadtests.context import Context
from loadtests.steps import Step, StepLog

DRAIN = 60.0  # seconds the users get after the run to finish verifying


def run(
    ctx: Context,
    classes: list[type[User]],
    schedule: list[tuple[int, float]],
    drain: float = DRAIN,
    on_step: Callable[[Step], None] | None = None,
) -> tuple[Environment, StepLog]:
    """`schedule`: (users, seconds) for each step in turn; `on_step` is told of each
    step as it ends."""
    environment = Environment(user_classes=classes, host=ctx.hosts[0])
    context.attach(environment, ctx)
    steps = StepLog(environment, on_step=on_step)
    runner = environment.create_local_runner()
    running = 0
    for users, seconds in schedule:
        added = max(1, users - running)
        runner.start(users, spawn_rate=max(1.0, added / min(10.0, max(1.0, seconds / 4))))
        running = users
        steps.begin(users)
        time.sleep(seconds)
    steps.end()
    ctx.stopping.set()
    deadline = time.monotonic() + drain
    while ctx.busy > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    runner.quit()
    return environment, steps
