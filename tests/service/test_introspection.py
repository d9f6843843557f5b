"""lunresync/service/data/org.lunresync1.xml is the API the service serves: the file is
what the interface classes generate, and the running service introspects as the file
says (here the Manager, the one object of an empty pool; the kernel tier compares the
others)."""

from __future__ import annotations

import pytest
from dbus_fast import introspection as intr

from lunresync.service import api, introspection
from tests.dbus_support import REPO, PrivateBus, ServiceProcess

from .support import Call, call_all, call_all_as_nobody

pytestmark = pytest.mark.service

REFERENCE = REPO / "lunresync" / "service" / "data" / "org.lunresync1.xml"
INTERFACES = [api.MANAGER, api.LUN, api.SHADOW_COPY, api.SNAPSHOT_SET, api.JOB,
              api.RESTORE_SESSION, api.WRITER, api.TASK]
REGENERATE = ("regenerate it: python -m lunresync.service.introspection >"
              " lunresync/service/data/org.lunresync1.xml")


def test_the_file_is_what_the_classes_generate() -> None:
    assert REFERENCE.read_text() == introspection.document(), REGENERATE
    assert introspection.main(["--check", str(REFERENCE)]) == 0


def test_the_file_holds_every_interface() -> None:
    node = intr.Node.parse(REFERENCE.read_text())
    assert [i.name for i in node.interfaces] == INTERFACES


def test_the_running_manager_introspects_as_the_file(
        bus: PrivateBus, service: ServiceProcess) -> None:
    introspect = Call(api.MANAGER_PATH, "org.freedesktop.DBus.Introspectable", "Introspect")
    (reply,) = call_all(bus.address, [introspect])
    assert reply.error is None, reply.value
    served = introspection.lunresync_interfaces(reply.value[0])
    assert list(served) == [api.MANAGER]
    assert introspection.mismatches(reply.value[0]) == [], REGENERATE
    # Everybody sees the same (introspection is open to all by the policy).
    (as_nobody,) = call_all_as_nobody(bus.address, [introspect])
    assert introspection.lunresync_interfaces(as_nobody.value[0]) == served


def test_a_difference_is_found() -> None:
    """The comparison sees a changed signature (it does not pass by comparing nothing)."""
    reference = introspection.document()
    changed = reference.replace('<property name="ApiVersion" type="u"',
                                '<property name="ApiVersion" type="s"')
    assert changed != reference
    assert introspection.mismatches(changed, reference) == [api.MANAGER]
    assert introspection.mismatches(reference, reference) == []
