"""The one thread that touches the pool: every provider call of the service runs here.

Kernel changes are serialised (as lvmdbusd does with its one worker): two clients'
requests run one after the other, each under the pool lock as from the command line, and
the bus loop never waits for the kernel, the catalog or a writer. The provider (with its
SQLite connection, which belongs to the thread that opened it) is opened and closed in
this thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider

T = TypeVar("T")


class Worker:
    """Runs calls on the pool's provider, one at a time, in the order submitted."""

    def __init__(self, pool: Path, runner: Runner | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="lunresync-worker")
        self._provider: Provider | None = None
        self._executor.submit(self._open, pool, runner or Runner()).result()

    def _open(self, pool: Path, runner: Runner) -> None:
        self._provider = Provider.open(pool, runner=runner)

    def _call(self, fn: Callable[[Provider], T]) -> T:
        assert self._provider is not None
        return fn(self._provider)

    def submit(self, fn: Callable[[Provider], T]) -> Future[T]:
        """From any thread: run ``fn(provider)`` in the worker."""
        return self._executor.submit(self._call, fn)

    async def run(self, fn: Callable[[Provider], T]) -> T:
        """From the bus loop: run ``fn(provider)`` in the worker and wait for it."""
        return await asyncio.wrap_future(self.submit(fn))

    def close(self) -> None:
        def close_provider() -> None:
            if self._provider is not None:
                self._provider.close()
                self._provider = None

        self._executor.submit(close_provider).result()
        self._executor.shutdown(wait=True)
