"""``lunresync lun ...``, ``snapshot ...``, ``activate``, ``deactivate``: the provider."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from lunresync.errors import LunresyncError
from lunresync.kernel.capabilities import has_device_mapper
from lunresync.provider.model import Lun, ShadowKind
from lunresync.provider.pool import pool_path
from lunresync.provider.provider import Provider, ShadowCopyUse
from lunresync.provider.units import format_size
from lunresync.views import lun_json, shadow_json, when

log = logging.getLogger(__name__)


@contextmanager
def opened(ctx: click.Context) -> Iterator[Provider]:
    """The pool's provider, after finishing whatever restore the kernel has completed:
    no lunresync process needs to stay alive while a copy runs."""
    provider = Provider.open(pool_path(ctx.find_root().params.get("pool")))
    try:
        if has_device_mapper():
            try:
                for lun in provider.notice_missing_backings():
                    log.warning("LUN %s went offline: %s is gone", lun.name, lun.backing)
                provider.resyncer.poll()
            except LunresyncError as exc:
                log.warning("could not update resync jobs: %s", exc)
        yield provider
    finally:
        provider.close()


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _show(data: dict[str, Any], as_json: bool, keys: list[str]) -> None:
    """One record: JSON, or one "key value" line per key."""
    if as_json:
        emit_json(data)
        return
    width = max(len(k) for k in keys) + 1
    for key in keys:
        click.echo(f"{key:{width}} {data[key]}")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


# -- LUNs ------------------------------------------------------------------------------------


@click.group()
def lun() -> None:
    """Create, adopt, list, show and delete LUNs."""


@lun.command("create")
@click.argument("name")
@click.option("--size", required=True, help="Size, e.g. 4G, 512M (binary units).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lun_create(ctx: click.Context, name: str, size: str, as_json: bool) -> None:
    """Create LUN NAME over a sparse image in the pool."""
    with opened(ctx) as provider:
        created = provider.create_lun(name, size)
    if as_json:
        emit_json(lun_json(created))
    else:
        click.echo(f"created LUN {created.name} ({format_size(created.size)}) at {created.path},"
                   f" id {created.id}")


@lun.command("adopt")
@click.argument("name")
@click.argument("device")
@click.pass_context
def lun_adopt(ctx: click.Context, name: str, device: str) -> None:
    """Use the existing block DEVICE as LUN NAME."""
    with opened(ctx) as provider:
        adopted = provider.adopt_lun(name, device)
    click.echo(f"adopted {adopted.backing} as LUN {adopted.name} at {adopted.path}")


@lun.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lun_list(ctx: click.Context, as_json: bool) -> None:
    """List LUNs."""
    with opened(ctx) as provider:
        luns = provider.luns()
    if as_json:
        emit_json([lun_json(x) for x in luns])
        return
    _table("LUNs", ["name", "size", "kind", "id", "path", "notes"],
           [[x.name, format_size(x.size), x.kind.value, x.id, x.path, _notes(x)]
            for x in luns])


def _notes(lun: Lun) -> str:
    notes = [lun.state.value] if lun.state.value != "ok" else []
    if lun.read_only:
        notes.append("read-only")
    if lun.masked:
        notes.append("masked")
    if lun.offline:
        notes.append("offline")
    return ", ".join(notes)


@lun.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lun_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one LUN (its 128-bit id is the analogue of a SCSI page-83 identifier)."""
    with opened(ctx) as provider:
        found = provider.lun(name)
    _show(lun_json(found), as_json,
          ["name", "id", "size", "kind", "backing", "path", "created", "state", "read_only",
           "masked", "offline"])


@click.command()
@click.pass_context
def watch(ctx: click.Context) -> None:
    """Watch udev until interrupted: a LUN whose backing device disappears goes offline
    and a restore into it fails at once (the D-Bus service does the same)."""
    import signal
    import threading

    from lunresync.provider.watch import watch_backings

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with opened(ctx) as provider:
        click.echo(f"watching the backing devices of {len(provider.luns())} LUNs"
                   " (Ctrl-C stops)")
        watch_backings(provider, stop, on_offline=lambda lun: click.echo(
            f"LUN {lun.name} offline: {lun.backing} disappeared"))


@lun.command("unmask")
@click.argument("name")
@click.pass_context
def lun_unmask(ctx: click.Context, name: str) -> None:
    """Expose a LUN that a swap with --mask-original hid."""
    with opened(ctx) as provider:
        lun = provider.unmask_lun(name)
    click.echo(f"LUN {lun.name} is exposed again at {lun.path}")


@lun.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete its shadow copies too.")
@click.pass_context
def lun_delete(ctx: click.Context, name: str, force: bool) -> None:
    """Delete LUN NAME, its devices and its image (an adopted device is left as is)."""
    with opened(ctx) as provider:
        provider.delete_lun(name, force=force)
    click.echo(f"deleted LUN {name}")


# -- activation ------------------------------------------------------------------------------


@click.command()
@click.pass_context
def activate(ctx: click.Context) -> None:
    """Re-create every loop and dm device from the catalog (after a reboot). Idempotent."""
    with opened(ctx) as provider:
        created = provider.activate()
    click.echo(f"activated: {len(created)} devices created" +
               (f" ({', '.join(created)})" if created else ""))


@click.command()
@click.pass_context
def deactivate(ctx: click.Context) -> None:
    """Tear every device down; the pool keeps all data."""
    with opened(ctx) as provider:
        removed = provider.deactivate()
    click.echo(f"deactivated: {len(removed)} devices removed")


# -- shadow copies ---------------------------------------------------------------------------


@click.group()
def snapshot() -> None:
    """Snapshot sets and shadow copies."""


@snapshot.command("create")
@click.argument("luns", nargs=-1, required=True)
@click.option("--kind", type=click.Choice([k.value for k in ShadowKind]),
              default=ShadowKind.DIFFERENTIAL.value, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def snapshot_create(ctx: click.Context, luns: tuple[str, ...], kind: str, as_json: bool) -> None:
    """Take one snapshot set of all LUNS at one instant."""
    with opened(ctx) as provider:
        result = provider.create_snapshot_set(list(luns), ShadowKind(kind))
        uses = [provider.shadow_copy_use(s) for s in result.snapshot_set.shadow_copies]
    if as_json:
        emit_json({"snapshot_set": result.snapshot_set.id,
                   "freeze_seconds": round(result.freeze_seconds, 4),
                   "shadow_copies": [shadow_json(u) for u in uses]})
        return
    click.echo(f"snapshot set {result.snapshot_set.id} (I/O frozen"
               f" {result.freeze_seconds * 1000:.0f} ms)")
    for use in uses:
        click.echo(f"  {use.shadow.kind.value} shadow copy {use.shadow.id} of"
                   f" {use.shadow.lun_name} at {use.shadow.path}")


@snapshot.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def snapshot_list(ctx: click.Context, as_json: bool) -> None:
    """List shadow copies with their COW use."""
    with opened(ctx) as provider:
        uses = provider.shadow_copies()
    if as_json:
        emit_json([shadow_json(u) for u in uses])
        return

    def cow(use: ShadowCopyUse) -> str:
        if use.cow_used is None or not use.cow_size:
            return "-"
        return f"{format_size(use.cow_used)} ({100 * use.cow_used / use.cow_size:.1f}%)"

    _table("shadow copies",
           ["id", "set", "kind", "LUN", "created", "size", "COW used", "state"],
           [[u.shadow.id[:12], u.shadow.set_id[:12], u.shadow.kind.value, u.shadow.lun_name,
             when(u.shadow.created), format_size(u.shadow.size), cow(u),
             ("usable" if u.usable else "INVALID")] for u in uses])


@snapshot.command("show")
@click.argument("shadow_copy")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def snapshot_show(ctx: click.Context, shadow_copy: str, as_json: bool) -> None:
    """Show one shadow copy (id or a unique prefix of 8+ hex digits)."""
    with opened(ctx) as provider:
        use = provider.shadow_copy_use(provider.shadow_copy(shadow_copy))
    data = shadow_json(use)
    _show(data, as_json, sorted(data))


@snapshot.command("delete")
@click.argument("shadow_copy")
@click.pass_context
def snapshot_delete(ctx: click.Context, shadow_copy: str) -> None:
    """Delete a shadow copy and its store."""
    with opened(ctx) as provider:
        provider.delete_shadow_copy(shadow_copy)
    click.echo(f"deleted shadow copy {shadow_copy}")


@snapshot.command("export")
@click.argument("shadow_copy")
@click.argument("directory", type=click.Path(file_okay=False))
@click.pass_context
def snapshot_export(ctx: click.Context, shadow_copy: str, directory: str) -> None:
    """Write a transportable bundle (content + manifest with checksum) to DIRECTORY."""
    with opened(ctx) as provider:
        bundle = provider.export_shadow_copy(shadow_copy, directory)
    click.echo(f"exported to {bundle}")


@snapshot.command("import")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.pass_context
def snapshot_import(ctx: click.Context, directory: str) -> None:
    """Register a bundle as a clone shadow copy in this pool (checksum verified)."""
    with opened(ctx) as provider:
        shadow = provider.import_shadow_copy(directory)
    click.echo(f"imported shadow copy {shadow.id} of {shadow.lun_name} at {shadow.path}")
