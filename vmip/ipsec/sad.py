"""Security Association Database (RFC 4301 §4.4.2), sans-IO.

The SAD holds the runtime ESP objects (:class:`vmip.ipsec.esp.EspSA`) and
answers the two per-packet questions: which SA does this inbound SPI name,
and which SAs does this outbound PROTECT policy use.  It also runs the
PF_KEY-like operations key managers call (RFC 2367 vocabulary: GETSPI, ADD,
UPDATE, DELETE, MIGRATE, DUMP, FLUSH) and enforces lifetimes, publishing
every change on a :class:`~vmip.ipsec.sadb.SadbBus`.

An SA is identified by (direction, SPI, destination).  Inbound lookup uses
the SPI alone when it is unique among inbound SAs and adds the destination
when it is not (RFC 4301 §4.1; SPIs this SAD allocates are always unique).
Outbound, a policy's bundle names SAs by name or SPI; when several SAs carry
one name (a rekey in progress), the newest usable one is used (RFC 7296
§2.8: traffic moves to the new SA at once).

Lifetimes (RFC 4301 §4.4.2.1) count from ADD/UPDATE.  Time limits are the
SAD's: :meth:`SAD.get_timer` / :meth:`SAD.handle_timer`, driven by the
caller's clock.  Byte, packet and sequence-number limits are counted by the
ESP object, which reports them through its ``on_expire`` callback.  Soft: an
:class:`ExpireEvent` ("soft"), the SA keeps working.  Hard: an
:class:`ExpireEvent` ("hard"), then the SA is deleted (:class:`DeleteEvent`,
reason "expired").
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

from vmip.errors import VmipError
from vmip.ipsec.sa import Address, Direction, Mode, SaParams
from vmip.ipsec.sadb import (
    AddEvent,
    DeleteEvent,
    DumpEvent,
    ExpireEvent,
    GetSpiEvent,
    MigrateEvent,
    SadbBus,
    SaInfo,
    UpdateEvent,
)
from vmip.ipsec.spd import SPD, Action, Policy, template_matches
from vmip.log import get_logger
from vmip.wire.proto import ESP

if TYPE_CHECKING:
    from vmip.ipsec.esp import EspSA
    from vmip.wire.flow import FlowKey

log = get_logger(__name__)

SPI_MIN = 256          # RFC 4303 §2.1: 1-255 reserved by IANA, 0 for local use
SPI_MAX = 0xFFFFFFFF
_GETSPI_ATTEMPTS = 64

EspFactory = Callable[..., "EspSA"]


class SadError(VmipError):
    """A SAD operation that cannot be done (unknown SA, duplicate, wrong state)."""


LARVAL = "larval"
MATURE = "mature"
DYING = "dying"


class SadEntry:
    """One SA slot.  ``esp`` is ``None`` while the entry is larval."""

    __slots__ = (
        "created_at",
        "direction",
        "dst",
        "dst_packed",
        "esp",
        "hard_deadline",
        "hard_done",
        "name",
        "params",
        "soft_deadline",
        "soft_done",
        "spi",
        "src",
        "state",
        "uid",
    )

    def __init__(self, uid: int, spi: int, direction: Direction, src: Address, dst: Address,
                 name: str, created_at: float) -> None:
        self.uid = uid
        self.spi = spi
        self.direction = direction
        self.src = src
        self.dst = dst
        self.dst_packed = dst.packed
        self.name = name
        self.state = LARVAL
        self.params: SaParams | None = None
        self.esp: EspSA | None = None
        self.created_at = created_at
        self.soft_deadline: float | None = None
        self.hard_deadline: float | None = None
        self.soft_done = False
        self.hard_done = False

    @property
    def ident(self) -> tuple[Direction, int, bytes]:
        return (self.direction, self.spi, self.dst_packed)

    def info(self) -> SaInfo:
        params = self.params
        esp = self.esp
        if params is None:
            return SaInfo(spi=self.spi, direction=self.direction, src=self.src, dst=self.dst,
                          state=self.state, name=self.name, created_at=self.created_at)
        return SaInfo(spi=self.spi, direction=self.direction, src=self.src, dst=self.dst,
                      state=self.state, name=params.name, origin=params.origin,
                      mode=params.mode, suite=params.suite, selectors=params.selectors,
                      soft=params.soft, hard=params.hard, created_at=self.created_at,
                      packets=getattr(esp, "packets", 0), bytes=getattr(esp, "bytes", 0))


def _default_esp_factory() -> EspFactory:
    # Imported late: the SAD is usable (with an injected factory) without ESP.
    from vmip.ipsec.esp import EspSA

    return EspSA


class InboundCheck(NamedTuple):
    """Outcome of the RFC 4301 §5.2 selector check on a decapsulated packet."""

    ok: bool
    policy: Policy | None = None   # the policy that accepted the innermost SA, if any


_REFUSED = InboundCheck(False)


class SAD:
    """The SA database of one node."""

    def __init__(self, bus: SadbBus | None = None, *, esp_factory: EspFactory | None = None,
                 larval_lifetime: float = 30.0,
                 spi_source: Callable[[int, int], int] | None = None) -> None:
        """*esp_factory(params, now, on_expire=...)* builds the runtime SA
        (default :class:`vmip.ipsec.esp.EspSA`); *larval_lifetime*: seconds a
        GETSPI reservation waits for UPDATE; *spi_source(low, high)*: SPI
        candidates (default :func:`secrets.randbelow`, uniformly random)."""
        self.bus = bus if bus is not None else SadbBus()
        self._esp_factory = esp_factory
        self.larval_lifetime = larval_lifetime
        self._spi_source = spi_source or (lambda low, high: low + secrets.randbelow(high - low + 1))
        self._uids = itertools.count(1)
        self._entries: dict[tuple[Direction, int, bytes], SadEntry] = {}
        self._by_uid: dict[int, SadEntry] = {}
        self._inbound: dict[int, tuple[SadEntry, ...]] = {}
        self._outbound_by_name: dict[str, list[SadEntry]] = {}
        self._outbound_by_spi: dict[int, list[SadEntry]] = {}
        # (deadline, order, uid, kind): soft before hard at equal deadlines.
        self._timers: list[tuple[float, int, int, str]] = []

    # -- PF_KEY-like operations -------------------------------------------

    def getspi(self, src: Address, dst: Address, now: float, *, name: str = "",
               spi_min: int = SPI_MIN, spi_max: int = SPI_MAX) -> int:
        """Reserve a random inbound SPI for traffic *src* -> *dst* (RFC 2367 SADB_GETSPI).

        The larval entry lives until :meth:`update` completes it or
        ``larval_lifetime`` passes.  The SPI is unique among all inbound SAs,
        so inbound lookup by SPI alone is unambiguous for it.
        """
        if not SPI_MIN <= spi_min <= spi_max <= SPI_MAX:
            raise SadError(f"SPI range {spi_min:#x}-{spi_max:#x} must lie within "
                           f"{SPI_MIN:#x}-{SPI_MAX:#x}")
        if type(src) is not type(dst):
            raise SadError("GETSPI source and destination must be the same IP version")
        for _ in range(_GETSPI_ATTEMPTS):
            spi = self._spi_source(spi_min, spi_max)
            if spi_min <= spi <= spi_max and spi not in self._inbound:
                break
        else:
            raise SadError(f"no free inbound SPI found in {spi_min:#x}-{spi_max:#x}")
        entry = SadEntry(next(self._uids), spi, Direction.IN, src, dst, name, now)
        self._insert(entry)
        self._schedule(now + self.larval_lifetime, entry, "larval")
        log.info("sa getspi", spi=f"{spi:#010x}", src=str(src), dst=str(dst), name=name)
        self.bus.publish(GetSpiEvent(spi=spi, src=src, dst=dst, name=name))
        return spi

    def add(self, params: SaParams, now: float) -> EspSA:
        """Install a complete SA (RFC 2367 SADB_ADD); returns its ESP object."""
        ident = (params.direction, params.spi, params.dst.packed)
        existing = self._entries.get(ident)
        if existing is not None:
            what = "reserved by GETSPI; complete it with update()" \
                if existing.state == LARVAL else "already installed"
            raise SadError(f"SA {params.direction.value} spi {params.spi:#x} dst {params.dst} "
                           f"is {what}")
        entry = SadEntry(next(self._uids), params.spi, params.direction, params.src, params.dst,
                         params.name, now)
        esp = self._mature(entry, params, now)
        self._insert(entry)
        log.info("sa added", **self._log_fields(entry))
        self.bus.publish(AddEvent(entry.info()))
        return esp

    def update(self, params: SaParams, now: float) -> EspSA:
        """Give a larval SA its keys (RFC 2367 SADB_UPDATE); returns its ESP object."""
        entry = self._entries.get((params.direction, params.spi, params.dst.packed))
        if entry is None or entry.state != LARVAL:
            raise SadError(f"no larval SA with spi {params.spi:#x} to {params.dst} "
                           f"({params.direction.value}); GETSPI reserves one")
        if params.src != entry.src:
            raise SadError(f"SA spi {params.spi:#x}: source {params.src} differs from the "
                           f"GETSPI reservation ({entry.src})")
        esp = self._mature(entry, params, now)
        log.info("sa updated", **self._log_fields(entry))
        self.bus.publish(UpdateEvent(entry.info()))
        return esp

    def delete(self, spi: int, direction: Direction = Direction.IN, dst: Address | None = None,
               *, reason: str = "requested") -> SaInfo:
        """Remove an SA (RFC 2367 SADB_DELETE); returns what it was."""
        entry = self._find(spi, direction, dst)
        return self._remove(entry, reason)

    def migrate(self, spi: int, direction: Direction, new_src: Address, new_dst: Address,
                now: float, *, dst: Address | None = None) -> SaInfo:
        """Move a tunnel SA's outer endpoints (the MIGRATE of draft §6 / [MIGRATE]).

        Transport SAs carry SA-level addresses (the HoA, docs/design.md §2) that
        never move; only tunnel endpoints follow the CoA.  The ESP object keeps
        its sequence numbers and replay window.
        """
        entry = self._find(spi, direction, dst)
        if entry.params is None or entry.esp is None:
            raise SadError(f"SA spi {spi:#x} is larval; nothing to migrate yet")
        if entry.params.mode is not Mode.TUNNEL:
            raise SadError(f"SA spi {spi:#x} is a transport SA; only tunnel SAs migrate")
        if type(new_src) is not type(new_dst):
            raise SadError("new endpoints must be the same IP version")
        new_ident = (direction, spi, new_dst.packed)
        if new_ident != entry.ident and new_ident in self._entries:
            raise SadError(f"an SA {direction.value} spi {spi:#x} to {new_dst} already exists")
        old_src, old_dst = entry.src, entry.dst
        params = entry.params.with_endpoints(new_src, new_dst)
        _retarget(entry.esp, params)  # first: nothing changes here if ESP refuses
        self._unindex(entry)
        entry.params = params
        entry.src, entry.dst, entry.dst_packed = new_src, new_dst, new_dst.packed
        self._index(entry)
        info = entry.info()
        # Debug: a home agent migrates the tunnel SAs of every MN that moves, per BU
        # (docs/scale.md); the mobility events at info say why.
        log.debug("sa migrated", spi=f"{spi:#010x}", direction=direction.value,
                  old_src=str(old_src), old_dst=str(old_dst), src=str(new_src), dst=str(new_dst))
        self.bus.publish(MigrateEvent(info, old_src=old_src, old_dst=old_dst,
                                      new_src=new_src, new_dst=new_dst))
        return info

    def dump(self, *, publish: bool = True) -> tuple[SaInfo, ...]:
        """Every SA, larval ones included, in creation order (RFC 2367 SADB_DUMP)."""
        sas = tuple(entry.info() for entry in sorted(self._entries.values(),
                                                     key=lambda e: e.uid))
        if publish:
            self.bus.publish(DumpEvent(sas))
        return sas

    def flush(self, *, reason: str = "flush") -> int:
        """Delete every SA (RFC 2367 SADB_FLUSH); returns how many."""
        entries = sorted(self._entries.values(), key=lambda e: e.uid)
        for entry in entries:
            self._remove(entry, reason)
        return len(entries)

    # -- per-packet lookups -------------------------------------------------

    def lookup_inbound(self, spi: int, dst: bytes | None = None,
                       proto: int = ESP) -> EspSA | None:
        """The mature inbound SA for *spi* (and raw destination address *dst*).

        RFC 4301 §4.1: SPI, destination and protocol.  The SPI alone decides
        when it is unique; otherwise the destination picks among the
        candidates.  Every SA here is ESP (vmip has no AH), so any other
        *proto* finds nothing.  Larval SAs give ``None``.
        """
        if proto != ESP:
            return None
        entries = self._inbound.get(spi)
        if not entries:
            return None
        if len(entries) == 1:
            return entries[0].esp
        for entry in entries:
            if entry.dst_packed == dst:
                return entry.esp
        return None

    def outbound(self, template: str | int) -> EspSA | None:
        """The outbound SA a bundle entry (SA name or SPI) designates now."""
        if isinstance(template, int):
            entries = self._outbound_by_spi.get(template)
        else:
            entries = self._outbound_by_name.get(template)
        if not entries:
            return None
        for entry in reversed(entries):  # newest first
            esp = entry.esp
            if esp is not None and esp.usable:
                return esp
        return None

    def outbound_bundle(self, policy: Policy) -> tuple[EspSA, ...] | None:
        """The SAs of *policy*'s bundle, innermost first; ``None`` if one is missing."""
        sas = []
        for template in policy.sa_bundle:
            esp = self.outbound(template)
            if esp is None:
                return None
            sas.append(esp)
        return tuple(sas)

    def missing(self, policy: Policy) -> tuple[str | int, ...]:
        """The bundle entries of *policy* that have no usable outbound SA."""
        return tuple(t for t in policy.sa_bundle if self.outbound(t) is None)

    # -- RFC 4301 §5.2 inbound selector check ------------------------------

    def check_inbound(self, carried: Sequence[EspSA],
                      key_after: Callable[[int], FlowKey | None], spd: SPD) -> InboundCheck:
        """Check decapsulated traffic against the SAs that carried it.

        *carried*: the SAs removed, outermost first; *key_after(i)*: the flow
        key of the packet that came out of ``carried[i]`` (``None`` if it does
        not parse).  RFC 4301 §5.2 step 4: the packet must match the selectors
        of the SA it arrived on.  An SA with ``params.selectors`` uses them;
        one without (static keys) uses the inbound PROTECT policies whose
        bundle starts with it, and such a policy's whole bundle must be what
        carried the packet.  The check walks from the innermost SA outwards,
        so nested SAs (a transport SA inside a tunnel SA) are each checked
        against the packet they delivered.
        """
        level = len(carried) - 1
        innermost_policy: Policy | None = None
        while level >= 0:
            sa = carried[level]
            key = key_after(level)
            if key is None:
                return _REFUSED
            selectors = sa.params.selectors
            if selectors:
                for selector in selectors:
                    if selector.matches(Direction.IN, key):
                        break
                else:
                    return _REFUSED
                level -= 1
                continue
            accepted = _accepting_policy(spd, carried, level, key)
            if accepted is None:
                return _REFUSED
            if level == len(carried) - 1:
                innermost_policy = accepted
            level -= len(accepted.sa_bundle)
        return InboundCheck(True, innermost_policy)

    # -- lifetimes ----------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` has work, or ``None``."""
        timers = self._timers
        while timers and not self._timer_live(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        """Fire every time-based expiry due at *now*."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)
            if not self._timer_live(timer):
                continue
            entry = self._by_uid[timer[2]]
            kind = timer[3]
            if kind == "larval":
                entry.hard_done = True
                self.bus.publish(ExpireEvent(entry.info(), "hard", cause="larval_timeout"))
                self._remove(entry, "expired")
            elif kind == "soft":
                self._expire_soft(entry, "time", tell_esp=True)
            else:
                self._expire_hard(entry, "time", tell_esp=True)

    # -- introspection ------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[SaInfo]:
        return iter(self.dump(publish=False))

    def get(self, spi: int, direction: Direction = Direction.IN,
            dst: Address | None = None) -> SaInfo | None:
        try:
            return self._find(spi, direction, dst).info()
        except SadError:
            return None

    def esp(self, spi: int, direction: Direction = Direction.IN,
            dst: Address | None = None) -> EspSA | None:
        """The ESP object of an SA (``None`` if unknown or larval)."""
        try:
            return self._find(spi, direction, dst).esp
        except SadError:
            return None

    # -- internals ----------------------------------------------------------

    def _find(self, spi: int, direction: Direction, dst: Address | None) -> SadEntry:
        if dst is not None:
            entry = self._entries.get((direction, spi, dst.packed))
            if entry is None:
                raise SadError(f"no SA {direction.value} spi {spi:#x} to {dst}")
            return entry
        found = [e for e in self._entries.values() if e.spi == spi and e.direction is direction]
        if not found:
            raise SadError(f"no SA {direction.value} spi {spi:#x}")
        if len(found) > 1:
            raise SadError(f"several SAs {direction.value} with spi {spi:#x}; name the destination")
        return found[0]

    def _mature(self, entry: SadEntry, params: SaParams, now: float) -> EspSA:
        factory = self._esp_factory or _default_esp_factory()
        uid = entry.uid
        esp = factory(params, now, on_expire=lambda _sa, kind: self._usage_expired(uid, kind))
        entry.esp = esp
        entry.params = params
        entry.name = params.name
        entry.state = MATURE
        entry.created_at = now
        # RFC 4301 §4.4.2.1: lifetimes run from the moment the SA is installed.
        if params.soft.seconds is not None:
            entry.soft_deadline = now + params.soft.seconds
            self._schedule(entry.soft_deadline, entry, "soft")
        if params.hard.seconds is not None:
            entry.hard_deadline = now + params.hard.seconds
            self._schedule(entry.hard_deadline, entry, "hard")
        return esp

    def _insert(self, entry: SadEntry) -> None:
        self._entries[entry.ident] = entry
        self._by_uid[entry.uid] = entry
        self._index(entry)

    def _index(self, entry: SadEntry) -> None:
        self._entries[entry.ident] = entry
        if entry.direction is Direction.IN:
            self._inbound[entry.spi] = self._inbound.get(entry.spi, ()) + (entry,)
        else:
            self._outbound_by_name.setdefault(entry.name, []).append(entry)
            self._outbound_by_spi.setdefault(entry.spi, []).append(entry)
            # Keep creation order so "newest" stays the last element.
            self._outbound_by_name[entry.name].sort(key=lambda e: e.uid)
            self._outbound_by_spi[entry.spi].sort(key=lambda e: e.uid)

    def _unindex(self, entry: SadEntry) -> None:
        self._entries.pop(entry.ident, None)
        if entry.direction is Direction.IN:
            rest = tuple(e for e in self._inbound.get(entry.spi, ()) if e is not entry)
            if rest:
                self._inbound[entry.spi] = rest
            else:
                self._inbound.pop(entry.spi, None)
        else:
            indexes: tuple[tuple[dict, str | int], ...] = (
                (self._outbound_by_name, entry.name), (self._outbound_by_spi, entry.spi))
            for index, key in indexes:
                rest_list = [e for e in index.get(key, ()) if e is not entry]
                if rest_list:
                    index[key] = rest_list
                else:
                    index.pop(key, None)

    def _remove(self, entry: SadEntry, reason: str) -> SaInfo:
        self._unindex(entry)
        self._by_uid.pop(entry.uid, None)
        info = entry.info()
        log.info("sa deleted", reason=reason, **self._log_fields(entry))
        self.bus.publish(DeleteEvent(info, reason=reason))
        return info

    def _schedule(self, deadline: float, entry: SadEntry, kind: str) -> None:
        order = 0 if kind == "soft" else 1
        heapq.heappush(self._timers, (deadline, order, entry.uid, kind))

    def _timer_live(self, timer: tuple[float, int, int, str]) -> bool:
        deadline, _order, uid, kind = timer
        entry = self._by_uid.get(uid)
        if entry is None:
            return False
        if kind == "larval":
            return entry.state == LARVAL
        if kind == "soft":
            return not entry.soft_done and not entry.hard_done and entry.soft_deadline == deadline
        return not entry.hard_done and entry.hard_deadline == deadline

    def _usage_expired(self, uid: int, kind: str) -> None:
        """ESP's ``on_expire``: a byte/packet/sequence limit was crossed."""
        entry = self._by_uid.get(uid)
        if entry is None:
            return
        if kind == "soft":
            self._expire_soft(entry, "usage")
        elif kind == "hard":
            self._expire_hard(entry, "usage")

    def _expire_soft(self, entry: SadEntry, cause: str, tell_esp: bool = False) -> None:
        if entry.soft_done or entry.hard_done:
            return
        # Flags first: if ESP's expire() reports back through on_expire, that
        # second report finds the work done.
        entry.soft_done = True
        entry.state = DYING
        if tell_esp and entry.esp is not None:
            entry.esp.expire("soft")
        log.info("sa soft expired", cause=cause, **self._log_fields(entry))
        self.bus.publish(ExpireEvent(entry.info(), "soft", cause=cause))

    def _expire_hard(self, entry: SadEntry, cause: str, tell_esp: bool = False) -> None:
        if entry.hard_done:
            return
        entry.hard_done = True
        if tell_esp and entry.esp is not None:
            entry.esp.expire("hard")
        log.info("sa hard expired", cause=cause, **self._log_fields(entry))
        self.bus.publish(ExpireEvent(entry.info(), "hard", cause=cause))
        if entry.uid in self._by_uid:
            self._remove(entry, "expired")

    @staticmethod
    def _log_fields(entry: SadEntry) -> dict:
        return {"spi": f"{entry.spi:#010x}", "direction": entry.direction.value,
                "src": str(entry.src), "dst": str(entry.dst), "name": entry.name}


def _accepting_policy(spd: SPD, carried: Sequence[EspSA], level: int,
                      key: FlowKey) -> Policy | None:
    """The first inbound PROTECT policy that explains carried[level] and *key*."""
    sa = carried[level]
    for policy in spd.policies_for_sa(sa.params.name, sa.spi, Direction.IN):
        if policy.action is not Action.PROTECT or not policy.matches(key):
            continue
        bundle = policy.sa_bundle
        if len(bundle) > level + 1:
            continue
        # Innermost first in the policy; outermost first in *carried*.
        for depth, template in enumerate(bundle):
            layer = carried[level - depth]
            if not template_matches(template, layer.params.name, layer.spi):
                break
        else:
            return policy
    return None


def _retarget(esp: EspSA, params: SaParams) -> None:
    """Point a live ESP object at migrated endpoints without resetting it.

    ``EspSA.migrate`` keeps sequence numbers and the replay window (a MIGRATE
    is not a rekey) and refreshes what it precomputed from the addresses.
    """
    esp.migrate(params)
