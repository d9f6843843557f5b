"""Sizes as people write them ("4G", "512MiB", "1073741824") and as we print them."""

from __future__ import annotations

import re

from lunresync.errors import InvalidArgument, shown
from lunresync.kernel.blockdev import SECTOR_SIZE

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# "4G", "4GiB", "4gb", "4096", "4096B"; ASCII digits only, few enough that Python turns
# them into a number at once (it refuses more than 4300 digits).
_SIZE_RE = re.compile(r"\s*([0-9]{1,24})\s*(?:([kmgtp])(?:i?b)?|b)?\s*",
                      re.IGNORECASE | re.ASCII)
#: The largest size taken: the largest file a loop device can be made of (a file's size
#: is a signed 64-bit number), in whole sectors.
MAX_SIZE = (1 << 63) - SECTOR_SIZE


def parse_size(text: str | int) -> int:
    """Bytes from ``4G``, ``512M``, ``100MiB``, ``4096``. Binary units (G = GiB)."""
    if isinstance(text, bool):
        raise InvalidArgument(f"invalid size {shown(text)}")
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE_RE.fullmatch(text)
        if not match:
            raise InvalidArgument(
                f"invalid size {shown(text)}: use a whole number with an optional unit"
                " K, M, G, T (binary: 1G = 1024 MiB)"
            )
        size = int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if size <= 0:
        raise InvalidArgument(f"size must be positive, not {size}")
    if size > MAX_SIZE:
        raise InvalidArgument(f"size {size} is larger than {MAX_SIZE} bytes (8 EiB)")
    if size % SECTOR_SIZE:
        raise InvalidArgument(f"size must be a multiple of {SECTOR_SIZE} bytes, not {size}")
    return size


def parse_rate(text: str) -> int | None:
    """Bytes per second from ``50M``, ``50M/s``, ``512KiB/s``, ``1048576``; ``none`` (or
    ``0``): no limit (None). Binary units, as for sizes."""
    value = text.strip()
    if value.lower() in ("none", "0"):
        return None
    if value.lower().endswith("/s"):
        value = value[:-2]
    match = _SIZE_RE.fullmatch(value)
    if not match:
        raise InvalidArgument(f"invalid rate {shown(text)}: bytes per second as a whole number"
                              " with an optional unit K, M, G (1M = 1 MiB/s), or none")
    rate = int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if rate > MAX_SIZE:
        raise InvalidArgument(f"rate {shown(text)} is more than {MAX_SIZE} bytes per second")
    return rate or None


def format_size(size: int) -> str:
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"
