"""lunresync: restore a LUN from a shadow copy while it stays online.

Layers, top to bottom (nothing below knows what is above):
``cli`` / ``service`` -> ``requester`` -> ``engine`` -> ``provider`` -> ``kernel``.
"""

__version__ = "0.1.0"
