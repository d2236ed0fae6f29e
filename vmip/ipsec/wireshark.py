"""Export SAs for Wireshark/tshark's ESP decryption (the ``esp_sa`` UAT).

One row per SA, in the UAT's field order: protocol, source, destination,
SPI, encryption algorithm, encryption key, authentication algorithm,
authentication key.  tshark takes a row with ``-o uat:esp_sa:ROW`` (see
:func:`tshark_args`); Wireshark reads the same rows from the ``esp_sa`` file
in its profile directory.

The algorithm names are the exact strings of Wireshark's ESP dissector;
those for 4.0 were checked against tshark 4.0.17 (an unknown name makes
tshark refuse the whole ``-o``).  Wireshark 4.0 has no ChaCha20-Poly1305
for ESP (it came in 4.2), so ChaCha20 SAs are left out of rows made for
versions before 4.2.  Wireshark 4.0 also has no ESN support: for SAs with
``esn=True`` it decrypts but marks the ICV bad (the high half of the
sequence number is in the AAD/ICV input but not on the wire).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from ipaddress import ip_address

from vmip.ipsec.sa import Address, SaParams
from vmip.log import get_logger

log = get_logger(__name__)

#: Wireshark's ESP encryption names, by vmip suite (packet-ipsec.c).
_ENCRYPTION = {
    "aes128gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
    "aes256gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
    "chacha20poly1305": "ChaCha20 with Poly1305 [RFC7634]",  # Wireshark >= 4.2
    "aes128cbc-sha256": "AES-CBC [RFC3602]",
    "aes256cbc-sha256": "AES-CBC [RFC3602]",
    "aes128cbc-sha512": "AES-CBC [RFC3602]",
    "aes256cbc-sha512": "AES-CBC [RFC3602]",
    "null-sha256": "NULL",
}
_AUTHENTICATION = {
    "aes128cbc-sha256": "HMAC-SHA-256-128 [RFC4868]",
    "aes256cbc-sha256": "HMAC-SHA-256-128 [RFC4868]",
    "aes128cbc-sha512": "HMAC-SHA-512-256 [RFC4868]",
    "aes256cbc-sha512": "HMAC-SHA-512-256 [RFC4868]",
    "null-sha256": "HMAC-SHA-256-128 [RFC4868]",
}
#: First Wireshark version that knows a suite, when it is not 4.0.
_SINCE = {"chacha20poly1305": (4, 2)}

OnWire = Mapping[int, tuple[Address | str | None, Address | str | None]]


def _address(value: Address | str | None) -> str:
    return "*" if value in (None, "", "*") else str(value)


def _protocol(sa: SaParams, addresses: Sequence[Address | str | None]) -> str:
    for value in addresses:
        if value not in (None, "", "*"):
            return "IPv6" if ip_address(str(value)).version == 6 else "IPv4"
    return "IPv6" if sa.src.version == 6 else "IPv4"


def _quote(field: str) -> str:
    # UAT strings are double-quoted; our fields never contain quotes.
    return f'"{field}"'


def wireshark_rows(sas: Iterable[SaParams], on_wire: OnWire | None = None, *,
                   version: tuple[int, int] = (4, 0)) -> list[str]:
    """One ``esp_sa`` UAT row per SA that Wireshark ``version`` can decode.

    ``on_wire`` maps an SPI to its on-wire ``(source, destination)``, which
    differ from the SA-level addresses when IRO remaps them; without an
    entry both are ``*`` (any).  Keys are exported in hex, the AEAD salt
    after the key as Wireshark expects (RFC 4106 §8.1).
    """
    rows = []
    for sa in sas:
        since = _SINCE.get(sa.suite, (4, 0))
        if sa.suite not in _ENCRYPTION or version < since:
            log.warning("sa not exportable to wireshark", spi=f"{sa.spi:#010x}", suite=sa.suite,
                        wireshark=".".join(map(str, version)))
            continue
        source, destination = (on_wire or {}).get(sa.spi, (None, None))
        auth = _AUTHENTICATION.get(sa.suite, "NULL")
        fields = (
            _protocol(sa, (source, destination)),
            _address(source),
            _address(destination),
            f"0x{sa.spi:08x}",
            _ENCRYPTION[sa.suite],
            f"0x{sa.enc_key.hex()}" if sa.enc_key else "",
            auth,
            f"0x{sa.auth_key.hex()}" if sa.auth_key else "",
        )
        rows.append(",".join(_quote(f) for f in fields))
    return rows


def tshark_args(rows: Iterable[str]) -> list[str]:
    """Command-line options that make tshark decrypt and authenticate with ``rows``."""
    args = ["-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE"]
    for row in rows:
        args += ["-o", f"uat:esp_sa:{row}"]
    return args
