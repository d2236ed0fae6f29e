"""vmip init: the written network loads, its two ends agree, and failures leave nothing."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from vmip.cli.main import main
from vmip.config import load_config
from vmip.config.keyfile import read_key_file
from vmip.ike import crypto
from vmip.ike.payloads import Identity
from vmip.init import pki
from vmip.init.generate import generate, load_description
from vmip.init.network import DescriptionError, add_mobile_node, build_network

REPO = Path(__file__).resolve().parents[2]
HA = "ha=192.0.2.1:6275"
CN = "web=198.51.100.7:6275"


def _init(tmp_path: Path, *args: str, name: str = "net") -> tuple[int, Path]:
    directory = tmp_path / name
    return main(["init", str(directory), *args]), directory


def _configs(directory: Path) -> dict[str, object]:
    return {p.parent.name: load_config(p) for p in sorted(directory.glob("*/*.toml"))}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ike_network_every_config_loads_and_secrets_are_private(tmp_path, capsys):
    status, directory = _init(tmp_path, "--ha", HA, "--mn", "laptop", "--cn", CN)
    assert status == 0
    assert "wrote a network of 3 nodes" in capsys.readouterr().out
    configs = _configs(directory)
    assert set(configs) == {"ha", "laptop", "web"}
    for path in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        assert _mode(path) == 0o700, path
    for path in directory.rglob("*.key"):
        assert _mode(path) == 0o600, path
    for name in configs:
        node = directory / name
        assert (node / f"vmip-{name}.service").is_file()
        readme = (node / "README.md").read_text()
        assert f"vmip run -c /etc/vmip/{name}.toml" in readme
        assert f"systemctl enable --now vmip-{name}" in readme
    assert (directory / "network.toml").is_file() and (directory / "ca" / "ca.key").is_file()
    assert not any(p.name == "ca.key" for p in directory.glob("*/keys/*"))
    mn = configs["laptop"]
    assert str(mn.ike.local_id) == "laptop.vmip.internal"
    assert {str(p.remote_id) for p in mn.ike.peers} == {"ha.vmip.internal",
                                                        "web.vmip.internal"}


def test_certificates_cover_each_node_identity_and_overlay_address(tmp_path):
    _, directory = _init(tmp_path, "--ha", HA, "--mn", "laptop", "--cn", CN)
    ca = x509.load_pem_x509_certificate((directory / "ca" / "ca.pem").read_bytes())
    for name, config in _configs(directory).items():
        leaf = crypto.load_certificates(config.ike.certificate.read_bytes())[0]
        crypto.verify_chain(leaf, [], [ca], leaf.not_valid_before_utc.timestamp() + 3600)
        ident = Identity.from_text(config.ike.local_id)
        assert crypto.identity_matches_certificate(ident.id_type, ident.data, leaf)
        dns, ips = pki.san_of(config.ike.certificate.read_bytes())
        assert dns == [f"{name}.vmip.internal"]
        # An MN's: its home address, then its care-of addresses (what the HA admits).
        overlay = [config.mobility.home_address, *(link.coa for link in config.links)] \
            if name == "laptop" else [config.tun.addresses[0].ip]
        assert ips == overlay
        key = crypto.load_private_key(config.ike.private_key.read_bytes())
        assert key.public_key().public_numbers() == leaf.public_key().public_numbers()


def test_the_mn_and_the_ha_complete_ike_auth_with_the_generated_certificates(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "ike"))
    from ikepair import make_pair  # the IKE tests' own two-peer driver

    from vmip.ike.events import ChildSaCreated
    from vmip.ike.ikesa import IkeSaConfig

    _, directory = _init(tmp_path, "--ha", HA, "--mn", "laptop")
    configs = _configs(directory)

    def ike_config(name: str, peer: str) -> IkeSaConfig:
        ike = configs[name].ike
        # The HA pins no MN identity: any the CA certifies (mobile_node_policies).
        remote = next((p.remote_id for p in ike.peers if p.name.startswith(peer)), None)
        return IkeSaConfig(
            local_id=Identity.from_text(ike.local_id),
            remote_id=Identity.from_text(remote) if remote else None,
            certificate=crypto.load_certificates(ike.certificate.read_bytes())[0],
            private_key=crypto.load_private_key(ike.private_key.read_bytes()),
            cas=tuple(crypto.load_certificates(ike.ca[0].read_bytes())))

    wire = make_pair(ike_config("laptop", "ha"), ike_config("ha", "laptop"))
    wire.now = time.time()  # the certificates are valid from now on
    wire.initiator.initiate(wire.now)
    wire.pump()
    assert wire.of("i", ChildSaCreated) and wire.of("r", ChildSaCreated)


def test_static_network_both_ends_of_every_sa_agree(tmp_path):
    status, directory = _init(tmp_path, "--ha", "home=[2001:db8::1]:6275", "--mn", "laptop",
                              "--mn", "phone:wlan0,wwan0", "--cn", CN, "--cn",
                              "db=198.51.100.8:7000", "--keys", "static",
                              "--home-prefix", "2001:db8:100::/64")
    assert status == 0
    configs = _configs(directory)
    ends: dict[tuple[int, str, str], list] = {}
    for name, config in configs.items():
        assert config.keys.mode == "static"
        for sa in config.keys.sa:
            ends.setdefault((sa.spi, str(sa.src), str(sa.dst)), []).append((name, sa))
            assert _mode(Path(sa.key_file)) == 0o600
    assert ends
    for key, pair in ends.items():
        assert len(pair) == 2, key
        (_, a), (_, b) = pair
        assert {a.direction.value, b.direction.value} == {"out", "in"}
        assert read_key_file(a.key_file) == read_key_file(b.key_file)
        assert a.suite == b.suite and a.mode == b.mode
    # SPIs unique per (direction, destination) within each node (the loader checks it too).
    phone = configs["phone"]
    assert [link.interface for link in phone.links] == ["wlan0", "wwan0"]
    assert str(phone.mobility.home_address) == "2001:db8:100::20"
    ha_peer = configs["laptop"].peers[0]
    assert (str(ha_peer.endpoint.address), ha_peer.endpoint.port) == ("2001:db8::1", 6275)


def test_add_mn_keeps_keys_certificates_and_addresses(tmp_path, capsys):
    for keys in ("ike", "static"):
        _, directory = _init(tmp_path, "--ha", HA, "--mn", "laptop", "--cn", CN, "--keys", keys,
                             name=keys)
        before = {str(p.relative_to(directory)): p.read_bytes()
                  for p in directory.rglob("*") if p.is_file() and "keys" in p.parts}
        before_net = load_description(directory)
        ha_before = (directory / "ha" / "ha.toml").read_bytes()
        capsys.readouterr()
        assert main(["init", str(directory), "--add-mn", "phone"]) == 0
        out = capsys.readouterr().out
        assert "added mobile node phone" in out
        # IKE: the HA admits the new MN by its certificate, its config is untouched.
        assert (f"{directory}/ha/ha.toml" in out) == (keys == "static")
        assert ((directory / "ha" / "ha.toml").read_bytes() == ha_before) == (keys == "ike")
        for path, data in before.items():
            assert (directory / path).read_bytes() == data, path  # nothing re-keyed
        after_net = load_description(directory)
        assert after_net.mns[0] == before_net.mns[0] and after_net.cns == before_net.cns
        configs = _configs(directory)
        assert set(configs) == {"ha", "laptop", "phone", "web"}
        ha_policies = {p.name for p in configs["ha"].policies}
        if keys == "static":
            assert {"mh-from-phone", "tunnel-to-phone"} <= ha_policies
        else:
            assert not configs["ha"].ike.peers and configs["ha"].ike.mobile_node_policies
        assert any(p.name == "to-phone" for p in configs["web"].policies)
        # MN-MN: end-to-end ESP both ways, no registration unless the description asks.
        assert {"to-phone", "from-phone"} <= {p.name for p in configs["laptop"].policies}
        assert after_net.mns[1].home_address not in configs["laptop"].mobility.correspondents
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_existing_non_empty_directory_is_refused_and_left_alone(tmp_path, capsys):
    directory = tmp_path / "net"
    directory.mkdir()
    (directory / "mine").write_text("keep")
    assert main(["init", str(directory), "--ha", HA, "--mn", "a"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--add-mn" in err
    assert [p.name for p in directory.iterdir()] == ["mine"]
    # An empty directory is fine (made by mkdir beforehand).
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["init", str(empty), "--ha", HA, "--mn", "a"]) == 0


@pytest.mark.parametrize("args, message", [
    (["--ha", "ha=192.0.2.1", "--mn", "a"], "has no port"),
    (["--ha", "ha=vpn.example.org:6275", "--mn", "a"], "host name"),
    (["--ha", HA, "--mn", "a=2001:db8::5", "--home-prefix", "2001:db8:100::/64"],
     "outside the home prefix"),
    (["--ha", HA, "--add-mn", "b"], "drop --ha"),
])
def test_bad_input_exits_2_with_the_fix_and_writes_nothing(tmp_path, capsys, args, message):
    status, _ = _init(tmp_path, *args)
    assert status == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_failure_half_way_leaves_no_directory_and_no_temporary(tmp_path, monkeypatch):
    calls = []

    def failing_issue(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_issue(*args, **kwargs)

    real_issue = pki.issue
    monkeypatch.setattr(pki, "issue", failing_issue)
    net = build_network(ha=HA, mns=["a", "b"])
    with pytest.raises(OSError):
        generate(net, tmp_path / "net")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_regeneration_leaves_the_old_network(tmp_path, monkeypatch):
    _, directory = _init(tmp_path, "--ha", HA, "--mn", "a")
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    monkeypatch.setattr(pki, "issue", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises(OSError):
        generate(add_mobile_node(load_description(directory), "b"), directory,
                 regenerate=True)
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["net"]


def test_add_mn_needs_a_directory_made_by_vmip_init(tmp_path):
    with pytest.raises(DescriptionError, match="has no network.toml"):
        load_description(tmp_path)


def test_units_keep_the_hardening_of_the_example_unit(tmp_path):
    _, directory = _init(tmp_path, "--ha", HA, "--mn", "laptop")
    example = (REPO / "configs" / "vmip.service").read_text().splitlines()
    unit = (directory / "laptop" / "vmip-laptop.service").read_text().splitlines()
    keys = ("CapabilityBoundingSet", "NoNewPrivileges", "DeviceAllow", "ProtectSystem",
            "ProtectHome", "ReadWritePaths", "RestrictAddressFamilies", "RuntimeDirectory",
            "Restart=", "ExecReload")
    for key in keys:
        assert [line for line in example if line.startswith(key)] == \
            [line for line in unit if line.startswith(key)], key
    assert "ExecStart=/usr/bin/env vmip run -c /etc/vmip/laptop.toml" in unit


def test_description_file(tmp_path, capsys):
    description = tmp_path / "desc.toml"
    description.write_text('keys = "static"\n[ha]\nname = "hq"\nendpoint = "192.0.2.1:6275"\n'
                           '[[mn]]\nname = "laptop"\ncorrespondents = []\n'
                           '[[cn]]\nname = "web"\nendpoint = "198.51.100.7:6275"\n')
    out = tmp_path / "out"
    assert main(["init", str(out), "--from", str(description)]) == 0
    configs = _configs(out)
    assert configs["laptop"].mobility.correspondents == ()
    assert not [p for p in configs["web"].policies if str(p.action) == "protect"]
    os.chmod(description, 0o600)
    assert main(["init", str(tmp_path / "o2"), "--from", str(description), "--mn", "x"]) == 2
    assert "drop --mn" in capsys.readouterr().err
