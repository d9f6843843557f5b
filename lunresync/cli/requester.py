"""``lunresync backup``, ``restore``, ``swap`` and ``script``: the VSS-style workflow."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from lunresync.errors import InvalidArgument, JobFailed
from lunresync.storage.model import ShadowKind
from lunresync.storage.units import parse_rate

from .backend_choice import backend_for, opened
from .base import ENGINE_CHOICE, MAX_RATE_HELP, given, through_service
from .output import emit_json, follow_job, print_table
from .results import BackupOutcome, JobStatus

WRITERS_DIR = click.option(
    "--writers-dir", type=click.Path(file_okay=False), envvar="LUNRESYNC_WRITERS_DIR",
    help="Directory of writer executables (default /etc/lunresync/writers.d;"
         " env LUNRESYNC_WRITERS_DIR). Not with --via-dbus: the service runs the writers"
         " of its own directory (lunresync daemon --writers-dir).")
WRITER_TIMEOUT = click.option(
    "--writer-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
    show_default=True, help="Seconds each writer may take per event (with --via-dbus:"
                            " default the service's own).")


def _writer_timeout(ctx: click.Context, value: float, via_service: bool) -> float | None:
    """The timeout to ask for: through the service, only one the user gave (else the
    service's own applies)."""
    return value if not via_service or given(ctx, "writer_timeout") else None


def show_writer_status(status: Sequence[dict[str, Any]]) -> None:
    print_table("writers", ["writer", "state", "last event", "message"],
                [[s["writer"], s["state"], s["last_event"] or "", s["message"]] for s in status])


def parse_additions(items: Sequence[str]) -> list[tuple[str, str | None]]:
    """``SHADOW[=DEST]`` items: DEST omitted means the original LUN."""
    pairs = []
    for item in items:
        shadow, _, destination = item.partition("=")
        if not shadow:
            raise InvalidArgument(f"--add {item!r}: name a shadow copy (SHADOW[=DEST])")
        if "=" in item and not destination:
            raise InvalidArgument(f"--add {item!r}: the destination after '=' is empty")
        pairs.append((shadow, destination or None))
    return pairs


def backup_json(outcome: BackupOutcome) -> dict[str, Any]:
    """What ``backup --json`` prints: the document's content, where it is, and how the
    backup went."""
    return {"document": str(outcome.path), **outcome.document.to_json(),
            "freeze_seconds": outcome.freeze_seconds,
            "writer_status": outcome.writer_status}


def restore_json(session: str, job: JobStatus,
                 writer_status: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``restore --json`` prints."""
    return {"session": session, "job": job.record, "writer_status": writer_status}


@through_service
@click.command()
@click.option("--lun", "luns", multiple=True, required=True, help="A LUN to back up (repeat).")
@click.option("--kind", type=click.Choice(["auto", *(k.value for k in ShadowKind)]),
              default="auto", show_default=True,
              help="differential: copy-on-write; clone: a full, transportable copy; thin:"
              " a thin snapshot (thin LUNs); auto: thin if every LUN is thin, else"
              " differential.")
@click.option("--document", required=True, type=click.Path(dir_okay=False),
              help="Where to write the backup components document (must not exist).")
@WRITERS_DIR
@WRITER_TIMEOUT
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def backup(ctx: click.Context, luns: tuple[str, ...], kind: str, document: str,
           writers_dir: str | None, writer_timeout: float, as_json: bool) -> None:
    """Take one snapshot set of the LUNs with the writers' help and write the document."""
    with backend_for(ctx) as backend:
        outcome = backend.backup(
            list(luns), kind=kind, document=document, writers_dir=writers_dir,
            writer_timeout=_writer_timeout(ctx, writer_timeout, backend.via_service))
    if as_json:
        emit_json(backup_json(outcome))
        return
    doc = outcome.document
    for lun in doc.luns:
        click.echo(f"LUN {lun.name}: shadow copy {lun.shadow_copy_id}"
                   f" ({lun.shadow_copy_kind.value})")
    frozen = "?" if outcome.freeze_seconds is None else f"{outcome.freeze_seconds:.2f}"
    click.echo(f"snapshot set {doc.snapshot_set_id}, I/O frozen {frozen} s;"
               f" document {outcome.path}")


@through_service
@click.command()
@click.option("--document", required=True, type=click.Path(dir_okay=False),
              help="The backup components document written by lunresync backup.")
@click.option("--add", "additions", multiple=True, required=True, metavar="SHADOW[=DEST]",
              help="A shadow copy to restore, into DEST (LUN name or block device) or, without"
                   " =DEST, into its original LUN (repeat).")
@click.option("--component", "components", multiple=True,
              help="Select a component (writer:component, or a unique component name);"
                   " default: all.")
@click.option("--engine", type=ENGINE_CHOICE, default="auto", show_default=True)
@click.option("--no-volume-check", is_flag=True,
              help="Overwrite destinations in use or holding unselected components.")
@click.option("--max-rate", "max_rate", metavar="RATE", help=MAX_RATE_HELP)
@click.option("--revert-identity", is_flag=True,
              help="Destinations take their original LUN's id (refused while it is present).")
@click.option("--wait", "wait_", is_flag=True,
              help="Wait for the copy to complete before post-restore.")
@WRITERS_DIR
@WRITER_TIMEOUT
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def restore(ctx: click.Context, document: str, additions: tuple[str, ...],
            components: tuple[str, ...], engine: str, no_volume_check: bool,
            max_rate: str | None, revert_identity: bool, wait_: bool,
            writers_dir: str | None, writer_timeout: float, as_json: bool) -> None:
    """Restore shadow copies from a backup, telling writers before and after.

    Without --wait, post-restore runs as soon as every destination is online (the copy
    goes on in the kernel; lunresync job wait follows it).
    """
    from lunresync.requester.document import load_document

    pairs = parse_additions(additions)
    rate = parse_rate(max_rate) if max_rate is not None else None
    doc = load_document(document)
    with backend_for(ctx) as backend, backend.begin_restore(
            doc, writers_dir=writers_dir,
            writer_timeout=_writer_timeout(ctx, writer_timeout, backend.via_service)
    ) as session:
        if components:
            session.select_components(components)
        for shadow, destination in pairs:
            session.add(shadow, destination)
        session.pre_restore()
        started = session.recover_set(engine=engine, volume_check=not no_volume_check,
                                      revert_identity=revert_identity,
                                      max_rate=rate)
        if not as_json:
            click.echo(f"job {started.job.id}: every destination online after"
                       f" {started.online_seconds or 0:.2f} s")
        if wait_:
            # A job that fails or is cancelled while waited for still ends in
            # post-restore, with its result: writers stopped at pre-restore must hear it.
            with contextlib.suppress(JobFailed):
                if as_json:
                    session.wait()
                else:
                    follow_job(lambda show: session.wait(on_progress=show))
        status = session.post_restore()
        job = session.status()
        session_id = session.id
    if as_json:
        emit_json(restore_json(session_id, job, status))
    else:
        for pair in job.pairs:
            click.echo(f"{pair['destination']}: {pair['state']}")
        show_writer_status(status)
    if wait_ and job.state != "done":
        raise JobFailed(f"job {job.id} ended {job.state}: {job.error or ''}".rstrip(": "))
    failed = [s for s in status if s["state"] != "stable"]
    if failed:
        from lunresync.requester.workflow import WriterFailed  # not at start-up

        raise WriterFailed("the data is restored, but " + "; ".join(
            f"writer {s['writer']} {s['state']}: {s['message']}" for s in failed))


@through_service
@click.command()
@click.argument("snapshot_set")
@click.option("--mask-original", is_flag=True,
              help="Hide the original LUNs (lunresync lun unmask exposes them again).")
@click.option("--read-write", is_flag=True, help="Make the new LUNs writable (default: read-only).")
@click.option("--revert-identity/--keep-identity", default=False, show_default=True,
              help="Take the original LUNs' ids and names (refused while they are present),"
                   " or keep new ones.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def swap(ctx: click.Context, snapshot_set: str, mask_original: bool, read_write: bool,
         revert_identity: bool, as_json: bool) -> None:
    """Turn the shadow copies of a clone set into ordinary LUNs, irreversibly (no copy)."""
    with backend_for(ctx) as backend:
        luns = backend.swap(snapshot_set, mask_original=mask_original, read_write=read_write,
                            revert_identity=revert_identity)
    if as_json:
        emit_json(luns)
        return
    for lun in luns:
        mode = "read-only" if lun["read_only"] else "read-write"
        click.echo(f"LUN {lun['name']} ({mode}) at {lun['path']}, id {lun['id']}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@WRITERS_DIR
@WRITER_TIMEOUT
@click.pass_context
def script(ctx: click.Context, file: str, writers_dir: str | None,
           writer_timeout: float) -> None:
    """Run a diskshadow-like command file, checked whole before anything runs.

    The language is in lunresync/requester/script.py (and the README).
    """
    from lunresync.requester.script import read_script
    from lunresync.requester.script_runner import ScriptRunner

    commands = read_script(Path(file))  # the whole file is checked before anything runs
    with opened(ctx) as provider:
        runner = ScriptRunner(provider, file, writers_dir=writers_dir,
                              writer_timeout=writer_timeout, say=click.echo)
        runner.run(commands)
    if runner.writer_failures:
        from lunresync.requester.workflow import WriterFailed  # not at start-up

        raise WriterFailed("; ".join(runner.writer_failures))

