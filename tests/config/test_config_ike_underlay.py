"""`vmip check` on the IKE underlay: what an IPv4 (or rfc3948) IKE peer needs
(docs/ike.md "IPv4 underlay"), refused with the fix in the message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vmip.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


PAIRS = ("initiator", "responder", "certificates", "gateway-ipv4")


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "configs" / "ike", tmp_path / "ike")
    for private in ("keys/example.psk", "certificates/vmip/client.key",
                    "certificates/private/gateway.key"):
        (tmp_path / "ike" / private).chmod(0o600)
    return tmp_path / "ike"


@pytest.fixture
def gateway(tmp_path: Path) -> Path:
    return _copy(tmp_path) / "gateway-ipv4" / "vmip.toml"


@pytest.mark.parametrize("pair", PAIRS)
def test_every_shipped_pair_passes_vmip_check(tmp_path: Path, run_check, pair: str) -> None:
    """configs/ike/<pair>/vmip.toml as shipped (tests/node/test_ike_config_pairs.py
    runs each against charon with the swanctl.conf next to it)."""
    ike = _copy(tmp_path)
    assert (ike / pair / "swanctl.conf").is_file()
    status, out, err = run_check("-c", str(ike / pair / "vmip.toml"), "--json")
    assert status == 0, err
    assert '"mode": "ike"' in out


def _error(path: Path, text: str) -> ConfigError:
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


def test_the_shipped_ipv4_gateway_config_is_valid(gateway: Path) -> None:
    config = load_config(gateway)
    assert str(config.ike.peers[0].address) == "192.0.2.2"


@pytest.mark.parametrize("edit, key, fragments", [
    # No rfc3948 peer covers the IPv4 address: vmip's framing carries IPv6 only.
    (lambda t: t.replace('prefixes = ["192.0.2.2/32"]', 'prefixes = ["192.0.2.9/32"]'),
     "ike.peer[0].address", ('framing = "rfc3948"', 'prefixes = ["192.0.2.2/32"]')),
    # The rfc3948 link has no IPv4 bind: IKE has no address to run from.
    (lambda t: t.replace('bind = "192.0.2.1"\n', ""),
     "ike.peer[0].address", ("no rfc3948 [[link]] binds an IPv4 address", 'set bind = "')),
    (lambda t: t.replace('bind = "192.0.2.1"', 'bind = "2001:db8:ff::1"'),
     "ike.peer[0].address", ("binds an IPv4 address",)),
    # Nothing to propose: the default TS would be the IPv4 addresses themselves.
    (lambda t: t.replace('action = "protect"', 'action = "bypass"'),
     "ike.peer[0].address", ("no outbound protect policy", "IPv6 src/dst")),
])
def test_ipv4_ike_peer_mistakes(gateway: Path, edit, key: str, fragments) -> None:
    error = _error(gateway, edit(gateway.read_text()))
    assert error.key == key, str(error)
    for fragment in fragments:
        assert fragment in str(error)


def test_ipv4_inside_the_tunnel_is_refused(gateway: Path) -> None:
    text = gateway.read_text()
    text = text.replace('src = "2001:db8:a::1/128"\ndst = "2001:db8:b::/64"',
                        'src = "198.51.100.1/32"\ndst = "198.51.100.0/24"')
    error = _error(gateway, text)
    assert error.key == "policy[0].src", str(error)
    assert "IPv6 inside the tunnel only" in str(error)
