"""vmip: a userspace Mobile IPv6 stack with IPsec Route Optimization (IRO).

Layers, bottom to top (see docs/architecture.md):

- ``vmip.wire``      sans-IO codecs for IPv6, extension headers, UDP, ICMPv6, MH
- ``vmip.ipsec``     ESP, crypto suites, SAD/SPD, SADB event bus, static keys
- ``vmip.ike``       IKEv2 (RFC 7296), sans-IO
- ``vmip.mobility``  MIPv6 MN/HA/CN state machines and the IRO remap engine
- ``vmip.links``     link drivers that carry on-wire packets (udp, raw, rfc3948)
- ``vmip.node``      the asyncio runtime that wires cores, TUN and links together
- ``vmip.control``   the control socket protocol
- ``vmip.cli``       the ``vmip`` command
- ``vmip.lab``       the network-namespace lab
"""

__version__ = "0.1.0"
