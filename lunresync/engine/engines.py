"""The engines by kind."""

from __future__ import annotations

from collections.abc import Mapping

from .base import Engine
from .clone import CloneEngine
from .merge import MergeEngine
from .mirror import MirrorEngine
from .model import EngineKind

ENGINES: Mapping[EngineKind, Engine] = {
    EngineKind.MERGE: MergeEngine(),
    EngineKind.MIRROR: MirrorEngine(),
    EngineKind.CLONE: CloneEngine(),
}
