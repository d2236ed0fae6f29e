"""Where the CN->MN handover time goes, on the sans-IO cores (docs/demo.md, "Where the time went").

A move between two foreign links used to send the CN's BU only after the
HA's BA: one extra RTT before the CN switches its outbound traffic.  With
``correspondents_with_home`` (what ``vmip run`` uses) the CN's BU leaves
with the home BU whenever the HA still holds a live binding for the HoA;
the first registration keeps the RFC 6275 order (HoA not yet valid).
Driven through the mobility tests' fake network (fixed one-way latency).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mobility"))

from test_mipv6_pair_harness import CN_ADDR, HA_ADDR, HOA, LTE, WIFI, build_world

from vmip.mobility.events import BindingAccepted, SendTo

BU, BA, AOTC = 5, 6, 31
ONE_WAY = 0.03


def _world(parallel: bool):
    net, nodes = build_world(latency=ONE_WAY)
    nodes["mn"].mn.correspondents_with_home = parallel
    return net, nodes


def _move(net, node, coa, at: float) -> None:
    net.now = at
    node.mn.set_coa(coa, at)
    net.run(at + 5.0)


def _cn_switch(cn, coa, after: float) -> float:
    """When the CN started sending to *coa* (its SendTo), after *after*."""
    return next(t for t, e in cn.timed(SendTo) if e.coa == coa and t >= after)


def _window(net, at: float):
    return [d for d in net.deliveries if at <= d.time < at + 5.0]


@pytest.mark.parametrize("parallel", [True, False])
def test_first_registration_waits_for_the_home_ba(parallel):
    net, nodes = _world(parallel)
    _move(net, nodes["mn"], WIFI, 0.0)
    window = _window(net, 0.0)
    home_ba = next(d for d in window if d.sender == "ha" and d.mh_type == BA)
    to_cn = next(d for d in window if d.sender == "mn" and d.dst == CN_ADDR and d.mh_type == BU)
    # No binding at the HA yet: the HoA is not valid, the CN comes second.
    assert to_cn.time >= home_ba.time


def test_move_with_proven_coa_switches_the_cn_after_one_way():
    net, nodes = _world(parallel=True)
    mn, cn = nodes["mn"], nodes["cn"]
    for at, coa in ((0.0, WIFI), (50.0, LTE), (100.0, WIFI)):
        _move(net, mn, coa, at)
    window = _window(net, 100.0)
    to_ha = next(d for d in window if d.sender == "mn" and d.dst == HA_ADDR)
    to_cn = next(d for d in window if d.sender == "mn" and d.dst == CN_ADDR and d.mh_type == BU)
    home_ba = next(d for d in window if d.sender == "ha" and d.mh_type == BA)
    assert to_cn.time == to_ha.time == 100.0 and to_cn.wire_src == WIFI
    assert not [d for d in window if d.mh_type == AOTC]     # the proof was cached
    # Draft §4.5.1: proof cached -> the CN sends to the CoA as the BU arrives,
    # one one-way delay after the move, before the HA's BA is even back.
    switch = _cn_switch(cn, WIFI, 100.0)
    assert switch == pytest.approx(100.0 + ONE_WAY)
    assert switch < home_ba.time + ONE_WAY
    accepted = [(t, e) for t, e in mn.timed(BindingAccepted) if t >= 100.0]
    assert {e.peer for _, e in accepted} == {HA_ADDR, CN_ADDR}
    assert all(e.coa == WIFI for _, e in accepted)


def test_move_with_aot_saves_the_home_round_trip():
    net, nodes = _world(parallel=True)
    mn, cn = nodes["mn"], nodes["cn"]
    _move(net, mn, WIFI, 0.0)
    _move(net, mn, LTE, 50.0)
    # BU, AOTC, AOTR: three one-way trips, none of them through the HA.
    assert _cn_switch(cn, LTE, 50.0) == pytest.approx(50.0 + 3 * ONE_WAY)
    assert cn.cn.binding(HOA).coa == LTE


def test_sequential_order_costs_one_more_round_trip():
    """The old behaviour (flag off) as a contrast: the CN switches a HA RTT later."""
    net, nodes = _world(parallel=False)
    mn, cn = nodes["mn"], nodes["cn"]
    for at, coa in ((0.0, WIFI), (50.0, LTE), (100.0, WIFI)):
        _move(net, mn, coa, at)
    assert _cn_switch(cn, WIFI, 100.0) == pytest.approx(100.0 + 3 * ONE_WAY)
