"""vmip.init.network: the description's parsers and address allocation."""

from __future__ import annotations

from vmip.compat import tomllib
from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.init.network import (
    DescriptionError,
    Endpoint,
    add_mobile_node,
    build_network,
    from_document,
    parse_endpoint,
    parse_mn_spec,
    parse_named_endpoint,
    random_ula,
    to_document,
)
from vmip.tomlwriter import dump_toml

NAMES = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)
PORTS = st.integers(1, 65535)


# -- endpoints ------------------------------------------------------------------------------

@given(st.ip_addresses(), PORTS)
def test_any_address_and_port_round_trips(address, port):
    if address.is_unspecified or address.is_multicast:
        return
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    endpoint = parse_endpoint(text, "--ha")
    assert endpoint == Endpoint(address, port)
    assert str(endpoint) == text


@given(st.text(max_size=40))
def test_endpoint_parser_fails_only_with_a_description_error(text):
    try:
        parse_endpoint(text, "--cn")
    except DescriptionError as exc:
        assert exc.exit_status == 2 and "--cn" in str(exc)


@given(st.text(max_size=40))
def test_mn_spec_parser_fails_only_with_a_description_error(text):
    try:
        spec = parse_mn_spec(text)
    except DescriptionError:
        return
    assert spec.name and "=" not in spec.name and ":" not in spec.name


@pytest.mark.parametrize("text, fix", [
    ("192.0.2.1", "write 192.0.2.1:6275"),
    ("2001:db8::1", "write [2001:db8::1]:6275"),
    ("[2001:db8::1]", "write [2001:db8::1]:6275"),
])
def test_an_endpoint_without_port_is_refused_with_the_port_to_add(text, fix):
    with pytest.raises(DescriptionError, match="has no port") as info:
        parse_endpoint(text, "--ha")
    assert fix in str(info.value)


def test_a_host_name_is_refused_since_configs_take_addresses_only():
    with pytest.raises(DescriptionError, match="host name") as info:
        parse_named_endpoint("ha=vpn.example.org:6275", "--ha")
    assert "getent ahosts vpn.example.org" in str(info.value)


@pytest.mark.parametrize("spec", ["ha", "=192.0.2.1:1", "h a=192.0.2.1:1", "ha=192.0.2.1:0",
                                  "ha=192.0.2.1:65536", "ha=[192.0.2.1]:1", "ha=0.0.0.0:1",
                                  "ha=2001:db8::1%eth0:1"])
def test_bad_named_endpoints(spec):
    with pytest.raises(DescriptionError):
        parse_named_endpoint(spec, "--ha")


def test_mn_spec_forms():
    assert parse_mn_spec("laptop").name == "laptop"
    spec = parse_mn_spec("laptop:wlan0,wwan0=fd00::10")
    assert spec.interfaces == ("wlan0", "wwan0")
    assert spec.home_address == IPv6Address("fd00::10")
    for bad in ("laptop:", "laptop:wlan0,wlan0", "laptop=192.0.2.1", "lap top", "x:a/b"):
        with pytest.raises(DescriptionError):
            parse_mn_spec(bad)


# -- allocation -------------------------------------------------------------------------------

def test_random_ula_is_rfc4193():
    prefixes = {random_ula() for _ in range(8)}
    assert len(prefixes) > 1
    for prefix in prefixes:
        assert prefix.prefixlen == 64 and prefix.subnet_of(IPv6Network("fd00::/8"))
        assert int(prefix.network_address) & ((1 << 80) - 1) == 0  # subnet 0


def test_allocation_follows_the_plan():
    net = build_network(ha="ha=192.0.2.1:6275", mns=["laptop", "phone:wlan0,wwan0"],
                        cns=["web=198.51.100.7:7000"])
    home = net.home_prefix
    assert net.ha.address == home.network_address + 1
    assert [mn.home_address for mn in net.mns] == [home.network_address + 0x10,
                                                   home.network_address + 0x20]
    site = int(net.site_prefix.network_address)
    assert net.site_prefix.prefixlen == 48 and home.subnet_of(net.site_prefix)
    assert [link.coa for link in net.mns[1].links] == [
        IPv6Address(site + (0x201 << 64) + 2), IPv6Address(site + (0x202 << 64) + 2)]
    assert net.mns[0].links[0].name == "net0" and net.mns[0].links[0].interface is None
    assert net.cns[0].address == IPv6Address(site + (0xFFFF << 64) + 1)
    assert net.cns[0].endpoint == Endpoint(IPv4Address("198.51.100.7"), 7000)


def test_a_given_home_prefix_gets_its_own_site_prefix_for_coas():
    net = build_network(ha="ha=192.0.2.1:6275", mns=["a"], home_prefix="2001:db8:100::/64")
    assert net.mns[0].home_address == IPv6Address("2001:db8:100::10")
    assert net.site_prefix.subnet_of(IPv6Network("fd00::/8"))
    assert net.mns[0].links[0].coa not in net.home_prefix


@pytest.mark.parametrize("kwargs, message", [
    ({"mns": ["a=2001:db8::5"], "home_prefix": "2001:db8:100::/64"}, "outside the home prefix"),
    ({"mns": ["a=2001:db8:100::1"], "home_prefix": "2001:db8:100::/64"}, "already the home"),
    ({"mns": ["a=2001:db8:100::"], "home_prefix": "2001:db8:100::/64"}, "anycast"),
    ({"mns": ["a", "a"]}, "two nodes are named 'a'"),
    ({"mns": ["ha"]}, "two nodes are named 'ha'"),
    ({"mns": []}, "at least one mobile node"),
    ({"mns": ["a"], "home_prefix": "2001:db8:100::"}, "write 2001:db8:100::/64"),
    ({"mns": ["a"], "home_prefix": "2001:db8:100::1/64"}, "not an IPv6 prefix"),
    ({"mns": ["a"], "keys": "psk"}, "not a key mode"),
])
def test_bad_descriptions_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(DescriptionError, match=message):
        build_network(ha="ha=192.0.2.1:6275", **kwargs)


def test_a_description_naming_an_unknown_node_is_refused():
    doc = {"ha": {"name": "ha", "endpoint": "192.0.2.1:6275"},
           "mn": [{"name": "laptop", "correspondents": ["web", "db"]}],
           "cn": [{"name": "web", "endpoint": "198.51.100.7:6275"}]}
    with pytest.raises(DescriptionError, match="'db', which is not a node") as info:
        from_document(doc)
    assert "--cn NAME=HOST:PORT" in str(info.value)
    doc["mn"][0]["correspondents"] = ["web"]
    assert from_document(doc).mns[0].correspondents == ("web",)


@pytest.mark.parametrize("doc, message", [
    ({}, r"no \[ha\] table"),
    ({"ha": {"name": "ha", "endpoint": "192.0.2.1:6275"}, "mn": [{"name": "a"}], "bogus": 1},
     "unknown key 'bogus'"),
    ({"ha": {"name": "ha", "endpoint": "192.0.2.1"}, "mn": [{"name": "a"}]}, "has no port"),
    ({"ha": {"name": "ha", "endpoint": "192.0.2.1:1"}, "mn": {"name": "a"}}, "array of tables"),
    ({"ha": {"name": "ha", "endpoint": "192.0.2.1:1"}, "home_prefix": "fd00::/64",
      "mn": [{"name": "a", "home_address": "fd01::10"}]}, "outside the home prefix"),
])
def test_bad_description_files(doc, message):
    with pytest.raises(DescriptionError, match=message):
        from_document(doc)


def test_correspondents_pair_mobile_nodes_both_ways():
    doc = {"ha": {"name": "ha", "endpoint": "192.0.2.1:6275"},
           "mn": [{"name": "a", "correspondents": ["b"]}, {"name": "b", "correspondents": []},
                  {"name": "c", "correspondents": []}],
           "cn": [{"name": "web", "endpoint": "198.51.100.7:6275"}]}
    net = from_document(doc)
    a, b, c = net.mns
    assert net.correspondents_of(a) == ([], [b])
    assert net.correspondents_of(b) == ([], [a])  # b is a's correspondent, so a is b's
    assert net.correspondents_of(c) == ([], [])
    assert net.mns_of(net.cns[0]) == []


# -- network.toml round trip, and --add-mn ----------------------------------------------------

specs = st.lists(NAMES, min_size=1, max_size=5, unique_by=str.lower)


@settings(max_examples=40, deadline=None)
@given(specs, st.lists(PORTS, min_size=0, max_size=3), st.sampled_from(["ike", "static"]))
def test_the_saved_description_reads_back_the_same(names, cn_ports, keys):
    cns = [f"cn{i}=198.51.100.{i + 1}:{port}" for i, port in enumerate(cn_ports)]
    names = [n for n in names if n != "hq" and not n.startswith("cn")] or ["m"]
    net = build_network(ha="hq=[2001:db8::1]:6275", mns=names, cns=cns, keys=keys)
    again = from_document(tomllib.loads(dump_toml(to_document(net))))
    assert again == net


@settings(max_examples=30, deadline=None)
@given(specs, NAMES)
def test_adding_a_mobile_node_moves_nothing_already_there(names, new):
    names = [n for n in names if n != "hq"] or ["m"]
    net = build_network(ha="hq=192.0.2.1:6275", mns=names)
    if new in net.names:
        with pytest.raises(DescriptionError, match="already"):
            add_mobile_node(net, new)
        return
    bigger = add_mobile_node(net, new)
    assert bigger.mns[:-1] == net.mns and bigger.ha == net.ha
    assert bigger.home_prefix == net.home_prefix and bigger.site_prefix == net.site_prefix
    added = bigger.mns[-1]
    assert added.name == new and added.home_address in net.home_prefix
    taken = {mn.home_address for mn in net.mns} | {net.ha.address}
    assert added.home_address not in taken


toml_scalars = st.one_of(st.text(max_size=30), st.integers(-5, 70000), st.booleans(),
                         st.sampled_from(["192.0.2.1:6275", "[2001:db8::1]:1", "fd00::/64",
                                          "fd00::10", "ike", "static", "laptop"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["name", "endpoint", "address", "home_address", "coa",
                                     "interface", "link", "correspondents", "x"]),
                    inner, max_size=4)), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["keys", "domain", "home_prefix", "site_prefix", "ha",
                                        "mn", "cn", "bogus"]), toml_values, max_size=6))
def test_any_description_file_gives_a_network_or_one_description_error(doc):
    try:
        net = from_document(doc)
    except DescriptionError as exc:
        assert exc.exit_status == 2 and str(exc)
        return
    assert net.mns and net.ha.address == net.home_prefix.network_address + 1
