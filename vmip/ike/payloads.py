"""IKEv2 payload codecs (RFC 7296 §3.2-§3.16).

Every payload is a frozen dataclass with ``encode_body()`` and a
``decode_body(body)`` classmethod; :func:`encode_chain` / :func:`decode_chain`
handle the generic payload header (§3.2) that links them.  Malformed input
raises :class:`IkeParseError` and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import ClassVar

from vmip.errors import VmipError
from vmip.ike.constants import ATTR_KEY_LENGTH, IdType, Notify, PayloadType, ProtocolId, TsType

Address = IPv4Address | IPv6Address


class IkeParseError(VmipError):
    """A malformed IKE message or payload."""


class IkeUnsupportedCriticalPayload(IkeParseError):
    """An unknown payload had the critical bit set (RFC 7296 §2.5)."""

    def __init__(self, payload_type: int):
        super().__init__(f"unsupported critical payload type {payload_type}")
        self.payload_type = payload_type


class IkeIntegrityError(IkeParseError):
    """The ICV of an SK payload did not verify, or AEAD decryption failed."""


_GENERIC = struct.Struct("!BBH")
CRITICAL = 0x80


@dataclass(frozen=True)
class Transform:
    type: int
    id: int
    key_length: int | None = None  # bits; the Key Length attribute (§3.3.5)

    def encode(self, last: bool) -> bytes:
        attrs = b""
        if self.key_length is not None:
            # TV format: AF bit set, 16-bit value (§3.3.5).
            attrs = struct.pack("!HH", 0x8000 | ATTR_KEY_LENGTH, self.key_length)
        return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs),
                           self.type, 0, self.id) + attrs


@dataclass(frozen=True)
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def transforms_of(self, ttype: int) -> list[Transform]:
        return [t for t in self.transforms if t.type == ttype]

    def encode(self, last: bool) -> bytes:
        body = b"".join(t.encode(i == len(self.transforms) - 1)
                        for i, t in enumerate(self.transforms))
        return struct.pack("!BBHBBBB", 0 if last else 2, 0, 8 + len(self.spi) + len(body),
                           self.number, self.protocol, len(self.spi),
                           len(self.transforms)) + self.spi + body


class Payload:
    PAYLOAD_TYPE: ClassVar[int]

    def encode_body(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def decode_body(cls, body: bytes) -> Payload:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class SaPayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.SA
    proposals: tuple[Proposal, ...]

    def encode_body(self) -> bytes:
        return b"".join(p.encode(i == len(self.proposals) - 1)
                        for i, p in enumerate(self.proposals))

    @classmethod
    def decode_body(cls, body: bytes) -> SaPayload:
        proposals = []
        pos = 0
        last = 2
        while pos < len(body):
            if last != 2:
                raise IkeParseError("data after the last proposal")
            if len(body) - pos < 8:
                raise IkeParseError("truncated proposal")
            last, _, plen, num, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", body, pos)
            if last not in (0, 2) or plen < 8 + spi_size or pos + plen > len(body):
                raise IkeParseError("bad proposal header")
            spi = body[pos + 8:pos + 8 + spi_size]
            tpos, tend = pos + 8 + spi_size, pos + plen
            transforms = []
            tlast = 3
            while tpos < tend:
                if tlast != 3:
                    raise IkeParseError("data after the last transform")
                if tend - tpos < 8:
                    raise IkeParseError("truncated transform")
                tlast, _, tlen, ttype, _, tid = struct.unpack_from("!BBHBBH", body, tpos)
                if tlast not in (0, 3) or tlen < 8 or tpos + tlen > tend:
                    raise IkeParseError("bad transform header")
                key_length = None
                apos = tpos + 8
                while apos < tpos + tlen:
                    if tpos + tlen - apos < 4:
                        raise IkeParseError("truncated transform attribute")
                    atype, aval = struct.unpack_from("!HH", body, apos)
                    if atype & 0x8000:
                        apos += 4
                        if atype & 0x7FFF == ATTR_KEY_LENGTH:
                            key_length = aval
                    else:
                        # TLV attribute: none is defined for IKEv2, skip it.
                        if apos + 4 + aval > tpos + tlen:
                            raise IkeParseError("truncated TLV attribute")
                        apos += 4 + aval
                transforms.append(Transform(ttype, tid, key_length))
                tpos += tlen
            if tlast != 0 or len(transforms) != ntrans:
                raise IkeParseError("transform count does not match")
            proposals.append(Proposal(num, proto, spi, tuple(transforms)))
            pos += plen
        if last != 0:
            raise IkeParseError("proposal chain not terminated")
        return cls(tuple(proposals))


@dataclass(frozen=True)
class KePayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.KE
    group: int
    data: bytes

    def encode_body(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> KePayload:
        if len(body) < 4:
            raise IkeParseError("truncated KE payload")
        return cls(struct.unpack_from("!H", body)[0], bytes(body[4:]))


@dataclass(frozen=True)
class NoncePayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.NONCE
    nonce: bytes

    def encode_body(self) -> bytes:
        return self.nonce

    @classmethod
    def decode_body(cls, body: bytes) -> NoncePayload:
        # §3.9: nonces are 16 to 256 octets.
        if not 16 <= len(body) <= 256:
            raise IkeParseError(f"nonce of {len(body)} octets (must be 16-256)")
        return cls(bytes(body))


@dataclass(frozen=True)
class Identity:
    """An IKE identity: type and data (§3.5)."""

    id_type: int
    data: bytes

    @classmethod
    def from_text(cls, text: str) -> Identity:
        """strongSwan-like: an IP address, ``user@fqdn``, ``keyid:hex``, a DN
        (``CN=...``, needs :func:`vmip.ike.crypto.dn_to_der`) or an FQDN."""
        try:
            addr = ip_address(text)
        except ValueError:
            pass
        else:
            return cls.from_address(addr)
        if text.startswith("keyid:"):
            try:
                return cls(IdType.KEY_ID, bytes.fromhex(text[6:]))
            except ValueError as exc:
                raise IkeParseError(f"bad keyid {text!r}") from exc
        if "=" in text:
            from vmip.ike.crypto import dn_to_der
            return cls(IdType.DER_ASN1_DN, dn_to_der(text))
        if "@" in text:
            return cls(IdType.RFC822_ADDR, text.encode())
        return cls(IdType.FQDN, text.encode())

    @classmethod
    def from_address(cls, addr: Address) -> Identity:
        return cls(IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR, addr.packed)

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                return str(ip_address(self.data))
            except ValueError:
                return self.data.hex()
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode("ascii", "replace")
        if self.id_type == IdType.DER_ASN1_DN:
            from vmip.ike.crypto import der_to_dn_text
            return der_to_dn_text(self.data)
        return f"keyid:{self.data.hex()}"


_ID_LENGTHS = {IdType.IPV4_ADDR: 4, IdType.IPV6_ADDR: 16}


@dataclass(frozen=True)
class _IdPayload(Payload):
    identity: Identity

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.identity.id_type) + self.identity.data

    @classmethod
    def decode_body(cls, body: bytes) -> _IdPayload:
        if len(body) < 5:
            raise IkeParseError("truncated ID payload")
        id_type = body[0]
        data = bytes(body[4:])
        want = _ID_LENGTHS.get(IdType(id_type)) if id_type in IdType._value2member_map_ else None
        if want is not None and len(data) != want:
            raise IkeParseError(f"ID type {id_type} with {len(data)} octets")
        return cls(Identity(id_type, data))


@dataclass(frozen=True)
class IdiPayload(_IdPayload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.IDI


@dataclass(frozen=True)
class IdrPayload(_IdPayload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.IDR


@dataclass(frozen=True)
class AuthPayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes = field(repr=False)

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> AuthPayload:
        if len(body) < 5:
            raise IkeParseError("truncated AUTH payload")
        return cls(body[0], bytes(body[4:]))


@dataclass(frozen=True)
class CertPayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> CertPayload:
        if len(body) < 1:
            raise IkeParseError("truncated CERT payload")
        return cls(body[0], bytes(body[1:]))


@dataclass(frozen=True)
class CertReqPayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    data: bytes  # concatenated SHA-1 hashes of CA public keys (§3.7)

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> CertReqPayload:
        if len(body) < 1:
            raise IkeParseError("truncated CERTREQ payload")
        return cls(body[0], bytes(body[1:]))


@dataclass(frozen=True)
class NotifyPayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.NOTIFY
    notify_type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> NotifyPayload:
        if len(body) < 4:
            raise IkeParseError("truncated Notify payload")
        proto, spi_size, ntype = struct.unpack_from("!BBH", body)
        if len(body) < 4 + spi_size:
            raise IkeParseError("Notify SPI runs past the payload")
        return cls(ntype, bytes(body[4 + spi_size:]), proto, bytes(body[4:4 + spi_size]))


@dataclass(frozen=True)
class DeletePayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.DELETE
    protocol: int
    spis: tuple[bytes, ...] = ()

    def encode_body(self) -> bytes:
        size = len(self.spis[0]) if self.spis else (0 if self.protocol == ProtocolId.IKE else 4)
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode_body(cls, body: bytes) -> DeletePayload:
        if len(body) < 4:
            raise IkeParseError("truncated Delete payload")
        proto, size, count = struct.unpack_from("!BBH", body)
        if len(body) != 4 + size * count:
            raise IkeParseError("Delete payload length does not match its SPI count")
        if proto == ProtocolId.IKE and (size, count) != (0, 0):
            raise IkeParseError("IKE SA Delete must carry no SPI")
        if size == 0 and count:
            raise IkeParseError("Delete with zero-size SPIs")
        return cls(proto, tuple(bytes(body[4 + i * size:4 + (i + 1) * size]) for i in range(count)))


@dataclass(frozen=True)
class VendorPayload(Payload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.VENDOR
    vendor_id: bytes

    def encode_body(self) -> bytes:
        return self.vendor_id

    @classmethod
    def decode_body(cls, body: bytes) -> VendorPayload:
        return cls(bytes(body))


@dataclass(frozen=True, order=True)
class TrafficSelector:
    """One traffic selector (§3.13.1): an address range, a protocol (0 =
    any) and a port range.  For ICMP and MH (135) the "port" carries the
    type in its high octet and the code in its low octet (RFC 4301 §4.4.1.1)."""

    start: Address
    end: Address
    protocol: int = 0
    start_port: int = 0
    end_port: int = 0xFFFF

    @property
    def ts_type(self) -> int:
        return TsType.IPV4_ADDR_RANGE if self.start.version == 4 else TsType.IPV6_ADDR_RANGE

    @classmethod
    def from_network(cls, net: str, protocol: int = 0, start_port: int = 0,
                     end_port: int = 0xFFFF) -> TrafficSelector:
        from ipaddress import ip_network
        n = ip_network(net, strict=False)
        return cls(n.network_address, n.broadcast_address, protocol, start_port, end_port)

    @classmethod
    def mh(cls, net: str, mh_type: int | None = None) -> TrafficSelector:
        """Mobility Header traffic, one MH type or all of them."""
        if mh_type is None:
            return cls.from_network(net, 135)
        return cls.from_network(net, 135, mh_type << 8, (mh_type << 8) | 0xFF)

    def encode(self) -> bytes:
        size = 8 + 2 * len(self.start.packed)
        return (struct.pack("!BBHHH", self.ts_type, self.protocol, size, self.start_port,
                            self.end_port) + self.start.packed + self.end.packed)

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        """The narrowest selector inside both (§2.9 narrowing), or None."""
        if self.start.version != other.start.version:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        # Ordered by value: both selectors are of one family here (the check
        # above; a decoded selector's start and end have one length, _decode_selectors).
        start, end = max(self.start, other.start, key=int), min(self.end, other.end, key=int)
        sport, eport = max(self.start_port, other.start_port), min(self.end_port, other.end_port)
        if int(start) > int(end) or sport > eport:
            return None
        return TrafficSelector(start, end, self.protocol or other.protocol, sport, eport)

    def contains(self, other: TrafficSelector) -> bool:
        return self.intersect(other) == other and (self.protocol in (0, other.protocol))

    def __str__(self) -> str:
        if self.start == self.end:
            addr = str(self.start)
        else:
            from ipaddress import summarize_address_range
            nets = list(summarize_address_range(self.start, self.end))
            addr = str(nets[0]) if len(nets) == 1 else f"{self.start}-{self.end}"
        extra = ""
        if self.protocol or (self.start_port, self.end_port) != (0, 0xFFFF):
            ports = "" if (self.start_port, self.end_port) == (0, 0xFFFF) else (
                f"/{self.start_port}" if self.start_port == self.end_port
                else f"/{self.start_port}-{self.end_port}")
            extra = f"[{self.protocol}{ports}]"
        return addr + extra


def _decode_selectors(body: bytes) -> tuple[TrafficSelector, ...]:
    if len(body) < 4:
        raise IkeParseError("truncated TS payload")
    count = body[0]
    if count == 0:
        raise IkeParseError("TS payload with no selector")
    pos = 4
    out = []
    for _ in range(count):
        if len(body) - pos < 8:
            raise IkeParseError("truncated traffic selector")
        ts_type, proto, size, sport, eport = struct.unpack_from("!BBHHH", body, pos)
        alen = {TsType.IPV4_ADDR_RANGE: 4, TsType.IPV6_ADDR_RANGE: 16}.get(ts_type)
        if alen is None:
            raise IkeParseError(f"unsupported traffic selector type {ts_type}")
        if size != 8 + 2 * alen or pos + size > len(body):
            raise IkeParseError("bad traffic selector length")
        start = ip_address(bytes(body[pos + 8:pos + 8 + alen]))
        end = ip_address(bytes(body[pos + 8 + alen:pos + 8 + 2 * alen]))
        out.append(TrafficSelector(start, end, proto, sport, eport))
        pos += size
    if pos != len(body):
        raise IkeParseError("data after the last traffic selector")
    return tuple(out)


@dataclass(frozen=True)
class _TsPayload(Payload):
    selectors: tuple[TrafficSelector, ...]

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", len(self.selectors)) + b"".join(s.encode() for s in self.selectors)

    @classmethod
    def decode_body(cls, body: bytes) -> _TsPayload:
        return cls(_decode_selectors(body))


@dataclass(frozen=True)
class TsiPayload(_TsPayload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.TSI


@dataclass(frozen=True)
class TsrPayload(_TsPayload):
    PAYLOAD_TYPE: ClassVar[int] = PayloadType.TSR


@dataclass(frozen=True)
class UnknownPayload(Payload):
    """A payload vmip does not interpret (non-critical ones are kept, ignored)."""

    payload_type: int
    body: bytes
    critical: bool = False

    def encode_body(self) -> bytes:
        return self.body


@dataclass(frozen=True)
class EncryptedPayload(Payload):
    """The raw SK payload as found on the wire (§3.14), before decryption."""

    PAYLOAD_TYPE: ClassVar[int] = PayloadType.SK
    first_inner: int
    body: bytes = field(repr=False)
    offset: int = 0  # where the SK generic header starts in the message


PAYLOAD_CLASSES: dict[int, type[Payload]] = {
    c.PAYLOAD_TYPE: c for c in (SaPayload, KePayload, NoncePayload, IdiPayload, IdrPayload,
                                AuthPayload, CertPayload, CertReqPayload, NotifyPayload,
                                DeletePayload, VendorPayload, TsiPayload, TsrPayload)
}


def _type_of(p: Payload) -> int:
    return p.payload_type if isinstance(p, UnknownPayload) else p.PAYLOAD_TYPE


def encode_chain(payloads: Sequence[Payload], trailing_next: int = PayloadType.NONE) -> tuple[int, bytes]:
    """Encode payloads; returns (type of the first payload, bytes)."""
    out = []
    for i, p in enumerate(payloads):
        nxt = _type_of(payloads[i + 1]) if i + 1 < len(payloads) else trailing_next
        body = p.encode_body()
        flags = CRITICAL if isinstance(p, UnknownPayload) and p.critical else 0
        out.append(_GENERIC.pack(nxt, flags, 4 + len(body)) + body)
    first = _type_of(payloads[0]) if payloads else trailing_next
    return first, b"".join(out)


def decode_chain(first: int, data: bytes, base_offset: int = 0,
                 allow_sk: bool = True) -> list[Payload]:
    """Decode a payload chain.  An SK payload must be last (§3.14); it is
    returned raw as :class:`EncryptedPayload`."""
    payloads: list[Payload] = []
    nxt = first
    pos = 0
    while nxt != PayloadType.NONE:
        if len(data) - pos < 4:
            raise IkeParseError("truncated generic payload header")
        following, flags, length = _GENERIC.unpack_from(data, pos)
        if length < 4 or pos + length > len(data):
            raise IkeParseError(f"payload length {length} runs past the message")
        body = bytes(data[pos + 4:pos + length])
        if nxt == PayloadType.SK:
            if not allow_sk:
                raise IkeParseError("SK payload inside SK payload")
            if pos + length != len(data):
                raise IkeParseError("SK payload is not the last payload")
            payloads.append(EncryptedPayload(following, body, base_offset + pos))
            return payloads
        cls = PAYLOAD_CLASSES.get(nxt)
        if cls is None:
            if flags & CRITICAL:
                raise IkeUnsupportedCriticalPayload(nxt)
            payloads.append(UnknownPayload(nxt, body, False))
        else:
            try:
                payloads.append(cls.decode_body(body))
            except (ValueError, struct.error, UnicodeDecodeError) as exc:
                raise IkeParseError(f"malformed payload {nxt}: {exc}") from exc
        nxt = following
        pos += length
    if pos != len(data):
        raise IkeParseError("data after the last payload")
    return payloads


#: COOKIE2 is 8 to 64 octets (RFC 4555 §3.7).
COOKIE2_MIN, COOKIE2_MAX = 8, 64


def parse_cookie2(data: bytes) -> bytes:
    """The data of a COOKIE2 notify (RFC 4555 §3.7): 8..64 octets, else IkeParseError."""
    if not COOKIE2_MIN <= len(data) <= COOKIE2_MAX:
        raise IkeParseError(f"COOKIE2 of {len(data)} octets; 8 to 64 are allowed")
    return bytes(data)


def parse_additional_address(notify_type: int, data: bytes) -> IPv4Address | IPv6Address:
    """The address of an ADDITIONAL_IP4/IP6_ADDRESS notify (RFC 4555 §4): 4 or
    16 octets by type, else IkeParseError."""
    if notify_type == Notify.ADDITIONAL_IP4_ADDRESS:
        if len(data) != 4:
            raise IkeParseError(f"ADDITIONAL_IP4_ADDRESS of {len(data)} octets, not 4")
        return IPv4Address(bytes(data))
    if notify_type == Notify.ADDITIONAL_IP6_ADDRESS:
        if len(data) != 16:
            raise IkeParseError(f"ADDITIONAL_IP6_ADDRESS of {len(data)} octets, not 16")
        return IPv6Address(bytes(data))
    raise IkeParseError(f"notify {notify_type} carries no additional address")


def additional_address_notify(address: IPv4Address | IPv6Address) -> NotifyPayload:
    ntype = Notify.ADDITIONAL_IP4_ADDRESS if address.version == 4 else Notify.ADDITIONAL_IP6_ADDRESS
    return NotifyPayload(ntype, address.packed)


@dataclass(frozen=True)
class NoNatsAllowed:
    """The data of a NO_NATS_ALLOWED notify (RFC 4555 §4.2.6): the addresses and
    ports the message was sent from and to, as its sender saw them."""

    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    src_port: int
    dst_port: int

    def encode(self) -> bytes:
        if self.src.version != self.dst.version:
            raise ValueError("NO_NATS_ALLOWED needs two addresses of one IP version")
        return self.src.packed + self.dst.packed + struct.pack("!HH", self.src_port,
                                                               self.dst_port)


def parse_no_nats_allowed(data: bytes) -> NoNatsAllowed:
    """NO_NATS_ALLOWED data: 12 octets (IPv4) or 36 (IPv6), else IkeParseError."""
    data = bytes(data)
    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    if len(data) == 12:
        src, dst = IPv4Address(data[:4]), IPv4Address(data[4:8])
    elif len(data) == 36:
        src, dst = IPv6Address(data[:16]), IPv6Address(data[16:32])
    else:
        raise IkeParseError(f"NO_NATS_ALLOWED of {len(data)} octets; 12 (IPv4) or 36 (IPv6) "
                            "are allowed")
    src_port, dst_port = struct.unpack_from("!HH", data, len(data) - 4)
    return NoNatsAllowed(src, dst, src_port, dst_port)


def find(payloads: Iterable[Payload], cls: type) -> list:
    return [p for p in payloads if isinstance(p, cls)]


def notifies(payloads: Iterable[Payload], ntype: int) -> list[NotifyPayload]:
    return [p for p in payloads if isinstance(p, NotifyPayload) and p.notify_type == ntype]
