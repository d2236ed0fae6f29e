"""Static keying from config objects, and the reload diff."""

from __future__ import annotations

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
from vmip.errors import VmipError
from vmip.ipsec.engine import IpsecEngine
from vmip.ipsec.sa import Direction, Lifetime, Mode
from vmip.ipsec.sad import SAD
from vmip.ipsec.spd import SPD, Action
from vmip.ipsec.static import (
    StaticKeysError,
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


def sa_config(tmp_path: Path, name="mn-cn-out", spi=0x1301, direction=Direction.OUT,
              src=HOA, dst=CN, suite="aes128gcm16", key=bytes(range(20)), auth=None,
              **kw) -> SaConfig:
    """An SA as the loader makes it: key files named, their keys already read.

    The files do not exist: static keying must not open them.
    """
    fields = {"name": name, "spi": spi, "direction": direction, "src": src, "dst": dst,
              "mode": Mode.TRANSPORT, "suite": suite,
              "key_file": tmp_path / f"{name}.key" if key else None,
              "auth_key_file": tmp_path / f"{name}.auth" if auth else None,
              "esn": True, "replay_window": 1024, "soft": Lifetime(), "hard": Lifetime(),
              "enc_key": key or None, "auth_key": auth}
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

def test_sa_takes_the_keys_the_config_read_and_opens_no_file(tmp_path):
    key = bytes(range(100, 120))
    cfg = sa_config(tmp_path, key=key, soft=Lifetime(seconds=50), hard=Lifetime(seconds=60))
    assert not cfg.key_file.exists()
    params = sa_params(cfg, backend="pycryptodome")
    assert params.enc_key == key and params.auth_key == b""
    assert type(params.enc_key) is bytes
    assert (params.spi, params.direction, params.src, params.dst) == (0x1301, Direction.OUT,
                                                                     HOA, CN)
    assert (params.name, params.origin, params.backend) == ("mn-cn-out", "static", "pycryptodome")
    assert params.soft.seconds == 50 and params.hard.seconds == 60 and params.esn


def test_cbc_suite_takes_both_keys(tmp_path):
    enc, auth = bytes(range(16)), bytes(range(32, 64))
    params = sa_params(sa_config(tmp_path, suite="aes128cbc-sha256", key=enc, auth=auth))
    assert (params.enc_key, params.auth_key) == (enc, auth)


def test_null_encryption_has_no_encryption_key(tmp_path):
    auth = bytes(range(32))
    params = sa_params(sa_config(tmp_path, suite="null-sha256", key=None, auth=auth))
    assert (params.enc_key, params.auth_key) == (b"", auth)


@pytest.mark.parametrize("missing", ["key_file", "auth_key_file"])
def test_config_loaded_without_its_keys_is_refused(tmp_path, missing):
    """check_key_files=False leaves the keys out; static keying says so, never reads files."""
    cfg = sa_config(tmp_path, suite="aes128cbc-sha256", key=bytes(16), auth=bytes(32))
    cfg = replace(cfg, **{"enc_key" if missing == "key_file" else "auth_key": None})
    with pytest.raises(StaticKeysError) as caught:
        sa_params(cfg, source="mn.toml")
    error = caught.value
    assert isinstance(error, VmipError) and not isinstance(error, ConfigError)
    assert error.exit_status == 2 and error.key == f"keys.sa[mn-cn-out].{missing}"
    assert str(error).startswith(f"mn.toml: keys.sa[mn-cn-out].{missing}: the key of ")
    assert "was not read with the config" in str(error)


def test_unworkable_sa_names_the_sa_and_never_the_key(tmp_path):
    secret = bytes([0xA5] * 20)
    cfg = sa_config(tmp_path, key=secret, spi=7)       # reserved SPI (RFC 4303 §2.1)
    with pytest.raises(StaticKeysError) as caught:
        sa_params(cfg, source="mn.toml")
    message = str(caught.value)
    assert message.startswith("mn.toml: keys.sa[mn-cn-out]: SPI 0x7 is reserved")
    assert message.endswith("fix the SA's spi and addresses")
    assert secret.hex() not in message and "a5a5" not in message
    assert "a5a5" not in repr(cfg) and "\\xa5" not in repr(cfg)


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


def test_unworkable_policy_is_a_static_keys_error():
    with pytest.raises(StaticKeysError) as caught:
        policy(policy_config(dst_ports=(22, 22)), source="mn.toml")   # ports, protocol any
    assert str(caught.value).startswith("mn.toml: policy[to-cn]")


def test_duplicate_names_are_refused(tmp_path):
    cfg = sa_config(tmp_path)
    with pytest.raises(StaticKeysError, match=r"keys\.sa\[mn-cn-out\]: two SAs have this name"):
        build_static([cfg, cfg], [])
    with pytest.raises(StaticKeysError, match=r"policy\[to-cn\]: two policies have this name"):
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


def test_example_config_with_open_key_is_refused_when_it_loads(example_configs):
    os.chmod(example_configs / "keys" / "mn-to-cn.key", 0o644)
    with pytest.raises(ConfigError) as caught:
        load_config(example_configs / "mn.toml")
    assert "chmod 600" in str(caught.value)
    # Loaded without its key files, the config holds no keys to install.
    with pytest.raises(StaticKeysError, match="was not read with the config"):
        from_config(load_config(example_configs / "mn.toml", check_key_files=False))


def test_keys_are_read_once_when_the_config_loads(example_configs, monkeypatch):
    """The loader reads each key file once; building the SAs opens none again."""
    keys_dir = str(example_configs / "keys")
    opened: list[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        if os.fspath(path).startswith(keys_dir):
            opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    cfg = load_config(example_configs / "mn.toml")
    files = {str(p) for sa in cfg.keys.sa for p in (sa.key_file, sa.auth_key_file) if p}
    assert sorted(opened) == sorted(files)
    loaded = len(opened)
    keys = from_config(cfg)
    assert len(opened) == loaded
    assert {name: params.enc_key for name, params in keys.sas.items()} == \
        {sa.name: sa.enc_key for sa in cfg.keys.sa}


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
