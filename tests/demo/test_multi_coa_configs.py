"""The multi-CoA variant of the lab's generated configs (``vmip demo --multi-coa``).

Oracle: the shared multi-CoA contract (docs/multi-coa.md: ``[[flow]]`` keys,
first match wins, ports read from the inner packet) restated here as a small
matcher, and the demo's traffic classes (docs/demo.md, "Multi-CoA").
"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from vmip.compat import tomllib
from vmip.lab import configs
from vmip.lab.topology import default_plan

HOA, HOA2, CN = "2001:db8:100::10", "2001:db8:100::20", "2001:db8:20::2"


def _load(tmp_path: Path, multi_coa: bool) -> dict[str, dict]:
    plan = default_plan(tmp_path, multi_coa=multi_coa)
    paths = configs.write_node_configs(plan)
    return {name: tomllib.loads(path.read_text()) for name, path in paths.items()}


def _ports(spec: str) -> range:
    low, _, high = spec.partition("-")
    return range(int(low), int(high or low) + 1)


def classify(flows: list[dict], protocol: str, remote: str, local_port: int | None,
             remote_port: int | None) -> str:
    """The contract's first-match rule; a packet matching no flow is "best"."""
    for flow in flows:
        if flow.get("protocol", "any") not in ("any", protocol):
            continue
        if "remote" in flow and IPv6Address(remote) not in IPv6Network(flow["remote"]):
            continue
        if "local_ports" in flow and local_port not in _ports(flow["local_ports"]):
            continue
        if "remote_ports" in flow and remote_port not in _ports(flow["remote_ports"]):
            continue
        return flow.get("send", "best")
    return "best"


def test_the_default_lab_has_no_multi_coa_key(tmp_path: Path) -> None:
    # Single-CoA labs stay exactly as before: no BIDs, no flows, no binding limit.
    for name, config in _load(tmp_path, False).items():
        assert "flow" not in config, name
        mobility = config.get("mobility", {})
        assert "multiple_care_of" not in mobility and "max_care_of_addresses" not in mobility


def test_only_mn_registers_one_binding_per_link(tmp_path: Path) -> None:
    loaded = _load(tmp_path, True)
    assert loaded["mn"]["mobility"]["multiple_care_of"] is True
    # BID = 1-based position of the [[link]]: wifi0 1, lte0 2 (the contract's numbering).
    assert [link["name"] for link in loaded["mn"]["link"]] == ["wifi0", "lte0"]
    # mn2 stays single-CoA: the HA and the CN serve both kinds of MN at once.
    assert "multiple_care_of" not in loaded["mn2"]["mobility"] and "flow" not in loaded["mn2"]
    for name in ("ha", "cn"):
        assert loaded[name]["mobility"]["max_care_of_addresses"] == 2
    assert "flow" not in loaded["ha"]


@pytest.mark.parametrize(("protocol", "mn_port", "cn_port", "mode"), [
    ("udp", 5002, 5002, "duplicate"),     # the interactive probes
    ("icmpv6", None, None, "duplicate"),  # ping (echo request and reply)
    ("udp", 5003, 5003, "best"),          # the best-link probes
    ("tcp", 40000, 5001, "best"),         # the bulk stream: the MN's ephemeral port to 5001
])
def test_each_side_sends_each_demo_class_in_its_mode(tmp_path: Path, protocol: str,
                                                      mn_port: int | None, cn_port: int | None,
                                                      mode: str) -> None:
    loaded = _load(tmp_path, True)
    assert classify(loaded["mn"]["flow"], protocol, CN, mn_port, cn_port) == mode
    assert classify(loaded["cn"]["flow"], protocol, HOA, cn_port, mn_port) == mode


def test_other_traffic_is_best_and_mn2_is_not_duplicated(tmp_path: Path) -> None:
    loaded = _load(tmp_path, True)
    # The CN's flows name mn's home address: mn2's probes to the same port are "best".
    assert classify(loaded["cn"]["flow"], "udp", HOA2, 5002, 5002) == "best"
    assert classify(loaded["mn"]["flow"], "udp", CN, 5002, 7) == "best"
    names = [flow["name"] for flow in loaded["mn"]["flow"]]
    assert len(names) == len(set(names))


def _packet(protocol: str, src: str, dst: str, sport: int | None, dport: int | None,
            reply: bool = False) -> bytes:
    from scapy.layers.inet import TCP, UDP
    from scapy.layers.inet6 import IPv6, ICMPv6EchoReply, ICMPv6EchoRequest

    layer = {"udp": lambda: UDP(sport=sport, dport=dport),
             "tcp": lambda: TCP(sport=sport, dport=dport),
             "icmpv6": lambda: ICMPv6EchoReply() if reply else ICMPv6EchoRequest()}[protocol]()
    return bytes(IPv6(src=src, dst=dst) / layer / b"probe")


@pytest.mark.parametrize(("protocol", "mn_port", "cn_port", "mode"), [
    ("udp", 5002, 5002, "duplicate"), ("icmpv6", None, None, "duplicate"),
    ("udp", 5003, 5003, "best"), ("tcp", 40000, 5001, "best")])
def test_the_nodes_own_flow_policy_sends_each_class_in_its_mode(
        tmp_path: Path, protocol: str, mn_port: int | None, cn_port: int | None,
        mode: str) -> None:
    # The configs load as the nodes load them, and the nodes' classifier reads
    # the demo's real packets (ports from the inner packet) as intended.
    from vmip.config import load_config
    from vmip.node.flows import FlowPolicy

    paths = configs.write_node_configs(default_plan(tmp_path, multi_coa=True))
    loaded = {name: load_config(path) for name, path in paths.items()}
    assert loaded["mn"].mobility.multiple_care_of is True
    assert loaded["ha"].mobility.max_care_of_addresses == 2
    mn, cn = (FlowPolicy.from_config(loaded[name].flows) for name in ("mn", "cn"))
    assert mn.classify(_packet(protocol, HOA, CN, mn_port, cn_port)).send == mode
    assert cn.classify(_packet(protocol, CN, HOA, cn_port, mn_port, reply=True)).send == mode
