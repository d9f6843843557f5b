"""Transportable shadow copies: a bundle of the content (sparse) and a manifest with its
SHA-256, written by ``export`` and checked by ``import`` before it becomes a clone shadow
copy of this pool (the analogue of a VSS transportable shadow copy).

A thin shadow copy is exported from what the pool has provisioned only (``thin_delta``
says which ranges; the rest is zeros). ``export --since BASE`` writes only the ranges
where the copy differs from BASE, an earlier thin shadow copy of the same LUN (bundle
version 2: the manifest names the base and lists the ranges, and its SHA-256 covers those
ranges' bytes in order); ``import`` applies them onto a copy of BASE, which must be in
the importing pool.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lunresync.errors import InvalidArgument, LunresyncError, NotFound

from .catalog import now
from .model import ShadowCopy, ShadowKind, check_id, check_lun_name
from .snapshots import Snapshots
from .storage import Storage
from .thinpool import ThinPool, byte_ranges
from .undo import Undo
from .units import parse_size

COPY_BLOCK = 4 << 20
CONTENT = "content.img"
MANIFEST = "manifest.json"
#: The largest manifest read (a delta's ranges: about 20 bytes each).
MANIFEST_LIMIT = 64 << 20
BUNDLE_FORMAT = "lunresync-shadow-copy-bundle"
BUNDLE_VERSION = 1
DELTA_BUNDLE_VERSION = 2  # written with --since; version 1 bundles are read as before


class CorruptBundle(InvalidArgument):
    """A bundle that is damaged, or not what its manifest says (exit 6, INVALID)."""


@dataclass
class Transport:
    storage: Storage

    def export(self, sc_id: str, directory: str | os.PathLike[str], *,
               since: str | None = None) -> Path:
        """Write a bundle: content.img (sparse) and manifest.json (written last).
        ``since``: only what differs from that earlier thin shadow copy of the same LUN."""
        shadow = self.storage.catalog.shadow_copy(sc_id)
        use = Snapshots(self.storage).use(shadow)
        if not use.usable:
            raise InvalidArgument(f"shadow copy {shadow.id} is invalid (its COW store"
                                  " overflowed): it cannot be exported")
        if not use.active:
            raise NotFound(f"shadow copy {shadow.id} is not active (run lunresync activate)")
        base = None if since is None else self._base(shadow, since)
        bundle = Path(directory)
        ranges = self._ranges(shadow, base)
        with open_bundle(bundle, create=True) as at:
            if os.listdir(at):
                raise InvalidArgument(f"{bundle} exists and is not empty")
            try:
                with create_file(at, CONTENT, bundle) as content:
                    if ranges is None:
                        digest = copy_device(shadow.path, content, shadow.size, create=True)
                    else:
                        # A delta hashes its ranges alone; a whole thin copy, every byte
                        # (the gaps as the zeros they read as), as any version 1 bundle.
                        digest = copy_ranges(shadow.path, content, shadow.size, ranges,
                                             hash_gaps=base is None, create=True)
                manifest = {
                    "format": BUNDLE_FORMAT,
                    "version": BUNDLE_VERSION if base is None else DELTA_BUNDLE_VERSION,
                    "shadow_copy_id": shadow.id,
                    "snapshot_set_id": shadow.set_id,
                    "lun_id": shadow.lun_id,
                    "lun_name": shadow.lun_name,
                    "size": shadow.size,
                    "created": shadow.created,
                    "exported": now(),
                    "sha256": digest,
                }
                if base is not None:
                    assert ranges is not None
                    manifest["base_shadow_copy_id"] = base.id
                    manifest["ranges"] = [list(r) for r in ranges]
                with create_file(at, MANIFEST + ".tmp", bundle) as fd:
                    _write_all(fd, (json.dumps(manifest, indent=2) + "\n").encode())
                    os.fsync(fd)
                os.rename(MANIFEST + ".tmp", MANIFEST, src_dir_fd=at, dst_dir_fd=at)
            except BaseException:
                for name in (CONTENT, MANIFEST + ".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=at)
                raise
        return bundle

    def _base(self, shadow: ShadowCopy, since: str) -> ShadowCopy:
        base = self.storage.catalog.shadow_copy(since)
        if shadow.kind is not ShadowKind.THIN or base.kind is not ShadowKind.THIN:
            raise InvalidArgument("--since needs thin shadow copies (the thin pool's"
                                  " metadata says what differs)")
        if base.id == shadow.id:
            raise InvalidArgument("--since names the shadow copy itself")
        if base.lun_id != shadow.lun_id or base.size != shadow.size:
            raise InvalidArgument(f"shadow copy {base.id} is not of the same LUN as"
                                  f" {shadow.id} ({base.lun_name}, {shadow.lun_name})")
        return base

    def _ranges(self, shadow: ShadowCopy, base: ShadowCopy | None
                ) -> list[tuple[int, int]] | None:
        """(offset, length) of what to copy, or None: everything (not a thin copy)."""
        if shadow.kind is not ShadowKind.THIN:
            return None
        assert shadow.thin_id is not None
        pool = ThinPool(self.storage)
        with self.storage.changing_kernel():
            if base is None:
                return pool.provisioned(shadow.thin_id, shadow.size)
            assert base.thin_id is not None
            delta = pool.delta(base.thin_id, shadow.thin_id)
        return byte_ranges(delta.changed(), shadow.size)

    def import_(self, directory: str | os.PathLike[str]) -> ShadowCopy:
        """Register a bundle as a clone shadow copy of this pool, after checking it."""
        bundle = Path(directory)
        with open_bundle(bundle, create=False) as at:
            manifest = read_manifest_at(at, bundle)
            with open_content(at, bundle, manifest["size"]) as content:
                return self._import(bundle, manifest, content)

    def _import(self, bundle: Path, manifest: dict[str, Any], content: int) -> ShadowCopy:
        s = self.storage
        with s.changing_kernel():
            sc_id = manifest["shadow_copy_id"]
            if any(sc.id == sc_id for sc in s.catalog.shadow_copies()):
                raise InvalidArgument(f"shadow copy {sc_id} is already in this pool")
            s.pool.check_space(manifest["size"], "the imported shadow copy")
            base = self._import_base(manifest)
            image = s.pool.clones / f"{sc_id}.img"
            shadow = ShadowCopy(sc_id, manifest["snapshot_set_id"], manifest["lun_id"],
                                manifest["lun_name"], ShadowKind.CLONE, manifest["size"],
                                str(image), 0, float(manifest["created"]))
            with Undo() as undo:
                s.pool.new_file(image, shadow.size)
                undo.push(f"delete {image}", image.unlink, True)
                if base is None:
                    digest = copy_device(content, image, shadow.size)
                else:
                    copy_device(base.path, image, shadow.size)
                    digest = copy_ranges(content, image, shadow.size,
                                         manifest["ranges"], hash_gaps=False,
                                         create=False, over=True)
                if digest != manifest["sha256"]:
                    raise CorruptBundle(f"the content of {bundle} does not match its manifest's"
                                        " checksum: refused")
                s.stacks.activate_clone(shadow, undo)
                with s.catalog.transaction():
                    if not s.catalog.has_snapshot_set(shadow.set_id):
                        s.catalog.add_snapshot_set(shadow.set_id, shadow.created)
                    s.catalog.add_shadow_copy(shadow)
                undo.commit()
        return shadow

    def _import_base(self, manifest: dict[str, Any]) -> ShadowCopy | None:
        """The shadow copy a delta bundle applies onto (None: a whole bundle)."""
        base_id = manifest.get("base_shadow_copy_id")
        if base_id is None:
            return None
        s = self.storage
        base = next((sc for sc in s.catalog.shadow_copies() if sc.id == base_id), None)
        if base is None:
            raise NotFound(f"the bundle holds what changed since shadow copy {base_id},"
                           " which is not in this pool: import that one first")
        if base.size != manifest["size"]:
            raise CorruptBundle(f"shadow copy {base_id} has {base.size} bytes, the"
                                f" bundle {manifest['size']}")
        if not s.devices.exists(base.dm_name):
            raise NotFound(f"shadow copy {base_id} is not active (run lunresync activate)")
        return base


def open_bundle(bundle: Path, *, create: bool) -> contextlib.closing[Any]:
    """The bundle directory, open (its descriptor, closed on leaving), never through a
    symbolic link at its end: what is read or written in it is then named relative to
    that descriptor, and a link planted in it is not followed. ``create``: made
    (0700, with its parents) when missing."""
    if create:
        try:
            bundle.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(bundle, 0o700)
        except (FileExistsError, NotADirectoryError):  # a file on the way
            raise InvalidArgument(f"{bundle}: {bundle.parent} is not a directory") from None
        except OSError as exc:
            raise LunresyncError(f"cannot make {bundle}: {exc.strerror}") from None
    try:
        fd = os.open(bundle, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        if bundle.is_symlink():  # O_DIRECTORY | O_NOFOLLOW on a link: ENOTDIR
            raise InvalidArgument(f"{bundle} is a symbolic link: give the directory it"
                                  " points to") from None
        if create:
            raise InvalidArgument(f"{bundle} is not a directory") from None
        raise NotFound(f"{bundle} is not a shadow copy bundle (no manifest.json)") from None
    except OSError as exc:
        raise LunresyncError(f"cannot open {bundle}: {exc.strerror}") from None
    return contextlib.closing(_Descriptor(fd))


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The checked manifest of the bundle directory ``bundle``."""
    with open_bundle(bundle, create=False) as at:
        return read_manifest_at(at, bundle)


def read_manifest_at(at: int, bundle: Path) -> dict[str, Any]:
    """The checked manifest of the bundle open as ``at``: read from a regular file no
    larger than :data:`MANIFEST_LIMIT`, opened without following a link or waiting on a
    FIFO; its content.img must be a regular file too."""
    path = bundle / MANIFEST
    try:
        with open_file(at, MANIFEST, bundle) as fd:
            if os.fstat(fd).st_size > MANIFEST_LIMIT:
                raise CorruptBundle(f"{path} is larger than {MANIFEST_LIMIT} bytes")
            raw = _read_all(fd, MANIFEST_LIMIT)
    except FileNotFoundError:
        raise NotFound(f"{bundle} is not a shadow copy bundle (no manifest.json)") from None
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptBundle(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise CorruptBundle(f"{path} is not a lunresync bundle manifest")
    version = manifest.get("version")
    if version not in (BUNDLE_VERSION, DELTA_BUNDLE_VERSION) or type(version) is not int:
        raise CorruptBundle(f"{path} has bundle version {version!r}; this lunresync reads"
                            f" versions {BUNDLE_VERSION} and {DELTA_BUNDLE_VERSION}")
    try:
        # The values are used as they are (ids, name, size, time): check them as they are,
        # not converted (str(1234...) would pass check_id and leave an int in the manifest).
        check_id(manifest["shadow_copy_id"], "shadow copy id")
        check_id(manifest["snapshot_set_id"], "snapshot set id")
        check_id(manifest["lun_id"], "LUN id")
        check_lun_name(manifest["lun_name"], new=False)
        size = manifest["size"]
        if type(size) is not int:
            raise CorruptBundle(f"{path}: size {size!r} is not a whole number of bytes")
        parse_size(size)
        created = manifest["created"]
        if type(created) not in (int, float) or not abs(created) < float("inf"):
            raise CorruptBundle(f"{path}: created {created!r} is not a time")
        sha256 = manifest["sha256"]
        if (not isinstance(sha256, str) or len(sha256) != 64
                or not set(sha256) <= set("0123456789abcdef")):
            raise CorruptBundle(f"{path}: bad sha256")
        if version == DELTA_BUNDLE_VERSION:
            check_id(manifest["base_shadow_copy_id"], "base shadow copy id")
            manifest["ranges"] = check_ranges(manifest["ranges"], size)
        elif "base_shadow_copy_id" in manifest or "ranges" in manifest:
            raise CorruptBundle(f"{path}: a version 1 bundle has no base or ranges")
    except (KeyError, TypeError, ValueError, LunresyncError) as exc:
        if isinstance(exc, CorruptBundle):
            raise
        raise CorruptBundle(f"{path}: {exc}") from None
    try:
        info = os.stat(CONTENT, dir_fd=at, follow_symlinks=False)
    except FileNotFoundError:
        raise CorruptBundle(f"{bundle} has no content.img") from None
    if not stat.S_ISREG(info.st_mode):
        raise CorruptBundle(f"{bundle / CONTENT} is not a regular file")
    return manifest


class _Descriptor(int):
    """An open file descriptor that :func:`contextlib.closing` can close."""

    def close(self) -> None:
        os.close(self)


@contextlib.contextmanager
def open_file(at: int, name: str, bundle: Path) -> Iterator[int]:
    """``name`` in the bundle open as ``at``, for reading: a regular file, opened without
    following a link and without waiting (a FIFO would block the pool's lock)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=at)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
        if exc.errno == errno.ELOOP:
            raise CorruptBundle(f"{bundle / name} is a symbolic link") from None
        raise CorruptBundle(f"cannot open {bundle / name}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptBundle(f"{bundle / name} is not a regular file")
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_content(at: int, bundle: Path, size: int) -> Iterator[int]:
    """The bundle's content, opened once and checked on what was opened (its size)."""
    try:
        with open_file(at, CONTENT, bundle) as fd:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise CorruptBundle(f"{bundle / CONTENT} has {actual} bytes, the manifest"
                                    f" says {size}")
            yield fd
    except FileNotFoundError:
        raise CorruptBundle(f"{bundle} has no content.img") from None


@contextlib.contextmanager
def create_file(at: int, name: str, bundle: Path) -> Iterator[int]:
    """A new file ``name`` in the bundle open as ``at`` (0600): never an existing one,
    never through a link planted there."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=at)
    except FileExistsError:
        raise InvalidArgument(f"{bundle / name} appeared while the bundle was written:"
                              " refused") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _read_all(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise CorruptBundle(f"a manifest is larger than {limit} bytes")
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def check_ranges(value: object, size: int) -> list[tuple[int, int]]:
    """A delta bundle's ranges: [offset, length] pairs, in order, not overlapping, within
    the size."""
    if not isinstance(value, list):
        raise CorruptBundle("ranges is not a list")
    ranges: list[tuple[int, int]] = []
    end = 0
    for item in value:
        if (not isinstance(item, list) or len(item) != 2
                or not all(type(n) is int for n in item)):
            raise CorruptBundle(f"range {item!r} is not [offset, length]")
        offset, length = item
        if offset < end or length <= 0 or offset + length > size:
            raise CorruptBundle(f"range {item!r} overlaps another, is empty or ends past"
                                f" {size} bytes")
        ranges.append((offset, length))
        end = offset + length
    return ranges


def copy_ranges(source: str | int, target: Path | int, size: int,
                ranges: Sequence[tuple[int, int]], *, hash_gaps: bool, create: bool,
                over: bool = False) -> str:
    """Copy the ``ranges`` (offset, length) of ``source`` into ``target`` (``create``: a
    new sparse file of ``size``; zero blocks are not written unless ``over``: the target
    holds other data there, a base). Either may be a descriptor, used as it is and left
    open. The SHA-256 returned covers the ranges' bytes in order, or with ``hash_gaps``
    the whole content, the bytes between the ranges counted as the zeros they read as."""
    digest = hashlib.sha256()
    zero = bytes(COPY_BLOCK)
    with contextlib.ExitStack() as stack:
        src = source if isinstance(source, int) else _closed_at_exit(
            stack, os.open(source, os.O_RDONLY | os.O_CLOEXEC))
        dst = target if isinstance(target, int) else _closed_at_exit(
            stack, os.open(target, os.O_WRONLY | os.O_CLOEXEC
                           | (os.O_CREAT | os.O_EXCL if create else 0), 0o600))
        if create:
            os.ftruncate(dst, size)
        position = 0
        for start, length in ranges:
            if hash_gaps:
                _hash_zeros(digest, start - position, zero)
            offset, end = start, start + length
            while offset < end:
                block = os.pread(src, min(COPY_BLOCK, end - offset), offset)
                if not block:
                    raise CorruptBundle(f"{source} ended at {offset} bytes, expected {end}")
                digest.update(block)
                if over or block != zero[: len(block)]:
                    os.pwrite(dst, block, offset)
                offset += len(block)
            position = end
        if hash_gaps:
            _hash_zeros(digest, size - position, zero)
        os.fsync(dst)
    return digest.hexdigest()


def _closed_at_exit(stack: contextlib.ExitStack, fd: int) -> int:
    stack.callback(os.close, fd)
    return fd


def _hash_zeros(digest: Any, count: int, zero: bytes) -> None:
    while count > 0:
        piece = min(count, len(zero))
        digest.update(zero[:piece])
        count -= piece


def copy_device(source: str | int, target: Path | int, size: int, *,
                create: bool = False) -> str:
    """Copy ``size`` bytes from ``source`` into ``target``, skipping zero blocks (the
    target stays sparse); return the SHA-256 of the content."""
    return copy_ranges(source, target, size, [(0, size)] if size else [], hash_gaps=True,
                       create=create)
