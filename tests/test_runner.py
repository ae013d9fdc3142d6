"""The runner's pools: sealing bounded by its own threads, storage never waiting for it,
and the calls of bodies still arriving after the others."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.runner import Runner, RunnerClosed, receiving


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


async def test_an_error_reaches_the_caller_as_it_was_raised() -> None:
    runner = Runner(io_threads=1, seal_threads=1)
    error = ValueError("no such object")

    def fail() -> None:
        raise error

    def stop() -> None:
        raise StopIteration  # an asyncio future cannot hold one

    try:
        with pytest.raises(ValueError) as raised:
            await runner.io(fail)
        assert raised.value is error
        with pytest.raises(RuntimeError, match="StopIteration"):
            await runner.db(stop)
        assert await runner.io(lambda: 7) == 7  # the thread goes on
    finally:
        runner.close()


async def test_a_call_cancelled_before_a_thread_took_it_is_not_run() -> None:
    runner = Runner(io_threads=1, seal_threads=1)
    release = threading.Event()
    ran: list[str] = []
    try:
        busy = asyncio.ensure_future(runner.io(release.wait, 5))
        queued = asyncio.ensure_future(runner.io(ran.append, "queued"))
        await asyncio.sleep(0.05)
        queued.cancel()
        release.set()
        assert await busy
        await runner.io(ran.append, "after")
        assert ran == ["after"]
    finally:
        release.set()
        runner.close()


def test_threads_start_with_the_first_call_and_calls_after_close_are_refused() -> None:
    runner = Runner(io_threads=3, seal_threads=2)
    before = {t.name for t in threading.enumerate()}
    assert asyncio.run(runner.io(lambda: threading.current_thread().name)).startswith("gateway-io")
    started = {t.name for t in threading.enumerate()} - before
    assert sorted(started) == ["gateway-io_0", "gateway-io_1", "gateway-io_2"]
    runner.close()
    assert not {t.name for t in threading.enumerate()} & started
    with pytest.raises(RunnerClosed):
        asyncio.run(runner.io(time.time))


def test_an_answer_for_a_closed_loop_is_dropped_and_the_thread_goes_on() -> None:
    runner = Runner(io_threads=1, seal_threads=1)
    release = threading.Event()

    async def leave_early() -> asyncio.Future[bool]:
        running = asyncio.ensure_future(runner.io(release.wait, 5))
        await asyncio.sleep(0.01)
        return running

    try:
        asyncio.run(leave_early())  # the loop closes while the call still runs
        release.set()
        assert asyncio.run(runner.io(lambda: "still here")) == "still here"
    finally:
        release.set()
        runner.close()


async def test_the_calls_of_a_body_still_arriving_go_after_the_others() -> None:
    runner = Runner(io_threads=1, seal_threads=1)
    release = threading.Event()
    ran: list[str] = []

    async def body_arriving(name: str) -> None:
        flag = receiving()
        flag.active = True
        try:
            await runner.db(ran.append, name)
        finally:
            flag.active = False

    try:
        busy = asyncio.ensure_future(runner.db(release.wait, 5))
        await asyncio.sleep(0.05)  # the one catalog thread is taken
        queued = [asyncio.ensure_future(body_arriving("receiving 1"))]
        await asyncio.sleep(0)
        queued.append(asyncio.ensure_future(runner.db(ran.append, "answering")))
        await asyncio.sleep(0)
        queued.append(asyncio.ensure_future(body_arriving("receiving 2")))
        await asyncio.sleep(0)
        queued.append(asyncio.ensure_future(runner.seal(ran.append, "another lane")))
        await asyncio.sleep(0.05)
        release.set()
        await busy
        await asyncio.gather(*queued)
    finally:
        release.set()
        runner.close()
    assert ran == ["another lane", "answering", "receiving 1", "receiving 2"]


async def test_a_task_started_while_receiving_follows_the_flag() -> None:
    runner = Runner(io_threads=1, seal_threads=1)
    release = threading.Event()
    ran: list[str] = []
    go = asyncio.Event()

    async def record_task() -> None:  # started mid-body, like a record's sealing task
        await go.wait()
        await runner.io(ran.append, "record, body ended")

    try:
        flag = receiving()
        flag.active = True
        started = asyncio.ensure_future(record_task())
        busy = asyncio.ensure_future(runner.io(release.wait, 5))
        await asyncio.sleep(0.05)
        mid_body = asyncio.ensure_future(runner.io(ran.append, "mid-body"))
        await asyncio.sleep(0)
        flag.active = False  # the body's end arrived
        go.set()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(busy, mid_body, started)
    finally:
        release.set()
        runner.close()
    assert ran == ["record, body ended", "mid-body"]
