"""Per-packet ancillary data between the IRO remap engine and MIPv6 (draft §5.1.1).

IRO removes HAO and RH2 from the wire, so the MIPv6 code needs another path
to learn and to choose on-wire addresses: the "ancillary data" of the local
packet structure.  Both directions use the same tiny record:

- inbound, the on-wire addresses a remap rule replaced: ``src`` is the
  on-wire source the peer used (its CoA), ``dst`` the on-wire destination
  (our CoA).  A field whose address was not changed holds ``::``
  (draft §5.1.1: "the associated ancillary data MUST contain the
  unspecified address");
- outbound, the addresses MIPv6 chose for a packet it sends: ``src`` the
  CoA to send from (the MN's rule 1 of draft §3.1), ``dst`` the peer's CoA to
  send to (the CN's rule 3).  ``::`` means "none": the rule then leaves the
  field alone (§3.1 rule 3: "if not null").

Addresses are kept as 16 raw bytes because that is what the per-packet code
compares and copies; the ``*_address`` properties give ``IPv6Address``
objects for the MIPv6 code, ``None`` for ``::``.
"""

from __future__ import annotations

from ipaddress import IPv6Address
from typing import NamedTuple

#: The unspecified address ``::`` as 16 raw bytes: "no address" in ancillary data.
UNSPECIFIED = bytes(16)


def _optional(raw: bytes) -> IPv6Address | None:
    return None if raw == UNSPECIFIED else IPv6Address(raw)


class Ancillary(NamedTuple):
    """On-wire source and destination handed across the remap engine."""

    src: bytes = UNSPECIFIED
    dst: bytes = UNSPECIFIED

    @classmethod
    def of(cls, src: IPv6Address | None = None, dst: IPv6Address | None = None) -> Ancillary:
        """Build from addresses; ``None`` stands for ``::`` (nothing)."""
        return cls(UNSPECIFIED if src is None else src.packed,
                   UNSPECIFIED if dst is None else dst.packed)

    @property
    def src_address(self) -> IPv6Address | None:
        return _optional(self.src)

    @property
    def dst_address(self) -> IPv6Address | None:
        return _optional(self.dst)

    def __bool__(self) -> bool:  # "was anything remapped / chosen?"
        return self.src != UNSPECIFIED or self.dst != UNSPECIFIED


#: Inbound result when no address was changed.
NOTHING_REMAPPED = Ancillary()
