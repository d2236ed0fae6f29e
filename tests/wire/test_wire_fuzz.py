"""Every parser, fed arbitrary or damaged bytes, raises WireError and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_strategies import (
    DST_A,
    SRC_A,
    mutations,
    sample_ipv4_packets,
    sample_ipv6_packets,
    sample_mobility_headers,
)

from vmip.wire import icmpv6, mh
from vmip.wire.errors import WireError
from vmip.wire.flow import flow_key
from vmip.wire.ipv4 import IPv4Header, check_ipv4
from vmip.wire.ipv6 import (
    IPv6Header,
    check_ipv6,
    ipv6_dst,
    ipv6_next_header,
    ipv6_payload_length,
    ipv6_src,
    parse_ipv6,
)
from vmip.wire.tunnel import decapsulate
from vmip.wire.udp import parse_udp

IPV6_SEEDS = sample_ipv6_packets()
IPV4_SEEDS = sample_ipv4_packets()
MH_SEEDS = sample_mobility_headers()
UPPER_SEEDS = [p[40:] for p in IPV6_SEEDS] + [p[20:] for p in IPV4_SEEDS]


def _parse_ipv6_and_use_it(data: bytes) -> None:
    parsed = parse_ipv6(data)
    # The properties of the view must not fail on anything the parser accepted.
    parsed.home_address, parsed.final_destination, parsed.checksum_addresses(), parsed.upper_layer


PARSERS = {
    "parse_ipv6": _parse_ipv6_and_use_it,
    "IPv6Header.parse": IPv6Header.parse,
    "check_ipv6": check_ipv6,
    "ipv6 helpers": lambda d: (
        ipv6_src(d),
        ipv6_dst(d),
        ipv6_next_header(d),
        ipv6_payload_length(d),
    ),
    "IPv4Header.parse": IPv4Header.parse,
    "IPv4Header.parse unverified": lambda d: IPv4Header.parse(d, verify_checksum=False),
    "check_ipv4": check_ipv4,
    "flow_key": flow_key,
    "decapsulate": decapsulate,
    "parse_udp": parse_udp,
    "parse_udp verified": lambda d: parse_udp(d, SRC_A, DST_A),
    "parse_icmpv6": icmpv6.parse_icmpv6,
    "parse_icmpv6 verified": lambda d: icmpv6.parse_icmpv6(d, SRC_A, DST_A),
    "parse_mh": mh.parse_mh,
    "parse_mh verified": lambda d: mh.parse_mh(d, SRC_A, DST_A),
}

SEEDS_FOR = {
    "IPv4Header.parse": IPV4_SEEDS,
    "IPv4Header.parse unverified": IPV4_SEEDS,
    "check_ipv4": IPV4_SEEDS,
    "flow_key": IPV6_SEEDS + IPV4_SEEDS,
    "parse_udp": UPPER_SEEDS,
    "parse_udp verified": UPPER_SEEDS,
    "parse_icmpv6": UPPER_SEEDS,
    "parse_icmpv6 verified": UPPER_SEEDS,
    "parse_mh": MH_SEEDS,
    "parse_mh verified": MH_SEEDS,
}

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_wire_error(parser, data: bytes) -> None:
    try:
        parser(data)
    except WireError:
        pass


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(name, data):
    _only_wire_error(PARSERS[name], data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.data())
def test_mutated_valid_packets(name, data):
    seeds = SEEDS_FOR.get(name, IPV6_SEEDS)
    _only_wire_error(PARSERS[name], data.draw(mutations(seeds)))


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_seeds_parse(name):
    # The mutation seeds themselves are valid: the fuzzing starts from good input.
    seeds = SEEDS_FOR.get(name, IPV6_SEEDS)
    accepted = 0
    for seed in seeds:
        try:
            PARSERS[name](seed)
            accepted += 1
        except WireError:
            pass
    assert accepted >= 1


@pytest.mark.parametrize("seed", range(len(MH_SEEDS)))
def test_every_mh_seed_verifies(seed):
    mh.parse_mh(MH_SEEDS[seed], SRC_A, DST_A)


@FUZZ
@given(data=st.data())
def test_may_send_error_never_raises(data):
    packet = data.draw(st.one_of(st.binary(max_size=120), mutations(IPV6_SEEDS)))
    assert icmpv6.may_send_error(
        packet, data.draw(st.integers(1, 4)), data.draw(st.integers(0, 3))
    ) in (
        True,
        False,
    )
