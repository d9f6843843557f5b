"""The provider: what a requester talks to (the VSS hardware provider's role).

:class:`~lunresync.provider.provider.Provider` joins the storage (LUNs, shadow copies,
snapshot sets, transport: :mod:`lunresync.storage`) and the resync engines and their jobs
(:mod:`lunresync.engine`), and does the work that needs both.
"""
