"""ESP cipher suites vmip knows, by config name.

This table is the contract shared by the config validator, static keying,
IKEv2 and the ESP engine: a suite name and the sizes of its key material.
``enc_key_len`` includes the 4-byte salt of AEAD suites (RFC 4106 §8.1,
RFC 7634 §2); ``auth_key_len`` is 0 for AEAD suites.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteInfo:
    name: str
    aead: bool
    enc_key_len: int      # bytes, salt included for AEAD
    auth_key_len: int     # bytes, 0 for AEAD
    icv_len: int          # bytes of ICV on the wire
    iv_len: int           # bytes of IV on the wire
    block: int            # padding alignment of the ciphertext (RFC 4303 §2.4)
    description: str


SUITES: dict[str, SuiteInfo] = {
    s.name: s
    for s in (
        SuiteInfo("aes128gcm16", True, 16 + 4, 0, 16, 8, 4, "AES-128-GCM, 16-byte ICV (RFC 4106)"),
        SuiteInfo("aes256gcm16", True, 32 + 4, 0, 16, 8, 4, "AES-256-GCM, 16-byte ICV (RFC 4106)"),
        SuiteInfo("chacha20poly1305", True, 32 + 4, 0, 16, 8, 4, "ChaCha20-Poly1305 (RFC 7634)"),
        SuiteInfo("aes128cbc-sha256", False, 16, 32, 16, 16, 16,
                  "AES-128-CBC (RFC 3602) + HMAC-SHA2-256-128 (RFC 4868)"),
        SuiteInfo("aes256cbc-sha256", False, 32, 32, 16, 16, 16,
                  "AES-256-CBC (RFC 3602) + HMAC-SHA2-256-128 (RFC 4868)"),
        SuiteInfo("aes128cbc-sha512", False, 16, 64, 32, 16, 16,
                  "AES-128-CBC (RFC 3602) + HMAC-SHA2-512-256 (RFC 4868)"),
        SuiteInfo("aes256cbc-sha512", False, 32, 64, 32, 16, 16,
                  "AES-256-CBC (RFC 3602) + HMAC-SHA2-512-256 (RFC 4868)"),
        SuiteInfo("null-sha256", False, 0, 32, 16, 0, 4,
                  "NULL encryption (RFC 2410) + HMAC-SHA2-256-128 (RFC 4868, RFC 4835)"),
    )
}

BACKENDS = ("cryptography", "pycryptodome")


def suite(name: str) -> SuiteInfo:
    """Look a suite up by name; ``KeyError`` names the known ones."""
    try:
        return SUITES[name]
    except KeyError:
        raise KeyError(f"unknown ESP suite {name!r}; known: {', '.join(SUITES)}") from None
