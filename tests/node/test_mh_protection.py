"""Which SA may carry an MH to the cores (vmip/node/mh_protection.py), on a real SPD.

The running-node attacks are in tests/sim/test_sim_mip_duties.py; this pins
the decisions a sim run cannot time reliably: the IKE rekey window, where
the old and the new CHILD_SA's inbound policies share a selector, and a
bundle of two SAs.
"""

from __future__ import annotations

import types
from ipaddress import IPv6Address, IPv6Network

from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.spd import SPD, Action, Policy, Selector
from vmip.node.mh_protection import NOT_TRANSPORT, WRONG_SA, refusal
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.mh import AlternateCareOfAddress, BindingUpdate, build_mh_packet
from vmip.wire.udp import build_udp

HOA, HA = IPv6Address("2001:db8:100::10"), IPv6Address("2001:db8:100::1")
BU = build_mh_packet(BindingUpdate(1, 100, ack=True, home_registration=True,
                                   options=(AlternateCareOfAddress(IPv6Address("2001:db8:31::2")),)),
                     HOA, HA)


def sa(spi: int, mode: Mode = Mode.TRANSPORT, name: str = "") -> types.SimpleNamespace:
    return types.SimpleNamespace(spi=spi, params=types.SimpleNamespace(mode=mode, name=name))


def mh_policy(name: str, bundle: tuple, priority: int, mh_type: int | None = None) -> Policy:
    selector = Selector(local=IPv6Network(f"{HA}/128"), remote=IPv6Network(f"{HOA}/128"),
                        proto=135, mh_type=mh_type)
    return Policy(name, Direction.IN, selector, Action.PROTECT, bundle, priority)


def tunnel_policy() -> Policy:
    selector = Selector(local=None, remote=IPv6Network(f"{HOA}/128"))
    return Policy("tunnel-from-mn", Direction.IN, selector, Action.PROTECT, (0x1201,), 100)


def test_the_rekey_window_accepts_the_new_sa_and_the_old_one() -> None:
    spd = SPD([mh_policy("old-in", (0x1101,), 10), mh_policy("new-in", (0x2101,), 10),
               tunnel_policy()])
    assert refusal(spd, BU, [sa(0x1101)]) is None
    assert refusal(spd, BU, [sa(0x2101)]) is None         # not the first match, same rank
    assert refusal(spd, BU, [sa(0x1201)]) == WRONG_SA      # the tunnel's policy ranks after
    assert refusal(spd, BU, [sa(0x1201, Mode.TUNNEL)]) == NOT_TRANSPORT


def test_a_worse_ranked_policy_naming_the_sa_does_not_do() -> None:
    spd = SPD([mh_policy("bu-in", (0x1101,), 10, mh_type=5),
               mh_policy("other-mh-in", (0x3101,), 20)])
    assert refusal(spd, BU, [sa(0x1101)]) is None
    assert refusal(spd, BU, [sa(0x3101)]) == WRONG_SA      # MH-type granularity


def test_a_bundle_is_matched_innermost_first_and_inside_a_tunnel() -> None:
    spd = SPD([mh_policy("mh-in", ("inner", 0x4101), 10)])
    tunnel = sa(0x1201, Mode.TUNNEL)
    assert refusal(spd, BU, [tunnel, sa(0x4101), sa(7, name="inner")]) is None
    assert refusal(spd, BU, [tunnel, sa(7, name="inner"), sa(0x4101)]) == WRONG_SA


def test_what_is_not_an_mh_is_not_judged() -> None:
    udp = build_udp(1, 2, b"x", HOA.packed, HA.packed)
    packet = build_ipv6_header(HOA.packed, HA.packed, 17, len(udp)) + udp
    assert refusal(SPD(), packet, [sa(0x1201, Mode.TUNNEL)]) is None
    assert refusal(SPD(), b"\x60garbage", [sa(1)]) is None
