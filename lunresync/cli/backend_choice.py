"""Where a command acts: the backend the root options choose (:func:`backend_for`), or,
for a command that only acts on the pool directly, the pool's provider (:func:`opened`).

Each backend is imported here, when a command asks for it, and never at start-up: the
direct one brings the provider, the engines and the kernel layer, the D-Bus one brings
dbus-fast, and Python starts slowly in the test VM (``lunresync --help`` pays for
neither).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import click

from .base import given, root_params, via_dbus

if TYPE_CHECKING:
    from lunresync.provider.provider import Provider

    from .results import Backend


def backend_for(ctx: click.Context) -> Backend:
    """The backend the root options ask for (``--via-dbus``, ``--remote``, ``--bus``,
    ``--pool``)."""
    root = ctx.find_root()
    if not via_dbus(ctx):
        from .backend import DirectBackend

        return DirectBackend(root.params.get("pool"))
    from .dbus_backend import connect  # dbus-fast is imported only here

    # Only a pool the user named is checked against the service's (not the default).
    pool = root.params.get("pool") if given(root, "pool") else None
    return connect(root.params.get("bus"), pool=pool or None,
                   remote=root.params.get("remote"), ssh_config=root.params.get("ssh_config"))


def opened(ctx: click.Context) -> AbstractContextManager[Provider]:
    """The provider of the pool ``--pool`` names, for ``with``; the pool is opened when the
    block begins and closed when it ends."""
    from .backend import open_pool

    return open_pool(root_params(ctx).get("pool"))
