"""IKEv2 in the node runtime: the glue between :mod:`vmip.ike` and the SAD/SPD.

The IKE cores are sans-IO (:class:`~vmip.ike.endpoint.IkeEndpoint`,
:class:`~vmip.ike.ikesa.IkeSa`); this manager owns what they cannot: the
transport of IKE messages, their timer on the node's loop, and the
translation of their events into SADB operations and SPD entries.

Transport over the ``udp`` overlay (and ``raw``): IKE is ordinary UDP
(ports 500/4500) inside on-wire IPv6 packets between on-wire addresses.  We
build the IPv6+UDP packet ourselves and hand it to ``NodeServices.send_inner`` so it
passes the SPD (an automatic BYPASS, priority 0) and the IRO remap like any
packet the node makes; inbound, the runtime calls :meth:`IkeManager.intercept`
before the TUN write.  A locator moves only on an IKE message of an IKE SA
whose peer has authenticated (``IkeSaEstablished``, then ``PeerAlive``), to
the underlay endpoint that very datagram came from (RFC 7296 §2.23: follow
the address of an authenticated message, never of a merely decryptable one).
Nothing is remembered per source address between datagrams: what the manager
knows of a datagram's arrival lives only while that datagram is processed.

Keys: every inbound CHILD_SA SPI comes from ``SAD.getspi`` while IKE_AUTH or
CREATE_CHILD_SA is being built (IRO draft §6.2.1, §6.2.2: remap rules keyed by the
SPI exist before the first ESP packet); ``ChildSaCreated`` completes it
(UPDATE) and ADDs the outbound SA; the negotiated traffic selectors become
PROTECT policies naming the SAs by SPI.  A rekey (RFC 7296 §2.8) moves
outbound traffic to the new SA at once and keeps the old inbound SA until
its DELETE.  Soft expiry from the SADB bus rekeys, hard expiry deletes.

Decisions the config leaves open (docs/ike.md "Integration"):
- In IKE mode the config's ``protect`` policies (which name no SA) are not
  installed; their selectors are what we propose as TSi/TSr.  With none, the
  IKE addresses are proposed.  ``bypass``/``discard`` policies stay.
- Transport mode when the proposed selectors are exactly the two IKE
  addresses (host to host), tunnel mode otherwise.
- CHILD_SA lifetime: soft 3600 s (rekey), hard 3960 s, as strongSwan's
  ``rekey_time``/``life_time`` defaults.
- A peer with ``[[ike.peer]] policies`` gets one CHILD_SA per plan
  (:meth:`IkeManager.child_plans`): transport pairs at their SA-level
  (home) addresses, one tunnel child; the MN-HA IKE SA follows the CoA
  (:meth:`IkeManager.coa_changed`); a responder refuses an IKE_SA_INIT that
  did not arrive the way its address says (IRO draft §8.1.2).  docs/ike.md
  "The lab on IKE, and mobility".
- An HA with ``[ike] mobile_node_policies`` answers any IPv6 initiator and
  admits it by its certificate, bound to the home and care-of addresses the
  certificate names (:mod:`vmip.node.admission`, RFC 4877 §4).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from vmip.compat import TIMEOUT_ERRORS
from vmip.config.model import Role as ConfigRole
from vmip.errors import VmipError
from vmip.ike import crypto as ike_crypto
from vmip.ike.constants import NON_ESP_MARKER
from vmip.ike.endpoint import IkeEndpoint
from vmip.ike.events import (
    AuthenticationFailed,
    ChildSaCreated,
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeSaAddressesUpdated,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerAlive,
)
from vmip.ike.ikesa import IkeSa, IkeSaConfig, Role, State
from vmip.ike.payloads import Identity, TrafficSelector
from vmip.ipsec.sa import Direction, Lifetime, Mode
from vmip.ipsec.sad import SadError
from vmip.ipsec.sadb import ExpireEvent, SadbEvent
from vmip.ipsec.spd import Action, Policy, Selector, SpdError
from vmip.links.base import coerce_endpoint
from vmip.log import get_logger
from vmip.mobility.events import BindingAccepted, CoaChanged
from vmip.node import ike_mobike
from vmip.node.admission import ADMITTED_PREFIX, MobileNodeAdmission, is_admitted
from vmip.node.ike_underlay import RefusalLog, sad_address
from vmip.node.keying_policy import (
    ChildPlan,
    child_plans,
    is_host,
    policy_entries,
    proposed_ts,
    ts_to_selectors,
    ts_within,
)
from vmip.wire.errors import WireError
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp, parse_udp

if TYPE_CHECKING:
    from vmip.node.events import TimedEvent
    from vmip.node.services import NodeServices

log = get_logger(__name__)

IKE_PORT = 500
NAT_T_PORT = 4500
_UDP = 17
_ICMPV6 = 58
_MH = 135
_FULL_PORTS = (0, 0xFFFF)

#: CHILD_SA lifetimes (strongSwan's defaults: rekey_time 1 h, life_time 1.1 h).
CHILD_SOFT_SECONDS = 3600.0
CHILD_HARD_SECONDS = 3960.0

#: Priority of the automatic IKE BYPASS policies (before everything) and of
#: the policies made from negotiated traffic selectors.
BYPASS_PRIORITY = 0
CHILD_POLICY_PRIORITY = 50
#: Re-establishing an ``initiate`` peer whose IKE SA failed: the first try
#: after about this long (MN-CN IKE needs the HA tunnel first: its first
#: tries may go nowhere), doubling per failure up to the cap, each delay
#: drawn from [3/4, 5/4] of its value so that many nodes do not retry in step.
INITIATE_RETRY_SECONDS = 2.0
INITIATE_RETRY_CAP_SECONDS = 120.0
RETRY_JITTER = 0.25
#: An IKE SA that stayed up this long before it went down starts the
#: backoff afresh; one that a peer deletes again and again right after it is
#: established keeps backing off.
RETRY_STABLE_SECONDS = 60.0
#: How long a stopping node waits for the answers to its DELETEs.
STOP_DELETE_WAIT_SECONDS = 1.0


def retry_delay(failures: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before try number *failures* + 1 (exponential, capped, jittered)."""
    base = min(INITIATE_RETRY_CAP_SECONDS,
               INITIATE_RETRY_SECONDS * 2 ** max(0, min(failures - 1, 30)))
    return base * (1 - RETRY_JITTER + 2 * RETRY_JITTER * rng())


@dataclass(frozen=True)
class _Arrival:
    """How one IKE datagram reached us (kept only while it is processed)."""

    source: str                 # the IKE message's source address (text)
    onwire: bytes               # the on-wire packet's source address
    endpoint: Any               # the underlay endpoint it came from
    link: str


def _underlay_source(link: str, endpoint) -> tuple[str, int]:
    """The underlay endpoint as the IKE endpoint's *source*: cookies are bound
    to it and half-open SAs are counted per host (RFC 7296 §2.6)."""
    try:
        return (f"{link}|{endpoint[0]}", int(endpoint[1]))
    except (TypeError, ValueError, IndexError, KeyError):
        return (f"{link}|{endpoint!r}", 0)


class KeyingError(VmipError):
    """An IKE request the manager cannot carry out (unknown peer, no SA, ...)."""


@dataclass
class ChildRecord:
    """What the manager installed for one CHILD_SA (by inbound SPI)."""

    ike_sa: IkeSa
    event: ChildSaCreated
    policies: list[str] = field(default_factory=list)
    rekeying: bool = False
    #: The selectors its policies cover, with their priorities.
    selectors: dict[Selector, int] = field(default_factory=dict)
    #: Its outbound policy per selector, while this child carries that
    #: selector's traffic (see IkeManager._outbound).
    outbound: dict[Selector, str] = field(default_factory=dict)
    #: Destination addresses the SAD holds the SAs under (inbound, outbound).
    sa_dst_in: Any = None
    sa_dst_out: Any = None


class IkeManager:
    """IKEv2 for one node: endpoints per local address, events → SAD/SPD."""

    def __init__(self, services: NodeServices, *, cookie_threshold: int = 32,
                 child_soft: float = CHILD_SOFT_SECONDS, child_hard: float = CHILD_HARD_SECONDS) -> None:
        self.services = services
        config = services.config
        # An MN talks to its HA from the CoA (docs/ike.md): roles do not change on reload.
        self._home_agent = config.mobility.home_agent if config.has_role(ConfigRole.MN) else None
        if config.ike is None:
            raise KeyingError('keys.mode = "ike" needs an [ike] section')
        self.ike_config = config.ike
        self.cookie_threshold = cookie_threshold
        self.child_soft = child_soft
        self.child_hard = child_hard
        self.counters: Counter[str] = Counter()
        self.endpoints: dict[str, IkeEndpoint] = {}
        self.children: dict[int, ChildRecord] = {}
        # Indexes of children, so an SADB expiry or an IKE SA's end costs
        # O(its children), not O(every child of every peer): outbound SPI ->
        # inbound SPIs, IKE SA -> inbound SPIs (insertion-ordered).
        self._children_by_spi_out: dict[int, dict[int, None]] = {}
        self._children_by_ike_sa: dict[IkeSa, dict[int, None]] = {}
        self.peers = {peer.name: peer for peer in self.ike_config.peers}
        # A new IKE_SA_INIT finds its peer by address in O(1); the first
        # peer configured with an address wins, as a walk in order would.
        self._peer_by_address: dict[Any, Any] = {}
        for peer in self.ike_config.peers:
            self._peer_by_address.setdefault(peer.address, peer)
        # An HA admitting MNs by certificate (docs/ike.md "Admitting mobile nodes").
        prefix = config.mobility.home_prefix
        self.admission = MobileNodeAdmission(self.ike_config.mobile_node_policies, prefix) \
            if self.ike_config.mobile_node_policies and prefix is not None else None
        self._auth = self._load_auth()
        self._proposed_ts = proposed_ts(config)
        self._policy_entries = policy_entries(config)
        # How the datagram being processed arrived (IKE source address, on-wire
        # source, underlay endpoint, link); None between datagrams.
        self._rx: _Arrival | None = None
        self._policy_seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bypass_installed: list[str] = []
        # rfc3948 links: local IKE address -> (driver, UDP 500 socket).
        self._rfc3948: dict[str, tuple[Any, socket.socket | None]] = {}
        # One outbound policy per (IKE peer, child, selector), always on the
        # newest CHILD_SA: a rekey, a replacing IKE SA or a simultaneous rekey
        # never leaves two equal-priority policies where the stale one wins.
        self._outbound: dict[tuple[Any, ...], int] = {}
        # Re-establishing peers with initiate = true (docs/ike.md "Lifecycle").
        self._failures: Counter[str] = Counter()
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._retry_at: dict[str, float] = {}
        self._held: set[str] = set()        # terminated: no retry until initiate
        self._last_error: dict[str, str] = {}
        self._stopping = False
        self._all_gone: asyncio.Event | None = None
        self._subscription = services.bus.subscribe(self._on_sadb_event)
        self._refusals = RefusalLog(self.counters)
        self._internal_error_logged = False
        # The K bit of the HA's last BA (None: no BA yet), RFC 6275 §11.7.3.
        self._ha_follows: bool | None = None
        # IKE SAs moved to a new CoA since the last home BA (K is judged there).
        self._moved_with_coa: list[Any] = []

    # -- configuration ---------------------------------------------------------

    def _load_auth(self) -> dict[str, Any]:
        ike = self.ike_config
        auth: dict[str, Any] = {}
        if ike.local_id:
            auth["local_id"] = Identity.from_text(ike.local_id)
        if ike.psk_file is not None:
            # Read once, when the config was loaded (vmip.config keeps it as a Secret).
            if ike.psk is None:
                raise KeyingError(f"the PSK of {ike.psk_file} was not loaded: load the config "
                                  f"with its key files")
            auth["psk"] = bytes(ike.psk)
        if ike.certificate is not None:
            chain = ike_crypto.load_certificates(ike.certificate.read_bytes())
            auth["certificate"] = chain[0]
            auth["intermediates"] = tuple(chain[1:])
        if ike.private_key is not None:
            auth["private_key"] = ike_crypto.load_private_key(ike.private_key.read_bytes())
        cas: list = []
        for path in ike.ca:
            cas += ike_crypto.load_certificates(path.read_bytes())
        auth["cas"] = tuple(cas)
        return auth

    def child_plans(self, peer) -> list[ChildPlan]:
        """The CHILD_SAs wanted with *peer* (see :func:`keying_policy.child_plans`)."""
        return child_plans(peer, self._policy_entries)

    def local_address_for(self, peer_address) -> ipaddress.IPv6Address | ipaddress.IPv4Address:
        """Our IKE address towards *peer_address*: an MN talks to its HA from
        the CoA (the IKE SA follows it, see :meth:`coa_changed`), everyone else from its overlay address."""
        services = self.services
        locator = services.locators.lookup(peer_address)
        if locator is not None and str(locator.framing) == "rfc3948":
            # Plain IPsec peers: IKE between underlay addresses (RFC 3948 link),
            # IPv4 or IPv6; the active link's first (docs/ike.md "IPv4 underlay").
            binds = [link for link in services.config.links
                     if str(link.driver) == "rfc3948" and link.bind is not None
                     and link.bind.version == peer_address.version]
            binds.sort(key=lambda link: link.name != services.active_link)
            if binds:
                return binds[0].bind
            raise KeyingError(f"IKE with {peer_address} needs an rfc3948 link whose 'bind' is "
                              f"an IPv{peer_address.version} address")
        if peer_address.version == 4:
            raise KeyingError(f"IKE with the IPv4 address {peer_address} needs a [[peer]] with "
                              f'framing = "rfc3948" covering it and an rfc3948 link with an '
                              f"IPv4 bind")
        if self._home_agent is not None and peer_address == self._home_agent:
            coa = services.link_coa(services.active_link)
            if coa is not None:
                return coa
        for iface in services.config.tun.addresses:
            if iface.ip.version == peer_address.version:
                return iface.ip
        raise KeyingError(f"no {peer_address.version == 6 and 'IPv6' or 'IPv4'} overlay "
                          f"address to run IKE with {peer_address} from")

    def sa_config(self, peer, local_address, *, responder: bool = False) -> IkeSaConfig:
        remote_id = Identity.from_text(peer.remote_id) if peer.remote_id else None
        plans = self.child_plans(peer)
        if plans:
            # Initiator: the first plan goes in IKE_AUTH, the others follow with
            # CREATE_CHILD_SA.  Responder: everything the plans allow, and
            # transport allowed when a plan wants it (RFC 7296 §1.3.1, §2.9).
            first = plans[0]
            if responder:
                local_ts = tuple(dict.fromkeys(t for plan in plans for t in plan.local_ts))
                remote_ts = tuple(dict.fromkeys(t for plan in plans for t in plan.remote_ts))
                mode = Mode.TRANSPORT if any(p.mode is Mode.TRANSPORT for p in plans) \
                    else Mode.TUNNEL
            else:
                local_ts, remote_ts, mode = first.local_ts, first.remote_ts, first.mode
            return IkeSaConfig(
                name=peer.name, remote_id=remote_id,
                ike_proposals=tuple(self.ike_config.proposals),
                esp_proposals=tuple(self.ike_config.esp_proposals), child_name=first.name,
                local_ts=local_ts, remote_ts=remote_ts, mode=mode, **self._lifecycle(peer.name, responder),
                **self._auth)
        local_ts, remote_ts = self._proposed_ts
        host_to_host = (
            not local_ts
            or (len(local_ts) == 1 and len(remote_ts) == 1
                and local_ts[0] == TrafficSelector(local_address, local_address)
                and remote_ts[0] == TrafficSelector(peer.address, peer.address)))
        return IkeSaConfig(
            name=peer.name, remote_id=remote_id, ike_proposals=tuple(self.ike_config.proposals),
            esp_proposals=tuple(self.ike_config.esp_proposals), child_name=peer.name,
            local_ts=local_ts, remote_ts=remote_ts,
            mode=Mode.TRANSPORT if host_to_host else Mode.TUNNEL, **self._lifecycle(peer.name, responder),
            **self._auth)

    def _lifecycle(self, name: str, responder: bool) -> dict[str, Any]:
        """Liveness and retransmission settings of an IKE SA with peer *name*."""
        ike = self.ike_config
        return {
            "dpd_interval": ike.dpd_interval or None,
            "retransmit_timeout": ike.retransmit_timeout,
            "retransmit_tries": ike.retransmit_tries,
            # INITIAL_CONTACT says "this is our only IKE SA with you" (RFC 7296
            # §2.4): not while another one is alive, or the peer drops it.  Only
            # an initiator sends it (a responder's config must cost O(1): anyone
            # can make us build one).
            "initial_contact": not responder and not self._holds_sa(name),
        }

    def _peer_for_address(self, address: str):
        try:
            wanted = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return None
        return self._peer_by_address.get(wanted)

    # -- lifecycle ---------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._install_bypass()
        self.services.pump.add("ike", self)
        # Stopping: DELETEs to correspondents while the HA tunnel stands (with
        # the MN's deregistration); the node's close DELETEs the rest after.
        self.services.on_stop("ike", self.stop_correspondents)
        # The MN-HA IKE SA runs from the CoA and follows it (docs/ike.md).
        self.services.events.subscribe(self._on_node_event)
        for peer in self.peers.values():
            if peer.initiate:
                try:
                    self.initiate(peer.name)
                except VmipError as exc:
                    log.error("ike initiate failed", peer=peer.name, error=str(exc))

    def close(self) -> None:
        self.services.pump.remove(self)
        self.services.events.unsubscribe(self._on_node_event)
        for _driver, sock in self._rfc3948.values():
            if sock is not None:
                loop = self.services.loop
                if loop is not None:
                    loop.remove_reader(sock.fileno())
                sock.close()
        self._rfc3948.clear()
        self.services.bus.unsubscribe(self._subscription)

    def _own_addresses(self) -> list:
        """Addresses our IKE may run from: overlay (TUN) addresses, CoAs, rfc3948 binds."""
        config = self.services.config
        found = [iface.ip for iface in config.tun.addresses]
        for link in config.links:
            for address in (getattr(link, "coa", None), link.bind if str(link.driver) == "rfc3948"
                            else None):
                if address is not None and not address.is_unspecified:
                    found.append(address)
        return list(dict.fromkeys(found))

    def _install_bypass(self) -> None:
        """Clear-text IKE must pass the SPD (RFC 4301 §5.1: IKE is BYPASS).

        Only IKE of our own addresses: an HA forwarding a CN's IKE to a HoA
        must still put it in the MN's tunnel (draft appendix B).
        """
        for direction in Direction:
            for port in (IKE_PORT, NAT_T_PORT):
                for index, address in enumerate(self._own_addresses()):
                    name = f"ike-bypass-{direction.value}-{port}-{index}"
                    host = ipaddress.ip_network(address)
                    # Our port is the local one: both directions (RFC 7296 §2.11).
                    selector = Selector(local=host, proto=_UDP, local_ports=(port, port))
                    self.services.spd.add(Policy(name, direction, selector, Action.BYPASS, (),
                                             BYPASS_PRIORITY))
                    self._bypass_installed.append(name)

    # -- endpoints ---------------------------------------------------------------

    def _endpoint(self, local_address) -> IkeEndpoint:
        key = str(local_address)
        endpoint = self.endpoints.get(key)
        if endpoint is None:
            endpoint = IkeEndpoint(self._responder_config, (key, IKE_PORT),
                                   cookie_threshold=self.cookie_threshold,
                                   spi_allocator_for=self._spi_allocator_for)
            self.endpoints[key] = endpoint
        return endpoint

    def _peer_of(self, sa: IkeSa):
        """The configured peer an IKE SA is with (an admitted MN: the template)."""
        peer = self.peers.get(sa.config.name)
        if peer is None and self.admission is not None and is_admitted(sa.config.name):
            peer = self.admission.peer(sa.config.name, sa.remote_addr[0])
        return peer

    def _responder_config(self, addr) -> IkeSaConfig | None:
        peer = self._peer_for_address(addr[0])
        if peer is None and self.admission is not None:
            return self._admission_config(self.admission, addr[0])
        if peer is None:
            self.counters["ike_refused_unknown_peer"] += 1
            return None
        if peer.name in self._held:
            # Terminated: no IKE SA with it, whichever side starts, until
            # 'vmip ike initiate' (docs/ike.md "Lifecycle").
            self.counters["ike_refused_terminated"] += 1
            return None
        refusal = self._arrival_refusal(addr[0])
        if refusal is not None:
            self.counters["ike_refused_wrong_arrival"] += 1
            log.warning("ike refused", peer=peer.name, address=addr[0], reason=refusal)
            return None
        try:
            local = self.local_address_for(peer.address)
        except KeyingError as exc:
            # Every retransmission lands here: count each, log the fix once.
            self._refusals.refuse("ike_refused_no_local_address", peer.name, str(exc))
            return None
        return self.sa_config(peer, local, responder=True)

    def _admission_config(self, admission: MobileNodeAdmission,
                          address: str) -> IkeSaConfig | None:
        """An initiator no [[ike.peer]] names: an MN its certificate may admit (admission.py)."""
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            ip = None
        if not isinstance(ip, ipaddress.IPv6Address) or ip.ipv4_mapped is not None:
            # MNs run IKE from their overlay CoA; IKE over an IPv4 underlay is for listed peers.
            self.counters["ike_refused_unknown_peer"] += 1
            return None
        refusal = self._arrival_refusal(address)
        if refusal is not None:
            # Anyone can send this: counted, not logged at each datagram.
            self.counters["ike_refused_wrong_arrival"] += 1
            log.debug("ike refused", address=address, reason=refusal)
            return None
        try:
            local = self.local_address_for(ip)
        except KeyingError as exc:
            self._refusals.refuse("ike_refused_no_local_address", "mobile nodes", str(exc))
            return None
        peer = admission.peer(f"{ADMITTED_PREFIX}{address}", address)
        return replace(self.sa_config(peer, local, responder=True),
                       authorize=admission.authorize)

    def _arrival_refusal(self, address: str) -> str | None:
        """Why an IKE_SA_INIT naming *address* must be refused, or None.

        IRO draft §8.1.2: an MN-CN negotiation for a HoA proves the HoA only
        if the HoA is where it came from.  So the on-wire source must be the
        IKE address itself (a CN gets MN-CN IKE in clear through the HA, with
        the HoA as on-wire source; draft appendix B), or our own HA when we
        are an MN (IKE from a correspondent reaches us through the HA tunnel),
        and the underlay endpoint must be the one our static locator names
        for that on-wire source (a HoA's packets come from the HA's endpoint,
        not straight from a CoA).
        """
        rx = self._rx
        if rx is None or rx.source != address:
            return None
        onwire, endpoint = rx.onwire, rx.endpoint
        try:
            claimed = ipaddress.ip_address(address).packed
        except ValueError:
            return "unparsable source address"
        if len(onwire) == 16 and len(claimed) == 16 and onwire != claimed:
            home_agent = self._home_agent
            if home_agent is None or onwire != home_agent.packed:
                return (f"on-wire source {ipaddress.IPv6Address(onwire)} is not the IKE "
                        f"address {address}")
        if len(onwire) == 16:
            locator = self._static_locator(onwire)
            if locator is not None and str(locator.framing) == "udp":
                try:
                    arrived = coerce_endpoint(endpoint)
                except (VmipError, TypeError, ValueError):  # an endpoint of unknown shape
                    return "unknown underlay endpoint"
                if arrived != locator.endpoint:
                    return (f"arrived from {arrived} but {ipaddress.IPv6Address(onwire)} "
                            f"is reached at {locator.endpoint}")
        return None

    def _spi_allocator_for(self, local, remote) -> Callable[[float], int]:
        # IPv4 IKE addresses: the SAD keys the CHILD_SA at their mapped form.
        src = sad_address(remote[0])
        dst = sad_address(local[0])

        def allocate(now: float) -> int:
            # GETSPI while the SA payload is built (IRO draft §6.2.2).
            return self.services.sad.getspi(src, dst, now, name="ike")
        return allocate

    def _retry_initiate(self, name: str) -> None:
        self._retries.pop(name, None)
        self._retry_at.pop(name, None)
        if name in self._held or self._stopping:
            return
        self.counters["initiate_retries"] += 1
        try:
            self._initiate(name)
        except VmipError as exc:
            log.warning("ike initiate retry failed", peer=name, error=str(exc))
            self._last_error[name] = str(exc)
            self._schedule_retry(name)

    def _schedule_retry(self, name: str) -> None:
        """Try *name* again later: exponential backoff with a cap and jitter."""
        peer = self.peers.get(name)
        if peer is None or not peer.initiate or name in self._held or self._stopping \
                or name in self._retries or self._loop is None:
            return
        if self._holds_sa(name):
            return     # another IKE SA with the peer is alive or under way
        self._failures[name] += 1
        delay = retry_delay(self._failures[name])
        self._retries[name] = self._loop.call_later(delay, self._retry_initiate, name)
        self._retry_at[name] = self.services.clock() + delay
        log.info("ike retry scheduled", peer=name, after_s=round(delay, 1),
                 failures=self._failures[name])

    def _cancel_retry(self, name: str) -> None:
        handle = self._retries.pop(name, None)
        self._retry_at.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _free_reservations(self, sa: IkeSa) -> None:
        """Inbound SPIs reserved for CHILD_SAs that never came: free them now
        rather than leave larval SAs behind for the SAD's larval lifetime."""
        try:
            dst = ipaddress.ip_address(sa.local_addr[0].split("%")[0])
        except ValueError:
            return
        for spi in sorted(sa.reserved_spis):
            info = self.services.sad.get(spi, Direction.IN, dst)
            if info is not None and info.state == "larval":
                self.services.sad.delete(spi, Direction.IN, dst, reason="ike: sa failed")
                self.counters["larval_freed"] += 1
        sa.reserved_spis.clear()

    def _initial_contact(self, sa: IkeSa) -> None:
        """The peer of *sa* holds no other IKE SA with us (INITIAL_CONTACT, RFC
        7296 §2.4): forget our others with the same authenticated identity."""
        for other in self._sas_of(sa.config.name):
            if other is sa or not other.is_established \
                    or str(other.remote_identity) != str(sa.remote_identity):
                continue
            self.counters["ike_sa_replaced_initial_contact"] += 1
            other.abandon("the peer sent INITIAL_CONTACT on a new IKE SA", self.services.clock())
            if self._loop is not None:
                # Its events (children gone) are handled in a pump of their own.
                self._loop.call_soon(self._pump_all)

    def _pump_all(self) -> None:
        # The abandoned SAs queued their events (IkeSa.on_output): no sweep.
        self._pump(self.services.clock())

    # -- the MN-HA IKE SA follows the CoA -------------------------------------------

    def coa_changed(self, old, new) -> None:
        """Move our IKE SAs that run from *old* to *new* (a CoA change).

        What MOBIKE's UPDATE_SA_ADDRESSES achieves (RFC 4555 §3.5), without
        its notifications: the IKE SA keeps its SPIs and keys, we send from
        the new CoA from now on, and an authenticated liveness check from
        there makes the HA follow at once (it takes the address of the last
        authenticated request, RFC 7296 §2.23).  The CHILD_SAs need nothing:
        the MH pair is at the HoA (IRO remaps it), the tunnel pair MIGRATEs
        with the CoA (the runtime).  Called from the loop, never from the bus.
        """
        if old is None or new is None or old == new or self._loop is None:
            return
        if self._ha_follows is False:
            # The HA's last BA cleared K (RFC 6275 §11.7.3): its key manager
            # does not follow us; the next home BA sets the IKE SA up afresh.
            return
        self._loop.call_soon(self._follow_coa, str(old), new)

    def _home_binding_accepted(self, event: BindingAccepted) -> None:
        """RFC 6275 §11.7.3: with the K bit clear in the HA's BA, the MN MUST
        discard its key management connections to the HA; it may start new
        ones.  An IKE SA with the HA that does not run from the CoA just
        registered is deleted and negotiated again from there."""
        if self._home_agent is None or event.peer != self._home_agent or event.lifetime == 0:
            return
        self._ha_follows = event.key_management_mobility
        if event.key_management_mobility or event.coa is None:
            self._moved_with_coa.clear()
            return
        peer = self._peer_for_address(str(self._home_agent))
        if peer is not None and self._loop is not None:
            # Out of the event delivery, as for a CoA change.
            self._loop.call_soon(self._reestablish, peer.name, str(event.coa))

    def _reestablish(self, name: str, coa: str) -> None:
        moved, self._moved_with_coa = self._moved_with_coa, []
        stale = [sa for sa in self._sas_of(name) if not sa.is_finished
                 and (sa.local_addr[0] != coa or any(sa is m for m in moved))]
        if not stale:
            return
        self.counters["ike_sa_reestablished_k0"] += 1
        log.info("ike sa with the ha set up again: its BA has no K bit", peer=name, coa=coa)
        now = self.services.clock()
        for sa in stale:
            sa.delete(now)
        # The new one at once, beside the old ones' DELETE exchange (initiate()
        # would wait for them to finish).
        peer = self.peers[name]
        local = self.local_address_for(peer.address)
        self._endpoint(local).initiate(self.sa_config(peer, local),
                                       (str(peer.address), IKE_PORT), now)
        self._collect_all()
        self._pump(now)

    def _follow_coa(self, old: str, new) -> None:
        self.move_local_address(old, new)

    def move_local_address(self, old: str, new) -> int:
        """Move the IKE SAs running from *old* to *new* and announce it
        (MOBIKE UPDATE_SA_ADDRESSES, else a liveness check); how many moved."""
        source = self.endpoints.get(old)
        if source is None:
            return 0
        now = self.services.clock()
        target = self._endpoint(new)
        moved = 0
        for sa in list(source.sas):
            if sa.is_finished:
                continue
            source.detach(sa)
            local = (str(new), sa.local_addr[1])
            # Future CHILD_SAs (rekeys) reserve their inbound SPI at the new CoA.
            sa.change_local_address(local, self._spi_allocator_for(local, sa.remote_addr))
            target.attach(sa)
            moved += 1
            if len(self._moved_with_coa) < 16:
                self._moved_with_coa.append(sa)
            if sa.is_established:
                sa.announce_local_address(now)
        if moved:
            self.counters["ike_sa_moved"] += moved
            log.info("ike sa follows local address", old=old, new=str(new), sas=moved)
        self._collect_all()
        self._pump(now)
        return moved

    def underlay_moved(self, old_link: str | None, new_link: str) -> int:
        """A node's active rfc3948 link changed (``vmip move``): see :mod:`ike_mobike`."""
        return ike_mobike.underlay_moved(self, old_link, new_link)

    # -- control -----------------------------------------------------------------

    def initiate(self, name: str) -> dict:
        """``vmip ike initiate``: start an IKE SA now; lifts a terminate."""
        if name in self.peers:
            self._held.discard(name)
            self._cancel_retry(name)
            self._failures.pop(name, None)
        return self._initiate(name)

    def _initiate(self, name: str) -> dict:
        peer = self.peers.get(name)
        if peer is None:
            raise KeyingError(f"no IKE peer {name!r}; peers: {', '.join(self.peers) or 'none'}")
        for sa in self._sas_of(name):
            if self._counts(sa):
                return {"peer": name, "state": sa.state.value, "already": True}
        now = self.services.clock()
        local = self.local_address_for(peer.address)
        endpoint = self._endpoint(local)
        sa = endpoint.initiate(self.sa_config(peer, local), (str(peer.address), IKE_PORT), now)
        log.info("ike initiate", peer=name, local=str(local), remote=str(peer.address))
        self._pump(now)
        return {"peer": name, "state": sa.state.value, "already": False}

    def terminate(self, name: str) -> dict:
        """``vmip ike terminate``: DELETE the IKE SAs with *name* and forget them
        at once (a dead peer is not waited for); no retry until ``initiate``."""
        sas = [sa for sa in self._sas_of(name) if not sa.is_finished]
        if name not in self.peers and not sas:
            raise KeyingError(f"no IKE peer {name!r}; peers: {', '.join(self.peers) or 'none'}")
        self._held.add(name)
        self._cancel_retry(name)
        now = self.services.clock()
        for sa in sas:
            sa.delete(now, wait=False)
        self._collect_all()
        self._pump(now)
        return {"peer": name, "terminated": len(sas)}

    async def stop_correspondents(self) -> None:
        """On-stop step (with the MN's deregistration): DELETE the IKE SAs with
        every peer but our HA, whose tunnel may carry them (MN-CN IKE runs
        from the HoA through it, docs/ike.md), while that tunnel still
        stands; the node bounds the wait (STOP_GRACE)."""
        await self.stop(None, home_agent=False)

    async def stop(self, timeout: float | None = STOP_DELETE_WAIT_SECONDS, *,
                   home_agent: bool = True) -> int:
        """The node stops: DELETE every established IKE SA (RFC 7296 §1.4.1) and
        wait for the answers, at most *timeout* (None: the caller bounds it);
        returns how many were sent.  *home_agent* False leaves the SA with our
        HA alone (the last one to go: see :meth:`stop_correspondents`)."""
        self._stopping = True
        for name in list(self._retries):
            self._cancel_retry(name)
        home = str(self._home_agent) if self._home_agent is not None else None
        now = self.services.clock()
        batch = [sa for ep in self.endpoints.values() for sa in ep.sas if sa.is_established
                 and (home_agent or sa.remote_addr[0] != home)]
        for sa in batch:
            sa.delete(now)
        if not batch:
            return 0
        self._all_gone = asyncio.Event()
        self._collect_all()
        self._pump(now)
        try:
            await asyncio.wait_for(self._all_gone.wait(), timeout)
        except TIMEOUT_ERRORS:
            self.counters["stop_delete_unanswered"] += 1
        log.info("ike sas deleted on stop", sent=len(batch),
                 answered=not any(sa.state is State.DELETING for sa in batch))
        return len(batch)

    def rekey(self, name: str, *, ike: bool = False) -> dict:
        sas = [sa for sa in self._sas_of(name) if sa.is_established]
        if not sas:
            raise KeyingError(f"no established IKE SA with {name!r}")
        now = self.services.clock()
        count = 0
        for sa in sas:
            if ike:
                sa.rekey_ike(now)
                count += 1
                continue
            for spi_in in list(sa.children):
                sa.rekey_child(spi_in, now)
                count += 1
        self._collect_all()
        self._pump(now)
        return {"peer": name, "rekeys": count, "what": "ike" if ike else "child"}

    def handlers(self) -> dict[str, Callable[[dict], Any]]:
        def named(action):
            def handler(args: dict):
                name = args.get("name")
                if not isinstance(name, str) or not name:
                    raise KeyingError("needs 'name': an [[ike.peer]] name")
                return action(name, args)
            return handler
        return {
            "ike.list": lambda args: self.listing(),
            "ike.initiate": named(lambda name, args: self.initiate(name)),
            "ike.terminate": named(lambda name, args: self.terminate(name)),
            "ike.rekey": named(lambda name, args: self.rekey(name, ike=bool(args.get("ike")))),
        }

    def listing(self) -> dict:
        now = self.services.clock()
        rows = []
        for endpoint in self.endpoints.values():
            for sa in endpoint.sas:
                rows.append({
                    "name": sa.config.name,
                    "state": sa.state.value,
                    "role": sa.role.value,
                    "local": f"{sa.local_addr[0]}[{sa.local_addr[1]}]",
                    "remote": f"{sa.remote_addr[0]}[{sa.remote_addr[1]}]",
                    "spi_i": sa.spi_i.hex(),
                    "spi_r": sa.spi_r.hex(),
                    "remote_id": str(sa.remote_identity) if sa.remote_identity else None,
                    "age_s": round(now - sa.created_at, 1),
                    "nat_t": sa.encap,
                    "mobike": sa.mobike.active,
                    "children": [
                        {"name": c.name, "spi_in": c.spi_in, "spi_out": c.spi_out,
                         "suite": c.suite, "mode": c.mode.value}
                        for c in sa.children.values()],
                    "stats": dict(sa.stats),
                })
        return {
            "sas": rows,
            "peers": [{"name": p.name, "address": str(p.address), "initiate": p.initiate,
                       "terminated": p.name in self._held,
                       "failures": 0 if any(sa.is_established for sa in self._sas_of(p.name))
                       else self._failures.get(p.name, 0),
                       "retry_in_s": round(max(0.0, self._retry_at[p.name] - now), 1)
                       if p.name in self._retry_at else None,
                       "last_error": self._last_error.get(p.name)}
                      for p in self.peers.values()],
            "endpoints": {local: {"half_open": ep.half_open_count, **ep.stats}
                          for local, ep in self.endpoints.items()},
            "counters": dict(self.counters + (self.admission.counters if self.admission
                                              else Counter())),
        }

    def _sas_of(self, name: str) -> list[IkeSa]:
        return [sa for ep in self.endpoints.values() for sa in ep.sas_named(name)]

    @staticmethod
    def _counts(sa: IkeSa) -> bool:
        """Whether *sa* is an IKE SA with its peer for our initiation, retries
        and INITIAL_CONTACT: alive, and ours or the peer's own (its AUTH
        verified).  A half-open responder SA is not: anyone can make one in
        the peer's name with an IKE_SA_INIT from its address (RFC 7296 §2.6)."""
        return not sa.is_finished and (sa.role is Role.INITIATOR or sa.authenticated)

    def _holds_sa(self, name: str) -> bool:
        """An IKE SA with peer *name* is alive or under way (see :meth:`_counts`)."""
        return any(self._counts(sa) for sa in self._sas_of(name))

    # -- transport (rfc3948 links: UDP 500 socket + the driver's port 4500) ----------

    def rfc3948_handler(self, link_cfg, driver) -> Callable[[bytes, tuple[str, int]], None]:
        """``on_ike`` for an rfc3948 driver; also opens UDP 500 on the link's address."""
        local = str(link_cfg.bind) if link_cfg.bind is not None else None
        sock = None
        # Called while the node opens its links, before start(): the node's loop.
        loop = self.services.loop
        if local is not None and loop is not None:
            family = socket.AF_INET6 if link_cfg.bind.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((local, IKE_PORT))
            loop.add_reader(sock.fileno(), self._on_udp500, sock, local, driver)
        if local is not None:
            self._rfc3948[local] = (driver, sock)

        def on_ike(message: bytes, endpoint: tuple[str, int]) -> None:
            # The driver strips the non-ESP marker; the core wants to know it came on 4500.
            self._receive_underlay(local, NON_ESP_MARKER + message, endpoint, driver)
        return on_ike

    def _on_udp500(self, sock: socket.socket, local: str, driver) -> None:
        for _ in range(64):   # bounded per wake-up
            try:
                data, address = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["rx_ike_socket_error"] += 1
                return
            self._receive_underlay(local, data, (address[0], address[1]), driver)

    def _receive_underlay(self, local: str | None, data: bytes, endpoint: tuple[str, int],
                          driver) -> None:
        now = self.services.clock()
        self.counters["rx_ike"] += 1
        if local is None:
            self.counters["rx_ike_no_local_address"] += 1
            return
        host = endpoint[0].split("%")[0]
        try:
            onwire = ipaddress.IPv6Address(host).packed
        except ValueError:
            onwire = b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(host).packed
        self._rx = _Arrival(host, onwire, (host, endpoint[1]), driver.name)
        try:
            self._endpoint(ipaddress.ip_address(local)).receive_datagram(
                data, (host, endpoint[1]), now, source=_underlay_source(driver.name, endpoint))
            self._pump(now)
        except Exception:  # noqa: BLE001 - a core bug must cost one message, not the node
            self._internal_error(host)
        finally:
            self._rx = None

    # -- transport (overlay) -------------------------------------------------------

    def intercept(self, packet: bytes, onwire_source: bytes, endpoint: tuple[str, int],
                  link_name: str, now: float) -> bool:
        """Take an inbound IPv6/UDP 500|4500 packet for a local address; True if taken."""
        if len(packet) < 48 or packet[0] >> 4 != 6 or packet[6] != _UDP:
            return False
        dport = int.from_bytes(packet[42:44], "big")
        if dport not in (IKE_PORT, NAT_T_PORT):
            return False
        self.counters["rx_ike"] += 1
        src, dst = packet[8:24], packet[24:40]
        try:
            datagram = parse_udp(packet[40:], src, dst)
        except WireError:
            self.counters["rx_ike_bad_udp"] += 1
            return True
        src_text = str(ipaddress.IPv6Address(src))
        local = self.endpoints.get(str(ipaddress.IPv6Address(dst)))
        if local is None:
            local = self._endpoint(ipaddress.IPv6Address(dst))
        # How this datagram came: for the arrival check, the answer to a peer
        # without a locator and locator learning if it proves authentic.
        self._rx = _Arrival(src_text, onwire_source, endpoint, link_name)
        try:
            local.receive_datagram(datagram.payload, (src_text, datagram.src_port), now,
                                   source=_underlay_source(link_name, endpoint))
            self._pump(now)
        except Exception:  # noqa: BLE001 - a core bug must cost one message, not the node
            self._internal_error(src_text)
        finally:
            self._rx = None
        return True

    def _internal_error(self, source: str) -> None:
        """Counted; the traceback is logged once per node, not once per datagram."""
        self.counters["rx_ike_internal_error"] += 1
        if self._internal_error_logged:
            return
        self._internal_error_logged = True
        log.exception("ike receive failed (further ones only counted: rx_ike_internal_error)",
                      source=source)

    def _send(self, local: str, data: bytes, addr: tuple[str, int], now: float) -> None:
        underlay = self._rfc3948.get(local)
        if underlay is not None:
            driver, sock = underlay
            self.counters["tx_ike"] += 1
            if data[:4] == NON_ESP_MARKER:
                driver.send_ike(data[4:], (addr[0], addr[1]))
            elif sock is not None:
                try:
                    sock.sendto(data, (addr[0], addr[1]))
                except OSError:
                    self.counters["tx_ike_socket_error"] += 1
            return
        src = ipaddress.ip_address(local)
        dst = ipaddress.ip_address(addr[0].split("%")[0])
        if src.version != 6 or dst.version != 6:
            self.counters["tx_ike_not_ipv6"] += 1
            return
        # A message with the non-ESP marker leaves from port 4500 (RFC 3948 §2.2).
        sport = NAT_T_PORT if data[:4] == NON_ESP_MARKER else IKE_PORT
        udp = build_udp(sport, int(addr[1]), data, src.packed, dst.packed)
        packet = build_ipv6_header(src.packed, dst.packed, _UDP, len(udp)) + udp
        self.counters["tx_ike"] += 1
        services = self.services
        rx = self._rx
        if rx is not None and rx.source == str(dst) and services.locators.lookup(dst.packed) is None:
            # No locator yet (an HA before the MN's first authenticated packet):
            # answer where the request came from (RFC 7296 §2.11) without
            # learning anything from it.
            self.counters["tx_ike_to_request_endpoint"] += 1
            services.send_onwire(packet, rx.endpoint, rx.link)
            return
        services.send_inner(packet, None, now)

    # -- the pump: datagrams, events, timer ---------------------------------------

    def _collect_all(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.collect()

    def _pump(self, now: float) -> None:
        for local, endpoint in list(self.endpoints.items()):
            for _ in range(10_000):  # bounded: events may cause more sends
                for data, addr in endpoint.datagrams_to_send(now):
                    self._send(local, data, addr, now)
                item = endpoint.next_event()
                if item is None:
                    break
                try:
                    self._on_event(item[0], item[1], now)
                except VmipError as exc:
                    self.counters["event_failed"] += 1
                    log.error("ike event not applied", ike_event=type(item[1]).__name__,
                              error=str(exc))
                # Only the event's SA can have been acted on: collecting every
                # SA here would cost O(SAs) per event.
                endpoint.collect(item[0])
        if self._all_gone is not None and not any(
                sa.state is State.DELETING for ep in self.endpoints.values() for sa in ep.sas):
            self._all_gone.set()
        self.services.pump.arm()

    # -- the pump's side: one timer for the node, this is one of its cores -------------

    def get_timer(self) -> float | None:
        timers = [t for t in (ep.get_timer() for ep in self.endpoints.values()) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self._credit_child_traffic(now)
        for endpoint in list(self.endpoints.values()):
            self.services.pump.guard("ike", endpoint.handle_timer, now)
        self._pump(now)

    def _credit_child_traffic(self, now: float) -> None:
        """Before a liveness check is due, look at the ESP its CHILD_SAs received:
        inbound traffic proves the peer alive (RFC 7296 §2.4), so a busy tunnel
        sends no checks.  Only SAs whose check is due are looked at, each
        child by an indexed SPI lookup."""
        sad = self.services.sad
        for endpoint in self.endpoints.values():
            # The SAs whose timer is due, from the endpoint's deadline heap:
            # not a walk over every IKE SA at each timer.
            for sa in endpoint.due(now):
                due = sa.liveness_due_at
                if due is None or due > now:
                    continue
                for spi_in in sa.children:
                    esp = sad.lookup_inbound(spi_in)
                    if esp is not None and esp.last_used_at is not None:
                        sa.heard_on_child(esp.last_used_at)

    def _on_node_event(self, timed: TimedEvent) -> None:
        event = timed.event
        if isinstance(event, CoaChanged):
            self.coa_changed(event.old, event.new)
        elif isinstance(event, BindingAccepted):
            self._home_binding_accepted(event)

    # -- events → SAD / SPD ----------------------------------------------------------

    def _on_event(self, sa: IkeSa, event, now: float) -> None:
        if isinstance(event, ChildSaCreated):
            self._install_child(sa, event, now)
        elif isinstance(event, ChildSaRekeyed):
            self._install_child(sa, event.new, now, rekey_of=event.old_spi_in,
                                responder=event.by_peer)
        elif isinstance(event, ChildSaDeleted):
            self._remove_child(event.spi_in, "ike delete" + (" by peer" if event.by_peer else ""))
        elif isinstance(event, (IkeSaDeleted, IkeSaFailed)):
            for spi_in in list(self._children_by_ike_sa.get(sa, ())):
                self._remove_child(spi_in, "ike sa gone")
            level = log.info if isinstance(event, IkeSaDeleted) else log.warning
            level("ike sa " + ("deleted" if isinstance(event, IkeSaDeleted) else "failed"),
                  peer=event.name, **({"reason": event.reason} if isinstance(event, IkeSaFailed)
                                      else {"by_peer": event.by_peer}))
            self.counters["ike_sa_deleted" if isinstance(event, IkeSaDeleted) else
                          "ike_sa_failed"] += 1
            self._free_reservations(sa)
            unproven = sa.role is Role.RESPONDER and not sa.authenticated
            lost = (isinstance(event, IkeSaFailed) and not unproven) \
                or (isinstance(event, IkeSaDeleted) and event.by_peer)
            if unproven and event.name in self.peers:
                # A half-open responder SA proves nothing about the peer
                # (anyone can send an IKE_SA_INIT in its name): no error of
                # the peer's, no backoff reset; but an initiate peer left with
                # no IKE SA of its own is tried again.
                self._schedule_retry(event.name)
            elif lost:
                # Re-established whoever started it (a peer's rekey makes us
                # the "responder" of an SA we initiated) and whoever ended it
                # (a peer restarting deletes its SAs): the config decides.
                if sa.established_at is not None \
                        and now - sa.established_at >= RETRY_STABLE_SECONDS:
                    self._failures.pop(event.name, None)
                if event.name in self.peers:   # bounded: configured peers only
                    self._last_error[event.name] = event.reason \
                        if isinstance(event, IkeSaFailed) else "the peer deleted the IKE SA"
                self._schedule_retry(event.name)
        elif isinstance(event, IkeSaEstablished):
            self.counters["ike_sa_established"] += 1
            log.info("ike sa established", peer=event.name, remote=event.remote_addr[0],
                     suite=event.suite, initiator=event.initiator, nat=event.nat_detected,
                     initial_contact=event.initial_contact)
            # The failure count stays until the SA proves stable (see
            # RETRY_STABLE_SECONDS): a peer that deletes at once keeps backing off.
            self._cancel_retry(event.name)
            self._last_error.pop(event.name, None)
            if event.initial_contact:
                self._initial_contact(sa)
            self._learn_locator(sa, event.remote_addr[0], now)
            if sa.role is Role.INITIATOR:
                # Further CHILD_SAs of the plan (e.g. the MN-HA tunnel after the MH pair).
                peer = self._peer_of(sa)
                for plan in self.child_plans(peer)[1:] if peer is not None else []:
                    sa.create_child(now, plan.name, plan.local_ts, plan.remote_ts, plan.mode)
        elif isinstance(event, IkeSaRekeyed):
            self.counters["ike_sa_rekeyed"] += 1
            log.info("ike sa rekeyed", peer=event.name)
        elif isinstance(event, PeerAlive):
            self._learn_locator(sa, event.remote_addr[0], now)
        elif isinstance(event, IkeSaAddressesUpdated):
            if self.admission is not None and is_admitted(sa.config.name) \
                    and not self.admission.may_use(sa.remote_certificate, event.remote_addr[0]):
                # An admitted MN moved its IKE SA to an address its certificate
                # does not name (another MN's CoA): its SAs go rather than follow.
                self.counters["ike_sa_deleted_uncertified_move"] += 1
                log.warning("ike sa moved to an uncertified address: deleted", peer=event.name,
                            remote=event.remote_addr[0])
                sa.delete(now)
            else:
                ike_mobike.addresses_updated(self, sa, event, now)
        elif isinstance(event, (AuthenticationFailed, ChildSaFailed)):
            self.counters[type(event).__name__] += 1
            name = event.ike_name if isinstance(event, ChildSaFailed) else event.name
            log.warning("ike " + type(event).__name__, peer=name, reason=event.reason)
            if name in self.peers:   # bounded: an admitted MN's name comes from its address
                self._last_error[name] = event.reason

    def _static_locator(self, onwire: bytes):
        """The config's own locator for an on-wire address (longest prefix, with an
        endpoint), ignoring what was learned and the default peer."""
        return self.services.locators.static_with_endpoint(onwire)

    def _learn_locator(self, sa: IkeSa, remote: str, now: float) -> None:
        """An authenticated IKE message: the sender's locator may move.

        Only when the IKE SA's peer has authenticated (a message that merely
        decrypts under keys from an unauthenticated DH proves nothing, RFC
        7296 §2.15), only for the address that IKE SA is with, and only to
        where the datagram being processed came from (RFC 7296 §2.23).
        """
        rx = self._rx
        if not sa.authenticated or sa.remote_addr[0] != remote or rx is None \
                or rx.source != remote:
            self.counters["locator_not_learned"] += 1
            return
        if self.admission is not None and is_admitted(sa.config.name) \
                and not self.admission.may_use(sa.remote_certificate, remote):
            # An admitted MN's IKE SA moved to an address its certificate does
            # not name (another MN's CoA): it may not take that locator.
            self.counters["locator_not_certified"] += 1
            return
        onwire_source, endpoint, link_name = rx.onwire, rx.endpoint, rx.link
        if len(onwire_source) == 16 and self._static_locator(onwire_source) is not None:
            # The config says where this address is (a HoA behind its HA, a
            # fixed peer): a learned copy would only shadow it.
            return
        self.services.locators.confirm(onwire_source, endpoint, now, link=link_name)

    def _install_child(self, sa: IkeSa, event: ChildSaCreated, now: float,
                       rekey_of: int | None = None, responder: bool = False) -> None:
        services = self.services
        pairs = [(lts, rts) for lts in event.local_ts for rts in event.remote_ts]
        priorities: dict[Selector, int] = {}
        peer = self._peer_of(sa)
        plans = self.child_plans(peer) if peer is not None else []
        if plans:
            # Keep the pairs one of our policies of this child's kind covers, at
            # that policy's priority (the clear-text class before protect-all,
            # MH before the tunnel); narrowing across policies (§2.9) makes
            # cross pairs that no policy asked for.
            candidates = [entry for plan in plans if plan.mode is event.mode
                          for entry in plan.policies]
            kept = []
            for lts, rts in pairs:
                covering = [entry.priority for entry in candidates
                            if ts_within(lts, entry.local) and ts_within(rts, entry.remote)]
                if covering:
                    kept.append((lts, rts, min(covering)))
            selectors = []
            for lts, rts, priority in kept:
                for selector in ts_to_selectors(lts, rts):
                    if selector not in priorities:
                        selectors.append(selector)
                        priorities[selector] = priority
        else:
            selectors = [sel for lts, rts in pairs for sel in ts_to_selectors(lts, rts)]
        inbound, outbound = event.sa_params(tuple(selectors), tuple(selectors))
        inbound = replace(inbound, src=sad_address(inbound.src), dst=sad_address(inbound.dst))
        outbound = replace(outbound, src=sad_address(outbound.src), dst=sad_address(outbound.dst))
        if event.mode is Mode.TRANSPORT and len(event.local_ts) == 1 and \
                len(event.remote_ts) == 1 and is_host(event.local_ts[0]) and \
                is_host(event.remote_ts[0]):
            # Transport SAs carry SA-level addresses: the HoA, not the CoA the
            # IKE SA runs from (MN-HA MH pair, draft §7.1; IRO remaps on the wire).
            local_host, remote_host = event.local_ts[0].start, event.remote_ts[0].start
            if (local_host, remote_host) != (inbound.dst, inbound.src):
                larval = services.sad.get(event.spi_in, Direction.IN, inbound.dst)
                if larval is not None:
                    services.sad.delete(event.spi_in, Direction.IN, inbound.dst,
                                    reason="ike: transport SA at the home address")
                inbound = replace(inbound, src=remote_host, dst=local_host)
                outbound = replace(outbound, src=local_host, dst=remote_host)
        lifetimes = {"soft": Lifetime(seconds=self.child_soft),
                     "hard": Lifetime(seconds=self.child_hard),
                     "backend": services.config.keys.backend,
                     "replay_window": services.config.keys.replay_window}
        inbound = replace(inbound, **lifetimes)
        outbound = replace(outbound, **lifetimes)
        try:
            services.sad.update(inbound, now)
        except SadError:
            # The larval reservation is gone (timed out), or it names addresses
            # the IKE SA has since left (the MN's CoA moved): drop it, ADD afresh.
            if services.sad.get(inbound.spi, Direction.IN, inbound.dst) is not None:
                services.sad.delete(inbound.spi, Direction.IN, inbound.dst,
                                reason="ike: reservation at a former address")
            services.sad.add(inbound, now)
        services.sad.add(outbound, now)
        record = ChildRecord(sa, event, sa_dst_in=inbound.dst, sa_dst_out=outbound.dst,
                             selectors={sel: priorities.get(sel, CHILD_POLICY_PRIORITY)
                                        for sel in selectors})
        record_seq = next(self._policy_seq)
        self._index_child(event.spi_in, record)
        for index, selector in enumerate(selectors):
            name = f"ike-{event.name}-{record_seq}.{index}-in"
            if self._add_policy(name, Direction.IN, selector, event.spi_in,
                                record.selectors[selector]):
                record.policies.append(name)
            # §2.8: new traffic on the new SA now (this also moves it off a
            # replaced IKE SA's child); the old inbound SA stays until DELETE.
            # Rekeyed by the peer: the old SA keeps our traffic until the peer
            # deletes it, as the peer may not have the new inbound SA yet.
            holder = self.children.get(self._outbound.get(self._outbound_key(record, selector),
                                                          -1))
            if responder and rekey_of is not None and holder is not None \
                    and holder.event.spi_in == rekey_of:
                continue
            self._take_outbound(record, selector)
        self.counters["child_sa_rekeyed" if rekey_of is not None else "child_sa_created"] += 1
        log.info("ike child sa installed", peer=event.ike_name, child=event.name,
                 spi_in=f"{event.spi_in:#010x}", spi_out=f"{event.spi_out:#010x}",
                 suite=event.suite, mode=event.mode.value, policies=len(record.policies),
                 rekey_of=f"{rekey_of:#010x}" if rekey_of is not None else "-")
        # A new transport pair may be one IRO must track (MH rules, draft §6.2.3, §6.2.4):
        # the mobility agent sees its ADD on the SADB bus.

    def _remove_policy(self, name: str) -> None:
        if name in self.services.spd:
            self.services.spd.remove(name)

    def _add_policy(self, name: str, direction: Direction, selector: Selector, spi: int,
                    priority: int) -> bool:
        try:
            self.services.spd.add(Policy(name, direction, selector, Action.PROTECT, (spi,),
                                         priority))
        except SpdError as exc:
            log.error("ike policy refused", policy=name, error=str(exc))
            return False
        return True

    @staticmethod
    def _outbound_key(record: ChildRecord, selector: Selector) -> tuple[Any, ...]:
        """What makes two CHILD_SAs successors for *selector*: the same peer,
        child, mode and priority (a responder names every child of a peer
        alike, and a tunnel child may also cover an MH transport child's
        selector, at a lower priority: those two are not one another's)."""
        return (record.ike_sa.config.name, record.event.name, record.event.mode, selector,
                record.selectors.get(selector))

    def _take_outbound(self, record: ChildRecord, selector: Selector) -> None:
        """*record*'s CHILD_SA carries *selector*'s outbound traffic from now on:
        the policy moves to it from whichever child had it."""
        key = self._outbound_key(record, selector)
        holder = self.children.get(self._outbound.get(key, -1))
        if holder is not None and holder is not record:
            name = holder.outbound.pop(selector, None)
            if name is not None:
                self._remove_policy(name)
                holder.policies.remove(name)
                self.counters["outbound_moved"] += 1
        event = record.event
        name = f"ike-{event.name}-{next(self._policy_seq)}-out"
        if self._add_policy(name, Direction.OUT, selector, event.spi_out,
                            record.selectors[selector]):
            record.policies.append(name)
            record.outbound[selector] = name
            self._outbound[key] = event.spi_in

    def _index_child(self, spi_in: int, record: ChildRecord) -> None:
        previous = self.children.get(spi_in)
        if previous is not None:
            self._unindex_child(spi_in, previous)
        self.children[spi_in] = record
        self._children_by_spi_out.setdefault(record.event.spi_out, {})[spi_in] = None
        self._children_by_ike_sa.setdefault(record.ike_sa, {})[spi_in] = None

    def _unindex_child(self, spi_in: int, record: ChildRecord) -> None:
        by_spi = self._children_by_spi_out.get(record.event.spi_out)
        if by_spi is not None:
            by_spi.pop(spi_in, None)
            if not by_spi:
                del self._children_by_spi_out[record.event.spi_out]
        by_sa = self._children_by_ike_sa.get(record.ike_sa)
        if by_sa is not None:
            by_sa.pop(spi_in, None)
            if not by_sa:
                del self._children_by_ike_sa[record.ike_sa]

    def _remove_child(self, spi_in: int, reason: str) -> None:
        record = self.children.pop(spi_in, None)
        if record is None:
            return
        self._unindex_child(spi_in, record)
        services = self.services
        event = record.event
        for name in record.policies:
            self._remove_policy(name)
        for selector in record.outbound:
            # Its traffic goes back to the newest other child with that selector
            # (the survivor of a simultaneous rekey), if any.
            key = self._outbound_key(record, selector)
            if self._outbound.get(key) != spi_in:
                continue
            del self._outbound[key]
            heir = next((other for other in reversed(self.children.values())
                         if selector in other.selectors
                         and self._outbound_key(other, selector) == key), None)
            if heir is not None:
                self._take_outbound(heir, selector)
        for spi, direction, dst in ((event.spi_in, Direction.IN, record.sa_dst_in),
                                    (event.spi_out, Direction.OUT, record.sa_dst_out)):
            if services.sad.get(spi, direction, dst) is None:
                # A tunnel SA may have moved with the CoA (MIGRATE): find it by SPI.
                dst = next((info.dst for info in services.sad.dump(publish=False)
                            if info.spi == spi and info.direction is direction), None)
            if dst is not None:
                services.sad.delete(spi, direction, dst, reason=reason)
        self.counters["child_sa_removed"] += 1
        log.info("ike child sa removed", child=event.name, spi_in=f"{event.spi_in:#010x}",
                 reason=reason)

    def _on_sadb_event(self, event: SadbEvent) -> None:
        """Soft expiry → rekey, hard → delete (RFC 4301 §4.4.2.1, RFC 7296 §2.8)."""
        if not isinstance(event, ExpireEvent) or event.sa.origin != "ike":
            return
        spi_in = self._child_of(event.sa.spi, event.sa.direction)
        if spi_in is None or self._loop is None:
            return
        # The bus is not re-entrant: act after this publish has finished.
        self._loop.call_soon(self._expired, spi_in, event.kind)

    def _child_of(self, spi: int, direction: Direction) -> int | None:
        if direction is Direction.IN:
            return spi if spi in self.children else None
        # Two peers may pick the same outbound SPI: the oldest child, as before.
        return next(iter(self._children_by_spi_out.get(spi, ())), None)

    def _expired(self, spi_in: int, kind: str) -> None:
        record = self.children.get(spi_in)
        if record is None:
            return
        now = self.services.clock()
        sa = record.ike_sa
        try:
            if str(kind) == "soft":
                if record.rekeying or not sa.is_established:
                    return
                record.rekeying = True
                self.counters["rekey_on_soft_expire"] += 1
                sa.rekey_child(spi_in, now)
            else:
                self.counters["delete_on_hard_expire"] += 1
                if sa.is_established and spi_in in sa.children:
                    sa.delete_child(spi_in, now)
                self._remove_child(spi_in, "hard expire")
        except (VmipError, RuntimeError) as exc:
            log.warning("ike expire not handled", spi_in=f"{spi_in:#010x}", error=str(exc))
        # Only this child's IKE SA was acted on: its endpoint collects it
        # (on_output); collecting every SA would cost O(SAs) per expiry.
        self._pump(now)
