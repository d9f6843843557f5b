"""Test tiers and what every tier shares.

Every test carries exactly one tier marker:

- ``unit``: pure logic; no root, no devices; runs anywhere (the host in CI).
- ``service``: the D-Bus service on a real dbus-daemon (``tests/dbus_support.py``) with
  the project's bus policy; needs root and dbus-daemon, no device-mapper; runs on the
  host (``./dev.sh test``). Elsewhere it is skipped, with the reason; with
  ``LUNRESYNC_EXPECT_SERVICE_TIER=1`` (``./dev.sh test`` sets it) a service test that
  cannot run fails instead.
- ``kernel``: needs root and device-mapper; runs in the test VM (``tests/vm.py``). On a
  machine without them it is skipped, with the reason. Inside the test VM it is never
  skipped: a kernel test that cannot run there fails, loudly.
- ``reboot``: boots the test VM itself (more than once, to power it off mid-copy); runs on
  the host, after the kernel tier (``./dev.sh test``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lunresync.kernel.capabilities import has_device_mapper

IN_TEST_VM = os.environ.get("LUNRESYNC_TEST_VM") == "1"
#: How much slower than the reference this machine runs today (tests/vm.py measures it in
#: the test VM and sets it; 1 elsewhere). The same build machines run twice as slow on
#: some days: a wait that only guards against a hang must not trip then.
SLOWNESS = max(1.0, float(os.environ.get("LUNRESYNC_TEST_SLOWNESS", "1") or 1))
EXPECT_SERVICE_TIER = os.environ.get("LUNRESYNC_EXPECT_SERVICE_TIER") == "1"
TIERS = ("unit", "service", "kernel", "reboot")
VM_HINT = "run it in the test VM: python3 tests/vm.py -- python3 -m pytest -m kernel"


def patience(seconds: float) -> float:
    """The limit of a wait that only guards against a hang: ``seconds`` on a reference
    day (give it a wide margin over what the step takes), times :data:`SLOWNESS`. A test
    of a timeout's own behaviour passes its timeout as it is, not through this."""
    return seconds * SLOWNESS


def kernel_unavailable_reason() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root"
    if not has_device_mapper():
        return "this kernel has no device-mapper"
    if not Path("/dev/loop-control").exists():
        return "this kernel has no loop devices"
    return None


def service_unavailable_reason() -> str | None:
    """Why service tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (the service owns org.lunresync1 as root, clients run as nobody)"
    from tests.dbus_support import dbus_unavailable_reason  # imports dbus-fast: only here

    return dbus_unavailable_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tiers = [t for t in TIERS if item.get_closest_marker(t) is not None]
        if len(tiers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: mark it with exactly one of {', '.join(TIERS)} (has {tiers})"
            )


class _Shard:
    """``LUNRESYNC_TEST_SHARD=K/N`` (or ``K/N@S1,...,SN``): run only this VM's share of
    the tests (tests/shards.py)."""

    def __init__(self, spec: str) -> None:
        from tests.shards import parse_shard

        self.index, self.count, self.shares = parse_shard(spec)

    @pytest.hookimpl(trylast=True)  # after -m has deselected the other tiers
    def pytest_collection_modifyitems(self, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        from tests.shards import assign, load_weights

        shards = assign([item.nodeid for item in items], self.count, load_weights(),
                        self.shares)
        mine = set(shards[self.index - 1])
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in mine])
        items[:] = [item for item in items if item.nodeid in mine]


def pytest_configure(config: pytest.Config) -> None:
    shard = os.environ.get("LUNRESYNC_TEST_SHARD")
    if shard:
        config.pluginmanager.register(_Shard(shard), "lunresync-shard")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("service") is not None:
        _check_service_tier()
    if item.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable_reason()
    if reason is None:
        return
    if IN_TEST_VM:
        pytest.fail(f"kernel test cannot run in the test VM: {reason}", pytrace=False)
    pytest.skip(f"kernel tier: {reason}; {VM_HINT}")


def _check_service_tier() -> None:
    reason = service_unavailable_reason()
    if reason is None:
        return
    if EXPECT_SERVICE_TIER:
        pytest.fail(f"service test cannot run: {reason} (LUNRESYNC_EXPECT_SERVICE_TIER=1)",
                    pytrace=False)
    pytest.skip(f"service tier: {reason}; ./dev.sh test runs it as root")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In the test VM a skipped kernel test is a failure: it is where they must run."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if IN_TEST_VM and report.skipped and item.get_closest_marker("kernel") is not None:
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped inside the test VM: {report.longrepr}"
