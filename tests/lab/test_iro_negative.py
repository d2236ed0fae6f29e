"""IRO in the lab: the CN drops each bad IRO message the draft names, counts it, answers nothing.

Every bad message is a real on-wire packet: a Mobility Header (``vmip.wire.mh``)
in IPv6 from the MN's HoA to the CN, protected with the MN's own static key
under the MN->CN SA (as the MN's node would: ESP transport, draft §5.1.2
outbound rules after ESP), then its on-wire source replaced with the address
the case needs and sent as the overlay's UDP datagram to the CN's port 6275
from the MN's namespace, with the MN node's own IPv4 address and port (a raw
socket, so the CN's locator for the MN keeps pointing at the MN's node).

Each case then checks, on the CN's control socket: the counter of that drop
reason went up by one and no other CN counter moved; the packet was
authenticated (the inbound SA counted it) and reached the MH code (``rx_mh``);
the binding cache and the event log did not change; nothing was sent back
(the CN's outbound SAs to both MNs protected nothing: no BA, AOTC or AOTS).

Sequence numbers: the forged packets use numbers 500 above what the MN's
node has sent, inside the CN's 1024-wide replay window, so the MN's own
later packets are neither replays nor too old and the lab stays healthy.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import pytest
from lab_support import CN, COA, HOA, bound, events, lab_started, vmip_json, wait_for

from vmip.ipsec.esp import EspSA, transport_encap
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.lab.netns import entered
from vmip.wire.mh import (
    AlternateCareOfAddress,
    AotOffer,
    AotResponse,
    BindingUpdate,
    build_mh_packet,
)

pytestmark = pytest.mark.root

# The lab's underlay (docs/lab.md) and SPI plan (configs/README.md), restated.
CN_UNDERLAY, OVERLAY_PORT = "192.0.2.18", 6275
UNDERLAY = {"mn": {"wifi0": "192.0.2.34", "lte0": "198.51.100.2"}, "mn2": {"wifi0": "192.0.2.50"}}
# Our SA to the CN and the CN's SA back, per MN; the key file the lab wrote for ours.
TO_CN = {"mn": (0x1301, "mn-to-cn.key"), "mn2": (0x2301, "mn2-to-cn.key")}
FROM_CN = {"mn": 0x1302, "mn2": 0x2302}
SEQ_LEAD = 500
#: An on-wire address the CN never challenged (in the lte prefix, nobody's CoA).
NEVER_CHALLENGED = "2001:db8:32::99"
LAB_RUN = Path("/run/vmip-lab")
#: Forged packets so far, per MN: each needs a sequence number of its own (replay window).
FORGED: dict[str, int] = {"mn": 0, "mn2": 0}


def sa_row(node: str, spi: int) -> dict[str, Any]:
    return next(sa for sa in vmip_json(node, "sa", "list") if sa["spi"] == spi)


def cn_cache() -> dict[str, dict[str, Any]]:
    return {entry["hoa"]: entry for entry in vmip_json("cn", "bindings")["cn"]["binding_cache"]}


# --- forging -------------------------------------------------------------------------------

class Forger:
    """Protects MH with an MN's real MN->CN key, ahead of the MN node's sequence numbers."""

    def __init__(self, node: str, *, foreign_sa: tuple[int, str] | None = None) -> None:
        """*node*'s SA to the CN; or, with *foreign_sa* (SPI, HoA), an SA the CN never had."""
        if foreign_sa is None:
            spi, key_file = TO_CN[node]
            key = bytes.fromhex((LAB_RUN / node / "keys" / key_file).read_text().strip())
            self.hoa = HOA[node]
            # EspSA.protect uses seq + 1: well past the MN's live counter, and past
            # the numbers earlier forged packets used (the CN would drop a replay).
            first = sa_row(node, spi)["packets"] + SEQ_LEAD + FORGED[node]
        else:
            (spi, self.hoa), key, first = foreign_sa, os.urandom(20), 0
        params = SaParams(spi=spi, direction=Direction.OUT, src=IPv6Address(self.hoa),
                          dst=IPv6Address(CN), suite="aes128gcm16", enc_key=key,
                          mode=Mode.TRANSPORT, esn=False)
        self.node = node
        self.sa = EspSA(params, time.monotonic())
        self.sa.seq = first

    def packet(self, message: Any, *, onwire_src: str, checksum_src: str | None = None) -> bytes:
        """The on-wire IPv6 packet: MH in ESP, then the IRO outbound remap of the source.

        The MH checksum covers the SA-level addresses (HoA -> CN), what the CN
        checks after its inbound rule restored the HoA (docs/design.md §6).
        """
        inner = build_mh_packet(message, IPv6Address(checksum_src or self.hoa),
                                IPv6Address(CN))
        protected = transport_encap(inner, self.sa, time.monotonic())
        FORGED[self.node] += 1
        assert protected is not None, self.sa.drops
        return protected[:8] + IPv6Address(onwire_src).packed + protected[24:]


def send_from(node: str, link: str, wire: bytes) -> None:
    """The overlay datagram (UDP 6275 -> CN:6275) from *node*'s address on *link*.

    A raw socket, because the node's own socket holds port 6275; the CN
    replies (if it ever did) to that same port, i.e. to the MN's node.
    """
    udp = struct.pack("!HHHH", OVERLAY_PORT, OVERLAY_PORT, 8 + len(wire), 0) + wire
    with entered(f"vmip-{node}"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    with sock:
        sock.bind((UNDERLAY[node][link], 0))
        sock.sendto(udp, (CN_UNDERLAY, 0))


# --- the CN's view -------------------------------------------------------------------------

def cn_snapshot() -> dict[str, Any]:
    status = vmip_json("cn", "bindings")
    sas = {sa["spi"]: sa["packets"] for sa in vmip_json("cn", "sa", "list")}
    return {"cache": status["cn"]["binding_cache"], "counters": status["cn"]["counters"],
            "rx_mh": status["counters"].get("rx_mh", 0), "events": vmip_json("cn", "events"),
            "sas": sas}


def assert_dropped_silently(before: dict[str, Any], reason: str, via_spi: int) -> None:
    """The CN counted *reason* once and changed and sent nothing else."""
    after = wait_for(f"the CN counting {reason}",
                     lambda: (s := cn_snapshot())["counters"].get(reason, 0)
                     > before["counters"].get(reason, 0) and s)
    expected = dict(before["counters"])
    expected[reason] = expected.get(reason, 0) + 1
    assert after["counters"] == expected
    # Authenticated by the SA and handed to the MH code: dropped there, not earlier.
    assert after["sas"][via_spi] == before["sas"][via_spi] + 1
    assert after["rx_mh"] == before["rx_mh"] + 1
    assert after["cache"] == before["cache"]
    assert after["events"] == before["events"]
    # Nothing protected towards either MN: no BA, no AOTC, no AOTS (the reply,
    # if any, is sent in the same call that counted the drop).
    for spi in FROM_CN.values():
        assert after["sas"][spi] == before["sas"][spi], f"the CN sent on {spi:#x}"


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with lab_started():
        for node in ("mn", "mn2"):
            coa = COA[node]["wifi0"]
            wait_for(f"{node} bound with the CN",
                     lambda node=node, coa=coa: bound(node, CN, coa))
            # Each MN then proves its standby lte CoA to the CN (early test, draft
            # §4.5.2): let that finish so the CN is quiet during the tests.
            lte = COA[node]["lte0"]
            wait_for(f"{node}'s early test of its lte CoA", lambda node=node, lte=lte: any(
                e.get("peer") == CN and e.get("address") == lte
                for e in events(node, "AotStatusReceived")))
        yield


def test_aotr_with_a_wrong_nonce_is_dropped(lab) -> None:
    """Draft §4.4.3: the nonce stored for (HoA, on-wire source) must match the AOTR's."""
    before = cn_snapshot()
    forger = Forger("mn")
    # The CN keeps the nonce it sent to the wifi CoA (docs/mobility.md): a wrong one.
    wire = forger.packet(AotResponse(bytes(8)), onwire_src=COA["mn"]["wifi0"])
    send_from("mn", "wifi0", wire)
    assert_dropped_silently(before, "aotr_wrong_nonce", TO_CN["mn"][0])


def test_aotr_from_an_address_that_was_not_challenged_is_dropped(lab) -> None:
    """Draft §4.4.3: an AOTR must come from the address the AOTC went to."""
    before = cn_snapshot()
    forger = Forger("mn")
    # An address the CN never challenged (the lte CoA was, by the early test): no nonce.
    wire = forger.packet(AotResponse(bytes(range(8))), onwire_src=NEVER_CHALLENGED)
    send_from("mn", "lte0", wire)
    assert_dropped_silently(before, "aotr_unknown_address", TO_CN["mn"][0])


def test_bu_whose_altcoa_differs_from_the_on_wire_source_is_dropped(lab) -> None:
    """Draft §3.3: the AltCoA of an IRO BU is the address it came from on the wire."""
    before = cn_snapshot()
    sequence = (cn_cache()[HOA["mn"]]["sequence"] + 1) % 65536  # in window: only AltCoA is wrong
    forger = Forger("mn")
    bu = BindingUpdate(sequence, 100, ack=True,
                       options=(AlternateCareOfAddress(IPv6Address(COA["mn"]["lte0"])),))
    send_from("mn", "wifi0", forger.packet(bu, onwire_src=COA["mn"]["wifi0"]))
    assert_dropped_silently(before, "bu_altcoa_mismatch", TO_CN["mn"][0])


def test_bu_from_a_hoa_the_cn_has_no_sa_with_is_dropped_before_mipv6(lab) -> None:
    """Draft §9 / RFC 4303 §3.4.2: a HoA is served only under an SA shared with it.

    ``bu_unknown_hoa`` (the core's check, unit-tested in
    tests/mobility/test_cn_registration.py) cannot be reached on a vmip node:
    the CN's inbound rule for an SPI restores *that SA's* HoA (draft §5.2)
    and the SA's selectors are checked after ESP, so every MH that reaches
    the core comes from a HoA the CN shares an SA with.  The closest real
    case: a BU from a HoA the CN has no SA with (2001:db8:100::30, under an
    SPI and key the CN never had).  The IPsec layer drops it (``unknown_spi``)
    and the MH code never sees it.
    """
    before, ipsec_before = cn_snapshot(), vmip_json("cn", "counters")["ipsec"]
    stranger = "2001:db8:100::30"
    forger = Forger("mn", foreign_sa=(0x3301, stranger))
    bu = BindingUpdate(1, 100, ack=True,
                       options=(AlternateCareOfAddress(IPv6Address(COA["mn"]["wifi0"])),))
    send_from("mn", "wifi0", forger.packet(bu, onwire_src=COA["mn"]["wifi0"]))
    wait_for("the CN's IPsec layer counting an unknown SPI",
             lambda: vmip_json("cn", "counters")["ipsec"].get("unknown_spi", 0)
             > ipsec_before.get("unknown_spi", 0))
    after = cn_snapshot()
    assert after == before  # MH code, cache, events, SAs: untouched; nothing sent
    assert stranger not in cn_cache()


def test_bu_under_mn2s_sa_claiming_mns_hoa_never_touches_mns_binding(lab) -> None:
    """Draft §5.2, §8: the SA names the HoA; a packet cannot claim another one.

    MN2 protects a BU with its own SA but puts MN's HoA in the IPv6 header
    and computes the MH checksum for MN's HoA, as a forger of MN's binding
    would.  The CN's inbound rule for MN2's SPI restores MN2's HoA, so the
    checksum no longer matches and the BU is dropped as ``bad_checksum``:
    MN's binding (and MN2's) stay as they were.
    """
    before = cn_snapshot()
    forger = Forger("mn2")
    bu = BindingUpdate((cn_cache()[HOA["mn"]]["sequence"] + 1) % 65536, 100, ack=True,
                       options=(AlternateCareOfAddress(IPv6Address(COA["mn2"]["wifi0"])),))
    wire = forger.packet(bu, onwire_src=HOA["mn"], checksum_src=HOA["mn"])
    send_from("mn2", "wifi0", wire)
    assert_dropped_silently(before, "bad_checksum", TO_CN["mn2"][0])


def test_aoto_from_an_mn_that_is_not_registered_is_dropped(lab) -> None:
    """Draft §4.4.1: an AOTO from an MN without a binding here is dropped silently.

    MN2 is registered with the CN when the lab starts; a deregistration BU
    (lifetime 0, no ack, RFC 6275 §9.5.3) under MN2's SA removes that binding
    first.  This is the last test of the module: MN2's node still thinks it
    is bound.
    """
    forger = Forger("mn2")
    sequence = (cn_cache()[HOA["mn2"]]["sequence"] + 1) % 65536
    deregistration = BindingUpdate(
        sequence, 0, options=(AlternateCareOfAddress(IPv6Address(COA["mn2"]["wifi0"])),))
    send_from("mn2", "wifi0", forger.packet(deregistration, onwire_src=COA["mn2"]["wifi0"]))
    wait_for("the CN dropping MN2's binding", lambda: HOA["mn2"] not in cn_cache())
    before = cn_snapshot()
    send_from("mn2", "wifi0", Forger("mn2").packet(AotOffer(), onwire_src=COA["mn2"]["wifi0"]))
    assert_dropped_silently(before, "aoto_unregistered", TO_CN["mn2"][0])
