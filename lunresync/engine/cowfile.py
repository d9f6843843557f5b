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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

from lunresync.errors import InvalidArgument
from lunresync.kernel.blockdev import SECTOR_SIZE

SNAP_MAGIC = 0x70416E53
_HEADER = struct.Struct("<IIII")
_EXCEPTION = struct.Struct("<QQ")
COPY_STEP = 64 << 20


def exceptions_per_area(chunk_sectors: int) -> int:
    """How many exceptions one metadata chunk lists (and data chunks follow it)."""
    return chunk_sectors * SECTOR_SIZE // _EXCEPTION.size


@dataclass(frozen=True)
class CowStore:
    chunk_sectors: int
    valid: bool
    exceptions: tuple[tuple[int, int], ...]  # (origin chunk, COW chunk), in order
    first_area: int = 0  # the areas before it are full and were not read

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_sectors * SECTOR_SIZE

    @property
    def per_area(self) -> int:
        return exceptions_per_area(self.chunk_sectors)

    @property
    def count(self) -> int:
        """Committed exceptions, those of the areas not read included."""
        return self.first_area * self.per_area + len(self.exceptions)

    def area_offset(self, area: int) -> int:
        """Byte offset of a metadata area's chunk."""
        return (1 + area * (self.per_area + 1)) * self.chunk_bytes

    def tail_offset(self) -> int:
        """Where the store can still change: the current metadata area and after."""
        return self.area_offset(self.count // self.per_area)

    def since(self, index: int) -> tuple[tuple[int, int], ...]:
        """The exceptions committed after the first ``index`` (read from their area on)."""
        skipped = self.first_area * self.per_area
        if index < skipped:
            raise ValueError(f"exception {index} is in an area that was not read")
        return self.exceptions[index - skipped:]

    def origin_chunks(self, first: int = 0) -> set[int]:
        return {old for old, _ in self.since(first)}

    def origin_regions(self, region_sectors: int) -> set[int]:
        """The regions (of ``region_sectors``) holding the chunks the store lists."""
        return regions_of(self.origin_chunks(), self.chunk_sectors, region_sectors)


def regions_of(chunks: Iterable[int], chunk_sectors: int, region_sectors: int) -> set[int]:
    """The regions holding the given chunks."""
    return {chunk * chunk_sectors // region_sectors for chunk in chunks}


def read_store(path: str | os.PathLike[str], first_area: int = 0) -> CowStore:
    """The header and the committed exceptions of a persistent COW store, from metadata
    area ``first_area`` on (the caller knows the areas before it are full)."""
    with open(path, "rb") as f:
        store = replace(_header(f, path), first_area=first_area)
        area = first_area
        exceptions: list[tuple[int, int]] = []
        while True:
            block = _area(f, store, area)
            if block is None:
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
    return replace(store, exceptions=tuple(exceptions))


def read_tail(path: str | os.PathLike[str]) -> CowStore:
    """:func:`read_store` from the current metadata area on, found by bisection: a few
    reads however large the store (an area is full when its last entry is set)."""
    with open(path, "rb") as f:
        store = _header(f, path)
        stride = store.area_offset(1) - store.area_offset(0)
        low, high = 0, os.fstat(f.fileno()).st_size // stride + 1
        while low < high:  # the first area that is not full
            middle = (low + high) // 2
            block = _area(f, store, middle)
            if block is not None and _EXCEPTION.unpack_from(block, len(block) - _EXCEPTION.size)[1]:
                low = middle + 1
            else:
                high = middle
    return read_store(path, low)


def _header(f: BinaryIO, path: str | os.PathLike[str]) -> CowStore:
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise InvalidArgument(f"{path} is too short for a COW store")
    magic, valid, _version, chunk_sectors = _HEADER.unpack(header)
    if magic != SNAP_MAGIC or not chunk_sectors:
        raise InvalidArgument(f"{path} is not a persistent dm-snapshot COW store")
    return CowStore(chunk_sectors, bool(valid), ())


def _area(f: BinaryIO, store: CowStore, area: int) -> bytes | None:
    """An area's metadata chunk; None past the end of the file."""
    f.seek(store.area_offset(area))
    block = f.read(store.chunk_bytes)
    return block if len(block) == store.chunk_bytes else None


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
