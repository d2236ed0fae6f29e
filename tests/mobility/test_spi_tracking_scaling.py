"""SPI tracking start-up and per-event work are linear in the SAs, not quadratic (docs/scale.md).

A HA holds an MH SA pair per MN and registers one ``track_mh`` intent per
MN at start-up; each intent and each SADB event must look at its own SAs
only.  Work is counted as Python line events (deterministic, unlike a
clock): 10× the MNs must cost about 10× the work, where the quadratic
set-up cost about 100×.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from workcount import line_events

from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.sad import SAD
from vmip.ipsec.sadb import SadbBus
from vmip.ipsec.spd import SPD, Action, Policy, Selector
from vmip.mobility.remap import Field, RemapEngine
from vmip.mobility.spi_tracking import Role, SpiTracker

HA = IPv6Address("2001:db8:100::1")
KEY = bytes(range(20))
MH = 135


def hoa(i: int) -> IPv6Address:
    return HA + 0x1_0000 + i



def ha_keys(n: int) -> tuple[SadbBus, SAD, SPD]:
    """A HA's static keys for *n* MNs: an MH SA pair and its two policies each."""
    bus = SadbBus()
    sad, spd = SAD(bus), SPD()
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
    return bus, sad, spd


def start_up(n: int) -> tuple[int, SpiTracker, RemapEngine]:
    bus, sad, spd = ha_keys(n)
    engine = RemapEngine()
    made: list[SpiTracker] = []

    def run() -> None:
        tracker = SpiTracker(bus, engine, spd=spd, sad=sad)
        for i in range(n):
            tracker.track_mh(HA, hoa(i), Role.HA)
        made.append(tracker)

    return line_events(run), made[0], engine


def test_start_up_with_ten_times_the_mns_costs_about_ten_times_the_work():
    small, _tracker, engine = start_up(40)
    large, _other, _engine = start_up(400)
    assert large < 15 * small, (small, large)
    # And it did its job: every MN's SAs got the HA's MH rules (draft §3.1 rules 2, 3).
    for i in (0, 39):
        assert engine.get(Direction.IN, 0x1000 + 2 * i, Field.SRC) is not None
        assert engine.get(Direction.OUT, 0x1001 + 2 * i, Field.DST) is not None


def test_an_sa_event_costs_the_same_with_40_or_400_mns():
    def one_update(n: int) -> int:
        bus, sad, spd = ha_keys(n)
        tracker = SpiTracker(bus, RemapEngine(), spd=spd, sad=sad)
        tracker.track_mh(HA, hoa(0), Role.HA)
        mn = hoa(n - 1)
        params = SaParams(0x9000, Direction.IN, mn, HA, "aes128gcm16", KEY,
                          mode=Mode.TRANSPORT, name=f"mn{n - 1}-in")
        return line_events(lambda: sad.add(params, 1.0))

    small, large = one_update(40), one_update(400)
    assert large < 2 * small, (small, large)
