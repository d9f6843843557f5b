"""The provider: what a requester talks to (the VSS hardware provider's role).

:class:`Provider` joins the storage (LUNs, shadow copies, snapshot sets, transport:
:mod:`lunresync.storage`) and the resync engines and their jobs
(:mod:`lunresync.engine`), and does the work that needs both. This package is the
public Python API's entry point (``docs/api.md``)::

    from lunresync.provider import Provider, ResyncPair

    with Provider.open("/var/lib/lunresync") as provider:
        job = provider.resync_luns([ResyncPair(shadow_id, "db")])
        job.wait()
"""

from .provider import Provider, ResyncJob, ResyncPair

__all__ = ["Provider", "ResyncJob", "ResyncPair"]
