"""Roll back what an operation created so far when it fails, then re-raise.

    with Undo() as undo:
        loop = loops.attach(image)
        undo.push(f"detach {loop.path}", loops.detach, loop.path)
        ...          # an exception here detaches the loop device, then propagates
        undo.commit()  # success: forget the undo actions

Undo actions run newest first; one that fails is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


class Undo:
    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []

    def push(self, what: str, action: Callable[..., Any], *args: Any) -> None:
        self._actions.append((what, action, args))

    def commit(self) -> None:
        self._actions.clear()

    def rollback(self) -> None:
        while self._actions:
            what, action, args = self._actions.pop()
            try:
                action(*args)
            except Exception:
                log.exception("rollback step failed: %s", what)

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            log.info("rolling back after: %s", value)
            self.rollback()
