"""SPD and SAD lookups cost the same with 100, 1,000 and 10,000 MNs (docs/scale.md).

A home agent holds an MH SA pair and two /128 policies per MN.  What one
BU costs in SAD and SPD work (inbound SA by SPI, the RFC 4301 §5.2 policy
check by flow, the outbound policy and SA of the BA) is counted in Python
line events, deterministic unlike a clock: it must not grow with the MNs
(a tuple-space index and dicts; a list walk would grow 100×).
"""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from workcount import line_events

from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.sad import SAD
from vmip.ipsec.sadb import SadbBus
from vmip.ipsec.spd import SPD, Action, Policy, Selector

HA = IPv6Address("2001:db8:100::1")
KEY = bytes(range(20))
MH = 135


def hoa(i: int) -> IPv6Address:
    return HA + 0x1_0000 + i



class _Esp:
    """Stands in for EspSA: the lookups only hand it back (no crypto set-up for 20,000)."""

    usable = True

    def __init__(self, params, now, **_kwargs) -> None:
        self.params = params


def ha_keys(n: int) -> tuple[SAD, SPD]:
    sad, spd = SAD(SadbBus(), esp_factory=_Esp), SPD()
    # What every HA has besides: discard unprotected MH, bypass the home prefix.
    spd.add(Policy(name="unprotected-mh", direction=Direction.IN, action=Action.DISCARD,
                   priority=10_000, selector=Selector(proto=MH)))
    spd.add(Policy(name="home-bypass", direction=Direction.OUT, action=Action.BYPASS,
                   priority=10_000, selector=Selector(remote="2001:db8:100::/64")))
    for i in range(n):
        mn = hoa(i)
        for direction, spi, src, dst in ((Direction.IN, 0x1000 + 2 * i, mn, HA),
                                         (Direction.OUT, 0x1001 + 2 * i, HA, mn)):
            name = f"mn{i}-{direction.value}"
            sad.add(SaParams(spi, direction, src, dst, "aes128gcm16", KEY, mode=Mode.TRANSPORT,
                             name=name), 0.0)
            spd.add(Policy(name=f"p-{name}", direction=direction, action=Action.PROTECT,
                           selector=Selector(local=f"{HA}/128", remote=f"{mn}/128", proto=MH),
                           sa_bundle=(name,)))
    return sad, spd


def one_bu(sad: SAD, spd: SPD, i: int) -> int:
    mn = hoa(i)

    def work() -> None:
        esp = sad.lookup_inbound(0x1000 + 2 * i, HA.packed)
        assert esp is not None and esp.params.src == mn
        inbound = spd.lookup_uncached(Direction.IN, (mn.packed, HA.packed, MH, 0, 0))
        assert inbound is not None and inbound.name == f"p-mn{i}-in"
        outbound = spd.lookup_uncached(Direction.OUT, (HA.packed, mn.packed, MH, 0, 0))
        assert outbound is not None
        [out] = sad.outbound_bundle(outbound)
        assert out.params.dst == mn

    return line_events(work)


@pytest.mark.slow
def test_a_bus_sad_and_spd_work_is_the_same_for_100_1000_and_10000_mns():
    work = {}
    for n in (100, 1000, 10_000):
        sad, spd = ha_keys(n)
        work[n] = max(one_bu(sad, spd, i) for i in (0, n // 2, n - 1))
    assert work[10_000] <= work[100] + 4, work
    assert work[1000] <= work[100] + 4, work
