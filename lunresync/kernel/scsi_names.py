"""The names a LUN's SCSI export is known by, and the names and secrets a user gives one,
checked (``kernel/lio.py`` builds the exports; docs/scsi.md says what each name is).

The LUN's 128-bit id is what a host knows the disk by: its unit serial (VPD page 80) is
the id's 32 hex digits, and LIO builds the NAA designator of VPD page 83 from the serial:
``6`` (NAA IEEE Registered Extended), the company id (LIO's default, 001405), then the
first 25 hex digits of the serial (100 bits: all that fits).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from lunresync.errors import InvalidArgument

#: LIO's default IEEE company id, the OUI in every NAA designator it builds.
COMPANY_ID = "001405"
LUN_ID = re.compile(r"[0-9a-f]{32}")


def check_lun_id(lun_id: str) -> str:
    if not LUN_ID.fullmatch(lun_id):
        raise InvalidArgument(f"{lun_id!r} is not a LUN id (32 lowercase hex digits)")
    return lun_id


def unit_serial(lun_id: str) -> str:
    """VPD page 80: the LUN's id, its 32 hex digits."""
    return check_lun_id(lun_id)


def naa_designator(lun_id: str) -> str:
    """VPD page 83's NAA designator of the LUN's disk, as 32 hex digits (udev's
    ``ID_WWN_WITH_EXTENSION`` without its ``0x``): LIO builds it from the unit serial."""
    return "6" + COMPANY_ID + check_lun_id(lun_id)[:25]


def loopback_target(lun_id: str) -> str:
    """The loopback target port's WWN (an NAA 5 name from the LUN id)."""
    return "naa.5" + COMPANY_ID + check_lun_id(lun_id)[:9]


#: The IQN prefix of lunresync's iSCSI targets.
IQN_PREFIX = "iqn.2026-12.org.lunresync:"
_IQN = re.compile(r"iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9.:_-]{1,200})?")


def iscsi_target(lun_id: str) -> str:
    """The iSCSI target name (IQN) of the LUN's export."""
    return IQN_PREFIX + check_lun_id(lun_id)


def check_iqn(name: str) -> str:
    """An initiator's iSCSI name (``iqn.YYYY-MM.reversed.domain[:suffix]``, RFC 3720)."""
    if not _IQN.fullmatch(name):
        raise InvalidArgument(f"{name!r} is not an iSCSI name (iqn.YYYY-MM.domain[:suffix])")
    return name


def check_portal(portal: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (IPv4; the port 3260 if left out) as (address, port)."""
    address, _, port_text = portal.partition(":")
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        raise InvalidArgument(f"{portal!r} is not a portal (IPv4ADDRESS[:PORT])") from None
    port = 3260 if not port_text else int(port_text) if port_text.isdigit() else 0
    if not 0 < port < 65536:
        raise InvalidArgument(f"{portal!r}: the port must be 1 to 65535")
    return str(parsed), port


def loopback_initiator(lun_id: str) -> str:
    """The loopback initiator port of the LUN's export (the I_T nexus)."""
    return "naa.5" + COMPANY_ID + check_lun_id(lun_id)[9:18]


# CHAP (RFC 3720 section 8.2.1: a secret of at least 12 bytes; LIO takes up to 255): a
# user name and a secret of printable ASCII without spaces, so that a secret file's line
# and configfs's attribute hold the same bytes.
_CHAP_USER = re.compile(r"[A-Za-z0-9._:@-]{1,255}")
_CHAP_SECRET = re.compile(r"[!-~]{12,255}")


@dataclass(frozen=True)
class ChapCredential:
    """What an initiator must answer to log in (one-way CHAP). The secret never appears
    in a repr, a log line or a view."""

    user: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _CHAP_USER.fullmatch(self.user):
            raise InvalidArgument(f"{self.user!r} is not a CHAP user name (1-255 of"
                                  " A-Z a-z 0-9 . _ : @ -)")
        if not _CHAP_SECRET.fullmatch(self.secret):
            raise InvalidArgument("a CHAP secret is 12 to 255 printable ASCII characters"
                                  " without spaces")
