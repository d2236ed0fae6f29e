"""The lab without root: the plan, the JSON document, configs, TOML, the CLI surface."""

from __future__ import annotations

import json
import math
import os
from vmip.compat import tomllib
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.cli.main import main
from vmip.lab import configs
from vmip.lab.errors import LabUsageError
from vmip.lab.topology import default_plan, describe
from vmip.tomlwriter import dump_toml

# The addressing plan of docs/lab.md, restated independently of vmip.lab.topology.
PLAN_ROWS = [
    # node, ifname, router ifname, node v4, router v4, node v6, router v6, NAT
    ("ha", "eth0", "ha0", "192.0.2.2/28", "192.0.2.1/28", "2001:db8:10::2/64",
     "2001:db8:10::1/64", False),
    ("cn", "eth0", "cn0", "192.0.2.18/28", "192.0.2.17/28", "2001:db8:20::2/64",
     "2001:db8:20::1/64", False),
    ("mn", "wifi0", "mn-wifi", "192.0.2.34/28", "192.0.2.33/28", "2001:db8:31::2/64",
     "2001:db8:31::1/64", False),
    ("mn", "lte0", "mn-lte", "198.51.100.2/28", "198.51.100.1/28", "2001:db8:32::2/64",
     "2001:db8:32::1/64", True),
    ("mn2", "wifi0", "mn2-wifi", "192.0.2.50/28", "192.0.2.49/28", "2001:db8:41::2/64",
     "2001:db8:41::1/64", False),
    ("mn2", "lte0", "mn2-lte", "198.51.100.18/28", "198.51.100.17/28", "2001:db8:42::2/64",
     "2001:db8:42::1/64", True),
]
DOCUMENTATION = [ip_network(p) for p in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                         "2001:db8::/32")]


def test_plan_is_the_issue_table() -> None:
    plan = default_plan()
    rows = [(node.name, link.name, link.router_ifname, str(link.node_ipv4), str(link.router_ipv4),
             str(link.node_ipv6), str(link.router_ipv6), link.behind_nat)
            for node, link in plan.all_links]
    assert rows == PLAN_ROWS
    assert plan.namespaces == ["vmip-net", "vmip-ha", "vmip-cn", "vmip-mn", "vmip-mn2"]


def test_wifi_is_preferred_and_each_mn_link_has_its_own_table() -> None:
    for name in ("mn", "mn2"):
        node = default_plan().node(name)
        wifi, lte = node.link("wifi0"), node.link("lte0")
        assert wifi.route_metric < lte.route_metric
        assert wifi.route_table and lte.route_table and wifi.route_table != lte.route_table
        assert wifi.route_table not in (253, 254, 255)  # default, main, local


def test_describe_has_the_contract_fields() -> None:
    document = json.loads(json.dumps(describe(default_plan(Path("/run/vmip-lab")))))
    assert set(document["nodes"]) == {"ha", "cn", "mn", "mn2"}
    for name, node in document["nodes"].items():
        assert {"netns", "role", "overlay_addresses", "links", "config"} <= set(node)
        assert node["config"] == f"/run/vmip-lab/{name}/{name}.toml"
        assert ("coa" in node) == (name in ("mn", "mn2"))
    assert document["nodes"]["mn"]["overlay_addresses"][0] == "2001:db8:100::10"
    assert document["nodes"]["mn2"]["overlay_addresses"][0] == "2001:db8:100::20"
    assert document["nodes"]["ha"]["overlay_addresses"] == ["2001:db8:100::1"]
    assert document["nodes"]["cn"]["overlay_addresses"] == ["2001:db8:20::2"]
    assert document["nodes"]["mn"]["coa"] == {"wifi0": "2001:db8:31::2", "lte0": "2001:db8:32::2"}
    assert document["nodes"]["mn2"]["coa"] == {"wifi0": "2001:db8:41::2",
                                               "lte0": "2001:db8:42::2"}
    assert document["router"]["nat_address"] == "203.0.113.1"
    assert document["router"]["routes"] == {"2001:db8:100::/64": "2001:db8:10::2"}


def every_address(value) -> list[str]:
    if isinstance(value, dict):
        return [a for item in value.values() for a in every_address(item)]
    if isinstance(value, list):
        return [a for item in value for a in every_address(item)]
    if isinstance(value, str):
        candidate = value.split("/")[0].rsplit(":", 1)[0] if "." in value else value.split("/")[0]
        try:
            return [str(ip_address(candidate.strip("[]")))]
        except ValueError:
            return []
    return []


def test_only_documentation_prefixes_appear_anywhere() -> None:
    plan = default_plan()
    found = every_address(describe(plan))
    for name in configs.CONFIG_BUILDERS:
        found += every_address(configs.CONFIG_BUILDERS[name](plan))
    assert len(found) > 40
    for address in found:
        if ip_address(address).is_unspecified:
            continue  # a wildcard bind, not an address on any network
        assert any(ip_address(address) in net for net in DOCUMENTATION), address


def test_unknown_node_and_interface_are_usage_errors() -> None:
    with pytest.raises(LabUsageError, match="mn2"):
        default_plan().node("mn3")
    with pytest.raises(LabUsageError, match="wifi0"):
        default_plan().node("mn").link("eth0")


# --- configs ---------------------------------------------------------------------------------

@pytest.fixture
def written(tmp_path: Path) -> dict[str, Path]:
    return configs.write_node_configs(default_plan(tmp_path))


def test_every_node_gets_a_private_toml_config(written: dict[str, Path], tmp_path: Path) -> None:
    assert set(written) == {"ha", "cn", "mn", "mn2"}
    for name, path in written.items():
        assert path == tmp_path / name / f"{name}.toml"
        assert path.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / name / "keys").stat().st_mode & 0o777 == 0o700
        document = tomllib.loads(path.read_text())
        assert {"node", "tun", "link", "peer", "mobility", "control", "logging"} <= set(document)
        assert document["node"]["name"] == name
        assert all(link["driver"] == "udp" and link["port"] == 6275 for link in document["link"])
        assert document["keys"]["mode"] == "static"


def test_mn_config_matches_the_plan(written: dict[str, Path]) -> None:
    mn = tomllib.loads(written["mn"].read_text())
    assert mn["tun"]["addresses"][0].startswith("2001:db8:100::10/")
    assert mn["mobility"]["home_address"] == "2001:db8:100::10"
    assert mn["mobility"]["home_agent"] == "2001:db8:100::1"
    assert {link["name"]: link["coa"] for link in mn["link"]} == {
        "wifi0": "2001:db8:31::2", "lte0": "2001:db8:32::2"}
    # Each link binds its own underlay address, so it leaves through that link.
    assert {link["name"]: link["bind"] for link in mn["link"]} == {
        "wifi0": "192.0.2.34", "lte0": "198.51.100.2"}
    lte = next(link for link in mn["link"] if link["name"] == "lte0")
    assert lte["keepalive"] > 0  # behind NAT
    ha_peer = next(peer for peer in mn["peer"] if peer["name"] == "ha")
    assert ha_peer["endpoint"] == "192.0.2.2:6275" and ha_peer["default"] is True
    assert "2001:db8:100::20" in mn["mobility"]["correspondents"]  # MN-MN


def test_configs_load_with_the_config_loader(written: dict[str, Path]) -> None:
    try:
        from vmip.config import load_config
    except ImportError:
        pytest.skip("vmip.config.load_config (the config loader) is not written yet")
    for name, path in written.items():
        config = load_config(path)
        assert config.node.name == name


def test_rewriting_a_config_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "x" / "secret.toml"
    path.parent.mkdir()
    path.write_text("old")
    os.chmod(path, 0o644)
    configs.write_private_file(path, "new")
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret.toml"]  # no temp file left


# --- TOML writer, checked against tomllib --------------------------------------------------

keys = st.text(min_size=1, max_size=12)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
tables = st.dictionaries(keys, values, max_size=5)
documents = st.dictionaries(keys, st.one_of(
    values, tables, st.lists(tables, min_size=1, max_size=3)), max_size=6)


@settings(max_examples=100, deadline=None)
@given(documents)
def test_toml_writer_round_trips_through_tomllib(document: dict) -> None:
    assert tomllib.loads(dump_toml(document, header="a header\nsecond line")) == document


def test_toml_writer_refuses_what_toml_cannot_hold() -> None:
    with pytest.raises(ValueError):
        dump_toml({"big": 2**64})
    with pytest.raises(TypeError):
        dump_toml({"when": object()})
    assert math.isinf(tomllib.loads(dump_toml({"x": float("-inf")}))["x"])


# --- CLI surface -----------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def restore_vmip_logging():
    """main() points vmip's log handler at the captured stderr; undo it after each test."""
    import logging

    logger = logging.getLogger("vmip")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.mark.parametrize("command", ["up", "down", "status", "exec", "link", "shape"])
def test_every_lab_command_has_help_with_an_example(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["lab", command, "--help"])
    assert exit_info.value.code == 0
    assert f"vmip lab {command}" in capsys.readouterr().out


@pytest.mark.parametrize("args, complaint", [
    (["--loss", "150"], "percentage"),
    (["--delay", "-1"], ">= 0"),
    (["--rate", "0"], "greater than 0"),
    (["--delay", "soon"], "not a number"),
    (["--direction", "sideways"], "invalid choice"),
])
def test_shape_validates_its_options(args: list[str], complaint: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["lab", "shape", "mn", "lte0", *args])
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("command", [["up"], ["down"], ["status"], ["link", "mn", "wifi0", "up"],
                                     ["exec", "mn", "--", "true"]])
def test_without_root_every_command_stops_with_a_hint(command: list[str], monkeypatch,
                                                      capsys) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["lab", *command]) == 2
    err = capsys.readouterr().err
    assert "needs root" in err and "Hint:" in err


def test_up_without_nft_names_the_debian_package(monkeypatch, capsys) -> None:
    import shutil

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "nft"
                        else real_which(name, *a, **k))
    assert main(["lab", "up"]) == 2
    assert "apt-get install nftables" in capsys.readouterr().err


def test_exec_without_a_command_is_a_usage_error(capsys) -> None:
    assert main(["lab", "exec", "mn"]) == 2
    assert "after '--'" in capsys.readouterr().err


def test_link_names_the_interfaces_of_the_node(capsys) -> None:
    assert main(["lab", "link", "cn", "wifi0", "down"]) == 2
    assert "eth0" in capsys.readouterr().err
