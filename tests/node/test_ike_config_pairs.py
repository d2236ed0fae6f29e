"""The shipped vmip ⇄ strongSwan pairs of configs/ike/, run as they are.

Each pair directory holds ``vmip.toml`` and the matching ``swanctl.conf``
(docs/ike.md "Example pairs").  Namespaces ``vt<pid>-cp-a`` (vmip) and
``-b`` (charon with kernel-libipsec, 2001:db8:b::1 on lo) joined by one veth
carrying the pair's underlay: IPv6 2001:db8:ff::1/::2, or for
``gateway-ipv4`` IPv4 only (192.0.2.1/.2, IPv6 disabled on the veth: IKE over
IPv4 UDP 500/4500, ESP in UDP over IPv4, IPv6 inside).  charon loads the
pair's swanctl.conf with SWANCTL_DIR at the pair (its certificates there).
Oracle: charon's SA list (addresses, SPIs = vmip's SAD) and ping6 both ways.
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

from charonpair import CHARON, STRONGSWAN_MISSING, SWANCTL, CharonPair
from pairlab import netns_exec, wait_for

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
IN_A, IN_B = "2001:db8:a::1", "2001:db8:b::1"
UNDERLAY = {4: ("192.0.2.1", "192.0.2.2", 24), 6: ("2001:db8:ff::1", "2001:db8:ff::2", 64)}
#: Private files of the copies (git does not keep modes).
PRIVATE = ("keys/example.psk", "certificates/vmip/client.key",
           "certificates/private/gateway.key")


class ShippedPair(CharonPair):
    """The shipped configs/ike/<pair>: vmip.toml in namespace a, swanctl.conf in b."""

    def __init__(self, workdir: Path, pair: str, *, vmip_initiates: bool) -> None:
        super().__init__(workdir, "cp", None)
        self.pair = pair
        self.version = 4 if pair == "gateway-ipv4" else 6
        self.vmip_initiates = vmip_initiates

    def open(self) -> "ShippedPair":
        super().open()
        self.veth("vtcp-a", "vtcp-b")
        under_a, under_b, length = UNDERLAY[self.version]
        # IPv4 only: no IPv6 on the underlay at all, not even link-local.
        self.address(self.ns_a, "vtcp-a", f"{under_a}/{length}", ipv4_only=self.version == 4)
        self.address(self.ns_b, "vtcp-b", f"{under_b}/{length}", ipv4_only=self.version == 4)
        self.address(self.ns_b, "lo", f"{IN_B}/128")
        # The shipped files, relative paths intact.
        shutil.copytree(REPO / "configs" / "ike", self.workdir / "ike")
        for private in PRIVATE:
            os.chmod(self.workdir / "ike" / private, 0o600)
        pair_dir = self.workdir / "ike" / self.pair
        config = pair_dir / "vmip.toml"
        text = config.read_text()
        if not self.vmip_initiates:
            config.write_text(text.replace("initiate = true", "initiate = false"))
        charon = self.start_charon(None)
        env = dict(os.environ, SWANCTL_DIR=str(pair_dir))
        subprocess.run(["ip", "netns", "exec", self.ns_b, SWANCTL, "--load-all", "--clear",
                        "--file", str(pair_dir / "swanctl.conf"), "-u", charon.vici],
                       check=True, capture_output=True, text=True, timeout=20, env=env)
        self.start_node(config)
        return self

    def log(self) -> str:
        return (self.charon.log()[-3000:] if self.charon else "") + super().log()


@pytest.mark.parametrize("pair, vmip_initiates", [
    ("gateway-ipv4", True), ("gateway-ipv4", False), ("initiator", True),
    ("responder", False), ("certificates", True)])
def test_shipped_pair_establishes_and_carries_ipv6(tmp_path, pair: str,
                                                   vmip_initiates: bool) -> None:
    if CHARON is None or SWANCTL is None:
        pytest.skip(STRONGSWAN_MISSING)
    lab = ShippedPair(tmp_path, pair, vmip_initiates=vmip_initiates)
    try:
        lab.open()
        assert lab.charon is not None
        if not vmip_initiates:
            lab.charon.swanctl("--initiate", "--child", "site", timeout=30)

        def installed():
            listing = lab.charon.list_sas()
            return listing if "INSTALLED" in listing else None
        try:
            listing = wait_for(installed, "charon's CHILD_SA", timeout=25, interval=0.2)
        except AssertionError:
            raise AssertionError(lab.log()) from None
        under_a, under_b, _ = UNDERLAY[lab.version]
        # The IKE SA runs between the underlay addresses.
        assert f"local-host={under_b}" in listing and f"remote-host={under_a}" in listing, listing
        ours = {sa["direction"]: sa for sa in json.loads(netns_exec(
            lab.ns_a, sys.executable, "-m", "vmip", "sa", "list", "--json").stdout)
            if sa["origin"] == "ike"}
        assert ours["out"]["mode"] == "tunnel"
        # The SAD keys an IPv4 underlay's SAs at the IPv4-mapped addresses.
        destination = ipaddress.IPv6Address(ours["out"]["dst"])
        assert str(destination.ipv4_mapped or destination) == under_b, ours["out"]
        assert f"{ours['out']['spi']:08x}" in listing and f"{ours['in']['spi']:08x}" in listing
        result = netns_exec(lab.ns_a, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", IN_B,
                            timeout=30)
        assert result.returncode == 0, result.stdout + lab.log()
        result = netns_exec(lab.ns_b, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-I",
                            IN_B, IN_A, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr + lab.log()
        # Serving the peer (as initiator or responder) logged no traceback.
        assert "Traceback" not in (tmp_path / "a.log").read_text()
    finally:
        lab.close()
