"""What the mobility cores report: one source of truth for runtime, CLI, dashboard and tests.

Every core (:class:`~vmip.mobility.mn.MobileNode`,
:class:`~vmip.mobility.ha.HomeAgent`,
:class:`~vmip.mobility.cn.Correspondent`) queues these frozen dataclasses;
``next_event()`` pops them in the order things happened.

Two kinds:

* **Actions** (:class:`Action` subclasses) ask the integrator to change the
  data path.  They state the *new* state, not a delta, so applying the last
  one received is always right:

  ==========================  ====  ==================================================
  event                       who   what the integrator does
  ==========================  ====  ==================================================
  :class:`CoaChanged`         MN    every remap rule naming ``old`` now names ``new``
                                    (``SpiTracker.move``; draft §6.1, brief §5)
  :class:`TunnelEndpointChanged` MN, HA  MIGRATE the MN-HA tunnel SA's outer endpoint to
                                    ``coa``; ``None``: no tunnel (MN at home, binding gone)
  :class:`DataPathChanged`    MN    ``direct``: install the data rules of draft §5.2
                                    examples 1/3 for the IPsec data SAs HoA <-> peer with
                                    ``coa`` (``SpiTracker.bind_data``); else remove them
                                    (``unbind``): IPsec data goes back through the HA tunnel
  :class:`AcceptFrom`         CN    inbound data rule "exp. src: coa, remap. src: hoa" on
                                    the IPsec data SAs local <-> hoa; ``None``: remove it
  :class:`SendTo`             CN    outbound data rule "exp. dst: hoa, remap. dst: coa";
                                    ``None``: remove it (traffic to the HoA, via the HA)
  :class:`CareOfAddressesChanged` MN  the CoAs registered by BID (RFC 5648), primary first
  :class:`PathsChanged`       all   the bound (BID, CoA) paths with one peer: accept data
                                    from / send data to each (docs/multi-coa.md)
  ==========================  ====  ==================================================

  Only IPsec data SAs are ever affected: non-IPsec traffic keeps using the
  HA tunnel whatever the bindings say (draft §3.6, "safe by default").

* **Reports** (:class:`Report` subclasses): what happened, for logs, the
  control socket and tests.

Field conventions: ``peer`` is always the *other* party (on the MN: the HA
or CN address; on an HA or CN: the MN's home address); ``lifetime`` is in
seconds; addresses are :class:`ipaddress.IPv6Address`.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Literal

AotPurpose = Literal["binding", "early-test", "home-test"]
TimeoutStage = Literal["bu", "aotr", "early-test"]


@dataclass(frozen=True, slots=True)
class MobilityEvent:
    """Base of every event a mobility core reports."""


@dataclass(frozen=True, slots=True)
class Action(MobilityEvent):
    """An event the integrator must act on (it changes the data path)."""


@dataclass(frozen=True, slots=True)
class Report(MobilityEvent):
    """An event that only reports."""


# ---------------------------------------------------------------------------
# Actions


@dataclass(frozen=True, slots=True)
class CoaChanged(Action):
    """The MN moved (draft §6.1): rules naming ``old`` must name ``new``.

    ``None`` stands for "no CoA" (at home).  Emitted before the BU to the HA.
    """

    hoa: IPv6Address
    old: IPv6Address | None
    new: IPv6Address | None


@dataclass(frozen=True, slots=True)
class TunnelEndpointChanged(Action):
    """The MN-HA tunnel's outer endpoint on the MN's side is now ``coa`` (MIGRATE).

    The MN emits it when it moves (it sends from the new CoA at once); the
    HA when it accepts a home registration for a new CoA.  ``None``: no
    tunnel (the MN is at home, or the HA's binding is gone).
    """

    hoa: IPv6Address
    coa: IPv6Address | None


@dataclass(frozen=True, slots=True)
class DataPathChanged(Action):
    """MN side: IPsec data SAs between ``hoa`` and ``peer`` go direct from ``coa`` or not.

    ``direct`` is true as soon as the BU to the CN leaves (draft §4.5.1: the
    MN "starts directing its traffic instantly after the emission of the
    BU"); false when the registration fails, expires, or the MN moves or
    returns home (then ``coa`` is ``None``).
    """

    hoa: IPv6Address
    coa: IPv6Address | None
    peer: IPv6Address
    direct: bool


@dataclass(frozen=True, slots=True)
class AcceptFrom(Action):
    """CN side: accept IPsec data for ``hoa`` arriving from ``coa`` (``None``: from nowhere direct).

    Installed when a valid BU arrives, before any proof (draft §4.5.1).
    ``local`` is the CN's own address the MN registered with.
    """

    local: IPv6Address
    hoa: IPv6Address
    coa: IPv6Address | None


@dataclass(frozen=True, slots=True)
class SendTo(Action):
    """CN side: send IPsec data for ``hoa`` to ``coa`` (``None``: to the HoA, via the HA).

    Only after the proof of CoA ownership (draft §4.5.1; appendix A says the
    opposite, see docs/mobility.md).
    """

    local: IPv6Address
    hoa: IPv6Address
    coa: IPv6Address | None


@dataclass(frozen=True, slots=True)
class CareOfAddressesChanged(Action):
    """MN side, multiple care-of addresses (RFC 5648): the CoAs it now uses, by BID.

    ``coas`` is the full set, the primary (preferred) one first; empty when
    none is usable.  The primary one is also reported by :class:`CoaChanged`.
    """

    hoa: IPv6Address
    coas: tuple[tuple[int, IPv6Address], ...]


@dataclass(frozen=True, slots=True)
class PathsChanged(Action):
    """The bound paths towards one peer, by BID (RFC 5648): the new full sets.

    ``local``/``peer`` are SA-level: on the MN its HoA and the CN or HA; on
    a CN or HA its own address and the MN's HoA.  ``accept``: the (BID,
    MN's CoA) pairs data is accepted from (CN/HA), or direct data is allowed
    on (MN); ``send``: the pairs that may be sent to (on a CN only after the
    CoA's address ownership test, draft §4.5.1).  On the MN and the HA
    ``send`` equals ``accept``.  Both empty: no multi-CoA binding with that
    peer any more (today's single-binding events rule).  Emitted only when
    BIDs are in use with that peer; the lowest bound BID comes first on a
    CN or HA, the primary first on the MN.
    """

    local: IPv6Address
    peer: IPv6Address
    accept: tuple[tuple[int, IPv6Address], ...]
    send: tuple[tuple[int, IPv6Address], ...]


# ---------------------------------------------------------------------------
# Reports: registration (MN side)


@dataclass(frozen=True, slots=True)
class BindingUpdateSent(Report):
    """A BU left (``attempt`` 1 for the first transmission of a registration)."""

    peer: IPv6Address
    hoa: IPv6Address
    coa: IPv6Address | None
    sequence: int
    lifetime: int
    attempt: int
    #: The Binding Identifier (RFC 5648 §6.1) the BU carried; ``None``: none.
    bid: int | None = None


@dataclass(frozen=True, slots=True)
class BindingAccepted(Report):
    """MN side: ``peer`` accepted the binding; ``lifetime`` 0 means deregistered.

    ``rtt`` runs from the BU the BA acknowledges (by sequence number) to the
    BA, so it includes an AOTC/AOTR round trip when the CN asked for proof.
    """

    peer: IPv6Address
    hoa: IPv6Address
    coa: IPv6Address | None
    lifetime: int
    rtt: float
    #: Home registrations: the K bit of the BA, i.e. the HA's key management
    #: follows the CoA (RFC 6275 §11.7.3); false when the MN did not ask.
    key_management_mobility: bool = False
    #: The BID of the acknowledged binding (RFC 5648); ``None``: a single binding.
    bid: int | None = None


@dataclass(frozen=True, slots=True)
class BindingRefused(Report):
    """MN side: a BA with a rejection status (128 and above, except 135 which is recovered)."""

    peer: IPv6Address
    hoa: IPv6Address
    coa: IPv6Address | None
    status: int
    bid: int | None = None


@dataclass(frozen=True, slots=True)
class RegistrationTimeout(Report):
    """MN side: the retransmission interval reached MAX_BINDACK_TIMEOUT with no answer.

    ``stage`` says what went unanswered: the BU, the AOTR (BA missing after
    a challenge), or an early test.  BUs and AOTRs go on at the slow rate
    (RFC 6275 §11.8 allows it); an early test stops.
    """

    peer: IPv6Address
    hoa: IPv6Address
    coa: IPv6Address | None
    stage: TimeoutStage
    bid: int | None = None


@dataclass(frozen=True, slots=True)
class BindingErrorReceived(Report):
    """MN side: a Binding Error came from ``peer`` (RFC 6275 §6.1.9 status)."""

    peer: IPv6Address
    hoa: IPv6Address
    status: int


@dataclass(frozen=True, slots=True)
class AotOfferSent(Report):
    """MN side: an AOTO offering to prove ``address`` left for ``peer`` (early test, draft §4.5.2)."""

    peer: IPv6Address
    hoa: IPv6Address
    address: IPv6Address


@dataclass(frozen=True, slots=True)
class AotResponseSent(Report):
    """MN side: an AOTR answering a challenge of ``address`` left for ``peer``."""

    peer: IPv6Address
    hoa: IPv6Address
    address: IPv6Address


@dataclass(frozen=True, slots=True)
class AotStatusReceived(Report):
    """MN side: an AOTS (code 0 "AOTO not allowed", 1 "proof valid") about ``address``."""

    peer: IPv6Address
    hoa: IPv6Address
    address: IPv6Address | None
    code: int


# ---------------------------------------------------------------------------
# Reports: binding caches (HA and CN side)


@dataclass(frozen=True, slots=True)
class BindingCached(Report):
    """HA/CN side: a binding was created or refreshed; ``home`` for an HA's home registration."""

    hoa: IPv6Address
    coa: IPv6Address
    lifetime: int
    home: bool
    bid: int | None = None


@dataclass(frozen=True, slots=True)
class BindingDeregistered(Report):
    """A binding was removed on request (lifetime 0 or CoA = HoA), on either side."""

    peer: IPv6Address
    hoa: IPv6Address
    #: Only this BID's binding was removed (RFC 5648 §5.6); ``None``: all of them.
    bid: int | None = None


@dataclass(frozen=True, slots=True)
class BindingExpired(Report):
    """A binding's lifetime ran out without a refresh, on either side."""

    peer: IPv6Address
    hoa: IPv6Address
    coa: IPv6Address | None
    bid: int | None = None


@dataclass(frozen=True, slots=True)
class AotChallengeSent(Report):
    """CN side: an AOTC with a nonce left for ``address`` (``purpose`` says why)."""

    peer: IPv6Address
    hoa: IPv6Address
    address: IPv6Address
    purpose: AotPurpose


@dataclass(frozen=True, slots=True)
class AotStatusSent(Report):
    """CN side: an AOTS left (draft §4.4.4)."""

    peer: IPv6Address
    hoa: IPv6Address
    address: IPv6Address | None
    code: int


@dataclass(frozen=True, slots=True)
class CoaProven(Report):
    """CN side: a valid AOTR proved that the MN ``hoa`` receives at ``coa`` (kept in the proof cache)."""

    hoa: IPv6Address
    coa: IPv6Address


@dataclass(frozen=True, slots=True)
class ProofTimeout(Report):
    """CN side: no AOTR came for a challenged BU; the pending registration was dropped."""

    hoa: IPv6Address
    coa: IPv6Address


@dataclass(frozen=True, slots=True)
class HomeAddressProven(Report):
    """CN side: the MN answered a HoA test (draft §4.5.3)."""

    hoa: IPv6Address


@dataclass(frozen=True, slots=True)
class HomeAddressTestFailed(Report):
    """CN side: a HoA test got no valid AOTR after every retransmission.

    The draft defines no action (§4.5.3); vmip reports and keeps the binding.
    """

    hoa: IPv6Address


__all__ = [
    "AcceptFrom",
    "Action",
    "AotChallengeSent",
    "AotOfferSent",
    "AotPurpose",
    "AotResponseSent",
    "AotStatusReceived",
    "AotStatusSent",
    "BindingAccepted",
    "BindingCached",
    "BindingDeregistered",
    "BindingErrorReceived",
    "BindingExpired",
    "BindingRefused",
    "BindingUpdateSent",
    "CareOfAddressesChanged",
    "CoaChanged",
    "CoaProven",
    "DataPathChanged",
    "HomeAddressProven",
    "HomeAddressTestFailed",
    "MobilityEvent",
    "PathsChanged",
    "ProofTimeout",
    "RegistrationTimeout",
    "Report",
    "SendTo",
    "TimeoutStage",
    "TunnelEndpointChanged",
]
