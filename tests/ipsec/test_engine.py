"""The sans-IO IPsec engine: SPD + SAD + ESP per packet (RFC 4301 §5).

Oracles: scapy builds the packets and, with its own ESP implementation
(``scapy.layers.ipsec.SecurityAssociation``), decrypts what the engine sends;
a second engine with the mirrored SAs receives it.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation

from vmip.ipsec.engine import InResult, IpsecEngine, OutResult
from vmip.ipsec.sa import Direction, Lifetime, Mode, SaParams
from vmip.ipsec.sad import SAD
from vmip.ipsec.sadb import AcquireEvent, SadbBus
from vmip.ipsec.spd import SPD, Action, Policy, Selector

IN, OUT = Direction.IN, Direction.OUT
HOA = IPv6Address("2001:db8:100::10")
CN = IPv6Address("2001:db8:20::2")
HA = IPv6Address("2001:db8:100::1")
COA = IPv6Address("2001:db8:31::2")
OTHER = IPv6Address("2001:db8:20::99")
KEYS = {spi: bytes((spi + i) & 0xFF for i in range(20)) for spi in
        (0x1001, 0x2001, 0x3001, 0x4001, 0x5001, 0x6001)}


def sa(spi, direction, src, dst, name, **kw) -> SaParams:
    return SaParams(spi=spi, direction=direction, src=src, dst=dst, suite="aes128gcm16",
                    enc_key=KEYS[spi], name=name, **kw)


def protect(name, direction, bundle, priority=100, **sel) -> Policy:
    return Policy(name, direction, Selector(**sel), Action.PROTECT, tuple(bundle), priority)


def bypass(name, direction, priority=100, **sel) -> Policy:
    return Policy(name, direction, Selector(**sel), Action.BYPASS, (), priority)


def discard(name, direction, priority=100, **sel) -> Policy:
    return Policy(name, direction, Selector(**sel), Action.DISCARD, (), priority)


class Node:
    def __init__(self, policies=(), sas=(), now=0.0, **engine_kw):
        self.bus = SadbBus()
        self.events: list = []
        self.bus.subscribe(self.events.append)
        self.spd = SPD(policies)
        self.sad = SAD(self.bus)
        for params in sas:
            self.sad.add(params, now)
        self.engine = IpsecEngine(self.spd, self.sad, now, **engine_kw)


def mn_and_cn(mn_extra_policies=(), cn_extra_policies=()) -> tuple[Node, Node]:
    """MN (HoA) and CN with a pair of transport SAs protecting all traffic."""
    mn = Node([*mn_extra_policies,
               protect("mn-cn", OUT, ["mn-cn"], local=f"{HOA}/128", remote=f"{CN}/128"),
               protect("cn-mn", IN, ["cn-mn"], local=f"{HOA}/128", remote=f"{CN}/128")],
              [sa(0x1001, OUT, HOA, CN, "mn-cn"), sa(0x2001, IN, CN, HOA, "cn-mn")])
    cn = Node([*cn_extra_policies,
               protect("cn-mn", OUT, ["cn-mn"], local=f"{CN}/128", remote=f"{HOA}/128"),
               protect("mn-cn", IN, ["mn-cn"], local=f"{CN}/128", remote=f"{HOA}/128")],
              [sa(0x2001, OUT, CN, HOA, "cn-mn"), sa(0x1001, IN, HOA, CN, "mn-cn")])
    return mn, cn


def udp(src=HOA, dst=CN, sport=4000, dport=53, payload=b"query") -> bytes:
    return bytes(IPv6(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / payload)


def tcp(src=HOA, dst=CN, sport=4000, dport=22) -> bytes:
    return bytes(IPv6(src=str(src), dst=str(dst)) / TCP(sport=sport, dport=dport, flags="S"))


def scapy_sa(spi) -> SecurityAssociation:
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=KEYS[spi],
                               auth_algo=None, esn_en=True, esn=0)


# -- outbound -----------------------------------------------------------------

def test_bypass_discard_and_no_policy_outbound():
    node = Node([bypass("nd", OUT, proto=58), discard("no-telnet", OUT, proto=6,
                                                       remote_ports=(23, 23))])
    ns = bytes(IPv6(src=str(HOA), dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt=str(CN)))
    assert node.engine.outbound(ns, 1.0) == OutResult(ns, node.spd.get("nd"))
    telnet = node.engine.outbound(tcp(dport=23), 1.0)
    assert telnet.packet is None and telnet.drop == "policy_discard"
    assert telnet.policy.name == "no-telnet"
    assert node.engine.outbound(tcp(dport=22), 1.0).drop == "no_policy"
    assert node.engine.outbound(b"\x60garbage", 1.0).drop == "malformed"
    assert node.engine.drops == {"policy_discard": 1, "no_policy": 1, "malformed": 1}


def test_protect_transport_is_esp_scapy_can_decrypt():
    mn, _ = mn_and_cn()
    packet = udp()
    result = mn.engine.outbound(packet, 1.0)
    assert result.drop is None and result.policy.name == "mn-cn"
    assert [s.spi for s in result.sas] == [0x1001]
    wire = IPv6(result.packet)
    assert (wire.src, wire.dst, wire.nh) == (str(HOA), str(CN), 50)
    assert wire[ESP].spi == 0x1001 and wire[ESP].seq == 1
    assert bytes(scapy_sa(0x1001).decrypt(wire)) == packet


def test_transport_round_trip_between_two_engines():
    mn, cn = mn_and_cn()
    for n, packet in enumerate([udp(), tcp(), udp(payload=b"x" * 1200)]):
        sent = mn.engine.outbound(packet, float(n))
        got = cn.engine.inbound(sent.packet, float(n))
        assert got == InResult(packet, cn.spd.get("mn-cn"), (cn.sad.lookup_inbound(0x1001),))
    reply = cn.engine.outbound(udp(CN, HOA, 53, 4000, b"answer"), 5.0)
    assert mn.engine.inbound(reply.packet, 5.0).packet == udp(CN, HOA, 53, 4000, b"answer")
    assert not mn.engine.drops and not cn.engine.drops


def test_bundle_transport_inside_tunnel_applied_innermost_first():
    # MN -> CN through the HA tunnel; one node receives both layers (a bundle).
    mn = Node([protect("b", OUT, ["mn-cn", "tun"], local=f"{HOA}/128", remote=f"{CN}/128")],
              [sa(0x1001, OUT, HOA, CN, "mn-cn"),
               sa(0x3001, OUT, COA, HA, "tun", mode=Mode.TUNNEL)])
    peer = Node([protect("b", IN, ["mn-cn", "tun"], local=f"{CN}/128", remote=f"{HOA}/128")],
                [sa(0x1001, IN, HOA, CN, "mn-cn"),
                 sa(0x3001, IN, COA, HA, "tun", mode=Mode.TUNNEL)])
    packet = tcp()
    sent = mn.engine.outbound(packet, 1.0)
    assert [s.spi for s in sent.sas] == [0x1001, 0x3001]
    outer = IPv6(sent.packet)
    assert (outer.src, outer.dst, outer[ESP].spi) == (str(COA), str(HA), 0x3001)
    decrypted = scapy_sa(0x3001).decrypt(outer)   # outer header kept, then IPv6-in-IPv6
    assert decrypted.nh == 41
    inner = decrypted.getlayer(IPv6, 2)
    assert (inner.src, inner.dst, inner[ESP].spi) == (str(HOA), str(CN), 0x1001)
    assert bytes(scapy_sa(0x1001).decrypt(inner)) == packet
    got = peer.engine.inbound(sent.packet, 1.0)
    assert got.packet == packet and got.policy.name == "b"
    assert [s.spi for s in got.sas] == [0x3001, 0x1001]    # outermost first


def test_bundle_policy_requires_the_whole_bundle():
    # The peer demands transport-inside-tunnel; transport alone is refused.
    mn, _ = mn_and_cn()
    peer = Node([protect("b", IN, ["mn-cn", "tun"], local=f"{CN}/128", remote=f"{HOA}/128")],
                [sa(0x1001, IN, HOA, CN, "mn-cn"),
                 sa(0x3001, IN, COA, HA, "tun", mode=Mode.TUNNEL)])
    got = peer.engine.inbound(mn.engine.outbound(udp(), 1.0).packet, 1.0)
    assert got.drop == "selector_mismatch" and peer.engine.drops["selector_mismatch"] == 1


def test_missing_sa_drops_and_acquires_once_per_holdoff():
    node = Node([protect("mn-cn", OUT, ["mn-cn"], local=f"{HOA}/128", remote=f"{CN}/128")],
                acquire_holdoff=2.0)
    for now in (10.0, 10.5, 11.9):
        result = node.engine.outbound(udp(), now)
        assert result.drop == "no_sa" and result.policy.name == "mn-cn"
    acquires = [e for e in node.events if isinstance(e, AcquireEvent)]
    assert len(acquires) == 1
    assert acquires[0].policy == "mn-cn" and acquires[0].missing == ("mn-cn",)
    assert acquires[0].key.src == HOA.packed and acquires[0].key.proto == 17
    node.engine.outbound(udp(), 12.0)
    assert len([e for e in node.events if isinstance(e, AcquireEvent)]) == 2
    assert node.engine.drops["no_sa"] == 4
    # Key management answers: traffic flows.
    node.sad.add(sa(0x1001, OUT, HOA, CN, "mn-cn"), 12.5)
    assert node.engine.outbound(udp(), 13.0).drop is None


def test_hard_expiry_by_packets_then_acquire():
    node = Node([protect("mn-cn", OUT, ["mn-cn"], local=f"{HOA}/128")],
                [sa(0x1001, OUT, HOA, CN, "mn-cn", hard=Lifetime(packets=2))])
    assert [node.engine.outbound(udp(), t).drop for t in (1.0, 2.0, 3.0)] == [None, None, "no_sa"]
    kinds = [type(e).__name__ for e in node.events]
    assert kinds == ["AddEvent", "ExpireEvent", "DeleteEvent", "AcquireEvent"]


# -- inbound ----------------------------------------------------------------

def test_clear_text_inbound_needs_a_bypass_policy():
    mn, _ = mn_and_cn(mn_extra_policies=[bypass("icmp", IN, priority=10, proto=58,
                                                icmp_type=128),
                                         discard("drop-udp", IN, priority=10, proto=17,
                                                 local_ports=(9, 9))])
    echo = bytes(IPv6(src=str(CN), dst=str(HOA)) / ICMPv6EchoRequest())
    assert mn.engine.inbound(echo, 1.0).packet == echo
    # Clear text where the policy says PROTECT (RFC 4301 §5.2).
    assert mn.engine.inbound(tcp(CN, HOA, 22, 4000), 1.0).drop == "unprotected"
    assert mn.engine.inbound(udp(CN, HOA, 1, 9), 1.0).drop == "policy_discard"
    assert mn.engine.inbound(udp(OTHER, HOA), 1.0).drop == "no_policy"
    assert mn.engine.inbound(b"", 1.0).drop == "malformed"


def test_unknown_spi_and_tampering_are_counted():
    mn, cn = mn_and_cn()
    sent = bytearray(mn.engine.outbound(udp(), 1.0).packet)
    other_spi = bytearray(sent)
    other_spi[40:44] = (0x7777).to_bytes(4, "big")
    assert cn.engine.inbound(bytes(other_spi), 1.0).drop == "unknown_spi"
    sent[-1] ^= 1
    result = cn.engine.inbound(bytes(sent), 1.0)
    assert result.drop == "esp_failed" and [s.spi for s in result.sas] == [0x1001]
    assert cn.sad.lookup_inbound(0x1001).drops["icv"] == 1
    assert cn.engine.drops == {"unknown_spi": 1, "esp_failed": 1}


def test_replayed_packet_is_dropped():
    mn, cn = mn_and_cn()
    sent = mn.engine.outbound(udp(), 1.0).packet
    assert cn.engine.inbound(sent, 1.0).drop is None
    assert cn.engine.inbound(sent, 1.1).drop == "esp_failed"
    assert cn.sad.lookup_inbound(0x1001).drops["duplicate"] == 1


def test_inbound_selector_check_uses_the_policies_of_the_sa():
    """RFC 4301 §5.2: what an SA delivers must match that SA's selectors."""
    # The CN's outbound policy lets anything through the SA; the MN only
    # accepts UDP from the CN's address on it.
    mn = Node([protect("cn-mn", IN, ["cn-mn"], local=f"{HOA}/128", remote=f"{CN}/128",
                       proto=17)],
              [sa(0x2001, IN, CN, HOA, "cn-mn")])
    cn = Node([protect("any", OUT, ["cn-mn"])], [sa(0x2001, OUT, CN, HOA, "cn-mn")])
    ok = mn.engine.inbound(cn.engine.outbound(udp(CN, HOA), 1.0).packet, 1.0)
    assert ok.drop is None and ok.policy.name == "cn-mn"
    wrong_proto = mn.engine.inbound(cn.engine.outbound(tcp(CN, HOA), 2.0).packet, 2.0)
    spoofed = mn.engine.inbound(cn.engine.outbound(udp(OTHER, HOA), 3.0).packet, 3.0)
    assert wrong_proto.drop == spoofed.drop == "selector_mismatch"
    assert [s.spi for s in spoofed.sas] == [0x2001]   # decrypted fine, then refused
    assert mn.engine.drops == {"selector_mismatch": 2}


def test_inbound_check_follows_spd_edits():
    mn, cn = mn_and_cn()
    assert mn.engine.inbound(cn.engine.outbound(udp(CN, HOA), 1.0).packet, 1.0).drop is None
    # Narrow the inbound policy to TCP: the same UDP flow is now refused.
    mn.spd.remove("cn-mn")
    mn.spd.add(protect("cn-mn", IN, ["cn-mn"], local=f"{HOA}/128", remote=f"{CN}/128", proto=6))
    again = mn.engine.inbound(cn.engine.outbound(udp(CN, HOA), 2.0).packet, 2.0)
    assert again.drop == "selector_mismatch"


def test_inbound_selector_check_uses_sa_selectors_when_present():
    params = sa(0x2001, IN, CN, HOA, "ike-child",
                selectors=(Selector(local=f"{HOA}/128", remote=f"{CN}/128", proto=17,
                                    remote_ports=(53, 53)),))
    mn = Node([], [params])      # no policy names the SA: its own selectors decide
    cn = Node([protect("any", OUT, ["cn-mn"])], [sa(0x2001, OUT, CN, HOA, "cn-mn")])
    assert mn.engine.inbound(cn.engine.outbound(udp(CN, HOA, 53, 4000), 1.0).packet,
                             1.0).drop is None
    assert mn.engine.inbound(cn.engine.outbound(udp(CN, HOA, 54, 4000), 2.0).packet,
                             2.0).drop == "selector_mismatch"


def test_sa_without_selectors_or_policy_delivers_nothing():
    mn = Node([], [sa(0x2001, IN, CN, HOA, "orphan")])
    cn = Node([protect("any", OUT, ["cn-mn"])], [sa(0x2001, OUT, CN, HOA, "cn-mn")])
    assert mn.engine.inbound(cn.engine.outbound(udp(CN, HOA), 1.0).packet,
                             1.0).drop == "selector_mismatch"


def test_ha_returns_foreign_esp_from_the_tunnel_for_forwarding():
    # The MN's ESP to the CN rides the MN-HA tunnel; the HA has no SA for it.
    mn = Node([protect("via-ha", OUT, ["mn-cn", "tun"], local=f"{HOA}/128")],
              [sa(0x1001, OUT, HOA, CN, "mn-cn"),
               sa(0x3001, OUT, COA, HA, "tun", mode=Mode.TUNNEL)])
    ha = Node([protect("from-mn", IN, ["tun"], remote=f"{HOA}/128")],
              [sa(0x3001, IN, COA, HA, "tun", mode=Mode.TUNNEL)])
    got = ha.engine.inbound(mn.engine.outbound(udp(), 1.0).packet, 1.0)
    assert got.drop is None and [s.spi for s in got.sas] == [0x3001]
    inner = IPv6(got.packet)
    assert (inner.src, inner.dst, inner[ESP].spi) == (str(HOA), str(CN), 0x1001)


def test_nested_independent_sas_are_each_checked():
    # Before route optimisation the MN gets the CN's ESP through the HA tunnel:
    # the tunnel SA and the CN SA each match their own inbound policy.
    mn = Node([protect("from-ha", IN, ["tun"], local=f"{HOA}/128"),
               protect("cn-mn", IN, ["cn-mn"], local=f"{HOA}/128", remote=f"{CN}/128")],
              [sa(0x4001, IN, HA, COA, "tun", mode=Mode.TUNNEL),
               sa(0x2001, IN, CN, HOA, "cn-mn")])
    cn = Node([protect("cn-mn", OUT, ["cn-mn"])], [sa(0x2001, OUT, CN, HOA, "cn-mn")])
    ha = Node([protect("to-mn", OUT, ["tun"], remote=f"{HOA}/128")],
              [sa(0x4001, OUT, HA, COA, "tun", mode=Mode.TUNNEL)])
    packet = udp(CN, HOA, 53, 4000)
    through_ha = ha.engine.outbound(cn.engine.outbound(packet, 1.0).packet, 1.0)
    got = mn.engine.inbound(through_ha.packet, 1.0)
    assert got.packet == packet and got.policy.name == "cn-mn"
    assert [s.spi for s in got.sas] == [0x4001, 0x2001]


def test_layers_are_bounded():
    names = ["a", "b", "c"]
    spis = [0x1001, 0x3001, 0x5001]
    sender = Node([protect("deep", OUT, names)],
                  [sa(s, OUT, HOA, CN, n) for s, n in zip(spis, names)])
    receiver = Node([protect("deep", IN, names)],
                    [sa(s, IN, HOA, CN, n) for s, n in zip(spis, names)], max_layers=2)
    result = receiver.engine.inbound(sender.engine.outbound(udp(), 1.0).packet, 1.0)
    assert result.drop == "too_many_layers"
    roomy = Node([protect("deep", IN, names)],
                 [sa(s, IN, HOA, CN, n) for s, n in zip(spis, names)])
    packet = udp(payload=b"again")
    assert roomy.engine.inbound(sender.engine.outbound(packet, 2.0).packet, 2.0).packet == packet


def test_ipv4_inner_packets_through_an_ipv6_tunnel():
    v4 = bytes(IP(src="192.0.2.34", dst="198.51.100.7") / UDP(sport=1, dport=2) / b"v4")
    mn = Node([protect("v4", OUT, ["tun"], local="192.0.2.0/24")],
              [sa(0x3001, OUT, COA, HA, "tun", mode=Mode.TUNNEL)])
    ha = Node([protect("v4", IN, ["tun"], remote="192.0.2.0/24")],
              [sa(0x3001, IN, COA, HA, "tun", mode=Mode.TUNNEL)])
    got = ha.engine.inbound(mn.engine.outbound(v4, 1.0).packet, 1.0)
    assert got.packet == v4 and got.policy.name == "v4"


# -- robustness ---------------------------------------------------------------

def _valid_esp_packets() -> list[bytes]:
    mn, _ = mn_and_cn()
    tunnel = Node([protect("t", OUT, ["tun"])], [sa(0x3001, OUT, COA, HA, "tun",
                                                      mode=Mode.TUNNEL)])
    return [mn.engine.outbound(udp(), 1.0).packet, tunnel.engine.outbound(tcp(), 1.0).packet]


VALID = _valid_esp_packets()


@st.composite
def mutated(draw):
    base = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 4))):
        base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(base)))
    return bytes(base[:cut])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), mutated()))
def test_bad_packets_never_raise(data):
    mn, cn = mn_and_cn(cn_extra_policies=[bypass("all-in", IN, priority=1000)],
                       mn_extra_policies=[bypass("all-out", OUT, priority=1000)])
    tunnel_end = Node([protect("t", IN, ["tun"])],
                      [sa(0x3001, IN, COA, HA, "tun", mode=Mode.TUNNEL)])
    for engine in (cn.engine, tunnel_end.engine):
        result = engine.inbound(data, 1.0)
        assert isinstance(result, InResult)
        assert (result.packet is None) == (result.drop is not None)
        assert "internal_error" not in engine.drops
    out = mn.engine.outbound(data, 1.0)
    assert isinstance(out, OutResult) and "internal_error" not in mn.engine.drops


def test_a_bug_in_a_layer_is_contained_and_counted():
    class Broken:
        transport_encap = tunnel_encap = decap = staticmethod(lambda *a: 1 / 0)

        @staticmethod
        def esp_spi(packet):
            raise RuntimeError("bug")

    node = Node([bypass("all", OUT)], esp=Broken())
    assert node.engine.inbound(udp(), 1.0).drop == "internal_error"
    assert node.engine.outbound(udp(), 1.0).packet == udp()   # bypass needs no ESP
    assert node.engine.drops == {"internal_error": 1}


def _bundle_pair(**peer_kw) -> tuple[Node, Node]:
    mn = Node([protect("b", OUT, ["mn-cn", "tun"], local=f"{HOA}/128", remote=f"{CN}/128")],
              [sa(0x1001, OUT, HOA, CN, "mn-cn"),
               sa(0x3001, OUT, COA, HA, "tun", mode=Mode.TUNNEL)])
    peer = Node([protect("b", IN, ["mn-cn", "tun"], local=f"{CN}/128", remote=f"{HOA}/128")],
                [sa(0x1001, IN, HOA, CN, "mn-cn"),
                 sa(0x3001, IN, COA, HA, "tun", mode=Mode.TUNNEL)], **peer_kw)
    return mn, peer


def test_esp_out_of_a_tunnel_sa_meets_the_reentry_hook_before_it_is_decrypted():
    seen: list[bytes] = []

    def reentry(inner: bytes):
        seen.append(inner)
        return inner, ("on-wire", inner[8:24])

    mn, peer = _bundle_pair(reentry=reentry)
    packet = tcp()
    got = peer.engine.inbound(mn.engine.outbound(packet, 1.0).packet, 1.0)
    assert got.packet == packet
    assert len(seen) == 1 and seen[0][6] == 50          # the inner ESP packet, once
    assert got.reentry == ("on-wire", HOA.packed)


def test_a_refusing_reentry_hook_drops_the_packet_and_says_why():
    mn, peer = _bundle_pair(reentry=lambda inner: None)
    got = peer.engine.inbound(mn.engine.outbound(tcp(), 1.0).packet, 1.0)
    assert got.packet is None and got.drop == "reentry_refused"
    assert peer.engine.drops["reentry_refused"] == 1
