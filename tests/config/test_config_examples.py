"""The example configs in configs/: they load, pass `vmip check`, match the
lab addressing plan and agree with each other (every SA has its twin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from vmip.compat import tomllib
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from cfgtest_helpers import CONFIGS, EXAMPLES, REPO, copy_configs

from vmip.config import Action, Direction, Mode, Role, load_config, read_key_file
from vmip.ipsec.suites import SUITES

# The lab addressing plan (docs/lab.md, the task's table), typed in by hand.
PLAN = {
    "ha": {"roles": {"ha"}, "overlay": ["2001:db8:100::1"], "coa": {}, "bind": {"eth0": "192.0.2.2"}},
    "cn": {"roles": {"cn"}, "overlay": ["2001:db8:20::2"], "coa": {}, "bind": {"eth0": "192.0.2.18"}},
    "mn": {"roles": {"mn"}, "overlay": ["2001:db8:100::10"],
           "coa": {"wifi0": "2001:db8:31::2", "lte0": "2001:db8:32::2"},
           "bind": {"wifi0": "192.0.2.34", "lte0": "198.51.100.2"}},
    "mn2": {"roles": {"mn"}, "overlay": ["2001:db8:100::20"],
            "coa": {"wifi0": "2001:db8:41::2", "lte0": "2001:db8:42::2"},
            "bind": {"wifi0": "192.0.2.50", "lte0": "198.51.100.18"}},
}
HOME_PREFIX = ip_network("2001:db8:100::/64")
HA_ADDRESS = ip_address("2001:db8:100::1")
CN_ADDRESS = ip_address("2001:db8:20::2")
UNDERLAY_V4 = {"ha": "192.0.2.2", "cn": "192.0.2.18"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_loads_and_matches_the_plan(configs: Path, name: str) -> None:
    cfg = load_config(configs / f"{name}.toml")
    plan = PLAN[name]
    assert cfg.node.name == name
    assert {role.value for role in cfg.node.roles} == plan["roles"]
    assert [str(a.ip) for a in cfg.tun.addresses] == plan["overlay"]
    assert {link.name: str(link.coa) for link in cfg.links if link.coa} == plan["coa"]
    assert {link.name: str(link.bind) for link in cfg.links} == plan["bind"]
    assert all(link.driver == "udp" and link.port == 6275 for link in cfg.links)
    assert cfg.keys.mode == "static" and cfg.ike is None
    if cfg.has_role(Role.MN):
        assert cfg.mobility.home_prefix == HOME_PREFIX
        assert cfg.mobility.home_address == ip_address(plan["overlay"][0])
        assert cfg.mobility.home_agent == HA_ADDRESS
        # The CN, then the other MN (MN-MN route optimisation, draft §5.2.2).
        other = next(n for n in ("mn", "mn2") if n != name)
        assert cfg.mobility.correspondents == (CN_ADDRESS, ip_address(PLAN[other]["overlay"][0]))
        # wifi0 is preferred (lower priority value) over lte0.
        assert [str(c) for c in cfg.care_of_addresses] == [plan["coa"]["wifi0"], plan["coa"]["lte0"]]
    if cfg.has_role(Role.HA):
        assert cfg.mobility.home_prefix == HOME_PREFIX


@pytest.mark.parametrize("name", EXAMPLES)
def test_peers_point_at_the_plans_underlay(configs: Path, name: str) -> None:
    cfg = load_config(configs / f"{name}.toml")
    for peer in cfg.peers:
        assert peer.endpoint is not None and peer.endpoint.port == 6275
        for prefix in peer.prefixes:
            if HA_ADDRESS in prefix:
                assert str(peer.endpoint.address) == UNDERLAY_V4["ha"]
            if CN_ADDRESS in prefix:
                assert str(peer.endpoint.address) == UNDERLAY_V4["cn"]


def _all_sas(configs: Path) -> list[tuple[str, object]]:
    return [(name, sa) for name in EXAMPLES for sa in load_config(configs / f"{name}.toml").keys.sa]


def test_every_sa_has_a_twin_on_the_peer(configs: Path) -> None:
    """An outbound SA on one node is the inbound SA of another: same SPI,
    addresses, mode, suite and the same key bytes."""
    sas = _all_sas(configs)
    outbound = [(node, sa) for node, sa in sas if sa.direction is Direction.OUT]
    inbound = [(node, sa) for node, sa in sas if sa.direction is Direction.IN]
    assert len(outbound) == len(inbound) == 14  # mn 4 + mn2 4 + ha 4 + cn 2
    for node, out_sa in outbound:
        twins = [(peer, in_sa) for peer, in_sa in inbound
                 if (in_sa.spi, in_sa.src, in_sa.dst) == (out_sa.spi, out_sa.src, out_sa.dst)]
        assert len(twins) == 1, f"{node}:{out_sa.name} has {len(twins)} receivers"
        peer, in_sa = twins[0]
        assert peer != node
        assert (in_sa.mode, in_sa.suite) == (out_sa.mode, out_sa.suite)
        assert read_key_file(in_sa.key_file) == read_key_file(out_sa.key_file)
        if out_sa.auth_key_file:
            assert read_key_file(in_sa.auth_key_file) == read_key_file(out_sa.auth_key_file)
    # Keys are not reused between SAs (each direction has its own).
    files = {sa.key_file for _, sa in outbound}
    assert len(files) == len(outbound)


@pytest.mark.parametrize("name", ["mn", "mn2"])
def test_mn_has_the_sas_the_issue_asks_for(configs: Path, name: str) -> None:
    cfg = load_config(configs / f"{name}.toml")
    hoa = cfg.mobility.home_address
    wifi_coa = cfg.care_of_addresses[0]

    def pair(src, dst, mode):
        return {sa.direction for sa in cfg.keys.sa
                if sa.mode == mode and {sa.src, sa.dst} == {src, dst}}

    # BU/BA: ESP transport between HoA and HA; payload: ESP tunnel CoA <-> HA;
    # MN-CN: ESP transport HoA <-> CN.
    assert pair(hoa, HA_ADDRESS, Mode.TRANSPORT) == {Direction.IN, Direction.OUT}
    assert pair(wifi_coa, HA_ADDRESS, Mode.TUNNEL) == {Direction.IN, Direction.OUT}
    assert pair(hoa, CN_ADDRESS, Mode.TRANSPORT) == {Direction.IN, Direction.OUT}
    # The MH policies use the HoA<->HA transport SAs and select protocol 135.
    mh = [p for p in cfg.policies if p.protocol == 135]
    assert {p.direction for p in mh} == {Direction.IN, Direction.OUT}
    for policy in mh:
        (sa_name,) = policy.sa
        assert cfg.sa_by_name(sa_name).mode is Mode.TRANSPORT
    # Everything between HoA and CN is protected, whatever the protocol: by the
    # HoA<->CN transport SA, except the clear-text class (UDP echo, docs/iro.md),
    # which the HA tunnel SA carries instead.
    to_cn = [p for p in cfg.policies if p.dst == ip_network(f"{CN_ADDRESS}/128")]
    assert to_cn and all(p.action is Action.PROTECT for p in to_cn)
    for policy in to_cn:
        (sa_name,) = policy.sa
        expected = Mode.TRANSPORT if policy.protocol is None else Mode.TUNNEL
        assert cfg.sa_by_name(sa_name).mode is expected
    assert {(p.protocol, p.dst_ports) for p in to_cn if p.protocol is not None} == {(17, (7, 7))}


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_sa_is_used_by_a_policy_of_its_direction(configs: Path, name: str) -> None:
    cfg = load_config(configs / f"{name}.toml")
    used = {(sa_name, policy.direction) for policy in cfg.policies for sa_name in policy.sa}
    assert {(sa.name, sa.direction) for sa in cfg.keys.sa} == used


@pytest.mark.parametrize("name", EXAMPLES)
def test_key_files_have_the_suites_sizes(configs: Path, name: str) -> None:
    # Independent of the loader's own check: read each file and compare with
    # the suite table.
    for sa in load_config(configs / f"{name}.toml").keys.sa:
        suite = SUITES[sa.suite]
        assert len(read_key_file(sa.key_file)) == suite.enc_key_len
        if suite.auth_key_len:
            assert len(read_key_file(sa.auth_key_file)) == suite.auth_key_len
        else:
            assert sa.auth_key_file is None


@pytest.mark.parametrize("name", EXAMPLES)
def test_vmip_check_in_process(configs: Path, run_check, name: str) -> None:
    status, out, err = run_check("-c", str(configs / f"{name}.toml"))
    assert status == 0, err
    effective = tomllib.loads(out)
    assert effective["node"]["name"] == name
    assert effective["tun"]["mtu"] == 1400


@pytest.mark.parametrize("name", EXAMPLES)
def test_vmip_check_subprocess(configs: Path, name: str) -> None:
    path = str(configs / f"{name}.toml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def vmip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmip", "check", *args], env=env, check=False,
                              capture_output=True, text=True, timeout=60)

    toml_run = vmip("-c", path)
    assert toml_run.returncode == 0, toml_run.stderr
    json_run = vmip("-c", path, "--json")
    assert json_run.returncode == 0, json_run.stderr
    quiet = vmip("-c", path, "-q")
    assert (quiet.returncode, quiet.stdout) == (0, "")
    as_toml, as_json = tomllib.loads(toml_run.stdout), json.loads(json_run.stdout)
    assert as_json["node"]["name"] == as_toml["node"]["name"] == name
    assert [sa["spi"] for sa in as_json["keys"]["sa"]] == [sa["spi"] for sa in as_toml["keys"]["sa"]]


def test_fresh_clone_key_modes_are_refused_with_the_chmod_hint(tmp_path: Path, run_check) -> None:
    """git checks files out 0644: vmip check must refuse them and say how to fix it."""
    configs = copy_configs(tmp_path, key_mode=0o644)
    for name in EXAMPLES:
        status, out, err = run_check("-c", str(configs / f"{name}.toml"))
        assert status == 2 and out == ""
        assert "mode 0644" in err and "run chmod 600 " in err
        chmod_target = err.split("run chmod 600 ", 1)[1].strip()
        assert Path(chmod_target).parent == configs / "keys"


def test_readme_explains_the_example_keys_and_each_file() -> None:
    readme = (CONFIGS / "README.md").read_text()
    assert "chmod 600 configs/keys/*" in readme
    assert "example" in readme.lower()
    for name in EXAMPLES:
        assert f"{name}.toml" in readme
    for key in (CONFIGS / "keys").iterdir():
        assert not key.name.startswith("."), key  # no temporary files committed


def test_configs_dir_holds_exactly_the_four_examples() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.toml")) == sorted(f"{n}.toml" for n in EXAMPLES)
