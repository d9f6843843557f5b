"""Entry point of the ``lunresync`` command and its error handling."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from lunresync import __version__
from lunresync.cli.base import CommandGroup, through_service
from lunresync.errors import ExitCode, LunresyncError

#: The environment variable click's shell completion answers to (see ``completion``).
COMPLETE_VAR = "_LUNRESYNC_COMPLETE"


class LunresyncGroup(CommandGroup):
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
@click.option("--via-dbus", is_flag=True, envvar="LUNRESYNC_VIA_DBUS",
              help="Act through the D-Bus service (lunresync daemon) instead of on the pool"
                   " directly; same output (env LUNRESYNC_VIA_DBUS=1). See docs/cli.md.")
@click.option("--bus", metavar="ADDRESS", envvar="LUNRESYNC_BUS_ADDRESS",
              help="With --via-dbus: the bus of the service (default: the system bus;"
                   " env LUNRESYNC_BUS_ADDRESS). With --remote: unix:path=SOCKET on that"
                   " machine.")
@click.option("--remote", metavar="[USER@]HOST", envvar="LUNRESYNC_REMOTE",
              help="Act through the service of another machine, over SSH (implies"
                   " --via-dbus; env LUNRESYNC_REMOTE). See docs/remote.md.")
@click.option("--ssh-config", metavar="FILE", envvar="LUNRESYNC_SSH_CONFIG",
              help="With --remote: ssh's configuration file (ssh -F; env"
                   " LUNRESYNC_SSH_CONFIG).")
def cli(verbose: int, pool: str | None, via_dbus: bool, bus: str | None,
        remote: str | None, ssh_config: str | None) -> None:
    """Restore LUNs from shadow copies while they stay online."""
    if ssh_config is not None and remote is None:
        raise click.UsageError("--ssh-config needs --remote")
    if remote is not None:
        from lunresync.service.tunnel import check_destination, remote_socket

        check_destination(remote)  # refused before any command starts
        remote_socket(bus)
    # Pool files and directories are private to root (0600/0700), SQLite's WAL included.
    os.umask(0o077)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="lunresync: %(levelname)s: %(message)s")
    # sh logs every process's life at INFO/DEBUG; our runner logs the command lines.
    logging.getLogger("sh").setLevel(logging.WARNING)


@through_service
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Report what this kernel offers lunresync; exit 0 when ready, 3 when not.

    With --via-dbus: what the service finds, on the machine it runs on.
    """
    from lunresync.cli.backend_choice import backend_for

    with backend_for(ctx) as backend:
        report = backend.capabilities()
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from lunresync.cli.doctor import capabilities_from_json, render

        render(capabilities_from_json(report))
    if not report["ready"]:
        sys.exit(int(ExitCode.UNSUPPORTED))


@through_service  # it acts on nothing: the same with --via-dbus
@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  lunresync completion bash > /etc/bash_completion.d/lunresync
    zsh:   lunresync completion zsh > "${fpath[1]}/_lunresync"
    fish:  lunresync completion fish > ~/.config/fish/completions/lunresync.fish
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # the choice offers only shells click knows
    text = complete(cli, {}, "lunresync", COMPLETE_VAR).source()
    click.echo(text, nl=not text.endswith("\n"))


@cli.command()
@click.option("--size", default="320M", show_default=True,
              help="Size of each of the two LUNs (xfs needs 300M or more).")
@click.option("--data", default="96M", show_default=True, help="Files written to each LUN.")
def demo(size: str, data: str) -> None:
    """The end-to-end scenario: two LUNs with file systems and data, one backup, damage,
    both restored online while a reader reads, checked, timed against a plain copy.

    Everything lives in a scratch pool under /dev/shm and is removed at the end.
    """
    from lunresync.cli.output import follow_job
    from lunresync.demo import Demo, summary
    from lunresync.storage.units import parse_size

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

    from lunresync.service.daemon import serve
    from lunresync.storage.pool import pool_path

    root = ctx.find_root().params
    asyncio.run(serve(pool_path(root.get("pool")), bus_address=bus_address or root.get("bus"),
                      writers_dir=Path(writers_dir) if writers_dir else None,
                      writer_timeout=writer_timeout, watch_udev=not no_udev_watch))


def _add_storage_commands() -> None:
    from lunresync.cli import pool, storage

    cli.add_command(storage.lun)
    cli.add_command(pool.pool)
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


def _add_install_command() -> None:
    from lunresync.cli.install import install

    cli.add_command(install)


_add_storage_commands()
_add_resync_commands()
_add_requester_commands()
_add_install_command()


def main() -> None:
    # A fixed variable, whatever the program is called (python -m lunresync.cli.main too).
    cli(complete_var=COMPLETE_VAR)


if __name__ == "__main__":
    main()
