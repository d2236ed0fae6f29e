"""MIPv6 + IRO in the lab: MN and MN2 both moving (draft §5.2.2 example 4, MN-MN).

Both start on wifi, registered with each other (each is the other's CN).
While ``ping -i 0.05`` runs from MN's HoA to MN2's HoA, both move to lte at
once (two ``vmip mn move lte0`` in parallel), then both back to wifi.

What happens while both are on lte (measured in this lab; asserted as far as
it is deterministic).  Both lte CoAs sit behind the lab's IPv4 NAT
(203.0.113.1, replies only, no hairpinning), and each MN's wifi link stays
up after the move (only the CoA changes).  Depending on which MN moved first:

- an MN-MN packet to the peer's lte CoA goes to 203.0.113.1 from inside the
  NAT and the router drops it (UDP port unreachable): no NAT traversal
  between two NATed peers;
- one to the peer's old wifi CoA reaches the peer's wifi socket but fails
  the peer's IRO inbound rule (not its current CoA, draft §5.1.2): dropped;
- once the peer's BU for its new CoA arrived, the MN's CN role sends to the
  peer's HoA until that CoA is proven (draft §4.5.1, docs/mobility.md): the
  packets go to the peer's HA and through the HA's tunnel SA to the peer,
  which works behind the NAT (the tunnel follows the peer's NAT binding).

So part of the MN->MN2 traffic is lost while both are on lte (in the runs
made while writing this test: 24 to 35 of the pings sent during a 1.7-3 s
window), some of it takes MN2's HA, and none of it is ever reverse-tunnelled
by MN (its IRO packets carry the CoA, never the HoA, on the wire).  Once both are back on wifi the MN-MN
registrations complete (within BU retransmissions) and the traffic is direct
again, with no loss.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lab_support import CN, COA, HA, HOA, bound_in, lab_started, wait_for

from vmip.control.client import ControlClient
from vmip.control.paths import socket_path_for_netns
from vmip.lab.netns import popen_in, run_in

pytestmark = pytest.mark.root

# The SPI plan (configs/README.md), restated.
PEER = {"mn": "mn2", "mn2": "mn"}
MN_MN2 = 0x1401                   # MN -> MN2 ESP transport, counted at MN (out) and MN2 (in)
# The HA's tunnel SAs: from MN (in at the HA) and towards MN2 (out at the HA).
HA_TUNNEL_FROM_MN, HA_TUNNEL_TO_MN2 = 0x1201, 0x2202
PING_INTERVAL = 0.05
#: Allowed extra loss on top of the both-on-lte window: one BU retransmission
#: sequence (1 s + 2 s, RFC 6275 §11.8) after the return, and slack.
RECOVERY_S = 3.0


def control(node: str, command: str) -> Any:
    """A read on *node*'s control socket (what ``vmip bindings|sa list --json`` print).

    The socket is a Unix socket, reachable from the host namespace; this is
    much faster than a ``vmip lab exec`` per poll, which keeps the timing of
    the movement below tight.
    """
    return ControlClient(socket_path_for_netns(f"vmip-{node}"), timeout=5).call(command)


#: Poll faster than a ``vmip lab exec`` would allow: the movement's timing is measured.
POLL_S = 0.05


def bound(node: str, peer: str, coa: str) -> bool:
    return bound_in(control(node, "mobility")["mn"]["binding_update_list"], peer, coa)


def cached(node: str, hoa: str, coa: str) -> bool:
    """*node*'s CN role holds *hoa* bound to *coa* (it sends there, draft §4.5.1)."""
    cache = control(node, "mobility")["cn"]["binding_cache"]
    return any(e["hoa"] == hoa and e["coa"] == coa for e in cache)


def sa_packets(node: str, spi: int) -> int:
    return next(sa["packets"] for sa in control(node, "sa.list") if sa["spi"] == spi)


def ha_tunnels() -> tuple[int, int]:
    return sa_packets("ha", HA_TUNNEL_FROM_MN), sa_packets("ha", HA_TUNNEL_TO_MN2)


def mn_mn_registered(link: str) -> bool:
    """Both MNs bound with each other on *link*, each as MN and as CN."""
    return all(bound(node, HOA[PEER[node]], COA[node][link])
               and cached(node, HOA[PEER[node]], COA[PEER[node]][link]) for node in ("mn", "mn2"))


def move_both(link: str) -> None:
    """``vmip mn move`` on both MNs at the same moment (two processes)."""
    vmip = ["vmip"] if shutil.which("vmip") else [sys.executable, "-m", "vmip"]
    moves = [subprocess.Popen([sys.executable, "-m", "vmip", "lab", "exec", node, "--", *vmip,
                               "mn", "move", link, "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node in ("mn", "mn2")]
    for process in moves:
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
    for node in ("mn", "mn2"):
        # The HA and the CN are not behind the NAT: these registrations always complete.
        wait_for(f"{node} bound with its HA and the CN on {link}",
                 lambda node=node: bound(node, HA, COA[node][link])
                 and bound(node, CN, COA[node][link]), interval=POLL_S)


def ping_summary(output: str) -> tuple[int, int]:
    line = next(line for line in output.splitlines() if "packets transmitted" in line)
    words = line.split()
    return int(words[0]), int(words[3])


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    if shutil.which("ping") is None:
        pytest.skip("'ping' is missing (Debian package: apt-get install iputils-ping)")
    with lab_started():
        wait_for("MN and MN2 registered with each other on wifi",
                 lambda: mn_mn_registered("wifi0"), interval=POLL_S)
        yield


@pytest.fixture(scope="module")
def both_moving(lab) -> dict[str, Any]:
    """wifi -> lte -> wifi on both MNs at once, under a ping MN HoA -> MN2 HoA."""
    tunnels_before = ha_tunnels()
    count = 200  # 10 s at 20/s: longer than the whole movement below
    pinger = popen_in("vmip-mn", ["ping", "-n", "-q", "-i", str(PING_INTERVAL), "-c", str(count),
                                  "-W", "1", HOA["mn2"]], private_sysfs=False,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)  # traffic flowing direct on wifi before the moves
        lte_from = time.monotonic()
        move_both("lte0")
        time.sleep(1.0)  # both on lte: the NATed phase
        move_both("wifi0")
        lte_until = time.monotonic()
        wait_for("MN and MN2 registered with each other on wifi again",
                 lambda: mn_mn_registered("wifi0"), timeout=10, interval=POLL_S)
        recovered_after = time.monotonic() - lte_until
        output, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait(5)
    return {"ping": ping_summary(output), "lte_window": lte_until - lte_from,
            "recovered_after": recovered_after, "tunnels": (tunnels_before, ha_tunnels())}


def test_ping_loses_no_more_than_the_both_on_lte_window(both_moving) -> None:
    transmitted, received = both_moving["ping"]
    assert transmitted >= 150
    allowed = (both_moving["lte_window"] + RECOVERY_S) / PING_INTERVAL + 10
    assert transmitted - received <= allowed, both_moving


def test_mn_mn_data_takes_the_ha_only_towards_an_unproven_coa(both_moving) -> None:
    """Draft §4.5.1 and appendix J: MN never reverse-tunnels IRO traffic; MN2's HA
    carries only what MN sent while MN2's new CoA was not yet proven."""
    (from_mn_before, to_mn2_before), (from_mn_after, to_mn2_after) = both_moving["tunnels"]
    assert from_mn_after == from_mn_before
    window_pings = (both_moving["lte_window"] + RECOVERY_S) / PING_INTERVAL
    assert 0 <= to_mn2_after - to_mn2_before <= window_pings + 10


def test_both_bound_on_wifi_and_direct_again(both_moving) -> None:
    assert both_moving["recovered_after"] <= RECOVERY_S + 1
    assert mn_mn_registered("wifi0")
    tunnels_before = ha_tunnels()
    sent_before, received_before = sa_packets("mn", MN_MN2), sa_packets("mn2", MN_MN2)
    result = run_in("vmip-mn", ["ping", "-n", "-q", "-c", "20", "-i", "0.05", "-W", "1",
                                HOA["mn2"]], timeout=30)
    assert result.returncode == 0, result.stdout
    assert ping_summary(result.stdout) == (20, 20)  # no loss once both are home on wifi
    assert sa_packets("mn", MN_MN2) - sent_before >= 20
    assert sa_packets("mn2", MN_MN2) - received_before >= 20
    assert ha_tunnels() == tunnels_before  # direct, not via the HA
