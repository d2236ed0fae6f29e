"""Events an IKE SA reports: the one record of what happened, for the runtime,
the CLI and the tests alike.

Key material fields are excluded from ``repr`` so events can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from vmip.ike.payloads import TrafficSelector
from vmip.ipsec.sa import Direction, Mode, SaParams

Address = IPv4Address | IPv6Address


class IkeEvent:
    """Base of every IKE event."""


@dataclass(frozen=True)
class IkeSaEstablished(IkeEvent):
    name: str
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    remote_id: str
    suite: str
    nat_detected: bool
    #: The peer sent INITIAL_CONTACT: it holds no other IKE SA with us, so any
    #: other one we hold with the same identity is stale (RFC 7296 §2.4).
    initial_contact: bool = False


@dataclass(frozen=True)
class IkeSaRekeyed(IkeEvent):
    name: str
    old_spi_i: bytes
    old_spi_r: bytes
    spi_i: bytes
    spi_r: bytes
    suite: str


@dataclass(frozen=True)
class IkeSaDeleted(IkeEvent):
    name: str
    spi_i: bytes
    spi_r: bytes
    by_peer: bool


@dataclass(frozen=True)
class IkeSaFailed(IkeEvent):
    name: str
    reason: str


@dataclass(frozen=True)
class AuthenticationFailed(IkeEvent):
    name: str
    reason: str
    #: True when the peer refused our AUTH, False when we refused the peer's.
    by_peer: bool


@dataclass(frozen=True)
class ChildSaCreated(IkeEvent):
    """A CHILD_SA ready for the SAD: one inbound and one outbound ESP SA."""

    ike_name: str
    name: str
    spi_in: int
    spi_out: int
    suite: str
    mode: Mode
    esn: bool
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    #: ESP goes in UDP (RFC 3948) on the IKE ports when NAT-T is in use.
    udp_encap: bool
    enc_key_in: bytes = field(repr=False)
    auth_key_in: bytes = field(repr=False)
    enc_key_out: bytes = field(repr=False)
    auth_key_out: bytes = field(repr=False)

    def sa_params(self, selectors_in: tuple = (), selectors_out: tuple = ()) -> tuple[SaParams, SaParams]:
        """(inbound, outbound) :class:`SaParams` for the SAD (SADB UPDATE/ADD)."""
        local: Address = ip_address(self.local_addr[0])
        remote: Address = ip_address(self.remote_addr[0])
        inbound = SaParams(self.spi_in, Direction.IN, remote, local, self.suite, self.enc_key_in,
                           self.auth_key_in, self.mode, self.esn, name=self.name,
                           selectors=selectors_in, origin="ike")
        outbound = SaParams(self.spi_out, Direction.OUT, local, remote, self.suite, self.enc_key_out,
                            self.auth_key_out, self.mode, self.esn, name=self.name,
                            selectors=selectors_out, origin="ike")
        return inbound, outbound


@dataclass(frozen=True)
class ChildSaRekeyed(IkeEvent):
    """A rekeyed CHILD_SA: install ``new``; the old SPIs stay valid until
    the matching :class:`ChildSaDeleted` (RFC 7296 §2.8)."""

    old_spi_in: int
    old_spi_out: int
    new: ChildSaCreated
    #: The peer started the rekey: it deletes the old SA, and starts sending on
    #: the new one only once it has our answer (RFC 7296 §2.8).
    by_peer: bool = False


@dataclass(frozen=True)
class ChildSaDeleted(IkeEvent):
    ike_name: str
    name: str
    spi_in: int
    spi_out: int
    by_peer: bool


@dataclass(frozen=True)
class ChildSaFailed(IkeEvent):
    ike_name: str
    name: str
    reason: str


@dataclass(frozen=True)
class PeerAlive(IkeEvent):
    """A message arrived on an IKE SA whose peer has authenticated (liveness,
    locator learning); never during IKE_SA_INIT/IKE_AUTH, whose keys come from
    an unauthenticated DH (RFC 7296 §2.15)."""

    name: str
    remote_addr: tuple[str, int]


@dataclass(frozen=True)
class IkeSaAddressesUpdated(IkeEvent):
    """MOBIKE (RFC 4555 §3.5): the IKE SA now runs between new addresses, and
    its tunnel-mode CHILD_SAs move with it (the runtime updates the SAD).

    Emitted by the responder when an UPDATE_SA_ADDRESSES request arrived from a
    new address and that address passed the return routability check, and by
    the initiator when its UPDATE_SA_ADDRESSES was answered.
    """

    name: str
    old_local: tuple[str, int]
    old_remote: tuple[str, int]
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    udp_encap: bool
