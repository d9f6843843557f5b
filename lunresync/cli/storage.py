"""``lunresync lun ...``, ``snapshot ...``, ``activate``, ``deactivate``, ``watch``: LUNs
and shadow copies, through the chosen backend, or on the pool directly for what the
service does not offer."""

from __future__ import annotations

import os
from typing import Any

import click

from lunresync.errors import InvalidArgument
from lunresync.kernel.scsi_names import ChapCredential
from lunresync.storage.model import ShadowKind
from lunresync.storage.units import format_size

from .backend_choice import backend_for, opened
from .base import CommandGroup, through_service
from .output import emit_json, print_table, show_record

# -- LUNs ------------------------------------------------------------------------------------


TRACK_CHANGES_HELP = (
    "Record which blocks are written, so that restoring it again from the shadow copy it"
    " was last restored from (or a newer one of the same LUN) copies only what changed."
    " The first write to each 64 KiB block after a restore waits for the record.")


@click.group(cls=CommandGroup)
def lun() -> None:
    """Create, adopt, list, show and delete LUNs."""


@through_service
@lun.command("create")
@click.argument("name")
@click.option("--size", required=True, help="Size, e.g. 4G, 512M (binary units).")
@click.option("--thin", is_flag=True,
              help="A volume of the pool's thin pool (lunresync pool create-thin).")
@click.option("--track-changes", is_flag=True, help=TRACK_CHANGES_HELP)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lun_create(ctx: click.Context, name: str, size: str, thin: bool, track_changes: bool,
               as_json: bool) -> None:
    """Create LUN NAME over a sparse image in the pool, or on its thin pool."""
    with backend_for(ctx) as backend:
        created = backend.create_lun(name, size, thin=thin, track_changes=track_changes)
    if as_json:
        emit_json(created)
    else:
        click.echo(f"created LUN {created['name']} ({format_size(created['size'])}) at"
                   f" {created['path']}, id {created['id']}")


@through_service
@lun.command("adopt")
@click.argument("name")
@click.argument("device")
@click.option("--track-changes", is_flag=True, help=TRACK_CHANGES_HELP)
@click.pass_context
def lun_adopt(ctx: click.Context, name: str, device: str, track_changes: bool) -> None:
    """Use the existing block DEVICE as LUN NAME."""
    with backend_for(ctx) as backend:
        adopted = backend.adopt_lun(name, device, track_changes=track_changes)
    click.echo(f"adopted {adopted['backing']} as LUN {adopted['name']} at {adopted['path']}")


@through_service
@lun.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lun_list(ctx: click.Context, as_json: bool) -> None:
    """List LUNs."""
    with backend_for(ctx) as backend:
        luns = backend.luns()
    if as_json:
        emit_json(luns)
        return
    print_table("LUNs", ["name", "size", "kind", "id", "path", "notes"],
                [[x["name"], format_size(x["size"]), x["kind"], x["id"], x["path"], _notes(x)]
                 for x in luns])


def _notes(lun: dict[str, Any]) -> str:
    notes = [lun["state"]] if lun["state"] != "ok" else []
    if lun["read_only"]:
        notes.append("read-only")
    if lun.get("tracked"):
        notes.append("tracked" if lun.get("restored_from") is None else
                     f"tracked since restored from {lun['restored_from']}")
    if lun["masked"]:
        notes.append("masked")
    if lun["offline"]:
        reason = lun.get("offline_reason")
        notes.append(f"offline: {reason}" if reason else "offline")
    for export in lun.get("exports", []):
        notes.append(f"exported {export['kind']} {export['disk'] or ''}".rstrip()
                     if export["served"] else f"exported {export['kind']} (not served)")
    if lun.get("thin_pool") not in (None, "rw"):
        notes.append(f"thin pool {lun['thin_pool']}")  # out_of_data_space: writes fail
    return ", ".join(notes)


LUN_SHOW_KEYS = ["name", "id", "size", "kind", "backing", "identity", "path", "created", "state",
                 "thin_pool", "read_only", "masked", "offline", "offline_reason", "tracked",
                 "restored_from", "exports"]


@through_service
@lun.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lun_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one LUN (its 128-bit id is the analogue of a SCSI page-83 identifier)."""
    with backend_for(ctx) as backend:
        found = backend.lun(name)
    if not as_json:
        found = {**found, "exports": "; ".join(_export_text(e) for e in found["exports"])
                 or None}
    show_record(found, as_json, LUN_SHOW_KEYS)


def _export_text(export: dict[str, Any]) -> str:
    if not export["served"]:
        where = "not served"
    elif export["kind"] == "iscsi":
        logged = f", logged in: {', '.join(export['sessions'])}" if export["sessions"] else ""
        chap = f", CHAP user {export['chap_user']}" if export.get("chap_user") else ""
        where = f"{export['target']} at {', '.join(export['portals'])}{chap}{logged}"
    else:
        where = export["disk"] or ""
    mode = " read-only" if export["read_only"] else ""
    return f"{export['kind']}{mode} {where} wwn-{export['wwn']} serial {export['serial']}"


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


@through_service
@lun.command("unmask")
@click.argument("name")
@click.pass_context
def lun_unmask(ctx: click.Context, name: str) -> None:
    """Expose a LUN that a swap with --mask-original hid."""
    with backend_for(ctx) as backend:
        lun = backend.unmask_lun(name)
    click.echo(f"LUN {lun['name']} is exposed again at {lun['path']}")


def read_chap(user: str | None, secret_file: str | None) -> ChapCredential | None:
    """The CHAP credential of ``--chap-user`` and the first line of
    ``--chap-secret-file`` (a file only its owner can read: a secret never goes on a
    command line, which every user sees in ps)."""
    if user is None and secret_file is None:
        return None
    if user is None or secret_file is None:
        raise InvalidArgument("CHAP needs both --chap-user and --chap-secret-file")
    try:
        with open(secret_file, encoding="ascii") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                raise InvalidArgument(f"{secret_file} can be read by others: chmod 600 it")
            secret = f.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read the CHAP secret from {secret_file}: {exc}"
                              ) from None
    return ChapCredential(user, secret)


@through_service
@lun.command("export")
@click.argument("name")
@click.option("--loopback", is_flag=True,
              help="Serve it to this machine as a SCSI disk (LIO's tcm_loop).")
@click.option("--iscsi", is_flag=True, help="Serve it to iSCSI initiators.")
@click.option("--portal", "portals", multiple=True, metavar="ADDRESS[:PORT]",
              help="iSCSI: listen here (IPv4; port 3260 if left out). Repeatable.")
@click.option("--acl", "acls", multiple=True, metavar="IQN",
              help="iSCSI: an initiator that may log in. Repeatable; a writable export"
                   " needs one.")
@click.option("--chap-user", metavar="USER",
              help="iSCSI: the initiators must log in with CHAP as USER (with"
                   " --chap-secret-file).")
@click.option("--chap-secret-file", metavar="FILE",
              help="iSCSI: the CHAP secret, the file's first line (12-255 characters; the"
                   " file readable by its owner only). Never on the command line.")
@click.option("--read-only", is_flag=True, help="A disk that refuses writes.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def lun_export(ctx: click.Context, name: str, loopback: bool, iscsi: bool,
               portals: tuple[str, ...], acls: tuple[str, ...], chap_user: str | None,
               chap_secret_file: str | None, read_only: bool, as_json: bool) -> None:
    """Serve LUN NAME as a SCSI disk whose WWN (VPD page 83) and serial (page 80) are
    the LUN's id; activate serves it again after a reboot."""
    if loopback == iscsi:
        raise InvalidArgument("give --loopback or --iscsi")
    if loopback and (portals or acls or chap_user or chap_secret_file):
        raise InvalidArgument("--portal, --acl and CHAP go with --iscsi")
    chap = read_chap(chap_user, chap_secret_file)
    with backend_for(ctx) as backend:
        lun = backend.export_lun(name, kind="iscsi" if iscsi else "loopback",
                                 read_only=read_only, portals=portals, acls=acls, chap=chap)
    if as_json:
        emit_json(lun)
        return
    for export in lun["exports"]:
        mode = ", read-only" if export["read_only"] else ""
        if export["kind"] == "iscsi":
            where = f"target {export['target']} at {', '.join(export['portals'])}"
        else:
            where = export["disk"] or "its disk is being made"
        click.echo(f"LUN {lun['name']} is exported ({export['kind']}{mode}): {where},"
                   f" /dev/disk/by-id/wwn-{export['wwn']}")


@through_service
@lun.command("unexport")
@click.argument("name")
@click.pass_context
def lun_unexport(ctx: click.Context, name: str) -> None:
    """Stop serving LUN NAME as a SCSI disk (refused while its disk is in use here)."""
    with backend_for(ctx) as backend:
        backend.unexport_lun(name)
    click.echo(f"LUN {name} is no longer exported")


@through_service
@lun.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete its shadow copies too.")
@click.pass_context
def lun_delete(ctx: click.Context, name: str, force: bool) -> None:
    """Delete LUN NAME, its devices and its image (an adopted device is left as is)."""
    with backend_for(ctx) as backend:
        backend.delete_lun(name, force=force)
    click.echo(f"deleted LUN {name}")


# -- activation ------------------------------------------------------------------------------


@through_service
@click.command()
@click.pass_context
def activate(ctx: click.Context) -> None:
    """Re-create every loop and dm device from the catalog (after a reboot). Idempotent."""
    with backend_for(ctx) as backend:
        created = backend.activate()
    click.echo(f"activated: {len(created)} devices created" +
               (f" ({', '.join(created)})" if created else ""))


@through_service
@click.command()
@click.pass_context
def deactivate(ctx: click.Context) -> None:
    """Tear every device down; the pool keeps all data."""
    with backend_for(ctx) as backend:
        removed = backend.deactivate()
    click.echo(f"deactivated: {len(removed)} devices removed")


# -- shadow copies ---------------------------------------------------------------------------


@click.group(cls=CommandGroup)
def snapshot() -> None:
    """Snapshot sets and shadow copies."""


def snapshot_create_json(snapshot_set: str, freeze_seconds: float | None,
                         shadow_copies: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``snapshot create --json`` prints."""
    return {"snapshot_set": snapshot_set,
            "freeze_seconds": None if freeze_seconds is None else round(freeze_seconds, 4),
            "shadow_copies": shadow_copies}


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f}"


@through_service
@snapshot.command("create")
@click.argument("luns", nargs=-1, required=True)
@click.option("--kind", type=click.Choice(["auto", *(k.value for k in ShadowKind)]),
              default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def snapshot_create(ctx: click.Context, luns: tuple[str, ...], kind: str, as_json: bool) -> None:
    """Take one snapshot set of all LUNS at one instant."""
    with backend_for(ctx) as backend:
        taken = backend.create_snapshot_set(list(luns), kind)
    if as_json:
        emit_json(snapshot_create_json(taken.snapshot_set, taken.freeze_seconds,
                                       taken.shadow_copies))
        return
    click.echo(f"snapshot set {taken.snapshot_set} (I/O frozen"
               f" {_ms(taken.freeze_seconds)} ms)")
    for shadow in taken.shadow_copies:
        click.echo(f"  {shadow['kind']} shadow copy {shadow['id']} of"
                   f" {shadow['lun_name']} at {shadow['path']}")


def _cow(shadow: dict[str, Any]) -> str:
    used, size = shadow["cow_used"], shadow["cow_size"]
    if used is None or not size:
        return "-"
    return f"{format_size(used)} ({100 * used / size:.1f}%)"


@through_service
@snapshot.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def snapshot_list(ctx: click.Context, as_json: bool) -> None:
    """List shadow copies with their COW use."""
    with backend_for(ctx) as backend:
        shadows = backend.shadow_copies()
    if as_json:
        emit_json(shadows)
        return
    print_table("shadow copies",
                ["id", "set", "kind", "LUN", "created", "size", "COW used", "state"],
                [[s["id"][:12], s["snapshot_set"][:12], s["kind"], s["lun_name"], s["created"],
                  format_size(s["size"]), _cow(s), ("usable" if s["usable"] else "INVALID")]
                 for s in shadows])


@through_service
@snapshot.command("show")
@click.argument("shadow_copy")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def snapshot_show(ctx: click.Context, shadow_copy: str, as_json: bool) -> None:
    """Show one shadow copy (id or a unique prefix of 8+ hex digits)."""
    with backend_for(ctx) as backend:
        data = backend.shadow_copy(shadow_copy)
    show_record(data, as_json, sorted(data))


@through_service
@snapshot.command("delete")
@click.argument("shadow_copy")
@click.pass_context
def snapshot_delete(ctx: click.Context, shadow_copy: str) -> None:
    """Delete a shadow copy and its store."""
    with backend_for(ctx) as backend:
        backend.delete_shadow_copy(shadow_copy)
    click.echo(f"deleted shadow copy {shadow_copy}")


@through_service
@snapshot.command("export")
@click.argument("shadow_copy")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--since", metavar="BASE",
              help="Only what differs from BASE, an earlier thin shadow copy of the same"
              " LUN (import BASE's bundle first, then this one).")
@click.pass_context
def snapshot_export(ctx: click.Context, shadow_copy: str, directory: str,
                    since: str | None) -> None:
    """Write a transportable bundle (content + manifest with checksum) to DIRECTORY."""
    with backend_for(ctx) as backend:
        bundle = backend.export_shadow_copy(shadow_copy, directory, since=since)
    click.echo(f"exported to {bundle}")


@through_service
@snapshot.command("import")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.pass_context
def snapshot_import(ctx: click.Context, directory: str) -> None:
    """Register a bundle as a clone shadow copy in this pool (checksum verified)."""
    with backend_for(ctx) as backend:
        shadow = backend.import_shadow_copy(directory)
    click.echo(f"imported shadow copy {shadow['id']} of {shadow['lun_name']} at"
               f" {shadow['path']}")
