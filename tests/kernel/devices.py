"""Scratch devices for kernel tests, removed whatever happens.

A :class:`DeviceStack` creates sparse images, loop devices over them and device-mapper
devices over those, remembering each; ``close()`` removes them newest first, forcing where
needed and carrying on past errors, then reports what it could not remove. Every name it
creates starts with ``TEST_PREFIX`` so that the session's leak check can find strays.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from lunresync.kernel.dm import DeviceMapper, DmInfo
from lunresync.kernel.loop import LoopDevice, LoopDevices
from lunresync.kernel.runner import Runner
from lunresync.kernel.targets import DelayTable, Table

TEST_PREFIX = "lrt-"
T = TypeVar("T")
MiB = 1024 * 1024


@dataclass(frozen=True)
class SlowDevice:
    """A dm ``delay`` device over a loop device: a destination whose writes take a while,
    so that a copy is still running when a test acts."""

    name: str  # its dm name
    loop: str  # the loop device under it
    sectors: int

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.name}"


class DeviceStack:
    def __init__(self, dm: DeviceMapper, loops: LoopDevices, pool: Path) -> None:
        self.dm = dm
        self.loops = loops
        self.pool = pool
        self.tag = TEST_PREFIX + secrets.token_hex(3)
        self._dm_names: list[str] = []
        self._loops: list[str] = []
        self._files: list[Path] = []

    def name(self, suffix: str) -> str:
        return f"{self.tag}-{suffix}"

    def image(self, suffix: str, size: int) -> Path:
        path = self.pool / f"{self.name(suffix)}.img"
        with path.open("xb") as f:
            f.truncate(size)  # sparse
        self._files.append(path)
        return path

    def loop(self, suffix: str, size: int, *, read_only: bool = False,
             direct_io: bool | None = None) -> LoopDevice:
        return self.attach(self.image(suffix, size), read_only=read_only, direct_io=direct_io)

    def attach(self, image: Path, *, read_only: bool = False,
               direct_io: bool | None = None) -> LoopDevice:
        """A loop device over ``image`` (a file the test made), detached with the stack."""
        device = self.loops.attach(image, read_only=read_only, direct_io=direct_io)
        self._loops.append(device.path)
        return device

    def create(self, suffix: str, table: Table | None, *, uuid: str | None = None,
               read_only: bool = False) -> DmInfo:
        name = self.name(suffix)
        # Remember it before creating: a create that times out may still have made it.
        self._dm_names.append(name)
        return self.dm.create(name, table, uuid=uuid, read_only=read_only)

    def slow(self, suffix: str, size: int, write_ms: int, *,
             flush_ms: int | None = None) -> SlowDevice:
        """Writes held ``write_ms``, flushes ``flush_ms`` (None: as long as writes)."""
        loop = self.loop(suffix + "-img", size)
        self.create(suffix, Table.single(
            DelayTable(loop.path, write_ms=write_ms, flush_ms=flush_ms), size // 512))
        return SlowDevice(self.name(suffix), loop.path, size // 512)

    def release(self, suffix: str) -> None:
        """The slow device ``suffix`` passes writes on at once from now on, the held ones
        too (dm-delay flushes what it holds when it is suspended for the reload): a test
        that slowed a copy down to act while it runs lets the rest go at full speed."""
        name = self.name(suffix)
        (line,) = self.dm.table(name).lines
        assert isinstance(line.params, DelayTable), f"{name} is not a delay device"
        self.dm.load(name, Table.single(replace(line.params, read_ms=0, write_ms=0,
                                                flush_ms=0), line.length))
        self.dm.resume(name)

    @contextlib.contextmanager
    def released_before(self, request: tuple[str, ...], *suffixes: str) -> Iterator[None]:
        """Release the slow devices ``suffixes`` (see :meth:`release`) just before the
        kernel request ``request`` is made in the body, as :meth:`Runner.kernel_call`
        names it (``("dm-ioctl", "remove", NAME)``); at the end of the body if it never
        was.

        For a step that suspends a copy's device (a deactivate's removal of the LUN, a
        cancel's resume into its fencing table): that suspend waits for every write the
        slow devices hold, and a mirror's for the copy of its whole region. The step runs
        with the copy held up to that request, then the rest goes at full speed.
        """
        released = False
        original = Runner.kernel_call

        def kernel_call(runner: Runner, argv: tuple[str, ...], call: Callable[[], T]) -> T:
            nonlocal released
            if not released and tuple(argv) == request:
                released = True  # first: release() makes kernel requests of its own
                for suffix in suffixes:
                    self.release(suffix)
            return original(runner, argv, call)

        setattr(Runner, "kernel_call", kernel_call)  # noqa: B010 - undone below
        try:
            yield
        finally:
            setattr(Runner, "kernel_call", original)  # noqa: B010
        if not released:
            for suffix in suffixes:
                self.release(suffix)

    def set_delay(self, device: SlowDevice, write_ms: int) -> None:
        """Reload a slow device's delay (0: a held copy can finish)."""
        self.dm.load(device.name, Table.single(DelayTable(device.loop, write_ms=write_ms),
                                               device.sectors))
        self.dm.resume(device.name)

    def close(self) -> None:
        errors: list[str] = []
        for name in reversed(self._dm_names):
            try:
                self.dm.remove(name, missing_ok=True)
            except Exception:  # noqa: BLE001 - try harder below, then report
                with contextlib.suppress(Exception):
                    self.dm.resume(name)  # in case it was left suspended
                for err in self.dm.remove_all([name], force=True):
                    errors.append(f"dm {name}: {err}")
        for path in reversed(self._loops):
            try:
                self.loops.detach(path)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"loop {path}: {exc}")
        for file in self._files:
            file.unlink(missing_ok=True)
        self._dm_names.clear()
        self._loops.clear()
        self._files.clear()
        if errors:
            raise RuntimeError("clean-up failed:\n" + "\n".join(errors))

    def __enter__(self) -> DeviceStack:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


BLKFLSBUF = 0x1261  # <linux/fs.h>: write back and drop a block device's page cache


def suspend_waits_in(pid: int) -> bool:
    """Whether a thread of process ``pid`` is in a device-mapper suspend that waits for
    I/O in flight. A resume into a loaded table clears the device's "inactive table" flag
    before it suspends, so only the waiting thread shows that the request was made."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    for thread in threads:
        with contextlib.suppress(OSError):
            if (thread / "wchan").read_text().strip() == "dm_wait_for_completion":
                return True
    return False


def drop_cache(fd: int) -> None:
    """Forget what the page cache holds of a block device (nothing for a file).

    A device held open by a dm device keeps its page cache across closes; device-mapper
    writes to it bypass that cache. A udev probe that read it a moment before a test
    writes through dm would otherwise leave stale pages for the test to read back.
    """
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        fcntl.ioctl(fd, BLKFLSBUF)


def digest_of(path: str | os.PathLike[str], *, length: int | None = None,
              algorithm: str = "blake2b") -> str:
    """Checksum of a device or file, read past any stale page cache. BLAKE2b: SHA-256
    hashes 27 MiB/s in the TCG test VM, BLAKE2b 136 (measured 2026-12-03), and the tests
    hash whole LUNs often; ``algorithm="sha256"`` where a bundle's manifest is compared."""
    digest = hashlib.new(algorithm)
    with open(path, "rb", buffering=0) as f:
        drop_cache(f.fileno())
        remaining = length
        while remaining is None or remaining > 0:
            want = MiB if remaining is None else min(MiB, remaining)
            chunk = f.read(want)
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a device or file, as a bundle's manifest says it."""
    return digest_of(path, algorithm="sha256")


def fill(path: str | os.PathLike[str], size: int, seed: int | None = None) -> None:
    """Write ``size`` bytes in 1 MiB writes and make them durable: random bytes, or with a
    ``seed`` deterministic, incompressible-looking content (the same seed, the same data)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, MiB):
            if seed is None:
                block = os.urandom(MiB)
            else:
                pattern = seed.to_bytes(4, "little") + offset.to_bytes(8, "little")
                block = (pattern * (MiB // 12)).ljust(MiB, b"\x5a")
            os.pwrite(fd, block, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def removal_order(names: list[str]) -> list[str]:
    """Upper devices first: LUN tops, then shadow copies, then ``-real`` devices."""
    return sorted(names, key=lambda n: (n.endswith("-real"), "-sc-" in n, n))


def write_pattern(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of a block device and make it durable."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: str | os.PathLike[str], offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_cache(fd)
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def devno(path: str | os.PathLike[str]) -> str:
    """``MAJOR:MINOR`` of a block device, as the kernel prints it in tables."""
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"
