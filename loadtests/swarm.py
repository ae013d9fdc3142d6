"""Runs a scenario headless through Locust's library API for a fixed time, then lets the
users finish what they are verifying (uploads still in flight are checked and given
up) and stops them."""

from __future__ import annotations

import time

from locust import User
from locust.env import Environment

from loadtests import context
from loadtests.context import Context

DRAIN = 60.0  # seconds the users get after the run to finish verifying


def run(
    ctx: Context, classes: list[type[User]], users: int, duration: float, drain: float = DRAIN
) -> Environment:
    environment = Environment(user_classes=classes, host=ctx.hosts[0])
    context.attach(environment, ctx)
    runner = environment.create_local_runner()
    spawn_rate = max(1.0, users / min(10.0, max(1.0, duration / 4)))
    runner.start(users, spawn_rate=spawn_rate)
    time.sleep(duration)
    ctx.stopping.set()
    deadline = time.monotonic() + drain
    while ctx.busy > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    runner.quit()
    return environment
