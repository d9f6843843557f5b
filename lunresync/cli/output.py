"""How the commands print what they got: JSON, one record as "key value" lines, a table,
a job's progress line or bar. Shared by every command module.

rich is imported only when a table or a progress bar is printed: Python starts slowly in
the test VM, and ``--json`` needs neither.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from lunresync.engine.model import Job
from lunresync.storage.units import format_size

from .results import JobStatus

#: follow_job follows a job of the catalog (the demo) or of a backend.
J = TypeVar("J", Job, JobStatus)


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def show_record(record: dict[str, Any], as_json: bool, keys: Sequence[str]) -> None:
    """One record: JSON, or one "key value" line per key."""
    if as_json:
        emit_json(record)
        return
    width = max(len(k) for k in keys) + 1
    for key in keys:
        click.echo(f"{key:{width}} {record[key]}")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _status(job: Job | JobStatus) -> JobStatus:
    return job if isinstance(job, JobStatus) else JobStatus.of(job)


def job_line(job: Job | JobStatus) -> str:
    """A job's progress in one line: state, percent, bytes, rate, time left."""
    status = _status(job)
    record = status.record
    rate = f"{format_size(int(record['rate']))}/s" if record["rate"] else "-"
    eta = f", {max(0, int(status.eta - time.time()))} s left" if status.eta else ""
    return (f"job {status.id[:12]} {status.state} {status.progress:6.1%}"
            f" {format_size(record['bytes_done'])}/{format_size(record['bytes_total'])}"
            f" {rate}{eta}")


def follow_job(wait: Callable[[Callable[[J], None]], J]) -> J:
    """Wait for a job with a progress bar on a terminal, plain lines otherwise."""
    if sys.stdout.isatty():
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        with Progress("[progress.description]{task.description}", BarColumn(),
                      TaskProgressColumn(), TimeRemainingColumn()) as bar:
            task = bar.add_task("restoring", total=1.0)

            def show_bar(job: J) -> None:
                status = _status(job)
                bar.update(task, completed=status.progress, description=f"job {status.id[:12]}")

            return wait(show_bar)
    last = [-1.0, 0.0]

    def show_line(job: J) -> None:
        # A line per percent, or every 5 s: readable in a log, not a flood.
        progress = _status(job).progress
        if progress - last[0] >= 0.01 or time.monotonic() - last[1] >= 5:
            click.echo(job_line(job))
            last[:] = [progress, time.monotonic()]

    return wait(show_line)
