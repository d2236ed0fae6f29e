"""Random link churn and loss with several care-of addresses: the cores converge;
random BID BUs from two HoAs: the caches stay bounded and every CoA has one holder.

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
from test_mipv6_pair_harness import CN_ADDR, HA_ADDR, HOA, HOME_PREFIX

from vmip.mobility.cn import Correspondent
from vmip.mobility.events import PathsChanged
from vmip.mobility.ha import HomeAgent
from vmip.mobility.mn import MAX_CARE_OF_ADDRESSES, EntryState
from vmip.wire import mh

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


HOAS = [HOA, IPv6Address("2001:db8:100::20")]
bu_fields = st.tuples(
    st.sampled_from(HOAS),                     # who sends (its own SA)
    st.integers(0, 65535),                     # sequence
    st.sampled_from([0, 1, 100]),              # lifetime units
    st.one_of(st.none(), st.integers(0, 6)),   # BID (None: no option)
    st.booleans(),                             # O flag
    st.sampled_from(ADDRESSES[:4]),            # CoA (AltCoA = on-wire source)
    st.floats(0.0, 30.0),                      # time step
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(bu_fields, max_size=40), st.booleans())
def test_random_bid_bus_keep_every_cache_bounded_and_every_coa_with_one_hoa(bus, home):
    if home:
        core = HomeAgent(HA_ADDR, HOME_PREFIX, mobile_nodes=HOAS, max_bids_per_hoa=3)
        local = HA_ADDR
    else:
        core = Correspondent(known_peers=HOAS, max_bids_per_hoa=3)
        local = CN_ADDR
        for hoa in HOAS:
            for coa in ADDRESSES[:3]:        # the fourth address is never proven
                core.proofs.add(hoa, coa, 0.0)
    now = 0.0
    for hoa, sequence, lifetime, bid, overwrite, coa, step in bus:
        options: tuple = (mh.AlternateCareOfAddress(coa),)
        if bid is not None:
            options += (mh.BindingIdentifier(bid, overwrite=overwrite),)
        message = mh.BindingUpdate(sequence, lifetime, ack=True, home_registration=home,
                                   options=options)
        now += step
        core.handle_timer(now)
        core.receive(mh.build_mh(message, hoa, local), hoa, local, coa, now)
        core.datagrams_to_send(now)
        while core.next_event() is not None:
            pass
        seen: dict[IPv6Address, IPv6Address] = {}
        for hoa_ in HOAS:
            entries = core.bindings_of(hoa_)
            assert len(entries) <= 3
            for entry in entries:
                assert entry.hoa == hoa_
                # A CoA names one binding of one HoA, and holder_of says which.
                assert seen.setdefault(entry.coa, hoa_) == hoa_
                assert core.holder_of(entry.coa) == hoa_
            bids = [entry.bid for entry in entries]
            assert len(set(bids)) == len(bids)
            assert None not in bids or len(bids) == 1
