"""JSON read from files and callers lunresync does not control (documents, bundles, its
own records), strictly: what Python's ``json`` lets through would escape later as an
exception of another kind (``time.gmtime(inf)``, a ``RecursionError``)."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["loads"]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:30]} is too large a number")
    return value


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN, Infinity and numbers too large for a float, and
    raises ValueError (not RecursionError) for text nested too deeply."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
