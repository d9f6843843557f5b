"""What every ``lunresync`` command shares: the groups that refuse, with ``--via-dbus``, a
command the service cannot run, the root options' values, and the choices of an option
more than one command takes.

A command runs through the service only when it says so (:func:`through_service`): a
command added later, by anyone, is refused with ``--via-dbus`` until someone makes it
work there, instead of silently acting on the pool directly.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import click

from lunresync.engine.model import EngineKind
from lunresync.errors import NotSupported

C = TypeVar("C", bound=click.Command)

#: What a refusal suggests instead.
DIRECT_HINT = "run it without --via-dbus, as root on the machine of the pool"

#: ``--engine`` of resync and restore.
ENGINE_CHOICE = click.Choice(["auto", *(k.value for k in EngineKind)])
MAX_RATE_HELP = ("Bytes per second the copy may take (e.g. 50M: 50 MiB/s; a follower paces it:"
                 " job wait, --wait or the service; mirror and merge through the kernel's"
                 " copy share, one for the whole machine).")


class LunresyncCommand(click.Command):
    """The commands' class. A command of a :class:`CommandGroup` refuses ``--via-dbus``
    unless it is marked :func:`through_service`, whatever its class: the group checks."""


class CommandGroup(click.Group):
    """A group whose commands refuse ``--via-dbus`` unless marked :func:`through_service`.

    The check wraps each command's callback when it joins the group (as click's own
    decorators wrap callbacks): it runs after the command line is parsed, so ``--help``
    still works, and it holds for commands made anywhere, with any click class.
    """

    command_class = LunresyncCommand
    group_class = type  # subgroups are of this group's class

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group) and cmd.callback is not None:
            cmd.callback = _refusing(cmd.callback)
        super().add_command(cmd, name)


def _refusing(callback: Any) -> Any:
    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        if via_dbus(ctx) and not getattr(ctx.command, "via_dbus", False):
            raise NotSupported(f"{command_name(ctx)} is not available through the service",
                               hint=DIRECT_HINT)
        return callback(*args, **kwargs)

    return checked


def through_service(command: C) -> C:
    """Mark a command as one that works with ``--via-dbus`` (with the same output)."""
    command.via_dbus = True  # type: ignore[attr-defined]
    return command


def command_name(ctx: click.Context) -> str:
    """``lun create``: the command's words, without the program's name (which is
    ``python -m lunresync.cli.main`` when run that way)."""
    words: list[str] = []
    current: click.Context | None = ctx
    while current is not None and current.parent is not None:
        words.append(current.info_name or "")
        current = current.parent
    return " ".join(reversed(words))


def root_params(ctx: click.Context) -> dict[str, Any]:
    return ctx.find_root().params


def via_dbus(ctx: click.Context) -> bool:
    """Whether the command goes through a service (``--remote`` is always through one)."""
    params = root_params(ctx)
    return bool(params.get("via_dbus") or params.get("remote"))


def given(ctx: click.Context, name: str) -> bool:
    """True when the option has a value of the user's: typed, or from its environment
    variable."""
    return ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE,
                                              click.core.ParameterSource.ENVIRONMENT)


def refuse_through_service(ctx: click.Context, what: str, hint: str) -> None:
    """NotSupported when the command runs with ``--via-dbus``: ``what`` (an option, a
    kind of destination) needs the pool at hand."""
    if via_dbus(ctx):
        raise NotSupported(f"{what} is not available through the service", hint=hint)
