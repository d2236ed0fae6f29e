"""UDP-Lite packets have ports in the flow key, so a policy naming UDP-Lite ports can match."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

from vmip.ipsec.sa import Direction
from vmip.ipsec.spd import SPD, Action, Policy, Selector
from vmip.wire import proto
from vmip.wire.flow import flow_key

SRC, DST = IPv6Address("2001:db8::1").packed, IPv6Address("2001:db8::2").packed


def test_udplite_ports_are_read_and_a_port_policy_matches() -> None:
    segment = struct.pack("!HHHH", 5000, 6000, 8, 0) + b"data"
    packet = struct.pack("!IHBB", 6 << 28, len(segment), proto.UDPLITE, 64) + SRC + DST + segment
    key = flow_key(packet)
    assert (key.proto, key.sport, key.dport) == (proto.UDPLITE, 5000, 6000)
    spd = SPD()
    spd.add(Policy("lite", Direction.OUT, Selector(local="2001:db8::1/128", proto=proto.UDPLITE,
                                                   remote_ports=(6000, 6000)), Action.BYPASS))
    assert spd.lookup(Direction.OUT, key) is not None
