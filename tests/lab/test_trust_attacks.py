"""Attacks on the trust boundary of running nodes, from a namespace that plays the attacker.

The attacker's host (namespace ``vt<pid>-evil``, 203.0.113.66 and
2001:db8:66::66) hangs off the lab's router like any host on the visited
network: it reaches the HA and the CN over the underlay, from an endpoint of
its own.  It holds no keys.

An on-path attacker can hold back one of an MN's ESP datagrams (so the
receiver has not seen its sequence number yet) and re-send it later from
its own endpoint with other on-wire addresses: the ICV covers neither
(RFC 4303 §2, §3.3.3).  The tests make such a datagram with the MN's lab key
and a sequence number ahead of what the MN has sent (a datagram the MN
would have sent, that nobody received), then hand it to the attacker's
socket: byte for byte what the attacker would send.

What must hold (docs/security.md):
- a locator moves only for an address the authenticating SA vouches for,
  never for the CN's address (at the HA) or a home address (at the CN);
- the HA forwards nothing that the inbound SPD has not judged, and never a
  packet from a home address that did not come out of that MN's tunnel.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import pytest
from lab_support import CN, HOA, bound, lab_started, vmip_json, wait_for

from vmip.config import load_config
from vmip.ipsec.esp import EspSA, transport_encap, tunnel_encap
from vmip.lab.netns import entered
from vmip.node.keying_policy import static_keys
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp

pytestmark = pytest.mark.root

LAB_RUN = Path("/run/vmip-lab")
HA_UNDERLAY, CN_UNDERLAY, OVERLAY_PORT = "192.0.2.2", "192.0.2.18", 6275
HA_OVERLAY = "2001:db8:100::1"
MN_WIFI_COA = "2001:db8:31::2"
#: The attacker's host, one veth from the router (documentation prefixes only).
EVIL4 = {"router": "203.0.113.65", "evil": "203.0.113.66"}
EVIL6 = {"router": "2001:db8:66::1", "evil": "2001:db8:66::66"}
EVIL_PORT = 40066
#: Sequence numbers the forged datagrams use: well past what the MN has sent.
SEQ_LEAD = 700
#: The lab's clear-text class: UDP echo, port 7, from the home prefix to the CN.
CLEAR_UDP_PORT = 7


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    """The lab with its nodes running, the MN bound, and the attacker's namespace."""
    evil = f"vt{os.getpid()}-evil"
    with lab_started():
        try:
            _ip("netns", "add", evil)
            _ip("-n", "vmip-net", "link", "add", "evil0", "type", "veth", "peer", "name",
                "eth0", "netns", evil)
            for ns, dev, side in (("vmip-net", "evil0", "router"), (evil, "eth0", "evil")):
                _ip("-n", ns, "addr", "add", f"{EVIL4[side]}/28", "dev", dev)
                _ip("-n", ns, "addr", "add", f"{EVIL6[side]}/64", "dev", dev, "nodad")
                _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", evil, "link", "set", "lo", "up")
            _ip("-n", evil, "route", "add", "default", "via", EVIL4["router"])
            wait_for("the MN bound with the HA and the CN",
                     lambda: bound("mn", HA_OVERLAY, MN_WIFI_COA) and bound("mn", CN, MN_WIFI_COA))
            yield evil
        finally:
            subprocess.run(["ip", "netns", "del", evil], check=False, capture_output=True,
                           timeout=10)


class HeldBack:
    """Datagrams the MN would send on one of its SAs, never received by the peer."""

    def __init__(self, sa_name: str) -> None:
        config = load_config(LAB_RUN / "mn" / "mn.toml")
        params = static_keys(config).sas[sa_name]
        sent = next(row["packets"] for row in vmip_json("mn", "sa", "list")
                    if row["name"] == sa_name)
        self.sa = EspSA(params, time.monotonic())
        self.sa.seq = sent + SEQ_LEAD

    def tunnelled(self, inner: bytes, *, outer_src: str) -> bytes:
        """Tunnel mode: the SA names the outer addresses; the attacker rewrites the source."""
        packet = tunnel_encap(inner, self.sa, time.monotonic())
        assert packet is not None, self.sa.drops
        return packet[:8] + IPv6Address(outer_src).packed + packet[24:]

    def transport(self, inner: bytes, *, onwire_src: str) -> bytes:
        packet = transport_encap(inner, self.sa, time.monotonic())
        assert packet is not None, self.sa.drops
        return packet[:8] + IPv6Address(onwire_src).packed + packet[24:]


def udp_packet(src: str, dst: str, dst_port: int, payload: bytes) -> bytes:
    """An IPv6 packet carrying one UDP datagram (checksum over *src*/*dst*)."""
    src_packed, dst_packed = IPv6Address(src).packed, IPv6Address(dst).packed
    segment = build_udp(40000, dst_port, payload, src_packed, dst_packed)
    return build_ipv6_header(src_packed, dst_packed, 17, len(segment)) + segment


def send_as_attacker(evil: str, wire: bytes, underlay_dst: str) -> None:
    """The overlay datagram (one on-wire IPv6 packet in UDP) from the attacker's own endpoint."""
    with entered(evil):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((EVIL4["evil"], EVIL_PORT))
        sock.sendto(wire, (underlay_dst, OVERLAY_PORT))


def locator(node: str, address: str) -> dict[str, Any]:
    """The row of *node*'s locator table that *address* would use: learned /128 first."""
    rows = vmip_json(node, "locators")
    learned = [r for r in rows if r["source"] == "learned" and r["address"] == address]
    if learned:
        return learned[0]
    static = [r for r in rows if r["source"] == "static"
              and IPv6Address(address) in _network(r["address"])]
    return max(static, key=lambda r: _network(r["address"]).prefixlen)


def _network(text: str):
    from ipaddress import IPv6Network
    return IPv6Network(text if "/" in text else f"{text}/128")


def counters(node: str) -> dict[str, int]:
    return vmip_json(node, "counters")["node"]


def sa_packets(node: str, name: str) -> int:
    return next(row["packets"] for row in vmip_json(node, "sa", "list") if row["name"] == name)


def test_ha_does_not_move_the_cns_locator_for_a_tunnel_datagram_from_elsewhere(lab) -> None:
    """A held-back MN->HA tunnel datagram, re-sent from the attacker with the
    CN's address as on-wire source: the HA delivers the authentic payload
    but its locator for the CN stays where the config put it."""
    before = locator("ha", CN)
    assert before["endpoint"] == f"{CN_UNDERLAY}:{OVERLAY_PORT}"
    held = HeldBack("mn-ha-tunnel-out")
    inner = udp_packet(HOA["mn"], CN, CLEAR_UDP_PORT, b"held back")
    authenticated = sa_packets("ha", "mn-tunnel-in")
    seen = refusals("ha")
    send_as_attacker(lab, held.tunnelled(inner, outer_src=CN), HA_UNDERLAY)
    # The datagram is authentic: the HA's tunnel SA takes it ...
    wait_for("the HA authenticating the datagram",
             lambda: sa_packets("ha", "mn-tunnel-in") > authenticated)
    # ... and still the CN's locator does not move, and the HA says why.
    after = locator("ha", CN)
    assert after["endpoint"] == before["endpoint"] and after["source"] == "static", after
    assert refusals("ha") > seen


def test_cn_does_not_learn_a_locator_for_a_home_address(lab) -> None:
    """A held-back MN->CN datagram re-sent with the HoA as on-wire source:
    the HoA is reached through the HA (the CN's static home prefix), never
    at the attacker's endpoint."""
    before = locator("cn", HOA["mn"])
    held = HeldBack("mn-cn-out")
    inner = udp_packet(HOA["mn"], CN, 9, b"held back")
    authenticated = sa_packets("cn", "mn-in")
    seen = refusals("cn")
    send_as_attacker(lab, held.transport(inner, onwire_src=HOA["mn"]), CN_UNDERLAY)
    wait_for("the CN authenticating the datagram",
             lambda: sa_packets("cn", "mn-in") > authenticated)
    after = locator("cn", HOA["mn"])
    assert after["source"] == "static" and after["endpoint"] == before["endpoint"], after
    assert refusals("cn") > seen


def refusals(node: str) -> int:
    """Locator moves *node* refused: not vouched for by the SA, or refused by the table."""
    return sum(v for k, v in counters(node).items() if k.startswith("locator_"))


def test_ha_is_no_relay_for_a_spoofed_home_address(lab) -> None:
    """Clear UDP from the MN's HoA to the CN, sent to the HA's overlay port
    by a stranger: the CN would take it (clear-text class from the home
    prefix), so the HA must not forward it (RFC 4301 §5.2, RFC 6275 §10.4.5)."""
    with entered("vmip-cn"):
        listener = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with listener:
        listener.bind((CN, CLEAR_UDP_PORT))
        listener.settimeout(0)
        seen = counters("ha").get("fwd_drop_home_source", 0)
        send_as_attacker(lab, udp_packet(HOA["mn"], CN, CLEAR_UDP_PORT, b"spoofed"), HA_UNDERLAY)
        # A genuine packet of the same class after it, through the MN's tunnel:
        # once it is in, anything the HA forwarded before it is in too.
        with entered("vmip-mn"):
            sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        with sender:
            sender.bind((HOA["mn"], 0))
            sender.sendto(b"genuine", (CN, CLEAR_UDP_PORT))
        listener.settimeout(10)
        payloads = [listener.recv(2048)]
        while payloads[-1] != b"genuine":
            payloads.append(listener.recv(2048))
    assert payloads == [b"genuine"], payloads
    assert counters("ha").get("fwd_drop_home_source", 0) > seen
    assert payloads == [b"genuine"], payloads
