"""Bridges blocking work to asyncio: sealing and storage pools, and one catalog thread."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Runner:
    """Three pools: sealing (CPU), storage (blocking I/O) and the catalog (one thread).

    Sealing hashes and encrypts; hashlib releases the GIL on large buffers, so it runs
    in parallel with the event loop receiving the next bytes, but only on as many
    threads as there are cores: more only switch between each other and evict each
    other's data from the caches. Storage calls mostly wait (fdatasync, S3 requests),
    so they get `io_threads` of their own and never hold up sealing. Catalog calls run
    one at a time.
    """

    def __init__(self, io_threads: int, seal_threads: int = 2) -> None:
        self._seal = ThreadPoolExecutor(seal_threads, thread_name_prefix="gateway-seal")
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="gateway-io")
        self._db = ThreadPoolExecutor(1, thread_name_prefix="gateway-catalog")

    async def seal(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._seal, functools.partial(fn, *args, **kwargs))

    async def io(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args, **kwargs))

    async def db(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._seal.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self._db.shutdown(wait=True)
