"""SPI tracking: keep IRO remap rules in step with the SAD (draft §6), sans-IO.

The MIPv6 code says what it wants as *intents*, in SA-level addresses; the
tracker watches the SADB event bus (the PF_KEY analogue of draft §6.2) and
installs, for every SA an intent covers, the rules of draft §3.1 and §5.2,
and removes them when the SA goes.  Intents:

- :meth:`SpiTracker.track_mh` — "the SAs protecting MH between these two
  addresses get IRO's MH rules" (draft §3.2 "pre-binding steps"; §7 for the
  MN-HA pair).  Registered by the MN for its HA and each CN (role MN), by a
  CN for each MN it serves (role CN), by the HA for each MN (role HA).
- :meth:`SpiTracker.bind_data` / :meth:`SpiTracker.unbind` — "a binding
  exists: IPsec data SAs between these addresses follow the CoA" (§3.6
  "post-binding steps"; examples 1 and 3 of §5.2.2).
- :meth:`SpiTracker.move` — the MN's CoA changed (§6.1): every rule naming
  the old CoA names the new one.
- :meth:`SpiTracker.set_care_of_addresses` — an MN with one binding per link
  (RFC 5648): its MH answers may arrive at any of its CoAs.

With several bindings of one HoA (RFC 5648; ``others`` of :meth:`bind_data`),
the inbound data rule expects the set of bound CoAs ("exp. src: {CoA1,
CoA2}") and the outbound one is "ancillary or <primary CoA>": the send path
picks the CoA per packet, a packet without a choice takes the primary one.

The rules, per SA seen from this node (local/remote are the SA-level
addresses: the HoA on the MN's side, never a CoA):

==========  ===========  ==============================================  =========
role        SA           rule                                            draft
==========  ===========  ==============================================  =========
MN          MH out       exp. src: HoA, remap. src: ancillary            §3.1 r.1
MN          MH in        exp. dst: CoA, remap. dst: HoA (ancillary)      §3.1 r.4
CN / HA     MH in        exp. src: ::, remap. src: HoA (ancillary)       §3.1 r.2
CN / HA     MH out       exp. dst: HoA, remap. dst: ancillary            §3.1 r.3
MN bound    data out     exp. src: HoA, remap. src: CoA                  ex. 1
MN bound    data in      exp. dst: CoA, remap. dst: HoA                  ex. 1
CN bound    data in      exp. src: CoA, remap. src: HoA                  ex. 3
CN bound    data out     exp. dst: HoA, remap. dst: CoA                  ex. 3
==========  ===========  ==============================================  =========

A coarse SA that carries MH *and* data (one SA pair for everything between
two addresses, §5.1.3 first bullet; vmip's example configs do this) gets
the MH rules, and a binding adds its CoA as the ``ancillary`` rule's
fallback ("remap. src: ancillary or CoA"): MH packets still go where MIPv6
says, data packets follow the binding.  Its inbound source rule stays the
wildcard, which also accepts the data from the bound CoA.

How an SA is classified ("mh", "data", "mixed", "other"): a ``classify``
callback the runtime may give, else :func:`classify_sa` — tunnel-mode SAs
are "other" (§7.2: their outer addresses are CoAs, never remapped); else the
SA's selectors, or when it has none (static keys) the selectors of the SPD
policies whose innermost SA it is: protocol MH (135) only is "mh", no MH is
"data", ANY protocol or a mix is "mixed"; an SA nothing restricts is
"mixed".  A larval SA (GETSPI, no selectors yet) is classified by the
policies naming it, else provisionally as "mixed", and reclassified at
UPDATE; no packet can use a larval SA, so a provisional rule is harmless.

Events (draft §6.2): GETSPI, ADD and UPDATE install rules at once, inside
the bus delivery, so they exist before the first packet that needs them
(§6.2.1); DELETE and hard EXPIRE remove every rule of the SPI (§6.2.5,
§6.2.6); soft EXPIRE changes nothing (§6.2.6: "the SA is still valid");
MIGRATE updates the tracker's table (tunnel SAs need no rule); DUMP replaces
the table.  A rekey is nothing special (§6.3): the new SPI arrives by
GETSPI/ADD and gets its rules, the old one loses them at DELETE/EXPIRE.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import TYPE_CHECKING, Literal

from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.sadb import (
    AddEvent,
    DeleteEvent,
    DumpEvent,
    ExpireEvent,
    GetSpiEvent,
    MigrateEvent,
    SadbBus,
    SadbEvent,
    SaInfo,
    UpdateEvent,
)
from vmip.log import get_logger
from vmip.mobility.remap import (
    ANCILLARY,
    MAX_EXPECTED,
    Field,
    RemapEngine,
    RemapError,
    RemapRule,
)
from vmip.wire.proto import MOBILITY

if TYPE_CHECKING:
    from vmip.ipsec.sad import SAD
    from vmip.ipsec.spd import SPD

log = get_logger(__name__)

_WILDCARD = IPv6Address(0)

SaKind = Literal["mh", "data", "mixed", "other"]
_KINDS = ("mh", "data", "mixed", "other")
Classifier = Callable[[SaInfo], str]


class Role(enum.Enum):
    """What this node is for the pair of addresses an intent names."""

    MN = "mn"  # local = our HoA, remote = a CN or our HA
    CN = "cn"  # local = our address, remote = the MN's HoA
    HA = "ha"  # local = our address, remote = the MN's HoA (draft §7.2: as a CN)


def classify_sa(sa: SaInfo, spd: SPD | None = None) -> SaKind:
    """The default classifier (see the module notes)."""
    if sa.mode is Mode.TUNNEL:
        return "other"
    if not isinstance(sa.src, IPv6Address) or not isinstance(sa.dst, IPv6Address):
        return "other"
    selectors = tuple(sa.selectors)
    if not selectors and spd is not None:
        selectors = tuple(policy.selector
                          for policy in spd.policies_for_sa(sa.name, sa.spi, sa.direction))
    if not selectors:
        return "mixed"
    protos = [getattr(selector, "proto", None) for selector in selectors]
    carries_mh = any(proto is None or proto == MOBILITY for proto in protos)
    carries_data = any(proto != MOBILITY for proto in protos)
    if carries_mh and carries_data:
        return "mixed"
    return "mh" if carries_mh else "data"


@dataclass
class _MhIntent:
    role: Role
    coa: IPv6Address | None = None  # role MN only: the CoA our MH is remapped to
    others: tuple[IPv6Address, ...] = ()  # role MN: our other CoAs (RFC 5648 bindings)


@dataclass
class _DataBinding:
    role: Role
    inbound_coa: IPv6Address | None   # remap traffic arriving from/at this CoA
    outbound_coa: IPv6Address | None  # send to/from this CoA
    #: The other bound CoAs (RFC 5648), accepted inbound like inbound_coa; when
    #: there are any, outbound is "ancillary or outbound_coa" (chosen per packet).
    others: tuple[IPv6Address, ...] = ()


def _without(addresses: Iterable[IPv6Address], *skip: IPv6Address | None) -> tuple[IPv6Address, ...]:
    """*addresses* in order, each once, none of *skip*."""
    result: list[IPv6Address] = []
    for address in addresses:
        if address not in skip and address not in result:
            result.append(address)
    return tuple(result)


def _replaced(addresses: tuple[IPv6Address, ...], old: IPv6Address,
              new: IPv6Address | None) -> tuple[IPv6Address, ...]:
    return tuple(a for a in (new if a == old else a for a in addresses) if a is not None)


@dataclass(frozen=True)
class TrackedSa:
    """One SA as the tracker knows it (the "IRO SA state table" of draft §6.1)."""

    spi: int
    direction: Direction
    src: IPv6Address
    dst: IPv6Address
    state: str
    name: str
    mode: Mode | None
    kind: str
    rules: tuple[RemapRule, ...]


class _Entry:
    __slots__ = ("info", "kind", "order")

    def __init__(self, info: SaInfo, kind: str, order: int) -> None:
        self.info = info
        self.kind = kind
        self.order = order


def _side(role: Role) -> str:
    # CN and HA play the same part in the rules (draft §7.2).
    return "mn" if role is Role.MN else "peer"


def _as_role(role: Role | str) -> Role:
    try:
        return role if isinstance(role, Role) else Role(role)
    except ValueError:
        raise RemapError(f"role must be mn, cn or ha, not {role!r}") from None


def _address(value: object, what: str) -> IPv6Address:
    if isinstance(value, str):
        try:
            value = IPv6Address(value)
        except ValueError:
            raise RemapError(f"{what}: {value!r} is not an IPv6 address") from None
    if not isinstance(value, IPv6Address) or value == _WILDCARD:
        raise RemapError(f"{what}: expected a unicast IPv6 address, got {value!r}")
    return value


class SpiTracker:
    """Installs and removes remap rules as SAs and intents come and go."""

    def __init__(self, bus: SadbBus, engine: RemapEngine, *,
                 classify: Classifier | None = None, spd: SPD | None = None,
                 sad: SAD | None = None) -> None:
        """Subscribe to *bus*; rules go into *engine*.

        *classify(sa_info)* overrides :func:`classify_sa` (which uses *spd*
        for SAs without selectors).  With *sad*, the SAs it already holds are
        collected at once (draft §6.1 "initial collect": static keys exist
        before anything subscribes).
        """
        self.bus = bus
        self.engine = engine
        self._classify: Classifier = classify or (lambda sa: classify_sa(sa, spd))
        # The default classifier reads the SPD, which may change after an SA
        # was classified (static keys install SAs before policies).
        self._spd = spd if classify is None else None
        self._spd_generation = self._spd.generation if self._spd is not None else 0
        self._sas: dict[tuple[Direction, int, bytes], _Entry] = {}
        # Indexes over _sas, so one SPI or one address pair costs O(1) whatever
        # the number of SAs (a HA holds two per MN): keys by (direction, SPI),
        # and by SA-level (local, remote).  Kept in step by _put/_pop/_set_info.
        self._by_spi: dict[tuple[Direction, int], set[tuple[Direction, int, bytes]]] = {}
        self._by_pair: dict[tuple[object, object], set[tuple[Direction, int, bytes]]] = {}
        self._order = itertools.count()
        self._mh: dict[tuple[str, IPv6Address, IPv6Address], _MhIntent] = {}
        self._data: dict[tuple[str, IPv6Address, IPv6Address], _DataBinding] = {}
        # What we installed, per (direction, SPI): field -> rule.
        self._installed: dict[tuple[Direction, int], dict[Field, RemapRule]] = {}
        #: Events handled and rule changes made, by kind.
        self.counters: Counter[str] = Counter()
        bus.subscribe(self.handle)
        if sad is not None:
            self.initial_collect(sad.dump(publish=False))

    def close(self) -> None:
        """Stop listening to the bus (the rules stay)."""
        self.bus.unsubscribe(self.handle)

    def reclassify(self) -> int:
        """Classify every SA again and resync (after SPD edits a custom classifier sees).

        With the default classifier this happens by itself whenever the SPD's
        ``generation`` moved since the last look.  Returns how many rules changed.
        """
        if self._spd is not None:
            self._spd_generation = self._spd.generation
        for entry in self._sas.values():
            entry.kind = self._kind(entry.info)
        return self._sync_all()

    def _refresh(self) -> None:
        spd = self._spd
        if spd is not None and spd.generation != self._spd_generation:
            self.counters["reclassified"] += 1
            self.reclassify()

    # -- intents -------------------------------------------------------------

    def track_mh(self, local: IPv6Address, remote: IPv6Address, role: Role | str, *,
                 coa: IPv6Address | None = None, others: Iterable[IPv6Address] = ()) -> int:
        """MH SAs between *local* and *remote* get IRO's MH rules.

        Role MN: *local* is our HoA, *remote* a CN or our HA, *coa* our
        current CoA (``None`` at home: no inbound rule is needed), *others*
        our other CoAs when we hold one binding per link (RFC 5648): MH
        answers may come to any of them.  Role CN or HA: *local* is our
        address, *remote* the MN's HoA.  Returns how many rules changed.
        """
        self._refresh()
        role = _as_role(role)
        local = _address(local, "local address")
        remote = _address(remote, "remote address")
        more = tuple(_address(a, "care-of address") for a in others)
        if (coa is not None or more) and role is not Role.MN:
            raise RemapError("only the MN side of an intent has a CoA of its own")
        if coa is not None:
            coa = _address(coa, "care-of address")
        elif more:
            coa, more = more[0], more[1:]
        self._mh[(_side(role), local, remote)] = _MhIntent(role, coa, _without(more, coa))
        log.info("iro tracking mh", role=role.value, local=str(local), remote=str(remote),
                 coa=str(coa) if coa else "")
        return self._sync_pair(local, remote)

    def untrack_mh(self, local: IPv6Address, remote: IPv6Address, role: Role | str) -> int:
        self._refresh()
        role = _as_role(role)
        local = _address(local, "local address")
        remote = _address(remote, "remote address")
        if self._mh.pop((_side(role), local, remote), None) is None:
            return 0
        return self._sync_pair(local, remote)

    def bind_data(self, local: IPv6Address, remote: IPv6Address, coa: IPv6Address,
                  role: Role | str = Role.MN, *, inbound: bool = True,
                  outbound: bool = True, outbound_coa: IPv6Address | None = None,
                  others: Iterable[IPv6Address] = ()) -> int:
        """IPsec data SAs between *local* and *remote* follow *coa* (draft §3.6).

        Role MN: *local* is our HoA, *remote* the CN (or the other MN's HoA),
        *coa* our CoA the CN accepted.  Role CN: *local* is our address,
        *remote* the MN's HoA, *coa* the MN's CoA.  *inbound*/*outbound* say
        which directions use it; a direction left out is unbound.  A CN
        accepts traffic from a new CoA at once but sends to it only after
        the proof (§4.5.1): ``bind_data(..., outbound=False)`` at the BU,
        ``bind_data(...)`` after the AOTR.  *outbound_coa*, if given, is
        where outbound data goes instead of *coa* (inbound and outbound
        CoAs differ).  *others*: the other bound CoAs of the HoA (RFC 5648,
        one binding per link; at most 15), accepted inbound too; with any,
        the outbound rule is "ancillary or" the outbound CoA, so that the
        send path picks the path per packet.  Applies to the SAs there now
        and to those added later.  Returns how many rules changed.
        """
        self._refresh()
        role = _as_role(role)
        local = _address(local, "local address")
        remote = _address(remote, "remote address")
        coa = _address(coa, "care-of address")
        send = _address(outbound_coa, "outbound care-of address") if outbound_coa else None
        more = _without((_address(a, "care-of address") for a in others), coa)
        if len(more) >= MAX_EXPECTED:
            raise RemapError(f"at most {MAX_EXPECTED} care-of addresses per binding, "
                             f"not {len(more) + 1}")
        if not inbound and not outbound and send is None:
            return self.unbind(local, remote, role)
        self._data[(_side(role), local, remote)] = _DataBinding(
            role, coa if inbound else None, send or (coa if outbound else None), more)
        log.info("iro data binding", role=role.value, local=str(local), remote=str(remote),
                 coa=str(coa), inbound=inbound, outbound=outbound)
        return self._sync_pair(local, remote)

    def unbind(self, local: IPv6Address, remote: IPv6Address, role: Role | str = Role.MN) -> int:
        """Data SAs between *local* and *remote* go back to the HoA path; MH rules stay."""
        self._refresh()
        role = _as_role(role)
        local = _address(local, "local address")
        remote = _address(remote, "remote address")
        if self._data.pop((_side(role), local, remote), None) is None:
            return 0
        log.info("iro data unbound", role=role.value, local=str(local), remote=str(remote))
        return self._sync_pair(local, remote)

    def move(self, old_coa: IPv6Address | None, new_coa: IPv6Address | None) -> int:
        """Our CoA changed (draft §6.1; docs/design.md §7.6: rules first, then the BUs).

        MN-side intents and bindings that named *old_coa* (``None``: at home)
        now name *new_coa*; every engine rule naming *old_coa*, whoever
        installed it, is rewritten.  *new_coa* ``None``: *old_coa* is gone.
        Where it was one of several CoAs (RFC 5648 bindings) only it goes,
        and when it was the primary one the next one takes its place.  Where
        it was the only one (back home), MN-side data bindings on it end and
        the MH inbound rules go.
        """
        self._refresh()
        new = None if new_coa is None else _address(new_coa, "new care-of address")
        old = None if old_coa is None else _address(old_coa, "old care-of address")
        if old == new:
            return 0
        for (side, _local, _remote), intent in self._mh.items():
            if side != "mn":
                continue
            if old is None:
                if intent.coa is None:
                    intent.coa = new
                continue
            if intent.coa == old:
                intent.coa = new
                if new is None and intent.others:
                    intent.coa, intent.others = intent.others[0], intent.others[1:]
            intent.others = _without(_replaced(intent.others, old, new), intent.coa)
        for key, binding in list(self._data.items()):
            if key[0] != "mn" or old is None:
                continue
            if new is None and not binding.others \
                    and old in (binding.inbound_coa, binding.outbound_coa):
                del self._data[key]
                continue
            if binding.inbound_coa == old:
                binding.inbound_coa = new
                if new is None:
                    binding.inbound_coa, binding.others = binding.others[0], binding.others[1:]
            if binding.outbound_coa == old:
                binding.outbound_coa = new if new is not None else binding.inbound_coa
            binding.others = _without(_replaced(binding.others, old, new), binding.inbound_coa)
        changed = 0
        if old is not None and new is not None:
            changed += self.engine.replace_address(old, new)
        log.info("iro move", old=str(old) if old else "home", new=str(new) if new else "home")
        return changed + self._sync_all()

    def set_care_of_addresses(self, coas: Iterable[IPv6Address]) -> int:
        """An MN's CoAs, primary first (RFC 5648: one binding per link).

        Every MN-side MH intent expects its answers at any of them; an empty
        list is home (no MH inbound rule).  Data bindings keep the sets their
        peers accepted (:meth:`bind_data`'s *others*).  Returns how many
        rules changed.
        """
        self._refresh()
        ordered = _without(_address(a, "care-of address") for a in coas)
        if len(ordered) > MAX_EXPECTED:
            raise RemapError(f"at most {MAX_EXPECTED} care-of addresses, not {len(ordered)}")
        primary = ordered[0] if ordered else None
        touched = set()
        for (side, local, remote), intent in self._mh.items():
            if side == "mn" and (intent.coa, intent.others) != (primary, ordered[1:]):
                intent.coa, intent.others = primary, ordered[1:]
                touched.add((local, remote))
        return sum(self._sync_pair(local, remote) for local, remote in touched)

    # -- the table -------------------------------------------------------------

    def initial_collect(self, sas: Iterable[SaInfo]) -> int:
        """Learn SAs that exist already (draft §6.1, the SADB_DUMP path)."""
        keys = set()
        for info in sas:
            keys.add(self._learn(info))
        return sum(self._sync(direction, spi) for direction, spi in keys)

    def sas(self) -> list[TrackedSa]:
        """Every SA the tracker knows, oldest first, with the rules it holds."""
        self._refresh()
        result = []
        for entry in sorted(self._sas.values(), key=lambda e: e.order):
            info = entry.info
            installed = self._installed.get((info.direction, info.spi), {})
            result.append(TrackedSa(
                spi=info.spi, direction=info.direction,
                src=info.src, dst=info.dst,  # type: ignore[arg-type]
                state=info.state, name=info.name, mode=info.mode, kind=entry.kind,
                rules=tuple(installed[f] for f in Field if f in installed)))
        return result

    # -- SADB events (draft §6.2) ------------------------------------------------

    def handle(self, event: SadbEvent) -> None:
        """The bus callback."""
        self._refresh()
        if isinstance(event, GetSpiEvent):
            # §6.2.2: the inbound SPI exists before the negotiation ends.
            info = SaInfo(spi=event.spi, direction=Direction.IN, src=event.src, dst=event.dst,
                          state="larval", name=event.name)
            self.counters["getspi"] += 1
            self._sync(*self._learn(info))
        elif isinstance(event, (AddEvent, UpdateEvent)):
            # §6.2.3, §6.2.4: ADD is handled as UPDATE.
            self.counters["add" if isinstance(event, AddEvent) else "update"] += 1
            self._sync(*self._learn(event.sa))
        elif isinstance(event, DeleteEvent):
            self.counters["delete"] += 1
            self._forget(event.sa)
        elif isinstance(event, ExpireEvent):
            if event.kind == "hard":
                # §6.2.6: the SA may be gone already; its rules go now.
                self.counters["expire_hard"] += 1
                self._forget(event.sa)
            else:
                # §6.2.6: soft, "nothing is done as the SA is still valid".
                self.counters["expire_soft"] += 1
                key = self._key(event.sa)
                entry = self._sas.get(key)
                if entry is not None:
                    self._set_info(key, entry, event.sa)
        elif isinstance(event, MigrateEvent):
            # Tunnel SAs only: their outer addresses already are CoAs (§7.2),
            # so no rule; the table shows the new endpoints.
            self.counters["migrate"] += 1
            old_key = (event.sa.direction, event.sa.spi, event.old_dst.packed)
            entry = self._pop(old_key)
            order = entry.order if entry is not None else next(self._order)
            self._put(self._key(event.sa), _Entry(event.sa, self._kind(event.sa), order))
            self._sync(event.sa.direction, event.sa.spi)
        elif isinstance(event, DumpEvent):
            self.counters["dump"] += 1
            stale = {(key[0], key[1]) for key in self._sas}
            self._sas.clear()
            self._by_spi.clear()
            self._by_pair.clear()
            fresh = {self._learn(info) for info in event.sas}
            for direction, spi in stale | fresh:
                self._sync(direction, spi)

    # -- internals --------------------------------------------------------------

    @staticmethod
    def _key(info: SaInfo) -> tuple[Direction, int, bytes]:
        return (info.direction, info.spi, info.dst.packed)

    def _kind(self, info: SaInfo) -> str:
        kind = self._classify(info)
        if kind not in _KINDS:
            self.counters["bad_classification"] += 1
            log.warning("iro classifier gave an unknown kind; SA not tracked",
                        spi=f"{info.spi:#010x}", kind=repr(kind))
            return "other"
        return kind

    def _learn(self, info: SaInfo) -> tuple[Direction, int]:
        key = self._key(info)
        kind = self._kind(info)
        entry = self._sas.get(key)
        if entry is None:
            self._put(key, _Entry(info, kind, next(self._order)))
        else:
            entry.kind = kind
            self._set_info(key, entry, info)
        return info.direction, info.spi

    @staticmethod
    def _pair(info: SaInfo) -> tuple[object, object]:
        """The SA-level (local, remote) addresses of an SA seen from this node."""
        return (info.src, info.dst) if info.direction is Direction.OUT else (info.dst, info.src)

    def _put(self, key: tuple[Direction, int, bytes], entry: _Entry) -> None:
        old = self._sas.get(key)
        if old is not None:
            self._unindex(key, old.info)
        self._sas[key] = entry
        self._by_spi.setdefault((key[0], key[1]), set()).add(key)
        self._by_pair.setdefault(self._pair(entry.info), set()).add(key)

    def _pop(self, key: tuple[Direction, int, bytes]) -> _Entry | None:
        entry = self._sas.pop(key, None)
        if entry is not None:
            self._unindex(key, entry.info)
        return entry

    def _set_info(self, key: tuple[Direction, int, bytes], entry: _Entry, info: SaInfo) -> None:
        old_pair, new_pair = self._pair(entry.info), self._pair(info)
        entry.info = info
        if old_pair != new_pair:
            self._drop_from(self._by_pair, old_pair, key)
            self._by_pair.setdefault(new_pair, set()).add(key)

    def _unindex(self, key: tuple[Direction, int, bytes], info: SaInfo) -> None:
        self._drop_from(self._by_spi, (key[0], key[1]), key)
        self._drop_from(self._by_pair, self._pair(info), key)

    @staticmethod
    def _drop_from(index: dict, slot: object, key: tuple[Direction, int, bytes]) -> None:
        keys = index.get(slot)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del index[slot]

    def _forget(self, info: SaInfo) -> None:
        self._pop(self._key(info))
        # §6.2.5: every rule of that SPI goes, whoever installed it; another
        # tracked SA with the same SPI (another peer's choice) gets its own back.
        removed = self.engine.remove(info.direction, info.spi)
        if removed:
            self.counters["rules_removed"] += removed
            log.info("iro rules removed", spi=f"{info.spi:#010x}",
                     direction=info.direction.value, count=removed)
        self._installed.pop((info.direction, info.spi), None)
        self._sync(info.direction, info.spi)

    def _sync_pair(self, local: IPv6Address, remote: IPv6Address) -> int:
        keys = {(key[0], key[1]) for key in self._by_pair.get((local, remote), ())}
        return sum(self._sync(direction, spi) for direction, spi in keys)

    def _sync_all(self) -> int:
        keys = {(key[0], key[1]) for key in self._sas} | set(self._installed)
        return sum(self._sync(direction, spi) for direction, spi in keys)

    def _sync(self, direction: Direction, spi: int) -> int:
        """Make the engine hold exactly the rules the SAs with this SPI need."""
        wanted: dict[Field, RemapRule] = {}
        candidates = [self._sas[key] for key in self._by_spi.get((direction, spi), ())]
        candidates.sort(key=lambda e: e.order)
        contributors = 0
        for entry in candidates:  # the newest SA wins a shared SPI
            rules = self._rules_for(entry)
            if rules:
                contributors += 1
                wanted = rules
        if contributors > 1:
            # Outbound SPIs are chosen by the peers (RFC 4301 §4.1): two peers
            # may pick the same one, and rules are keyed by SPI alone (§5.1.2).
            self.counters["spi_conflict"] += 1
            log.warning("iro: several tracked SAs share an SPI; the newest one's rules apply",
                        spi=f"{spi:#010x}", direction=direction.value)
        had = self._installed.get((direction, spi), {})
        changes = 0
        for field in Field:
            want = wanted.get(field)
            current = self.engine.get(direction, spi, field)
            if want is None:
                # Ours if the tracker's owner tag is on it (a movement may have
                # rewritten its addresses); a rule someone else put there stays.
                if field in had and current is not None and current.owner == had[field].owner:
                    self.engine.remove(direction, spi, field)
                    changes += 1
            elif current != want:
                self.engine.add(want)
                changes += 1
        if wanted:
            self._installed[(direction, spi)] = wanted
        else:
            self._installed.pop((direction, spi), None)
        if changes:
            self.counters["rule_changes"] += changes
            log.info("iro rules synced", spi=f"{spi:#010x}", direction=direction.value,
                     rules="; ".join(str(rule) for rule in wanted.values()) or "none")
        return changes

    def _rules_for(self, entry: _Entry) -> dict[Field, RemapRule]:
        """The rules of draft §3.1/§5.2 for one SA, from the intents naming its addresses."""
        kind = entry.kind
        info = entry.info
        if kind == "other":
            return {}
        outbound = info.direction is Direction.OUT
        local, remote = (info.src, info.dst) if outbound else (info.dst, info.src)
        if not isinstance(local, IPv6Address) or not isinstance(remote, IPv6Address):
            return {}
        carries_mh = kind in ("mh", "mixed")
        carries_data = kind in ("data", "mixed")
        rules: dict[Field, RemapRule] = {}
        spi = info.spi

        # Our own mobility (role MN): our HoA is the source going out and the
        # destination coming in.
        mh = self._mh.get(("mn", local, remote)) if carries_mh else None
        data = self._data.get(("mn", local, remote)) if carries_data else None
        owner = f"iro-mn:{remote}"
        if outbound:
            if mh is not None:
                # §3.1 rule 1: from the CoA MIPv6 names in the ancillary data.
                rules[Field.SRC] = RemapRule(Direction.OUT, spi, Field.SRC, local, ANCILLARY,
                                             owner=owner,
                                             fallback=data.outbound_coa if data else None)
            elif data is not None and data.outbound_coa is not None:
                if data.others:
                    # Several bindings: the send path names the CoA per packet.
                    rules[Field.SRC] = RemapRule(Direction.OUT, spi, Field.SRC, local, ANCILLARY,
                                                 owner=owner, fallback=data.outbound_coa)
                else:
                    rules[Field.SRC] = RemapRule(Direction.OUT, spi, Field.SRC, local,
                                                 data.outbound_coa, owner=owner)  # example 1
        else:
            expected: tuple[IPv6Address, ...] = ()
            if mh is not None and mh.coa is not None:
                expected = (mh.coa, *mh.others)
            if data is not None and data.inbound_coa is not None:
                expected = _without((*expected, data.inbound_coa, *data.others))
            if expected:
                # §3.1 rule 4 (MH: the on-wire CoA goes to MIPv6, §3.3) / example 1;
                # any bound CoA when there are several (RFC 5648).
                rules[Field.DST] = RemapRule(Direction.IN, spi, Field.DST, expected[0], local,
                                             copy_to_ancillary=mh is not None, owner=owner,
                                             also_expected=expected[1:MAX_EXPECTED])

        # The peer's mobility (role CN or HA): the peer's HoA is the source
        # coming in and the destination going out.
        intent = self._mh.get(("peer", local, remote)) if carries_mh else None
        binding = self._data.get(("peer", local, remote)) if carries_data else None
        role = intent.role if intent is not None else (binding.role if binding else Role.CN)
        owner = f"iro-{role.value}:{remote}"
        if outbound:
            if intent is not None:
                # §3.1 rule 3: to the CoA in the ancillary data, "if not null".
                rules[Field.DST] = RemapRule(Direction.OUT, spi, Field.DST, remote, ANCILLARY,
                                             owner=owner,
                                             fallback=binding.outbound_coa if binding else None)
            elif binding is not None and binding.outbound_coa is not None:
                if binding.others:
                    # Several bindings: the send path names the CoA per packet.
                    rules[Field.DST] = RemapRule(Direction.OUT, spi, Field.DST, remote, ANCILLARY,
                                                 owner=owner, fallback=binding.outbound_coa)
                else:
                    rules[Field.DST] = RemapRule(Direction.OUT, spi, Field.DST, remote,
                                                 binding.outbound_coa, owner=owner)  # example 3
        else:
            if intent is not None:
                # §3.1 rule 2 / §5.1.3: any source, handed to MIPv6 to check.
                rules[Field.SRC] = RemapRule(Direction.IN, spi, Field.SRC, _WILDCARD, remote,
                                             copy_to_ancillary=True, owner=owner)
            elif binding is not None and binding.inbound_coa is not None:
                rules[Field.SRC] = RemapRule(Direction.IN, spi, Field.SRC, binding.inbound_coa,
                                             remote, owner=owner,   # example 3
                                             also_expected=binding.others)
        return rules
