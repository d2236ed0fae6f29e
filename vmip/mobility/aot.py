"""Address Ownership Test state (draft §4): nonces and the proof cache.

A CN keeps two bounded LRU tables:

* :class:`NonceStore`: the nonces of the AOTCs sent, keyed by (HoA, tested
  address): a fresh one per AOTC (§4.3.1), the last few kept.  The draft says the nonce is stored "for that MN, along with
  the address being tested" (§4.4.2) and looked up by the AOTR's on-wire
  source (§4.4.3); it must outlive the BA so that a resent AOTR still gets
  one (§4.5.1).
* :class:`ProofCache`: the (HoA, CoA) pairs proven so far.  Proofs have no
  lifetime (§4.5.1: "IRO uses proofs with unlimited lifetimes"); the cache
  is bounded and forgets the least recently used pair first.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from vmip.mobility.events import AotPurpose
from vmip.wire.mh import NONCE_LENGTH

Rng = Callable[[int], bytes]
ProofKey = tuple[IPv6Address, IPv6Address]


def fresh_nonce(rng: Rng) -> bytes:
    """A "freshly generated 64-bit random value" (draft §4.3.1)."""
    nonce = bytes(rng(NONCE_LENGTH))
    if len(nonce) != NONCE_LENGTH:
        raise ValueError(f"the random source returned {len(nonce)} bytes, not {NONCE_LENGTH}")
    return nonce


class ProofCache:
    """Proven (HoA, CoA) pairs, at most ``capacity``, and at most ``per_hoa``
    per HoA; least recently used evicted first.

    The per-HoA bound keeps one MN from flushing every other MN's proofs:
    it may prove as many addresses as it controls (a whole prefix on its
    link), and with RFC 5648 each of its BIDs adds one.  Beyond ``per_hoa``
    its own least recently used proof goes, never another MN's.  A proof
    only spares a new AOT (draft §4.5.1); a binding that stands keeps its
    CoA without one.
    """

    def __init__(self, capacity: int, per_hoa: int | None = None):
        if capacity < 1 or (per_hoa is not None and per_hoa < 1):
            raise ValueError("a proof cache holds at least one proof")
        self.capacity = capacity
        self.per_hoa = capacity if per_hoa is None else min(per_hoa, capacity)
        self._proofs: OrderedDict[ProofKey, float] = OrderedDict()
        # HoA -> its proven CoAs, least recently used first.
        self._by_hoa: dict[IPv6Address, OrderedDict[IPv6Address, None]] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._proofs)

    def __iter__(self) -> Iterator[ProofKey]:
        return iter(self._proofs)

    def peek(self, hoa: IPv6Address, coa: IPv6Address) -> bool:
        """Whether the pair is proven, without counting it as a use."""
        return (hoa, coa) in self._proofs

    def use(self, hoa: IPv6Address, coa: IPv6Address) -> bool:
        """Whether the pair is proven; a hit makes it the most recently used."""
        key = (hoa, coa)
        if key not in self._proofs:
            return False
        self._proofs.move_to_end(key)
        self._by_hoa[hoa].move_to_end(coa)
        return True

    def add(self, hoa: IPv6Address, coa: IPv6Address, now: float) -> bool:
        """Record a proof; true if it is new.  Evicts the HoA's own least
        recently used beyond ``per_hoa``, the least recently used overall
        beyond ``capacity``."""
        key = (hoa, coa)
        new = key not in self._proofs
        self._proofs[key] = now
        self._proofs.move_to_end(key)
        own = self._by_hoa.setdefault(hoa, OrderedDict())
        own[coa] = None
        own.move_to_end(coa)
        while len(own) > self.per_hoa:
            self._evict((hoa, next(iter(own))))
        while len(self._proofs) > self.capacity:
            self._evict(next(iter(self._proofs)))
        return new

    def discard(self, hoa: IPv6Address, coa: IPv6Address) -> None:
        if self._proofs.pop((hoa, coa), None) is not None:
            self._forget(hoa, coa)

    def _evict(self, key: ProofKey) -> None:
        del self._proofs[key]
        self._forget(*key)
        self.evictions += 1

    def _forget(self, hoa: IPv6Address, coa: IPv6Address) -> None:
        own = self._by_hoa.get(hoa)
        if own is not None:
            own.pop(coa, None)
            if not own:
                del self._by_hoa[hoa]


#: Nonces kept per (HoA, tested address): the latest AOTC's and the ones
#: before it that a retransmitted (or late) AOTR may still carry.
NONCES_PER_ADDRESS = 4
#: Tested addresses kept per HoA: its CoA and a few standby links' (draft
#: §4.5.2).  One MN naming more addresses evicts its own oldest record,
#: never another MN's pending nonce.
RECORDS_PER_HOA = 8


@dataclass(slots=True)
class NonceRecord:
    """The nonces of the AOTCs sent for (hoa, address) and what is waiting on an AOTR.

    ``nonce`` is the latest AOTC's; ``earlier`` the ones before it, newest
    first, at most ``NONCES_PER_ADDRESS - 1``.  An AOTR answering any of
    them proves the address: each was sent there only.
    """

    hoa: IPv6Address
    address: IPv6Address
    nonce: bytes
    created_at: float
    waiting: set[AotPurpose] = field(default_factory=set)
    answered: bool = False
    earlier: list[bytes] = field(default_factory=list)

    def matches(self, nonce: bytes) -> bool:
        """Whether *nonce* is one of the kept ones (each compared in constant time)."""
        found = False
        for kept in (self.nonce, *self.earlier):
            found |= hmac.compare_digest(kept, nonce)
        return found


class NonceStore:
    """Nonces of AOTCs sent, keyed by (HoA, tested address); bounded, LRU,
    and at most ``per_hoa`` records per HoA (its own oldest goes first)."""

    def __init__(self, capacity: int, per_hoa: int = RECORDS_PER_HOA):
        if capacity < 1 or per_hoa < 1:
            raise ValueError("a nonce store holds at least one nonce")
        self.capacity = capacity
        self.per_hoa = per_hoa
        self._records: OrderedDict[ProofKey, NonceRecord] = OrderedDict()
        # HoA -> its tested addresses, least recently challenged first.
        self._by_hoa: dict[IPv6Address, OrderedDict[IPv6Address, None]] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, hoa: IPv6Address, address: IPv6Address) -> NonceRecord | None:
        return self._records.get((hoa, address))

    def challenge(
        self, hoa: IPv6Address, address: IPv6Address, purpose: AotPurpose, rng: Rng, now: float
    ) -> NonceRecord:
        """The record for a new AOTC to (hoa, address), with a fresh nonce in ``nonce``.

        Every AOTC gets a freshly generated nonce (draft §4.3.1 MUST), also
        one sent again because the MN resent its BU or a HoA test is
        retransmitted.  The nonces sent before stay valid, at most
        ``NONCES_PER_ADDRESS`` in all, so an AOTR answering an earlier copy
        (crossing the new AOTC, or resent because the BA was lost, §4.5.1)
        still matches.  What waits on the test is kept across AOTCs; a test
        answered before starts afresh.
        """
        key = (hoa, address)
        record = self._records.get(key)
        nonce = fresh_nonce(rng)
        if record is None:
            record = NonceRecord(hoa, address, nonce, now)
            self._records[key] = record
        else:
            record.earlier.insert(0, record.nonce)
            del record.earlier[NONCES_PER_ADDRESS - 1:]
            record.nonce = nonce
            record.created_at = now
            if record.answered:
                record.waiting.clear()
                record.answered = False
        record.waiting.add(purpose)
        self._records.move_to_end(key)
        own = self._by_hoa.setdefault(hoa, OrderedDict())
        own[address] = None
        own.move_to_end(address)
        while len(own) > self.per_hoa:
            self._evict((hoa, next(iter(own))))
        while len(self._records) > self.capacity:
            self._evict(next(iter(self._records)))
        return record

    def _evict(self, key: ProofKey) -> None:
        hoa, address = key
        del self._records[key]
        own = self._by_hoa.get(hoa)
        if own is not None:
            own.pop(address, None)
            if not own:
                del self._by_hoa[hoa]
        self.evictions += 1

    def records(self) -> list[NonceRecord]:
        return list(self._records.values())
