"""Lookups from the service's own connection to the catalog, in a thread of their own.

``Manager.Lookup`` is open to every local user. Answered in the worker, a flood of lookups
would queue up in front of administrators' calls and job polling; here it never waits for
the worker (a restore being started, a clone backup copying) and the worker never waits
for it. The catalog is SQLite in WAL mode: this connection reads what is committed and
neither side waits for the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from lunresync.engine.store import JobStore
from lunresync.storage.catalog import Catalog

T = TypeVar("T")


class CatalogReader:
    """Runs read-only queries on a catalog connection of its own, one at a time."""

    def __init__(self, catalog_path: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="lunresync-reader")
        self._catalog: Catalog | None = None
        # The connection belongs to the thread that opens it (the worker has opened the
        # pool, and upgraded its catalog, before this is made).
        self._executor.submit(self._open, catalog_path).result()

    def _open(self, path: Path) -> None:
        self._catalog = Catalog(path)

    def _call(self, fn: Callable[[Catalog, JobStore], T]) -> T:
        assert self._catalog is not None
        return fn(self._catalog, JobStore(self._catalog))

    async def run(self, fn: Callable[[Catalog, JobStore], T]) -> T:
        """From the bus loop: ``fn(catalog, jobs)`` in the reader's thread."""
        return await asyncio.wrap_future(self._executor.submit(self._call, fn))

    def close(self) -> None:
        def close_catalog() -> None:
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None

        self._executor.submit(close_catalog).result()
        self._executor.shutdown(wait=True)
