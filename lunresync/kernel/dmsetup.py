"""``dmsetup``, typed: create, load, suspend, resume, remove, message, status, table, info.

Every call has a timeout (a dmsetup waiting for a udev event that never comes would
otherwise hang forever, docs/kernel-notes.md). With udev running, dmsetup synchronises
with it through udev cookies, so when a call returns the /dev/mapper node exists (or is
gone); ``udev_sync=False`` turns that off (``--noudevsync``) for callers that must not wait.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from lunresync.errors import CommandError, DeviceBusy, InvalidArgument, NotFound, ParseError

from . import udev
from .names import dm_name, dm_uuid
from .runner import CommandResult, Runner
from .targets import StatusLine, Table, parse_status_line, parse_table

DMSETUP = "dmsetup"
MAPPER_DIR = "/dev/mapper"
_INFO_FIELDS = ("name", "uuid", "major", "minor", "attr", "open", "segments", "events")
# Columns as KEY='value' words: names with odd characters cannot shift the columns.
_INFO_ARGS = ("info", "-c", "--noheadings", "--nameprefixes", "--separator", " ",
              "-o", ",".join(_INFO_FIELDS))
_BUSY_MARKERS = ("Device or resource busy", "EBUSY")
_MISSING_MARKERS = ("No such device or address", "not found", "does not exist")
_VERSION_RE = re.compile(r"v\d+(\.\d+)*")
# With --noheadings dmsetup separates fields with ":" (with spaces otherwise), quotes each
# value with ' and escapes nothing inside: a UUID may hold ":", a foreign device's name
# even "'". So fields are found by their DM_ names, not by splitting on separators.
_INFO_FIELD_RE = re.compile(r"(DM_[A-Z_]+)='(.*?)'(?:[:\s]+(?=DM_[A-Z_]+=')|\s*\Z)")


@dataclass(frozen=True)
class DmInfo:
    """What the kernel says about one mapped device."""

    name: str
    uuid: str
    major: int
    minor: int
    open_count: int
    segments: int
    events: int
    live_table: bool
    inactive_table: bool
    suspended: bool
    read_only: bool

    @property
    def devno(self) -> str:
        return f"{self.major}:{self.minor}"

    @property
    def path(self) -> str:
        return f"{MAPPER_DIR}/{self.name}"

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> DmInfo:
        """Build from ``dmsetup info -c --nameprefixes`` fields (DM_NAME='...' ...)."""
        try:
            attr = fields["DM_ATTR"]
            return cls(
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
        devices.append(DmInfo.from_fields(fields))
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


@dataclass(frozen=True)
class DeviceMapper:
    """The device-mapper through dmsetup. Pass one to whatever needs it."""

    runner: Runner = field(default_factory=Runner)
    timeout: float = 30.0
    udev_sync: bool = True
    remove_attempts: int = 5

    # -- running ---------------------------------------------------------------------

    def _run(
        self, *args: str, input: str | None = None, timeout: float | None = None,  # noqa: A002
        udev_sync: bool | None = None,
    ) -> CommandResult:
        argv = [DMSETUP]
        if not (self.udev_sync if udev_sync is None else udev_sync):
            argv.append("--noudevsync")
        argv += args
        try:
            return self.runner.run(argv, input=input, timeout=timeout or self.timeout)
        except CommandError as exc:
            if exc.returncode is not None and any(m in exc.stderr for m in _BUSY_MARKERS):
                raise DeviceBusy(exc.argv, exc.returncode, exc.stderr, exc.stdout) from None
            raise

    # -- queries ---------------------------------------------------------------------

    def targets(self) -> dict[str, str]:
        """Targets the kernel has loaded now: {name: version}."""
        return parse_targets_output(self._run("targets").stdout)

    def devices(self, *, uuid_prefix: str | None = None) -> list[DmInfo]:
        """Every mapped device (optionally only those whose UUID starts with a prefix)."""
        out = self._run(
            *_INFO_ARGS
        ).stdout
        devices = parse_info_output(out)
        if uuid_prefix is not None:
            devices = [d for d in devices if d.uuid.startswith(uuid_prefix)]
        return devices

    def info(self, name: str) -> DmInfo:
        """Info for one device; NotFound if there is none of that name."""
        try:
            out = self._run(
                *_INFO_ARGS,
                dm_name(name),
            ).stdout
        except CommandError as exc:
            if any(m in exc.stderr for m in _MISSING_MARKERS):
                raise NotFound(f"no device-mapper device named {name!r}") from exc
            raise
        devices = parse_info_output(out)
        if len(devices) != 1:
            raise NotFound(f"no device-mapper device named {name!r}")
        return devices[0]

    def exists(self, name: str) -> bool:
        try:
            self.info(name)
        except NotFound:
            return False
        return True

    def table(self, name: str, *, inactive: bool = False) -> Table:
        args = ["table", *(["--inactive"] if inactive else []), dm_name(name)]
        return parse_table(self._run(*args).stdout)

    def status(self, name: str) -> tuple[StatusLine, ...]:
        out = self._run("status", dm_name(name)).stdout
        return tuple(parse_status_line(line) for line in out.splitlines() if line.strip())

    # -- changes ---------------------------------------------------------------------

    def create(
        self,
        name: str,
        table: Table | None,
        *,
        uuid: str | None = None,
        read_only: bool = False,
    ) -> DmInfo:
        """Create a device (and read its info back). ``table=None`` creates it with no
        table (load one later)."""
        self.create_only(name, table, uuid=uuid, read_only=read_only)
        return self.info(name)

    def create_only(self, name: str, table: Table | None, *, uuid: str | None = None,
                    read_only: bool = False) -> None:
        """:meth:`create` without reading the info back: one process, not two."""
        args = ["create", dm_name(name)]
        if uuid is not None:
            args += ["--uuid", dm_uuid(uuid)]
        if read_only:
            args.append("--readonly")
        if table is None:
            args.append("--notable")
            self._run(*args)
        else:
            self._run(*args, input=table.format())

    def load(self, name: str, table: Table, *, read_only: bool = False) -> None:
        """Load ``table`` into the inactive slot; ``resume`` makes it live."""
        args = ["load", dm_name(name), *(["--readonly"] if read_only else [])]
        self._run(*args, input=table.format())

    def clear(self, name: str) -> None:
        """Drop the inactive table."""
        self._run("clear", dm_name(name))

    def suspend(self, *names: str, noflush: bool = False, nolockfs: bool = False) -> None:
        """Suspend one or more devices in one dmsetup call (one process in the freeze)."""
        args = ["suspend"]
        if noflush:
            args.append("--noflush")
        if nolockfs:
            args.append("--nolockfs")
        self._run(*args, *_names(names))

    def resume(self, *names: str, udev_sync: bool | None = None) -> None:
        """Resume one or more devices (making any loaded inactive table live).

        ``udev_sync=False`` returns without waiting for udev to handle the devices' events
        (used inside an I/O freeze; call :func:`udev.settle` afterwards).
        """
        self._run("resume", *_names(names), udev_sync=udev_sync)

    def message(self, name: str, *words: str, sector: int = 0) -> str:
        """Send a target message (``dmsetup message NAME SECTOR WORDS...``)."""
        if not words or any(not w or any(c.isspace() for c in w) for w in words):
            raise InvalidArgument(f"a dm message is one or more words, not {words!r}")
        return self._run("message", dm_name(name), str(sector), *words).stdout

    def remove(self, name: str, *, force: bool = False, missing_ok: bool = False) -> None:
        """Remove a device, retrying while it is briefly busy (udev probes, closing openers).

        ``force`` first replaces the table with ``error`` so that openers fail instead of
        hanging (``dmsetup remove --force``). Raises DeviceBusy if it stays busy.
        """
        # No "--retry": libdm's own loop spends 5 s on a device that is really open; ours
        # lets udev finish (the usual brief opener) and asks again.
        args = ["remove", *(["--force"] if force else []), dm_name(name)]
        for attempt in range(1, self.remove_attempts + 1):
            try:
                self._run(*args)
                return
            except DeviceBusy:
                if attempt == self.remove_attempts:
                    raise
                # Whoever holds it is most often a udev worker probing it: let it finish.
                udev.settle(self.runner, timeout=10)
            except CommandError as exc:
                if missing_ok and any(m in exc.stderr for m in _MISSING_MARKERS):
                    return
                raise

    def remove_all(self, names: Iterable[str], *, force: bool = False) -> list[Exception]:
        """Remove every named device that exists, in order; return errors instead of stopping.

        For clean-up paths, where one failure must not leave the rest behind.
        """
        errors: list[Exception] = []
        for name in names:
            try:
                self.remove(name, force=force, missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - collected and returned to the caller
                errors.append(exc)
        return errors


def _names(names: Iterable[str]) -> list[str]:
    checked = [dm_name(n) for n in names]
    if not checked:
        raise InvalidArgument("no device named")
    return checked
