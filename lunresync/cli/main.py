"""Entry point of the ``lunresync`` command and its error handling."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from lunresync import __version__
from lunresync.errors import ExitCode, LunresyncError


class LunresyncGroup(click.Group):
    """Turns every LunresyncError into one line on stderr and its documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LunresyncError as exc:
            click.echo(f"lunresync: error: {exc}", err=True)
            ctx.exit(int(exc.exit_code))


@click.group(cls=LunresyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lunresync")
@click.option("-v", "--verbose", count=True, help="Log more (-v: info, -vv: every command run).")
@click.option("--pool", type=click.Path(file_okay=False), envvar="LUNRESYNC_POOL",
              help="Pool directory (default /var/lib/lunresync; env LUNRESYNC_POOL).")
def cli(verbose: int, pool: str | None) -> None:
    """Restore LUNs from shadow copies while they stay online."""
    # Pool files and directories are private to root (0600/0700), SQLite's WAL included.
    os.umask(0o077)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="lunresync: %(levelname)s: %(message)s")
    # sh logs every process's life at INFO/DEBUG; our runner logs the command lines.
    logging.getLogger("sh").setLevel(logging.WARNING)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def doctor(as_json: bool) -> None:
    """Report what this kernel offers lunresync; exit 0 when ready, 3 when not."""
    from lunresync.cli.doctor import render
    from lunresync.kernel.capabilities import probe
    from lunresync.kernel.dm import DeviceMapper

    caps = probe(DeviceMapper())
    if as_json:
        json.dump(caps.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(caps)
    if not caps.ready:
        sys.exit(int(ExitCode.UNSUPPORTED))


@cli.command()
@click.option("--size", default="320M", show_default=True,
              help="Size of each of the two LUNs (xfs needs 300M or more).")
@click.option("--data", default="96M", show_default=True, help="Files written to each LUN.")
def demo(size: str, data: str) -> None:
    """The end-to-end scenario: two LUNs with file systems and data, one backup, damage,
    both restored online while a reader reads, checked, timed against a plain copy.

    Everything lives in a scratch pool under /dev/shm and is removed at the end.
    """
    from lunresync.cli.resync import follow_job
    from lunresync.demo import Demo, summary
    from lunresync.provider.units import parse_size

    result = Demo(size=parse_size(size), data=parse_size(data), say=click.echo,
                  follow=follow_job).run()
    click.echo("==> done: both LUNs restored and checked")
    width = max(len(label) for label, _ in summary(result))
    for label, value in summary(result):
        click.echo(f"    {label:{width}}  {value}")


@cli.command()
@click.option("--bus", "bus_address", envvar="LUNRESYNC_BUS_ADDRESS",
              help="D-Bus address to serve on (default: the system bus).")
@click.option("--writers-dir", type=click.Path(file_okay=False), envvar="LUNRESYNC_WRITERS_DIR",
              help="Directory of writer executables (default /etc/lunresync/writers.d).")
@click.option("--writer-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds each writer may take per event.")
@click.option("--no-udev-watch", is_flag=True, help="Do not watch udev for removed disks.")
@click.pass_context
def daemon(ctx: click.Context, bus_address: str | None, writers_dir: str | None,
           writer_timeout: float, no_udev_watch: bool) -> None:
    """Serve org.lunresync1 on the system bus (the D-Bus service, see docs/dbus.md)."""
    import asyncio
    from pathlib import Path

    from lunresync.provider.pool import pool_path
    from lunresync.service.daemon import serve

    asyncio.run(serve(pool_path(ctx.find_root().params.get("pool")), bus_address=bus_address,
                      writers_dir=Path(writers_dir) if writers_dir else None,
                      writer_timeout=writer_timeout, watch_udev=not no_udev_watch))


def _add_storage_commands() -> None:
    from lunresync.cli import storage

    cli.add_command(storage.lun)
    cli.add_command(storage.snapshot)
    cli.add_command(storage.activate)
    cli.add_command(storage.deactivate)
    cli.add_command(storage.watch)


def _add_resync_commands() -> None:
    from lunresync.cli import resync

    cli.add_command(resync.resync)
    cli.add_command(resync.job)


def _add_requester_commands() -> None:
    from lunresync.cli import requester

    cli.add_command(requester.backup)
    cli.add_command(requester.restore)
    cli.add_command(requester.swap)
    cli.add_command(requester.script)


_add_storage_commands()
_add_resync_commands()
_add_requester_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
