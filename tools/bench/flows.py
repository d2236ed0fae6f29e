#!/usr/bin/env python3
"""Per-packet cost of the per-flow send policy (vmip/node/flows.py).

    python tools/bench/flows.py [--json FILE] [--flows 1,10,100]

Measured, in microseconds per packet (best of several runs), on a 1280-byte
UDP packet behind a hop-by-hop header:

- ``classify_no_flows``: ``FlowPolicy.classify`` on a node without
  ``[[flow]]`` (one branch);
- ``classify_hit_<n>``: with *n* flows, the packet's flow already in the
  classifier's cache (the common case: a known flow);
- ``classify_miss_<n>``: always-new flows (a new source port each packet):
  the SPD's tuple-space search plus cache insertion;
- ``copies_no_paths``: ``FlowSender.copies`` towards a peer without
  multi-CoA paths (the cost every node pays per packet sent);
- ``copies_duplicate_2``: a duplicate flow over two paths (classification,
  two ancillary records, the counters);
- ``copies_best_2``: a best flow over an MN's two paths, the link picked by
  the node's :class:`~vmip.node.quality.LinkQuality` (both links measured).

Not a test; numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import timeit
from collections import Counter
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vmip.mobility.ancillary import Ancillary
from vmip.node.flows import DUPLICATE, FlowMode, FlowPolicy, FlowRule, FlowSender
from vmip.node.quality import LinkQuality
from vmip.wire import proto
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp

HOA, CN = IPv6Address("2001:db8:100::10"), IPv6Address("2001:db8:20::2")
LOOPS = 20000


def packet(sport: int = 4000, dport: int = 5060) -> bytes:
    segment = build_udp(sport, dport, bytes(1280 - 40 - 8 - 8), HOA.packed, CN.packed)
    hop_by_hop = bytes((proto.UDP, 0, 1, 4, 0, 0, 0, 0))   # PadN
    header = build_ipv6_header(HOA.packed, CN.packed, proto.HOP_BY_HOP, len(segment) + 8)
    return header + hop_by_hop + segment


def rules(count: int) -> list[FlowRule]:
    # The packet's flow is the last one: every other flow is looked at first.
    others = [FlowRule(f"f{i}", FlowMode.parse("link:lte0"), protocol=6,
                       remote=IPv6Network(f"2001:db8:{i + 1:x}::/48"), remote_ports=(i, i))
              for i in range(count - 1)]
    return [*others, FlowRule("voice", DUPLICATE, protocol=17,
                              remote=IPv6Network(f"{CN}/128"), remote_ports=(5060, 5060))]


def best_of(statement, loops: int = LOOPS, repeat: int = 5) -> float:
    return min(timeit.repeat(statement, number=loops, repeat=repeat)) / loops * 1e6


class _Path:
    def __init__(self, link: str, coa: str) -> None:
        self.link = link
        self._ancillary = Ancillary.of(IPv6Address(coa))

    def ancillary(self) -> Ancillary:
        return self._ancillary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--flows", default="1,10,100")
    args = parser.parse_args()
    sizes = [int(n) for n in args.flows.split(",")]
    data = packet()
    results: dict[str, float] = {}
    empty = FlowPolicy()
    results["classify_no_flows"] = best_of(lambda: empty.classify(data))
    for size in sizes:
        policy = FlowPolicy(rules(size))
        assert policy.classify(data) is DUPLICATE
        results[f"classify_hit_{size}"] = best_of(lambda policy=policy: policy.classify(data))
        # Every packet a flow never seen: 5 runs of LOOPS // 2, all distinct ports.
        fresh = iter([packet(sport=1024 + i) for i in range(5 * (LOOPS // 2))])
        policy = FlowPolicy(rules(size), cache_size=5 * LOOPS)
        results[f"classify_miss_{size}"] = best_of(
            lambda policy=policy, it=fresh: policy.classify(next(it)), loops=LOOPS // 2)
    esp = data   # the copies only look at the destination and the length
    no_paths = FlowSender(FlowPolicy(rules(10)), lambda peer: [], None, Counter())
    results["copies_no_paths"] = best_of(lambda: no_paths.copies(data, esp, 1.0))
    paths = [_Path("wifi0", "2001:db8:31::2"), _Path("lte0", "2001:db8:32::2")]
    duplicate = FlowSender(FlowPolicy(rules(10)), lambda peer: paths, None, Counter())
    results["copies_duplicate_2"] = best_of(lambda: duplicate.copies(data, esp, 1.0))
    quality = LinkQuality()
    for second in range(5):
        quality.rtt_sample("wifi0", 0.012, float(second))
        quality.rtt_sample("lte0", 0.062, float(second))
    best = FlowSender(FlowPolicy(rules(10)), lambda peer: paths, quality.best, Counter())
    other = packet(dport=80)   # no flow: best
    assert best.copies(other, esp, 5.0) == [paths[0].ancillary()]
    results["copies_best_2"] = best_of(lambda: best.copies(other, esp, 5.0))
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:7.3f} µs")
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(),
                                         "machine": platform.machine(),
                                         "us_per_packet": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
