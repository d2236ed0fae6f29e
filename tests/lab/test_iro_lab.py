"""MIPv6 + IRO end to end in the lab, static keys (docs/iro.md).

One lab for the module (``vmip lab start``; ``lab down`` in the finalizer,
which also proves nothing is left).  Tests run in file order on the same
nodes.  State is read from the nodes' control sockets (``vmip bindings``,
``vmip counters``, ``vmip sa list``, ``vmip events``), polled with a bound.

Oracles: ping, iperf3's JSON report, a tiny UDP echo client/server (in
lab_support.py), and tcpdump captures of the MN's access links dissected
by tshark with the keys ``vmip keys --wireshark`` exports (draft appendix
I: no HAO, no type 2 routing header, no HoA on the foreign link).
"""

from __future__ import annotations

import json
import subprocess
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

pytestmark = pytest.mark.root

# The SPI plan (configs/README.md), restated.
MN_CN_OUT, MN_CN_IN, MN_TUNNEL_OUT, HA_TUNNEL_OUT, MN_MN2 = 0x1301, 0x1302, 0x1201, 0x1202, 0x1401
# RFC 6275 / draft §4.4: MH types.
BU, BA, AOTC, AOTR = 5, 6, 31, 32


def sa_packets(node: str, spi: int) -> int:
    return next(sa["packets"] for sa in vmip_json(node, "sa", "list") if sa["spi"] == spi)


@pytest.fixture(scope="module", params=["udp", "raw"])
def lab(request) -> Iterator[str]:
    """The started lab, once per driver: the overlay (udp) and native IPv6 (raw);
    the value is the driver."""
    require("ping", "tcpdump", "tshark", "iperf3")
    with lab_started("--driver", request.param):
        yield request.param


# --- registration --------------------------------------------------------------------------

def test_mn_registers_with_the_ha_and_the_cn_with_aot(lab) -> None:
    for node, coa in (("mn", MN_COA["wifi0"]), ("mn2", MN2_WIFI_COA)):
        wait_for(f"{node} bound with its HA", lambda node=node, coa=coa: bound(node, HA, coa))
        wait_for(f"{node} bound with the CN", lambda node=node, coa=coa: bound(node, CN, coa))
    # MN-CN with AOT (draft §3.3): the CN challenged the CoA, the MN answered.
    assert any(e["address"] == MN_COA["wifi0"] for e in events("mn", "AotResponseSent"))
    cache = vmip_json("cn", "bindings")["cn"]
    assert {(b["hoa"], b["coa"]) for b in cache["binding_cache"]} >= {
        (HOA["mn"], MN_COA["wifi0"]), (HOA["mn2"], MN2_WIFI_COA)}
    assert cache["proofs"] >= 2
    # The HA's binding cache holds both MNs (RFC 6275 §10.3.1).
    ha_cache = vmip_json("ha", "bindings")["ha"]["binding_cache"]
    assert {(b["hoa"], b["coa"]) for b in ha_cache} == {
        (HOA["mn"], MN_COA["wifi0"]), (HOA["mn2"], MN2_WIFI_COA)}


def test_ipsec_data_goes_direct_not_through_the_ha(lab) -> None:
    tunnel_before = sa_packets("ha", MN_TUNNEL_OUT)
    direct_before = sa_packets("cn", MN_CN_OUT)
    assert ping_at(CN, count=5).returncode == 0
    assert sa_packets("cn", MN_CN_OUT) - direct_before >= 5
    # Nothing of it went through the HA's tunnel (ESP MN-CN is direct, §3.6).
    assert sa_packets("ha", MN_TUNNEL_OUT) == tunnel_before
    locators = {row["address"]: row for row in vmip_json("cn", "locators")}
    assert MN_COA["wifi0"] in locators and HOA["mn"] not in locators


def test_cn_reaches_the_hoa_from_its_side(lab) -> None:
    assert ping_at(HOA["mn"], count=3, node="cn").returncode == 0


def test_clear_text_udp_echo_stays_on_the_ha_path(lab) -> None:
    """The lab's clear-text class (docs/iro.md): UDP port 7 bypasses end-to-end IPsec."""
    count = 5
    tunnel_before = sa_packets("ha", MN_TUNNEL_OUT)
    direct_before = sa_packets("cn", MN_CN_OUT)
    answers_before = sa_packets("ha", HA_TUNNEL_OUT)
    forwarded_before = vmip_json("ha", "counters")["node"].get("forwarded", 0)
    udp_echo_mn_to_cn(count)
    # Through the HA tunnel both ways, forwarded in clear by the HA; never the MN-CN SA.
    assert sa_packets("ha", MN_TUNNEL_OUT) - tunnel_before >= count
    assert sa_packets("ha", HA_TUNNEL_OUT) - answers_before >= count
    # The HA's vmip forwards the MN's echoes out of the tunnel; the answers
    # reach it inside the overlay (udp), or as native IPv6 its kernel routes
    # into the TUN (raw), as a home agent's home link does.
    forwarded = vmip_json("ha", "counters")["node"]["forwarded"] - forwarded_before
    assert forwarded >= (2 * count if lab == "udp" else count)
    assert sa_packets("cn", MN_CN_OUT) == direct_before


def test_mn_and_mn2_register_with_each_other_and_talk_direct(lab) -> None:
    wait_for("mn bound with mn2", lambda: bound("mn", HOA["mn2"], MN_COA["wifi0"]))
    wait_for("mn2 bound with mn", lambda: bound("mn2", HOA["mn"], MN2_WIFI_COA))
    tunnel_before = sa_packets("ha", MN_TUNNEL_OUT)
    direct_before = sa_packets("mn2", MN_MN2)
    assert ping_at(HOA["mn2"], count=5).returncode == 0
    assert sa_packets("mn2", MN_MN2) - direct_before >= 5
    assert sa_packets("ha", MN_TUNNEL_OUT) == tunnel_before  # not via the HA


# --- movement and the captures --------------------------------------------------------------

@pytest.fixture(scope="module")
def handover(lab, tmp_path_factory) -> dict[str, Any]:
    """wifi -> lte -> wifi under ping and iperf3, with both access links captured."""
    with access_links_captured(tmp_path_factory.mktemp("iro-captures"), lab) as captures:
        aotc_before = len(events("cn", "AotChallengeSent"))
        with ping_and_tcp_mn_to_cn(iperf_port=5311) as traffic:
            time.sleep(1.5)  # let the stream run on wifi before the first forced move
            move("lte0")
            lte_at = time.monotonic()
            aotc_after_lte = len(events("cn", "AotChallengeSent"))
            time.sleep(max(0.0, 2.0 - (time.monotonic() - lte_at)))  # traffic on lte
            move("wifi0")
            aotc_after_wifi = len(events("cn", "AotChallengeSent"))
        # Let the last BA leave before the captures close.
        time.sleep(0.5)
    return {"captures": captures, "iperf": json.loads(traffic["iperf"]), "ping": traffic["ping"],
            "aotc": (aotc_before, aotc_after_lte, aotc_after_wifi),
            "rows": [line for line in vmip_cli(
                "lab", "exec", "mn", "--", sys.executable, "-m", "vmip", "keys",
                "--wireshark").stdout.splitlines() if line.strip()]}


def test_handover_wifi_lte_wifi_keeps_tcp_and_ping(handover) -> None:
    assert_tcp_and_ping_survived(handover)


def test_new_coa_is_proven_with_aot_and_a_proven_coa_needs_bu_ba_alone(handover) -> None:
    before, after_lte, after_wifi = handover["aotc"]
    # lte's CoA was proven by an early test over lte while the MN was on wifi
    # (draft §4.5.2), wifi's at registration: neither move needed a challenge.
    early = [e for e in events("cn", "AotChallengeSent")
             if e.get("purpose") == "early-test" and e.get("address") == MN_COA["lte0"]]
    assert early, "the standby lte CoA was not proven by an early test"
    assert after_lte == before
    assert after_wifi == after_lte


def test_capture_on_the_foreign_links_shows_iro_only(handover) -> None:
    rows = handover["rows"]
    assert rows
    seen: dict[str, set[int]] = {}
    for link, capture in handover["captures"].items():
        assert_no_hao_rh2_or_hoa_on_the_wire(link, capture)
        # Signalling is small: decrypt the packets under 600 bytes only (the
        # bulk TCP data would take tshark minutes to decrypt).
        small = capture.with_suffix(".small.pcap")
        subprocess.run(["tcpdump", "-r", str(capture), "-w", str(small), "less", "600"],
                       check=True, capture_output=True, timeout=60)
        packets = tshark(small, ["ipv6.src", "ipv6.dst", "esp.spi", "mip6.mhtype",
                                 "ipv6.opt.type", "ipv6.routing.type", "esp.icv_good"], rows)
        assert packets, f"no signalling captured on {link}"
        types: set[int] = set()
        direct: set[tuple[str, str]] = set()
        for src, dst, spi, mhtypes, options, routing, icv in packets:
            outer = (src.split(",")[0], dst.split(",")[0])
            assert HOA["mn"] not in outer, (link, outer, spi)
            assert all(value in ("1", "True") for value in icv.split(",") if value), icv
            types |= {int(t) for t in mhtypes.split(",") if t}
            if spi and int(spi.split(",")[0], 16) == MN_CN_OUT:
                direct.add(outer)
        seen[link] = types
        # The MN's pings to the CN: ESP straight from this link's CoA to the
        # CN once bound (draft §3.6), never through the HA.
        coa = MN_COA["wifi0" if link == "mn-wifi" else "lte0"]
        assert direct == {(coa, CN)}, (link, direct)
    # Each move is a BU and a BA on the new link.  AOT messages may show on
    # either link too, but only as early tests: the MN proves its standby
    # CoA to the CN and to mn2 over that link before it moves there (draft
    # §4.5.2).  That the moves themselves needed no challenge is
    # test_new_coa_is_proven_with_aot_and_a_proven_coa_needs_bu_ba_alone.
    assert {BU, BA} <= seen["mn-lte"]
    assert {BU, BA} <= seen["mn-wifi"]


def test_cn_mh_drops_are_counted_at_the_node(lab) -> None:
    """Every CN drop reason of draft §4.5 is a counter readable at the node (vmip bindings)."""
    status = vmip_json("cn", "bindings")
    assert isinstance(status["cn"]["counters"], dict)
    # In a healthy lab none of the refusals happened.
    refusals = {"bu_unknown_hoa", "aotr_wrong_nonce", "aotr_unknown_address",
                "bu_altcoa_mismatch", "aoto_unregistered"}
    assert not refusals & set(status["cn"]["counters"])
