"""Bridges blocking backends to asyncio: a bounded I/O pool and one catalog thread."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Runner:
    """Sealing and storage share `io_threads` workers; catalog calls run one at a time.

    cryptography >= 50 and hashlib release the GIL on large buffers, so sealing in
    these threads overlaps with the event loop receiving the next bytes.
    """

    def __init__(self, io_threads: int) -> None:
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="gateway-io")
        self._db = ThreadPoolExecutor(1, thread_name_prefix="gateway-catalog")

    async def io(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args, **kwargs))

    async def db(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._io.shutdown(wait=True)
        self._db.shutdown(wait=True)
