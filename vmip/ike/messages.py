"""IKE message framing: header (RFC 7296 §3.1), payload chain, SK payload (§3.14).

:func:`encode_message` builds a message, encrypting the payloads into an SK
payload when given an :class:`~vmip.ike.crypto.SkCipher`.  :func:`decode_message`
parses the header and the outer chain; :func:`decrypt_message` verifies and
opens the SK payload.  Malformed input raises :class:`IkeParseError` (or its
subclasses) and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from vmip.ike.constants import ExchangeType, Flags, PayloadType
from vmip.ike.crypto import SkCipher
from vmip.ike.payloads import EncryptedPayload, IkeParseError, Payload, decode_chain, encode_chain

_HEADER = struct.Struct("!8s8sBBBBII")
HEADER_LEN = _HEADER.size  # 28
IKE_VERSION = 0x20  # major 2, minor 0


@dataclass(frozen=True)
class IkeMessage:
    spi_i: bytes
    spi_r: bytes
    exchange: int
    message_id: int
    initiator: bool         # the I flag: sent by the original initiator
    response: bool          # the R flag
    payloads: tuple[Payload, ...] = ()
    #: True when ``payloads`` came from (or go into) an SK payload.
    encrypted: bool = False
    #: For a received message: the raw bytes (AUTH signs IKE_SA_INIT ones).
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def flags(self) -> int:
        return (Flags.INITIATOR if self.initiator else 0) | (Flags.RESPONSE if self.response else 0)

    def with_payloads(self, payloads: tuple[Payload, ...]) -> IkeMessage:
        return replace(self, payloads=payloads)


def _header(msg: IkeMessage, next_payload: int, length: int) -> bytes:
    return _HEADER.pack(msg.spi_i, msg.spi_r, next_payload, IKE_VERSION, msg.exchange,
                        msg.flags, msg.message_id, length)


def encode_message(msg: IkeMessage, cipher: SkCipher | None = None) -> bytes:
    """Serialise *msg*; with *cipher*, all payloads go into one SK payload."""
    if len(msg.spi_i) != 8 or len(msg.spi_r) != 8:
        raise ValueError("IKE SPIs are 8 octets")
    if cipher is None:
        first, body = encode_chain(msg.payloads)
        return _header(msg, first, HEADER_LEN + len(body)) + body
    first, plain = encode_chain(msg.payloads)
    sealed_len = cipher.sealed_length(len(plain))
    total = HEADER_LEN + 4 + sealed_len
    aad = _header(msg, PayloadType.SK, total) + struct.pack("!BBH", first, 0, 4 + sealed_len)
    sealed = cipher.seal(aad, plain)
    assert len(sealed) == sealed_len
    return aad + sealed


def peek_header(data: bytes) -> tuple[bytes, bytes, int, int, int]:
    """(SPIi, SPIr, exchange, flags, message id) without parsing payloads."""
    if len(data) < HEADER_LEN:
        raise IkeParseError("shorter than an IKE header")
    spi_i, spi_r, _, _version, exchange, flags, mid, _ = _HEADER.unpack_from(data)
    return spi_i, spi_r, exchange, flags, mid


def decode_message(data: bytes) -> IkeMessage:
    """Parse the header and the unencrypted chain (an SK payload stays raw)."""
    data = bytes(data)
    if len(data) < HEADER_LEN:
        raise IkeParseError("shorter than an IKE header")
    spi_i, spi_r, first, version, exchange, flags, mid, length = _HEADER.unpack_from(data)
    if version >> 4 != 2:
        raise IkeParseError(f"IKE major version {version >> 4}")
    if length != len(data):
        raise IkeParseError(f"header length {length} but datagram of {len(data)} octets")
    if spi_i == bytes(8):
        raise IkeParseError("zero initiator SPI")
    payloads = decode_chain(first, data[HEADER_LEN:], HEADER_LEN)
    return IkeMessage(spi_i, spi_r, exchange, mid, bool(flags & Flags.INITIATOR),
                      bool(flags & Flags.RESPONSE), tuple(payloads), False, data)


def encrypted_part(msg: IkeMessage) -> EncryptedPayload | None:
    if msg.payloads and isinstance(msg.payloads[-1], EncryptedPayload):
        return msg.payloads[-1]
    return None


def decrypt_message(msg: IkeMessage, cipher: SkCipher) -> IkeMessage:
    """Verify and open the SK payload; the result lists the inner payloads."""
    sk = encrypted_part(msg)
    if sk is None:
        raise IkeParseError("message has no SK payload")
    # The AAD / MAC input is everything up to the IV: IKE header, any
    # unencrypted payloads and the SK generic header (RFC 5282 §5.1, §3.14).
    aad_end = sk.offset + 4
    plain = cipher.open(msg.raw[:aad_end], msg.raw[aad_end:])
    inner = decode_chain(sk.first_inner, plain, allow_sk=False)
    return replace(msg, payloads=tuple(msg.payloads[:-1]) + tuple(inner), encrypted=True)


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return str(exchange)
