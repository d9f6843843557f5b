"""What the exported objects need from the service, as a protocol: the objects depend on it
alone and :class:`lunresync.service.daemon.Daemon` implements it, so the objects never
import the daemon (the layers stay one-way, and an object can be made with a stand-in).

Restore sessions and writers are named by their object paths here: they are the daemon's to
keep (their client may disconnect at any time, and the daemon forgets them then).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider
    from lunresync.storage.model import ShadowKind

T = TypeVar("T")


class ServiceContext(Protocol):
    """The service as its exported objects see it (on the bus loop)."""

    @property
    def pool(self) -> Path:
        """The pool directory the service serves."""
        ...

    def admitted(self) -> AbstractContextManager[None]:
        """Count the current method call as in flight for its client while inside; refuse
        it (LimitsExceeded) when that client has too many in flight already."""
        ...

    async def capabilities(self) -> dict[str, Any]:
        """What ``lunresync doctor --json`` reports, as last probed (not in the caller's
        time: at most a minute old)."""
        ...

    async def check_caller(self, *, owner: str | None = None) -> None:
        """Refuse (PermissionDenied) the client of the current method call when it may not
        change things or, with ``owner``, when it is not that client."""
        ...

    async def run(self, fn: Callable[[Provider], T], *, refresh: bool = True) -> T:
        """Run ``fn(provider)`` in the worker thread; then, unless ``refresh`` is false,
        bring the exported objects in line with the pool (even when ``fn`` failed). It
        neither checks the caller nor maps errors: the methods do that."""
        ...

    async def lookup(self, kind: str, name: str) -> str:
        """The object path of what ``name`` names (Manager.Lookup), without the worker."""
        ...

    async def refresh(self) -> None:
        """Bring the exported objects in line with the pool."""
        ...

    def is_exported(self, path: str) -> bool:
        """Whether an object of the pool (LUN, shadow copy, snapshot set, job) is exported
        at ``path`` now."""
        ...

    async def backup(self, lun_ids: Sequence[str], kind: ShadowKind | None,
                     writer_timeout: float | None) -> str:
        """The VSS-style backup of these LUNs with every writer; the document's JSON text."""
        ...

    async def begin_restore(self, document: str, writer_timeout: float | None) -> str:
        """A restore session of the calling client on a backup document; its path."""
        ...

    async def start_task(self, operation: str, work: Callable[[], Awaitable[str]]) -> str:
        """Run ``work`` as a Task of the calling client, without waiting for it; the
        Task's path."""
        ...

    def forget_task(self, path: str) -> None:
        """Remove the Task at ``path`` (its work goes on if it runs)."""
        ...

    def close_session(self, path: str) -> None:
        """Forget a restore session (a job it started goes on)."""
        ...

    async def register_writer(self, name: str, components: Sequence[str]) -> str:
        """Make the calling client a writer; the path of its Writer object."""
        ...

    def unregister_writer(self, path: str) -> None:
        """The writer at ``path`` stops being one; events waiting for it fail."""
        ...
