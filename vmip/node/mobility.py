"""The node's mobility layer: MIPv6 cores, IRO remap engine and SPI tracking, wired together.

The sans-IO pieces live in :mod:`vmip.mobility`; this module is the glue
the runtime calls:

- per packet: :meth:`MobilityAgent.outbound` (IRO outbound rules after ESP,
  then, on an MN, the reverse tunnel for what still carries the HoA: draft
  appendix J, the HoA never on the foreign link) and
  :meth:`MobilityAgent.inbound` (IRO inbound rules before ESP, with the
  ancillary on-wire addresses of draft §5.1.1);
- per Mobility Header message: :meth:`MobilityAgent.receive_mh` dispatches
  to the MN core (BA, BRR, BE, AOTC, AOTS), the HA core (BU to the HA's
  address) or the CN core (BU, AOTO, AOTR);
- per core action: :meth:`MobilityAgent.pump` sends what the cores queued
  (each with its ancillary data), and turns their actions into SAD MIGRATEs
  (the tunnel follows the CoA) and IRO data bindings (the tracker);
- movement: :meth:`MobilityAgent.move` (draft §6.1: rules first, then the
  BUs to the HA and every CN); with ``multiple_care_of``,
  :meth:`MobilityAgent.set_care_of_links` (one binding per usable link,
  RFC 5648) and :meth:`MobilityAgent.paths_to` (the bound paths to a peer,
  best first, for the send path; docs/multi-coa.md).

Every decision the draft leaves open is in docs/iro.md.
"""

from __future__ import annotations

import asyncio
import collections
from ipaddress import IPv6Address, IPv6Network
from typing import Any

from vmip.config.model import Role as ConfigRole
from vmip.ipsec import esp as esp_mod
from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.sadb import AddEvent, DeleteEvent, SadbEvent, UpdateEvent
from vmip.ipsec.spd import Action as SpdAction
from vmip.log import get_logger
from vmip.mobility import events as ev
from vmip.mobility.ancillary import Ancillary
from vmip.mobility.binding import MobilityError, OnWire
from vmip.mobility.cn import Correspondent
from vmip.mobility.ha import HomeAgent
from vmip.mobility.mn import EntryState, MobileNode
from vmip.mobility.remap import RemapEngine
from vmip.mobility.spi_tracking import Role as TrackRole
from vmip.mobility.spi_tracking import SpiTracker
from vmip.node.events import event_fields, jsonable
from vmip.node.movement import PreviousCoas
from vmip.node.paths import BoundPath, PathTable
from vmip.node.services import NodeServices
from vmip.node.tun import IcmpErrorRateLimiter
from vmip.wire import proto
from vmip.wire.errors import WireError
from vmip.wire.icmpv6 import (
    PARAMETER_PROBLEM,
    ParameterProblem,
    build_icmpv6_packet,
    may_send_error,
)
from vmip.wire.ipv6 import parse_ipv6
from vmip.wire.mh import MHType

log = get_logger(__name__)

_MH = proto.MOBILITY
#: MH types handled by the MN core; the rest (BU 5, AOTO 30, AOTR 32) by the HA/CN cores.
_TO_MOBILE_NODE = frozenset({MHType.BINDING_REFRESH_REQUEST, MHType.BINDING_ACK,
                             MHType.BINDING_ERROR, MHType.AOTC, MHType.AOTS})

#: ICMPv6 errors about malformed MH: per second, and in a burst (RFC 4443 §2.4(f)).
MH_ERROR_RATE = 10.0
MH_ERROR_BURST = 10


class MobilityAgent:
    """Roles, rules and the per-packet hooks of one node."""

    def __init__(self, services: NodeServices, now: float) -> None:
        self.services = services
        cfg = services.config
        mob = cfg.mobility
        self.remap = RemapEngine()
        self.tracker = SpiTracker(services.bus, self.remap, spd=services.spd, sad=services.sad)
        services.bus.subscribe(self._on_sadb_event)
        self.counters: collections.Counter[str] = collections.Counter()
        # Per (local, HoA) our CN role serves: the CoA its data is accepted
        # from and the one it is sent to (AcceptFrom, SendTo; draft §4.5.1).
        # One entry per MN the CN core holds, gone when both are None.
        self._cn_paths: dict[tuple[IPv6Address, IPv6Address],
                             tuple[IPv6Address | None, IPv6Address | None]] = {}
        # The MN's reverse tunnel SA, looked up again after any SADB change.
        self._reverse_tunnel_sa: Any = None
        self._reverse_tunnel_valid = False
        # The HA's tunnel SAs per home address, [spi, direction, dst] each, built
        # when first needed after an SA or policy change: a BU then touches its
        # MN's SAs only, not every SA and policy of the HA (docs/scale.md).
        self._mn_tunnels: dict[IPv6Address, list[list[Any]]] | None = None
        self._mn_tunnels_generation = -1
        self.local_addresses = {a.ip for a in cfg.tun.addresses if a.version == 6}
        # RFC 5648: the bound paths per peer (docs/multi-coa.md).
        self.paths = PathTable(self._link_of_bid)
        self.multiple_care_of = False
        # MN with multiple_care_of: our CoAs by BID, primary first (the last
        # CareOfAddressesChanged); per peer, the CoA DataPathChanged named
        # for direct data (None: through the HA).
        self._own_coas: tuple[tuple[int, IPv6Address], ...] = ()
        self._mn_direct: dict[IPv6Address, IPv6Address | None] = {}
        # The CN role's multi-CoA paths per (local, HoA): (accept, send) CoAs.
        self._cn_multi: dict[tuple[IPv6Address, IPv6Address],
                             tuple[tuple[IPv6Address, ...], tuple[IPv6Address, ...]]] = {}
        # HoAs whose bound CoAs changed at our HA or CN role: their locators
        # are brought in step at the end of the pump.
        self._locators_to_bind: set[IPv6Address] = set()

        self.mn: MobileNode | None = None
        # Packets still arriving at the CoA the MN just left (docs/demo.md, rx_previous_coa).
        self.previous_coas = PreviousCoas()
        self.hoa: IPv6Address | None = None
        self.hoa_packed = b""
        self.home_agent: IPv6Address | None = None
        if cfg.has_role(ConfigRole.MN):
            self.multiple_care_of = bool(mob.multiple_care_of)
            self.hoa = mob.home_address
            self.hoa_packed = self.hoa.packed
            self.home_agent = mob.home_agent
            # MN-MN moving at once: first try the CoA our CN role holds for the
            # peer (docs/mobility.md "simultaneous movement").
            self.mn = MobileNode(self.hoa, self.home_agent, mob.correspondents,
                                 lifetime=mob.binding_lifetime, clock_now=now,
                                 peer_coa=self._peer_coa,
                                 # CN BUs leave with the home BU on a move (docs/mobility.md).
                                 correspondents_with_home=True,
                                 # K (RFC 6275 §11.7.1): with IKE the MN-HA IKE SA
                                 # follows the CoA (IkeManager.coa_changed).
                                 key_management_mobility=str(cfg.keys.mode) == "ike",
                                 # RFC 5648: one binding per link (set_care_of_links).
                                 multiple_care_of=self.multiple_care_of)
            # A clean stop deletes our bindings instead of leaving them to expire.
            services.on_stop("mobility", self.deregister)
        self._deregistered: asyncio.Event | None = None
        self._icmp_errors = IcmpErrorRateLimiter(MH_ERROR_RATE, MH_ERROR_BURST)
        self.ha: HomeAgent | None = None
        self.ha_address: IPv6Address | None = None
        if cfg.has_role(ConfigRole.HA):
            prefix: IPv6Network = mob.home_prefix
            self.ha_address = next(a for a in self.local_addresses if a in prefix)
            self.ha = HomeAgent(self.ha_address, prefix, max_lifetime=mob.binding_lifetime,
                                max_bindings=mob.max_home_bindings, clock_now=now,
                                max_bids_per_hoa=mob.max_care_of_addresses)
        self.cn = Correspondent(known_peers=self._known_peer,
                                max_lifetime=mob.binding_lifetime,
                                proof_cache_size=mob.proof_cache_size, clock_now=now,
                                home_test_on_registration=mob.home_test_on_registration,
                                home_test_interval=mob.home_test_interval,
                                local_coa=self._local_coa,
                                max_bids_per_hoa=mob.max_care_of_addresses)
        # Inbound transport SAs by (SPI, destination) -> (local, remote), and
        # how many SAs each pair and each remote has: kept by the SADB
        # subscription, so neither a CN's check of a BU's HoA nor an SA an
        # IKE exchange adds dumps the SAD (O(1) each instead of O(SAs)).
        self._transport_in: dict[tuple[int, Any], tuple[IPv6Address, IPv6Address]] = {}
        self._transport_pairs: collections.Counter[tuple[IPv6Address, IPv6Address]] = \
            collections.Counter()
        self._transport_remotes: collections.Counter[IPv6Address] = collections.Counter()
        for info in self.services.sad.dump(publish=False):
            self._note_transport(info)
        self._register_intents()

    # -- set-up ----------------------------------------------------------------

    def _transport_peers(self) -> set[tuple[IPv6Address, IPv6Address]]:
        """(local, remote) address pairs of our inbound transport SAs."""
        return set(self._transport_pairs)

    def _note_transport(self, info) -> tuple[IPv6Address, IPv6Address] | None:
        """An SA was added or changed: record it if it is an inbound transport
        SA; returns its (local, remote) pair when no other SA had that pair."""
        key = (info.spi, info.dst)
        self._forget_transport(key)
        if info.direction is not Direction.IN or info.mode is not Mode.TRANSPORT \
                or not isinstance(info.dst, IPv6Address) or not isinstance(info.src, IPv6Address):
            return None
        pair = (info.dst, info.src)
        self._transport_in[key] = pair
        self._transport_pairs[pair] += 1
        self._transport_remotes[info.src] += 1
        return pair if self._transport_pairs[pair] == 1 else None

    def _forget_transport(self, key: tuple[int, Any]) -> None:
        pair = self._transport_in.pop(key, None)
        if pair is None:
            return
        self._transport_pairs[pair] -= 1
        if self._transport_pairs[pair] <= 0:
            del self._transport_pairs[pair]
        self._transport_remotes[pair[1]] -= 1
        if self._transport_remotes[pair[1]] <= 0:
            del self._transport_remotes[pair[1]]

    def _register_intents(self) -> None:
        """Which SAs get IRO's MH rules (draft §3.2 pre-binding steps, §7 for the HA)."""
        for local, remote in sorted(self._transport_pairs):
            self._register_intent(local, remote)

    def _register_intent(self, local: IPv6Address, remote: IPv6Address) -> None:
        mn = self.mn
        if mn is not None and local == self.hoa:
            if remote == self.home_agent or remote in mn_correspondents(mn):
                # As an MN: our BUs leave from the CoA (rule 1), answers come back to it
                # (rule 4), or to any of our CoAs with several bindings (RFC 5648).
                self.tracker.track_mh(local, remote, TrackRole.MN, coa=mn.coa,
                                      others=[coa for _bid, coa in self._own_coas
                                              if coa != mn.coa])
            if remote == self.home_agent:
                return
        if self.ha is not None and local == self.ha_address \
                and remote in self.ha.home_prefix:
            self.tracker.track_mh(local, remote, TrackRole.HA)
            return
        # As a CN (every node is one): BUs from the peer's CoA (rule 2), answers to it (rule 3).
        self.tracker.track_mh(local, remote, TrackRole.CN)

    def _on_sadb_event(self, event: SadbEvent) -> None:
        """An SA came or went: the reverse tunnel SA may have changed, and a
        transport pair added after start (IKE-made) may be one IRO must track
        (MH rules, draft §6.2.3, §6.2.4)."""
        self.tunnel_changed()
        if isinstance(event, (AddEvent, UpdateEvent, DeleteEvent)):
            self._mn_tunnels = None      # a MIGRATE is ours: the index follows it itself
        if isinstance(event, (AddEvent, UpdateEvent)):
            # Only a pair no SA had before needs its intent (a rekey's new SA
            # of a known pair is tracked by the SpiTracker already).
            pair = self._note_transport(event.sa)
            if pair is not None:
                self._register_intent(*pair)
        elif isinstance(event, DeleteEvent):
            self._forget_transport((event.sa.spi, event.sa.dst))

    def _peer_coa(self, peer: IPv6Address) -> IPv6Address | None:
        binding = self.cn.binding(peer)
        return binding.coa if binding is not None else None

    def _local_coa(self, local: IPv6Address) -> IPv6Address | None:
        mn = self.mn
        return mn.coa if mn is not None and local == self.hoa else None

    def _known_peer(self, hoa: IPv6Address) -> bool:
        """A CN serves a HoA it shares an SA with (draft §8.1.2: proof of HoA ownership)."""
        return hoa in self._transport_remotes

    # -- what a binding vouches for (locators, forwarding: docs/security.md) ---------

    def binds(self, peer: IPv6Address, address: bytes, *, home_only: bool = False) -> bool:
        """Does a binding of *peer* (a home address) name *address* as its
        care-of address?  The home registration at our HA role; with
        ``home_only`` false also our CN role's binding and the CoA it accepts
        traffic from (draft §4.5.1).  A refused BU vouches for nothing: its
        BA goes back to the endpoint the BU came from (``Node._relocate``)."""
        ha = self.ha
        if ha is not None:
            entry = ha.binding(peer)
            if entry is not None and entry.coa is not None and entry.coa.packed == address:
                return True
        if self.paths.bound(peer, address, home_only=home_only):
            return True     # one of several bindings (RFC 5648): HA, or proven at the CN
        if home_only:
            return False
        cn = self.cn
        entry = cn.binding(peer)
        if entry is not None and entry.coa is not None and entry.coa.packed == address:
            return True
        coa = cn.accepting_from(peer)
        # Accepted but still being proven: see proposes().
        return coa is not None and coa.packed == address and coa != cn.pending_coa(peer)

    def proposes(self, peer: IPv6Address, address: bytes) -> bool:
        """Is *address* the CoA a BU of *peer* named whose proof is pending at
        our CN role (draft §4.4.2)?  Unproven: it vouches for creating a
        locator only, never for moving one."""
        coa = self.cn.pending_coa(peer)
        if coa is not None and coa.packed == address:
            return True
        # Another BID's CoA, accepted at its BU and not proven yet (RFC 5648).
        return self.paths.accepting(peer, address) and not self.paths.bound(peer, address)

    def holder_of(self, address: bytes) -> IPv6Address | None:
        """The home address whose home registration at our HA role names
        *address* as its CoA (its tunnel SA's outer address), if any."""
        if self.ha is None or len(address) != 16:
            return None
        return self.ha.holder_of(IPv6Address(address)) or self.paths.holder_of(address)

    def is_home_address(self, address: bytes) -> bool:
        """Is *address* a home address this node knows of: inside the prefix
        our HA role serves (not the HA's own address), or the HoA of a mobile
        node registered with our CN role?  A home address is reached through
        its HA, never at a locator of its own (draft appendix J)."""
        if self.ha is not None:
            candidate = IPv6Address(address)
            if candidate in self.ha.home_prefix and candidate != self.ha_address:
                return True
        return self.cn.knows_mobile(IPv6Address(address)) if len(address) == 16 else False

    def start(self, coa: IPv6Address | None, now: float) -> None:
        """An MN starts away from home on *coa*: register with the HA and the CNs."""
        if self.mn is not None and coa is not None:
            if self.multiple_care_of:
                # The movement watcher adds the other usable links at its first look.
                link = self._link_of_coa(coa)
                if link is not None:
                    self.set_care_of_links([link], link, now)
                    return
            self.mn.set_coa(coa, now)
        self.pump(now)

    # -- several bindings at once (RFC 5648; docs/multi-coa.md) --------------------

    def bid_of_link(self, link: str) -> int | None:
        """An MN's BID for *link*: its 1-based position in the config's [[link]] list."""
        for index, each in enumerate(self.services.config.links, start=1):
            if each.name == link:
                return index
        return None

    def _link_of_bid(self, bid: int) -> str | None:
        links = self.services.config.links
        return links[bid - 1].name if 1 <= bid <= len(links) else None

    def _link_of_coa(self, coa: IPv6Address) -> str | None:
        for each in self.services.config.links:
            if each.coa == coa:
                return each.name
        return None

    def set_care_of_links(self, links: list[str], primary: str | None, now: float) -> None:
        """MN with ``multiple_care_of``: one binding per link of *links* (those with
        a CoA), *primary* the preferred one.  A link left out is deregistered by
        the core over a remaining one; one added is registered at once."""
        mn = self.mn
        if mn is None or not self.multiple_care_of:
            raise ValueError("this node is not a mobile node with multiple_care_of")
        coas: dict[int, IPv6Address] = {}
        order = ([primary] if primary in links else []) + [x for x in links if x != primary]
        for link in order:
            bid, coa = self.bid_of_link(link), self.services.link_coa(link)
            if bid is not None and isinstance(coa, IPv6Address):
                coas[bid] = coa
        mn.set_care_of_addresses(coas, now)
        wanted = self.bid_of_link(primary) if primary is not None else None
        if wanted is not None and wanted in coas and mn.primary_bid != wanted:
            mn.set_primary(wanted, now)
        self.pump(now)

    def paths_to(self, peer: bytes) -> list[BoundPath]:
        """The bound paths for direct IPsec data to *peer* (the inner destination,
        16 bytes), best first: on an MN the primary link first; on a CN the
        path the MN's latest authenticated data came on, else its primary.
        ``[]``: no multi-CoA binding, send as with one (ancillary None).  The
        list is shared: read it, never change it."""
        return self.paths.paths_to(peer)

    def data_arrived(self, source: bytes, on_wire_source: bytes, link: str,
                     now: float) -> None:
        """An authenticated data packet from *source* (SA-level) arrived from
        *on_wire_source* on our *link*: a CN's best path to a HoA follows the
        MN's choice, and each path's silence is timed (hedging, paths.py)."""
        self.paths.arrived(source, on_wire_source, now, link)

    def _sync_mn_rules(self) -> None:
        """MN with ``multiple_care_of``: the MH and data rules from what the core
        last said.  Every CoA of ours is expected inbound on every bound SA
        (they are all ours; ESP still judges the packet); outbound data leaves
        from the CoA the send path names, else the primary one."""
        hoa = self.hoa
        if hoa is None:
            return
        own = tuple(coa for _bid, coa in self._own_coas)
        self.tracker.set_care_of_addresses(own)
        mn = self.mn
        peers = set(self._mn_direct)
        if mn is not None:
            peers |= {entry.peer for entry in mn.entries()}
        # The HA's data goes through the tunnel, as with one binding.
        peers.discard(self.home_agent)   # type: ignore[arg-type]
        for peer in peers:
            direct = self._mn_direct.get(peer)
            accept = tuple(coa for _bid, coa in (mn.paths(peer) if mn is not None else ()))
            if direct is None and not accept:
                self.tracker.unbind(hoa, peer, TrackRole.MN)
                continue
            if accept:
                primary = own[0] if own and own[0] in accept else accept[0]
            else:
                # A peer without RFC 5648: its one binding follows the primary CoA
                # (draft §6.1, rules first; the core re-registers it).
                primary = own[0] if own else direct   # type: ignore[assignment]
            assert primary is not None
            others = tuple(c for c in (*own, *accept, direct) if c is not None and c != primary)
            self.tracker.bind_data(hoa, peer, primary, TrackRole.MN, others=others)

    def _peer_paths_changed(self, core: Any, event: ev.PathsChanged) -> None:
        """A CN's or HA's bound paths of one MN (RFC 5648)."""
        accept, send = event.accept, event.send
        if core is self.ha:
            removed = self.paths.peer_paths(event.peer, accept, send, home_agent=True)
        else:
            key = (event.local, event.peer)
            if accept or send:
                self._cn_multi[key] = (tuple(coa for _bid, coa in accept),
                                       tuple(coa for _bid, coa in send))
            else:
                self._cn_multi.pop(key, None)
            removed = self.paths.peer_paths(event.peer, accept, send)
            # The primary binding's CoA (the last SendTo) ranks after the mirror.
            self.paths.primary(event.peer, self._cn_paths.get(key, (None, None))[1])
            self._cn_rules(event.local, event.peer)
        # The locators of a binding's CoAs are that HoA's; those of a binding
        # that went are forgotten (a new BU from there learns them again),
        # once the answer to the BU that removed it has left (end of pump).
        self._locators_to_bind.add(event.peer)
        if removed:
            self.counters["paths_removed"] += len(removed)

    # -- per packet ---------------------------------------------------------------

    def outbound(self, packet: bytes, ancillary: Ancillary | None, now: float) -> bytes | None:
        """IRO outbound rules (after ESP); on an MN, the reverse tunnel for the HoA."""
        wire = self.remap.outbound(packet, ancillary)
        if wire is None:
            self.counters["tx_drop_remap"] += 1
            return None
        if self.hoa_packed and wire[8:24] == self.hoa_packed:
            # Not remapped: it would show the HoA on the foreign link.  Send it
            # through the HA instead (RFC 6275 §11.3.1 reverse tunnelling).
            return self._reverse_tunnel(wire, now)
        return wire

    def _reverse_tunnel(self, packet: bytes, now: float) -> bytes | None:
        sa = self._tunnel_sa()
        if sa is None:
            self.counters["tx_drop_no_tunnel"] += 1
            return None
        wrapped = esp_mod.tunnel_encap(packet, sa, now)
        if wrapped is None:
            self.counters["tx_drop_tunnel_sa"] += 1
        return wrapped

    def tunnel_changed(self) -> None:
        """An SA changed: look the reverse tunnel SA up again when next needed."""
        self._reverse_tunnel_valid = False

    def _tunnel_sa(self) -> Any:
        if not self._reverse_tunnel_valid:
            self._reverse_tunnel_sa = None
            sad = self.services.sad
            for info in sad.dump(publish=False):
                if info.mode is Mode.TUNNEL and info.direction is Direction.OUT \
                        and info.dst == self.home_agent and info.state != "larval":
                    self._reverse_tunnel_sa = sad.esp(info.spi, Direction.OUT, info.dst)
                    break
            self._reverse_tunnel_valid = True
        return self._reverse_tunnel_sa

    def inbound(self, wire: bytes) -> tuple[bytes, Ancillary] | None:
        result = self.remap.inbound_ancillary(wire)
        if result is None and self.mn is not None:
            # An address under an early test may also be one just left: the
            # test needs the address it was sent to, so it goes first.
            result = self._inbound_at_tested_address(wire)
            redirected = None if result is not None else \
                self.previous_coas.redirect(wire, self.services.clock())
            if redirected is not None:
                result = self.remap.inbound_ancillary(redirected)
                if result is not None:
                    self.counters["rx_previous_coa"] += 1
        if result is None:
            self.counters["rx_drop_remap"] += 1
        return result

    def _inbound_at_tested_address(self, wire: bytes) -> tuple[bytes, Ancillary] | None:
        """An MN's packet to an address of its own it is proving by an early test
        (draft §4.5.2: the AOTC and AOTS come there, not to the CoA).

        The inbound rules name the current CoA only, so the packet is taken
        as if it had reached the CoA and the address it really came to goes
        to MIPv6 as the on-wire destination (§5.1.1), which tells the MN
        core which test the AOTC answers.  ESP and the inbound policy still
        judge it, as any packet."""
        mn = self.mn
        coa = mn.coa if mn is not None else None
        if mn is None or coa is None or len(wire) < 40:
            return None
        address = IPv6Address(bytes(wire[24:40]))
        if address == coa or not mn.testing(address):
            return None
        result = self.remap.inbound_ancillary(b"".join((wire[:24], coa.packed, wire[40:])))
        if result is None:
            return None
        packet, ancillary = result
        self.counters["rx_tested_address"] += 1
        if ancillary.dst == coa.packed:
            ancillary = Ancillary(ancillary.src, address.packed)
        return packet, ancillary

    def offer_early_tests(self, address: IPv6Address, now: float,
                          peer: IPv6Address | None = None) -> int:
        """Early tests of *address*, a CoA this MN may move to, with every CN it is
        registered with (or *peer* only): draft §4.5.2.  Returns how many started."""
        mn = self.mn
        if mn is None or address == mn.coa:
            return 0
        started = 0
        for entry in mn.entries():
            if entry.home or entry.unsupported or (peer is not None and entry.peer != peer):
                continue
            if entry.state is not EntryState.BOUND or entry.coa != mn.coa:
                continue   # draft §4.4.1: only once registered (from the current CoA)
            if self.cn.knows_mobile(entry.peer) and self._peer_coa(entry.peer) is None:
                # Another MN whose CoA we do not hold yet: the AOTO would go to
                # its HoA, through its HA, which forwards no such transit ESP.
                continue
            try:
                mn.offer_address_test(entry.peer, address, now)
            except MobilityError as exc:
                log.info("early test not offered", peer=entry.peer, address=address,
                         reason=str(exc))
                continue
            started += 1
        if started:
            self.counters["early_tests_offered"] += started
            self.pump(now)
        return started

    # -- Mobility Header ---------------------------------------------------------

    def receive_mh(self, inner: bytes, onwire: Ancillary | None, now: float) -> bool:
        """An authenticated packet addressed to us; True if it was MH and consumed."""
        if len(inner) < 41 or inner[0] >> 4 != 6:
            return False
        if inner[6] == _MH:
            mh = inner[40:]
        else:
            try:
                parsed = parse_ipv6(inner)
            except WireError:
                return False
            if parsed.upper_layer_protocol != _MH:
                return False
            mh = bytes(parsed.upper_layer)
        src, dst = IPv6Address(inner[8:24]), IPv6Address(inner[24:40])
        wire = OnWire(onwire.src_address, onwire.dst_address) if onwire else OnWire()
        mh_type = mh[2] if len(mh) > 2 else -1
        core: MobileNode | HomeAgent | Correspondent
        if mh_type in _TO_MOBILE_NODE and self.mn is not None and dst == self.hoa:
            core = self.mn
        elif self.ha is not None and dst == self.ha_address:
            core = self.ha
        else:
            core = self.cn
        core.receive(mh, src, dst, wire, now)
        pointer = core.take_parameter_problem()
        if pointer is not None:
            self._parameter_problem(inner, len(inner) - len(mh) + pointer, now)
        self.counters["rx_mh"] += 1
        self.pump(now)
        return True

    def _parameter_problem(self, inner: bytes, pointer: int, now: float) -> None:
        """RFC 6275 §9.2: ICMPv6 Parameter Problem, code 0, for a malformed MH
        (pointer from the start of *inner*), rate-limited (RFC 4443 §2.4(f))."""
        if not may_send_error(inner, PARAMETER_PROBLEM):
            return
        if not self._icmp_errors.allow(now):
            self.counters["mh_parameter_problem_rate_limited"] += 1
            return
        error = build_icmpv6_packet(ParameterProblem(0, pointer, inner), inner[24:40], inner[8:24])
        self.services.send_inner(error, None, now)
        self.counters["mh_parameter_problem_sent"] += 1

    # -- actions -------------------------------------------------------------------

    def cores(self) -> list[Any]:
        return [core for core in (self.mn, self.ha, self.cn) if core is not None]

    def pump(self, now: float) -> None:
        """Send what the cores queued and carry out what they decided."""
        for _ in range(16):   # actions may queue more packets; bounded
            busy = False
            for core in self.cores():
                while (event := core.next_event()) is not None:
                    busy = True
                    self._on_event(core, event, now)
                for out in core.datagrams_to_send(now):
                    busy = True
                    self.services.send_inner(out.packet,
                                             Ancillary.of(out.onwire_src, out.onwire_dst), now)
            if not busy:
                break
        while self._locators_to_bind:
            hoa = self._locators_to_bind.pop()
            self.services.locators.set_bound(hoa, self._bound_coas(hoa))
        self.services.pump.arm()
        if self._deregistered is not None and not self._deregistering():
            self._deregistered.set()

    def get_timer(self) -> float | None:
        timers = [t for t in (core.get_timer() for core in self.cores()) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        for core in self.cores():
            timer = core.get_timer()
            if timer is not None and timer <= now:
                core.handle_timer(now)
        self.pump(now)

    def _on_event(self, core: Any, event: ev.MobilityEvent, now: float) -> None:
        # The MN's own events at info; a HA's or CN's come per BU of every MN
        # it serves (thousands a second), and their cores log a sample.
        if core is self.mn or log.is_enabled("debug"):
            (log.info if core is self.mn else log.debug)(
                "mobility " + type(event).__name__,
                **{k: jsonable(v) for k, v in event_fields(event).items()})
        tracker = self.tracker
        multiple = self.multiple_care_of and core is self.mn
        # Rules first (draft §6.1), then whoever listens (the IKE SA follows the CoA).
        if isinstance(event, ev.CoaChanged) and multiple:
            # The primary CoA changed; the others may still be bound: the rules
            # are made again from the whole set, never by replacing one address.
            # The old primary stays when its link is still bound (a swap back to
            # a returning link): the HA's answers to its probes come to it
            # (RFC 5648: each binding stands until its BID is removed).
            bound = set(self.mn.care_of_addresses.values()) if self.mn is not None else set()
            own = [pair for pair in self._own_coas if pair[1] != event.new
                   and (pair[1] != event.old or pair[1] in bound)]
            if event.new is not None:
                bid = self.bid_of_link(self._link_of_coa(event.new) or "")
                own.insert(0, (bid or 0, event.new))
            self._own_coas = tuple(own)
            self._sync_mn_rules()
            self.previous_coas.moved(event.old, event.new, now)
        elif isinstance(event, ev.CoaChanged):
            tracker.move(event.old, event.new)
            self.previous_coas.moved(event.old, event.new, now)
        elif isinstance(event, ev.CareOfAddressesChanged):
            if event.coas:
                self._own_coas = event.coas
            # None usable, or deregistering: the answers still come to the CoAs
            # we had, so their MH rules stay.
            self._sync_mn_rules()
        elif isinstance(event, ev.PathsChanged):
            if core is self.mn:
                if event.peer != self.home_agent:
                    # The HA's data goes through the tunnel (primary CoA), not direct.
                    self.paths.mn_paths(event.peer, event.accept)
                self._sync_mn_rules()
            else:
                self._peer_paths_changed(core, event)
        elif isinstance(event, ev.TunnelEndpointChanged):
            if event.coa is not None:
                if core is self.mn:
                    self._migrate_own_tunnel(event.coa, now)
                elif core is self.ha:
                    self._migrate_mn_tunnel(event.hoa, event.coa, now)
        elif isinstance(event, ev.DataPathChanged) and multiple:
            if event.direct and event.coa is not None:
                self._mn_direct[event.peer] = event.coa
            else:
                self._mn_direct.pop(event.peer, None)
            self._sync_mn_rules()
        elif isinstance(event, ev.DataPathChanged):
            if event.direct and event.coa is not None:
                tracker.bind_data(event.hoa, event.peer, event.coa, TrackRole.MN)
            else:
                tracker.unbind(event.hoa, event.peer, TrackRole.MN)
        elif isinstance(event, (ev.AcceptFrom, ev.SendTo)):
            self._cn_data_path(event)
        self.services.events.publish(event)

    def _cn_data_path(self, event: ev.AcceptFrom | ev.SendTo) -> None:
        """The CN's data rules for one MN: inbound from the CoA the last
        AcceptFrom named, outbound to the one the last SendTo named.

        The two move apart on a BU for an unproven CoA: AcceptFrom(new CoA)
        comes first, then SendTo(None) until the proof.  Each event changes
        its own direction only, so the inbound rule stays while the proof is
        pending (draft §4.5.1: the MN's data from the new CoA is accepted
        at once; on a data-only SA nothing else would let it in)."""
        key = (event.local, event.hoa)
        accept, send = self._cn_paths.get(key, (None, None))
        if isinstance(event, ev.AcceptFrom):
            accept = event.coa
        else:
            send = event.coa
            self.paths.primary(event.hoa, send)
        if accept is None and send is None:
            self._cn_paths.pop(key, None)
        else:
            self._cn_paths[key] = (accept, send)
        self._cn_rules(event.local, event.hoa)

    def _cn_rules(self, local: IPv6Address, hoa: IPv6Address) -> None:
        """The CN role's data rules for one MN, from its primary binding
        (AcceptFrom, SendTo) and its other bindings (PathsChanged, RFC 5648):
        inbound from every CoA accepted, outbound to the primary proven one,
        or the one the send path names."""
        key = (local, hoa)
        accept, send = self._cn_paths.get(key, (None, None))
        multi = self._cn_multi.get(key)
        if multi is not None:
            accepted = tuple(dict.fromkeys(
                c for c in (accept, *multi[0]) if c is not None))
            if send is None and multi[1]:
                send = multi[1][0]
            if len(accepted) > 1:
                self.tracker.bind_data(local, hoa, accepted[0], TrackRole.CN, outbound=False,
                                       outbound_coa=send, others=accepted[1:])
                return
            accept = accepted[0] if accepted else None
        if accept is None and send is None:
            self.tracker.unbind(local, hoa, TrackRole.CN)
            return
        if accept is not None and send is not None and accept != send:
            self.tracker.bind_data(local, hoa, accept, TrackRole.CN,
                                   outbound=False, outbound_coa=send)
        elif accept is not None:
            self.tracker.bind_data(local, hoa, accept, TrackRole.CN, outbound=send is not None)
        else:
            assert send is not None
            self.tracker.bind_data(local, hoa, send, TrackRole.CN, inbound=False)

    # -- the tunnel follows the CoA (the MIGRATE equivalent, docs/mobility.md) -----

    def _bound_coas(self, hoa: IPv6Address) -> list[IPv6Address]:
        """Every CoA a binding of *hoa* names at our HA or CN role."""
        coas: list[IPv6Address] = []
        if self.ha is not None:
            entry = self.ha.binding(hoa)
            if entry is not None and entry.coa is not None:
                coas.append(entry.coa)
        entry = self.cn.binding(hoa)
        if entry is not None and entry.coa is not None:
            coas.append(entry.coa)
        accepted = self.cn.accepting_from(hoa)
        if accepted is not None:
            coas.append(accepted)
        for local in self.local_addresses:    # a few addresses, however many MNs
            multi = self._cn_multi.get((local, hoa))
            if multi is not None:
                coas.extend(multi[0])
        coas.extend(self.paths.home_coas(hoa))
        return coas

    def _migrate_own_tunnel(self, coa: IPv6Address, now: float) -> None:
        sad = self.services.sad
        for info in sad.dump(publish=False):
            if info.mode is not Mode.TUNNEL:
                continue
            if info.direction is Direction.OUT and info.dst == self.home_agent and info.src != coa:
                sad.migrate(info.spi, Direction.OUT, coa, info.dst, now, dst=info.dst)
            elif info.direction is Direction.IN and info.src == self.home_agent \
                    and info.dst != coa:
                sad.migrate(info.spi, Direction.IN, info.src, coa, now, dst=info.dst)
        self.tunnel_changed()

    def _migrate_mn_tunnel(self, hoa: IPv6Address, coa: IPv6Address, now: float) -> None:
        """The HA's tunnel SAs for *hoa* follow its CoA."""
        sad = self.services.sad
        entries = self._tunnel_sas_of(hoa)
        if any(sad.get(spi, direction, dst) is None for spi, direction, dst in entries):
            self._mn_tunnels = None       # moved behind our back: look again, once
            entries = self._tunnel_sas_of(hoa)
        for entry in entries:
            spi, direction, dst = entry
            info = sad.get(spi, direction, dst)
            if info is None:
                continue
            if direction is Direction.OUT and info.dst != coa:
                sad.migrate(spi, Direction.OUT, info.src, coa, now, dst=info.dst)
                entry[2] = coa
            elif direction is Direction.IN and info.src != coa:
                sad.migrate(spi, Direction.IN, coa, info.dst, now, dst=info.dst)
        self.tunnel_changed()

    def _tunnel_sas_of(self, hoa: IPv6Address) -> list[list[Any]]:
        """The tunnel SAs the policies naming *hoa* (a /128 remote) put it in."""
        spd = self.services.spd
        if self._mn_tunnels is None or self._mn_tunnels_generation != spd.generation:
            self._mn_tunnels_generation = spd.generation
            self._mn_tunnels = self._index_mn_tunnels()
        return self._mn_tunnels.get(hoa, [])

    def _index_mn_tunnels(self) -> dict[IPv6Address, list[list[Any]]]:
        names: dict[tuple[Direction, str], set[IPv6Address]] = {}
        for policy in self.services.spd.list():
            remote = policy.selector.remote
            if policy.action is not SpdAction.PROTECT or remote is None \
                    or remote.prefixlen != 128 or not isinstance(remote.network_address,
                                                                 IPv6Address):
                continue
            for name in policy.sa_bundle:
                names.setdefault((policy.direction, str(name)), set()).add(
                    remote.network_address)
        index: dict[IPv6Address, list[list[Any]]] = {}
        for info in self.services.sad.dump(publish=False):
            if info.mode is not Mode.TUNNEL:
                continue
            # Static policies name SAs; IKE-made ones name them by SPI (vmip.node.keying).
            hoas = names.get((info.direction, info.name), set()) \
                | names.get((info.direction, str(info.spi)), set())
            for owner in hoas:
                index.setdefault(owner, []).append([info.spi, info.direction, info.dst])
        return index

    # -- movement --------------------------------------------------------------------

    def move(self, coa: IPv6Address, now: float) -> None:
        if self.mn is None:
            raise ValueError("this node is not a mobile node")
        link = self._link_of_coa(coa) if self.multiple_care_of else None
        if link is not None:
            # The link of *coa* becomes the primary one; the others stay bound.
            current = [name for name in (self._link_of_bid(bid) for bid, _ in self._own_coas)
                       if name is not None]
            self.set_care_of_links(current + [link] if link not in current else current,
                                   link, now)
            return
        self.mn.set_coa(coa, now)
        self.pump(now)

    async def deregister(self) -> None:
        """The node stops: lifetime-0 BUs to the HA and every CN (RFC 6275
        §11.7.1 deregistration, from the CoA we are at), done once every
        peer answered; the node bounds the wait (STOP_GRACE)."""
        mn = self.mn
        if mn is None:
            return
        mn.deregister(self.services.clock())
        self._deregistered = asyncio.Event()
        self.pump(self.services.clock())
        await self._deregistered.wait()

    def _deregistering(self) -> bool:
        mn = self.mn
        return mn is not None and any(entry.state is EntryState.DEREGISTERING
                                      for entry in mn.entries())

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = {"counters": dict(self.counters),
                                  "remap": dict(self.remap.counters)}
        result["paths"] = self.paths.status()
        result["paths_counters"] = dict(self.paths.counters)
        if self.mn is not None:
            result["mn"] = {
                "hoa": str(self.hoa), "home_agent": str(self.home_agent),
                "coa": str(self.mn.coa) if self.mn.coa else None,
                "multiple_care_of": self.multiple_care_of,
                # RFC 5648: our CoAs by BID, the primary first.
                "care_of_addresses": [{"bid": bid, "link": self._link_of_bid(bid),
                                       "coa": str(coa)} for bid, coa in self._own_coas],
                "binding_update_list": [_entry_dict(e) for e in self.mn.entries()],
                "counters": dict(self.mn.counters),
            }
        if self.ha is not None:
            result["ha"] = {"address": str(self.ha_address),
                            "binding_cache": [_entry_dict(e) for e in self.ha.bindings()],
                            "counters": dict(self.ha.counters)}
        result["cn"] = {"binding_cache": [_entry_dict(e) for e in self.cn.bindings()],
                        "proofs": len(self.cn.proofs) if hasattr(self.cn.proofs, "__len__")
                        else None,
                        "counters": dict(self.cn.counters)}
        return result


def mn_correspondents(mn: MobileNode) -> set[IPv6Address]:
    return {entry.peer for entry in mn.entries() if entry.peer != mn.home_agent}


def _entry_dict(entry: Any) -> dict[str, Any]:
    return {k: jsonable(v) for k, v in event_fields(entry).items()
            if not k.startswith("_") and k not in ("nonce",)}
