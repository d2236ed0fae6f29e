"""IKEv2 end to end: the lab on IKE-derived keys (``vmip lab start --keys ike``).

The scenarios of tests/lab/test_iro_lab.py (static keys) again, with every SA
negotiated by vmip's IKEv2: MN-HA IKE between the CoA and the HA (it follows
the CoA), MN-CN IKE from the HoA through the HA tunnel (draft appendix B),
MN-MN2 IKE between home addresses; plus a CHILD_SA rekey in the middle of a
handover and the CN's refusal of an MN-CN negotiation for a HoA that arrives
from elsewhere (draft §8.1.2).

SPIs are random here: the tests read them from ``vmip ike list`` at the
node that holds the SA.  Oracles: ping, iperf3's JSON report, the UDP echo
client/server of lab_support.py, tcpdump captures dissected by tshark.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lab_support import (
    CN,
    HA,
    HOA,
    MN2_WIFI_COA,
    MN_COA,
    access_links_captured,
    assert_no_hao_rh2_or_hoa_on_the_wire,
    assert_tcp_and_ping_survived,
    bound,
    events,
    lab_started,
    move,
    ping_and_tcp_mn_to_cn,
    ping_at,
    require,
    tshark,
    udp_echo_mn_to_cn,
    vmip_cli,
    vmip_json,
    wait_for,
)

from vmip.lab.netns import run_in

pytestmark = pytest.mark.root

IKE_PORT = 500


def ike_list(node: str) -> dict[str, Any]:
    return vmip_json(node, "ike", "list")


def ike_sa(node: str, name: str) -> dict[str, Any] | None:
    """The established IKE SA named *name* at *node* (config peer name), or None."""
    for row in ike_list(node)["sas"]:
        if row["name"] == name and row["state"] == "established":
            return row
    return None


def child(node: str, name: str, mode: str) -> dict[str, Any] | None:
    sa = ike_sa(node, name)
    if sa is None:
        return None
    return next((c for c in sa["children"] if c["mode"] == mode), None)


def sa_packets(node: str, spi: int) -> int:
    return sum(sa["packets"] for sa in vmip_json(node, "sa", "list") if sa["spi"] == spi)


def ha_tunnel_out_spi() -> int:
    """The HA's outbound tunnel SPI towards the MN (the MN-HA tunnel child at the HA)."""
    found = child("ha", "mn-wifi0", "tunnel") or child("ha", "mn-lte0", "tunnel")
    assert found is not None
    return found["spi_out"]


def mn_tunnel_out_spi() -> int:
    return child("mn", "ha", "tunnel")["spi_out"]


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    require("ping", "tcpdump", "tshark", "iperf3")
    with lab_started("--keys", "ike"):
        yield


# --- negotiation and registration ------------------------------------------------------------

def test_every_sa_of_the_lab_is_negotiated_by_ike(lab) -> None:
    for node in ("mn", "mn2"):
        wait_for(f"{node}: IKE SAs with the HA, the CN and the other MN",
                 lambda node=node: all(ike_sa(node, peer) for peer in
                             ("ha", "cn", "mn2" if node == "mn" else "mn")), timeout=30)
        # MN-HA: the MH pair (transport) and the payload tunnel (draft §7, appendix D).
        wait_for(f"{node}: MN-HA tunnel child", lambda node=node: child(node, "ha", "tunnel"))
        assert child(node, "ha", "transport") is not None
        assert child(node, "cn", "transport") is not None
    mn_ha = ike_sa("mn", "ha")
    # MN-HA IKE runs between the CoA and the HA (docs/design.md §8) ...
    assert mn_ha["local"].startswith(MN_COA["wifi0"] + "[")
    assert mn_ha["remote"].startswith(HA + "[")
    # ... MN-CN IKE from the HoA: the CN sees it come from the HoA (through the HA).
    assert ike_sa("mn", "cn")["local"].startswith(HOA["mn"] + "[")
    cn_side = ike_sa("cn", "mn")
    assert cn_side is not None and cn_side["remote"].startswith(HOA["mn"] + "[")
    assert cn_side["role"] == "responder"
    # The SPIs pair up across the nodes: what one receives on, the other sends on.
    mn_child, cn_child = child("mn", "cn", "transport"), child("cn", "mn", "transport")
    assert (mn_child["spi_in"], mn_child["spi_out"]) == (cn_child["spi_out"], cn_child["spi_in"])
    # No static SA anywhere: every SA in the SAD is one of the IKE children.
    for node in ("mn", "ha", "cn"):
        spis = {spi for row in ike_list(node)["sas"] for c in row["children"]
                for spi in (c["spi_in"], c["spi_out"])}
        installed = {sa["spi"] for sa in vmip_json(node, "sa", "list")
                     if sa.get("state", "mature") != "larval"}
        assert installed and installed <= spis, (node, installed - spis)


def test_mn_registers_with_the_ha_and_the_cn_with_aot(lab) -> None:
    for node, coa in (("mn", MN_COA["wifi0"]), ("mn2", MN2_WIFI_COA)):
        wait_for(f"{node} bound with its HA", lambda node=node, coa=coa: bound(node, HA, coa),
                 timeout=20)
        wait_for(f"{node} bound with the CN", lambda node=node, coa=coa: bound(node, CN, coa),
                 timeout=20)
    assert any(e["address"] == MN_COA["wifi0"] for e in events("mn", "AotResponseSent"))
    cache = vmip_json("cn", "bindings")["cn"]
    assert {(b["hoa"], b["coa"]) for b in cache["binding_cache"]} >= {
        (HOA["mn"], MN_COA["wifi0"]), (HOA["mn2"], MN2_WIFI_COA)}
    ha_cache = vmip_json("ha", "bindings")["ha"]["binding_cache"]
    assert {(b["hoa"], b["coa"]) for b in ha_cache} == {
        (HOA["mn"], MN_COA["wifi0"]), (HOA["mn2"], MN2_WIFI_COA)}


def test_ipsec_data_goes_direct_not_through_the_ha(lab) -> None:
    cn_in = child("cn", "mn", "transport")["spi_in"]
    tunnel = ha_tunnel_out_spi()
    tunnel_before, direct_before = sa_packets("ha", tunnel), sa_packets("cn", cn_in)
    assert ping_at(CN, count=5).returncode == 0
    assert sa_packets("cn", cn_in) - direct_before >= 5
    # None of the pings went through the HA.  The tunnel may still carry an
    # IKE message meanwhile (a liveness check between the CN and the HoA,
    # every dpd_interval), so the test allows fewer packets than pings, not zero.
    assert sa_packets("ha", tunnel) - tunnel_before < 5
    locators = {row["address"]: row for row in vmip_json("cn", "locators")}
    assert MN_COA["wifi0"] in locators and HOA["mn"] not in locators


def test_cn_reaches_the_hoa_from_its_side(lab) -> None:
    assert ping_at(HOA["mn"], count=3, node="cn").returncode == 0


def test_clear_text_udp_echo_stays_on_the_ha_path(lab) -> None:
    count = 5
    cn_in = child("cn", "mn", "transport")["spi_in"]
    mn_tunnel = mn_tunnel_out_spi()
    tunnel_before, direct_before = sa_packets("mn", mn_tunnel), sa_packets("cn", cn_in)
    udp_echo_mn_to_cn(count)
    # Into the IKE-made tunnel child at its configured priority (15, before the
    # protect-all MN-CN policy at 20), never the MN-CN child.
    assert sa_packets("mn", mn_tunnel) - tunnel_before >= count
    assert sa_packets("cn", cn_in) == direct_before


def test_mn_and_mn2_register_with_each_other_and_talk_direct(lab) -> None:
    wait_for("mn bound with mn2", lambda: bound("mn", HOA["mn2"], MN_COA["wifi0"]), timeout=20)
    wait_for("mn2 bound with mn", lambda: bound("mn2", HOA["mn"], MN2_WIFI_COA), timeout=20)
    mn2_in = child("mn2", "mn", "transport")["spi_in"]
    tunnel = ha_tunnel_out_spi()
    tunnel_before, direct_before = sa_packets("ha", tunnel), sa_packets("mn2", mn2_in)
    assert ping_at(HOA["mn2"], count=5).returncode == 0
    assert sa_packets("mn2", mn2_in) - direct_before >= 5
    assert sa_packets("ha", tunnel) == tunnel_before


# --- §8.1.2: a HoA that arrives from elsewhere ----------------------------------------------

PROBE = """
import socket, sys, time
from vmip.ike.ikesa import IkeSa, IkeSaConfig, Role
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp
import ipaddress
src, dst, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sa = IkeSa(IkeSaConfig(psk=b"p" * 32), Role.INITIATOR, (src, 500), (dst, 500), time.monotonic())
sa.initiate(time.monotonic())
(data, _addr), = sa.datagrams_to_send(time.monotonic())
s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
udp = build_udp(500, 500, data, s, d)
wire = build_ipv6_header(s, d, 17, len(udp)) + udp
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.sendto(wire, (host, port))
print(len(data))
"""


def cn_underlay() -> tuple[str, int]:
    from vmip.lab.topology import default_plan

    plan = default_plan()
    return str(plan.node("cn").links[0].node_ipv4.ip), plan.overlay_port


def test_cn_refuses_mn_cn_ike_for_a_hoa_that_does_not_come_through_the_ha(lab) -> None:
    host, port = cn_underlay()
    before = ike_list("cn")
    sas_before = {(row["spi_i"], row["name"]) for row in before["sas"]}
    # The HoA sent straight from the MN's access link (not through the HA),
    # and the CoA naming itself: neither may start an IKE SA with the CN.
    for source in (HOA["mn"], MN_COA["wifi0"]):
        result = run_in("vmip-mn", [sys.executable, "-c", PROBE, source, CN, host, str(port)],
                        timeout=30)
        assert result.returncode == 0, result.stderr
    def refusals() -> dict | None:
        c = ike_list("cn")["counters"]
        was = before["counters"]
        grew = (c.get("ike_refused_wrong_arrival", 0) > was.get("ike_refused_wrong_arrival", 0)
                and c.get("ike_refused_unknown_peer", 0) > was.get("ike_refused_unknown_peer", 0))
        return c if grew else None

    counters = wait_for("the CN's refusals", refusals)
    assert counters
    after = ike_list("cn")
    new = {(row["spi_i"], row["name"]) for row in after["sas"]} - sas_before
    assert not new, new
    # The genuine MN-CN IKE SA (through the HA) is still there.
    assert ike_sa("cn", "mn") is not None


# --- movement, a rekey in the middle, the captures --------------------------------------------

@pytest.fixture(scope="module")
def handover(lab, tmp_path_factory) -> dict[str, Any]:
    """wifi -> lte (CHILD_SA rekeys there) -> wifi under ping and iperf3, links captured."""
    directory = tmp_path_factory.mktemp("ike-captures")
    before = {"ha": (child("mn", "ha", "transport"), child("mn", "ha", "tunnel")),
              "cn": child("mn", "cn", "transport")}
    rekeyed_before = ike_list("mn")["counters"].get("child_sa_rekeyed", 0)
    followed = None
    with access_links_captured(directory) as captures:
        with ping_and_tcp_mn_to_cn(iperf_port=5312) as traffic:
            time.sleep(1.5)  # the stream runs on wifi first
            move("lte0", timeout=20)
            # The MN-HA IKE SA follows the CoA: the HA now talks to the lte CoA.
            followed = wait_for("the HA's IKE SA to follow the CoA", lambda: next(
                (row for row in ike_list("ha")["sas"] if row["state"] == "established"
                 and row["remote"].startswith(MN_COA["lte0"] + "[")), None))
            # CHILD_SA rekeys (RFC 7296 §2.8) while on lte, under load.
            for peer in ("ha", "cn"):
                result = vmip_cli("lab", "exec", "mn", "--", sys.executable, "-m", "vmip",
                                  "ike", "rekey", peer, timeout=30)
                assert result.returncode == 0, result.stderr
            wait_for("three CHILD_SAs rekeyed", lambda: ike_list("mn")["counters"].get(
                "child_sa_rekeyed", 0) - rekeyed_before >= 3)
            time.sleep(1.0)  # traffic on lte with the new SAs
            move("wifi0", timeout=20)
        time.sleep(0.5)
    after = {"ha": (child("mn", "ha", "transport"), child("mn", "ha", "tunnel")),
             "cn": child("mn", "cn", "transport")}
    return {"captures": captures, "iperf": json.loads(traffic["iperf"]), "ping": traffic["ping"],
            "before": before, "after": after, "followed": followed}


def test_handover_wifi_lte_wifi_with_a_rekey_keeps_tcp_and_ping(handover) -> None:
    assert_tcp_and_ping_survived(handover)


def test_rekey_replaced_every_child_and_the_old_sas_are_gone(handover) -> None:
    before, after = handover["before"], handover["after"]
    old = [before["ha"][0], before["ha"][1], before["cn"]]
    new = [after["ha"][0], after["ha"][1], after["cn"]]
    assert all(c is not None for c in old + new)
    for was, now in zip(old, new):
        assert {was["spi_in"], was["spi_out"]}.isdisjoint({now["spi_in"], now["spi_out"]})
    # RFC 7296 §2.8: the rekey initiator deletes the old SAs, at both ends.
    old_spis = {spi for c in old for spi in (c["spi_in"], c["spi_out"])}
    for node in ("mn", "ha", "cn"):
        assert not old_spis & {sa["spi"] for sa in vmip_json(node, "sa", "list")}, node
    # Back on wifi, bound everywhere, and data still direct on the new SAs.
    assert bound("mn", HA, MN_COA["wifi0"]) and bound("mn", CN, MN_COA["wifi0"])
    assert ping_at(CN, count=3).returncode == 0


def test_mn_ha_ike_followed_the_coa_and_came_back(handover) -> None:
    assert handover["followed"] is not None
    wait_for("the HA's IKE SA back on the wifi CoA", lambda: any(
        row["state"] == "established" and row["remote"].startswith(MN_COA["wifi0"] + "[")
        for row in ike_list("ha")["sas"]))
    # One IKE SA per MN at the HA: it moved, nothing was re-established.
    established = [row for row in ike_list("ha")["sas"] if row["state"] == "established"]
    assert len(established) == 2, established


def test_capture_on_the_foreign_links_shows_iro_only_and_ike_only_from_the_coa(handover) -> None:
    for link, capture in handover["captures"].items():
        assert_no_hao_rh2_or_hoa_on_the_wire(link, capture)
    # IKE in clear on the foreign links is MN-HA only, between a CoA and the HA;
    # MN-CN IKE travels inside the ESP tunnel (draft appendix B).
    lte = tshark(handover["captures"]["mn-lte"], ["ipv6.src", "ipv6.dst", "udp.dstport"],
                 display_filter="isakmp")
    assert lte, "the rekeys on lte sent no IKE there"
    for src, dst, _ports in lte:
        pair = {src.split(",")[0], dst.split(",")[0]}
        assert pair == {MN_COA["lte0"], HA}, pair


def test_new_lte_coa_was_proven_with_aot(handover) -> None:
    # The lte CoA was new to the CN: it challenged it and the MN answered, by an
    # early test while on wifi (draft §4.5.2) or at the move (§3.3).
    assert any(e["address"] == MN_COA["lte0"] for e in events("mn", "AotResponseSent"))
