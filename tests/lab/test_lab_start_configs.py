"""The lab's generated static-key configs, without root.

Oracles: the hand-written example configs (configs/*.toml, whose own tests
prove every SA has its twin), the config loader, tomllib, and the SPI plan
of configs/README.md restated here.
"""

from __future__ import annotations

from vmip.compat import tomllib
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from lab_support import vmip_cli

from vmip.config import load_config
from vmip.config.keyfile import parse_key_text, read_key_file
from vmip.config.model import TunnelKind
from vmip.lab import configs
from vmip.lab.errors import LabUsageError
from vmip.lab.topology import default_plan

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "configs"
NODES = ("ha", "cn", "mn", "mn2")

# configs/README.md, "SPI plan": SPI -> (sender, receiver, mode, suite).
SPI_PLAN = {
    0x1101: ("mn", "ha", "transport", "aes128cbc-sha256"),
    0x1102: ("ha", "mn", "transport", "aes128cbc-sha256"),
    0x1201: ("mn", "ha", "tunnel", "aes128gcm16"),
    0x1202: ("ha", "mn", "tunnel", "aes128gcm16"),
    0x1301: ("mn", "cn", "transport", "aes128gcm16"),
    0x1302: ("cn", "mn", "transport", "aes128gcm16"),
    0x2101: ("mn2", "ha", "transport", "aes128cbc-sha256"),
    0x2102: ("ha", "mn2", "transport", "aes128cbc-sha256"),
    0x2201: ("mn2", "ha", "tunnel", "aes128gcm16"),
    0x2202: ("ha", "mn2", "tunnel", "aes128gcm16"),
    0x2301: ("mn2", "cn", "transport", "aes128gcm16"),
    0x2302: ("cn", "mn2", "transport", "aes128gcm16"),
    0x1401: ("mn", "mn2", "transport", "aes128gcm16"),
    0x1402: ("mn2", "mn", "transport", "aes128gcm16"),
}
# The addressing plan (docs/lab.md), restated.
HOA = {"mn": "2001:db8:100::10", "mn2": "2001:db8:100::20"}
WIFI_COA = {"mn": "2001:db8:31::2", "mn2": "2001:db8:41::2"}
HA, CN = "2001:db8:100::1", "2001:db8:20::2"


@pytest.fixture
def plan(tmp_path: Path):
    return default_plan(tmp_path)


@pytest.fixture
def written(plan) -> dict[str, Path]:
    return configs.write_node_configs(plan)


def loaded(written: dict[str, Path]):
    return {name: load_config(path) for name, path in written.items()}


def test_configs_load_with_esp_tunnel_and_their_key_files(written) -> None:
    nodes = loaded(written)  # load_config opens every key file and checks its size
    for name in ("ha", "mn", "mn2"):
        assert nodes[name].mobility.tunnel is TunnelKind.ESP
    assert {name: len(node.keys.sa) for name, node in nodes.items()} == {
        "ha": 8, "cn": 4, "mn": 8, "mn2": 8}
    for name, node in nodes.items():
        assert node.control.socket == Path(f"/run/vmip/vmip-{name}.sock")
        assert all(sa.esn is False for sa in node.keys.sa)  # tshark 4.0 checks the ICVs


def test_sas_follow_the_spi_plan_with_a_twin_at_each_end(written) -> None:
    nodes = loaded(written)
    ends: dict[int, dict[str, object]] = {}
    for name, node in nodes.items():
        for sa in node.keys.sa:
            ends.setdefault(sa.spi, {})[name] = sa
    assert set(ends) == set(SPI_PLAN)
    for spi, (sender, receiver, mode, suite) in SPI_PLAN.items():
        assert set(ends[spi]) == {sender, receiver}, hex(spi)
        out, inbound = ends[spi][sender], ends[spi][receiver]
        assert (out.direction.value, inbound.direction.value) == ("out", "in")
        assert (out.src, out.dst) == (inbound.src, inbound.dst)
        assert out.mode.value == inbound.mode.value == mode
        assert out.suite == inbound.suite == suite
        # Both ends hold the same key bytes, in files of their own node's directory.
        for attribute in ("key_file", "auth_key_file"):
            a, b = getattr(out, attribute), getattr(inbound, attribute)
            assert (a is None) == (b is None)
            if a is not None:
                assert a.parent == written[sender].parent / "keys"
                assert b.parent == written[receiver].parent / "keys"
                assert read_key_file(a) == read_key_file(b)


def test_sa_addresses_home_addresses_and_the_tunnel_coa(written) -> None:
    for spi, sa in ((sa.spi, sa) for sa in load_config(written["ha"]).keys.sa):
        mobile = SPI_PLAN[spi][0] if SPI_PLAN[spi][0] != "ha" else SPI_PLAN[spi][1]
        inner = HOA[mobile] if sa.mode.value == "transport" else WIFI_COA[mobile]
        assert {str(sa.src), str(sa.dst)} == {inner, HA}
    for sa in load_config(written["cn"]).keys.sa:
        assert {str(sa.src), str(sa.dst)} in ({HOA["mn"], CN}, {HOA["mn2"], CN})


def _structure(config) -> tuple:
    sas = sorted((sa.name, sa.spi, sa.direction.value, str(sa.src), str(sa.dst), sa.mode.value,
                  sa.suite, sa.key_file.name if sa.key_file else None,
                  sa.auth_key_file.name if sa.auth_key_file else None, sa.soft, sa.hard)
                 for sa in config.keys.sa)
    policies = [(p.name, p.direction.value, str(p.src), str(p.dst), p.protocol, p.action.value,
                 p.sa, p.priority) for p in config.policies]
    return sas, policies, config.mobility.tunnel, config.keys.mode, config.keys.replay_window


@pytest.mark.parametrize("name", NODES)
def test_same_sas_and_policies_as_the_example_configs(written, name: str) -> None:
    example = load_config(EXAMPLES / f"{name}.toml", check_key_files=False)
    assert _structure(load_config(written[name])) == _structure(example)


def test_keys_are_fresh_private_and_random(plan, written) -> None:
    def key_bytes() -> dict[Path, bytes]:
        return {path: read_key_file(path) for path in sorted(plan.lab_dir.glob("*/keys/*"))}

    first = key_bytes()
    # 14 SAs, 2 key files for each CBC one, a copy at each end.
    assert len(first) == 2 * (10 + 4 * 2)
    for path in first:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
    # Never the published example keys (their mode may be 0644 after a clone: parse the text).
    example_keys = {parse_key_text(p.read_text(), str(p)) for p in (EXAMPLES / "keys").iterdir()}
    assert len(example_keys) == 18
    assert not set(first.values()) & example_keys
    # Pairs share a key, different pairs do not.
    assert len(set(first.values())) == len(first) // 2

    configs.write_node_configs(plan, fresh_keys=False)
    assert key_bytes() == first  # kept: a running node holds them
    configs.write_node_configs(plan)
    second = key_bytes()
    assert set(second) == set(first)
    assert all(second[path] != first[path] for path in first)


def test_a_broken_pair_is_renewed_at_both_ends(plan, written) -> None:
    mn_end = plan.lab_dir / "mn" / "keys" / "mn-to-cn.key"
    cn_end = plan.lab_dir / "cn" / "keys" / "mn-to-cn.key"
    untouched = plan.lab_dir / "mn" / "keys" / "cn-to-mn.key"
    before = read_key_file(untouched)
    mn_end.unlink()
    configs.write_node_configs(plan, fresh_keys=False)
    assert read_key_file(mn_end) == read_key_file(cn_end)
    assert read_key_file(untouched) == before


def test_ike_configs_load_with_a_private_psk_and_no_static_keys(plan) -> None:
    written = configs.write_node_configs(plan, "ike")
    for name, path in written.items():
        cfg = load_config(path)
        assert cfg.keys.mode.value == "ike" and not cfg.keys.sa, name
        assert cfg.ike is not None and cfg.ike.peers, name
        assert cfg.ike.psk_file.stat().st_mode & 0o077 == 0, name
    with pytest.raises(LabUsageError) as e:
        configs.check_key_mode("psk")
    assert e.value.exit_status == 2


@pytest.mark.parametrize("command", ["start", "up"])
def test_cli_refuses_an_unknown_key_mode_with_exit_2(command: str) -> None:
    result = vmip_cli("lab", command, "--keys", "psk")
    assert result.returncode == 2, result.stderr
    assert "invalid choice" in result.stderr and "ike" in result.stderr


def test_generated_sa_addresses_are_documentation_prefixes(written) -> None:
    documentation = ip_network("2001:db8::/32")
    for path in written.values():
        document = tomllib.loads(path.read_text())
        for sa in document["keys"]["sa"]:
            assert ip_address(sa["src"]) in documentation
            assert ip_address(sa["dst"]) in documentation


def test_the_cli_help_documents_start_and_stop() -> None:
    result = vmip_cli("lab", "--help")
    assert result.returncode == 0
    for words in ("vmip lab start", "vmip lab stop"):
        assert words in result.stdout


def test_raw_configs_are_native_ipv6_with_nothing_duplicated_onto_a_tun(tmp_path: Path) -> None:
    """--driver raw: the same SAs and policies; raw links bound to their
    interfaces (own addresses read there), peers without endpoints, and no
    underlay address on any TUN."""
    plan = default_plan(tmp_path, driver="raw")
    nodes = loaded(configs.write_node_configs(plan))
    udp = loaded(configs.write_node_configs(default_plan(tmp_path / "udp")))
    underlay = {str(link.node_ipv6.ip) for _, link in plan.all_links}
    for name, node in nodes.items():
        assert _structure(node) == _structure(udp[name]), name
        for link in node.links:
            assert str(link.driver) == "raw" and link.interface == link.name, (name, link)
            assert link.port is None and link.keepalive == 0 and link.own_addresses is None
        assert all(str(peer.framing) == "raw" and peer.endpoint is None
                   for peer in node.peers), name
        assert not {str(a.ip) for a in node.tun.addresses} & underlay, name
    assert nodes["cn"].tun.addresses == () and [str(r) for r in nodes["cn"].tun.routes] == [
        "2001:db8:100::/64"]
    # No NAT on the native path: each MN knows both CoAs of the other.
    assert {str(p) for p in nodes["mn"].peers[-1].prefixes} == {"2001:db8:41::2/128",
                                                                "2001:db8:42::2/128"}


def test_raw_lab_refuses_ike_keys_with_exit_2(tmp_path: Path) -> None:
    with pytest.raises(LabUsageError) as e:
        configs.write_node_configs(default_plan(tmp_path, driver="raw"), "ike")
    assert e.value.exit_status == 2 and "--driver udp" in str(e.value)
    result = vmip_cli("lab", "up", "--driver", "tcp")
    assert result.returncode == 2 and "invalid choice" in result.stderr
