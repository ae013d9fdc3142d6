"""Bridges blocking work to asyncio: sealing and storage threads, and one catalog thread."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_STOP = object()


class RunnerClosed(RuntimeError):
    """A call handed to a runner after `close`."""


class Lane:
    """`threads` threads taking calls from one queue, each answer sent to the caller's
    event loop with one `call_soon_threadsafe`.

    What `run_in_executor` does, at a third of its cost per call (no concurrent future
    to chain to an asyncio one): a small PATCH makes about six such calls. As with an
    executor, a call whose future was cancelled before a thread took it is not run, and
    one already running runs to its end. The threads start with the first call; after
    `close`, a call raises RunnerClosed.
    """

    def __init__(self, threads: int, name: str) -> None:
        self._size = threads
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RunnerClosed(f"{self._name}: closed")
            while len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self._queue.put((loop, future, fn))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            _run_one(*item)
            del item  # hold no call or result while idle

    def close(self) -> None:
        """Run what was handed in, then stop the threads."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in threads:
            self._queue.put(_STOP)
        for thread in threads:
            thread.join()


def _run_one(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], fn: Callable[[], Any]
) -> None:
    if future.cancelled():
        return
    try:
        result, error = fn(), None
    except BaseException as exc:  # handed to the caller, as an executor does
        result, error = None, exc
    with contextlib.suppress(RuntimeError):  # the caller's loop closed: nobody waits
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    elif isinstance(error, StopIteration):  # a future cannot hold one
        future.set_exception(RuntimeError(f"StopIteration raised in a runner call: {error}"))
    else:
        future.set_exception(error)


class Runner:
    """Three lanes: sealing (CPU), storage (blocking I/O) and the catalog (one thread).

    Sealing hashes and encrypts; hashlib releases the GIL on large buffers, so it runs
    in parallel with the event loop receiving the next bytes, but only on as many
    threads as there are cores: more only switch between each other and evict each
    other's data from the caches. Storage calls mostly wait (fdatasync, S3 requests),
    so they get `io_threads` of their own and never hold up sealing. Catalog calls run
    one at a time.
    """

    def __init__(self, io_threads: int, seal_threads: int = 2) -> None:
        self._seal = Lane(seal_threads, "gateway-seal")
        self._io = Lane(io_threads, "gateway-io")
        self._db = Lane(1, "gateway-catalog")

    async def seal(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._seal.call(functools.partial(fn, *args, **kwargs))

    def seal_soon(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """`seal`, handed to a thread now: the future to await. Two of them gathered
        cost no task each, as two `seal` coroutines would (a batch of a slow body is
        small, so that is a real share of its cost)."""
        return self._seal.call(functools.partial(fn, *args, **kwargs))

    async def io(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._io.call(functools.partial(fn, *args, **kwargs))

    async def db(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._db.call(functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._seal.close()
        self._io.close()
        self._db.close()
