"""Transportable shadow copies: a bundle of the content (sparse) and a manifest with its
SHA-256, written by ``export`` and checked by ``import`` before it becomes a clone shadow
copy of this pool (the analogue of a VSS transportable shadow copy)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lunresync.errors import InvalidArgument, LunresyncError, NotFound

from .catalog import now
from .model import ShadowCopy, ShadowKind, check_id, check_lun_name
from .snapshots import Snapshots
from .storage import Storage
from .undo import Undo
from .units import parse_size

COPY_BLOCK = 4 << 20
BUNDLE_FORMAT = "lunresync-shadow-copy-bundle"
BUNDLE_VERSION = 1


class CorruptBundle(LunresyncError):
    pass


@dataclass
class Transport:
    storage: Storage

    def export(self, sc_id: str, directory: str | os.PathLike[str]) -> Path:
        """Write a bundle: content.img (sparse) and manifest.json (written last)."""
        shadow = self.storage.catalog.shadow_copy(sc_id)
        use = Snapshots(self.storage).use(shadow)
        if not use.usable:
            raise InvalidArgument(f"shadow copy {shadow.id} is invalid (its COW store"
                                  " overflowed): it cannot be exported")
        if not use.active:
            raise NotFound(f"shadow copy {shadow.id} is not active (run lunresync activate)")
        bundle = Path(directory)
        if bundle.exists() and any(bundle.iterdir()):
            raise InvalidArgument(f"{bundle} exists and is not empty")
        bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
        content = bundle / "content.img"
        try:
            digest = copy_device(shadow.path, content, shadow.size, create=True)
            manifest = {
                "format": BUNDLE_FORMAT,
                "version": BUNDLE_VERSION,
                "shadow_copy_id": shadow.id,
                "snapshot_set_id": shadow.set_id,
                "lun_id": shadow.lun_id,
                "lun_name": shadow.lun_name,
                "size": shadow.size,
                "created": shadow.created,
                "exported": now(),
                "sha256": digest,
            }
            tmp = bundle / "manifest.json.tmp"
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            tmp.rename(bundle / "manifest.json")
        except BaseException:
            content.unlink(missing_ok=True)
            (bundle / "manifest.json.tmp").unlink(missing_ok=True)
            raise
        return bundle

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
            image = s.pool.clones / f"{sc_id}.img"
            shadow = ShadowCopy(sc_id, manifest["snapshot_set_id"], manifest["lun_id"],
                                manifest["lun_name"], ShadowKind.CLONE, manifest["size"],
                                str(image), 0, float(manifest["created"]))
            with Undo() as undo:
                s.pool.new_file(image, shadow.size)
                undo.push(f"delete {image}", image.unlink, True)
                digest = copy_device(str(content), image, shadow.size)
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
    if manifest.get("version") != BUNDLE_VERSION:
        raise CorruptBundle(f"{path} has bundle version {manifest.get('version')!r};"
                            f" this lunresync reads version {BUNDLE_VERSION}")
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
    except (KeyError, TypeError, ValueError, LunresyncError) as exc:
        if isinstance(exc, CorruptBundle):
            raise
        raise CorruptBundle(f"{path}: {exc}") from None
    if not (bundle / "content.img").is_file():
        raise CorruptBundle(f"{bundle} has no content.img")
    return manifest


def copy_device(source: str, target: Path, size: int, *, create: bool = False) -> str:
    """Copy ``size`` bytes from ``source`` into ``target``, skipping zero blocks (the
    target stays sparse); return the SHA-256 of the content."""
    digest = hashlib.sha256()
    zero = bytes(COPY_BLOCK)
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else 0)
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, flags, 0o600)
        try:
            if create:
                os.ftruncate(dst, size)
            offset = 0
            while offset < size:
                block = os.pread(src, min(COPY_BLOCK, size - offset), offset)
                if not block:
                    raise CorruptBundle(f"{source} ended at {offset} bytes, expected {size}")
                digest.update(block)
                if block != zero[: len(block)]:
                    os.pwrite(dst, block, offset)
                offset += len(block)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return digest.hexdigest()
