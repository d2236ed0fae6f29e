"""The HA's and the CN's next deadline costs O(log n) in the bindings held (docs/scale.md).

The pump asks every core for its next timer after every packet, so a
``get_timer`` that walks every binding makes each BU cost O(n).  Work is
counted as Python line events (``sys.settrace``): deterministic, unlike a
clock.  The ratio between 2,000 and 100 bindings would be about 20 for a
walk; a heap gives a small constant.
"""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from test_mipv6_pair_harness import CN_ADDR, HA_ADDR, HOME_PREFIX, seeded_rng
from workcount import line_events

from vmip.mobility.binding import OnWire
from vmip.mobility.cn import Correspondent
from vmip.mobility.ha import HomeAgent
from vmip.mobility.timers import Deadlines
from vmip.wire.mh import AlternateCareOfAddress, BindingUpdate, build_mh

SMALL, LARGE = 100, 2000


def hoa(i: int) -> IPv6Address:
    return HOME_PREFIX[0x1_0000 + i]


def coa(i: int) -> IPv6Address:
    return IPv6Address("2001:db8:31::") + 0x1_0000 + i


def home_bu(i: int, seq: int, now: float, ha: HomeAgent) -> None:
    bu = BindingUpdate(seq, 105, ack=True, home_registration=True,
                       options=(AlternateCareOfAddress(coa(i)),))
    ha.receive(build_mh(bu, hoa(i), HA_ADDR), hoa(i), HA_ADDR, OnWire(coa(i)), now)



def drain(core) -> None:
    while core.next_event() is not None:
        pass
    core.datagrams_to_send(0.0)


def ha_with(n: int) -> HomeAgent:
    ha = HomeAgent(HA_ADDR, HOME_PREFIX, max_lifetime=420)
    for i in range(n):
        home_bu(i, 1, float(i) / n, ha)   # expiries 420 s + i/n: all different
    drain(ha)
    return ha


def ha_timer_work(n: int) -> int:
    ha = ha_with(n)
    # One refresh, then what the pump does after it: ask for the next timer.
    return line_events(lambda: (home_bu(0, 2, 1.0, ha), drain(ha), ha.get_timer()))


def test_the_ha_finds_its_next_deadline_without_walking_the_binding_cache():
    small, large = ha_timer_work(SMALL), ha_timer_work(LARGE)
    assert large < 2 * small, (small, large)


def test_the_ha_expires_bindings_in_deadline_order_and_only_the_due_ones():
    ha = ha_with(SMALL)
    home_bu(0, 2, 10.0, ha)        # refreshed: now expires at 430 s, last
    drain(ha)
    first = ha.get_timer()
    assert first == pytest.approx(420.0 + 1 / SMALL)
    work = line_events(lambda: ha.handle_timer(first))
    expired = []
    while (event := ha.next_event()) is not None:
        expired.append(event)
    assert [getattr(e, "hoa", None) for e in expired] == [hoa(1), hoa(1)]
    assert len(ha.bindings()) == SMALL - 1
    # Expiring one binding of 100 looks at that one, not at all 100.
    assert work < 60
    ha.handle_timer(425.0)
    assert [b.hoa for b in ha.bindings()] == [hoa(0)]
    assert ha.get_timer() == 430.0
    ha.handle_timer(430.0)
    assert ha.bindings() == [] and ha.get_timer() is None


def cn_with(n: int) -> Correspondent:
    cn = Correspondent(known_peers=None, rng=seeded_rng(5))
    for i in range(n):
        bu = BindingUpdate(1, 105, ack=True, options=(AlternateCareOfAddress(coa(i)),))
        # Each BU leaves a pending proof with its own deadline (draft §4.5.1).
        cn.receive(build_mh(bu, hoa(i), CN_ADDR), hoa(i), CN_ADDR, OnWire(coa(i)),
                   float(i) / n)
    drain(cn)
    return cn


def cn_timer_work(n: int) -> int:
    cn = cn_with(n)
    bu = BindingUpdate(2, 105, ack=True, options=(AlternateCareOfAddress(coa(0)),))
    mh = build_mh(bu, hoa(0), CN_ADDR)
    return line_events(lambda: (cn.receive(mh, hoa(0), CN_ADDR, OnWire(coa(0)), 1.0),
                                drain(cn), cn.get_timer()))


def test_the_cn_finds_its_next_deadline_without_walking_its_peers():
    small, large = cn_timer_work(SMALL), cn_timer_work(LARGE)
    assert large < 2 * small, (small, large)


def test_the_cn_still_times_out_every_pending_proof():
    cn = cn_with(SMALL)
    first = cn.get_timer()
    assert first is not None and first > 0
    cn.handle_timer(first + 1.0 + 1)   # past every peer's proof deadline
    timeouts = []
    while (event := cn.next_event()) is not None:
        timeouts.append(event)
    assert sum(type(e).__name__ == "ProofTimeout" for e in timeouts) == SMALL
    assert cn.get_timer() is None and cn.bindings() == []


def test_deadlines_stay_proportional_to_the_live_keys_however_often_they_move():
    deadlines: Deadlines[int] = Deadlines()
    for round_ in range(200):
        for key in range(50):
            deadlines.schedule(key, 1000.0 + round_ + key / 100)
    assert len(deadlines) == 50
    assert len(deadlines._heap) <= 2 * 50 + 64
    assert deadlines.next() == 1199.0
    deadlines.cancel(0)
    assert deadlines.next() == 1199.01
    assert deadlines.pop_due(1199.02) == [1, 2]
    assert deadlines.next() == 1199.03
