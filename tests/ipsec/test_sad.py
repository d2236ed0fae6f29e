"""SAD: GETSPI, ADD/UPDATE/DELETE, lifetimes, MIGRATE, DUMP (RFC 4301 §4.4.2, RFC 2367)."""

from __future__ import annotations

import itertools
from ipaddress import IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import UDP, IPv6
from scapy.layers.ipsec import ESP

from vmip.ipsec import esp as esp_mod
from vmip.ipsec.sa import Direction, Lifetime, Mode, SaParams
from vmip.ipsec.sad import SAD, SPI_MIN, SadError
from vmip.ipsec.sadb import (
    AddEvent,
    DeleteEvent,
    DumpEvent,
    ExpireEvent,
    GetSpiEvent,
    MigrateEvent,
    SadbBus,
    UpdateEvent,
)

IN, OUT = Direction.IN, Direction.OUT
HOA = IPv6Address("2001:db8:100::10")
CN = IPv6Address("2001:db8:20::2")
HA = IPv6Address("2001:db8:100::1")
COA1 = IPv6Address("2001:db8:31::2")
COA2 = IPv6Address("2001:db8:32::2")
KEY = bytes(range(20))   # aes128gcm16: 16-byte key + 4-byte salt


def params(spi, direction=OUT, src=HOA, dst=CN, **kw) -> SaParams:
    kw.setdefault("suite", "aes128gcm16")
    kw.setdefault("enc_key", KEY)
    return SaParams(spi=spi, direction=direction, src=src, dst=dst, **kw)


def recorded_sad(**kw) -> tuple[SAD, list]:
    bus = SadbBus()
    events: list = []
    bus.subscribe(events.append)
    return SAD(bus, **kw), events


def udp_packet(src=HOA, dst=CN, size=100) -> bytes:
    return bytes(IPv6(src=str(src), dst=str(dst)) / UDP(sport=1000, dport=2000) / (b"p" * size))


# -- GETSPI -----------------------------------------------------------------

def test_getspi_publishes_spi_and_addresses_before_the_sa_is_complete():
    sad, events = recorded_sad()
    spi = sad.getspi(CN, HOA, now=0.0, name="cn-mn")
    assert events == [GetSpiEvent(spi=spi, src=CN, dst=HOA, name="cn-mn")]
    assert sad.lookup_inbound(spi) is None, "a larval SA must not accept traffic"
    (info,) = sad.dump(publish=False)
    assert (info.spi, info.state, info.src, info.dst) == (spi, "larval", CN, HOA)


def test_larval_becomes_mature_on_update():
    sad, events = recorded_sad()
    spi = sad.getspi(CN, HOA, now=0.0)
    esp = sad.update(params(spi, IN, src=CN, dst=HOA, name="cn-mn"), now=1.0)
    assert isinstance(esp, esp_mod.EspSA)
    assert sad.lookup_inbound(spi) is esp
    assert sad.get(spi).state == "mature"
    assert isinstance(events[-1], UpdateEvent) and events[-1].sa.spi == spi
    assert events[-1].sa.name == "cn-mn" and events[-1].sa.mode is Mode.TRANSPORT
    with pytest.raises(SadError):   # already mature
        sad.update(params(spi, IN, src=CN, dst=HOA), now=2.0)


def test_update_must_match_the_reservation():
    sad, _ = recorded_sad()
    spi = sad.getspi(CN, HOA, now=0.0)
    with pytest.raises(SadError):
        sad.update(params(spi, IN, src=HA, dst=HOA), now=1.0)        # other source
    with pytest.raises(SadError):
        sad.update(params(spi + 1 if spi < 0xFFFFFFFF else spi - 1, IN, src=CN, dst=HOA), 1.0)
    with pytest.raises(SadError):
        sad.add(params(spi, IN, src=CN, dst=HOA), now=1.0)           # reserved: use update
    assert sad.get(spi).state == "larval"


def test_larval_reservation_times_out():
    sad, events = recorded_sad(larval_lifetime=30.0)
    spi = sad.getspi(CN, HOA, now=100.0)
    assert sad.get_timer() == 130.0
    sad.handle_timer(129.9)
    assert sad.get(spi) is not None
    sad.handle_timer(130.0)
    assert sad.get(spi) is None and sad.get_timer() is None
    expire, delete = events[1:]
    assert isinstance(expire, ExpireEvent) and expire.kind == "hard"
    assert expire.cause == "larval_timeout" and expire.sa.spi == spi
    assert isinstance(delete, DeleteEvent) and delete.reason == "expired"


def test_getspi_values_look_random():
    sad = SAD()
    spis = [sad.getspi(CN, HOA, now=0.0) for _ in range(2000)]
    assert len(set(spis)) == 2000 and min(spis) >= SPI_MIN
    # Top 4 bits: 16 buckets of ~125; a sequential or low-biased allocator
    # fills one or two.  Bounds are > 5 standard deviations wide.
    buckets = [0] * 16
    for spi in spis:
        buckets[spi >> 28] += 1
    assert all(55 <= count <= 195 for count in buckets), buckets
    steps = {b - a for a, b in itertools.pairwise(spis)}
    assert len(steps) > 1000


@settings(max_examples=150, deadline=None)
@given(low=st.integers(SPI_MIN, 0xFFFFFFFF), width=st.integers(0, 40),
       count=st.integers(1, 30), candidates=st.lists(st.integers(0, 0x1_0000_0000), max_size=60))
def test_getspi_is_unique_in_range_and_never_reserved(low, width, count, candidates):
    high = min(low + width, 0xFFFFFFFF)
    queue = list(candidates)
    fair = itertools.count()

    def source(lo, hi):
        # Adversarial first (duplicates, 0..255, out of range), then a walk
        # over the whole range.
        return queue.pop(0) if queue else lo + (next(fair) * 7919) % (hi - lo + 1)

    sad = SAD(spi_source=source)
    got = []
    for _ in range(count):
        try:
            got.append(sad.getspi(CN, HOA, now=0.0, spi_min=low, spi_max=high))
        except SadError:
            break
    assert len(got) == len(set(got))
    assert all(low <= spi <= high and spi >= SPI_MIN for spi in got)
    assert {info.spi for info in sad.dump(publish=False)} == set(got)


def test_getspi_rejects_reserved_ranges_and_reports_exhaustion():
    sad = SAD()
    with pytest.raises(SadError):
        sad.getspi(CN, HOA, now=0.0, spi_min=0, spi_max=255)
    with pytest.raises(SadError):
        sad.getspi(CN, HOA, now=0.0, spi_min=300, spi_max=299)
    assert sad.getspi(CN, HOA, now=0.0, spi_min=300, spi_max=300) == 300
    with pytest.raises(SadError):
        sad.getspi(CN, HOA, now=0.0, spi_min=300, spi_max=300)
    with pytest.raises(SadError):
        sad.getspi(CN, ip_address("192.0.2.1"), now=0.0)


def test_getspi_avoids_spis_of_static_inbound_sas():
    candidates = iter([0x5000, 0x5000, 0x5001])
    sad = SAD(spi_source=lambda low, high: next(candidates))
    sad.add(params(0x5000, IN, src=CN, dst=HOA), now=0.0)
    assert sad.getspi(CN, HOA, now=0.0) == 0x5001


# -- ADD / DELETE / lookups -------------------------------------------------

def test_add_lookup_delete():
    sad, events = recorded_sad()
    out = sad.add(params(0x1001, OUT, name="mn-cn"), now=0.0)
    inbound = sad.add(params(0x2001, IN, src=CN, dst=HOA, name="cn-mn"), now=0.0)
    assert [type(e) for e in events] == [AddEvent, AddEvent]
    assert sad.outbound("mn-cn") is out and sad.outbound(0x1001) is out
    assert sad.lookup_inbound(0x2001) is inbound and sad.lookup_inbound(0x1001) is None
    assert sad.lookup_inbound(0x2001, proto=51) is None      # AH: not an SA of ours
    with pytest.raises(SadError):
        sad.add(params(0x1001, OUT, name="again"), now=0.0)
    info = sad.delete(0x2001, IN)
    assert info.name == "cn-mn" and events[-1] == DeleteEvent(info, "requested")
    assert sad.lookup_inbound(0x2001) is None
    with pytest.raises(SadError):
        sad.delete(0x2001, IN)
    assert len(sad) == 1


def test_spi_shared_by_two_destinations_needs_the_destination():
    sad = SAD()
    to_hoa = sad.add(params(0x3000, IN, src=CN, dst=HOA), now=0.0)
    to_ha = sad.add(params(0x3000, IN, src=CN, dst=HA), now=0.0)
    assert sad.lookup_inbound(0x3000, HOA.packed) is to_hoa
    assert sad.lookup_inbound(0x3000, HA.packed) is to_ha
    assert sad.lookup_inbound(0x3000, CN.packed) is None
    with pytest.raises(SadError):
        sad.delete(0x3000, IN)            # ambiguous
    sad.delete(0x3000, IN, dst=HA)
    # Unique again: the SPI alone decides (RFC 4301 §4.1).
    assert sad.lookup_inbound(0x3000, None) is to_hoa


def test_outbound_uses_the_newest_usable_sa_of_a_name():
    sad = SAD()
    old = sad.add(params(0x1001, OUT, name="mn-cn"), now=0.0)
    new = sad.add(params(0x1002, OUT, name="mn-cn"), now=5.0)
    assert sad.outbound("mn-cn") is new
    new.expire("hard")                    # unusable, e.g. sequence overflow
    assert sad.get(0x1002, OUT) is None   # and the SAD removed it
    assert sad.outbound("mn-cn") is old
    sad.delete(0x1001, OUT)
    assert sad.outbound("mn-cn") is None


def test_flush_deletes_everything_in_creation_order():
    sad, events = recorded_sad()
    sad.add(params(0x1001, OUT), now=0.0)
    spi = sad.getspi(CN, HOA, now=0.0)
    assert sad.flush() == 2 and len(sad) == 0
    deletes = [e for e in events if isinstance(e, DeleteEvent)]
    assert [d.sa.spi for d in deletes] == [0x1001, spi]
    assert all(d.reason == "flush" for d in deletes)


# -- lifetimes --------------------------------------------------------------

def test_time_lifetimes_soft_then_hard_with_a_fake_clock():
    sad, events = recorded_sad()
    esp = sad.add(params(0x1001, OUT, name="t", soft=Lifetime(seconds=10),
                         hard=Lifetime(seconds=20)), now=1000.0)
    assert sad.get_timer() == 1010.0
    sad.handle_timer(1009.999)
    assert len(events) == 1
    sad.handle_timer(1010.0)
    assert isinstance(events[-1], ExpireEvent) and events[-1].kind == "soft"
    assert events[-1].cause == "time"
    assert sad.get(0x1001, OUT).state == "dying" and esp.usable
    assert sad.outbound("t") is esp, "a soft-expired SA keeps working"
    assert sad.get_timer() == 1020.0
    sad.handle_timer(1020.0)
    kinds = [(type(e).__name__, getattr(e, "kind", None)) for e in events]
    assert kinds == [("AddEvent", None), ("ExpireEvent", "soft"), ("ExpireEvent", "hard"),
                     ("DeleteEvent", None)]
    assert not esp.usable and sad.outbound("t") is None and sad.get_timer() is None
    # ESP reported back through on_expire when told to expire: no duplicate events.
    assert len(events) == 4


def test_late_timer_fires_soft_and_hard_in_order():
    sad, events = recorded_sad()
    sad.add(params(0x1001, OUT, soft=Lifetime(seconds=5), hard=Lifetime(seconds=5)), now=0.0)
    sad.handle_timer(50.0)
    assert [getattr(e, "kind", None) for e in events[1:]] == ["soft", "hard", None]


def test_packet_lifetimes_come_from_esp_usage():
    sad, events = recorded_sad()
    esp = sad.add(params(0x1001, OUT, name="p", soft=Lifetime(packets=3),
                         hard=Lifetime(packets=5)), now=0.0)
    sent = []
    for n in range(1, 7):
        sent.append(esp_mod.transport_encap(udp_packet(), esp, now=float(n)))
        if n == 3:
            assert [e.kind for e in events if isinstance(e, ExpireEvent)] == ["soft"]
    expires = [e for e in events if isinstance(e, ExpireEvent)]
    assert [(e.kind, e.cause) for e in expires] == [("soft", "usage"), ("hard", "usage")]
    assert isinstance(events[-1], DeleteEvent) and events[-1].reason == "expired"
    assert sad.get(0x1001, OUT) is None and sad.outbound("p") is None
    # ESP's rule: the packet reaching the hard limit goes, the next does not.
    assert [s is not None for s in sent] == [True] * 5 + [False]


def test_byte_lifetimes_come_from_esp_usage():
    sad, events = recorded_sad()
    esp = sad.add(params(0x1001, OUT, soft=Lifetime(bytes=1000), hard=Lifetime(bytes=2000)),
                  now=0.0)
    kinds_after = []
    for n in range(8):
        esp_mod.transport_encap(udp_packet(size=392), esp, now=float(n))  # 400 B + trailer
        kinds_after.append(tuple(e.kind for e in events if isinstance(e, ExpireEvent)))
    # RFC 4301 §4.4.2.1 byte counts: soft after ~1000 bytes, hard after ~2000.
    assert kinds_after[1] == () and kinds_after[2] == ("soft",)
    assert kinds_after[4] == ("soft", "hard")
    assert sad.get(0x1001, OUT) is None


def test_usage_soft_then_time_hard():
    sad, events = recorded_sad()
    esp = sad.add(params(0x1001, OUT, soft=Lifetime(packets=1), hard=Lifetime(seconds=60)),
                  now=0.0)
    esp_mod.transport_encap(udp_packet(), esp, now=1.0)
    sad.handle_timer(60.0)
    assert [(type(e).__name__, getattr(e, "kind", None), getattr(e, "cause", None))
            for e in events] == [("AddEvent", None, None), ("ExpireEvent", "soft", "usage"),
                                 ("ExpireEvent", "hard", "time"), ("DeleteEvent", None, None)]


def test_subscriber_reacting_to_soft_expiry_sees_ordered_events():
    """A key manager that deletes on soft expiry: its DELETE comes after the EXPIRE."""
    sad, events = recorded_sad()

    def rekeyer(event):
        if isinstance(event, ExpireEvent) and event.kind == "soft":
            sad.add(params(0x1002, OUT, name="r"), now=10.0)
            sad.delete(event.sa.spi, OUT, reason="replaced")

    sad.bus.subscribe(rekeyer)
    sad.add(params(0x1001, OUT, name="r", soft=Lifetime(seconds=10)), now=0.0)
    sad.handle_timer(10.0)
    assert [(type(e).__name__, e.sa.spi) for e in events] == [
        ("AddEvent", 0x1001), ("ExpireEvent", 0x1001), ("AddEvent", 0x1002),
        ("DeleteEvent", 0x1001)]
    assert sad.outbound("r").spi == 0x1002
    assert sad.get_timer() is None


# -- MIGRATE ----------------------------------------------------------------

def test_migrate_moves_tunnel_endpoints_and_keeps_the_sa_state():
    sad, events = recorded_sad()
    tunnel = sad.add(params(0x4001, OUT, src=COA1, dst=HA, mode=Mode.TUNNEL, name="mn-ha-tun"),
                     now=0.0)
    inner = udp_packet(HOA, CN)
    first = IPv6(esp_mod.tunnel_encap(inner, tunnel, now=1.0))
    assert (first.src, first.dst) == (str(COA1), str(HA))
    info = sad.migrate(0x4001, OUT, COA2, HA, now=2.0)
    assert (info.src, info.dst) == (COA2, HA)
    assert events[-1] == MigrateEvent(info, old_src=COA1, old_dst=HA, new_src=COA2, new_dst=HA)
    assert sad.outbound("mn-ha-tun") is tunnel, "same ESP object: sequence numbers continue"
    second = IPv6(esp_mod.tunnel_encap(inner, tunnel, now=3.0))
    assert (second.src, second.dst) == (str(COA2), str(HA))
    assert second[ESP].spi == 0x4001 and second[ESP].seq == first[ESP].seq + 1


def test_migrate_inbound_tunnel_keeps_it_reachable():
    sad = SAD()
    esp = sad.add(params(0x4002, IN, src=HA, dst=COA1, mode=Mode.TUNNEL), now=0.0)
    sad.migrate(0x4002, IN, HA, COA2, now=1.0)
    assert sad.lookup_inbound(0x4002, COA2.packed) is esp
    assert sad.get(0x4002, IN, dst=COA2).dst == COA2
    assert sad.get(0x4002, IN, dst=COA1) is None


def test_migrate_refuses_transport_and_larval_sas():
    sad = SAD()
    sad.add(params(0x1001, OUT), now=0.0)
    with pytest.raises(SadError):
        sad.migrate(0x1001, OUT, COA2, CN, now=1.0)
    spi = sad.getspi(HA, HOA, now=0.0)
    with pytest.raises(SadError):
        sad.migrate(spi, IN, HA, COA2, now=1.0)
    with pytest.raises(SadError):
        sad.migrate(0x9999, OUT, COA2, CN, now=1.0)


# -- DUMP -------------------------------------------------------------------

def test_dump_lists_every_sa_in_creation_order_and_publishes_it():
    sad, events = recorded_sad()
    sad.add(params(0x1003, OUT, name="c", mode=Mode.TUNNEL, src=COA1, dst=HA), now=0.0)
    larval = sad.getspi(CN, HOA, now=1.0)
    sad.add(params(0x1001, IN, src=CN, dst=HOA, name="a"), now=2.0)
    sad.migrate(0x1003, OUT, COA2, HA, now=3.0)   # an edit does not reorder
    dump = sad.dump()
    assert [(i.spi, i.state) for i in dump] == [(0x1003, "mature"), (larval, "larval"),
                                                (0x1001, "mature")]
    assert dump[0].src == COA2
    assert events[-1] == DumpEvent(dump)
    assert list(sad) == list(dump)
