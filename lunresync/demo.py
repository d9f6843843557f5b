"""The end-to-end scenario a newcomer runs first (``lunresync demo``, ``./dev.sh demo``).

Two LUNs with file systems (ext4 and, where mkfs.xfs exists, xfs) and data are backed up
as one snapshot set, damaged, then restored together online while a reader keeps
reading one of them; the files are checked while the copy still runs, the devices
compared with the shadow copies once it is done, and a plain ``dd`` copy of the same data
is timed for comparison. Everything is made in a scratch pool and removed at the end,
also when a step fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lunresync.engine.model import Job, JobState
from lunresync.errors import InvalidArgument, LunresyncError
from lunresync.kernel.runner import Runner
from lunresync.provider.provider import Provider
from lunresync.requester.document import load_document
from lunresync.requester.workflow import RestoreSession, backup, load_writers
from lunresync.requester.writers import Writer
from lunresync.storage.model import Lun, ShadowKind

MiB = 1 << 20
READ_BLOCK = 4096


class DemoFailed(LunresyncError):
    """The scenario found wrong content (the restore did not do its job)."""


@dataclass
class Reader:
    """Reads random 4 KiB blocks of a device until stopped; counts reads and errors."""

    path: str
    size: int
    reads: int = 0
    errors: int = 0
    worst: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _reading: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Returns once the first read is done: the reader is really reading."""
        self._thread = threading.Thread(target=self._run, name="demo-reader", daemon=True)
        self._thread.start()
        self._reading.wait(30)

    def _run(self) -> None:
        rng = random.Random(1)  # noqa: S311 - reproducible offsets, not secrets
        blocks = self.size // READ_BLOCK
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        aligned = mmap.mmap(-1, READ_BLOCK)  # page-aligned, as direct I/O needs
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    os.preadv(fd, [aligned], rng.randrange(blocks) * READ_BLOCK)
                    self.reads += 1
                except OSError:
                    self.errors += 1
                self.worst = max(self.worst, time.monotonic() - started)
                self._reading.set()
                time.sleep(0.002)
        finally:
            self._reading.set()
            os.close(fd)
            aligned.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@dataclass
class DemoLun:
    lun: Lun
    fs: str
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256


@dataclass(frozen=True)
class DemoResult:
    online_seconds: float
    restore_seconds: float
    copy_seconds: float
    engines: str
    reads: int
    read_errors: int
    worst_read: float
    bytes_total: int

    @property
    def ratio(self) -> float:
        return self.restore_seconds / self.copy_seconds if self.copy_seconds else 0.0


def scratch_parent() -> Path:
    """tmpfs where there is one (fast, never on a 9p share), else /var/tmp."""
    # mkdtemp makes a private directory inside: no shared-/tmp race.
    shm = Path("/dev/shm")  # noqa: S108
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path("/var/tmp")  # noqa: S108


@contextlib.contextmanager
def mounted(runner: Runner, device: str, where: Path, *, fs: str = "ext4",
            read_only: bool = False) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    # Read-only for real: a plain "ro" mount still replays the journal (ext4) or the log
    # (xfs) and would write to the device it is meant only to look at.
    options = ["-o", "ro,norecovery" if fs == "xfs" else "ro,noload"] if read_only else []
    runner.run(["mount", *options, device, str(where)])
    try:
        yield where
    finally:
        runner.run(["umount", str(where)])


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class Demo:
    def __init__(self, *, size: int = 256 * MiB, data: int = 96 * MiB,
                 say: Callable[[str], None] = print,
                 follow: Callable[[Callable[[Callable[[Job], None]], Job]], Job] | None = None,
                 root: Path | None = None) -> None:
        if size < 64 * MiB or not 0 < data <= size // 2:
            raise InvalidArgument("the demo needs LUNs of 64 MiB or more, and at most half"
                                  " of a LUN in files")
        self.size = size
        self.data = data
        self.say = say
        self.follow = follow
        self.root = Path(tempfile.mkdtemp(prefix="lunresync-demo-",
                                          dir=root or scratch_parent()))

    def run(self) -> DemoResult:
        try:
            provider = Provider.open(self.root / "pool")
            try:
                return self._scenario(provider)
            finally:
                try:
                    provider.deactivate()
                finally:
                    provider.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _step(self, text: str) -> None:
        self.say(f"==> {text}")

    def _scenario(self, provider: Provider) -> DemoResult:
        runner = provider.runner
        fs_kinds = ["ext4", "xfs" if shutil.which("mkfs.xfs") and self.size >= 300 * MiB
                    else "ext4"]
        self._step(f"two LUNs of {self.size // MiB} MiB with {' and '.join(fs_kinds)} file"
                   f" systems and {self.data // MiB} MiB of files each (pool {self.root})")
        luns = [DemoLun(provider.create_lun(f"demo{i}", self.size), fs)
                for i, fs in enumerate(fs_kinds, 1)]
        for item in luns:
            mkfs = ["mkfs.xfs", "-q", "-f"] if item.fs == "xfs" else ["mkfs.ext4", "-q", "-F"]
            runner.run([*mkfs, item.lun.path])
            with mounted(runner, item.lun.path, self.root / f"mnt-{item.lun.name}") as where:
                self._write_files(item, where)
        self._step("back both up as one snapshot set (clone), writers told, documented")
        document_path = self.root / "backup.json"
        writers = load_writers(runner, self.root / "writers.d")
        with contextlib.ExitStack() as stack:
            for item in luns:  # mounted during the backup: the file-system writer freezes
                stack.enter_context(mounted(runner, item.lun.path,
                                            self.root / f"mnt-{item.lun.name}"))
            taken = backup(provider, [i.lun.name for i in luns], document_path, writers,
                           kind=ShadowKind.CLONE)
        self.say(f"    snapshot set {taken.document.snapshot_set_id[:12]}, I/O frozen"
                 f" {taken.freeze_seconds:.2f} s, document {document_path.name}")
        self._step("damage both: 16 MiB of garbage over the start of each device")
        for item in luns:
            with open(item.lun.path, "r+b") as device:
                device.write(os.urandom(16 * MiB))
                device.flush()
                os.fsync(device.fileno())
            broken = runner.run(["mount", "-o", "ro", item.lun.path,
                                 str(self.root / f"mnt-{item.lun.name}")], ok_codes=(0, 32))
            if broken.returncode == 0:
                runner.run(["umount", str(self.root / f"mnt-{item.lun.name}")])
                raise DemoFailed(f"{item.lun.name} still mounts after the damage")
            self.say(f"    {item.lun.name}: no longer mounts")
        return self._restore(provider, luns, document_path, writers)

    def _write_files(self, item: DemoLun, where: Path) -> None:
        rng = random.Random(item.lun.name)  # noqa: S311 - reproducible test data
        left, index = self.data, 0
        while left > 0:
            size = min(left, rng.choice([1, 4, 8, 16]) * MiB)
            path = where / f"file{index:03d}.bin"
            path.write_bytes(rng.randbytes(size))
            item.files[path.name] = _checksum(path)
            left -= size
            index += 1
        (where / "README.txt").write_text(f"restored by lunresync from {item.lun.name}\n")
        item.files["README.txt"] = _checksum(where / "README.txt")

    def _restore(self, provider: Provider, luns: list[DemoLun], document_path: Path,
                 writers: Sequence[Writer]) -> DemoResult:
        runner = provider.runner
        self._step("restore both online, in one recovery set")
        document = load_document(document_path)
        session = RestoreSession(provider, document, writers)
        for entry in document.luns:
            session.add(entry.shadow_copy_id)
        session.pre_restore()
        started = time.monotonic()
        handle = session.recover_set()
        online = time.monotonic() - started
        job = handle.status()
        engines = ", ".join(sorted({p.engine.value for p in job.pairs}))
        self.say(f"    online after {online:.2f} s ({engines}); the kernel copies behind")
        reader = Reader(luns[0].lun.path, self.size)
        reader.start()
        try:
            self._step(f"wait for the copy while a reader keeps reading {luns[0].lun.name}")
            if self.follow is not None:
                done = self.follow(lambda show: handle.wait(on_progress=show))
            else:
                done = handle.wait()
        finally:
            reader.stop()
        restore_seconds = time.monotonic() - started
        if done.state is not JobState.DONE:
            raise DemoFailed(f"job {done.id} ended {done.state.value}: {done.error}")
        self._step("check every file (mounted read-only)")
        for item in luns:
            with mounted(runner, item.lun.path, self.root / f"mnt-{item.lun.name}",
                         fs=item.fs, read_only=True) as where:
                bad = [n for n, s in item.files.items() if _checksum(where / n) != s]
                if bad:
                    raise DemoFailed(f"{item.lun.name}: wrong content in {bad}")
            self.say(f"    {item.lun.name}: all {len(item.files)} files match")
        session.post_restore()
        report = provider.resyncer.verify(done.id)
        if not report.ok:
            raise DemoFailed(f"the restored devices differ from the shadow copies:"
                             f" {report.mismatches[:3]}")
        self.say(f"    devices equal their shadow copies ({report.compared_bytes // MiB} MiB"
                 " compared)")
        copy_seconds = self._plain_copy(provider, document.luns[0].size,
                                        [e.shadow_copy_id for e in document.luns])
        return DemoResult(online, restore_seconds, copy_seconds, engines, reader.reads,
                          reader.errors, reader.worst, done.bytes_total)

    def _plain_copy(self, provider: Provider, size: int, shadow_ids: list[str]) -> float:
        """dd of the same shadow copies onto fresh LUNs, at once (what the restore did)."""
        self._step("time a plain copy of the same data (dd, direct I/O) for comparison")
        targets = [provider.create_lun(f"plain{i}", size) for i in range(len(shadow_ids))]
        started = time.monotonic()
        with ThreadPoolExecutor(len(targets)) as pool:  # at once, like the restore's pairs
            copies = [pool.submit(provider.runner.run, [
                "dd", f"if={provider.shadow_copy(sid).path}", f"of={target.path}", "bs=4M",
                "iflag=direct", "oflag=direct", "status=none"], timeout=3600)
                for sid, target in zip(shadow_ids, targets, strict=True)]
            for copy in copies:
                copy.result()
        return time.monotonic() - started


def summary(result: DemoResult) -> list[tuple[str, str]]:
    return [
        ("engines", result.engines),
        ("time until both LUNs were online", f"{result.online_seconds:.2f} s"),
        ("restore, start to copy complete", f"{result.restore_seconds:.1f} s"),
        ("plain dd copy of the same data", f"{result.copy_seconds:.1f} s"),
        ("restore time / plain copy", f"{result.ratio:.2f}"),
        ("reads during the restore (4 KiB, random)",
         f"{result.reads} ok, {result.read_errors} failed, slowest"
         f" {result.worst_read * 1000:.0f} ms"),
    ]
