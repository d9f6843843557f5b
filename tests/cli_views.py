"""What ``dmsetup`` and ``losetup`` print, parsed: an independent view of the devices that
lunresync makes through ioctls, for the kernel tests to cross-check against.

lunresync itself runs neither program (every step is an ioctl, see
``lunresync/kernel/dm.py``); users do, and so do udev's device-mapper rules.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lunresync.errors import ParseError
from lunresync.kernel.dm import DmInfo
from lunresync.kernel.loop import LoopDevice
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import StatusLine, Table, parse_status_line, parse_table

_INFO_FIELDS = ("name", "uuid", "major", "minor", "attr", "open", "segments", "events")
# Columns as KEY='value' words: names with odd characters cannot shift the columns.
_INFO_ARGS = ("info", "-c", "--noheadings", "--nameprefixes", "--separator", " ",
              "-o", ",".join(_INFO_FIELDS))
_VERSION_RE = re.compile(r"v\d+(\.\d+)*")
# With --noheadings dmsetup separates fields with ":" (with spaces otherwise), quotes each
# value with ' and escapes nothing inside: a UUID may hold ":", a foreign device's name
# even "'". So fields are found by their DM_ names, not by splitting on separators.
_INFO_FIELD_RE = re.compile(r"(DM_[A-Z_]+)='(.*?)'(?:[:\s]+(?=DM_[A-Z_]+=')|\s*\Z)")
_LOSETUP_COLUMNS = "NAME,BACK-FILE,RO,DIO,OFFSET,SIZELIMIT,AUTOCLEAR"
_DELETED = " (deleted)"


def info_from_fields(fields: dict[str, str]) -> DmInfo:
    """Build from ``dmsetup info -c --nameprefixes`` fields (DM_NAME='...' ...)."""
    try:
        attr = fields["DM_ATTR"]
        return DmInfo(
            name=fields["DM_NAME"],
            uuid=fields.get("DM_UUID", ""),
            major=int(fields["DM_MAJOR"]),
            minor=int(fields["DM_MINOR"]),
            open_count=int(fields.get("DM_OPEN") or 0),
            segments=int(fields.get("DM_SEGMENTS") or 0),
            events=int(fields.get("DM_EVENTS") or 0),
            live_table="L" in attr,
            inactive_table="I" in attr,
            suspended="s" in attr,
            read_only="r" in attr,
        )
    except (KeyError, ValueError) as exc:
        raise ParseError("dmsetup info", repr(fields), str(exc)) from None


def parse_info_output(text: str) -> list[DmInfo]:
    """Parse ``dmsetup info -c --noheadings --nameprefixes`` output (one device a line)."""
    devices = []
    for line in text.splitlines():
        if not line.strip() or line.strip() == "No devices found":
            continue
        fields = {}
        text_line = line.strip()
        pos = 0
        while pos < len(text_line):
            match = _INFO_FIELD_RE.match(text_line, pos)
            if match is None:
                raise ParseError("dmsetup info line", line, f"unexpected text at column {pos}")
            fields[match[1]] = match[2]
            pos = match.end()
        devices.append(info_from_fields(fields))
    return devices


def parse_targets_output(text: str) -> dict[str, str]:
    """Parse ``dmsetup targets``: ``name vX.Y.Z`` per line -> {name: "X.Y.Z"}."""
    targets = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) != 2 or not _VERSION_RE.fullmatch(words[1]):
            raise ParseError("dmsetup targets line", line, "expected <name> v<version>")
        targets[words[0]] = words[1][1:]
    return targets


def _flag(value: Any) -> bool:
    # losetup --json prints booleans in newer util-linux and "0"/"1" in older ones.
    if isinstance(value, bool):
        return value
    return str(value).strip() in ("1", "true")


def parse_losetup_json(text: str) -> list[LoopDevice]:
    """Parse ``losetup --list --json -O NAME,BACK-FILE,RO,DIO,OFFSET,SIZELIMIT,AUTOCLEAR``."""
    if not text.strip():
        return []  # losetup prints nothing at all when no loop device is attached
    try:
        rows = json.loads(text)["loopdevices"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ParseError("losetup --json output", text[:200], str(exc)) from None
    devices = []
    try:
        for row in rows:
            backing = str(row.get("back-file") or "")
            deleted = backing.endswith(_DELETED)
            if deleted:
                backing = backing[: -len(_DELETED)]
            devices.append(
                LoopDevice(
                    path=str(row["name"]),
                    backing_file=backing,
                    read_only=_flag(row.get("ro")),
                    direct_io=_flag(row.get("dio")),
                    offset=int(row.get("offset") or 0),
                    size_limit=int(row.get("sizelimit") or 0),
                    autoclear=_flag(row.get("autoclear")),
                    backing_deleted=deleted,
                )
            )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # rows not a list of objects, a row without "name", a non-numeric offset...
        raise ParseError("losetup --json output", text[:200], repr(exc)) from None
    return devices


class CliView:
    """The devices as dmsetup and losetup see them (processes: for tests only)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def devices(self) -> list[DmInfo]:
        return parse_info_output(self.runner.run(["dmsetup", *_INFO_ARGS]).stdout)

    def info(self, name: str) -> DmInfo:
        (info,) = parse_info_output(self.runner.run(["dmsetup", *_INFO_ARGS, name]).stdout)
        return info

    def table(self, name: str) -> Table:
        return parse_table(self.runner.run(["dmsetup", "table", name]).stdout)

    def status(self, name: str) -> tuple[StatusLine, ...]:
        out = self.runner.run(["dmsetup", "status", name]).stdout
        return tuple(parse_status_line(line) for line in out.splitlines() if line.strip())

    def targets(self) -> dict[str, str]:
        return parse_targets_output(self.runner.run(["dmsetup", "targets"]).stdout)

    def loops(self) -> list[LoopDevice]:
        out = self.runner.run(["losetup", "--list", "--json", "--output",
                               _LOSETUP_COLUMNS]).stdout
        return parse_losetup_json(out)
