"""SPD: selectors, ordering, actions, bundles and the flow cache (RFC 4301 §4.4.1)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    MIP6MH_BA,
    MIP6MH_BU,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)

from vmip.errors import VmipError
from vmip.ipsec.sa import Direction
from vmip.ipsec.spd import OPAQUE, SPD, Action, Policy, Selector, SpdError
from vmip.wire.flow import FlowKey, flow_key

OUT, IN = Direction.OUT, Direction.IN
HOA = "2001:db8:100::10"
CN = "2001:db8:20::2"
HA = "2001:db8:100::1"


def key(src: str, dst: str, proto: int = 0, sport: int = 0, dport: int = 0) -> FlowKey:
    return FlowKey(ip_address(src).packed, ip_address(dst).packed, proto, sport, dport)


def pol(name, direction=OUT, action=Action.BYPASS, priority=100, bundle=(), **sel) -> Policy:
    return Policy(name, direction, Selector(**sel), action, tuple(bundle), priority)


def key_of(scapy_packet) -> FlowKey:
    """The flow key of a scapy-built packet, read by the wire codec."""
    return flow_key(bytes(scapy_packet))


# -- selectors --------------------------------------------------------------

def test_prefixes_local_is_src_outbound_and_dst_inbound():
    spd = SPD([pol("o", OUT, local=f"{HOA}/128", remote="2001:db8:20::/48"),
               pol("i", IN, local=f"{HOA}/128", remote="2001:db8:20::/48")])
    assert spd.lookup(OUT, key(HOA, CN)).name == "o"
    assert spd.lookup(OUT, key(CN, HOA)) is None
    assert spd.lookup(IN, key(CN, HOA)).name == "i"
    assert spd.lookup(IN, key(HOA, CN)) is None
    # Just outside the /48: no match.
    assert spd.lookup(OUT, key(HOA, "2001:db8:21::2")) is None


def test_address_family_is_part_of_the_match():
    spd = SPD([pol("v6-any", OUT, local="::/0", remote="::/0"),
               pol("v4", OUT, local="192.0.2.0/24", remote="0.0.0.0/0")])
    assert spd.lookup(OUT, key("192.0.2.7", "198.51.100.1")).name == "v4"
    assert spd.lookup(OUT, key("2001:db8::1", "2001:db8::2")).name == "v6-any"
    assert spd.lookup(OUT, key("203.0.113.1", "198.51.100.1")) is None
    any_family = SPD([pol("any", OUT)])
    assert any_family.lookup(OUT, key("203.0.113.1", "198.51.100.1")).name == "any"
    assert any_family.lookup(OUT, key("2001:db8::1", "2001:db8::2")).name == "any"


def test_protocol_and_port_ranges_follow_direction():
    # Outbound: local port = sport.  Inbound: local port = dport.
    sel = {"local": f"{HOA}/128", "proto": 6, "local_ports": (1000, 2000), "remote_ports": (22, 22)}
    spd = SPD([pol("o", OUT, **sel), pol("i", IN, **sel)])
    assert spd.lookup(OUT, key(HOA, CN, 6, 1000, 22)).name == "o"
    assert spd.lookup(OUT, key(HOA, CN, 6, 2000, 22)).name == "o"
    assert spd.lookup(OUT, key(HOA, CN, 6, 2001, 22)) is None
    assert spd.lookup(OUT, key(HOA, CN, 6, 999, 22)) is None
    assert spd.lookup(OUT, key(HOA, CN, 6, 1500, 23)) is None
    assert spd.lookup(OUT, key(HOA, CN, 17, 1500, 22)) is None
    assert spd.lookup(IN, key(CN, HOA, 6, 22, 1500)).name == "i"
    assert spd.lookup(IN, key(CN, HOA, 6, 1500, 22)) is None


def test_tcp_selector_against_scapy_packets_with_extension_headers():
    spd = SPD([pol("ssh", OUT, proto=6, remote_ports=(22, 22)),
               pol("udp-dns", OUT, proto=17, remote_ports=(53, 53))])
    pkt = IPv6(src=HOA, dst=CN) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=40000,
                                                                                 dport=22)
    assert spd.lookup(OUT, key_of(pkt)).name == "ssh"
    assert spd.lookup(OUT, key_of(IPv6(src=HOA, dst=CN) / UDP(sport=5353, dport=53))).name \
        == "udp-dns"
    assert spd.lookup(OUT, key_of(IPv6(src=HOA, dst=CN) / TCP(sport=22, dport=80))) is None
    v4 = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=53)
    assert spd.lookup(OUT, key_of(v4)).name == "udp-dns"


def test_icmpv6_type_and_code():
    spd = SPD([pol("echo", OUT, proto=58, icmp_type=128),
               pol("ptb", IN, proto=58, icmp_type=2, icmp_code=0),
               pol("errors", IN, proto=58, icmp_type=(1, 4), icmp_code=(1, 255))])
    assert spd.lookup(OUT, key_of(IPv6(src=HOA, dst=CN) / ICMPv6EchoRequest())).name == "echo"
    assert spd.lookup(OUT, key_of(IPv6(src=HOA, dst=CN) / ICMPv6EchoReply())) is None
    ptb = IPv6(src=CN, dst=HOA) / ICMPv6PacketTooBig(mtu=1280)
    assert spd.lookup(IN, key_of(ptb)).name == "ptb"
    # Destination unreachable (1), code 3: only the range policy.
    assert spd.lookup(IN, key(CN, HOA, 58, 1, 3)).name == "errors"
    assert spd.lookup(IN, key(CN, HOA, 58, 1, 0)) is None


def test_mh_type_selects_binding_updates_only():
    spd = SPD([pol("bu", OUT, action=Action.PROTECT, bundle=["mn-ha"], proto=135, mh_type=5),
               pol("mh-other", OUT, action=Action.DISCARD, proto=135)])
    bu = IPv6(src=HOA, dst=HA) / MIP6MH_BU(seq=1)
    ba = IPv6(src=HOA, dst=HA) / MIP6MH_BA(seq=1)
    assert spd.lookup(OUT, key_of(bu)).name == "bu"
    assert spd.lookup(OUT, key_of(ba)).name == "mh-other"
    # AOTO (30), an IRO message scapy does not know, by flow key.
    assert spd.lookup(OUT, key(HOA, HA, 135, 30, 0)).name == "mh-other"


def test_opaque_ports_match_only_fragments_any_matches_both():
    first = IPv6(src=HOA, dst=CN) / IPv6ExtHdrFragment(offset=0, m=1, nh=17) / UDP(sport=7,
                                                                                   dport=9)
    later = IPv6(src=HOA, dst=CN) / IPv6ExtHdrFragment(offset=100, m=0, nh=17) / (b"x" * 16)
    spd = SPD([pol("opaque", OUT, proto=17, local_ports=OPAQUE, remote_ports=OPAQUE),
               pol("port9", OUT, proto=17, remote_ports=(9, 9))])
    assert spd.lookup(OUT, key_of(later)).name == "opaque"
    assert spd.lookup(OUT, key_of(first)).name == "port9"
    any_ports = SPD([pol("udp", OUT, proto=17)])
    assert any_ports.lookup(OUT, key_of(later)).name == "udp"
    assert any_ports.lookup(OUT, key_of(first)).name == "udp"
    # A real port range never matches the OPAQUE (unreadable) case.
    range_only = SPD([pol("range", OUT, proto=17, remote_ports=(1, 65535))])
    assert range_only.lookup(OUT, key_of(later)) is None


@pytest.mark.parametrize("bad", [
    {"local": "2001:db8::/32", "remote": "192.0.2.0/24"},
    {"local": "2001:db8::1/32"},                      # host bits set
    {"local": "not-a-prefix"},
    {"local": 42},
    {"proto": 256},
    {"proto": -1},
    {"proto": True},
    {"local_ports": (1, 2)},                          # ports without a protocol
    {"proto": 58, "local_ports": (1, 2)},                # ports on ICMPv6
    {"proto": 6, "icmp_type": 1},
    {"proto": 6, "mh_type": 5},
    {"proto": 135, "icmp_code": 0},
    {"proto": 6, "local_ports": (10, 5)},
    {"proto": 6, "remote_ports": (0, 70000)},
    {"proto": 6, "remote_ports": "22"},
    {"proto": 58, "icmp_type": 256},
    {"proto": 135, "mh_type": (3, 1)},
])
def test_bad_selectors_raise_spd_error(bad):
    with pytest.raises(SpdError):
        Selector(**bad)


@pytest.mark.parametrize("bad", [
    {"name": "", "direction": OUT, "selector": Selector(), "action": Action.BYPASS},
    {"name": "p", "direction": "sideways", "selector": Selector(), "action": Action.BYPASS},
    {"name": "p", "direction": OUT, "selector": Selector(), "action": "encrypt"},
    {"name": "p", "direction": OUT, "selector": Selector(), "action": Action.PROTECT},
    {"name": "p", "direction": OUT, "selector": Selector(), "action": Action.BYPASS, "sa_bundle": ("x",)},
    {"name": "p", "direction": OUT, "selector": Selector(), "action": Action.PROTECT, "sa_bundle": ("",)},
    {"name": "p", "direction": OUT, "selector": Selector(), "action": Action.BYPASS, "priority": "1"},
    {"name": "p", "direction": OUT, "selector": "any", "action": Action.BYPASS},
])
def test_bad_policies_raise_spd_error(bad):
    with pytest.raises(SpdError):
        Policy(**bad)


def test_policy_accepts_config_strings():
    p = Policy("p", "in", Selector(local="2001:db8::/32"), "protect", ["a", 0x1234])
    assert p.direction is IN and p.action is Action.PROTECT and p.sa_bundle == ("a", 0x1234)


# -- ordering ---------------------------------------------------------------

def test_lower_priority_wins_regardless_of_insertion_order():
    spd = SPD()
    spd.add(pol("broad", OUT, priority=200))
    spd.add(pol("narrow", OUT, priority=10, remote=f"{CN}/128", action=Action.DISCARD))
    assert spd.lookup(OUT, key(HOA, CN)).name == "narrow"
    assert spd.lookup(OUT, key(HOA, HA)).name == "broad"
    assert [p.name for p in spd.list(OUT)] == ["narrow", "broad"]


def test_equal_priorities_keep_insertion_order():
    spd = SPD([pol("first", OUT, action=Action.DISCARD), pol("second", OUT),
               pol("third", OUT, action=Action.PROTECT, bundle=["x"])])
    assert spd.lookup(OUT, key(HOA, CN)).name == "first"
    spd.remove("first")
    assert spd.lookup(OUT, key(HOA, CN)).name == "second"
    spd.add(pol("first", OUT, action=Action.DISCARD))   # re-added: now last of its priority
    assert [p.name for p in spd.list(OUT)] == ["second", "third", "first"]


def test_directions_are_separate_lists():
    spd = SPD([pol("in-only", IN)])
    assert spd.lookup(OUT, key(HOA, CN)) is None
    assert spd.lookup(IN, key(CN, HOA)).name == "in-only"
    assert [p.name for p in spd.list()] == ["in-only"]


def test_actions_and_bundles_are_returned_as_configured():
    spd = SPD([pol("p", OUT, action=Action.PROTECT, bundle=["inner", "outer"], proto=6),
               pol("b", OUT, action=Action.BYPASS, proto=17),
               pol("d", OUT, action=Action.DISCARD)])
    protect = spd.lookup(OUT, key(HOA, CN, 6, 1, 2))
    assert protect.action is Action.PROTECT and protect.sa_bundle == ("inner", "outer")
    assert spd.lookup(OUT, key(HOA, CN, 17, 1, 2)).action is Action.BYPASS
    assert spd.lookup(OUT, key(HOA, CN, 50, 0, 0)).action is Action.DISCARD


def test_duplicate_and_unknown_names():
    spd = SPD([pol("a", OUT)])
    with pytest.raises(SpdError):
        spd.add(pol("a", IN))
    with pytest.raises(SpdError):
        spd.remove("nope")
    assert "a" in spd and len(spd) == 1 and spd.get("a").name == "a" and spd.get("b") is None


# -- flow cache -------------------------------------------------------------

def test_cached_decision_changes_after_an_spd_edit():
    spd = SPD([pol("allow", OUT)])
    flow = key(HOA, CN, 6, 1234, 80)
    assert spd.lookup(OUT, flow).name == "allow"
    misses = spd.cache_misses
    assert spd.lookup(OUT, flow).name == "allow"
    assert spd.cache_misses == misses, "second lookup of the same flow must hit the cache"
    generation = spd.generation
    spd.add(pol("block", OUT, action=Action.DISCARD, priority=1, proto=6))
    assert spd.generation > generation
    assert spd.lookup(OUT, flow).name == "block"
    spd.remove("block")
    assert spd.lookup(OUT, flow).name == "allow"
    spd.remove("allow")
    assert spd.lookup(OUT, flow) is None


def test_negative_answers_are_cached_and_invalidated():
    spd = SPD()
    flow = key(HOA, CN)
    assert spd.lookup(OUT, flow) is None
    misses = spd.cache_misses
    assert spd.lookup(OUT, flow) is None
    assert spd.cache_misses == misses
    spd.add(pol("late", OUT))
    assert spd.lookup(OUT, flow).name == "late"


def test_cache_is_bounded_and_cleared_when_full():
    spd = SPD([pol("all", OUT)], cache_size=8)
    for port in range(1, 21):
        assert spd.lookup(OUT, key(HOA, CN, 6, port, 80)).name == "all"
        assert spd.cached_flows(OUT) <= 8
    assert spd.cache_clears == 2
    with pytest.raises(SpdError):
        SPD(cache_size=0)


# -- property: the SPD answers like a naive reading of RFC 4301 -------------

PREFIXES = [None, "2001:db8::/32", "2001:db8:100::/64", "2001:db8:100::10/128",
            "2001:db8:20::/48", "::/0", "192.0.2.0/24", "0.0.0.0/0"]
ADDRESSES = ["2001:db8:100::10", "2001:db8:100::11", "2001:db8:20::2", "2001:db8:ffff::1",
             "2002::1", "192.0.2.9", "198.51.100.1"]
PROTOS = [None, 6, 17, 58, 135]


@st.composite
def selectors(draw):
    local = draw(st.sampled_from(PREFIXES))
    remote = draw(st.sampled_from(PREFIXES))
    if local and remote and ip_network(local).version != ip_network(remote).version:
        remote = None
    proto = draw(st.sampled_from(PROTOS))
    kwargs = {"local": local, "remote": remote, "proto": proto}
    port_spec = st.one_of(st.none(), st.just(OPAQUE),
                          st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted)
                          .map(tuple))
    if proto in (6, 17):
        kwargs["local_ports"] = draw(port_spec)
        kwargs["remote_ports"] = draw(port_spec)
    elif proto == 58:
        kwargs["icmp_type"] = draw(st.one_of(st.none(), st.integers(0, 5)))
        kwargs["icmp_code"] = draw(st.one_of(st.none(), st.integers(0, 3)))
    elif proto == 135:
        kwargs["mh_type"] = draw(st.one_of(st.none(), st.integers(0, 8)))
    return kwargs


def naive_match(direction, sel: dict, k: FlowKey) -> bool:
    """RFC 4301 §4.4.1.1 read literally, with ipaddress doing the prefix test."""
    src, dst = ip_address(k.src), ip_address(k.dst)
    local, remote = (src, dst) if direction is OUT else (dst, src)
    for addr, prefix in ((local, sel["local"]), (remote, sel["remote"])):
        if prefix is not None:
            net = ip_network(prefix)
            if addr.version != net.version or addr not in net:
                return False
    if sel["proto"] is not None and sel["proto"] != k.proto:
        return False
    local_port, remote_port = (k.sport, k.dport) if direction is OUT else (k.dport, k.sport)

    def ok(spec, value, opaque_value=0):
        if spec is None:
            return True
        if spec is OPAQUE:
            return value == opaque_value
        lo, hi = (spec, spec) if isinstance(spec, int) else spec
        return lo <= value <= hi

    if sel["proto"] in (6, 17):
        return ok(sel.get("local_ports"), local_port) and ok(sel.get("remote_ports"), remote_port)
    if sel["proto"] == 58:
        return ok(sel.get("icmp_type"), k.sport) and ok(sel.get("icmp_code"), k.dport)
    if sel["proto"] == 135:
        return ok(sel.get("mh_type"), k.sport)
    return True


@st.composite
def flow_keys(draw):
    src = ip_address(draw(st.sampled_from(ADDRESSES)))
    dst = draw(st.sampled_from([a for a in ADDRESSES if ip_address(a).version == src.version]))
    return FlowKey(src.packed, ip_address(dst).packed, draw(st.sampled_from([6, 17, 58, 135, 50])),
                   draw(st.integers(0, 101)), draw(st.integers(0, 101)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(selectors(), st.integers(0, 3), st.sampled_from([OUT, IN])),
                max_size=12),
       st.lists(st.tuples(flow_keys(), st.sampled_from([OUT, IN])), min_size=1, max_size=20),
       st.sets(st.integers(0, 11)))
def test_lookup_equals_first_naive_match_in_priority_order(entries, probes, removed):
    spd = SPD(cache_size=5)
    for index, (sel, priority, direction) in enumerate(entries):
        spd.add(pol(f"p{index}", direction, priority=priority, **sel))
    # Expected order from the rule "lower priority first, then insertion order".
    ordered = sorted(enumerate(entries), key=lambda item: (item[1][1], item[0]))

    def check():
        for flow, direction in probes + probes:   # the second pass exercises the cache
            expected = next((f"p{i}" for i, (sel, _prio, d) in ordered
                             if d is direction and naive_match(direction, sel, flow)), None)
            found = spd.lookup(direction, flow)
            assert (found.name if found else None) == expected
            assert spd.lookup_uncached(direction, flow) is found

    check()
    for index in sorted(removed):
        if index < len(entries):
            spd.remove(f"p{index}")
    ordered = [item for item in ordered if item[0] not in removed]
    check()
    assert [p.name for p in spd.list()] == [
        f"p{i}" for d in (OUT, IN) for i, (_s, _p, dd) in ordered if dd is d]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["local", "remote", "proto", "local_ports",
                                        "remote_ports", "icmp_type", "icmp_code", "mh_type"]),
                       st.one_of(st.none(), st.integers(-5, 300), st.text(max_size=8),
                                 st.tuples(st.integers(-2, 70000), st.integers(-2, 70000)),
                                 st.just(OPAQUE), st.booleans())))
def test_selector_validation_raises_only_spd_error(kwargs):
    try:
        Selector(**kwargs)
    except SpdError:
        pass
    except VmipError as exc:  # pragma: no cover - the assertion names the wrong type
        pytest.fail(f"raised {type(exc).__name__}, not SpdError")


@settings(max_examples=200, deadline=None)
@given(name=st.one_of(st.text(max_size=4), st.integers(), st.none()),
       direction=st.one_of(st.sampled_from([OUT, IN, "in", "out", "up"]), st.integers(),
                           st.none()),
       selector=st.one_of(st.just(Selector()), st.text(max_size=3), st.none()),
       action=st.one_of(st.sampled_from(list(Action) + ["protect", "drop"]), st.integers(),
                        st.none()),
       bundle=st.one_of(st.lists(st.one_of(st.text(max_size=3), st.integers(), st.none(),
                                           st.booleans()), max_size=3),
                        st.integers(), st.text(max_size=3), st.none()),
       priority=st.one_of(st.integers(), st.text(max_size=2), st.booleans(), st.none()))
def test_policy_validation_raises_only_spd_error(name, direction, selector, action, bundle,
                                                 priority):
    try:
        Policy(name, direction, selector, action, bundle, priority)
    except SpdError:
        pass
