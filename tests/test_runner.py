"""The runner's pools: sealing bounded by its own threads, storage never waiting for it."""

from __future__ import annotations

import asyncio
import threading
import time

from gateway.runner import Runner


async def test_sealing_runs_on_its_own_bounded_threads() -> None:
    runner = Runner(io_threads=4, seal_threads=2)
    lock = threading.Lock()
    running, most = 0, 0
    names: set[str] = set()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            names.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            running -= 1

    try:
        await asyncio.gather(*(runner.seal(work) for _ in range(6)))
    finally:
        runner.close()
    assert most == 2
    assert names and all(name.startswith("gateway-seal") for name in names)


async def test_storage_calls_do_not_wait_behind_sealing() -> None:
    runner = Runner(io_threads=2, seal_threads=1)
    release = threading.Event()
    try:
        busy = asyncio.ensure_future(runner.seal(release.wait, 5))
        stored = await asyncio.wait_for(runner.io(threading.current_thread), 2)
        assert stored.name.startswith("gateway-io")
        assert not busy.done()  # the only sealing thread is still taken
        release.set()
        assert await busy
    finally:
        release.set()
        runner.close()
