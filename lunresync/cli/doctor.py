"""How ``lunresync doctor`` shows capabilities on a terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from lunresync.kernel.capabilities import (
    OPTIONAL_TARGETS,
    REQUIRED_TARGETS,
    Availability,
    Capabilities,
)

_STYLE = {Availability.LOADED: "green", Availability.LOADABLE: "cyan",
          Availability.MISSING: "red"}


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def render(caps: Capabilities, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"lunresync doctor - kernel {caps.kernel}", title_justify="left")
    table.add_column("what")
    table.add_column("state")
    table.add_column("needed for")
    table.add_row("device-mapper", _yes(caps.device_mapper), "everything")
    for name in (*REQUIRED_TARGETS, *OPTIONAL_TARGETS):
        state = caps.targets[name]
        use = "required" if name in REQUIRED_TARGETS else {
            "clone": "clone engine (optional)",
            "thin-pool": "thin shadow copies (optional)",
            "thin": "thin shadow copies (optional)",
            "era": "exact record of writes during a restore (optional)",
            "flakey": "fault-injection tests (optional)",
        }[name]
        table.add_row(f"  target {name}", f"[{_STYLE[state]}]{state.value}[/]", use)
    table.add_row("loop devices", f"[{_STYLE[caps.loop]}]{caps.loop.value}[/]", "LUN images")
    table.add_row("udev running", _yes(caps.udev_running), "device nodes, symlinks")
    table.add_row("root", _yes(caps.root), "changing devices")
    if caps.missing_tools:
        table.add_row("programs", "[red]missing " + ", ".join(caps.missing_tools) + "[/]", "")
    console.print(table)
    for note in caps.notes:
        console.print(f"note: {note}")
    style = "green" if caps.ready else "bold red"
    console.print(f"[{style}]{caps.verdict}[/]")


def capabilities_from_json(report: dict[str, Any]) -> Capabilities:
    """Capabilities again from ``Capabilities.to_json()`` (``ready`` and ``verdict`` follow
    from the rest): what ``doctor`` shows of a report that came from the service."""
    return Capabilities(
        kernel=str(report["kernel"]),
        device_mapper=bool(report["device_mapper"]),
        targets={str(name): Availability(state) for name, state in report["targets"].items()},
        loop=Availability(report["loop"]),
        udev_running=bool(report["udev_running"]),
        root=bool(report["root"]),
        missing_tools=tuple(report["missing_tools"]),
        problems=tuple(report["problems"]),
        notes=tuple(report["notes"]),
    )
