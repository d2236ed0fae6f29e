#!/usr/bin/env python3
"""Per-packet SPD lookup cost with and without the flow cache.

    python tools/bench/spd.py [--json FILE] [--sizes 10,1000,10000]

For each SPD size N the table holds N outbound policies, one per remote
host (a /128 with a TCP port range, the shape of per-peer policies), then a
catch-all BYPASS.  Measured, in microseconds per lookup (best of several
runs):

- ``hit``: ``SPD.lookup`` of a flow already in the flow cache;
- ``miss_avg``: ``lookup_uncached`` (the tuple-space search every packet
  would cost without a cache) of flows whose policy sits at a random place
  in the list;
- ``miss_worst``: the same for flows only the last policy, the catch-all,
  matches;
- ``miss_cached_path``: ``SPD.lookup`` of always-new flows (search plus
  cache insertion and the occasional clear-on-full);

and the ratios ``miss_avg / hit`` and ``miss_worst / hit``.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from ipaddress import IPv6Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vmip.ipsec.sa import Direction
from vmip.ipsec.spd import SPD, Action, Policy, Selector
from vmip.wire.flow import FlowKey

LOCAL = IPv6Address("2001:db8:100::10")
REMOTE_BASE = int(IPv6Address("2001:db8:200::"))
OUT = Direction.OUT


def build(size: int) -> SPD:
    spd = SPD(cache_size=4096)
    for index in range(size):
        remote = IPv6Address(REMOTE_BASE + index)
        spd.add(Policy(f"peer{index}", OUT,
                       Selector(local=f"{LOCAL}/128", remote=f"{remote}/128", proto=6,
                                remote_ports=(1, 1024)),
                       Action.PROTECT, (f"sa{index}",), priority=100))
    spd.add(Policy("default", OUT, Selector(), Action.BYPASS, (), priority=1000))
    return spd


def flow_to(index: int, sport: int = 40000) -> FlowKey:
    return FlowKey(LOCAL.packed, IPv6Address(REMOTE_BASE + index).packed, 6, sport, 443)


def per_call_us(func, args_list, repeat: int) -> float:
    """Best of *repeat* runs over *args_list*, in microseconds per call."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for args in args_list:
            func(*args)
        elapsed = time.perf_counter_ns() - start
        best = min(best, elapsed / len(args_list) / 1000)
    return best


def measure(size: int, rng: random.Random) -> dict:
    spd = build(size)
    samples = 20000
    hit_key = flow_to(size // 2)
    spd.lookup(OUT, hit_key)
    hit = per_call_us(spd.lookup, [(OUT, hit_key)] * 100000, 5)

    # Keys whose first matching policy is at a random position.
    middle_keys = [(OUT, flow_to(rng.randrange(size))) for _ in range(samples)]
    miss_avg = per_call_us(spd.lookup_uncached, middle_keys, 3)
    # Nothing but the catch-all matches: the whole list is scanned.
    worst_keys = [(OUT, FlowKey(LOCAL.packed, IPv6Address("2001:db8:999::1").packed, 17,
                                port, 53)) for port in range(samples)]
    miss_worst = per_call_us(spd.lookup_uncached, worst_keys, 3)

    def fresh_lookups():
        # New source ports: every lookup misses the cache and is inserted.
        return [(OUT, flow_to(rng.randrange(size), sport=rng.randrange(1, 65536)))
                for _ in range(samples)]

    spd_with_cache = build(size)
    miss_cached = min(per_call_us(spd_with_cache.lookup, fresh_lookups(), 1) for _ in range(3))
    return {
        "policies": size + 1,
        "hit_us": round(hit, 3),
        "miss_avg_us": round(miss_avg, 3),
        "miss_worst_us": round(miss_worst, 3),
        "miss_cached_path_us": round(miss_cached, 3),
        "ratio_miss_avg_to_hit": round(miss_avg / hit, 1),
        "ratio_miss_worst_to_hit": round(miss_worst / hit, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--sizes", default="10,1000,10000",
                        help="comma-separated policy counts (default: 10,1000,10000)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rng = random.Random(6275)
    rows = [measure(size, rng) for size in sizes]
    print(f"{'policies':>9} {'hit µs':>8} {'miss avg µs':>12} {'miss worst µs':>14} "
          f"{'lookup new flow µs':>19} {'avg/hit':>8} {'worst/hit':>10}")
    for row in rows:
        print(f"{row['policies']:>9} {row['hit_us']:>8.3f} {row['miss_avg_us']:>12.3f} "
              f"{row['miss_worst_us']:>14.3f} {row['miss_cached_path_us']:>19.3f} "
              f"{row['ratio_miss_avg_to_hit']:>8.1f} {row['ratio_miss_worst_to_hit']:>10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "python": platform.python_version(), "machine": platform.machine(),
            "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
