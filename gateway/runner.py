"""Bridges blocking work to asyncio: sealing and storage threads, and one catalog thread."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_STOP = object()


class Receiving:
    """Whether a request is still taking in its body: until then its calls queue behind
    everyone else's (`receiving`). Cleared once the rest of the body is small enough to
    be waiting in buffers already, sent: its client then waits for the answer."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = False


_RECEIVING: ContextVar[Receiving | None] = ContextVar("gateway_receiving", default=None)


def receiving() -> Receiving:
    """Mark the calls of this task, and of the tasks it starts from now on, as those of
    a body arriving, while the returned flag is set.

    A client whose body is still arriving waits for nothing: its bytes wait in kernel
    buffers and its sending slows. One whose body has ended waits for its answer, as
    does every HEAD, POST and GET. So on a busy gateway the calls of bodies still
    arriving (sealing, writing, committing the records of full segments) go after the
    others, and the answers come first: the same work in a better order.
    """
    flag = Receiving()
    _RECEIVING.set(flag)
    return flag


def _later() -> bool:
    flag = _RECEIVING.get()
    return flag is not None and flag.active


def answering() -> bool:
    """Whether this task serves a request whose body has all but ended: whatever it
    waits for now, its client waits for too."""
    flag = _RECEIVING.get()
    return flag is not None and not flag.active


class RunnerClosed(RuntimeError):
    """A call handed to a runner after `close`."""


class Lane:
    """`threads` threads taking calls from one queue, each answer sent to the caller's
    event loop with one `call_soon_threadsafe`.

    What `run_in_executor` does, at a third of its cost per call (no concurrent future
    to chain to an asyncio one): a small PATCH makes about six such calls. As with an
    executor, a call whose future was cancelled before a thread took it is not run, and
    one already running runs to its end. A call made `later` is taken only when no
    other is waiting. The threads start with the first call; after `close`, a call
    raises RunnerClosed.
    """

    def __init__(self, threads: int, name: str) -> None:
        self._size = threads
        self._name = name
        # One ticket per call queued in `_first` or `_later`: a thread that takes a
        # ticket takes the oldest call of the first queue that has one.
        self._tickets: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._first: deque[Any] = deque()
        self._later: deque[Any] = deque()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def call(self, fn: Callable[[], T], *, later: bool = False) -> asyncio.Future[T]:
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
            (self._later if later else self._first).append((loop, future, fn))
            self._tickets.put(None)
        return future

    def _work(self) -> None:
        while self._tickets.get() is not _STOP:
            # There are at least as many calls queued as tickets out: if another thread
            # took the last first call meanwhile, a later one is there.
            try:
                item = self._first.popleft()
            except IndexError:
                item = self._later.popleft()
            _run_one(*item)
            del item  # hold no call or result while idle

    def close(self) -> None:
        """Run what was handed in, then stop the threads."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in threads:
            self._tickets.put(_STOP)
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
    one at a time. In each lane the calls of bodies still arriving wait until no other
    call does (`receiving`).
    """

    def __init__(self, io_threads: int, seal_threads: int = 2) -> None:
        self._seal = Lane(seal_threads, "gateway-seal")
        self._io = Lane(io_threads, "gateway-io")
        self._db = Lane(1, "gateway-catalog")

    async def seal(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._seal.call(functools.partial(fn, *args, **kwargs), later=_later())

    def seal_soon(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """`seal`, handed to a thread now: the future to await. Two of them gathered
        cost no task each, as two `seal` coroutines would (a batch of a slow body is
        small, so that is a real share of its cost)."""
        return self._seal.call(functools.partial(fn, *args, **kwargs), later=_later())

    async def io(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._io.call(functools.partial(fn, *args, **kwargs), later=_later())

    async def db(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._db.call(functools.partial(fn, *args, **kwargs), later=_later())

    def close(self) -> None:
        self._seal.close()
        self._io.close()
        self._db.close()
