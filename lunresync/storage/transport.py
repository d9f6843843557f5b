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

import hashlib
import json
import os
from collections.abc import Sequence
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
BUNDLE_FORMAT = "lunresync-shadow-copy-bundle"
BUNDLE_VERSION = 1
DELTA_BUNDLE_VERSION = 2  # written with --since; version 1 bundles are read as before


class CorruptBundle(LunresyncError):
    pass


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
        if bundle.exists() and any(bundle.iterdir()):
            raise InvalidArgument(f"{bundle} exists and is not empty")
        ranges = self._ranges(shadow, base)
        bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
        content = bundle / "content.img"
        try:
            if ranges is None:
                digest = copy_device(shadow.path, content, shadow.size, create=True)
            else:
                # A delta hashes its ranges alone; a whole thin copy, every byte (the gaps
                # as the zeros they read as), as any version 1 bundle does.
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
            tmp = bundle / "manifest.json.tmp"
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            tmp.rename(bundle / "manifest.json")
        except BaseException:
            content.unlink(missing_ok=True)
            (bundle / "manifest.json.tmp").unlink(missing_ok=True)
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
        manifest = read_manifest(bundle)
        content = bundle / "content.img"
        if content.stat().st_size != manifest["size"]:
            raise CorruptBundle(f"{content} has {content.stat().st_size} bytes, the manifest"
                                f" says {manifest['size']}")
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
                    digest = copy_device(str(content), image, shadow.size)
                else:
                    copy_device(base.path, image, shadow.size)
                    digest = copy_ranges(str(content), image, shadow.size,
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


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"{bundle} is not a shadow copy bundle (no manifest.json)") from None
    except ValueError as exc:
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
        check_lun_name(manifest["lun_name"])
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
    if not (bundle / "content.img").is_file():
        raise CorruptBundle(f"{bundle} has no content.img")
    return manifest


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


def copy_ranges(source: str, target: Path, size: int, ranges: Sequence[tuple[int, int]],
                *, hash_gaps: bool, create: bool, over: bool = False) -> str:
    """Copy the ``ranges`` (offset, length) of ``source`` into ``target`` (``create``: a
    new sparse file of ``size``; zero blocks are not written unless ``over``: the target
    holds other data there, a base). The SHA-256 returned covers the
    ranges' bytes in order, or with ``hash_gaps`` the whole content, the bytes between
    the ranges counted as the zeros they read as."""
    digest = hashlib.sha256()
    zero = bytes(COPY_BLOCK)
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
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
                        raise CorruptBundle(f"{source} ended at {offset} bytes, expected"
                                            f" {end}")
                    digest.update(block)
                    if over or block != zero[: len(block)]:
                        os.pwrite(dst, block, offset)
                    offset += len(block)
                position = end
            if hash_gaps:
                _hash_zeros(digest, size - position, zero)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return digest.hexdigest()


def _hash_zeros(digest: Any, count: int, zero: bytes) -> None:
    while count > 0:
        piece = min(count, len(zero))
        digest.update(zero[:piece])
        count -= piece


def copy_device(source: str, target: Path, size: int, *, create: bool = False) -> str:
    """Copy ``size`` bytes from ``source`` into ``target``, skipping zero blocks (the
    target stays sparse); return the SHA-256 of the content."""
    return copy_ranges(source, target, size, [(0, size)] if size else [], hash_gaps=True,
                       create=create)
