"""IKE settings (keys.mode = "ike") and the `vmip check` command line."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from vmip.config import ConfigError, load_config, write_key_file

MN_IKE = """\
[node]
name = "mn"
roles = ["mn"]

[tun]
addresses = ["2001:db8:100::10/64"]

[[link]]
name = "wifi0"
coa = "2001:db8:31::2"

[mobility]
home_address = "2001:db8:100::10"
home_agent = "2001:db8:100::1"

[keys]
mode = "ike"

[[policy]]
name = "via-ha"
direction = "out"
src = "2001:db8:100::10/128"
dst = "::/0"
action = "protect"

[ike]
local_id = "mn@example.net"
psk_file = "keys/ike.psk"

[[ike.peer]]
name = "ha"
address = "2001:db8:100::1"
remote_id = "ha@example.net"
initiate = true
"""


@pytest.fixture
def ike_dir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    write_key_file(tmp_path / "keys" / "ike.psk", bytes(range(32)))
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "certs" / "mn.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    key = tmp_path / "certs" / "mn.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    return tmp_path


def _load(directory: Path, text: str):
    path = directory / "mn.toml"
    path.write_text(text)
    return load_config(path)


def _error(directory: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _load(directory, text)
    return caught.value


def test_ike_with_psk(ike_dir: Path) -> None:
    cfg = _load(ike_dir, MN_IKE)
    assert cfg.keys.mode == "ike" and cfg.keys.sa == ()
    assert cfg.ike.psk_file == ike_dir / "keys" / "ike.psk"
    assert cfg.ike.local_id == "mn@example.net"
    assert cfg.ike.proposals == ("aes128gcm16-prfsha256-ecp256",)  # documented defaults
    assert cfg.ike.esp_proposals == ("aes128gcm16",)
    (peer,) = cfg.ike.peers
    assert (peer.name, peer.address, peer.remote_id, peer.initiate) == \
        ("ha", ip_address("2001:db8:100::1"), "ha@example.net", True)
    assert cfg.policies[0].sa == ()


def test_the_psk_is_read_with_the_config_and_never_shown(ike_dir: Path) -> None:
    from vmip.config import dump_effective, to_dict

    cfg = _load(ike_dir, MN_IKE)
    assert cfg.ike.psk == bytes(range(32))
    shown = repr(cfg) + dump_effective(cfg) + str(to_dict(cfg)) + str(cfg.ike.psk)
    assert bytes(range(32)).hex()[:16] not in shown and "\\x00\\x01" not in shown
    path = ike_dir / "mn.toml"
    assert load_config(path, check_key_files=False).ike.psk is None


def test_ike_with_certificates(ike_dir: Path) -> None:
    text = MN_IKE.replace('psk_file = "keys/ike.psk"', 'certificate = "certs/mn.pem"\n'
                          'private_key = "certs/mn.key"\nca = ["certs/ca.pem"]')
    cfg = _load(ike_dir, text)
    assert cfg.ike.psk_file is None and cfg.ike.ca == (ike_dir / "certs" / "ca.pem",)


@pytest.mark.parametrize("edit, key, fragment", [
    (lambda t: t.replace("[ike]", "[ikev2]").replace("[[ike.peer]]", "[[ikev2.peer]]"),
     "ikev2", "did you mean 'ike'?"),
    (lambda t: t.replace('mode = "ike"', 'mode = "static"'), "ike", 'keys.mode is "static"'),
    (lambda t: t.replace('psk_file = "keys/ike.psk"', ""), "ike.psk_file", "no way to authenticate"),
    (lambda t: t.replace('psk_file = "keys/ike.psk"', 'psk_file = "keys/ike.psk"\ncertificate = "certs/mn.pem"'),
     "ike.psk_file", "both a PSK and a certificate"),
    (lambda t: t.replace('psk_file = "keys/ike.psk"', 'certificate = "certs/mn.pem"\nprivate_key = "certs/mn.key"'),
     "ike.ca", "needs a CA"),
    (lambda t: t.replace('psk_file = "keys/ike.psk"', 'psk_file = "keys/short.psk"'),
     "ike.psk_file", "16 bytes"),
    (lambda t: t.replace('name = "via-ha"', 'name = "via-ha"\nsa = ["x"]'),
     "policy[0].sa", "negotiated"),
    (lambda t: t.replace('[ike]', '[ike]\nesp_proposals = ["aes128gcm"]'),
     "ike.esp_proposals[0]", 'did you mean "aes128gcm16"?'),
    (lambda t: t.replace('[ike]', '[ike]\nproposals = ["AES 128"]'),
     "ike.proposals[0]", "algorithms joined by"),
    (lambda t: t.replace('name = "ha"', 'name = "ha"\nport = 500'),
     "ike.peer[0].port", "belongs in [[link]]"),
    (lambda t: t + '\n[[keys.sa]]\nname = "x"\n', "keys.sa[0].spi", "is missing"),
])
def test_ike_mistakes(ike_dir: Path, edit, key: str, fragment: str) -> None:
    write_key_file(ike_dir / "keys" / "short.psk", b"0123456789")
    error = _error(ike_dir, edit(MN_IKE))
    assert error.key == key
    assert fragment in str(error)


HA_ADMITTING = """\
[node]
name = "ha"
roles = ["ha"]

[tun]
addresses = ["2001:db8:100::1/64"]

[[link]]
name = "net0"

[mobility]
home_prefix = "2001:db8:100::/64"

[keys]
mode = "ike"

[[policy]]
name = "mh-to-mobile-nodes"
direction = "out"
src = "2001:db8:100::1/128"
dst = "2001:db8:100::/64"
protocol = "mh"
action = "protect"

[ike]
certificate = "certs/mn.pem"
private_key = "certs/mn.key"
ca = ["certs/ca.pem"]
mobile_node_policies = ["mh-to-mobile-nodes"]
"""


def test_an_ha_admitting_mobile_nodes_by_certificate(ike_dir: Path) -> None:
    cfg = _load(ike_dir, HA_ADMITTING)
    assert cfg.ike.mobile_node_policies == ("mh-to-mobile-nodes",) and cfg.ike.peers == ()


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace('roles = ["ha"]', 'roles = ["cn"]').replace(
        '[mobility]\nhome_prefix = "2001:db8:100::/64"', ""), "only a home agent"),
    (lambda t: t.replace('certificate = "certs/mn.pem"\nprivate_key = "certs/mn.key"\n'
                         'ca = ["certs/ca.pem"]', 'psk_file = "keys/ike.psk"'), "not a PSK"),
    (lambda t: t.replace('mobile_node_policies = ["mh-to-mobile-nodes"]',
                         'mobile_node_policies = ["nope"]'), "not an outbound protect policy"),
    (lambda t: t.replace('dst = "2001:db8:100::/64"', 'dst = "2001:db8:200::/64"'),
     "outside the home prefix"),
])
def test_admission_mistakes(ike_dir: Path, edit, fragment: str) -> None:
    error = _error(ike_dir, edit(HA_ADMITTING))
    assert error.key.startswith("ike.mobile_node_policies") and fragment in str(error), error


def test_private_key_must_be_private(ike_dir: Path) -> None:
    (ike_dir / "certs" / "mn.key").chmod(0o640)
    text = MN_IKE.replace('psk_file = "keys/ike.psk"', 'certificate = "certs/mn.pem"\n'
                          'private_key = "certs/mn.key"\nca = ["certs/ca.pem"]')
    error = _error(ike_dir, text)
    assert error.key == "ike.private_key" and "chmod 600" in error.hint


def test_check_help_teaches(run_check) -> None:
    status, out, _ = run_check("--help")
    assert status == 0
    for fragment in ("What is checked", "vmip check -c configs/mn.toml", "--json", "exit status",
                     "chmod 600 configs/keys/*", "docs/configuration.md"):
        assert fragment in out


def test_check_needs_a_config(run_check) -> None:
    status, _, err = run_check()
    assert status == 2 and "-c/--config" in err


def test_json_and_quiet_exclude_each_other(run_check, configs: Path) -> None:
    status, _, err = run_check("-c", str(configs / "cn.toml"), "--json", "-q")
    assert status == 2 and "not allowed with" in err


def test_quiet_still_reports_errors(run_check, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[tun]\naddresses = [\"2001:db8::1/64\"]\nmtu = 9\n")
    status, out, err = run_check("-c", str(path), "-q")
    assert (status, out) == (2, "")
    assert err.startswith(f"vmip: error: {path}: tun.mtu: 9 is out of range; ")
