"""What an SA *is*: the parameters a key manager hands to the SAD.

This is the contract between key management (static config, IKEv2), the SAD
(:mod:`vmip.ipsec.sad`), the ESP engine (:mod:`vmip.ipsec.esp`) and IRO's SPI
tracking.  It mirrors a PF_KEY ``SADB_ADD`` (RFC 2367): SPI, addresses, mode,
algorithms, keys, lifetimes.  Runtime state (sequence numbers, the replay
window, usage counters) lives in the ESP engine's per-SA object, not here.

Addresses are *SA-level* addresses (docs/design.md §2): for an IRO-tracked SA
they are the HoA, never the CoA; the IRO remap engine rewrites them on the
wire.  For a tunnel-mode SA, ``src``/``dst`` are the outer tunnel endpoints
(RFC 4301 §4.4.2: the SAD entry names the tunnel header addresses).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address

Address = IPv4Address | IPv6Address


class Mode(enum.Enum):
    TRANSPORT = "transport"
    TUNNEL = "tunnel"


class Direction(enum.Enum):
    IN = "in"
    OUT = "out"


@dataclass(frozen=True)
class Lifetime:
    """One set of limits (RFC 4301 §4.4.2.1); ``None`` means no limit."""

    seconds: float | None = None
    bytes: int | None = None
    packets: int | None = None

    def is_unlimited(self) -> bool:
        return self.seconds is None and self.bytes is None and self.packets is None


@dataclass(frozen=True)
class SaParams:
    """Everything needed to build an ESP SA for one direction.

    ``enc_key`` is the whole key block of the cipher, including the salt for
    AEAD suites (RFC 4106 §8.1: 4-byte salt after the AES key; RFC 7634 §2:
    4-byte salt after the ChaCha20 key).  ``auth_key`` is empty for AEAD
    suites.  ``suite`` is a name from :data:`vmip.ipsec.suites.SUITES`.
    """

    spi: int
    direction: Direction
    src: Address
    dst: Address
    suite: str
    enc_key: bytes = field(repr=False)
    auth_key: bytes = field(default=b"", repr=False)
    mode: Mode = Mode.TRANSPORT
    esn: bool = True
    replay_window: int = 1024
    soft: Lifetime = Lifetime()
    hard: Lifetime = Lifetime()
    tfc_padding: bool = False
    backend: str = "cryptography"
    #: Name of the SA in the config or of the IKE CHILD_SA that made it.
    name: str = ""
    #: Traffic selectors the SA was negotiated for (RFC 4301 §5.2 inbound
    #: check): a tuple of :class:`vmip.ipsec.spd.Selector`; empty = the
    #: selectors of the inbound policies that name this SA.
    selectors: tuple = ()
    #: Who made it: "static", "ike", ... (shown by ``vmip sa list``).
    origin: str = "static"

    def __post_init__(self) -> None:
        if not 256 <= self.spi <= 0xFFFFFFFF:
            # RFC 4303 §2.1: SPI values 1-255 are reserved by IANA, 0 is local use.
            raise ValueError(f"SPI {self.spi:#x} is reserved; use 256..0xffffffff")
        if type(self.src) is not type(self.dst):
            raise ValueError("SA source and destination must be the same IP version")
        if self.replay_window < 0:
            raise ValueError("replay window must be >= 0")

    def with_endpoints(self, src: Address, dst: Address) -> SaParams:
        """A copy with new addresses (MIGRATE of a tunnel SA's outer endpoints)."""
        return replace(self, src=src, dst=dst)
