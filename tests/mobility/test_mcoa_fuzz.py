"""Random link churn and loss with several care-of addresses: the cores converge.

Whatever the MN's links did and whatever was lost on the way, once the
network heals the HA and the CN hold exactly the MN's last set of (BID,
CoA) bindings, every one of them proven at the CN, and every table stays
bounded on the way.
"""

from __future__ import annotations

import random
from ipaddress import IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mcoa_registration import world
from test_mipv6_pair_harness import CN_ADDR, HA_ADDR, HOA

from vmip.mobility.events import PathsChanged
from vmip.mobility.mn import MAX_CARE_OF_ADDRESSES, EntryState

ADDRESSES = [IPv6Address(f"2001:db8:{80 + n}::2") for n in range(6)]

link_sets = st.dictionaries(st.integers(1, 4), st.sampled_from(ADDRESSES), min_size=1,
                            max_size=4).filter(lambda d: len(set(d.values())) == len(d))
steps = st.lists(st.tuples(st.sampled_from(["set", "primary"]), link_sets,
                           st.floats(0.0, 3.0), st.floats(0.0, 0.6)), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.integers(0, 2**32 - 1))
def test_bindings_converge_on_the_last_set_after_any_churn_and_loss(plan, seed):


    net, ha, cn, mn = world()
    mn.extra = set(ADDRESSES)
    lose = random.Random(seed)
    t = 0.0
    for action, coas, wait, loss in plan:
        net.loss = lambda delivery, loss=loss: lose.random() < loss
        if action == "primary" and mn.mn.care_of_addresses:
            mn.mn.set_primary(max(mn.mn.care_of_addresses), t)
        else:
            mn.mn.set_care_of_addresses(coas, t)
        t += wait
        net.run(t)
        assert len(mn.mn.entries()) <= 2 * MAX_CARE_OF_ADDRESSES
        assert len(ha.ha.bindings_of(HOA)) <= 4 and len(cn.cn.bindings_of(HOA)) <= 4
    net.loss = lambda delivery: False
    # Long enough for the slowest back-off (32 s) and a refresh to run.
    net.run(t + 400.0)
    wanted = sorted(mn.mn.care_of_addresses.items())
    assert [(b.bid, b.coa) for b in ha.ha.bindings_of(HOA)] == wanted
    assert [(b.bid, b.coa) for b in cn.cn.bindings_of(HOA)] == wanted
    assert cn.cn.paths(HOA) == (tuple(wanted), tuple(wanted))
    assert all(entry.state is EntryState.BOUND for entry in mn.mn.entries())
    assert sorted(mn.mn.paths(CN_ADDR)) == wanted and sorted(mn.mn.paths(HA_ADDR)) == wanted
    assert ha.ha.binding(HOA).coa == dict(wanted)[min(dict(wanted))]
    last = [e for e in cn.of_type(PathsChanged)][-1]
    assert last.send == tuple(wanted)
