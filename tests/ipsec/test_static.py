"""Static keying from config objects, and the reload diff."""

from __future__ import annotations

import base64
import os
import shutil
from dataclasses import replace
from ipaddress import IPv6Address, ip_network
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import MIP6MH_BU, IPv6

from vmip.config import ConfigError, PolicyConfig, SaConfig, load_config
from vmip.config.model import Action as ConfigAction
from vmip.ipsec.engine import IpsecEngine
from vmip.ipsec.sa import Direction, Lifetime, Mode
from vmip.ipsec.sad import SAD
from vmip.ipsec.spd import SPD, Action
from vmip.ipsec.static import (
    apply_reload,
    build_static,
    from_config,
    install,
    policy,
    reload_diff,
    sa_params,
)
from vmip.wire.flow import FlowKey

REPO = Path(__file__).resolve().parents[2]
HOA = IPv6Address("2001:db8:100::10")
CN = IPv6Address("2001:db8:20::2")
HA = IPv6Address("2001:db8:100::1")


def key_file(directory: Path, name: str, data: bytes, *, mode: int = 0o600,
             b64: bool = False) -> Path:
    path = directory / name
    text = "base64:" + base64.b64encode(data).decode() if b64 else data.hex()
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def sa_config(tmp_path: Path, name="mn-cn-out", spi=0x1301, direction=Direction.OUT,
              src=HOA, dst=CN, suite="aes128gcm16", key=bytes(range(20)), auth=None,
              **kw) -> SaConfig:
    fields = {"name": name, "spi": spi, "direction": direction, "src": src, "dst": dst,
                  "mode": Mode.TRANSPORT, "suite": suite,
                  "key_file": key_file(tmp_path, f"{name}.key", key),
                  "auth_key_file": key_file(tmp_path, f"{name}.auth", auth) if auth else None,
                  "esn": True, "replay_window": 1024, "soft": Lifetime(), "hard": Lifetime()}
    fields.update(kw)
    return SaConfig(**fields)


def policy_config(name="to-cn", direction=Direction.OUT, src=f"{HOA}/128", dst=f"{CN}/128",
                  protocol=None, src_ports=None, dst_ports=None, icmp_type=None,
                  icmp_code=None, mh_type=None, action=ConfigAction.PROTECT,
                  sa=("mn-cn-out",), priority=100) -> PolicyConfig:
    return PolicyConfig(name=name, direction=direction, src=ip_network(src), dst=ip_network(dst),
                        protocol=protocol, src_ports=src_ports, dst_ports=dst_ports,
                        icmp_type=icmp_type, icmp_code=icmp_code, mh_type=mh_type,
                        action=action, sa=tuple(sa), priority=priority)


# -- SAs ----------------------------------------------------------------------

def test_sa_from_config_reads_the_key_files(tmp_path):
    key = bytes(range(100, 120))
    cfg = sa_config(tmp_path, key=key, soft=Lifetime(seconds=50), hard=Lifetime(seconds=60))
    params = sa_params(cfg, backend="pycryptodome")
    assert params.enc_key == key and params.auth_key == b""
    assert (params.spi, params.direction, params.src, params.dst) == (0x1301, Direction.OUT,
                                                                     HOA, CN)
    assert (params.name, params.origin, params.backend) == ("mn-cn-out", "static", "pycryptodome")
    assert params.soft.seconds == 50 and params.hard.seconds == 60 and params.esn


def test_cbc_suite_reads_both_keys_also_base64(tmp_path):
    enc, auth = bytes(range(16)), bytes(range(32, 64))
    cfg = sa_config(tmp_path, suite="aes128cbc-sha256", key=enc, auth=auth)
    key_file(tmp_path, "b64.key", enc, b64=True)
    cfg = replace(cfg, key_file=tmp_path / "b64.key")
    params = sa_params(cfg)
    assert (params.enc_key, params.auth_key) == (enc, auth)


def test_world_readable_key_file_is_refused(tmp_path):
    cfg = sa_config(tmp_path)
    os.chmod(cfg.key_file, 0o644)
    with pytest.raises(ConfigError) as caught:
        sa_params(cfg)
    assert "chmod 600" in str(caught.value) and str(cfg.key_file) in str(caught.value)


@pytest.mark.parametrize("suite,key,auth,where", [
    ("aes128gcm16", bytes(16), None, "key_file"),                 # salt missing
    ("aes128cbc-sha256", bytes(16), None, "auth_key_file"),       # HMAC key missing
    ("aes128cbc-sha256", bytes(16), bytes(31), "auth_key_file"),  # HMAC key short
    ("aes128gcm16", bytes(20), bytes(32), "auth_key_file"),       # AEAD takes no HMAC key
    ("rot13", bytes(20), None, "suite"),
])
def test_key_problems_name_the_sa_and_never_the_key(tmp_path, suite, key, auth, where):
    secret = bytes([0xA5] * len(key))
    cfg = sa_config(tmp_path, suite=suite, key=secret, auth=auth)
    with pytest.raises(ConfigError) as caught:
        sa_params(cfg, source="mn.toml")
    message = str(caught.value)
    assert message.startswith("mn.toml: keys.sa[mn-cn-out]") and where in message
    assert secret.hex() not in message and "a5a5" not in message


# -- policies -----------------------------------------------------------------

def test_policy_direction_decides_local_and_remote():
    out = policy(policy_config(protocol=17, src_ports=(5000, 5999), dst_ports=(53, 53)))
    inbound = policy(policy_config(name="from-cn", direction=Direction.IN, src=f"{CN}/128",
                                   dst=f"{HOA}/128", protocol=17, src_ports=(53, 53),
                                   dst_ports=(5000, 5999), sa=("mn-cn-in",)))
    assert out.action is Action.PROTECT and out.sa_bundle == ("mn-cn-out",)
    assert out.selector.local == ip_network(f"{HOA}/128")
    assert inbound.selector.local == ip_network(f"{HOA}/128")
    assert inbound.selector.remote_ports == (53, 53)
    sent = FlowKey(HOA.packed, CN.packed, 17, 5123, 53)
    answer = FlowKey(CN.packed, HOA.packed, 17, 53, 5123)
    assert out.matches(sent) and not out.matches(answer)
    assert inbound.matches(answer) and not inbound.matches(sent)


def test_icmp_and_mh_policy_fields():
    bu = policy(policy_config(name="bu", dst=f"{HA}/128", protocol=135, mh_type=5))
    assert bu.matches(FlowKey(HOA.packed, HA.packed, 135, 5, 0))
    assert not bu.matches(FlowKey(HOA.packed, HA.packed, 135, 6, 0))
    echo = policy(policy_config(name="echo", protocol=58, icmp_type=128, icmp_code=0,
                                action=ConfigAction.BYPASS, sa=()))
    assert echo.action is Action.BYPASS
    assert echo.matches(FlowKey(HOA.packed, CN.packed, 58, 128, 0))


def test_unworkable_policy_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        policy(policy_config(dst_ports=(22, 22)), source="mn.toml")   # ports, protocol any
    assert str(caught.value).startswith("mn.toml: policy[to-cn]")


def test_duplicate_names_are_refused(tmp_path):
    cfg = sa_config(tmp_path)
    with pytest.raises(ConfigError):
        build_static([cfg, cfg], [])
    with pytest.raises(ConfigError):
        build_static([], [policy_config(), policy_config()])


# -- the example configs, end to end ---------------------------------------

@pytest.fixture
def example_configs(tmp_path):
    if not (REPO / "configs" / "mn.toml").exists():
        pytest.skip("configs/mn.toml (the config helper's example configs) is not there yet")
    target = tmp_path / "configs"
    shutil.copytree(REPO / "configs", target)
    for path in (target / "keys").iterdir():
        os.chmod(path, 0o600)   # git does not keep modes
    return target


def node_from(path: Path) -> tuple[IpsecEngine, SAD, SPD]:
    sad, spd = SAD(), SPD()
    install(from_config(load_config(path)), sad, spd, now=0.0)
    return IpsecEngine(spd, sad, 0.0), sad, spd


def test_example_configs_install_and_talk(example_configs):
    mn, mn_sad, mn_spd = node_from(example_configs / "mn.toml")
    cn, _, _ = node_from(example_configs / "cn.toml")
    ha, _, _ = node_from(example_configs / "ha.toml")
    cfg = load_config(example_configs / "mn.toml")
    assert len(mn_sad) == len(cfg.keys.sa) and len(mn_spd) == len(cfg.policies)
    # MN -> CN: transport ESP, accepted by the CN's engine.
    # (UDP port 7 is the configs' clear-text class, which goes via the HA: use another.)
    packet = bytes(IPv6(src=str(HOA), dst=str(CN)) / UDP(sport=4000, dport=5000) / b"hi")
    sent = mn.outbound(packet, 1.0)
    assert sent.drop is None and IPv6(sent.packet).nh == 50
    assert cn.inbound(sent.packet, 1.0).packet == packet
    # MN -> HA: a Binding Update under the MH SA.
    bu = bytes(IPv6(src=str(HOA), dst=str(HA)) / MIP6MH_BU(seq=7))
    sent = mn.outbound(bu, 2.0)
    assert sent.policy.name == "mh-to-ha"
    got = ha.inbound(sent.packet, 2.0)
    assert got.drop is None and got.packet == bu


def test_example_config_with_open_key_is_refused(example_configs):
    os.chmod(example_configs / "keys" / "mn-to-cn.key", 0o644)
    with pytest.raises(ConfigError) as caught:
        from_config(load_config(example_configs / "mn.toml", check_key_files=False))
    assert "chmod 600" in str(caught.value)


# -- reload -----------------------------------------------------------------

def test_reload_keeps_unchanged_sas_untouched(tmp_path):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir(), second_dir.mkdir()
    old_sas = [sa_config(first_dir, "keep", 0x1001),
               sa_config(first_dir, "rekey", 0x1002, key=bytes(20)),
               sa_config(first_dir, "gone", 0x1003)]
    old_policies = [policy_config("p-keep", sa=("keep",), priority=10),
                    policy_config("p-gone", sa=("gone",), priority=10, protocol=6),
                    policy_config("p-edit", sa=("rekey",), priority=10, protocol=17)]
    old = build_static(old_sas, old_policies)
    sad, spd = SAD(), SPD()
    install(old, sad, spd, now=0.0)
    kept_esp = sad.outbound("keep")
    rekeyed_esp = sad.outbound("rekey")
    for t in range(3):
        assert kept_esp.protect(b"data", 59, float(t)) is not None

    # New config: same "keep" (key file rewritten with the same bytes elsewhere),
    # new key for "rekey", "gone" removed, "new" added; p-edit narrowed.
    new_sas = [sa_config(second_dir, "keep", 0x1001),
               sa_config(second_dir, "rekey", 0x1002, key=bytes([1] * 20)),
               sa_config(second_dir, "new", 0x1004)]
    new_policies = [policy_config("p-keep", sa=("keep",), priority=10),
                    policy_config("p-edit", sa=("rekey",), priority=10, protocol=17,
                                  dst_ports=(53, 53)),
                    policy_config("p-new", sa=("new",), priority=5)]
    plan = reload_diff(old, build_static(new_sas, new_policies))
    assert plan.keep_sas == ("keep",)
    assert sorted(p.name for p in plan.remove_sas) == ["gone", "rekey"]
    assert sorted(p.name for p in plan.add_sas) == ["new", "rekey"]
    assert plan.keep_policies == ("p-keep",)
    assert sorted(p.name for p in plan.remove_policies) == ["p-edit", "p-gone"]
    assert sorted(p.name for p in plan.add_policies) == ["p-edit", "p-new"]

    apply_reload(plan, sad, spd, now=10.0)
    assert sad.outbound("keep") is kept_esp and kept_esp.packets == 3
    assert sad.outbound("rekey") is not rekeyed_esp and sad.outbound("rekey") is not None
    assert sad.outbound("gone") is None and sad.outbound("new") is not None
    # Equal priorities keep file order: p-keep before p-edit.
    assert [p.name for p in spd.list(Direction.OUT)] == ["p-new", "p-keep", "p-edit"]
    assert reload_diff(plan.result, build_static(new_sas, new_policies)).changes_nothing


def test_reload_restores_file_order_when_an_edit_reorders(tmp_path):
    sas = [sa_config(tmp_path, "a", 0x1001)]
    first = build_static(sas, [policy_config("p1", sa=("a",), protocol=6),
                               policy_config("p2", sa=("a",), protocol=17)])
    sad, spd = SAD(), SPD()
    install(first, sad, spd, now=0.0)
    # p1 changes: re-adding it alone would put it after p2.
    second = build_static(sas, [policy_config("p1", sa=("a",), protocol=58),
                                policy_config("p2", sa=("a",), protocol=17)])
    apply_reload(reload_diff(first, second), sad, spd, now=1.0)
    assert [p.name for p in spd.list(Direction.OUT)] == ["p1", "p2"]
    assert spd.get("p1").selector.proto == 58
