"""``lunresync install``: the D-Bus service's system files (policy, activation file,
systemd units, udev rules), see docs/install.md."""

from __future__ import annotations

import json
import sys

import click

from lunresync.cli.base import LunresyncCommand


# A LunresyncCommand: refused with --via-dbus (it writes this machine's files).
@click.command("install", cls=LunresyncCommand)
@click.option("--destdir", type=click.Path(file_okay=False), default="/", show_default=True,
              help="Install under this root instead (a package build, a test); nothing is"
                   " reloaded then.")
@click.option("--executable", metavar="PATH",
              help="Absolute path of the lunresync executable the units run (default: this"
                   " one).")
@click.option("--no-reload", is_flag=True,
              help="Do not tell systemd, udev and the system bus to re-read their files.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def install(destdir: str, executable: str | None, no_reload: bool, as_json: bool) -> None:
    """Install the bus policy, the D-Bus activation file, the systemd units
    (lunresync.service, lunresync-activate.service) and the udev rules; reload what runs.

    A reload that fails is reported and does not fail the install.
    """
    from lunresync.service.install import install as install_files

    result = install_files(destdir, executable, reload=not no_reload)
    if as_json:
        json.dump(result.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return
    for path in result.files:
        click.echo(f"installed {path}")
    click.echo(f"the units run {result.executable}")
    for item in result.reloads:
        click.echo(f"{item.name}: {item.state}: {item.detail}")
    if result.destdir == result.destdir.parent:  # the running system
        click.echo("to start at boot: systemctl enable lunresync-activate.service"
                   " lunresync.service (docs/install.md)")
