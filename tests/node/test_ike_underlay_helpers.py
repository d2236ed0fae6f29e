"""The IKE underlay helpers: IPv4-mapped SAD addresses and the bounded refusal log."""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from vmip.node.ike_underlay import RefusalLog, sad_address


@given(st.integers(0, 2**32 - 1))
def test_ipv4_round_trips_through_its_mapped_form(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    mapped = sad_address(str(v4))
    assert mapped.version == 6 and mapped.ipv4_mapped == v4


def test_ipv6_stays_ipv6() -> None:
    assert sad_address("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert sad_address("2001:db8::1%eth0") == ipaddress.IPv6Address("2001:db8::1")


def test_refusals_are_all_counted_and_logged_once_per_kind(caplog) -> None:
    counters: Counter[str] = Counter()
    refusals = RefusalLog(counters, limit=2)
    with caplog.at_level(logging.INFO):
        for _ in range(100):          # a peer retransmitting its IKE_SA_INIT
            refusals.refuse("ike_refused_no_local_address", "gw", "needs a bind")
        refusals.refuse("ike_refused_no_local_address", "gw2", "needs a bind")
        refusals.refuse("ike_refused_no_local_address", "gw3", "needs a bind")  # over the limit
    assert counters["ike_refused_no_local_address"] == 102
    lines = [r for r in caplog.records if "ike peer refused" in r.getMessage()]
    assert len(lines) == 2
    assert "Traceback" not in caplog.text
