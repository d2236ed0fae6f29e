"""The SADB event bus: vmip's PF_KEY (RFC 2367) analogue, draft §6.

The SAD publishes what happens to SAs as typed, frozen events; IRO, IKE, the
control socket and the tests subscribe.  The vocabulary is PF_KEY's:
GETSPI, ADD, UPDATE, DELETE, EXPIRE (soft/hard), plus MIGRATE (the PF_KEY
extension of draft-sugimoto-mip6-pfkey-migrate, [MIGRATE] in the IRO draft),
DUMP and ACQUIRE (no SA for a PROTECT policy: key management should start).

Like the kernel's broadcasts to listening PF_KEY sockets, events never carry
key material: an :class:`SaInfo` is the SA without its keys.

Delivery: :meth:`SadbBus.publish` appends to a queue; the first publish
drains it, calling every subscriber for one event before the next event.  A
subscriber that publishes (directly, or by editing the SAD) only appends:
every subscriber sees every event, in publication order, and no callback
runs inside another.  A subscriber that raises is logged and skipped; the
others still get the event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from vmip.ipsec.sa import Address, Direction, Lifetime, Mode
from vmip.log import get_logger

if TYPE_CHECKING:
    from vmip.wire.flow import FlowKey

log = get_logger(__name__)

ExpireKind = Literal["soft", "hard"]


@dataclass(frozen=True)
class SaInfo:
    """An SA as the SADB shows it: everything but the keys.

    ``state`` follows RFC 2367 §2.3.1: "larval" (SPI reserved by GETSPI, no
    keys yet), "mature", "dying" (soft lifetime passed).  Larval SAs have no
    mode or suite yet.
    """

    spi: int
    direction: Direction
    src: Address
    dst: Address
    state: str
    name: str = ""
    origin: str = ""
    mode: Mode | None = None
    suite: str | None = None
    selectors: tuple = ()
    soft: Lifetime = field(default_factory=Lifetime)
    hard: Lifetime = field(default_factory=Lifetime)
    created_at: float = 0.0
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class SadbEvent:
    """Base of every SADB event."""


@dataclass(frozen=True)
class GetSpiEvent(SadbEvent):
    """An inbound SPI was reserved (larval SA) for traffic src -> dst.

    Published before the SA is complete so that IRO can install remap rules
    keyed by this SPI before the first packet needs them (draft §6.2.1, §6.2.2).
    """

    spi: int
    src: Address
    dst: Address
    name: str = ""


@dataclass(frozen=True)
class AddEvent(SadbEvent):
    """A complete SA was added (static keys, or a key manager's ADD)."""

    sa: SaInfo


@dataclass(frozen=True)
class UpdateEvent(SadbEvent):
    """A larval SA got its keys and became mature (draft §6.2.3)."""

    sa: SaInfo


@dataclass(frozen=True)
class DeleteEvent(SadbEvent):
    """An SA left the SAD; ``reason``: "requested", "expired", "flush", "replaced"."""

    sa: SaInfo
    reason: str = "requested"


@dataclass(frozen=True)
class ExpireEvent(SadbEvent):
    """A lifetime ran out (RFC 4301 §4.4.2.1).

    ``kind`` "soft": the SA still works, rekey now.  "hard": the SA is unusable
    and a :class:`DeleteEvent` follows.  ``cause``: "time" (SAD timer),
    "usage" (bytes, packets or sequence numbers, reported by ESP) or
    "larval_timeout" (a GETSPI reservation never got its keys).
    """

    sa: SaInfo
    kind: ExpireKind
    cause: str = "time"


@dataclass(frozen=True)
class MigrateEvent(SadbEvent):
    """A tunnel SA's outer endpoints moved (the MIGRATE of draft §6, [MIGRATE])."""

    sa: SaInfo
    old_src: Address
    old_dst: Address
    new_src: Address
    new_dst: Address


@dataclass(frozen=True)
class DumpEvent(SadbEvent):
    """The whole SAD, in creation order (draft §6.1 "initial collect")."""

    sas: tuple[SaInfo, ...]


@dataclass(frozen=True)
class AcquireEvent(SadbEvent):
    """Outbound traffic matched a PROTECT policy whose SAs do not exist.

    RFC 2367 SADB_ACQUIRE: key management should negotiate ``missing``
    (SA names or SPIs of ``policy``'s bundle) for the flow ``key``.
    """

    policy: str
    direction: Direction
    key: FlowKey
    missing: tuple[str | int, ...]


Subscriber = Callable[[SadbEvent], object]


class SadbBus:
    """Ordered, non-re-entrant publish/subscribe for :class:`SadbEvent`."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._queue: deque[SadbEvent] = deque()
        self._draining = False
        #: Events delivered so far, and subscriber calls that raised.
        self.delivered = 0
        self.subscriber_errors = 0

    def subscribe(self, callback: Subscriber) -> Subscriber:
        """Call *callback(event)* for every event published from now on.

        Returns *callback* (so it can decorate a function).  A subscriber that
        joins while an event is being delivered gets the events after it.
        """
        if callback not in self._subscribers:
            self._subscribers.append(callback)
        return callback

    def unsubscribe(self, callback: Subscriber) -> bool:
        """Stop calling *callback*; ``False`` if it was not subscribed."""
        try:
            self._subscribers.remove(callback)
        except ValueError:
            return False
        return True

    @property
    def subscribers(self) -> tuple[Subscriber, ...]:
        return tuple(self._subscribers)

    def publish(self, event: SadbEvent) -> None:
        """Queue *event*; deliver the queue unless a delivery is in progress."""
        if not isinstance(event, SadbEvent):
            raise TypeError(f"expected a SadbEvent, got {type(event).__name__}")
        self._queue.append(event)
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue:
                current = self._queue.popleft()
                # A snapshot: subscribing or unsubscribing inside a callback
                # takes effect from the next event on.
                for callback in tuple(self._subscribers):
                    if callback not in self._subscribers:
                        continue  # unsubscribed by an earlier callback for this event
                    try:
                        callback(current)
                    except Exception:
                        self.subscriber_errors += 1
                        log.exception("sadb subscriber failed",
                                      subscriber=getattr(callback, "__qualname__", repr(callback)),
                                      event_type=type(current).__name__)
                self.delivered += 1
        finally:
            self._draining = False
