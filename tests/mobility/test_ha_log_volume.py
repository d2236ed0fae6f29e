"""A home agent's info log stays readable at thousands of BUs a second (docs/scale.md).

Refreshes and moves are debug; bindings created, deleted, expired or
refused are info, sampled at a bounded rate with the count left out.
"""

from __future__ import annotations

import logging

from test_mipv6_pair_harness import HA_ADDR, HOME_PREFIX
from test_timer_scaling import coa, hoa

from vmip.log import LineBudget
from vmip.mobility.binding import OnWire
from vmip.mobility.ha import HomeAgent
from vmip.wire.mh import AlternateCareOfAddress, BindingUpdate, build_mh


def bu(ha: HomeAgent, i: int, seq: int, now: float, where: int = 0) -> None:
    address = coa(i) + (where << 32)
    message = BindingUpdate(seq, 105, ack=True, home_registration=True,
                            options=(AlternateCareOfAddress(address),))
    ha.receive(build_mh(message, hoa(i), HA_ADDR), hoa(i), HA_ADDR, OnWire(address), now)


def test_two_thousand_bus_a_second_make_a_handful_of_info_lines(caplog):
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    with caplog.at_level(logging.INFO, logger="vmip.mobility.ha"):
        for i in range(1000):                 # 1,000 new bindings in 0.5 s
            bu(ha, i, 1, i / 2000)
        for i in range(1000):                 # then every MN moves, in 0.5 s
            bu(ha, i, 2, 0.5 + i / 2000, where=1)
        bu(ha, 5000, 1, 10.0)                 # later, one more MN
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(ha.bindings()) == 1001
    assert 10 <= len(info) <= 25, len(info)
    assert {r.getMessage() for r in info} == {"home registration created"}
    assert info[-1].vmip_fields["hoa"] == hoa(5000)
    # Every creation is either logged or counted in the next line logged.
    left_out = sum(r.vmip_fields.get("lines_left_out", 0) for r in info)
    assert left_out + len(info) == 1001


def test_the_budget_refills_with_time_and_counts_what_it_left_out():
    budget = LineBudget(per_second=2)
    assert [budget.take(0.0) for _ in range(4)] == [0, 0, None, None]
    assert budget.take(0.4) is None           # 0.8 of a line earned: not yet
    assert budget.take(0.5) == 3              # one line, saying three were left out
    assert budget.take(10.0) == 0 and budget.take(10.0) == 0 and budget.take(10.0) is None
