"""vmip ⇄ strongSwan over an IPv4-only underlay (docs/ike.md "IPv4 underlay").

The pair is configs/ike/gateway-ipv4 (vmip.toml, swanctl.conf) as shipped:
namespaces ``vt<pid>-i4-a`` (vmip, 192.0.2.1) and ``-b`` (charon with
kernel-libipsec, 192.0.2.2, 2001:db8:b::1 on lo), one veth with IPv6
disabled.  IKE over IPv4 UDP 500/4500, ESP in UDP over IPv4, IPv6 inside.
Oracle: charon's SA list, and ping6 both ways through the tunnel.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ike"))
from test_ike_strongswan import CHARON, SWANCTL, Charon, _run  # noqa: E402

from pairlab import netns_exec, wait_for  # noqa: E402

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
PAIR = REPO / "configs" / "ike" / "gateway-ipv4"
IN_A, IN_B = "2001:db8:a::1", "2001:db8:b::1"
UNDER_A, UNDER_B = "192.0.2.1", "192.0.2.2"


class Ipv4Pair:
    def __init__(self, workdir: Path, *, initiate: bool) -> None:
        pid = os.getpid()
        self.ns_a, self.ns_b = f"vt{pid}-i4-a", f"vt{pid}-i4-b"
        self.workdir = workdir
        self.initiate = initiate
        self.created: list[str] = []
        self.charon: Charon | None = None
        self.node: subprocess.Popen | None = None

    def build(self) -> "Ipv4Pair":
        ns_a, ns_b = self.ns_a, self.ns_b
        for ns in (ns_a, ns_b):
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
        _run("ip", "link", "add", "vti4-a", "netns", ns_a, "type", "veth", "peer", "name",
             "vti4-b", "netns", ns_b)
        for ns, dev, addr in ((ns_a, "vti4-a", UNDER_A), (ns_b, "vti4-b", UNDER_B)):
            # IPv4 only: no IPv6 on the underlay at all, not even link-local.
            _run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns_b, "addr", "add", f"{IN_B}/128", "dev", "lo")
        # The shipped pair, with its relative key path intact.
        shutil.copytree(REPO / "configs" / "ike", self.workdir / "ike")
        os.chmod(self.workdir / "ike" / "keys" / "example.psk", 0o600)
        config = self.workdir / "ike" / "gateway-ipv4" / "vmip.toml"
        if not self.initiate:
            config.write_text(config.read_text().replace("initiate = true", "initiate = false"))
        self.config = config
        self.charon = Charon(ns_b, self.workdir)
        self.charon.load((PAIR / "swanctl.conf").read_text())
        log = open(self.workdir / "a.log", "wb")
        self.node = subprocess.Popen(
            ["ip", "netns", "exec", ns_a, sys.executable, "-m", "vmip", "--log-level", "debug",
             "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True)
        wait_for(lambda: netns_exec(ns_a, sys.executable, "-m", "vmip", "status").returncode == 0,
                 "vmip's control socket", timeout=20)
        return self

    def log(self) -> str:
        path = self.workdir / "a.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def close(self) -> None:
        if self.node is not None:
            self.node.terminate()
            try:
                self.node.wait(10)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait(5)
        if self.charon is not None:
            self.charon.stop()
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        try:
            (Path("/run/vmip") / f"{self.ns_a}.sock").unlink()
        except OSError:
            pass


def _pair(tmp_path, initiate: bool):
    if CHARON is None or SWANCTL is None:
        pytest.skip("strongSwan missing: apt-get install strongswan-swanctl charon-systemd "
                    "libcharon-extra-plugins")
    os.chmod(tmp_path, 0o755)
    pair = Ipv4Pair(tmp_path, initiate=initiate)
    try:
        yield pair.build()
    finally:
        pair.close()


@pytest.fixture
def vmip_initiates(tmp_path):
    yield from _pair(tmp_path, True)


@pytest.fixture
def charon_initiates(tmp_path):
    yield from _pair(tmp_path, False)


def _installed(charon: Charon):
    listing = charon.list_sas()
    return listing if "INSTALLED" in listing else None


def _check_tunnel(pair: Ipv4Pair, listing: str) -> None:
    # The IKE SA runs between the IPv4 underlay addresses, on 4500 (NAT-T).
    assert f"local-host={UNDER_B}" in listing and f"remote-host={UNDER_A}" in listing, listing
    ours = [sa for sa in json.loads(netns_exec(pair.ns_a, sys.executable, "-m", "vmip", "sa",
                                               "list", "--json").stdout)
            if sa["origin"] == "ike"]
    by_direction = {sa["direction"]: sa for sa in ours}
    assert by_direction["out"]["mode"] == "tunnel"
    # The SAD holds them at the IPv4-mapped underlay addresses.
    mapped = ipaddress.IPv6Address(by_direction["out"]["dst"]).ipv4_mapped
    assert str(mapped) == UNDER_B, by_direction["out"]
    assert f"{by_direction['out']['spi']:08x}" in listing
    assert f"{by_direction['in']['spi']:08x}" in listing
    result = netns_exec(pair.ns_a, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", IN_B,
                        timeout=30)
    assert result.returncode == 0, result.stdout + pair.log()
    result = netns_exec(pair.ns_b, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-I", IN_B,
                        IN_A, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr + pair.log()


def test_vmip_initiates_over_ipv4(vmip_initiates):
    pair = vmip_initiates
    assert pair.charon is not None
    try:
        listing = wait_for(lambda: _installed(pair.charon), "charon's CHILD_SA", timeout=25,
                           interval=0.2)
    except AssertionError:
        raise AssertionError(pair.charon.log()[-3000:] + pair.log()) from None
    _check_tunnel(pair, listing)


def test_charon_initiates_over_ipv4(charon_initiates):
    pair = charon_initiates
    assert pair.charon is not None
    pair.charon.swanctl("--initiate", "--child", "site", timeout=30)
    listing = wait_for(lambda: _installed(pair.charon), "charon's CHILD_SA", timeout=25,
                       interval=0.2)
    _check_tunnel(pair, listing)
    # A responder that served the peer logged no traceback.
    assert "Traceback" not in (pair.workdir / "a.log").read_text()
