"""Negotiated traffic selectors → SPD selectors (vmip.node.keying_policy.ts_to_selectors).

Oracle: ``ipaddress`` — every address of the TS range matches one produced
selector's prefix and no address outside it does; the SPD accepts them all.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from vmip.ike.payloads import TrafficSelector
from vmip.ipsec.sa import Direction
from vmip.ipsec.spd import Action, Policy
from vmip.node.keying_policy import ts_to_selectors

BASE = int(ipaddress.IPv6Address("2001:db8::"))


def _range(low: int, span: int) -> TrafficSelector:
    return TrafficSelector(ipaddress.IPv6Address(BASE + low), ipaddress.IPv6Address(BASE + low + span))


@given(st.integers(0, 1 << 20), st.integers(0, 1 << 12), st.integers(0, 1 << 12))
def test_range_is_covered_exactly(low, span, probe):
    local = _range(low, span)
    remote = TrafficSelector.from_network("2001:db8:ffff::1/128")
    selectors = ts_to_selectors(local, remote)
    nets = [s.local for s in selectors]
    inside = ipaddress.IPv6Address(BASE + low + probe % (span + 1))
    outside_low = ipaddress.IPv6Address(BASE + low - 1) if low else None
    outside_high = ipaddress.IPv6Address(BASE + low + span + 1)
    assert sum(inside in n for n in nets) == 1
    assert not any(outside_high in n for n in nets)
    if outside_low is not None:
        assert not any(outside_low in n for n in nets)
    for index, selector in enumerate(selectors):
        Policy(f"p{index}", Direction.OUT, selector, Action.PROTECT, (0x1234,))


def test_ports_and_protocols():
    local = TrafficSelector.from_network("2001:db8:a::1/128", 17, 500, 500)
    remote = TrafficSelector.from_network("2001:db8:b::1/128", 17)
    (sel,) = ts_to_selectors(local, remote)
    assert sel.proto == 17 and sel.local_ports == (500, 500) and sel.remote_ports is None
    (any_sel,) = ts_to_selectors(TrafficSelector.from_network("2001:db8:a::1/128"),
                                 TrafficSelector.from_network("2001:db8:b::1/128"))
    assert any_sel.proto is None and any_sel.local_ports is None
    (mh,) = ts_to_selectors(TrafficSelector.mh("2001:db8:a::1/128", 5),
                            TrafficSelector.mh("2001:db8:b::1/128", 5))
    assert mh.proto == 135 and mh.mh_type == (5, 5)
    assert ts_to_selectors(TrafficSelector.from_network("192.0.2.1/32"),
                           TrafficSelector.from_network("2001:db8:b::1/128")) == []
