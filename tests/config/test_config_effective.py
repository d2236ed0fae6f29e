"""The effective config (`vmip check` output): complete, re-readable, no secrets."""

from __future__ import annotations

import base64
import json
from vmip.compat import tomllib
from ipaddress import ip_address
from pathlib import Path

import pytest
from cfgtest_helpers import EXAMPLES

from vmip.config import (
    Driver,
    Role,
    dump_effective,
    load_config,
    parse_config,
    read_key_file,
    to_dict,
)

MINIMAL_MN = """\
[node]
roles = ["mn"]

[tun]
addresses = ["2001:db8:100::10/64"]

[[link]]
name = "wifi0"
coa = "2001:db8:31::2"

[mobility]
home_address = "2001:db8:100::10"
home_agent = "2001:db8:100::1"
"""


def _without_none(value):
    """TOML has no null: the dump leaves unset keys out (as comments)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


@pytest.mark.parametrize("name", EXAMPLES)
def test_dump_reads_back_to_an_equal_config(configs: Path, name: str) -> None:
    cfg = load_config(configs / f"{name}.toml")
    again = parse_config(dump_effective(cfg), cfg.source)
    assert again == cfg


@pytest.mark.parametrize("name", EXAMPLES)
def test_json_and_toml_dumps_hold_the_same_data(configs: Path, name: str) -> None:
    cfg = load_config(configs / f"{name}.toml")
    from_toml = tomllib.loads(dump_effective(cfg))
    from_json = json.loads(json.dumps(to_dict(cfg)))
    assert _without_none(from_json) == from_toml


@pytest.mark.parametrize("name", EXAMPLES)
def test_no_key_material_in_any_output(configs: Path, name: str) -> None:
    cfg = load_config(configs / f"{name}.toml")
    outputs = dump_effective(cfg) + json.dumps(to_dict(cfg)) + repr(cfg)
    files = [sa.key_file for sa in cfg.keys.sa] + [sa.auth_key_file for sa in cfg.keys.sa]
    for path in filter(None, files):
        key = read_key_file(path)
        for encoding in (key.hex(), key.hex().upper(), base64.b64encode(key).decode()):
            assert encoding[:16] not in outputs
        raw = path.read_text().strip()
        assert raw[-16:] not in outputs


def test_node_user_is_in_the_effective_config(configs: Path) -> None:
    path = configs / "mn.toml"
    text = path.read_text().replace('[node]\n', '[node]\nuser = "root"\n', 1)
    cfg = parse_config(text, path)
    assert cfg.node.user == "root"
    assert to_dict(cfg)["node"]["user"] == "root"
    assert 'user = "root"' in dump_effective(cfg)
    assert parse_config(dump_effective(cfg), path) == cfg
    unset = load_config(path)
    assert "# user: not set: none (the node keeps the user that started it)" in \
        dump_effective(unset)


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    path = tmp_path / "laptop.toml"
    path.write_text(MINIMAL_MN)
    cfg = load_config(path)
    effective = tomllib.loads(dump_effective(cfg))
    # The defaults documented in docs/configuration.md.
    assert effective["node"] == {"name": "laptop", "roles": ["mn"]}
    assert effective["tun"] == {"name": "vmip0", "addresses": ["2001:db8:100::10/64"],
                                "mtu": 1400, "routes": []}
    assert effective["link"] == [{"name": "wifi0", "driver": "udp", "port": 6275,
                                  "coa": "2001:db8:31::2", "priority": 100, "keepalive": 20}]
    assert effective["peer"] == []
    assert effective["mobility"] == {
        "home_prefix": "2001:db8:100::/64",   # the /64 around the HoA (RFC 4291 §2.5.1)
        "home_address": "2001:db8:100::10", "home_agent": "2001:db8:100::1",
        "correspondents": [], "binding_lifetime": 420, "tunnel": "esp", "proof_cache_size": 1024,
        "max_home_bindings": 16384,
        "home_test_on_registration": False,
        "multiple_care_of": False, "max_care_of_addresses": 4, "link_probe_interval": 5.0,
    }
    assert effective["keys"] == {"mode": "static", "backend": "cryptography",
                                 "replay_window": 1024,
                                 "state_dir": "/var/lib/vmip/laptop",  # /var/lib/vmip/<name>
                                 "sa": []}
    assert effective["policy"] == []
    assert "ike" not in effective and "socket" not in effective["control"]
    assert effective["logging"] == {"level": "info", "format": "text"}
    # Unset values are explained, not silently dropped.
    dump = dump_effective(cfg)
    assert "# bind: not set: any local address" in dump
    assert "# socket: not set: /run/vmip/<network namespace>.sock" in dump
    assert "# file: not set: standard error" in dump


def test_sa_and_policy_defaults(configs: Path) -> None:
    text = (configs / "cn.toml").read_text()
    cfg = parse_config(text, configs / "cn.toml")
    sa = cfg.keys.sa[0]
    assert (sa.esn, sa.replay_window, sa.soft.is_unlimited(), sa.hard.is_unlimited()) == \
        (True, 1024, True, True)
    bypass = cfg.policies[-1]
    assert (bypass.protocol, bypass.src_ports, bypass.dst_ports, bypass.icmp_type,
            bypass.icmp_code, bypass.mh_type, bypass.sa) == (None, None, None, None, None, None, ())
    policy = tomllib.loads(dump_effective(cfg))["policy"][-1]
    assert {policy[k] for k in ("protocol", "src_ports", "dst_ports", "icmp_type", "icmp_code",
                                "mh_type")} == {"any"}


def test_paths_are_relative_to_the_config_not_the_cwd(configs: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(configs / "mn.toml")
    assert cfg.keys.sa[0].key_file == configs / "keys" / "mn-to-ha-mh.enc"
    assert all(sa.key_file.is_absolute() for sa in cfg.keys.sa)


def test_selectors_and_lifetimes_survive_the_round_trip(configs: Path) -> None:
    text = (configs / "cn.toml").read_text() + """
[[policy]]
name = "ssh"
direction = "in"
src = "2001:db8::/32"
dst = "2001:db8:20::2/128"
protocol = "tcp"
src_ports = "1024-65535"
dst_ports = 22
action = "discard"
priority = 5

[[policy]]
name = "ping"
direction = "in"
src = "::/0"
dst = "2001:db8:20::2/128"
protocol = "icmpv6"
icmp_type = 128
icmp_code = 0
action = "bypass"

[[policy]]
name = "brr"
direction = "out"
src = "::/0"
dst = "::/0"
protocol = 135
mh_type = 0
action = "bypass"

[[policy]]
name = "v4"
direction = "out"
src = "192.0.2.0/24"
dst = "0.0.0.0/0"
protocol = 50
action = "bypass"
"""
    text = text.replace('key_file = "keys/mn-to-cn.key"',
                        'key_file = "keys/mn-to-cn.key"\n'
                        'lifetime = { soft_bytes = 1000000, hard_bytes = 2000000, '
                        'soft_packets = 10, hard_seconds = 3600.5 }\nesn = false\nreplay_window = 0')
    text = text.replace("[mobility]\n", "[mobility]\nmax_care_of_addresses = 0\n", 1)
    cfg = parse_config(text, configs / "cn.toml")
    ssh, ping, brr, v4 = cfg.policies[-4:]
    assert (ssh.protocol, ssh.src_ports, ssh.dst_ports) == (6, (1024, 65535), (22, 22))
    assert (ping.protocol, ping.icmp_type, ping.icmp_code) == (58, 128, 0)
    assert (brr.protocol, brr.mh_type) == (135, 0)
    assert v4.src.version == 4 and v4.protocol == 50
    sa = cfg.keys.sa[0]
    assert (sa.soft.bytes, sa.hard.bytes, sa.soft.packets, sa.hard.packets) == (1000000, 2000000, 10, None)
    assert (sa.soft.seconds, sa.hard.seconds, sa.esn, sa.replay_window) == (None, 3600.5, False, 0)
    assert parse_config(dump_effective(cfg), cfg.source) == cfg
    dumped = tomllib.loads(dump_effective(cfg))["policy"]
    assert dumped[-4]["dst_ports"] == 22 and dumped[-4]["src_ports"] == "1024-65535"
    assert dumped[-3]["protocol"] == "icmpv6" and dumped[-2]["protocol"] == "mh"


def test_endpoints_default_ports_and_brackets(tmp_path: Path) -> None:
    text = MINIMAL_MN.replace('name = "wifi0"', 'name = "wifi0"\ndriver = "rfc3948"') + """
[[peer]]
name = "gw6"
prefixes = ["2001:db8:50::/48"]
endpoint = "[2001:db8:10::2]:4501"
framing = "rfc3948"

[[peer]]
name = "gw4"
prefixes = ["198.51.100.0/24"]
endpoint = "192.0.2.2"
framing = "rfc3948"

[[peer]]
name = "bare6"
prefixes = ["2001:db8:60::/48"]
endpoint = "2001:db8:10::3"
framing = "rfc3948"
"""
    path = tmp_path / "n.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.links[0].driver is Driver.RFC3948 and cfg.links[0].port == 4500
    gw6, gw4, bare6 = cfg.peers
    assert (gw6.endpoint.address, gw6.endpoint.port) == (ip_address("2001:db8:10::2"), 4501)
    assert (gw4.endpoint.address, gw4.endpoint.port) == (ip_address("192.0.2.2"), 4500)
    assert (bare6.endpoint.address, bare6.endpoint.port) == (ip_address("2001:db8:10::3"), 4500)
    assert str(gw6.endpoint) == "[2001:db8:10::2]:4501"
    assert parse_config(dump_effective(cfg), path) == cfg
    assert cfg.has_role(Role.MN) and not cfg.has_role("ha")


def test_state_dir_defaults_to_var_lib_and_resolves_relative_paths(tmp_path: Path) -> None:
    """keys.state_dir: /var/lib/vmip/<node name> by default; relative to the config's directory."""
    default = parse_config(MINIMAL_MN, tmp_path / "mn.toml", check_key_files=False)
    assert default.keys.state_dir == Path("/var/lib/vmip/mn")
    text = MINIMAL_MN + '\n[keys]\nstate_dir = "state/here"\n'
    relative = parse_config(text, tmp_path / "mn.toml", check_key_files=False)
    assert relative.keys.state_dir == tmp_path / "state" / "here"
    dumped = tomllib.loads(dump_effective(relative))
    assert dumped["keys"]["state_dir"] == str(tmp_path / "state" / "here")
