"""A fake network for driving mobility cores against each other, and its own tests.

The other mobility test modules import it (``from test_mipv6_pair_harness
import ...``).  It models only what the cores rely on, in the draft's own
terms, independently of the cores' code:

* outbound remapping (draft §3.2 rules 1 and 3): the on-wire source is the
  packet's ``onwire_src`` ancillary data, else the SA-level source; the
  on-wire destination its ``onwire_dst``, else the SA-level one (MH SAs use
  "ancillary" rules; the static rules of ``SendTo`` actions are for data
  SAs and are only recorded here, in ``SimNode.send_to``);
* routing: an on-wire destination that is a node's current CoA or fixed
  address reaches that node; a HoA reaches the MN at home, or through its HA
  when the HA's ``TunnelEndpointChanged`` action names the CoA the MN holds
  now (otherwise the packet is lost, as a tunnel to a stale CoA would lose it);
* inbound remapping (draft §3.2 rules 2 and 4, §5.1.1): a replaced address
  is handed to the core as ancillary data (``OnWire``), ``None`` otherwise;
* dispatch by message type (:func:`core_role`).

The wire packet is parsed with scapy (an independent decoder) to get the
SA-level addresses and the Mobility Header.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network

import pytest
from scapy.compat import raw
from scapy.layers.inet6 import (
    MIP6MH_BA,
    MIP6MH_BU,
    IPv6,
    MIP6MH_Generic,
    MIP6OptAltCoA,
    MIP6OptBRAdvice,
    in6_chksum,
)

from vmip.mobility.binding import OnWire, Outgoing
from vmip.mobility.cn import Correspondent
from vmip.mobility.events import MobilityEvent, SendTo, TunnelEndpointChanged
from vmip.mobility.ha import HomeAgent
from vmip.mobility.mn import MobileNode

HA_ADDR = IPv6Address("2001:db8:100::1")
HOME_PREFIX = IPv6Network("2001:db8:100::/64")
HOA = IPv6Address("2001:db8:100::10")
HOA2 = IPv6Address("2001:db8:100::20")
CN_ADDR = IPv6Address("2001:db8:20::2")
WIFI = IPv6Address("2001:db8:31::2")
LTE = IPv6Address("2001:db8:41::2")
WIFI2 = IPv6Address("2001:db8:32::2")
LTE2 = IPv6Address("2001:db8:42::2")


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    generator = random.Random(seed)
    return lambda size: generator.randbytes(size)


# ---------------------------------------------------------------------------
# Packets built and read with scapy: an encoder and decoder independent of vmip.wire.

# AOTC/AOTR body (draft §4.4.2): reserved word, PadN of 6 so the Nonce option
# (type 88, length 8) starts at 8n+6 from the start of the MH, then the nonce.
_NONCE_LEAD = b"\x00\x00" + bytes((1, 4, 0, 0, 0, 0)) + bytes((88, 8))


def scapy_bu(
    seq: int,
    lifetime_units: int,
    coa: IPv6Address | None,
    src: IPv6Address = HOA,
    dst: IPv6Address = CN_ADDR,
    flags: str = "A",
) -> bytes:
    """A BU's Mobility Header, as scapy builds it, checksummed over src/dst."""
    options = [MIP6OptAltCoA(acoa=str(coa))] if coa is not None else []
    packet = IPv6(src=str(src), dst=str(dst)) / MIP6MH_BU(
        seq=seq, flags=flags, mhtime=lifetime_units, options=options
    )
    return raw(packet)[40:]


def scapy_ba(
    status: int,
    seq: int,
    lifetime_units: int,
    src: IPv6Address,
    dst: IPv6Address = HOA,
    refresh_units: int | None = None,
) -> bytes:
    options = [MIP6OptBRAdvice(rinter=refresh_units)] if refresh_units is not None else []
    packet = IPv6(src=str(src), dst=str(dst)) / MIP6MH_BA(
        status=status, seq=seq, mhtime=lifetime_units, options=options
    )
    return raw(packet)[40:]


def scapy_generic(mh_type: int, body: bytes, src: IPv6Address, dst: IPv6Address) -> bytes:
    return raw(IPv6(src=str(src), dst=str(dst)) / MIP6MH_Generic(mhtype=mh_type, msg=body))[40:]


def scapy_aotr(nonce: bytes, src: IPv6Address = HOA, dst: IPv6Address = CN_ADDR) -> bytes:
    return scapy_generic(32, _NONCE_LEAD + nonce, src, dst)


def scapy_aotc(nonce: bytes, src: IPv6Address = CN_ADDR, dst: IPv6Address = HOA) -> bytes:
    return scapy_generic(31, _NONCE_LEAD + nonce, src, dst)


def scapy_aoto(src: IPv6Address = HOA, dst: IPv6Address = CN_ADDR) -> bytes:
    return scapy_generic(30, b"\x00\x00", src, dst)


def dissect(outgoing: Outgoing | bytes) -> IPv6:
    """A packet a core produced, as scapy reads it; its MH checksum checked by scapy."""
    packet = outgoing.packet if isinstance(outgoing, Outgoing) else outgoing
    theirs = IPv6(packet)
    assert theirs.nh == 135
    assert in6_chksum(135, theirs.payload, packet[40:]) == 0, "MH checksum does not verify"
    return theirs


def nonce_of(outgoing: Outgoing) -> bytes:
    """The nonce of an AOTC/AOTR, read at the place the draft puts it (8n+6, type 88)."""
    mh = outgoing.packet[40:]
    assert mh[2] in (31, 32)
    offset = mh.index(bytes((88, 8)), 6)
    assert offset % 8 == 6, "Nonce option not at 8n+6"
    return mh[offset + 2 : offset + 10]


def core_role(mh: bytes) -> str:
    """Which core of the receiving node gets this Mobility Header.

    By type, as the draft's roles go: home registrations (BU with H) to the
    HA; BA, BRR, BE, AOTC and AOTS to the MN; other BUs, AOTO, AOTR and
    anything unknown or short to the correspondent, which counts it.  (The
    runtime also looks at the destination address: MobilityAgent.receive_mh.)
    """
    if len(mh) < 8:
        return "cn"
    if mh[2] == 5:  # BU: the H flag is bit 0x40 of MH octet 8 (RFC 6275 §6.1.7)
        return "ha" if len(mh) > 8 and mh[8] & 0x40 else "cn"
    return "mn" if mh[2] in (0, 6, 7, 31, 33) else "cn"  # BRR, BA, BE, AOTC, AOTS


@dataclass
class Delivery:
    """One packet as it crossed the fake network."""

    time: float
    sender: str
    receiver: str | None
    packet: bytes
    src: IPv6Address
    dst: IPv6Address
    wire_src: IPv6Address
    wire_dst: IPv6Address
    mh_type: int
    via_tunnel: bool

    @property
    def mh(self) -> bytes:
        return self.packet[40:]


@dataclass
class SimNode:
    name: str
    mn: MobileNode | None = None
    ha: HomeAgent | None = None
    cn: Correspondent | None = None
    fixed: IPv6Address | None = None
    # Further addresses an MN can receive at (multi-homing, early tests).
    extra: set[IPv6Address] = field(default_factory=set)
    events: list[tuple[float, MobilityEvent]] = field(default_factory=list)
    # Static outbound destination rules from SendTo actions: (local, hoa) -> coa.
    send_to: dict[tuple[IPv6Address, IPv6Address], IPv6Address] = field(default_factory=dict)

    def cores(self):
        return [core for core in (self.mn, self.ha, self.cn) if core is not None]

    def of_type(self, kind: type) -> list:
        return [event for _, event in self.events if isinstance(event, kind)]

    def timed(self, kind: type) -> list[tuple[float, MobilityEvent]]:
        return [(time, event) for time, event in self.events if isinstance(event, kind)]


class Net:
    """Delivers ``datagrams_to_send`` output between cores with a fake clock."""

    def __init__(self, latency: float = 0.0):
        self.now = 0.0
        self.latency = latency
        self.nodes: list[SimNode] = []
        self.tunnels: dict[IPv6Address, IPv6Address | None] = {}
        self.deliveries: list[Delivery] = []
        self.lost: list[Delivery] = []
        # Return true to lose a packet (after routing, before delivery).
        self.loss: Callable[[Delivery], bool] = lambda delivery: False
        self._in_flight: list[tuple[float, int, Delivery]] = []
        self._counter = 0

    def add(self, node: SimNode) -> SimNode:
        self.nodes.append(node)
        return node

    # -- routing --------------------------------------------------------

    def _route(self, wire_dst: IPv6Address) -> tuple[SimNode | None, bool]:
        for node in self.nodes:
            if node.mn is not None and node.mn.coa == wire_dst:
                return node, False
            if node.fixed == wire_dst or wire_dst in node.extra:
                return node, False
        for node in self.nodes:
            if node.mn is not None and node.mn.hoa == wire_dst:
                if node.mn.coa is None:
                    return node, False
                endpoint = self.tunnels.get(wire_dst)
                if endpoint is not None and endpoint == node.mn.coa:
                    return node, True
                return None, True
        return None, False

    def _emit_packet(self, sender: SimNode, outgoing: Outgoing) -> None:
        parsed = IPv6(outgoing.packet)
        src, dst = IPv6Address(parsed.src), IPv6Address(parsed.dst)
        wire_src = outgoing.onwire_src or src
        wire_dst = outgoing.onwire_dst or dst
        receiver, via_tunnel = self._route(wire_dst)
        delivery = Delivery(
            self.now,
            sender.name,
            receiver.name if receiver else None,
            outgoing.packet,
            src,
            dst,
            wire_src,
            wire_dst,
            outgoing.packet[42],
            via_tunnel,
        )
        if receiver is None or self.loss(delivery):
            self.lost.append(delivery)
            return
        self._counter += 1
        heapq.heappush(self._in_flight, (self.now + self.latency, self._counter, delivery))

    def _deliver(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        receiver = next(node for node in self.nodes if node.name == delivery.receiver)
        # Through the tunnel the inner destination is the HoA itself: nothing remapped.
        onwire = OnWire(
            src=delivery.wire_src if delivery.wire_src != delivery.src else None,
            dst=delivery.wire_dst
            if delivery.wire_dst != delivery.dst and not delivery.via_tunnel
            else None,
        )
        role = core_role(delivery.mh)
        core = {"mn": receiver.mn, "ha": receiver.ha, "cn": receiver.cn}[role] or receiver.cn
        if core is not None:
            core.receive(delivery.mh, delivery.src, delivery.dst, onwire, self.now)

    # -- the clock --------------------------------------------------------

    def _collect(self) -> None:
        for node in self.nodes:
            for core in node.cores():
                # Actions first: they were decided before the packets were queued.
                while (event := core.next_event()) is not None:
                    node.events.append((self.now, event))
                    if isinstance(event, TunnelEndpointChanged) and core is node.ha:
                        self.tunnels[event.hoa] = event.coa
                    if isinstance(event, SendTo):
                        if event.coa is None:
                            node.send_to.pop((event.local, event.hoa), None)
                        else:
                            node.send_to[(event.local, event.hoa)] = event.coa
                for outgoing in core.datagrams_to_send(self.now):
                    self._emit_packet(node, outgoing)

    def settle(self) -> None:
        """Deliver everything due now, including replies, until the network is quiet."""
        for _ in range(10_000):
            self._collect()
            if not self._in_flight or self._in_flight[0][0] > self.now:
                return
            _, _, delivery = heapq.heappop(self._in_flight)
            self._deliver(delivery)
        raise AssertionError("the network never settled")

    def next_deadline(self) -> float | None:
        deadlines = [
            timer
            for node in self.nodes
            for core in node.cores()
            if (timer := core.get_timer()) is not None
        ]
        if self._in_flight:
            deadlines.append(self._in_flight[0][0])
        return min(deadlines) if deadlines else None

    def run(self, until: float, max_steps: int = 5_000) -> None:
        """Advance the fake clock to ``until``, firing timers and deliveries in order."""
        self.settle()
        for _ in range(max_steps):
            deadline = self.next_deadline()
            if deadline is None or deadline > until:
                self.now = max(self.now, until)
                self.settle()
                return
            self.now = max(self.now, deadline)
            for node in self.nodes:
                for core in node.cores():
                    timer = core.get_timer()
                    if timer is not None and timer <= self.now:
                        core.handle_timer(self.now)
            self.settle()
        raise AssertionError(f"more than {max_steps} steps before t={until}")

    def run_until(self, done: Callable[[], bool], limit: float, max_steps: int = 5_000) -> float:
        """Advance until ``done()`` holds; return the time.  Fails after ``limit`` seconds."""
        self.settle()
        for _ in range(max_steps):
            if done():
                return self.now
            deadline = self.next_deadline()
            if deadline is None or deadline > limit:
                break
            self.now = max(self.now, deadline)
            for node in self.nodes:
                for core in node.cores():
                    timer = core.get_timer()
                    if timer is not None and timer <= self.now:
                        core.handle_timer(self.now)
            self.settle()
        assert done(), f"condition not reached by t={limit} (now {self.now})"
        return self.now

    def sent(self, sender: str, mh_type: int) -> list[Delivery]:
        return [
            d for d in self.deliveries + self.lost if d.sender == sender and d.mh_type == mh_type
        ]


def build_world(
    latency: float = 0.0,
    *,
    correspondents: tuple[IPv6Address, ...] = (CN_ADDR,),
    second_mn: bool = False,
    seed: int = 1,
    mn_lifetime: int = 420,
    cn_kwargs: dict | None = None,
) -> tuple[Net, dict[str, SimNode]]:
    """HA, CN and one MN (two with ``second_mn``; then they are each other's CN)."""
    net = Net(latency)
    rng = seeded_rng(seed)
    hoas = [HOA, HOA2] if second_mn else [HOA]
    ha = net.add(
        SimNode(
            "ha",
            ha=HomeAgent(HA_ADDR, HOME_PREFIX, mobile_nodes=hoas),
            cn=Correspondent(known_peers=hoas, rng=rng),
            fixed=HA_ADDR,
        )
    )
    cn = net.add(
        SimNode(
            "cn", cn=Correspondent(known_peers=hoas, rng=rng, **(cn_kwargs or {})), fixed=CN_ADDR
        )
    )
    nodes = {"ha": ha, "cn": cn}
    pairs = [("mn", HOA, HOA2)] + ([("mn2", HOA2, HOA)] if second_mn else [])
    for name, hoa, other in pairs:
        peers = correspondents + ((other,) if second_mn else ())
        node = SimNode(name)

        def peer_coa(peer, node=node):
            # What this node's CN role knows of another MN (draft §5.2.2 example 4).
            binding = node.cn.binding(peer) if node.cn is not None else None
            return binding.coa if binding is not None else None

        mobile = MobileNode(hoa, HA_ADDR, peers, lifetime=mn_lifetime, rng=rng, peer_coa=peer_coa)
        node.mn = mobile
        # Every node is a CN; an MN's own CoA is the source of what its CN role sends.
        node.cn = Correspondent(
            known_peers=[other] if second_mn else [],
            rng=rng,
            local_coa=lambda local, mobile=mobile: mobile.coa if local == mobile.hoa else None,
        )
        nodes[name] = net.add(node)
    return net, nodes


# ---------------------------------------------------------------------------
# The harness's own tests: its routing must hold for the cores' tests to mean anything.


def test_hoa_unreachable_while_away_without_tunnel():
    net, nodes = build_world()
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    assert net._route(HOA) == (None, True)
    net.tunnels[HOA] = LTE  # a stale endpoint: the MN holds WIFI
    assert net._route(HOA) == (None, True)
    net.tunnels[HOA] = WIFI
    assert net._route(HOA) == (nodes["mn"], True)


def test_coa_and_fixed_addresses_route_directly():
    net, nodes = build_world()
    nodes["mn"].mn.set_coa(LTE, 0.0)
    assert net._route(LTE) == (nodes["mn"], False)
    assert net._route(WIFI) == (None, False)
    assert net._route(CN_ADDR) == (nodes["cn"], False)


def test_home_address_reaches_a_node_at_home():
    net, nodes = build_world()
    assert net._route(HOA) == (nodes["mn"], False)


@pytest.mark.parametrize("seed", [1, 2])
def test_seeded_rng_is_deterministic(seed):
    assert seeded_rng(seed)(8) == seeded_rng(seed)(8)
    assert len(seeded_rng(seed)(8)) == 8
