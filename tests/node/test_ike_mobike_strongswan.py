"""MOBIKE (RFC 4555) against strongSwan: an IKE SA and its CHILD_SA survive
a move of vmip between two links (docs/ike.md "MOBIKE").

Namespaces ``vt<pid>-mb-a`` (vmip, two IPv4-only links: ``vtm1-a``
10.1.0.1 and ``vtm2-a`` 10.2.0.1, one rfc3948 link each) and ``-b`` (charon
with kernel-libipsec at 203.0.113.2 on lo, reached over either link; MOBIKE
on, as by default).  vmip initiates from link 1; ``vmip mn move m2`` moves
it: UPDATE_SA_ADDRESSES from 10.2.0.1, charon updates the IKE SA and the
CHILD_SA, link 1 goes down, and a ping that runs across the move goes on.
Oracle: charon's ``swanctl --list-sas`` (the new address, the same SPIs) and
the ping.  The second test is the other way round: charon (initiator) loses
its link and roams with UPDATE_SA_ADDRESSES, vmip (responder) follows.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from charonpair import _run, charon_pair
from pairlab import netns_exec, wait_for

pytestmark = pytest.mark.root

GATEWAY = "203.0.113.2"
LINKS = {"m1": ("vtm1-a", "vtm1-b", "10.1.0.1", "10.1.0.2"),
         "m2": ("vtm2-a", "vtm2-b", "10.2.0.1", "10.2.0.2")}
IN_A, IN_B = "2001:db8:a::1", "2001:db8:b::1"
PSK = b"vmip-mobike-interop-psk-01234567"


def vmip_config(workdir: Path) -> str:
    links = "".join(f"""
[[link]]
name = "{name}"
driver = "rfc3948"
interface = "{dev}"
bind = "{address}"
port = 4500
keepalive = 0
""" for name, (dev, _peer_dev, address, _peer) in LINKS.items())
    return f"""
[node]
name = "client"
roles = ["cn"]

[tun]
name = "vmip0"
addresses = ["{IN_A}/64"]
mtu = 1400
routes = ["{IN_B}/128"]
{links}
[[peer]]
name = "gateway"
prefixes = ["{GATEWAY}/32"]
endpoint = "{GATEWAY}:4500"
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
name = "gateway"
address = "{GATEWAY}"
initiate = true
"""


SWANCTL_CONF = f"""
connections {{
  roadwarrior {{
    version = 2
    local_addrs = {GATEWAY}
    remote_addrs = %any
    mobike = yes
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
  ike-any {{ secret = 0x{PSK.hex()} }}
}}
"""


@pytest.fixture
def mobike_pair(tmp_path):
    with charon_pair(tmp_path, "mb", PSK) as pair:
        for dev_a, dev_b, addr_a, addr_b in LINKS.values():
            pair.veth(dev_a, dev_b)
            pair.address(pair.ns_a, dev_a, f"{addr_a}/24", ipv4_only=True)
            pair.address(pair.ns_b, dev_b, f"{addr_b}/24", ipv4_only=True)
        # The gateway over either link; link 1 preferred.
        for metric, (dev_a, _dev_b, _addr_a, addr_b) in zip((100, 200), LINKS.values()):
            pair.run("ip", "-n", pair.ns_a, "route", "add", f"{GATEWAY}/32", "via", addr_b,
                     "dev", dev_a, "metric", str(metric))
        pair.address(pair.ns_b, "lo", f"{GATEWAY}/32")
        pair.address(pair.ns_b, "lo", f"{IN_B}/128")
        charon = pair.start_charon(SWANCTL_CONF)
        pair.start_node(vmip_config(tmp_path), wait_ready=False)
        yield pair.ns_a, pair.ns_b, charon, tmp_path


def _field(listing: str, name: str) -> list[str]:
    return re.findall(rf"\b{name}=(\S+?)[\s}}]", listing)


def test_ike_and_child_sa_survive_a_move_with_mobike(mobike_pair):
    ns_a, ns_b, charon, workdir = mobike_pair

    def log_tail() -> str:
        return charon.log()[-3000:] + (workdir / "a.log").read_text()[-4000:]

    def installed():
        listing = charon.list_sas()
        return listing if "INSTALLED" in listing else None
    try:
        before = wait_for(installed, "charon's CHILD_SA", timeout=25, interval=0.2)
    except AssertionError:
        raise AssertionError(log_tail()) from None
    assert _field(before, "remote-host") == ["10.1.0.1"], before
    ike = json.loads(netns_exec(ns_a, sys.executable, "-m", "vmip", "ike", "list",
                                "--json").stdout)["sas"][0]
    assert ike["mobike"] is True and ike["local"].startswith("10.1.0.1"), ike
    assert netns_exec(ns_a, "ping", "-6", "-c", "2", "-W", "2", IN_B).returncode == 0, log_tail()

    # Pings all along the move (10 per second for 6 s).
    pinger = subprocess.Popen(["ip", "netns", "exec", ns_a, "ping", "-6", "-i", "0.1", "-c", "60",
                               "-W", "1", IN_B], stdout=subprocess.PIPE, text=True)
    try:
        moved = netns_exec(ns_a, sys.executable, "-m", "vmip", "mn", "move", "m2", "--json")
        assert moved.returncode == 0, moved.stderr + log_tail()
        assert json.loads(moved.stdout)["ike_sas"] == 1
        after = wait_for(lambda: (lambda text: text if _field(text, "remote-host") == ["10.2.0.1"]
                                  else None)(charon.list_sas()),
                         "charon following to 10.2.0.1", timeout=15, interval=0.1)
        # The old link is gone: what still works goes over link 2.
        _run("ip", "-n", ns_a, "link", "set", LINKS["m1"][0], "down")
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait(5)
    received = int(re.search(r"(\d+) received", out).group(1))
    assert received >= 50, out + log_tail()
    # The same IKE SA (unique id, SPIs), now at the new address.  Its CHILD_SA
    # (same reqid) is updated in place by charon, then rekeyed: kernel-libipsec
    # cannot change an installed SA's addresses, so charon replaces it (vmip
    # migrated its own pair first and takes the rekey like any other).
    after = wait_for(lambda: (lambda text: text if len(_field(text, "reqid")) == 1 else None)(
        charon.list_sas()), "charon's one CHILD_SA after the move", timeout=15, interval=0.1)
    assert _field(after, "remote-host") == ["10.2.0.1"], after
    for name in ("initiator-spi", "responder-spi"):
        assert _field(after, name) == _field(before, name), (name, before, after)
    assert _field(after, "uniqueid")[0] == _field(before, "uniqueid")[0] == "1"
    assert _field(after, "reqid") == _field(before, "reqid") and "INSTALLED" in after
    ours = [sa for sa in json.loads(netns_exec(ns_a, sys.executable, "-m", "vmip", "sa", "list",
                                               "--json").stdout) if sa["origin"] == "ike"]
    assert {f"{sa['spi']:08x}" for sa in ours} == {*_field(after, "spi-in"),
                                                   *_field(after, "spi-out")}, (ours, after)
    result = netns_exec(ns_a, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", IN_B, timeout=30)
    assert result.returncode == 0, result.stdout + log_tail()
    result = netns_exec(ns_b, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-I", IN_B, IN_A,
                        timeout=30)
    assert result.returncode == 0, result.stdout + log_tail()
    ike = json.loads(netns_exec(ns_a, sys.executable, "-m", "vmip", "ike", "list",
                                "--json").stdout)["sas"][0]
    assert ike["local"].startswith("10.2.0.1") and ike["stats"]["mobike_updates_sent"] == 1, ike
    counters = json.loads(netns_exec(ns_a, sys.executable, "-m", "vmip", "ike", "list",
                                     "--json").stdout)["counters"]
    assert counters["mobike_sa_addresses_updated"] == 1, counters


# -- charon moves, vmip (responder) follows --------------------------------------------

VMIP_ADDRESS = "192.0.2.100"
#: charon's two links to vmip: (vmip's end, charon's end, vmip address, charon address).
CHARON_LINKS = (("vtr1-a", "vtr1-b", "10.3.0.1", "10.3.0.2"),
                ("vtr2-a", "vtr2-b", "10.4.0.1", "10.4.0.2"))


def responder_config(workdir: Path) -> str:
    peers = "".join(f"""
[[peer]]
name = "charon-{i}"
prefixes = ["{address}/32"]
endpoint = "{address}:4500"
framing = "rfc3948"
""" for i, (_a, _b, _mine, address) in enumerate(CHARON_LINKS))
    config = vmip_config(workdir)
    head, _links_and_peer = config.split("[[link]]", 1)
    tail = config[config.index("[keys]"):]
    return head + f"""[[link]]
name = "wan0"
driver = "rfc3948"
bind = "{VMIP_ADDRESS}"
port = 4500
keepalive = 0
{peers}
""" + tail.replace(f'address = "{GATEWAY}"', f'address = "{CHARON_LINKS[0][3]}"').replace(
        "initiate = true", "initiate = false")


RESPONDER_SWANCTL = SWANCTL_CONF.replace(f"local_addrs = {GATEWAY}\n", "").replace(
    "remote_addrs = %any", f"remote_addrs = {VMIP_ADDRESS}")


@pytest.fixture
def charon_moves(tmp_path):
    with charon_pair(tmp_path, "mr", PSK) as pair:
        pair.address(pair.ns_a, "lo", f"{VMIP_ADDRESS}/32")
        for metric, (dev_a, dev_b, addr_a, addr_b) in zip((100, 200), CHARON_LINKS):
            pair.veth(dev_a, dev_b)
            pair.address(pair.ns_a, dev_a, f"{addr_a}/24", ipv4_only=True)
            pair.address(pair.ns_b, dev_b, f"{addr_b}/24", ipv4_only=True)
            # charon reaches vmip over either link, link 1 first.
            pair.run("ip", "-n", pair.ns_b, "route", "add", f"{VMIP_ADDRESS}/32", "via", addr_a,
                     "dev", dev_b, "metric", str(metric))
        pair.address(pair.ns_b, "lo", f"{IN_B}/128")
        charon = pair.start_charon(RESPONDER_SWANCTL)
        pair.start_node(responder_config(tmp_path))
        yield pair.ns_a, pair.ns_b, charon, tmp_path


def test_vmip_responder_follows_charons_update_sa_addresses(charon_moves):
    """charon initiates from 10.3.0.2; its link goes down, it roams to 10.4.0.2 and
    sends UPDATE_SA_ADDRESSES (RFC 4555 §3.5): vmip checks the new address (charon
    echoes the COOKIE2 of vmip's INFORMATIONAL), then its IKE SA and CHILD_SAs follow."""
    ns_a, ns_b, charon, workdir = charon_moves

    def log_tail() -> str:
        return charon.log()[-3000:] + (workdir / "a.log").read_text()[-4000:]

    def vmip_sa():
        listing = json.loads(netns_exec(ns_a, sys.executable, "-m", "vmip", "ike", "list",
                                        "--json").stdout)
        return listing["sas"][0] if listing["sas"] else None

    charon.swanctl("--initiate", "--child", "net", timeout=30)
    before = wait_for(lambda: (lambda sa: sa if sa and sa["children"] else None)(vmip_sa()),
                      "vmip's IKE SA with its CHILD_SA", timeout=20)
    assert before["remote"].startswith("10.3.0.2") and before["mobike"], before
    assert netns_exec(ns_b, "ping", "-6", "-c", "2", "-W", "2", "-I", IN_B,
                      IN_A).returncode == 0, log_tail()
    # charon's link 1 goes away: it roams to its other address.
    _run("ip", "-n", ns_b, "link", "set", CHARON_LINKS[0][1], "down")
    try:
        after = wait_for(lambda: (lambda sa: sa if sa and sa["remote"].startswith("10.4.0.2")
                                  else None)(vmip_sa()), "vmip following charon to 10.4.0.2",
                         timeout=30, interval=0.2)
    except AssertionError:
        raise AssertionError(log_tail()) from None
    assert (after["spi_i"], after["spi_r"]) == (before["spi_i"], before["spi_r"])
    assert after["stats"]["mobike_updates_received"] >= 1, after
    # vmip moved only after charon answered its return routability check
    # (an INFORMATIONAL with COOKIE2, RFC 4555 §3.5) from 10.4.0.2.
    assert after["stats"]["mobike_checks_sent"] >= 1, after
    assert after["stats"]["mobike_addresses_verified"] == 1, after
    listing = charon.list_sas()
    assert _field(listing, "local-host") == ["10.4.0.2"], listing
    result = netns_exec(ns_a, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", IN_B, timeout=30)
    assert result.returncode == 0, result.stdout + log_tail()
    result = netns_exec(ns_b, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-I", IN_B, IN_A,
                        timeout=30)
    assert result.returncode == 0, result.stdout + log_tail()
