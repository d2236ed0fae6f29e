"""An IKE endpoint's work per datagram and per timer does not grow with its IKE SAs.

A home agent keying its mobile nodes with IKEv2 holds one IKE SA per MN
behind one endpoint, and the node asks every core for its next timer after
every packet it handles (``Pump.arm``).  An endpoint that walks every
established SA in ``datagrams_to_send`` or ``get_timer`` makes each packet
cost O(n).  Work is counted as Python line events (tests/workcount.py), not
time: the ratio between LARGE and SMALL established SAs is about
LARGE / SMALL for a walk and a small constant for the heap.
"""

from __future__ import annotations

import itertools

from workcount import line_events

from vmip.ike.endpoint import IkeEndpoint
from vmip.ike.events import IkeSaEstablished
from vmip.ike.ikesa import IkeSa, IkeSaConfig, Role

PSK = b"one key for the whole swarm"
HA = ("2001:db8::1", 500)
SMALL, LARGE = 10, 100
DPD = 30.0


def mn_address(i: int) -> tuple[str, int]:
    return (f"2001:db8:100::{i + 1:x}", 500)


class Swarm:
    """One responder endpoint (the HA) and n initiator IkeSas (the MNs)."""

    def __init__(self, n: int, now: float = 1000.0):
        spis = itertools.count(0x1000)
        self.now = now
        self.ha = IkeEndpoint(lambda addr: IkeSaConfig(psk=PSK, dpd_interval=DPD), HA,
                              spi_allocator=lambda t: next(spis), cookie_threshold=10_000)
        self.mns = []
        for i in range(n):
            # Established one after the other, 0.01 s apart: DPD deadlines all differ.
            self.now = now + i * 0.01
            mn = IkeSa(IkeSaConfig(psk=PSK), Role.INITIATOR, mn_address(i), HA, self.now,
                       spi_allocator=lambda t: next(spis))
            mn.initiate(self.now)
            self.mns.append(mn)
            self.exchange()
            assert mn.is_established
        self.events = []
        while (item := self.ha.next_event()) is not None:
            self.events.append(item[1])
        assert sum(isinstance(e, IkeSaEstablished) for e in self.events) == n

    def exchange(self, rounds: int = 10) -> None:
        for _ in range(rounds):
            moved = False
            for index, mn in enumerate(self.mns):
                for data, _addr in mn.datagrams_to_send(self.now):
                    moved = True
                    self.ha.receive_datagram(data, mn_address(index), self.now)
            for data, addr in self.ha.datagrams_to_send(self.now):
                moved = True
                index = int(addr[0].rsplit(":", 1)[1], 16) - 1
                self.mns[index].receive_datagram(data, HA, self.now)
            if not moved:
                return
        raise AssertionError("exchange did not settle")


def one_request_work(n: int) -> tuple[int, list]:
    """An MN's liveness check reaching the HA, the answer, and the pump's next-timer look."""
    swarm = Swarm(n)
    swarm.ha.get_timer()   # the pump's look after the last exchange (drops stale entries)
    mn = swarm.mns[0]
    mn.send_liveness_check(swarm.now)
    (request, _), = mn.datagrams_to_send(swarm.now)
    answers = []

    def ha_handles_it():
        swarm.ha.receive_datagram(request, mn_address(0), swarm.now)
        answers.extend(swarm.ha.datagrams_to_send(swarm.now))
        swarm.ha.get_timer()

    return line_events(ha_handles_it), answers


def test_a_message_to_one_ike_sa_costs_the_same_with_ten_times_the_sas():
    (small, small_answers), (large, large_answers) = one_request_work(SMALL), \
        one_request_work(LARGE)
    assert len(small_answers) == len(large_answers) == 1
    assert large < 1.2 * small, (small, large)


def test_the_next_deadline_is_found_without_walking_the_sas():
    def lookup_work(n: int) -> int:
        swarm = Swarm(n)
        assert swarm.ha.get_timer() == 1000.0 + DPD   # the first MN's DPD deadline
        return line_events(swarm.ha.get_timer)

    small, large = lookup_work(SMALL), lookup_work(LARGE)
    assert large < 1.2 * small, (small, large)


def test_a_due_timer_handles_the_due_sa_only_and_every_sa_in_deadline_order():
    def due_work(n: int) -> tuple[int, Swarm]:
        swarm = Swarm(n)
        first = swarm.ha.get_timer()
        work = line_events(lambda: (swarm.ha.handle_timer(first),
                                    swarm.ha.datagrams_to_send(first)))
        return work, swarm

    (small, _), (large, swarm) = due_work(SMALL), due_work(LARGE)
    assert large < 1.2 * small, (small, large)
    # Every other SA still gets its liveness check, each at its own deadline
    # (the first one's went out above).
    ha, sent = swarm.ha, []
    deadline = ha.get_timer()
    while deadline is not None and deadline < 1000.0 + DPD + 1.0:
        ha.handle_timer(deadline)
        sent += [(deadline, addr) for _data, addr in ha.datagrams_to_send(deadline)]
        deadline = ha.get_timer()
    expected = [(1000.0 + i * 0.01 + DPD, mn_address(i)) for i in range(1, LARGE)]
    assert [(round(t, 6), addr) for t, addr in sent] == \
        [(round(t, 6), addr) for t, addr in expected]
    # Not answered yet: the next deadline is the first check's retransmission.
    assert deadline is not None and deadline > 1000.0 + DPD


def test_an_sa_acted_on_directly_still_sends_and_re_arms():
    swarm = Swarm(SMALL)
    sa = next(iter(sa for sa in swarm.ha.sas if sa.remote_addr == mn_address(3)))
    before = swarm.ha.get_timer()
    sa.send_liveness_check(swarm.now)     # not through the endpoint: no collect
    out = swarm.ha.datagrams_to_send(swarm.now)
    assert [addr for _data, addr in out] == [mn_address(3)]
    # Its retransmission deadline (now + 1 s) is ahead of every DPD deadline.
    assert swarm.ha.get_timer() == swarm.now + 1.0 < before


def test_the_due_sas_are_found_without_walking_and_stay_due():
    def due_work(n: int) -> tuple[int, Swarm, list]:
        swarm = Swarm(n)
        first = swarm.ha.get_timer()
        found: list = []
        work = line_events(lambda: found.extend(swarm.ha.due(first)))
        return work, swarm, found

    (small, _, _), (large, swarm, found) = due_work(SMALL), due_work(LARGE)
    assert large < 1.2 * small, (small, large)
    assert [sa.remote_addr for sa in found] == [mn_address(0)]
    # Looking did not handle them: the timer still fires the liveness check.
    first = swarm.ha.get_timer()
    assert swarm.ha.due(first) == found
    swarm.ha.handle_timer(first)
    assert [addr for _data, addr in swarm.ha.datagrams_to_send(first)] == [mn_address(0)]
    assert swarm.ha.due(first) == []
