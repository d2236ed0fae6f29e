"""SPI tracking driven by a real SAD and SADB bus with a fake clock (draft §6).

Each test edits the SAD the way a key manager would (GETSPI, UPDATE, ADD,
DELETE, lifetimes through ``handle_timer``) and checks the remap rules the
tracker keeps in the engine, and packets through the engine.
"""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP

from vmip.ipsec.esp import EspSA, decap, esp_spi, transport_encap
from vmip.ipsec.sa import Direction, Lifetime, Mode, SaParams
from vmip.ipsec.sad import SAD
from vmip.ipsec.sadb import ExpireEvent, SadbBus, SaInfo
from vmip.ipsec.spd import SPD, Action, Policy, Selector
from vmip.mobility.ancillary import UNSPECIFIED
from vmip.mobility.remap import (
    ANCILLARY,
    Field,
    RemapEngine,
    RemapError,
    RemapRule,
    format_rule,
)
from vmip.mobility.spi_tracking import Role, SpiTracker, classify_sa

IN, OUT = Direction.IN, Direction.OUT
SRC, DST = Field.SRC, Field.DST
HOA = IPv6Address("2001:db8:100::10")
HA = IPv6Address("2001:db8:100::1")
COA = IPv6Address("2001:db8:31::2")
COA_LTE = IPv6Address("2001:db8:32::2")
CN = IPv6Address("2001:db8:20::2")
CN2 = IPv6Address("2001:db8:20::3")
WILDCARD = IPv6Address(0)
KEY = bytes(range(20))
MH = 135
NO_LIMIT = Lifetime()


def params(spi: int, direction: Direction, src, dst, *, name: str = "", mode=Mode.TRANSPORT,
           selectors=(), soft=NO_LIMIT, hard=NO_LIMIT, key: bytes = KEY) -> SaParams:
    return SaParams(spi, direction, src, dst, "aes128gcm16", key, mode=mode, name=name,
                    selectors=selectors, soft=soft, hard=hard)


def mh_selector(local, remote) -> Selector:
    return Selector(local=f"{local}/128", remote=f"{remote}/128", proto=MH)


def data_selector(local, remote) -> Selector:
    return Selector(local=f"{local}/128", remote=f"{remote}/128", proto=17)


def esp_packet(src, dst, spi: int) -> bytes:
    return bytes(IPv6(src=str(src), dst=str(dst)) / ESP(spi=spi, seq=1, data=b"\x33" * 32))


def addresses(packet: bytes) -> tuple[IPv6Address, IPv6Address]:
    parsed = IPv6(packet)
    return IPv6Address(parsed.src), IPv6Address(parsed.dst)


class Node:
    """A SAD, its bus, a remap engine and a tracker: what one vmip node runs."""

    def __init__(self, spd: SPD | None = None, *, spis=None, **tracker_options) -> None:
        self.bus = SadbBus()
        self.sad = SAD(self.bus, spi_source=spis)
        self.engine = RemapEngine()
        self.tracker = SpiTracker(self.bus, self.engine, spd=spd, **tracker_options)

    def rule(self, direction, spi, field) -> RemapRule | None:
        return self.engine.get(direction, spi, field)


def fixed_spis(*values):
    queue = list(values)
    return lambda low, high: queue.pop(0)


# -- GETSPI, UPDATE, ADD -----------------------------------------------------------


def test_getspi_installs_the_inbound_rule_before_update():
    spd = SPD([Policy("mh-from-mn", IN, mh_selector(CN, HOA), Action.PROTECT, ("mh-in",))])
    node = Node(spd, spis=fixed_spis(0x5001))
    node.tracker.track_mh(CN, HOA, Role.CN)

    seen_at_getspi = []
    node.bus.subscribe(lambda event: seen_at_getspi.append(node.rule(IN, 0x5001, SRC)))
    spi = node.sad.getspi(HOA, CN, 0.0, name="mh-in")
    assert spi == 0x5001
    # Installed inside the delivery of GETSPI itself (§6.2.2): a subscriber
    # after the tracker already sees it.
    assert seen_at_getspi[0] == RemapRule(IN, spi, SRC, WILDCARD, HOA, copy_to_ancillary=True,
                                          owner=f"iro-cn:{HOA}")
    assert node.tracker.sas()[0].kind == "mh" and node.tracker.sas()[0].state == "larval"

    node.sad.update(params(spi, IN, HOA, CN, name="mh-in"), 1.0)
    assert node.rule(IN, spi, SRC) == seen_at_getspi[0]
    assert node.tracker.sas()[0].state == "mature"
    packet, ancillary = node.engine.inbound(esp_packet(COA, CN, spi))
    assert addresses(packet) == (HOA, CN) and ancillary == COA.packed


def test_getspi_for_an_sa_the_spd_calls_data_installs_nothing_without_a_binding():
    spd = SPD([Policy("data-from-mn", IN, data_selector(CN, HOA), Action.PROTECT, ("d-in",))])
    node = Node(spd, spis=fixed_spis(0x5002))
    node.tracker.track_mh(CN, HOA, Role.CN)
    spi = node.sad.getspi(HOA, CN, 0.0, name="d-in")
    assert node.tracker.sas()[0].kind == "data"
    assert node.engine.rules() == []
    node.tracker.bind_data(CN, HOA, COA, Role.CN)
    assert node.rule(IN, spi, SRC) == RemapRule(IN, spi, SRC, COA, HOA, owner=f"iro-cn:{HOA}")


def test_add_and_update_install_rules_for_the_mn():
    node = Node()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    node.sad.add(params(0x1301, OUT, HOA, CN, selectors=(mh_selector(HOA, CN),)), 0.0)
    assert node.rule(OUT, 0x1301, SRC) == RemapRule(OUT, 0x1301, SRC, HOA, ANCILLARY,
                                                    owner=f"iro-mn:{CN}")
    spi = node.sad.getspi(CN, HOA, 0.0)
    node.sad.update(params(spi, IN, CN, HOA, selectors=(mh_selector(HOA, CN),)), 0.0)
    assert node.rule(IN, spi, DST) == RemapRule(IN, spi, DST, COA, HOA, copy_to_ancillary=True,
                                                owner=f"iro-mn:{CN}")
    # SAs with other peers are not touched.
    node.sad.add(params(0x1401, OUT, HOA, CN2, selectors=(mh_selector(HOA, CN2),)), 0.0)
    assert node.rule(OUT, 0x1401, SRC) is None
    assert node.tracker.counters["add"] == 2 and node.tracker.counters["update"] == 1


def test_update_reclassifies_a_provisional_larval_sa():
    node = Node(spis=fixed_spis(0x5003))
    node.tracker.track_mh(CN, HOA, Role.CN)
    spi = node.sad.getspi(HOA, CN, 0.0)  # nothing names it yet: provisionally "mixed"
    assert node.tracker.sas()[0].kind == "mixed"
    assert node.rule(IN, spi, SRC) is not None
    node.sad.update(params(spi, IN, HOA, CN, selectors=(data_selector(CN, HOA),)), 1.0)
    assert node.tracker.sas()[0].kind == "data"
    assert node.rule(IN, spi, SRC) is None  # data, and no binding


# -- DELETE, EXPIRE ------------------------------------------------------------------


def test_delete_removes_every_rule_of_that_spi():
    node = Node()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    node.sad.add(params(0x1301, OUT, HOA, CN, selectors=(mh_selector(HOA, CN),)), 0.0)
    node.sad.add(params(0x1302, IN, CN, HOA, selectors=(mh_selector(HOA, CN),)), 0.0)
    node.engine.add(RemapRule(OUT, 0x1301, DST, CN, CN2, owner="by hand"))
    node.sad.delete(0x1301, OUT)
    # §6.2.5: "removal of associated remapping rules for the SA (i.e. having that SPI)".
    assert node.rule(OUT, 0x1301, SRC) is None and node.rule(OUT, 0x1301, DST) is None
    assert node.rule(IN, 0x1302, DST) is not None
    assert [sa.spi for sa in node.tracker.sas()] == [0x1302]


def test_soft_expire_keeps_the_rules_hard_expire_removes_them_before_the_delete():
    node = Node()
    node.tracker.track_mh(CN, HOA, Role.CN)
    node.sad.add(params(0x2001, IN, HOA, CN, selectors=(mh_selector(CN, HOA),),
                        soft=Lifetime(seconds=10), hard=Lifetime(seconds=20)), 0.0)
    at_hard_expire = []
    node.bus.subscribe(lambda e: at_hard_expire.append(node.rule(IN, 0x2001, SRC))
                       if isinstance(e, ExpireEvent) and e.kind == "hard" else None)

    node.sad.handle_timer(10.0)
    assert node.tracker.counters["expire_soft"] == 1
    assert node.rule(IN, 0x2001, SRC) is not None  # §6.2.6: "the SA is still valid"
    assert node.tracker.sas()[0].state == "dying"

    node.sad.handle_timer(20.0)
    assert at_hard_expire == [None]
    assert node.tracker.counters["expire_hard"] == 1 and node.tracker.counters["delete"] == 1
    assert node.engine.rules() == [] and node.tracker.sas() == []


def test_a_getspi_that_never_completes_loses_its_rule():
    node = Node()
    node.sad.larval_lifetime = 5.0
    node.tracker.track_mh(CN, HOA, Role.CN)
    spi = node.sad.getspi(HOA, CN, 0.0)
    assert node.rule(IN, spi, SRC) is not None
    node.sad.handle_timer(5.0)
    assert node.engine.rules() == []


# -- rekeying (§6.3) -------------------------------------------------------------------


def test_a_rekeyed_sa_has_its_rule_before_its_first_packet():
    mn = Node(spis=fixed_spis(0x7001, 0x7002))
    mn.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    mh = (mh_selector(HOA, CN),)
    old = mn.sad.getspi(CN, HOA, 0.0)
    mn.sad.update(params(old, IN, CN, HOA, selectors=mh), 0.0)

    # Rekey: the new inbound SPI is reserved while the negotiation runs...
    new_key = bytes(range(100, 120))
    new = mn.sad.getspi(CN, HOA, 50.0)
    assert mn.rule(IN, new, DST) is not None
    mn.sad.update(params(new, IN, CN, HOA, selectors=mh, key=new_key), 51.0)

    # ...so the CN's first packet on it, sent to our CoA, is remapped and decrypts.
    cn_out = EspSA(params(new, OUT, CN, HOA, key=new_key), 51.0)
    inner = bytes(IPv6(src=str(CN), dst=str(HOA)) / UDP(sport=1, dport=2) / b"first")
    sa_level = transport_encap(inner, cn_out, 51.5)
    cn_engine = RemapEngine()
    cn_engine.add(RemapRule(OUT, new, DST, HOA, ANCILLARY))  # the CN's §3.1 rule 3
    on_wire = cn_engine.outbound(sa_level, COA)
    packet, ancillary = mn.engine.inbound(on_wire)
    assert ancillary == COA.packed
    spi, offset = esp_spi(packet)
    assert spi == new
    assert decap(packet, offset, mn.sad.lookup_inbound(spi), 52.0) == inner

    # The old SA goes; its rule goes with it, the new one stays.
    mn.sad.delete(old, IN)
    assert mn.rule(IN, old, DST) is None and mn.rule(IN, new, DST) is not None


# -- initial collect (§6.1) --------------------------------------------------------------


def static_mn_sas(sad: SAD) -> None:
    mh = (mh_selector(HOA, HA),)
    sad.add(params(0x1101, OUT, HOA, HA, name="mn-ha-mh-out", selectors=mh), 0.0)
    sad.add(params(0x1102, IN, HA, HOA, name="mn-ha-mh-in", selectors=mh), 0.0)
    sad.add(params(0x1201, OUT, COA, HA, name="mn-ha-tunnel-out", mode=Mode.TUNNEL), 0.0)
    sad.add(params(0x1202, IN, HA, COA, name="mn-ha-tunnel-in", mode=Mode.TUNNEL), 0.0)


def test_initial_collect_of_static_sas_that_existed_before_the_tracker():
    bus = SadbBus()
    sad = SAD(bus)
    static_mn_sas(sad)
    engine = RemapEngine()
    tracker = SpiTracker(bus, engine, sad=sad)
    assert [sa.spi for sa in tracker.sas()] == [0x1101, 0x1102, 0x1201, 0x1202]
    assert engine.rules() == []  # no intent yet
    tracker.track_mh(HOA, HA, Role.MN, coa=COA)
    assert {(r.direction, r.spi, r.field) for r in engine.rules()} == {
        (OUT, 0x1101, SRC), (IN, 0x1102, DST)}  # tunnel SAs need none (§7.2)
    assert {sa.spi: sa.kind for sa in tracker.sas()}[0x1201] == "other"


def test_a_dump_event_is_an_initial_collect_too():
    bus = SadbBus()
    sad = SAD(bus)
    static_mn_sas(sad)
    engine = RemapEngine()
    tracker = SpiTracker(bus, engine)
    tracker.track_mh(HOA, HA, Role.MN, coa=COA)
    assert engine.rules() == []
    sad.dump()  # publishes a DumpEvent
    assert len(engine.rules()) == 2
    # A later dump without an SA drops what that SA had.
    sad.delete(0x1101, OUT)
    engine.add(RemapRule(OUT, 0x1101, SRC, HOA, COA))  # stale, from before
    sad.dump()
    assert [(r.direction, r.spi) for r in engine.rules()] == [(IN, 0x1102), (OUT, 0x1101)]


# -- movement, bindings --------------------------------------------------------------------


def mn_with_fine_grained_sas() -> Node:
    node = Node()
    mh, data = (mh_selector(HOA, CN),), (data_selector(HOA, CN),)
    node.sad.add(params(0x144, OUT, HOA, CN, selectors=mh), 0.0)
    node.sad.add(params(0x145, IN, CN, HOA, selectors=mh), 0.0)
    node.sad.add(params(0x142, OUT, HOA, CN, selectors=data), 0.0)
    node.sad.add(params(0x143, IN, CN, HOA, selectors=data), 0.0)
    return node


def test_move_updates_every_rule_naming_the_coa():
    node = mn_with_fine_grained_sas()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    node.tracker.bind_data(HOA, CN, COA, Role.MN)
    node.engine.add(RemapRule(OUT, 0x199, SRC, HOA, COA, owner="config"))
    naming_coa = [r for r in node.engine.rules() if r.names(COA)]
    assert len(naming_coa) == 4  # MH in, data out, data in, the config rule

    node.tracker.move(COA, COA_LTE)
    assert [r for r in node.engine.rules() if r.names(COA)] == []
    assert len([r for r in node.engine.rules() if r.names(COA_LTE)]) == 4
    assert addresses(node.engine.outbound(esp_packet(HOA, CN, 0x142))) == (COA_LTE, CN)
    assert addresses(node.engine.outbound(esp_packet(HOA, CN, 0x199))) == (COA_LTE, CN)
    assert node.engine.inbound(esp_packet(CN, COA, 0x145)) is None
    assert addresses(node.engine.inbound(esp_packet(CN, COA_LTE, 0x145))[0]) == (CN, HOA)

    # SAs added after the move (a rekey) get the new CoA.
    node.sad.add(params(0x4343, IN, CN, HOA, selectors=(data_selector(HOA, CN),)), 1.0)
    assert node.rule(IN, 0x4343, DST).expected == COA_LTE


def test_move_from_home_and_back_home():
    node = mn_with_fine_grained_sas()
    node.tracker.track_mh(HOA, CN, Role.MN)  # at home: only the outgoing ancillary rule
    assert node.rule(IN, 0x145, DST) is None and node.rule(OUT, 0x144, SRC) is not None
    node.tracker.move(None, COA)
    assert node.rule(IN, 0x145, DST).expected == COA
    node.tracker.bind_data(HOA, CN, COA, Role.MN)
    assert node.rule(OUT, 0x142, SRC).remap == COA

    node.tracker.move(COA, None)  # back home: bindings end, no CoA to expect
    assert node.rule(IN, 0x145, DST) is None
    assert node.rule(OUT, 0x142, SRC) is None and node.rule(IN, 0x143, DST) is None
    assert node.rule(OUT, 0x144, SRC) is not None
    assert node.tracker.move(None, None) == 0


def test_unbind_removes_the_data_rules_only():
    node = mn_with_fine_grained_sas()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    mh_rules = node.engine.rules()
    node.tracker.bind_data(HOA, CN, COA, Role.MN)
    assert node.rule(OUT, 0x142, SRC) is not None and node.rule(IN, 0x143, DST) is not None
    assert node.tracker.unbind(HOA, CN, Role.MN) == 2
    assert node.engine.rules() == mh_rules
    assert node.tracker.unbind(HOA, CN, Role.MN) == 0


def test_untrack_mh_removes_the_mh_rules():
    node = mn_with_fine_grained_sas()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    assert node.tracker.untrack_mh(HOA, CN, Role.MN) == 2
    assert node.engine.rules() == []


def test_a_cn_accepts_from_a_new_coa_at_once_and_sends_to_it_after_the_proof():
    cn = Node()
    data = (data_selector(CN, HOA),)
    cn.sad.add(params(0x146, OUT, CN, HOA, selectors=data), 0.0)
    cn.sad.add(params(0x147, IN, HOA, CN, selectors=data), 0.0)
    cn.tracker.bind_data(CN, HOA, COA, Role.CN, outbound=False)  # BU received (§4.5.1)
    assert addresses(cn.engine.inbound(esp_packet(COA, CN, 0x147))[0]) == (HOA, CN)
    unproven = esp_packet(CN, HOA, 0x146)
    assert cn.engine.outbound(unproven) is unproven  # still to the HoA, via the HA
    cn.tracker.bind_data(CN, HOA, COA, Role.CN)  # AOTR checked
    assert addresses(cn.engine.outbound(esp_packet(CN, HOA, 0x146))) == (CN, COA)


# -- several bindings of one HoA (RFC 5648, one per link) -----------------------------------

COA_3 = IPv6Address("2001:db8:33::2")


def test_an_mn_with_two_bindings_accepts_at_both_coas_and_picks_per_packet():
    node = mn_with_fine_grained_sas()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA, others=(COA_LTE,))
    node.tracker.bind_data(HOA, CN, COA, Role.MN, others=(COA_LTE,))
    # MH answers and data come to either CoA.
    for spi in (0x145, 0x143):
        assert node.rule(IN, spi, DST).expected_addresses == (COA, COA_LTE)
        for coa in (COA, COA_LTE):
            assert addresses(node.engine.inbound(esp_packet(CN, coa, spi))[0]) == (CN, HOA)
        assert node.engine.inbound(esp_packet(CN, COA_3, spi)) is None
    # Outbound data: "ancillary or CoA", the send path names the link's CoA.
    rule = node.rule(OUT, 0x142, SRC)
    assert rule.remap is ANCILLARY and rule.fallback == COA
    assert addresses(node.engine.outbound(esp_packet(HOA, CN, 0x142))) == (COA, CN)
    assert addresses(node.engine.outbound(esp_packet(HOA, CN, 0x142), COA_LTE)) == (COA_LTE, CN)
    # One binding again: example 1's static rules.
    node.tracker.bind_data(HOA, CN, COA_LTE, Role.MN)
    assert node.rule(OUT, 0x142, SRC).remap == COA_LTE
    assert node.rule(IN, 0x143, DST).expected_addresses == (COA_LTE,)
    assert node.rule(IN, 0x145, DST).expected_addresses == (COA, COA_LTE)   # MH: both still ours
    node.tracker.set_care_of_addresses([COA_LTE])
    assert node.rule(IN, 0x143, DST) == RemapRule(IN, 0x143, DST, COA_LTE, HOA,
                                                  owner=f"iro-mn:{CN}")
    assert node.rule(IN, 0x145, DST).expected_addresses == (COA_LTE,)


def test_a_cn_with_two_bindings_accepts_from_both_and_sends_to_the_primary_by_default():
    cn = Node()
    data = (data_selector(CN, HOA),)
    cn.sad.add(params(0x146, OUT, CN, HOA, selectors=data), 0.0)
    cn.sad.add(params(0x147, IN, HOA, CN, selectors=data), 0.0)
    cn.tracker.bind_data(CN, HOA, COA, Role.CN, others=(COA_LTE,))
    assert format_rule(cn.rule(IN, 0x147, SRC)) == (
        f"dir: in, SPI: 327, exp. src: {{{COA}, {COA_LTE}}}, remap. src: {HOA}")
    for coa in (COA, COA_LTE):
        assert addresses(cn.engine.inbound(esp_packet(coa, CN, 0x147))[0]) == (HOA, CN)
    assert cn.engine.inbound(esp_packet(COA_3, CN, 0x147)) is None
    assert format_rule(cn.rule(OUT, 0x146, DST)) == (
        f"dir: out, SPI: 326, exp. dst: {HOA}, remap. dst: ancillary or {COA}")
    assert addresses(cn.engine.outbound(esp_packet(CN, HOA, 0x146))) == (CN, COA)
    assert addresses(cn.engine.outbound(esp_packet(CN, HOA, 0x146), COA_LTE)) == (CN, COA_LTE)
    # Accepting from a second CoA before its proof: the outbound CoA stays the proven one.
    cn.tracker.bind_data(CN, HOA, COA, Role.CN, outbound=False, outbound_coa=COA_LTE,
                         others=(COA_3,))
    assert cn.rule(IN, 0x147, SRC).expected_addresses == (COA, COA_3)
    assert cn.rule(OUT, 0x146, DST).fallback == COA_LTE
    with pytest.raises(RemapError):
        cn.tracker.bind_data(CN, HOA, COA, Role.CN, others=[
            IPv6Address(int(COA_3) + i) for i in range(16)])


def test_move_per_coa_with_several_bindings():
    node = mn_with_fine_grained_sas()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA, others=(COA_LTE,))
    node.tracker.bind_data(HOA, CN, COA, Role.MN, others=(COA_LTE,))
    # One CoA changes: only it does, in every set.
    node.tracker.move(COA_LTE, COA_3)
    assert node.rule(IN, 0x143, DST).expected_addresses == (COA, COA_3)
    assert node.rule(IN, 0x145, DST).expected_addresses == (COA, COA_3)
    # A secondary CoA goes: the primary stays, outbound too.
    node.tracker.move(COA_3, None)
    assert node.rule(IN, 0x143, DST).expected_addresses == (COA,)
    assert node.rule(OUT, 0x142, SRC).remap == COA
    # The primary goes while another is bound: the other one takes its place.
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA, others=(COA_LTE,))
    node.tracker.bind_data(HOA, CN, COA, Role.MN, others=(COA_LTE,))
    node.tracker.move(COA, None)
    assert node.rule(IN, 0x143, DST).expected_addresses == (COA_LTE,)
    assert node.rule(IN, 0x145, DST).expected_addresses == (COA_LTE,)
    assert node.rule(OUT, 0x142, SRC).remap == COA_LTE
    assert addresses(node.engine.outbound(esp_packet(HOA, CN, 0x142))) == (COA_LTE, CN)
    # The last one goes: home, as with one binding.
    node.tracker.move(COA_LTE, None)
    assert node.rule(IN, 0x143, DST) is None and node.rule(OUT, 0x142, SRC) is None
    assert node.rule(IN, 0x145, DST) is None


# -- MIGRATE, classification, conflicts ------------------------------------------------------


def test_migrate_of_a_tunnel_sa_shows_in_the_table_and_needs_no_rule():
    bus = SadbBus()
    sad = SAD(bus)
    static_mn_sas(sad)
    tracker = SpiTracker(bus, RemapEngine(), sad=sad)
    tracker.track_mh(HOA, HA, Role.MN, coa=COA)
    rules_before = tracker.engine.rules()
    sad.migrate(0x1201, OUT, COA_LTE, HA, 5.0)
    sad.migrate(0x1202, IN, HA, COA_LTE, 5.0)
    table = {sa.spi: sa for sa in tracker.sas()}
    assert (table[0x1201].src, table[0x1202].dst) == (COA_LTE, COA_LTE)
    assert table[0x1201].rules == () and table[0x1201].kind == "other"
    assert tracker.engine.rules() == rules_before
    assert tracker.counters["migrate"] == 2
    assert [sa.spi for sa in tracker.sas()] == [0x1101, 0x1102, 0x1201, 0x1202]


def info(**fields) -> SaInfo:
    base = {"spi": 0x100, "direction": OUT, "src": HOA, "dst": CN, "state": "mature"}
    base.update(fields)
    return SaInfo(**base)


def test_default_classification():
    assert classify_sa(info(mode=Mode.TUNNEL)) == "other"
    assert classify_sa(info(src=IPv6Address("::ffff:192.0.2.1").ipv4_mapped,
                            dst=IPv6Address("::ffff:192.0.2.2").ipv4_mapped)) == "other"
    assert classify_sa(info(selectors=(mh_selector(HOA, CN),))) == "mh"
    assert classify_sa(info(selectors=(data_selector(HOA, CN),))) == "data"
    assert classify_sa(info(selectors=(mh_selector(HOA, CN), data_selector(HOA, CN)))) == "mixed"
    assert classify_sa(info(selectors=(Selector(local=f"{HOA}/128"),))) == "mixed"  # ANY proto
    assert classify_sa(info()) == "mixed"  # nothing restricts it
    spd = SPD([Policy("to-cn-mh", OUT, mh_selector(HOA, CN), Action.PROTECT, ("x",))])
    assert classify_sa(info(name="x"), spd) == "mh"
    assert classify_sa(info(name="y"), spd) == "mixed"


def test_a_custom_classifier_decides_and_a_bad_answer_means_untracked():
    answers = {0x110: "mh", 0x111: "nonsense"}
    node = Node(classify=lambda sa: answers[sa.spi])
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    node.sad.add(params(0x110, OUT, HOA, CN), 0.0)
    node.sad.add(params(0x111, OUT, HOA, CN), 0.0)
    assert node.rule(OUT, 0x110, SRC) is not None
    assert node.rule(OUT, 0x111, SRC) is None
    assert node.tracker.counters["bad_classification"] == 1


def test_two_peers_choosing_the_same_outbound_spi():
    node = Node()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    node.tracker.track_mh(HOA, CN2, Role.MN, coa=COA)
    node.tracker.bind_data(HOA, CN, COA, Role.MN)
    node.sad.add(params(0x9000, OUT, HOA, CN, selectors=(data_selector(HOA, CN),)), 0.0)
    assert node.rule(OUT, 0x9000, SRC).remap == COA
    node.sad.add(params(0x9000, OUT, HOA, CN2, selectors=(mh_selector(HOA, CN2),)), 1.0)
    assert node.tracker.counters["spi_conflict"] == 1
    assert node.rule(OUT, 0x9000, SRC).remap is ANCILLARY  # the newest SA's rule
    node.sad.delete(0x9000, OUT, CN2)
    assert node.rule(OUT, 0x9000, SRC).remap == COA  # the remaining SA's rule is back


def test_bad_intents_are_refused_with_remap_error():
    node = Node()
    with pytest.raises(RemapError):
        node.tracker.track_mh(CN, HOA, Role.CN, coa=COA)  # a CN has no CoA of its own
    with pytest.raises(RemapError):
        node.tracker.track_mh(HOA, CN, "visitor")
    with pytest.raises(RemapError):
        node.tracker.bind_data(HOA, CN, IPv6Address(0))
    with pytest.raises(RemapError):
        node.tracker.track_mh("not an address", CN, Role.MN)


def test_close_stops_tracking():
    node = Node()
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    node.tracker.close()
    node.sad.add(params(0x144, OUT, HOA, CN), 0.0)
    assert node.engine.rules() == []


def test_inbound_is_untouched_for_spis_nobody_tracks():
    node = mn_with_fine_grained_sas()
    packet = esp_packet(CN, HOA, 0x145)
    assert node.engine.inbound(packet) == (packet, UNSPECIFIED)


def test_policies_added_after_the_sas_reclassify_them():
    # Static keys install SAs first, then policies (vmip.ipsec.static.install).
    spd = SPD()
    node = Node(spd)
    node.sad.add(params(0x1101, OUT, HOA, HA, name="mn-ha-mh-out"), 0.0)
    assert node.tracker.sas()[0].kind == "mixed"
    spd.add(Policy("mh-to-ha", OUT, mh_selector(HOA, HA), Action.PROTECT, ("mn-ha-mh-out",)))
    assert node.tracker.sas()[0].kind == "mh"
    assert node.tracker.counters["reclassified"] == 1


def test_reclassify_asks_a_custom_classifier_again():
    answers = {0x120: "data"}
    node = Node(classify=lambda sa: answers[sa.spi])
    node.tracker.track_mh(HOA, CN, Role.MN, coa=COA)
    node.sad.add(params(0x120, OUT, HOA, CN), 0.0)
    assert node.rule(OUT, 0x120, SRC) is None
    answers[0x120] = "mh"
    assert node.tracker.reclassify() == 1
    assert node.rule(OUT, 0x120, SRC).remap is ANCILLARY


def test_unbind_after_someone_else_moved_the_addresses_still_removes_our_rules():
    node = mn_with_fine_grained_sas()
    node.tracker.bind_data(HOA, CN, COA, Role.MN)
    node.engine.replace_address(COA, COA_LTE)  # not through tracker.move
    node.engine.add(RemapRule(OUT, 0x199, SRC, HOA, COA_LTE, owner="config"))
    node.tracker.unbind(HOA, CN, Role.MN)
    assert [r.owner for r in node.engine.rules()] == ["config"]
