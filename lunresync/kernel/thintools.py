"""thin-provisioning-tools (Debian package ``thin-provisioning-tools``, 0.9.0 in
Debian 12): ``thin_check`` before a thin pool is activated, ``thin_delta`` to tell which
blocks two thin volumes do not share, ``era_invalidate`` to tell which blocks a dm
``era`` device recorded as written.

Both read the pool's metadata device. ``thin_check`` needs it inactive (after a reboot,
before the pool's table is loaded); ``thin_delta -m`` reads a live pool through the
metadata snapshot the pool holds (``reserve_metadata_snap``), which the caller reserves
and releases around it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import Enum

from lunresync.errors import CommandError, LunresyncError, ParseError

from .runner import Runner
from .targets.base import check_device

__all__ = [
    "DamagedMetadata",
    "DeltaKind",
    "DeltaRange",
    "EraBlocks",
    "ThinDelta",
    "era_invalidate",
    "parse_era_invalidate",
    "parse_thin_delta",
    "thin_check",
    "thin_delta",
]

# thin_check reads every mapping: seconds per GiB of metadata on a slow disk.
_CHECK_TIMEOUT = 600.0


class DamagedMetadata(LunresyncError):
    """``thin_check`` found the metadata of a thin pool damaged: the pool stays down."""


def thin_check(runner: Runner, metadata: str) -> None:
    """Check the metadata device ``metadata`` of an inactive pool; raise
    :class:`DamagedMetadata` with what thin_check said when it is not sound."""
    check_device(metadata)
    try:
        runner.run(["thin_check", metadata], timeout=_CHECK_TIMEOUT)
    except CommandError as error:
        if error.returncode is None:  # not found, timed out: not a verdict on the metadata
            raise
        said = "; ".join(line.strip() for line in (error.stderr + error.stdout).splitlines()
                         if line.strip())
        raise DamagedMetadata(
            f"thin_check found the thin pool metadata {metadata} damaged: {said}",
            hint="the pool was left inactive; repair a copy with thin_repair",
        ) from None


class DeltaKind(Enum):
    SAME = "same"  # both map the range to the same data blocks (or neither maps it)
    DIFFERENT = "different"  # both map it, to different blocks
    LEFT_ONLY = "left_only"  # only the first volume maps it
    RIGHT_ONLY = "right_only"  # only the second volume maps it


@dataclass(frozen=True)
class DeltaRange:
    kind: DeltaKind
    begin: int  # in data blocks
    length: int


@dataclass(frozen=True)
class ThinDelta:
    """What ``thin_delta`` says of two thin volumes, in data blocks of ``block_sectors``."""

    left: int
    right: int
    block_sectors: int
    ranges: tuple[DeltaRange, ...]

    def changed(self) -> tuple[DeltaRange, ...]:
        """The ranges whose content may differ (everything not shared)."""
        return tuple(r for r in self.ranges if r.kind is not DeltaKind.SAME)

    def changed_bytes(self) -> int:
        return sum(r.length for r in self.changed()) * self.block_sectors * 512


def parse_thin_delta(text: str) -> ThinDelta:
    """Parse thin_delta's XML (``<superblock><diff left= right=><same begin= length=/>
    ...``)."""
    try:
        root = ET.fromstring(text)  # noqa: S314 - our own tool's output on our own metadata
    except ET.ParseError as error:
        raise ParseError("thin_delta output", text[:200], str(error)) from None
    diff = root.find("diff")
    if root.tag != "superblock" or diff is None:
        raise ParseError("thin_delta output", text[:200], "expected <superblock><diff>")
    try:
        block_sectors = int(root.attrib["data_block_size"])
        left, right = int(diff.attrib["left"]), int(diff.attrib["right"])
        ranges = tuple(DeltaRange(DeltaKind(item.tag), int(item.attrib["begin"]),
                                  int(item.attrib["length"])) for item in diff)
    except (KeyError, ValueError) as error:
        raise ParseError("thin_delta output", text[:200], f"unexpected {error}") from None
    return ThinDelta(left, right, block_sectors, ranges)


def thin_delta(runner: Runner, metadata: str, left: int, right: int, *,
               live: bool) -> ThinDelta:
    """The ranges where thin volumes ``left`` and ``right`` differ. ``live``: the pool is
    active and holds a metadata snapshot (``reserve_metadata_snap``), which is read."""
    check_device(metadata)
    argv = ["thin_delta", *(["-m"] if live else []), "--snap1", str(left),
            "--snap2", str(right), metadata]
    return parse_thin_delta(runner.run(argv, timeout=_CHECK_TIMEOUT).stdout)


#: (first block, end block) runs, ``end`` excluded, in the era device's blocks.
EraBlocks = tuple[tuple[int, int], ...]


def parse_era_invalidate(text: str) -> EraBlocks:
    """Parse era_invalidate's XML (``<blocks><block block=/><range begin= end=/>...``)
    into sorted, merged runs."""
    try:
        root = ET.fromstring(text)  # noqa: S314 - our own tool's output on our own metadata
    except ET.ParseError as error:
        raise ParseError("era_invalidate output", text[:200], str(error)) from None
    if root.tag != "blocks":
        raise ParseError("era_invalidate output", text[:200], "expected <blocks>")
    runs: list[tuple[int, int]] = []
    try:
        for item in root:
            if item.tag == "block":
                first = int(item.attrib["block"])
                runs.append((first, first + 1))
            elif item.tag == "range":
                runs.append((int(item.attrib["begin"]), int(item.attrib["end"])))
            else:
                raise ValueError(f"element <{item.tag}>")
    except (KeyError, ValueError) as error:
        raise ParseError("era_invalidate output", text[:200], f"unexpected {error}") from None
    merged: list[tuple[int, int]] = []
    for first, end in sorted(runs):
        if first < 0 or end <= first:
            raise ParseError("era_invalidate output", text[:200],
                             f"an empty or negative run {first}..{end}")
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((first, end))
    return tuple(merged)


def era_invalidate(runner: Runner, metadata: str, since: int, *,
                   metadata_snapshot: bool = False) -> EraBlocks:
    """The blocks written in era ``since`` or later, read from the metadata device of an
    era device that is not live (its table replaced or removed: the kernel committed its
    last era then), or (``metadata_snapshot``) from the snapshot a live era holds
    (``take_metadata_snap``). A regular file cannot be read (the tool opens with
    ``O_DIRECT``, which tmpfs refuses): attach it to a loop device."""
    check_device(metadata)
    argv = ["era_invalidate", "--written-since", str(since)]
    if metadata_snapshot:
        argv.append("--metadata-snapshot")
    argv.append(metadata)
    return parse_era_invalidate(runner.run(argv, timeout=_CHECK_TIMEOUT).stdout)
