"""The storage: a software storage array on real kernel devices.

LUNs are loop devices over sparse images in a pool (or adopted block devices), exposed as
``/dev/mapper/lunresync-NAME``; shadow copies are dm snapshots (differential) or full
copies (clone), taken as snapshot sets; the SQLite catalog is the source of truth.
"""
