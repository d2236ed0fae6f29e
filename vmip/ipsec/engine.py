"""The per-packet IPsec path: SPD, SAD and ESP composed, sans-IO.

The runtime hands SA-level packets (docs/design.md §2, §4) to
:meth:`IpsecEngine.outbound` (from the TUN, or to forward) and
:meth:`IpsecEngine.inbound` (addressed to this node, after IRO's inbound
remap), with the current time; it gets a result back and never an exception:
a bad packet is a counted drop (``engine.drops[reason]``).

Outbound (RFC 4301 §5.1): flow key -> SPD-O lookup -> BYPASS (send as is),
DISCARD, or PROTECT: the policy's SA bundle, innermost first, each SA in its
own mode (transport ESP, or a new outer header for tunnel mode).  No usable
SA: drop ("no_sa") and publish an :class:`~vmip.ipsec.sadb.AcquireEvent` so
key management starts, at most once per policy per ``acquire_holdoff``
seconds (a packet flood must not become an ACQUIRE flood; PF_KEY kernels
hold a larval "acquire" state for the same reason).

Inbound (RFC 4301 §5.2): a packet carrying ESP is looked up in the SAD by
SPI, decrypted, and, while what comes out carries ESP for an SA of ours,
decrypted again (bundles, or a transport SA inside a tunnel SA).  Then every
layer is checked against the selectors of the SA that carried it
(:meth:`vmip.ipsec.sad.SAD.check_inbound`).  A packet without ESP must match
an inbound BYPASS policy.  An inner packet that carries ESP for an SA we do
not have (the HA decapsulating a tunnel whose payload is the MN's ESP to a
CN) stops the loop and is returned for forwarding.

Drop reasons: ``malformed`` (no flow key), ``no_policy`` (RFC 4301 §5: no
match means discard), ``policy_discard``, ``no_sa``, ``esp_protect_failed``
(the SA refused: unusable, sequence overflow; the SA counts why),
``unknown_spi``, ``esp_failed`` (ICV, replay, padding...; the SA's ``drops``
say which), ``unprotected`` (clear text where policy demands ESP),
``selector_mismatch``, ``too_many_layers``, ``reentry_refused`` (the reentry
hook, the IRO rules, refused an ESP packet that came out of a tunnel SA),
``internal_error`` (a bug: logged).
"""

from __future__ import annotations

import types
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from vmip.errors import VmipError
from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.sad import SAD, InboundCheck
from vmip.ipsec.sadb import AcquireEvent, SadbBus
from vmip.ipsec.spd import SPD, Action, Policy
from vmip.log import get_logger
from vmip.wire import proto

if TYPE_CHECKING:
    from vmip.ipsec.esp import EspSA
    from vmip.wire.flow import FlowKey

log = get_logger(__name__)

_OUT = Direction.OUT
_IN = Direction.IN
_PROTECT = Action.PROTECT
_BYPASS = Action.BYPASS
_TUNNEL = Mode.TUNNEL


# Next headers after which ESP may still follow (RFC 8200 §4.1 order:
# hop-by-hop, destination options, routing, fragment, AH, ESP).
_MAY_PRECEDE_ESP = frozenset((proto.HOP_BY_HOP, proto.ROUTING, proto.FRAGMENT, proto.ESP,
                              proto.AH, proto.DESTINATION_OPTIONS))
_ESP = proto.ESP


class OutResult(NamedTuple):
    """What to send (``packet``), or why not (``drop``)."""

    packet: bytes | None
    policy: Policy | None = None
    sas: tuple = ()            # the SAs applied, innermost first
    drop: str | None = None


class InResult(NamedTuple):
    """What to deliver or forward (``packet``), or why not (``drop``)."""

    packet: bytes | None
    policy: Policy | None = None
    sas: tuple = ()            # the SAs that carried it, outermost first
    drop: str | None = None
    #: What the ``reentry`` hook said about an ESP packet that came out of a
    #: tunnel SA (the IRO remap's on-wire addresses), else ``None``.
    reentry: Any = None


def _default_esp() -> types.SimpleNamespace:
    from vmip.ipsec import esp

    return types.SimpleNamespace(transport_encap=esp.transport_encap,
                                 tunnel_encap=esp.tunnel_encap,
                                 esp_spi=esp.esp_spi, decap=esp.decap)


def _default_flow_key() -> Callable[[bytes], FlowKey]:
    from vmip.wire.flow import flow_key

    return flow_key


def _destination(packet: bytes) -> bytes | None:
    """Raw destination address of an IPv6 or IPv4 packet (for SPI+dst lookup)."""
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return packet[24:40]
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[16:20]
    return None


class IpsecEngine:
    """SPD + SAD + ESP for one node."""

    def __init__(self, spd: SPD, sad: SAD, now: float, *, bus: SadbBus | None = None,
                 esp: Any = None,
                 flow_key: Callable[[bytes], FlowKey] | None = None,
                 acquire_holdoff: float = 1.0, max_layers: int = 4,
                 reentry: Callable[[bytes], tuple[bytes, Any] | None] | None = None) -> None:
        """*esp*: an object with ``transport_encap``, ``tunnel_encap``,
        ``esp_spi`` and ``decap`` (default :mod:`vmip.ipsec.esp`); *flow_key*
        (default :func:`vmip.wire.flow.flow_key`); *max_layers*: ESP layers
        removed from one inbound packet at most.

        *reentry*: an ESP packet that comes out of a tunnel SA is handed to it
        before it is decrypted in turn, as a kernel re-injects a decapsulated
        packet into its input path; it returns the packet to go on with and a
        note for :attr:`InResult.reentry`, or ``None`` to drop it
        (``reentry_refused``).  The IRO inbound rules run there: they come
        before ESP (draft §5.1.2), also inside the HA's tunnel."""
        self.spd = spd
        self.sad = sad
        self.bus = bus if bus is not None else sad.bus
        esp_api = esp if esp is not None else _default_esp()
        self._transport_encap = esp_api.transport_encap
        self._tunnel_encap = esp_api.tunnel_encap
        self._esp_spi = esp_api.esp_spi
        self._decap = esp_api.decap
        self._reentry = reentry
        self._flow_key = flow_key if flow_key is not None else _default_flow_key()
        self.acquire_holdoff = acquire_holdoff
        self.max_layers = max_layers
        self.started_at = now
        self.drops: Counter[str] = Counter()
        self.sent = 0
        self.received = 0
        self._last_acquire: dict[str, float] = {}
        # RFC 4301 §5.2 check results of single-SA packets, by (SA, flow key):
        # valid for one SPD generation, cleared when full (like the flow cache).
        self._checked: dict[tuple, InboundCheck] = {}
        self._checked_generation = spd.generation
        self.check_cache_size = 4096

    # -- outbound -----------------------------------------------------------

    def outbound(self, packet: bytes, now: float) -> OutResult:
        """Apply outbound policy to one SA-level packet."""
        try:
            return self._outbound(packet, now)
        except Exception:  # a bug must cost one packet, not the node
            log.exception("ipsec outbound failed", length=len(packet))
            return self._drop_out("internal_error", None)

    def _outbound(self, packet: bytes, now: float) -> OutResult:
        try:
            key = self._flow_key(packet)
        except VmipError:
            return self._drop_out("malformed", None)
        policy = self.spd.lookup(_OUT, key)
        if policy is None:
            return self._drop_out("no_policy", None)
        action = policy.action
        if action is _BYPASS:
            self.sent += 1
            return OutResult(packet, policy)
        if action is not _PROTECT:
            return self._drop_out("policy_discard", policy)
        sas = self.sad.outbound_bundle(policy)
        if sas is None:
            self._acquire(policy, key, now)
            return self._drop_out("no_sa", policy)
        out: bytes | None = packet
        for sa in sas:  # innermost first (RFC 4301 §4.5)
            if sa.params.mode is _TUNNEL:
                out = self._tunnel_encap(out, sa, now)
            else:
                out = self._transport_encap(out, sa, now)
            if out is None:
                return self._drop_out("esp_protect_failed", policy, sas)
        self.sent += 1
        return OutResult(out, policy, sas)

    def _drop_out(self, reason: str, policy: Policy | None, sas: tuple = ()) -> OutResult:
        self.drops[reason] += 1
        return OutResult(None, policy, sas, reason)

    def _acquire(self, policy: Policy, key: FlowKey, now: float) -> None:
        last = self._last_acquire.get(policy.name)
        if last is not None and now - last < self.acquire_holdoff:
            return
        self._last_acquire[policy.name] = now
        missing = self.sad.missing(policy)
        log.info("sa acquire", policy=policy.name, missing=",".join(map(str, missing)))
        self.bus.publish(AcquireEvent(policy.name, _OUT, key, missing))

    # -- inbound ------------------------------------------------------------

    def inbound(self, packet: bytes, now: float) -> InResult:
        """Apply inbound processing to one SA-level packet addressed to us."""
        try:
            return self._inbound(packet, now)
        except Exception:  # a bug must cost one packet, not the node
            log.exception("ipsec inbound failed", length=len(packet))
            return self._drop_in("internal_error", None)

    def _inbound(self, packet: bytes, now: float) -> InResult:
        found = self._esp_spi(packet)
        if found is None:
            return self._inbound_clear(packet)
        carried: list[EspSA] = []
        outputs: list[bytes] = []
        current = packet
        note = None
        while found is not None:
            spi, offset = found
            sa = self.sad.lookup_inbound(spi, _destination(current))
            if sa is None:
                if not carried:
                    return self._drop_in("unknown_spi", None)
                break  # ESP for someone else inside our tunnel: forward it
            if len(carried) == self.max_layers:
                return self._drop_in("too_many_layers", None, tuple(carried))
            inner = self._decap(current, offset, sa, now)
            carried.append(sa)
            if inner is None:
                return self._drop_in("esp_failed", None, tuple(carried))
            if self._reentry is not None and sa.params.mode is _TUNNEL and len(inner) >= 40 \
                    and inner[0] >> 4 == 6 and inner[6] == _ESP:
                reentered = self._reentry(inner)
                if reentered is None:
                    return self._drop_in("reentry_refused", None, tuple(carried))
                inner, note = reentered
            outputs.append(inner)
            current = inner
            if len(inner) >= 40 and inner[0] >> 4 == 6 and inner[6] not in _MAY_PRECEDE_ESP:
                break  # the common case: the payload is not another ESP layer
            found = self._esp_spi(inner)

        sas = tuple(carried)
        if len(carried) == 1:
            check = self._check_single(carried[0], current)
        else:
            flow_key = self._flow_key

            def key_after(level: int) -> FlowKey | None:
                try:
                    return flow_key(outputs[level])
                except VmipError:
                    return None

            check = self.sad.check_inbound(carried, key_after, self.spd)
        if not check.ok:
            return self._drop_in("selector_mismatch", check.policy, sas)
        self.received += 1
        return InResult(current, check.policy, sas, reentry=note)

    def _check_single(self, sa: EspSA, packet: bytes) -> InboundCheck:
        try:
            key = self._flow_key(packet)
        except VmipError:
            return InboundCheck(False)
        if self._checked_generation != self.spd.generation:
            self._checked.clear()
            self._checked_generation = self.spd.generation
        cache_key = (sa, key)
        check = self._checked.get(cache_key)
        if check is None:
            check = self.sad.check_inbound((sa,), lambda _level: key, self.spd)
            if len(self._checked) >= self.check_cache_size:
                self._checked.clear()
            self._checked[cache_key] = check
        return check

    def _inbound_clear(self, packet: bytes) -> InResult:
        try:
            key = self._flow_key(packet)
        except VmipError:
            return self._drop_in("malformed", None)
        policy = self.spd.lookup(_IN, key)
        if policy is None:
            return self._drop_in("no_policy", None)
        if policy.action is _BYPASS:
            self.received += 1
            return InResult(packet, policy)
        if policy.action is _PROTECT:
            # RFC 4301 §5.2 step 3: clear text that policy says must be protected.
            return self._drop_in("unprotected", policy)
        return self._drop_in("policy_discard", policy)

    def _drop_in(self, reason: str, policy: Policy | None, sas: tuple = ()) -> InResult:
        self.drops[reason] += 1
        return InResult(None, policy, sas, reason)
