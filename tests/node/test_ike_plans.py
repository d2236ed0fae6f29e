"""IKE in the lab's shape, without namespaces (fast, no root).

- CHILD_SA plans made from ``[[ike.peer]] policies`` of the lab's own
  generated configs (vmip.lab.configs, loaded with vmip.config).
- A CREATE_CHILD_SA with selectors and a mode of its own, between two
  sans-IO IKE peers (the MN-HA tunnel child after the MH pair).
- ``ts_within`` against a brute-force oracle (hypothesis).
- The §8.1.2 arrival check: which IKE_SA_INIT a node refuses.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmip.config import load_config
from vmip.ike.events import ChildSaCreated, IkeSaEstablished
from vmip.ike.ikesa import IkeSaConfig
from vmip.ike.payloads import TrafficSelector
from vmip.ipsec.sa import Mode
from vmip.lab import configs
from vmip.lab.topology import default_plan
from vmip.links.locators import LocatorTable
from vmip.node.keying import IkeManager, _Arrival
from vmip.node.keying_policy import child_plans, policy_entries, ts_within

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ike"))
from ikepair import make_pair

HOA, HA, CN, MN2 = "2001:db8:100::10", "2001:db8:100::1", "2001:db8:20::2", "2001:db8:100::20"
WIFI_COA, LTE_COA = "2001:db8:31::2", "2001:db8:32::2"
MH, UDP = 135, 17


def host(address: str, protocol: int = 0, ports: tuple[int, int] = (0, 0xFFFF)) -> TrafficSelector:
    ip = ipaddress.ip_address(address)
    return TrafficSelector(ip, ip, protocol, *ports)


ANY6 = TrafficSelector.from_network("::/0")


# --- plans from the lab's configs ---------------------------------------------------------

@pytest.fixture(scope="module")
def lab_configs(tmp_path_factory):
    plan = default_plan(tmp_path_factory.mktemp("lab"))
    return {name: load_config(path) for name, path in
            configs.write_node_configs(plan, "ike").items()}


def plans_of(config, peer_name: str):
    peer = next(p for p in config.ike.peers if p.name == peer_name)
    return child_plans(peer, policy_entries(config))


def test_mn_plans_mh_transport_then_one_tunnel_with_the_ha(lab_configs) -> None:
    mh, tunnel = plans_of(lab_configs["mn"], "ha")
    assert (mh.name, mh.mode) == ("ha", Mode.TRANSPORT)
    # SA-level addresses: the HoA, not the CoA IKE runs from (draft §7.1).
    assert mh.local_ts == (host(HOA, MH),) and mh.remote_ts == (host(HA, MH),)
    assert (tunnel.name, tunnel.mode) == ("ha-tunnel", Mode.TUNNEL)
    assert set(tunnel.remote_ts) == {host(CN, UDP, (7, 7)), ANY6}
    # The clear-text class keeps its priority over the protect-all MN-CN policy.
    priorities = {p.name: p.priority for p in tunnel.policies}
    assert priorities["echo-to-cn"] < min(p.priority for p in plans_of(lab_configs["mn"],
                                                                         "cn")[0].policies)


def test_mn_plans_one_transport_child_with_the_cn_and_with_mn2(lab_configs) -> None:
    for peer, remote in (("cn", CN), ("mn2", MN2)):
        (only,) = plans_of(lab_configs["mn"], peer)
        assert only.mode is Mode.TRANSPORT
        assert only.local_ts == (host(HOA),) and only.remote_ts == (host(remote),)


def test_ha_knows_the_mn_by_each_coa_and_plans_mh_transport_and_tunnel(lab_configs) -> None:
    peers = {p.name: str(p.address) for p in lab_configs["ha"].ike.peers}
    assert peers["mn-wifi0"] == WIFI_COA and peers["mn-lte0"] == LTE_COA
    mh, tunnel = plans_of(lab_configs["ha"], "mn-lte0")
    # The HA's IKE peer is the CoA, yet MH stays transport at the HoA (RFC 3776 §5.2.1).
    assert mh.mode is Mode.TRANSPORT and mh.remote_ts == (host(HOA, MH),)
    assert tunnel.mode is Mode.TUNNEL and tunnel.remote_ts == (host(HOA),)


def test_lab_ike_configs_share_one_private_psk_and_name_no_sa(lab_configs) -> None:
    files = {config.ike.psk_file for config in lab_configs.values()}
    assert len(files) == len(lab_configs)
    assert len({path.read_bytes() for path in files}) == 1
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in files)
    for config in lab_configs.values():
        assert str(config.keys.mode) == "ike" and not config.keys.sa
        assert all(not policy.sa for policy in config.policies)


def test_a_peer_without_policies_keeps_the_single_child_behaviour(lab_configs) -> None:
    config = lab_configs["mn"]
    entries = policy_entries(config)
    peer = SimpleNamespace(name="x", address=ipaddress.ip_address(CN), policies=())
    assert child_plans(peer, entries) == []


# --- CREATE_CHILD_SA with its own selectors and mode ------------------------------------------

def test_second_child_with_its_own_selectors_and_tunnel_mode() -> None:
    psk = b"k" * 32
    hoa, ha = "2001:db8::a", "2001:db8::b"    # ikepair's addresses stand for HoA and HA
    mh_local, mh_remote = (host(hoa, MH),), (host(ha, MH),)
    initiator = IkeSaConfig(psk=psk, local_ts=mh_local, remote_ts=mh_remote,
                            mode=Mode.TRANSPORT, child_name="mh")
    # The responder allows both plans, transport allowed (keying.sa_config(responder=True)).
    responder = IkeSaConfig(psk=psk, local_ts=(host(ha, MH), ANY6),
                            remote_ts=(host(hoa, MH), host(hoa)), mode=Mode.TRANSPORT)
    wire = make_pair(initiator, responder)
    wire.initiator.initiate(wire.now)
    wire.pump()
    assert wire.of("i", IkeSaEstablished)
    (mh,) = wire.of("i", ChildSaCreated)
    assert mh.mode is Mode.TRANSPORT and mh.local_ts == mh_local
    tunnel_local = (host(hoa, UDP), host(hoa))
    tunnel_remote = (host("2001:db8::c", UDP, (7, 7)), ANY6)
    wire.initiator.create_child(wire.now, "tunnel", tunnel_local, tunnel_remote, Mode.TUNNEL)
    wire.pump()
    created = wire.of("i", ChildSaCreated)
    assert len(created) == 2, created
    tunnel = created[1]
    assert tunnel.name == "tunnel" and tunnel.mode is Mode.TUNNEL
    # Narrowed within what this child proposed, not what the config proposed.
    assert all(any(ts_within(ts, p) for p in tunnel_local) for ts in tunnel.local_ts)
    assert all(any(ts_within(ts, p) for p in tunnel_remote) for ts in tunnel.remote_ts)
    assert ANY6 in tunnel.remote_ts
    responder_children = wire.of("r", ChildSaCreated)
    assert [c.mode for c in responder_children] == [Mode.TRANSPORT, Mode.TUNNEL]
    assert (responder_children[1].spi_in, responder_children[1].spi_out) == \
        (tunnel.spi_out, tunnel.spi_in)


# --- ts_within against brute force ---------------------------------------------------------

BASE = int(ipaddress.IPv6Address("2001:db8::"))
selectors = st.builds(
    lambda lo, span, proto, plo, pspan: TrafficSelector(
        ipaddress.IPv6Address(BASE + lo), ipaddress.IPv6Address(BASE + lo + span), proto,
        plo, plo + pspan),
    st.integers(0, 12), st.integers(0, 4), st.sampled_from([0, 6, 17]),
    st.integers(0, 6), st.integers(0, 3))


def _points(ts: TrafficSelector):
    protocols = range(256) if ts.protocol == 0 else (ts.protocol,)
    return {(address, protocol, port)
            for address in range(int(ts.start), int(ts.end) + 1)
            for protocol in protocols for port in range(ts.start_port, ts.end_port + 1)}


@given(selectors, selectors)
def test_ts_within_is_set_inclusion(inner, outer) -> None:
    assert ts_within(inner, outer) == (_points(inner) <= _points(outer))


# --- §8.1.2: where an IKE_SA_INIT may come from -------------------------------------------------

HA_ENDPOINT = ("192.0.2.2", 6275)
MN_ENDPOINT = ("192.0.2.34", 6275)


def manager(*, home_agent: str | None = None) -> SimpleNamespace:
    locators = LocatorTable()
    # As the lab's CN: the home prefix is reached through the HA.
    locators.add_static("2001:db8:100::/64", HA_ENDPOINT, peer="ha")
    stub = SimpleNamespace(services=SimpleNamespace(locators=locators), _rx=None,
                           _home_agent=ipaddress.IPv6Address(home_agent) if home_agent else None)
    stub._static_locator = lambda onwire: IkeManager._static_locator(stub, onwire)
    return stub


def refusal(stub, address: str, onwire: str, endpoint) -> str | None:
    # The datagram being processed: how it arrived.
    stub._rx = _Arrival(address, ipaddress.IPv6Address(onwire).packed, endpoint, "eth0")
    return IkeManager._arrival_refusal(stub, address)


def test_cn_accepts_the_hoa_through_the_ha_and_refuses_it_from_elsewhere() -> None:
    cn = manager()
    assert refusal(cn, HOA, HOA, HA_ENDPOINT) is None
    # The same HoA straight from the MN's access link: not proven (§8.1.2).
    assert "is reached at" in refusal(cn, HOA, HOA, MN_ENDPOINT)
    # Tunnelled by someone who is not our HA: the on-wire source is not the HoA.
    assert "is not the IKE address" in refusal(cn, HOA, WIFI_COA, MN_ENDPOINT)


def test_an_mn_accepts_a_correspondent_s_ike_through_its_own_ha_only() -> None:
    mn = manager(home_agent=HA)
    assert refusal(mn, MN2, HA, HA_ENDPOINT) is None
    assert refusal(mn, MN2, WIFI_COA, MN_ENDPOINT) is not None


def test_an_address_no_static_locator_names_is_judged_by_its_on_wire_source_only() -> None:
    cn = manager()
    assert refusal(cn, LTE_COA, LTE_COA, ("203.0.113.1", 40000)) is None


# --- the MN-HA IKE SA follows the CoA ------------------------------------------------------------

@pytest.mark.parametrize("mobike", [False, True])
def test_ike_sa_moved_to_a_new_address_is_followed_by_the_responder(mobike: bool) -> None:
    psk = b"k" * 32
    wire = make_pair(IkeSaConfig(psk=psk, mobike=mobike), IkeSaConfig(psk=psk))
    wire.initiator.initiate(wire.now)
    wire.pump()
    responder = wire.responder_sa
    old_remote = responder.remote_addr
    reserved: list[float] = []

    def allocator(now: float) -> int:
        reserved.append(now)
        return 0x7777
    new = ("2001:db8::c", 500)
    wire.initiator.change_local_address(new, allocator)
    # UPDATE_SA_ADDRESSES with MOBIKE (RFC 4555 §3.5), else a liveness check.
    wire.initiator.announce_local_address(wire.now)
    wire.pump()
    # Authenticated request from the new address: the responder follows (RFC 7296 §2.23).
    assert old_remote[0] != new[0] and responder.remote_addr == new
    # Later CHILD_SAs reserve their SPI through the new allocator.
    wire.initiator.create_child(wire.now, "again")
    wire.pump()
    assert reserved and any(c.spi_in == 0x7777 for c in wire.of("i", ChildSaCreated))


@pytest.mark.parametrize("wrong", ["no-such-policy", "mh-from-ha"])
def test_peer_policies_must_name_outbound_protect_policies(tmp_path_factory, wrong) -> None:
    from vmip.config.errors import ConfigError
    from vmip.config.loader import parse_config

    plan = default_plan(tmp_path_factory.mktemp("lab"))
    path = configs.write_node_configs(plan, "ike")["mn"]
    text = path.read_text().replace('policies = ["to-cn"]', f'policies = ["{wrong}"]')
    assert wrong in text
    with pytest.raises(ConfigError, match=r"ike\.peer\[1\]\.policies\[0\]"):
        parse_config(text, path)
