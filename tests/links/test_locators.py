"""The locator table: static LPM, default peer, learning only via confirm."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmip.links import LinkError, LocatorTable
from vmip.links.locators import BINDING, LEARNED, PEER, STATIC, address_key

HA = ("192.0.2.2", 6275)
CN = ("2001:db8:20::2", 6275)
GATEWAY = ("192.0.2.18", 6275)
MN_WIFI = ("192.0.2.34", 6275)
MN_LTE_NAT = ("203.0.113.1", 40123)
ATTACKER = ("198.51.100.66", 6275)

MN_COA = "2001:db8:31::2"


@dataclass
class Peer:
    """Duck-typed like vmip.config.PeerConfig."""

    name: str
    prefixes: tuple = ()
    endpoint: tuple | None = None
    framing: str = "udp"
    default: bool = False


def lab_table(**kwargs) -> LocatorTable:
    peers = [
        Peer("ha", (ipaddress.ip_network("2001:db8:100::/64"),
                    ipaddress.ip_network("2001:db8:10::2/128")),
             (ipaddress.ip_address("192.0.2.2"), 6275)),
        Peer("ha-home", (ipaddress.ip_network("2001:db8:100::1/128"),), HA),
        Peer("cn", (ipaddress.ip_network("2001:db8:20::/48"),), CN),
        # The default peer catches what no prefix covers; it claims no prefix of
        # its own, so addresses outside the others can be learned.
        Peer("gw", (), GATEWAY, default=True),
    ]
    return LocatorTable.from_peers(peers, **kwargs)


def test_longest_prefix_wins():
    table = lab_table()
    assert table.lookup("2001:db8:100::1").peer == "ha-home"      # /128 beats /64
    assert table.lookup("2001:db8:100::10").peer == "ha"          # inside the /64
    assert table.lookup("2001:db8:20::7").endpoint == CN          # /48
    assert table.lookup("2001:db8:99::1").peer == "gw"            # only the /32
    assert table.lookup("2001:db8:10::2").endpoint == HA
    for row in table.rows():
        assert row["source"] == STATIC


def test_lookup_accepts_packed_text_and_ipaddress_forms():
    table = lab_table()
    addr = ipaddress.IPv6Address("2001:db8:20::9")
    assert table.lookup(addr.packed) is table.lookup(addr) is table.lookup(str(addr))


def test_unknown_destination_goes_to_default_peer_else_none():
    table = lab_table()
    assert table.lookup("2001:db9::1").peer == "gw"               # outside every prefix
    no_default = LocatorTable.from_peers([Peer("cn", ("2001:db8:20::/48",), CN)])
    assert no_default.lookup("2001:db9::1") is None
    assert no_default.default is None


def test_default_peer_without_prefixes_still_catches_everything():
    table = LocatorTable.from_peers([Peer("gw", (), GATEWAY, default=True)])
    assert table.lookup("2001:db8:1::1").endpoint == GATEWAY
    assert [row["peer"] for row in table.rows()] == ["gw"]
    assert table.rows()[0]["default"] is True


def test_two_default_peers_are_refused():
    with pytest.raises(LinkError, match="two default peers"):
        LocatorTable.from_peers([Peer("a", ("2001:db8:1::/48",), HA, default=True),
                                 Peer("b", ("2001:db8:2::/48",), CN, default=True)])


def test_duplicate_prefix_is_refused():
    with pytest.raises(LinkError, match="listed twice"):
        LocatorTable.from_peers([Peer("a", ("2001:db8:1::/48",), HA),
                                 Peer("b", ("2001:db8:1::/48",), CN)])


def test_ipv4_endpoint_given_mapped_is_stored_plain():
    table = LocatorTable()
    table.add_static("2001:db8:1::/48", ("::ffff:192.0.2.2", 6275))
    assert table.lookup("2001:db8:1::1").endpoint == HA


def test_ipv4_prefix_is_stored_ipv4_mapped():
    # rfc3948 links present IPv4 underlay addresses as ::ffff:a.b.c.d.
    table = LocatorTable()
    table.add_static("192.0.2.0/24", ("192.0.2.1", 4500), framing="rfc3948")
    assert table.lookup("::ffff:192.0.2.77").endpoint == ("192.0.2.1", 4500)
    assert table.lookup(ipaddress.ip_address("192.0.2.9")).framing == "rfc3948"
    assert table.lookup("::ffff:198.51.100.1") is None


def test_confirm_learns_a_new_coa_behind_nat():
    table = lab_table()
    assert table.lookup(MN_COA).peer == "gw"   # before: only the static /32
    assert table.confirm(MN_COA, MN_LTE_NAT, now=100.0, link="eth0") is True
    entry = table.lookup(MN_COA)
    assert (entry.endpoint, entry.link, entry.source) == (MN_LTE_NAT, "eth0", LEARNED)
    assert entry.prefix == ipaddress.ip_network(f"{MN_COA}/128")
    # The static /32 still serves its other addresses.
    assert table.lookup("2001:db8:31::3").peer == "gw"


def test_confirm_moves_an_existing_locator_and_reports_it():
    table = lab_table()
    table.confirm(MN_COA, MN_WIFI, now=1.0, link="eth0")
    assert table.confirm(MN_COA, MN_WIFI, now=2.0, link="eth0") is False  # same place
    assert table.lookup(MN_COA).last_confirmed == 2.0
    assert table.confirm(MN_COA, MN_LTE_NAT, now=3.0, link="eth0") is True
    assert table.lookup(MN_COA).endpoint == MN_LTE_NAT
    assert table.counters["moved"] == 1


def test_learned_entry_overrides_a_static_128():
    table = lab_table()
    assert table.confirm("2001:db8:100::1", ("192.0.2.99", 6275), now=5.0)
    assert table.lookup("2001:db8:100::1").endpoint == ("192.0.2.99", 6275)
    assert table.forget("2001:db8:100::1") is True
    assert table.lookup("2001:db8:100::1").endpoint == HA        # static again
    assert table.forget("2001:db8:100::1") is False


def test_observe_never_moves_a_locator():
    table = lab_table()
    table.confirm(MN_COA, MN_WIFI, now=1.0, link="wifi")
    before = table.rows(now=10.0)
    # A spoofed packet claiming the MN's CoA arrives from the attacker.
    assert table.observe(MN_COA, ATTACKER) is True
    assert table.observe(MN_COA, MN_WIFI) is False
    assert table.observe("2001:db8:99::5", ATTACKER) is True      # vs the default peer
    assert table.rows(now=10.0) == before
    assert table.lookup(MN_COA).endpoint == MN_WIFI
    assert table.counters["observed_elsewhere"] == 2


def test_spoofed_source_from_another_endpoint_leaves_table_unchanged():
    """The node's inbound path: observe every packet, confirm only those whose
    ICV verified.  A forged packet (bad ICV) must not redirect the MN."""
    table = lab_table()
    table.confirm(MN_COA, MN_WIFI, now=1.0)
    snapshot = table.rows(now=50.0)

    def inbound(source, endpoint, icv_ok, now):
        table.observe(source, endpoint)
        if icv_ok:
            table.confirm(source, endpoint, now)

    for i in range(100):
        inbound(MN_COA, ATTACKER, icv_ok=False, now=2.0 + i)
    assert table.rows(now=50.0) == snapshot
    assert table.lookup(MN_COA).endpoint == MN_WIFI
    inbound(MN_COA, MN_LTE_NAT, icv_ok=True, now=200.0)          # the real MN roams
    assert table.lookup(MN_COA).endpoint == MN_LTE_NAT


def test_learned_entries_are_bounded_least_recently_confirmed_evicted():
    table = LocatorTable(max_learned=3)
    for i in range(3):
        table.confirm(f"2001:db8:1::{i + 1}", ("192.0.2.1", 1000 + i), now=float(i))
    table.confirm("2001:db8:1::1", ("192.0.2.1", 1000), now=10.0)  # refresh ::1
    table.confirm("2001:db8:1::4", ("192.0.2.1", 1003), now=11.0)  # evicts ::2
    assert table.learned_count() == 3
    assert table.lookup("2001:db8:1::2") is None
    assert table.lookup("2001:db8:1::1") is not None
    assert table.counters["evicted"] == 1
    for i in range(1000):
        table.confirm(f"2001:db8:2::{i:x}", ("192.0.2.1", 1), now=20.0 + i)
    assert table.learned_count() == 3


def test_rows_show_every_column_for_vmip_locators():
    table = lab_table()
    table.confirm(MN_COA, MN_LTE_NAT, now=100.0, link="lte0")
    rows = {row["address"]: row for row in table.rows(now=102.5)}
    learned = rows[MN_COA]
    assert learned == {
        "address": MN_COA, "endpoint": "203.0.113.1:40123", "link": "lte0",
        "framing": "udp", "source": "learned", "peer": "-", "last_confirmed": 100.0,
        "confirmed_ago": 2.5, "default": False,
    }
    assert rows["2001:db8:20::/48"]["endpoint"] == "[2001:db8:20::2]:6275"
    assert rows["::/0"]["default"] is True
    assert rows["2001:db8:100::1"]["source"] == "static"
    text = table.render(now=102.5)
    assert "2.5s ago" in text and "(default)" in text and "[2001:db8:20::2]:6275" in text
    assert text.splitlines()[0].split() == ["ADDRESS", "ENDPOINT", "LINK", "FRAMING",
                                            "SOURCE", "PEER", "CONFIRMED"]


def test_peer_without_endpoint_is_listed_but_has_none():
    table = LocatorTable.from_peers([Peer("mn", ("2001:db8:100::10/128",), None)])
    entry = table.lookup("2001:db8:100::10")
    assert entry is not None and entry.endpoint is None
    assert table.observe("2001:db8:100::10", ATTACKER) is False
    table.confirm("2001:db8:100::10", MN_WIFI, now=1.0)
    assert table.lookup("2001:db8:100::10").endpoint == MN_WIFI


@pytest.mark.parametrize("bad", ["2001:db8::zz", "", b"\x01\x02", 12, None, "10.0.0.1/8"])
def test_bad_addresses_raise_link_error(bad):
    with pytest.raises(LinkError):
        LocatorTable().lookup(bad)


@pytest.mark.parametrize("bad", [("host.example", 1), ("192.0.2.1", 70000), ("::1",),
                                 "192.0.2.1:6275", ("192.0.2.1", "6275"), None])
def test_bad_endpoints_raise_link_error(bad):
    with pytest.raises(LinkError):
        LocatorTable().confirm("2001:db8::1", bad, now=0.0)


# -- properties -------------------------------------------------------------

prefixes = st.builds(
    lambda value, length: ipaddress.IPv6Network((value >> (128 - length) << (128 - length)
                                                 if length else 0, length)),
    st.integers(0, 2**128 - 1), st.integers(0, 128))


@given(st.lists(prefixes, min_size=1, max_size=20, unique=True),
       st.integers(0, 2**128 - 1))
def test_lookup_matches_a_brute_force_longest_prefix(networks, probe):
    table = LocatorTable()
    for i, network in enumerate(networks):
        table.add_static(network, ("192.0.2.1", i + 1))
    address = ipaddress.IPv6Address(probe)
    covering = [n for n in networks if address in n]
    found = table.lookup(address)
    if not covering:
        assert found is None
    else:
        assert found.prefix == max(covering, key=lambda n: n.prefixlen)


anything = st.one_of(st.none(), st.integers(), st.text(max_size=50), st.binary(max_size=40),
                     st.tuples(st.text(max_size=20), st.integers()),
                     st.lists(st.integers(), max_size=3), st.floats())


@given(anything, anything)
def test_arbitrary_input_raises_only_link_error(address, endpoint):
    table = lab_table()
    for call in (lambda: table.lookup(address), lambda: table.observe(address, endpoint),
                 lambda: table.confirm(address, endpoint, now=1.0),
                 lambda: table.forget(address), lambda: address_key(address),
                 lambda: table.add_static(address, endpoint)):
        try:
            call()
        except LinkError:
            pass


# -- what an authenticating SA may vouch for (docs/security.md, "Locators") -----------


def test_nothing_is_learned_inside_a_gateway_prefix():
    """A home address sits behind its HA's static /64: an SA of the MN
    authenticates the MN, not where the HoA is; the HA's entry stays."""
    table = lab_table()
    assert table.confirm("2001:db8:100::10", ATTACKER, now=1.0) is False
    assert table.lookup("2001:db8:100::10").endpoint == ("192.0.2.2", 6275)
    assert table.counters["refused_gateway"] == 1
    assert table.learned_count() == 0


def test_a_binding_never_shadows_a_static_host_entry():
    """A CoA that a binding names may not take over an address the config
    gives to another host (a CN's /128 claimed as a CoA)."""
    table = lab_table()
    assert table.confirm("2001:db8:100::1", ATTACKER, now=1.0, vouched_by=BINDING) is False
    assert table.lookup("2001:db8:100::1").endpoint == HA
    assert table.counters["refused_static"] == 1
    # The host itself (its own SA's peer address) may move: NAT rebinding.
    assert table.confirm("2001:db8:100::1", ("192.0.2.99", 6275), now=2.0, vouched_by=PEER)


def test_a_binding_may_name_an_address_nobody_configured():
    table = lab_table()
    assert table.confirm(MN_COA, MN_LTE_NAT, now=1.0, vouched_by=BINDING) is True
    assert table.lookup(MN_COA).endpoint == MN_LTE_NAT


@pytest.mark.parametrize("address", ["::", "::1", "fe80::1", "ff02::1", "::ffff:127.0.0.1",
                                     "::ffff:224.0.0.9"])
def test_addresses_that_cannot_be_a_unicast_source_are_never_learned(address):
    table = LocatorTable()
    assert table.confirm(address, ATTACKER, now=1.0) is False
    assert table.lookup(address) is None
    assert table.counters["refused_scope"] == 1


def test_refresh_is_true_only_for_an_unchanged_learned_entry():
    table = lab_table()
    key = ipaddress.ip_address(MN_COA).packed
    assert table.refresh(key, MN_WIFI, now=1.0, link="wifi") is False
    table.confirm(MN_COA, MN_WIFI, now=1.0, link="wifi")
    assert table.refresh(key, MN_WIFI, now=5.0, link="wifi") is True
    assert table.lookup(MN_COA).last_confirmed == 5.0
    assert table.refresh(key, MN_LTE_NAT, now=6.0, link="wifi") is False
    assert table.lookup(MN_COA).endpoint == MN_WIFI


def test_moves_of_many_mns_evict_the_coas_they_left_not_the_live_ones():
    """10,000 MNs, a table of 12,000: every MN registers, then each one moves
    twice.  The 20,000 CoAs left behind go first; every live CoA stays."""
    mns = 10_000
    table = LocatorTable(max_learned=12_000)
    hoa = [ipaddress.IPv6Address("2001:db8:100::1:0") + i for i in range(mns)]

    def coa(generation: int, i: int) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(f"2001:db8:{0x31 + generation:x}::") + 0x1_0000 + i

    for generation in range(3):
        for i in range(mns):
            table.confirm(coa(generation, i), ("192.0.2.2", 4500), float(generation),
                          vouched_by=BINDING, home_address=hoa[i])
    assert table.learned_count() == 12_000
    live = [table.lookup(coa(2, i)) for i in range(mns)]
    assert all(entry is not None and entry.source == LEARNED for entry in live)
    assert table.counters["left_behind"] == 2 * mns
    assert len(table._owned) == mns


def test_a_left_coa_stays_usable_until_room_is_needed():
    table = LocatorTable(max_learned=8)
    home = ipaddress.IPv6Address("2001:db8:100::10")
    old, new = ipaddress.IPv6Address("2001:db8:31::2"), ipaddress.IPv6Address("2001:db8:32::2")
    table.confirm(old, ("192.0.2.2", 1), 0.0, vouched_by=BINDING, home_address=home)
    table.confirm(new, ("192.0.2.3", 1), 1.0, vouched_by=BINDING, home_address=home)
    assert table.lookup(old).endpoint == ("192.0.2.2", 1)   # not forgotten, only first to go
    assert table.forget(new) and not table._owned


Y_HOA, X_HOA = "2001:db8:100::20", "2001:db8:100::10"


def test_a_binding_vouch_never_takes_an_entry_another_home_address_owns():
    table = LocatorTable()
    assert table.confirm(MN_COA, MN_WIFI, 1.0, vouched_by=BINDING, home_address=Y_HOA)
    assert not table.confirm(MN_COA, ATTACKER, 2.0, vouched_by=BINDING, home_address=X_HOA)
    assert table.lookup(MN_COA).endpoint == MN_WIFI
    assert table.counters["refused_owned"] == 1
    # Its owner's binding moves it (a NAT rebinding, another link).
    assert table.confirm(MN_COA, MN_LTE_NAT, 3.0, vouched_by=BINDING, home_address=Y_HOA)
    assert table.lookup(MN_COA).endpoint == MN_LTE_NAT


def test_a_binding_vouch_never_takes_a_peer_entry():
    table = LocatorTable()
    assert table.confirm("2001:db8:20::9", GATEWAY, 1.0, vouched_by=PEER)
    assert not table.confirm("2001:db8:20::9", ATTACKER, 2.0, vouched_by=BINDING,
                             home_address=X_HOA)
    assert table.lookup("2001:db8:20::9").endpoint == GATEWAY
    # The peer's own SA still moves it.
    assert table.confirm("2001:db8:20::9", HA, 3.0, vouched_by=PEER)



def test_static_with_endpoint_ignores_learned_default_and_endpointless_prefixes():
    table = lab_table(max_learned=5000)
    table.add_static("2001:db8:20:1::/64", None, peer="cn-later")   # no endpoint yet
    table.confirm("2001:db8:99::5", MN_WIFI, 1.0)                   # learned /128
    assert table.lookup("2001:db8:99::5").endpoint == MN_WIFI
    assert table.static_with_endpoint(ipaddress.IPv6Address("2001:db8:99::5").packed) is None
    assert table.static_with_endpoint("2001:db8:20::7").endpoint == CN
    # The longer prefix has no endpoint: the /48 with one answers.
    assert table.static_with_endpoint("2001:db8:20:1::9").peer == "cn"
    assert table.static_with_endpoint("2001:db8:100::1").peer == "ha-home"
    assert table.static_with_endpoint("2001:db8:99::1") is None     # the default peer only


def test_ike_config_locator_lookup_costs_the_same_with_many_learned_locators():
    """An IKE_SA_INIT from an on-wire source, and each authenticated IKE
    message that may move a locator, look up the config's locator
    (IkeManager._static_locator): an HA's learned locators (one per MN) must
    not make that a walk."""
    from types import SimpleNamespace

    from workcount import line_events

    from vmip.node.keying import IkeManager

    def work(learned: int) -> int:
        table = lab_table(max_learned=learned + 10)
        for i in range(learned):
            table.confirm(ipaddress.IPv6Address(f"2001:db8:77::{i + 1:x}"), ("192.0.2.9", i + 1),
                          1.0)
        manager = SimpleNamespace(services=SimpleNamespace(locators=table))
        key = ipaddress.IPv6Address("2001:db8:20::7").packed
        assert IkeManager._static_locator(manager, key).endpoint == CN
        return line_events(lambda: IkeManager._static_locator(manager, key))
    assert work(10) == work(2000)
