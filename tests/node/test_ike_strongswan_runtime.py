"""Interop through the runtime: a ``vmip run`` node (rfc3948 link, IKE over
UDP 500/4500 on its underlay address, tunnel mode, TS = overlay addresses)
against strongSwan charon with kernel-libipsec in the other namespace.

Oracle: charon's own SA list and the kernel's ping through both ends
(vmip's TUN on one side, libipsec's ipsec0 on the other).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from charonpair import charon_pair
from pairlab import netns_exec
from test_ike_overlay import wait_for

pytestmark = pytest.mark.root

UNDER_A, UNDER_B = "2001:db8:ff::1", "2001:db8:ff::2"
IN_A, IN_B = "2001:db8:a::1", "2001:db8:b::1"
PSK = b"vmip-runtime-interop-psk-0123456"


def vmip_config(workdir: Path) -> str:
    return f"""
[node]
name = "a"
roles = ["cn"]

[tun]
name = "vmip0"
addresses = ["{IN_A}/64"]
mtu = 1400
routes = ["{IN_B}/128"]

[[link]]
name = "esp0"
driver = "rfc3948"
bind = "{UNDER_A}"
port = 4500
keepalive = 0

[[peer]]
name = "charon"
prefixes = ["{UNDER_B}/128"]
endpoint = "[{UNDER_B}]:4500"
framing = "rfc3948"

[keys]
mode = "ike"

[[policy]]
name = "out"
direction = "out"
src = "{IN_A}/128"
dst = "{IN_B}/128"
action = "protect"

[[policy]]
name = "in"
direction = "in"
src = "{IN_B}/128"
dst = "{IN_A}/128"
action = "protect"

[ike]
psk_file = "{workdir}/ike.psk"
proposals = ["aes128gcm16-prfsha256-ecp256"]
esp_proposals = ["aes128gcm16"]

[[ike.peer]]
name = "charon"
address = "{UNDER_B}"
initiate = true
"""


SWANCTL_CONF = f"""
connections {{
  vmip {{
    version = 2
    local_addrs = {UNDER_B}
    remote_addrs = {UNDER_A}
    proposals = aes128gcm16-prfsha256-ecp256
    local {{ auth = psk }}
    remote {{ auth = psk }}
    children {{
      net {{
        local_ts = {IN_B}/128
        remote_ts = {IN_A}/128
        esp_proposals = aes128gcm16
        mode = tunnel
      }}
    }}
  }}
}}
secrets {{
  ike-vmip {{ secret = 0x{PSK.hex()} }}
}}
"""


@pytest.fixture
def interop(tmp_path):
    with charon_pair(tmp_path, "iks", PSK) as pair:
        pair.veth("vtiks-a", "vtiks-b")
        pair.address(pair.ns_a, "vtiks-a", f"{UNDER_A}/64")
        pair.address(pair.ns_b, "vtiks-b", f"{UNDER_B}/64")
        pair.address(pair.ns_b, "lo", f"{IN_B}/128")
        charon = pair.start_charon(SWANCTL_CONF)
        pair.start_node(vmip_config(tmp_path), wait_ready=False)
        yield pair.ns_a, pair.ns_b, charon, tmp_path


def test_vmip_runtime_with_strongswan_ping_both_ways(interop):
    ns_a, ns_b, charon, workdir = interop

    def charon_installed():
        listing = charon.list_sas()
        return listing if "INSTALLED" in listing else None
    try:
        listing = wait_for(charon_installed, "charon's CHILD_SA", timeout=25, interval=0.2)
    except AssertionError:
        raise AssertionError(charon.log()[-3000:] + (workdir / "a.log").read_text()[-3000:])
    import json
    sas = json.loads(netns_exec(ns_a, sys.executable, "-m", "vmip", "sa", "list", "--json").stdout)
    ours = {sa["direction"]: sa for sa in sas if sa["origin"] == "ike"}
    assert ours["out"]["mode"] == "tunnel"
    # charon lists SPIs in hex: ours out is its in and the other way round.
    assert f"{ours['out']['spi']:08x}" in listing and f"{ours['in']['spi']:08x}" in listing
    result = netns_exec(ns_a, "ping", "-c", "3", "-i", "0.2", "-W", "2", IN_B, timeout=30)
    assert result.returncode == 0, result.stdout + (workdir / "a.log").read_text()[-3000:]
    result = netns_exec(ns_b, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", IN_B, IN_A,
                        timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def _our_ike_sas(ns: str) -> list[dict]:
    import json
    result = netns_exec(ns, sys.executable, "-m", "vmip", "sa", "list", "--json")
    return [sa for sa in json.loads(result.stdout) if sa["origin"] == "ike"]


def test_tcp_rekeys_and_delete_through_the_runtime(interop):
    """TCP through the tunnel; CHILD_SA rekeys started by either side keep
    traffic flowing; charon's DELETE removes vmip's SAs."""
    import json
    import subprocess
    ns_a, ns_b, charon, workdir = interop
    wait_for(lambda: "INSTALLED" in charon.list_sas() or None, "charon's CHILD_SA",
             timeout=25, interval=0.2)
    # No "-1": a first try that connects but fails (the tunnel still settling)
    # must not end the server before the retry; it is killed at the end.
    server = subprocess.Popen(["ip", "netns", "exec", ns_b, "iperf3", "-s", "-B", IN_B],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = None
        for _ in range(50):   # until the server listens
            client = netns_exec(ns_a, "iperf3", "-c", IN_B, "-t", "2", "-J", timeout=30)
            if client.returncode == 0:
                break
            time.sleep(0.1)
        report = json.loads(client.stdout)
        assert "error" not in report, report.get("error")
        assert report["end"]["sum_received"]["bytes"] > 1_000_000
    finally:
        server.kill()
        server.wait(5)
    before = {sa["spi"] for sa in _our_ike_sas(ns_a)}
    # Rekey started by vmip, then by charon: new SPIs each time, ping all along.
    netns_exec(ns_a, sys.executable, "-m", "vmip", "ike", "rekey", "charon", check=True)
    wait_for(lambda: ({sa["spi"] for sa in _our_ike_sas(ns_a)} - before) or None,
             "vmip's rekeyed CHILD_SA", timeout=15, interval=0.1)
    assert netns_exec(ns_a, "ping", "-c", "2", "-i", "0.2", "-W", "2", IN_B).returncode == 0
    middle = {sa["spi"] for sa in _our_ike_sas(ns_a)}
    charon.swanctl("--rekey", "--child", "net")
    wait_for(lambda: ({sa["spi"] for sa in _our_ike_sas(ns_a)} - middle) or None,
             "charon's rekeyed CHILD_SA", timeout=15, interval=0.1)
    assert netns_exec(ns_a, "ping", "-c", "2", "-i", "0.2", "-W", "2", IN_B).returncode == 0
    # DELETE from charon: vmip removes the CHILD_SA and its policies.
    charon.swanctl("--terminate", "--ike", "vmip")
    wait_for(lambda: (not _our_ike_sas(ns_a)) or None, "vmip dropping the deleted SAs",
             timeout=15, interval=0.1)
