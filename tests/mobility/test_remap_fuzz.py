"""Hypothesis: the per-packet paths never raise, the rule parser raises only RemapError."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmip.mobility.ancillary import UNSPECIFIED, Ancillary
from vmip.mobility.remap import (
    ANCILLARY,
    MAX_EXPECTED,
    Direction,
    Field,
    RemapEngine,
    RemapError,
    RemapRule,
    format_rule,
    parse_rule,
)

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

HOA = IPv6Address("2001:db8:100::10")
COA = IPv6Address("2001:db8:31::2")
CN = IPv6Address("2001:db8:20::2")
COA2 = IPv6Address("2001:db8:32::2")
RULE_SPIS = (42, 43, 0x1301)
#: An SPI whose inbound rules expect a set (two bindings of one HoA, RFC 5648).
SET_SPI = 44


def loaded_engine(missing_ancillary: str = "pass") -> RemapEngine:
    engine = RemapEngine(missing_ancillary=missing_ancillary)  # type: ignore[arg-type]
    for spi in RULE_SPIS:
        engine.add(RemapRule(Direction.OUT, spi, Field.SRC, HOA, ANCILLARY, fallback=COA))
        engine.add(RemapRule(Direction.OUT, spi, Field.DST, CN, ANCILLARY))
        engine.add(RemapRule(Direction.IN, spi, Field.SRC, IPv6Address(0), CN,
                             copy_to_ancillary=True))
        engine.add(RemapRule(Direction.IN, spi, Field.DST, COA, HOA, copy_to_ancillary=True))
    engine.add(RemapRule(Direction.IN, SET_SPI, Field.SRC, COA, HOA, also_expected=(COA2,)))
    engine.add(RemapRule(Direction.IN, SET_SPI, Field.DST, COA, HOA, also_expected=(COA2,),
                         copy_to_ancillary=True))
    return engine


addresses = st.one_of(st.sampled_from([HOA.packed, COA.packed, COA2.packed, CN.packed,
                                       UNSPECIFIED]),
                      st.binary(min_size=16, max_size=16))


@st.composite
def ipv6_esp_like(draw) -> bytes:
    """IPv6 headers that often carry ESP (directly or behind options) with a ruled SPI."""
    spi = draw(st.one_of(st.sampled_from((*RULE_SPIS, SET_SPI)), st.integers(0, 0xFFFFFFFF)))
    body = draw(st.binary(max_size=64))
    next_header = draw(st.sampled_from([50, 50, 0, 60, 43, 44, 51, 6, 59]))
    if next_header in (0, 60):  # an options header then ESP
        payload = bytes([50, 0]) + bytes(6) + struct.pack(">I", spi) + body
    else:
        payload = struct.pack(">I", spi) + body
    payload = draw(st.one_of(st.just(payload), st.binary(max_size=80)))
    claimed = draw(st.one_of(st.just(len(payload)), st.integers(0, 0xFFFF)))
    first = draw(st.sampled_from([0x60, 0x60, 0x6F, 0x40, 0x00]))
    header = bytes([first, 0, 0, 0]) + struct.pack(">HBB", claimed, next_header, 64)
    return header + draw(addresses) + draw(addresses) + payload


ancillaries = st.one_of(
    st.none(), addresses, st.binary(max_size=20), st.just(COA), st.integers(),
    st.builds(Ancillary, addresses, addresses),
    st.builds(Ancillary, st.binary(max_size=17), st.binary(max_size=17)),
)


def _only_addresses_differ(before: bytes, after: bytes) -> bool:
    return (len(before) == len(after) and bytes(after[:8]) == bytes(before[:8])
            and bytes(after[40:]) == bytes(before[40:]))


@FUZZ
@given(st.one_of(st.binary(max_size=120), ipv6_esp_like()), ancillaries,
       st.sampled_from(["pass", "drop"]))
def test_outbound_never_raises_and_touches_only_the_addresses(packet, ancillary, policy):
    result = loaded_engine(policy).outbound(packet, ancillary)
    assert result is None or _only_addresses_differ(packet, result)


@FUZZ
@given(st.one_of(st.binary(max_size=120), ipv6_esp_like()))
def test_inbound_never_raises_and_touches_only_the_addresses(packet):
    engine = loaded_engine()
    result = engine.inbound(packet)
    if result is not None:
        rewritten, ancillary = result
        assert _only_addresses_differ(packet, rewritten)
        assert isinstance(ancillary, bytes) and len(ancillary) == 16
    full = engine.inbound_ancillary(packet)
    assert (full is None) == (result is None)


@FUZZ
@given(addresses, st.binary(min_size=8, max_size=64))
def test_mn_outbound_then_cn_inbound_gives_the_sa_level_packet_back(coa, body):
    # §3.1 rules 1 and 2 on the two ends: whatever CoA MIPv6 picks, the CN
    # sees the HoA again and learns the CoA (or :: if the HoA was kept).
    mn, cn = RemapEngine(), RemapEngine()
    mn.add(RemapRule(Direction.OUT, 42, Field.SRC, HOA, ANCILLARY))
    cn.add(RemapRule(Direction.IN, 42, Field.SRC, IPv6Address(0), HOA, copy_to_ancillary=True))
    payload = struct.pack(">I", 42) + body
    sa_level = bytes([0x60, 0, 0, 0]) + struct.pack(">HBB", len(payload), 50, 64) \
        + HOA.packed + CN.packed + payload
    on_wire = mn.outbound(sa_level, coa)
    assert on_wire is not None
    chosen = HOA.packed if coa == UNSPECIFIED else coa
    assert on_wire[8:24] == chosen
    back = cn.inbound(on_wire)
    assert back is not None
    assert back[0] == sa_level
    assert back[1] == (UNSPECIFIED if chosen == HOA.packed else chosen)


# -- the rule text parser -------------------------------------------------------

words = st.sampled_from(["dir", ":", ",", "in", "out", " ", "SPI", "42", "0x1f", "exp.", "src",
                         "dst", "remap.", "::", "ancillary", "(ancillary)", "or", "HoA",
                         "2001:db8::1", "fe80::1%2", "#", "incoming", "99999999999", "\n",
                         "{", "}", "{2001:db8::1, 2001:db8::2}", "{HoA,"])


def test_parse_rule_refuses_non_text():
    for thing in (None, b"dir: out", 42):
        try:
            parse_rule(thing)  # type: ignore[arg-type]
        except RemapError:
            continue
        raise AssertionError(f"{thing!r} parsed")


ipv6 = st.builds(IPv6Address, st.integers(1, 2**128 - 1))


@st.composite
def valid_rules(draw) -> RemapRule:
    direction = draw(st.sampled_from(list(Direction)))
    field = draw(st.sampled_from(list(Field)))
    expected = draw(ipv6)
    also: tuple[IPv6Address, ...] = ()
    if field is Field.SRC and draw(st.booleans()):
        expected = IPv6Address(0)
    elif direction is Direction.IN and draw(st.booleans()):
        # Several bindings of one HoA: a set, in the order given.
        more = draw(st.lists(ipv6, max_size=MAX_EXPECTED - 1, unique=True))
        also = tuple(a for a in more if a != expected)
    fallback = None
    copy = False
    if direction is Direction.OUT and draw(st.booleans()):
        remap = ANCILLARY
        fallback = draw(st.one_of(st.none(), ipv6))
    else:
        remap = draw(ipv6)
        copy = direction is Direction.IN and draw(st.booleans())
    return RemapRule(direction, draw(st.integers(1, 0xFFFFFFFF)), field, expected, remap,
                     copy, fallback=fallback, also_expected=also)


@FUZZ
@given(valid_rules())
def test_format_and_parse_are_inverse(rule):
    assert parse_rule(format_rule(rule)) == rule


@st.composite
def mutated_rule_text(draw) -> str:
    """A valid rule's text with a few characters cut or inserted: near misses."""
    text = format_rule(draw(valid_rules()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + text[at + 1:]
        else:
            text = text[:at] + draw(st.text(max_size=3)) + text[at:]
    return text


@FUZZ
@given(st.one_of(st.text(max_size=120), st.lists(words, max_size=25).map("".join),
                 st.lists(words, max_size=25).map(" ".join), mutated_rule_text()))
def test_parse_rule_raises_only_remap_error(text):
    try:
        rule = parse_rule(text, {"HoA": HOA})
    except RemapError:
        return
    assert isinstance(rule, RemapRule)
    assert parse_rule(format_rule(rule)) == RemapRule(
        rule.direction, rule.spi, rule.field, rule.expected, rule.remap,
        rule.copy_to_ancillary, fallback=rule.fallback, also_expected=rule.also_expected)


@FUZZ
@given(st.lists(addresses, min_size=1, max_size=4), addresses)
def test_a_set_rule_accepts_exactly_its_addresses(expected, source):
    # RFC 5648 bindings: the inbound rule of the HoA's data takes any bound
    # CoA, and nothing else (the SA-level address passes unchanged).
    wanted = [IPv6Address(a) for a in dict.fromkeys(expected)
              if a != UNSPECIFIED and a != HOA.packed]
    if not wanted:
        return
    engine = RemapEngine()
    engine.add(RemapRule(Direction.IN, 9, Field.SRC, wanted[0], HOA,
                         also_expected=tuple(wanted[1:]), copy_to_ancillary=True))
    payload = struct.pack(">II", 9, 1) + bytes(8)
    packet = bytes([0x60, 0, 0, 0]) + struct.pack(">HBB", len(payload), 50, 64) \
        + source + CN.packed + payload
    for form in (packet, bytearray(packet), memoryview(packet)):
        result = engine.inbound(form)
        if source == HOA.packed:
            assert result is not None and result[1] == UNSPECIFIED
        elif IPv6Address(source) in wanted:
            assert result is not None and result[0][8:24] == HOA.packed
            assert result[1] == source
        else:
            assert result is None
