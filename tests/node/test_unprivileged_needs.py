"""What ``vmip run`` says it would need, before opening anything, when it holds no capability.

The process's capabilities and the kernel's answers are stubbed so that the
checks run the same as root (CI) and as a user; the running node is tested
in test_unprivileged.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from vmip import privileges
from vmip.privileges import PrivilegeError, check_unprivileged_start, unprivileged_needs


def _config(tmp_path: Path, *links, mode: str = "static") -> SimpleNamespace:
    return SimpleNamespace(
        tun=SimpleNamespace(name="vmip0"),
        links=list(links),
        keys=SimpleNamespace(mode=mode, sa=["an SA"], state_dir=tmp_path / "state"))


def _link(name: str = "eth0", driver: str = "udp", port: int | None = 6275,
          interface: str | None = None, bind: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(name=name, driver=driver, port=port, interface=interface, bind=bind)


@pytest.fixture
def no_capabilities(monkeypatch):
    monkeypatch.setattr(privileges, "current_capabilities", lambda: {"CapEff": 0})
    monkeypatch.setattr(privileges, "_unprivileged_port_start", lambda: 1024)
    monkeypatch.setattr(privileges, "_kernel_version", lambda: (6, 1))
    monkeypatch.setattr(privileges, "_interface_exists", lambda name: True)
    return monkeypatch


def test_a_prepared_tun_and_a_udp_link_need_nothing(tmp_path, no_capabilities):
    assert unprivileged_needs(_config(tmp_path, _link(interface="wlan0")),
                              tmp_path / "vmip.sock") == []


def test_each_missing_privilege_is_named_with_why_and_fix(tmp_path, no_capabilities):
    no_capabilities.setattr(privileges, "_interface_exists", lambda name: False)
    no_capabilities.setattr(privileges, "_kernel_version", lambda: (5, 4))
    config = _config(tmp_path, _link("raw0", "raw", None),
                     _link("nat0", "rfc3948", 4500, interface="wlan0", bind="192.0.2.1"),
                     _link("low0", "udp", 443), mode="ike")
    # (root may write anywhere: the directory check is stubbed to say "no".)
    no_capabilities.setattr(privileges, "_writable_directory",
                            lambda path: not str(path).startswith("/run/vmip/"))
    needs = unprivileged_needs(config, "/run/vmip/vmip.sock")
    by_why = {need["why"]: need for need in needs}
    assert by_why["creating the TUN vmip0 and setting its addresses and routes"][
        "capability"] == "CAP_NET_ADMIN"
    assert "vmip tun create" in by_why[
        "creating the TUN vmip0 and setting its addresses and routes"]["fix"]
    raw = by_why["link raw0: the raw driver sends and receives through raw IPv6 sockets"]
    assert raw["capability"] == "CAP_NET_RAW"
    ike = by_why["link nat0: binding UDP port 500 (below net.ipv4.ip_unprivileged_port_start "
                 "= 1024)"]
    assert ike["capability"] == "CAP_NET_BIND_SERVICE"
    assert any(n["why"].startswith("link low0: binding UDP port 443") for n in needs)
    assert by_why["link nat0: SO_BINDTODEVICE to wlan0 before Linux 5.7"][
        "capability"] == "CAP_NET_RAW"
    assert any("control socket" in n["why"] and "control.socket" in n["fix"] for n in needs)
    # 4500 and 6275 are above the unprivileged port range: no need for them.
    assert not any("port 4500" in n["why"] for n in needs)


def test_the_refusal_lists_every_need_in_one_error(tmp_path, no_capabilities):
    no_capabilities.setattr(privileges, "_interface_exists", lambda name: False)
    with pytest.raises(PrivilegeError) as refused:
        check_unprivileged_start(_config(tmp_path, _link("raw0", "raw", None)),
                                 tmp_path / "vmip.sock")
    message = str(refused.value)
    assert "cannot start" in message
    assert "CAP_NET_ADMIN for creating the TUN vmip0" in message
    assert "CAP_NET_RAW for link raw0" in message


def test_a_lowered_port_start_or_held_capability_is_enough(tmp_path, no_capabilities):
    config = _config(tmp_path, _link("low0", "udp", 443))
    no_capabilities.setattr(privileges, "_unprivileged_port_start", lambda: 0)
    assert unprivileged_needs(config, tmp_path / "vmip.sock") == []
    no_capabilities.setattr(privileges, "_unprivileged_port_start", lambda: 1024)
    no_capabilities.setattr(privileges, "current_capabilities",
                            lambda: {"CapEff": 1 << 10})   # CAP_NET_BIND_SERVICE
    assert unprivileged_needs(config, tmp_path / "vmip.sock") == []
