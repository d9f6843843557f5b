"""The on-disk format of a persistent dm-snapshot COW store (drivers/md/dm-snap-persistent.c).

    chunk 0                    header: magic "SnAp", valid, version, chunk size (sectors)
    chunk 1                    metadata area 0: exceptions_per_area x (old_chunk, new_chunk)
    chunks 2 .. epa+1          data chunks of area 0
    chunk epa+2                metadata area 1, and so on

Exceptions are appended; only the current area's metadata chunk is ever rewritten. So a
copy of the store taken earlier is brought up to date by copying it again from the
current area on: that is how the merge engine keeps its I/O freeze short (engine/merge.py).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from lunresync.errors import InvalidArgument

SNAP_MAGIC = 0x70416E53
_HEADER = struct.Struct("<IIII")
_EXCEPTION = struct.Struct("<QQ")


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
    """The header and every committed exception of a persistent COW store."""
    with open(path, "rb") as f:
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise InvalidArgument(f"{path} is too short for a COW store")
        magic, valid, _version, chunk_sectors = _HEADER.unpack(header)
        if magic != SNAP_MAGIC or not chunk_sectors:
            raise InvalidArgument(f"{path} is not a persistent dm-snapshot COW store")
        store = CowStore(chunk_sectors, bool(valid), ())
        exceptions: list[tuple[int, int]] = []
        area = 0
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


def copy_tail(source: str | os.PathLike[str], target: str | os.PathLike[str],
              offset: int) -> int:
    """Copy the data of ``source`` from ``offset`` on into ``target`` (holes skipped);
    return the bytes copied. Fsyncs ``target``."""
    copied = 0
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_WRONLY)
        try:
            end = os.fstat(src).st_size
            position = offset
            while position < end:
                try:
                    start = os.lseek(src, position, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                stop = os.lseek(src, start, os.SEEK_HOLE)
                while start < stop:
                    block = os.pread(src, min(4 << 20, stop - start), start)
                    if not block:
                        break
                    os.pwrite(dst, block, start)
                    start += len(block)
                    copied += len(block)
                position = stop
            os.fdatasync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return copied


