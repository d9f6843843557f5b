"""The on-disk format of a persistent dm-snapshot COW store (drivers/md/dm-snap-persistent.c).

    chunk 0                    header: magic "SnAp", valid, version, chunk size (sectors)
    chunk 1                    metadata area 0: exceptions_per_area x (old_chunk, new_chunk)
    chunks 2 .. epa+1          data chunks of area 0
    chunk epa+2                metadata area 1, and so on

Exceptions are appended; only the current area's metadata chunk and the header (when the
kernel invalidates the snapshot) are ever rewritten. So everything between the header and
the current metadata area stays as it is: the merge engine reads that part from the store
itself and copies only the rest (engine/merge.py).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from lunresync.errors import InvalidArgument

SNAP_MAGIC = 0x70416E53
_HEADER = struct.Struct("<IIII")
_EXCEPTION = struct.Struct("<QQ")
COPY_STEP = 64 << 20


@dataclass(frozen=True)
class CowStore:
    chunk_sectors: int
    valid: bool
    exceptions: tuple[tuple[int, int], ...]  # (origin chunk, COW chunk), in order

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_sectors * 512

    @property
    def per_area(self) -> int:
        return self.chunk_bytes // _EXCEPTION.size

    def area_offset(self, area: int) -> int:
        """Byte offset of a metadata area's chunk."""
        return (1 + area * (self.per_area + 1)) * self.chunk_bytes

    def tail_offset(self) -> int:
        """Where the store can still change: the current metadata area and after."""
        return self.area_offset(len(self.exceptions) // self.per_area)

    def origin_chunks(self, first: int = 0) -> set[int]:
        return {old for old, _ in self.exceptions[first:]}


def read_store(path: str | os.PathLike[str]) -> CowStore:
    """The header and the committed exceptions of a persistent COW store."""
    with open(path, "rb") as f:
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise InvalidArgument(f"{path} is too short for a COW store")
        magic, valid, _version, chunk_sectors = _HEADER.unpack(header)
        if magic != SNAP_MAGIC or not chunk_sectors:
            raise InvalidArgument(f"{path} is not a persistent dm-snapshot COW store")
        store = CowStore(chunk_sectors, bool(valid), ())
        area = 0
        exceptions: list[tuple[int, int]] = []
        while True:
            f.seek(store.area_offset(area))
            block = f.read(store.chunk_bytes)
            if len(block) < store.chunk_bytes:
                break
            ended = False
            for old, new in _EXCEPTION.iter_unpack(block):
                if new == 0:  # the kernel's end marker (chunk 0 is the header)
                    ended = True
                    break
                exceptions.append((old, new))
            if ended:
                break
            area += 1
    return CowStore(chunk_sectors, bool(valid), tuple(exceptions))


def copy_ranges(source: str | os.PathLike[str], target: str | os.PathLike[str],
                ranges: Sequence[tuple[int, int | None]]) -> int:
    """Copy the data of ``source`` in each (start, end) byte range (end None: to the end of
    the file) into ``target`` at the same offsets: holes skipped, the copy made by the
    kernel. ``target`` grows to ``source``'s size if it is smaller. Returns the bytes
    copied; fsyncs ``target``."""
    copied = 0
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_WRONLY)
        try:
            size = os.fstat(src).st_size
            if os.fstat(dst).st_size < size:
                os.ftruncate(dst, size)
            for first, last in ranges:
                copied += _copy_data(src, dst, first, size if last is None else min(last, size))
            os.fdatasync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return copied


def _copy_data(src: int, dst: int, position: int, end: int) -> int:
    copied = 0
    while position < end:
        try:
            start = os.lseek(src, position, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        stop = min(os.lseek(src, start, os.SEEK_HOLE), end)
        while start < stop:
            done = os.copy_file_range(src, dst, min(COPY_STEP, stop - start), start, start)
            if not done:
                break
            start += done
            copied += done
        position = stop
    return copied
