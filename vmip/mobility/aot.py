"""Address Ownership Test state (draft §4): nonces and the proof cache.

A CN keeps two bounded LRU tables:

* :class:`NonceStore`: the nonce of every AOTC sent, keyed by (HoA, tested
  address).  The draft says the nonce is stored "for that MN, along with
  the address being tested" (§4.4.2) and looked up by the AOTR's on-wire
  source (§4.4.3); it must outlive the BA so that a resent AOTR still gets
  one (§4.5.1).
* :class:`ProofCache`: the (HoA, CoA) pairs proven so far.  Proofs have no
  lifetime (§4.5.1: "IRO uses proofs with unlimited lifetimes"); the cache
  is bounded and forgets the least recently used pair first.
"""

from __future__ import annotations

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
    """Proven (HoA, CoA) pairs, at most ``capacity``, least recently used evicted first."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("a proof cache holds at least one proof")
        self.capacity = capacity
        self._proofs: OrderedDict[ProofKey, float] = OrderedDict()
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
        return True

    def add(self, hoa: IPv6Address, coa: IPv6Address, now: float) -> bool:
        """Record a proof; true if it is new.  Evicts the least recently used beyond capacity."""
        key = (hoa, coa)
        new = key not in self._proofs
        self._proofs[key] = now
        self._proofs.move_to_end(key)
        while len(self._proofs) > self.capacity:
            self._proofs.popitem(last=False)
            self.evictions += 1
        return new

    def discard(self, hoa: IPv6Address, coa: IPv6Address) -> None:
        self._proofs.pop((hoa, coa), None)


@dataclass(slots=True)
class NonceRecord:
    """The nonce of the AOTC sent for (hoa, address) and what is waiting on its AOTR."""

    hoa: IPv6Address
    address: IPv6Address
    nonce: bytes
    created_at: float
    waiting: set[AotPurpose] = field(default_factory=set)
    answered: bool = False


class NonceStore:
    """Nonces of AOTCs sent, keyed by (HoA, tested address); bounded, LRU."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("a nonce store holds at least one nonce")
        self.capacity = capacity
        self._records: OrderedDict[ProofKey, NonceRecord] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, hoa: IPv6Address, address: IPv6Address) -> NonceRecord | None:
        return self._records.get((hoa, address))

    def challenge(
        self, hoa: IPv6Address, address: IPv6Address, purpose: AotPurpose, rng: Rng, now: float
    ) -> NonceRecord:
        """The record to put in an AOTC for (hoa, address).

        A test still waiting for its AOTR keeps its nonce, so an AOTC sent
        again (the MN resent its BU, or a HoA-test retransmission) carries
        the same value and an AOTR for either copy matches.  Once answered,
        a new test gets a fresh nonce (draft §4.3.1).
        """
        key = (hoa, address)
        record = self._records.get(key)
        if record is None or record.answered:
            record = NonceRecord(hoa, address, fresh_nonce(rng), now)
            self._records[key] = record
        record.waiting.add(purpose)
        self._records.move_to_end(key)
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)
            self.evictions += 1
        return record

    def records(self) -> list[NonceRecord]:
        return list(self._records.values())
