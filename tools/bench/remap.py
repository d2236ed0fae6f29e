#!/usr/bin/env python3
"""Per-packet cost of the IRO remap engine (vmip/mobility/remap.py).

    python tools/bench/remap.py [--size 1400] [--rules 1000] [--json FILE]

Measured, in microseconds per packet (best of several runs), on IPv6/ESP
packets of ``--size`` bytes, with ``--rules`` other SPIs holding rules:

- ``out_no_rule`` / ``in_no_rule``: the SPI has no rule (one dict probe);
- ``out_no_esp``: a packet without ESP (UDP): the extension-header walk;
- ``out_src_static``: example 1's "exp. src: HoA, remap. src: CoA";
- ``out_src_ancillary``: rule 1 with the CoA as ancillary data;
- ``in_dst``: example 1's inbound "exp. dst: CoA, remap. dst: HoA";
- ``in_wildcard_copy``: rule 2, "exp. src: ::, remap. src: HoA (ancillary)";
- ``in_src_set``: a CN's data rule with two bindings (RFC 5648),
  "exp. src: {CoA1, CoA2}, remap. src: HoA", a packet from CoA2;
- ``baseline_copy``: ``bytes`` concatenation of the packet (what any rewrite costs).

Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import timeit
from ipaddress import IPv6Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vmip.ipsec.sa import Direction
from vmip.mobility.remap import ANCILLARY, Field, RemapEngine, RemapRule

HOA = IPv6Address("2001:db8:100::10")
COA = IPv6Address("2001:db8:31::2")
COA2 = IPv6Address("2001:db8:32::2")
CN = IPv6Address("2001:db8:20::2")
IN, OUT = Direction.IN, Direction.OUT


def packet(src: IPv6Address, dst: IPv6Address, spi: int, size: int, next_header: int = 50) -> bytes:
    payload = struct.pack(">II", spi, 1) + bytes(max(0, size - 48))
    return (struct.pack(">IHBB", 0x60000000, len(payload), next_header, 64)
            + src.packed + dst.packed + payload)


def best(statement, number: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=7)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1400)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    engine = RemapEngine()
    for spi in range(0x10000, 0x10000 + args.rules):
        engine.add(RemapRule(OUT, spi, Field.SRC, HOA, COA))
        engine.add(RemapRule(IN, spi, Field.DST, COA, HOA))
    engine.add(RemapRule(OUT, 42, Field.SRC, HOA, COA))
    engine.add(RemapRule(IN, 43, Field.DST, COA, HOA))
    engine.add(RemapRule(OUT, 48, Field.SRC, HOA, ANCILLARY))
    engine.add(RemapRule(IN, 51, Field.SRC, IPv6Address(0), HOA, copy_to_ancillary=True))
    with_sets = "also_expected" in RemapRule.__dataclass_fields__   # older engines: skip
    if with_sets:
        engine.add(RemapRule(IN, 53, Field.SRC, COA, HOA, also_expected=(COA2,)))

    size, number = args.size, args.number
    no_rule = packet(HOA, CN, 7, size)
    udp = packet(HOA, CN, 7, size, next_header=17)
    out_static = packet(HOA, CN, 42, size)
    out_ancillary = packet(HOA, CN, 48, size)
    in_dst = packet(CN, COA, 43, size)
    in_wildcard = packet(COA, CN, 51, size)
    in_set = packet(COA2, CN, 53, size)
    coa = COA.packed
    checks = (engine.outbound(out_static), engine.outbound(out_ancillary, coa),
              engine.inbound(in_dst), engine.inbound(in_wildcard))
    assert checks[0] is not None and checks[0][8:24] == coa
    assert checks[1] is not None and checks[1][8:24] == coa
    assert checks[2] is not None and checks[2][0][24:40] == HOA.packed
    assert checks[3] is not None and checks[3][1] == coa

    results = {
        "out_no_rule": best(lambda: engine.outbound(no_rule), number),
        "in_no_rule": best(lambda: engine.inbound(no_rule), number),
        "out_no_esp": best(lambda: engine.outbound(udp), number),
        "out_src_static": best(lambda: engine.outbound(out_static), number),
        "out_src_ancillary": best(lambda: engine.outbound(out_ancillary, coa), number),
        "in_dst": best(lambda: engine.inbound(in_dst), number),
        "in_wildcard_copy": best(lambda: engine.inbound(in_wildcard), number),
        **({"in_src_set": best(lambda: engine.inbound(in_set), number)} if with_sets else {}),
        "baseline_copy": best(lambda: out_static[:8] + coa + out_static[24:], number),
    }
    print(f"remap engine, {size}-byte packets, {len(engine)} rules, "
          f"Python {platform.python_version()} ({platform.machine()})")
    for name, micros in results.items():
        print(f"  {name:<20} {micros:6.3f} µs")
    if args.json:
        args.json.write_text(json.dumps({"size": size, "rules": len(engine),
                                         "python": platform.python_version(),
                                         "us_per_packet": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
