"""``lunresync resync ...`` and ``lunresync job ...``: the resync engine from the shell."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from lunresync.errors import InvalidArgument
from lunresync.storage.units import format_size, parse_rate

from .backend_choice import backend_for
from .base import (
    ENGINE_CHOICE,
    MAX_RATE_HELP,
    CommandGroup,
    through_service,
)
from .output import emit_json, follow_job, job_line, print_table, show_record

if TYPE_CHECKING:
    from lunresync.engine.resync import ResyncPair

    from .results import JobStatus


def parse_pairs(items: Sequence[str]) -> list[ResyncPair]:
    """``A [--to X] B [--to Y] ...``: each --to names the destination of the shadow copy
    before it; a shadow copy without one is restored into its own LUN."""
    from lunresync.engine.resync import ResyncPair  # the engine: not at start-up

    pairs: list[ResyncPair] = []
    index = 0
    while index < len(items):
        item = items[index]
        destination: str | None = None
        if item == "--to" or item.startswith("--to="):
            raise InvalidArgument("--to must follow the shadow copy it belongs to")
        if item.startswith("-"):
            raise InvalidArgument(f"unknown option {item!r}")
        index += 1
        if index < len(items) and (items[index] == "--to" or items[index].startswith("--to=")):
            if items[index] == "--to":
                if index + 1 >= len(items):
                    raise InvalidArgument(f"--to after {item} needs a destination")
                destination = items[index + 1]
                index += 2
            else:
                destination = items[index][len("--to="):]
                index += 1
            if not destination:
                raise InvalidArgument(f"--to after {item} needs a destination")
        pairs.append(ResyncPair(item, destination))
    if not pairs:
        raise InvalidArgument("name at least one shadow copy")
    return pairs


def resync_json(job: JobStatus, online_seconds: float | None,
                report: dict[str, Any] | None) -> dict[str, Any]:
    """What ``resync --json`` prints: the job's record, the time to online, the report."""
    data = dict(job.record)
    data["online_seconds"] = online_seconds
    if report is not None:
        data["verify"] = report
    return data


@through_service
@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("items", nargs=-1, type=click.UNPROCESSED, required=True)
@click.option("--engine", type=ENGINE_CHOICE, default="auto", show_default=True,
              help="How the kernel copies (auto: clone, else merge in place, else mirror).")
@click.option("--no-volume-check", is_flag=True,
              help="Restore even onto a destination that is mounted or open.")
@click.option("--max-rate", "max_rate", metavar="RATE", help=MAX_RATE_HELP)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the copy to complete.")
@click.option("--verify", is_flag=True,
              help="Wait, then compare each destination with its shadow copy.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def resync(ctx: click.Context, items: tuple[str, ...], engine: str, no_volume_check: bool,
           max_rate: str | None, wait_: bool, verify: bool, as_json: bool) -> None:
    """Restore shadow copies online: SHADOW_COPY [--to DEST] ...

    DEST is a LUN name or a block device; without --to, the shadow copy's own LUN. All
    pairs form one recovery set and one job. Each destination serves the shadow copy's
    content when this returns; the kernel copies the rest in the background.
    """
    pairs = parse_pairs(items)
    rate = parse_rate(max_rate) if max_rate is not None else None
    with backend_for(ctx) as backend:
        started = backend.resync(pairs, engine=engine, volume_check=not no_volume_check,
                                 max_rate=rate)
        job = started.job
        if not as_json:
            for pair in job.pairs:
                click.echo(f"{pair['destination']}: online from shadow copy"
                           f" {pair['shadow_copy'][:12]} ({pair['engine']}) at {pair['device']}")
            click.echo(f"job {job.id} running; online after {started.online_seconds or 0:.2f} s")
        if wait_ or verify:
            job = (backend.wait(job.id) if as_json else
                   follow_job(lambda show: backend.wait(job.id, on_progress=show)))
            if not as_json:
                click.echo(f"job {job.id} done in {(job.finished or 0) - (job.started or 0):.1f} s")
        report = backend.verify(job.id) if verify else None
    if as_json:
        emit_json(resync_json(job, started.online_seconds, report))
    elif report is not None:
        _print_report(report)
    if report is not None and not report["ok"]:
        ctx.exit(1)


def _print_report(data: dict[str, Any]) -> None:
    mismatches = data["mismatches"]
    assert isinstance(mismatches, list)
    click.echo(f"verify: {'OK' if data['ok'] else 'MISMATCH'}: compared"
               f" {format_size(int(str(data['compared_bytes'])))}, written during the restore"
               f" {format_size(int(str(data['written_bytes'])))}, unexplained differences"
               f" {len(mismatches)}")
    for m in mismatches[:20]:
        click.echo(f"  {m['destination']}: {m['length']} bytes at offset {m['offset']}")
    for dest in data["writes_not_recorded"]:
        click.echo(f"  {dest}: its engine does not record writes made during the restore;"
                   " differences there may be such writes")


@click.group(cls=CommandGroup)
def job() -> None:
    """List, show, wait for, cancel and verify resync jobs."""


@through_service
@job.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include ended jobs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def job_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List running jobs (with --all, ended ones too)."""
    with backend_for(ctx) as backend:
        jobs = [j for j in backend.jobs() if show_all or not j.finished_state]
    if as_json:
        emit_json([j.record for j in jobs])
        return
    print_table("jobs", ["id", "state", "engine", "progress", "pairs", "error"],
                [[j.id, j.state, j.record["engines"], f"{j.progress:.1%}",
                  ", ".join(f"{p['shadow_copy'][:12]} -> {p['destination']}" for p in j.pairs),
                  j.error or ""]
                 for j in jobs])


JOB_SHOW_KEYS = ["id", "state", "engines", "progress", "bytes_done", "bytes_total", "rate",
                 "eta", "created", "started", "finished", "error", "pairs"]


@through_service
@job.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def job_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job."""
    with backend_for(ctx) as backend:
        found = backend.job(job_id)
    data = dict(found.record)
    if not as_json:
        data["pairs"] = "; ".join(
            f"{p['shadow_copy'][:12]} -> {p['destination']} ({p['engine']}, {p['state']})"
            for p in found.pairs)
        data["progress"] = f"{found.progress:.1%}"
    show_record(data, as_json, JOB_SHOW_KEYS)


@through_service
@job.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=float, help="Give up waiting after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def job_wait(ctx: click.Context, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait for a job to end; exit 1 if it failed or was cancelled, 7 on timeout."""
    with backend_for(ctx) as backend:
        if as_json:
            ended = backend.wait(job_id, timeout=timeout)
        else:
            ended = follow_job(lambda show: backend.wait(job_id, timeout=timeout,
                                                         on_progress=show))
    if as_json:
        emit_json(ended.record)
    else:
        click.echo(job_line(ended))


@through_service
@job.command("cancel")
@click.argument("job_id")
@click.pass_context
def job_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: its unfinished destinations fail all I/O until restored again."""
    with backend_for(ctx) as backend:
        cancelled = backend.cancel(job_id)
    click.echo(f"job {cancelled.id} cancelled; incomplete: "
               + ", ".join(p["destination"] for p in cancelled.pairs
                           if p["state"] == "cancelled"))


@through_service
@job.command("set-rate")
@click.argument("job_id")
@click.argument("rate")
@click.pass_context
def job_set_rate(ctx: click.Context, job_id: str, rate: str) -> None:
    """Change a running job's rate limit: RATE in bytes per second (50M: 50 MiB/s), or
    none. It takes effect at once."""
    limit = parse_rate(rate)
    with backend_for(ctx) as backend:
        changed = backend.set_rate(job_id, limit)
    shown = f"{format_size(limit)}/s" if limit is not None else "none"
    click.echo(f"job {changed.id}: rate limit {shown}")


@through_service
@job.command("verify")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def job_verify(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Compare a completed job's destinations with their shadow copies."""
    with backend_for(ctx) as backend:
        report = backend.verify(job_id)
    if as_json:
        emit_json(report)
    else:
        _print_report(report)
    if not report["ok"]:
        ctx.exit(1)
