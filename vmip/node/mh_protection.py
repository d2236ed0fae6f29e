"""Which SA may carry a Mobility Header message to the mobility cores.

RFC 3776 and RFC 4877 (their packet formats) protect BU and BA between the
MN and its HA with ESP in *transport* mode, on SAs whose selectors name the
Mobility Header, in RFC 3776's example SPDs down to one MH type (RFC 4301
§4.4.1.1 makes the MH type a selector); the draft keeps transport-mode SAs
for every MH it exchanges (draft §3.2, §7.2).  The RFC
4301 §5.2 check the engine makes is not enough for that: it accepts a
packet that matches *any* inbound policy naming the SA it came on, so a
clear BU inside the MN-HA ESP tunnel (whose selectors cover everything the
HoA sends) passes it.

:func:`refusal` therefore asks the SPD which inbound policy is meant for
this MH (the first match, MH type included: RFC 4301 §4.4.1.1 puts it where
the ports go) and accepts the message only if that policy's SA bundle, or
one of the same priority and selector (the SAs of an IKE rekey, RFC 7296
§2.8), is what carried it, and the SA right around it is a transport SA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.spd import SPD, Action, Policy, template_matches
from vmip.wire.errors import WireError
from vmip.wire.flow import flow_key
from vmip.wire.proto import MOBILITY

#: Drop reasons (node counters ``rx_drop_<reason>``, docs/security.md).
NOT_TRANSPORT = "mh_not_transport"
WRONG_SA = "mh_wrong_sa"


def refusal(spd: SPD, inner: bytes, carried: Sequence[Any]) -> str | None:
    """Why the MH in *inner* must not reach the cores, or ``None`` (also for non-MH).

    *carried*: the SAs that delivered *inner*, outermost first (the
    engine's ``InResult.sas``).
    """
    try:
        key = flow_key(inner)
    except WireError:
        return None      # not ours to judge: the MH parser counts it
    if key.proto != MOBILITY or not carried:
        return None
    innermost = carried[-1]
    if innermost.params.mode is not Mode.TRANSPORT:
        return NOT_TRANSPORT
    chosen = spd.lookup(Direction.IN, key)
    if chosen is None or chosen.action is not Action.PROTECT:
        return WRONG_SA
    if _carried_by(chosen, carried):
        return None
    for policy in spd.policies_for_sa(innermost.params.name, innermost.spi, Direction.IN):
        if policy.priority == chosen.priority and policy.selector == chosen.selector \
                and _carried_by(policy, carried):
            return None
    return WRONG_SA


def _carried_by(policy: Policy, carried: Sequence[Any]) -> bool:
    """Is *policy*'s bundle (innermost first) the innermost layers of *carried*?"""
    bundle = policy.sa_bundle
    if not bundle or len(bundle) > len(carried):
        return False
    return all(template_matches(template, carried[-1 - depth].params.name,
                                carried[-1 - depth].spi)
               for depth, template in enumerate(bundle))
