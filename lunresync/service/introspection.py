"""The introspection XML of every ``org.lunresync1.*`` interface, made from the classes the
service exports, so that the reference file cannot drift from the code unnoticed.

``data/org.lunresync1.xml`` is this module's output (a service-tier test compares them);
regenerate it after changing an interface::

    python -m lunresync.service.introspection > lunresync/service/data/org.lunresync1.xml
    python -m lunresync.service.introspection --check lunresync/service/data/org.lunresync1.xml

:func:`mismatches` compares what a running service introspects with the file.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from importlib import resources
from types import SimpleNamespace
from typing import Any

from dbus_fast import introspection as intr
from dbus_fast.service import ServiceInterface

from . import api
from .objects.job import JobObject
from .objects.lun import LunObject
from .objects.manager import ManagerObject
from .objects.restore_session import RestoreSessionObject
from .objects.shadow_copy import ShadowCopyObject
from .objects.snapshot_set import SnapshotSetObject
from .objects.task import Task, TaskObject
from .objects.writer import WriterObject

REFERENCE = "org.lunresync1.xml"  # in lunresync/service/data/
DOCTYPE = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
           ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n')
NOTE = (" The org.lunresync1 D-Bus API, version 1 (docs/dbus.md). Generated from"
        " lunresync/service/objects/ by `python -m lunresync.service.introspection`:"
        " do not edit. ")

_NO_ID = "0" * 32


def exported_interfaces() -> list[ServiceInterface]:
    """One instance of each exported class, in the API's order. Introspection reads only
    the class's members, so the context, records, session and writer here are
    placeholders (no service is needed)."""
    nobody: Any = None
    session: Any = SimpleNamespace(id=_NO_ID)
    writer: Any = SimpleNamespace(owner="")
    record = {"id": _NO_ID}
    return [
        ManagerObject(nobody),
        LunObject(nobody, record),
        ShadowCopyObject(nobody, record),
        SnapshotSetObject(nobody, record),
        JobObject(nobody, record),
        RestoreSessionObject(nobody, session, ""),
        WriterObject(nobody, writer, api.path_of("writer", "1")),
        TaskObject(nobody, Task("backup", ""), api.path_of("task", "1")),
    ]


def interfaces() -> list[intr.Interface]:
    return [obj.introspect() for obj in exported_interfaces()]


def document() -> str:
    """The reference XML: a node holding every org.lunresync1 interface."""
    node = ET.Element("node")
    node.append(ET.Comment(NOTE))
    for interface in interfaces():
        node.append(interface.to_xml())
    ET.indent(node, space="  ")
    return DOCTYPE + ET.tostring(node, encoding="unicode") + "\n"


def packaged_document() -> str:
    """The reference file as installed with the package."""
    return (resources.files(__package__) / "data" / REFERENCE).read_text(encoding="utf-8")


def canonical(interface: intr.Interface) -> str:
    """An interface as comparable text (no layout, no comments)."""
    return ET.tostring(interface.to_xml(), encoding="unicode")


def lunresync_interfaces(xml: str) -> dict[str, str]:
    """Name -> canonical text of the org.lunresync1 interfaces in introspection XML."""
    node = intr.Node.parse(xml)
    return {i.name: canonical(i) for i in node.interfaces
            if i.name.startswith(f"{api.BUS_NAME}.")}


def mismatches(introspected: str, reference: str | None = None) -> list[str]:
    """The org.lunresync1 interfaces of one object's Introspect reply that differ from the
    reference (default: the packaged file), or that the reference lacks; [] when all
    match. Standard interfaces (org.freedesktop.DBus.*) are not compared."""
    known = lunresync_interfaces(packaged_document() if reference is None else reference)
    found = lunresync_interfaces(introspected)
    return [name for name, text in sorted(found.items()) if known.get(name) != text]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lunresync.service.introspection",
        description="Print the introspection XML of the org.lunresync1 interfaces.")
    parser.add_argument("--check", metavar="FILE",
                        help="compare FILE with the generated XML instead: exit 1 if they"
                             " differ")
    args = parser.parse_args(argv)
    text = document()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    with open(args.check, encoding="utf-8") as stream:
        if stream.read() == text:
            return 0
    print(f"{args.check} differs from the interfaces in lunresync/service/objects/:"
          " regenerate it with python -m lunresync.service.introspection", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
