"""What tracking installs for each role, checked against the draft and end to end.

- The rules for MN-CN (fine-grained SAs) and MN-MN are compared with the
  examples of draft §5.2.2, read from the draft's own text.
- The example configs (configs/mn.toml, ha.toml, cn.toml: static keys,
  coarse MN-CN SAs) run through the whole path of docs/design.md §4 on three
  nodes: IpsecEngine.outbound -> remap outbound -> wire -> remap inbound ->
  IpsecEngine.inbound (which does the RFC 4301 §5.2 selector check).
  Mobility Headers are built by scapy, which also checks the MH checksum
  (computed over the HoA) on arrival.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from ipaddress import IPv6Address
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    MIP6MH_BA,
    MIP6MH_BU,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrRouting,
    MIP6OptAltCoA,
)

from vmip.config.loader import load_config
from vmip.ipsec.engine import IpsecEngine
from vmip.ipsec.sa import Direction, SaParams
from vmip.ipsec.sad import SAD
from vmip.ipsec.sadb import SadbBus
from vmip.ipsec.spd import SPD, Selector
from vmip.ipsec.static import from_config, install
from vmip.mobility.ancillary import UNSPECIFIED, Ancillary
from vmip.mobility.remap import RemapEngine, RemapRule, parse_rules
from vmip.mobility.spi_tracking import Role, SpiTracker

IN, OUT = Direction.IN, Direction.OUT
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SPI_BASE = 0x100  # the SAD refuses the IANA-reserved SPIs 1-255 the examples use

HOA1 = IPv6Address("2001:db8:100::10")
COA1 = IPv6Address("2001:db8:31::2")
HOA2 = IPv6Address("2001:db8:100::20")
COA2 = IPv6Address("2001:db8:41::2")
A = IPv6Address("2001:db8:20::2")
NAMES = {"HoA": HOA1, "CoA": COA1, "A": A, "HoA1": HOA1, "CoA1": COA1, "HoA2": HOA2, "CoA2": COA2}


def without_owner(rules) -> set[RemapRule]:
    return {replace(rule, owner="") for rule in rules}


def draft_rules(text: str, spi_offset: int = SPI_BASE) -> set[RemapRule]:
    """The draft's example rules; SPIs moved past the IANA-reserved 1-255 the SAD refuses."""
    return {replace(rule, spi=rule.spi + spi_offset) for rule in parse_rules(text, NAMES)}


def selector(local, remote, proto) -> tuple[Selector, ...]:
    return (Selector(local=f"{local}/128", remote=f"{remote}/128", proto=proto),)


def sa(spi, direction, src, dst, selectors) -> SaParams:
    return SaParams(spi, direction, src, dst, "aes128gcm16", bytes(20), selectors=selectors)


def tracked_node() -> tuple[SAD, RemapEngine, SpiTracker]:
    bus = SadbBus()
    sad = SAD(bus)
    engine = RemapEngine()
    return sad, engine, SpiTracker(bus, engine)


# -- against the draft's examples ------------------------------------------------------


def test_mn_with_a_cn_gets_examples_1_and_2():
    sad, engine, tracker = tracked_node()
    data, mh = selector(HOA1, A, 6), selector(HOA1, A, 135)
    sad.add(sa(SPI_BASE + 42, OUT, HOA1, A, data), 0.0)
    sad.add(sa(SPI_BASE + 43, IN, A, HOA1, data), 0.0)
    sad.add(sa(SPI_BASE + 44, OUT, HOA1, A, mh), 0.0)
    sad.add(sa(SPI_BASE + 45, IN, A, HOA1, mh), 0.0)
    tracker.track_mh(HOA1, A, Role.MN, coa=COA1)   # pre-binding (§3.2)
    tracker.bind_data(HOA1, A, COA1, Role.MN)      # post-binding (§3.6)
    example_1 = draft_rules("""
        dir: out, SPI: 42, exp. src: HoA, remap. src: CoA
        dir: in , SPI: 43, exp. dst: CoA, remap. dst: HoA
    """)
    # Example 2 as the draft prints it has a static "remap. src: CoA"; §3.1
    # rule 1 (and example 4) take the source from the ancillary data, which
    # the AOTR of an early test or of a HoA test needs (§4.5.2, §4.5.3).  And
    # §3.3: on the MN, the on-wire CoA of an incoming MH packet is passed on.
    example_2_as_installed = draft_rules("""
        dir: out, SPI: 44, exp. src: HoA, remap. src: ancillary
        dir: in , SPI: 45, exp. dst: CoA, remap. dst: HoA (ancillary)
    """)
    assert without_owner(engine.rules()) == example_1 | example_2_as_installed


def test_mn_with_another_mn_gets_example_3_for_data():
    sad, engine, tracker = tracked_node()
    data = selector(HOA1, HOA2, 17)
    sad.add(sa(SPI_BASE + 46, OUT, HOA1, HOA2, data), 0.0)
    sad.add(sa(SPI_BASE + 47, IN, HOA2, HOA1, data), 0.0)
    tracker.bind_data(HOA1, HOA2, COA1, Role.MN)   # our binding at MN2
    tracker.bind_data(HOA1, HOA2, COA2, Role.CN)   # MN2's binding at us
    assert without_owner(engine.rules()) == draft_rules("""
        dir: out, SPI: 46, exp. src: HoA1, remap. src: CoA1
        dir: in , SPI: 47, exp. dst: CoA1, remap. dst: HoA1
        dir: out, SPI: 46, exp. dst: HoA2, remap. dst: CoA2
        dir: in , SPI: 47, exp. src: CoA2, remap. src: HoA2
    """)


def test_mn_with_another_mn_gets_example_4_for_mh():
    sad, engine, tracker = tracked_node()
    mh = selector(HOA1, HOA2, 135)
    # One SA pair carries both MNs' signalling (the draft numbers a pair per
    # role, 48/49 and 50/51; addresses alone cannot tell those apart).
    sad.add(sa(SPI_BASE + 48, OUT, HOA1, HOA2, mh), 0.0)
    sad.add(sa(SPI_BASE + 49, IN, HOA2, HOA1, mh), 0.0)
    tracker.track_mh(HOA1, HOA2, Role.MN, coa=COA1)
    tracker.track_mh(HOA1, HOA2, Role.CN)
    # Example 4 with the SPIs of that one pair.  Line 3 follows §3.1 rule 3
    # ("remapped to the address stored in the ancillary data, if not null")
    # instead of the example's static CoA2, so MN1 can answer MN2 at a CoA
    # MN2 has not registered yet (AOTC, §3.3); line 2 carries the §3.3 mark.
    assert without_owner(engine.rules()) == draft_rules("""
        dir: out, SPI: 48, exp. src: HoA1, remap. src: ancillary
        dir: in , SPI: 49, exp. dst: CoA1, remap. dst: HoA1 (ancillary)
        dir: out, SPI: 48, exp. dst: HoA2, remap. dst: ancillary
        dir: in , SPI: 49, exp. src:   ::, remap. src: HoA2 (ancillary)
    """)


# -- the example configs, end to end ---------------------------------------------------


class ConfigNode:
    """One lab node from configs/NAME.toml: static keys, IPsec engine, remap, tracking."""

    def __init__(self, name: str, configs: Path = CONFIGS) -> None:
        keys = from_config(load_config(configs / f"{name}.toml"))
        self.bus = SadbBus()
        self.sad = SAD(self.bus)
        self.spd = SPD()
        self.remap = RemapEngine()
        self.tracker = SpiTracker(self.bus, self.remap, spd=self.spd)
        install(keys, self.sad, self.spd, 0.0)  # SAs first, then policies
        self.ipsec = IpsecEngine(self.spd, self.sad, 0.0)


@pytest.fixture
def lab(tmp_path):
    # A copy with the key files at 0600: git does not keep modes, and a fresh
    # clone's 0644 keys are (rightly) refused by the config loader.
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    for key in (configs / "keys").iterdir():
        key.chmod(0o600)
    mn, ha, cn = (ConfigNode(name, configs) for name in ("mn", "ha", "cn"))
    hoa, ha_address, cn_address = HOA1, IPv6Address("2001:db8:100::1"), A
    mn.tracker.track_mh(hoa, ha_address, Role.MN, coa=COA1)
    mn.tracker.track_mh(hoa, cn_address, Role.MN, coa=COA1)
    ha.tracker.track_mh(ha_address, hoa, Role.HA)
    cn.tracker.track_mh(cn_address, hoa, Role.CN)
    return mn, ha, cn


def send(sender: ConfigNode, receiver: ConfigNode, inner: bytes, ancillary=None):
    """Sender's IPsec + remap, the wire, receiver's remap + IPsec: (on-wire, delivered, ancillary)."""
    protected = sender.ipsec.outbound(inner, 1.0)
    assert protected.packet is not None, protected.drop
    on_wire = sender.remap.outbound(protected.packet, ancillary)
    assert on_wire is not None
    arrived = receiver.remap.inbound_ancillary(on_wire)
    if arrived is None:
        return on_wire, None, None
    packet, handed_over = arrived
    delivered = receiver.ipsec.inbound(packet, 1.0)
    assert delivered.packet is not None, delivered.drop
    return on_wire, delivered.packet, handed_over


def on_wire_addresses(packet: bytes) -> tuple[IPv6Address, IPv6Address]:
    parsed = IPv6(packet)
    assert IPv6ExtHdrRouting not in parsed and IPv6ExtHdrDestOpt not in parsed  # no RH2, no HAO
    return IPv6Address(parsed.src), IPv6Address(parsed.dst)


def mh_checksum_is_valid(packet: bytes, layer) -> bool:
    parsed = IPv6(packet)
    claimed = parsed[layer].cksum
    del parsed[layer].cksum
    return IPv6(bytes(parsed))[layer].cksum == claimed


def udp_checksum_is_valid(packet: bytes) -> bool:
    parsed = IPv6(packet)
    claimed = parsed[UDP].chksum
    del parsed[UDP].chksum
    return IPv6(bytes(parsed))[UDP].chksum == claimed


def bu(src, dst, coa) -> bytes:
    return bytes(IPv6(src=str(src), dst=str(dst))
                 / MIP6MH_BU(seq=7, flags="AH", mhtime=105, options=[MIP6OptAltCoA(acoa=str(coa))]))


def ba(src, dst) -> bytes:
    return bytes(IPv6(src=str(src), dst=str(dst)) / MIP6MH_BA(seq=7, mhtime=105))


def udp(src, dst) -> bytes:
    return bytes(IPv6(src=str(src), dst=str(dst)) / UDP(sport=4000, dport=5000) / (b"data" * 20))


HA_ADDRESS = IPv6Address("2001:db8:100::1")
COA_LTE = IPv6Address("2001:db8:32::2")


def test_example_configs_are_classified_as_the_draft_needs(lab):
    mn = lab[0]
    kinds = {(sa.name, sa.kind) for sa in mn.tracker.sas()}
    assert kinds == {("mn-ha-mh-out", "mh"), ("mn-ha-mh-in", "mh"),
                     ("mn-ha-tunnel-out", "other"), ("mn-ha-tunnel-in", "other"),
                     ("mn-cn-out", "mixed"), ("mn-cn-in", "mixed"),
                     ("mn-mn2-out", "mixed"), ("mn-mn2-in", "mixed")}


def test_home_registration_without_hao_or_rh2(lab):
    mn, ha, _cn = lab
    # BU from the HoA, the CoA as ancillary data (draft §3.3, §7).
    inner = bu(HOA1, HA_ADDRESS, COA1)
    on_wire, delivered, handed_over = send(mn, ha, inner, COA1)
    assert on_wire_addresses(on_wire) == (COA1, HA_ADDRESS)
    assert HOA1.packed not in on_wire  # appendix J: the HoA never shows on the foreign link
    assert delivered == inner and mh_checksum_is_valid(delivered, MIP6MH_BU)
    assert handed_over == Ancillary(COA1.packed, UNSPECIFIED)
    assert IPv6Address(IPv6(delivered)[MIP6OptAltCoA].acoa) == handed_over.src_address

    # BA to the HoA with the CoA as ancillary data.
    inner = ba(HA_ADDRESS, HOA1)
    on_wire, delivered, handed_over = send(ha, mn, inner, COA1)
    assert on_wire_addresses(on_wire) == (HA_ADDRESS, COA1)
    assert delivered == inner and mh_checksum_is_valid(delivered, MIP6MH_BA)
    assert handed_over == Ancillary(UNSPECIFIED, COA1.packed)


def test_correspondent_registration_then_data_on_the_direct_path(lab):
    mn, _ha, cn = lab
    # Safe by default (§3.6): before a binding, data keeps the HoA (HA path).
    on_wire, _delivered, _ = send(mn, cn, udp(HOA1, A))
    assert on_wire_addresses(on_wire) == (HOA1, A)
    on_wire, _delivered, _ = send(cn, mn, udp(A, HOA1))
    assert on_wire_addresses(on_wire) == (A, HOA1)

    # BU straight from the CoA; the CN checks AltCoA against the ancillary source.
    inner = bu(HOA1, A, COA1)
    on_wire, delivered, handed_over = send(mn, cn, inner, COA1)
    assert on_wire_addresses(on_wire) == (COA1, A) and HOA1.packed not in on_wire
    assert delivered == inner and mh_checksum_is_valid(delivered, MIP6MH_BU)
    assert handed_over.src_address == COA1
    # The CN answers at the CoA through the ancillary data (rule 3).
    on_wire, delivered, handed_over = send(cn, mn, ba(A, HOA1), COA1)
    assert on_wire_addresses(on_wire) == (A, COA1)
    assert handed_over.dst_address == COA1

    # Post-binding: data follows the binding without ancillary data.
    mn.tracker.bind_data(HOA1, A, COA1, Role.MN)
    cn.tracker.bind_data(A, HOA1, COA1, Role.CN)
    inner = udp(HOA1, A)
    on_wire, delivered, _ = send(mn, cn, inner)
    assert on_wire_addresses(on_wire) == (COA1, A) and HOA1.packed not in on_wire
    assert delivered == inner and udp_checksum_is_valid(delivered)
    inner = udp(A, HOA1)
    on_wire, delivered, _ = send(cn, mn, inner)
    assert on_wire_addresses(on_wire) == (A, COA1)
    assert delivered == inner and udp_checksum_is_valid(delivered)


def test_movement_wifi_to_lte_updates_rules_before_the_bus(lab):
    mn, ha, cn = lab
    mn.tracker.bind_data(HOA1, A, COA1, Role.MN)
    cn.tracker.bind_data(A, HOA1, COA1, Role.CN)

    mn.tracker.move(COA1, COA_LTE)                      # rules first (docs/design.md §7.6)
    mn.sad.migrate(0x1201, OUT, COA_LTE, HA_ADDRESS, 2.0)  # the tunnel SA follows the CoA
    # BU to the HA from the new CoA; the HA accepts any source for MH (§5.1.3).
    on_wire, delivered, handed_over = send(mn, ha, bu(HOA1, HA_ADDRESS, COA_LTE), COA_LTE)
    assert on_wire_addresses(on_wire) == (COA_LTE, HA_ADDRESS)
    assert handed_over.src_address == COA_LTE
    # Data to the CN leaves from the new CoA at once and is accepted (§4.5.1).
    on_wire, delivered, _ = send(mn, cn, udp(HOA1, A))
    assert on_wire_addresses(on_wire) == (COA_LTE, A) and delivered is not None
    # The CN has no proof for the new CoA yet: it sends to the HoA, via the HA.
    cn.tracker.bind_data(A, HOA1, COA_LTE, Role.CN, outbound=False)
    on_wire, _, _ = send(cn, mn, udp(A, HOA1))
    assert on_wire_addresses(on_wire) == (A, HOA1)
    # What still reaches the old CoA is no longer ours: dropped before ESP.
    stale = send(cn, mn, ba(A, HOA1), COA1)
    assert stale[1] is None and mn.remap.counters["in_dst_mismatch"] == 1
    # After the proof, straight to the new CoA.
    cn.tracker.bind_data(A, HOA1, COA_LTE, Role.CN)
    on_wire, delivered, _ = send(cn, mn, udp(A, HOA1))
    assert on_wire_addresses(on_wire) == (A, COA_LTE) and delivered is not None


def test_hoa_test_messages_take_the_home_path(lab):
    mn, _ha, cn = lab
    # §4.5.3: the CN's AOTC to the HoA and the MN's AOTR from the HoA, no
    # ancillary data: the on-wire addresses stay the HoA (the HA tunnel's job).
    on_wire, _, _ = send(cn, mn, ba(A, HOA1))
    assert on_wire_addresses(on_wire) == (A, HOA1)
    on_wire, delivered, handed_over = send(mn, cn, bu(HOA1, A, HOA1))
    assert on_wire_addresses(on_wire) == (HOA1, A)
    assert delivered is not None and handed_over == Ancillary()  # nothing remapped: ::
