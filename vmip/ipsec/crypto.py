"""ESP transforms: the cryptography of one SA, behind one small interface.

A *transform* turns the fields the ESP engine has prepared (ESP header, IV,
plaintext with its trailer, the high half of an extended sequence number)
into the ESP bytes from SPI to ICV, and back.  The engine
(:mod:`vmip.ipsec.esp`) owns sequence numbers, padding, replay and counters;
the transform owns keys and algorithms only.

Two backends implement every suite of :data:`vmip.ipsec.suites.SUITES`:

``cryptography`` (default)
    OpenSSL through the ``cryptography`` package.  Key set-up happens once
    per SA: one AEAD object, one HMAC key object that is copied per packet,
    and, for AES-CBC, one long-lived CBC context (see :class:`_ChainedCbc`).
``pycryptodome``
    Selected per SA with ``SaParams.backend``.  It builds its cipher objects
    per packet (its API has no reusable AEAD key object), which makes it
    slow, but it is an independent implementation: the tests demand
    byte-identical output from both backends.

How each suite binds the ESN (RFC 4303 §2.2.1): AEAD suites put it in the
AAD as SPI || seq-high || seq-low (RFC 4106 §5, RFC 7634 §2.1); HMAC suites
append seq-high to the ICV input after the packet, without sending it
(RFC 4303 §3.3.2 and §2.2.1).
"""

from __future__ import annotations

import hmac as _stdlib_hmac
from collections.abc import Callable
from typing import Any, Protocol

from vmip.errors import VmipError
from vmip.ipsec.suites import BACKENDS, SuiteInfo

ESP_HEADER_LEN = 8  # SPI + sequence number, RFC 4303 §2
SALT_LEN = 4  # RFC 4106 §4, RFC 7634 §2


class EspSetupError(VmipError):
    """An SA cannot be built: unknown suite or backend, wrong key size."""


class Transform(Protocol):
    """The cryptographic half of one ESP SA (one direction)."""

    suite: SuiteInfo

    def seal(self, header: bytes, iv: bytes, plaintext: bytes, esn_high: bytes) -> bytes:
        """Encrypt and authenticate.

        ``header`` is the 8-byte ESP header, ``iv`` the explicit IV that goes
        on the wire, ``plaintext`` the payload with padding, pad length and
        next header already appended, ``esn_high`` the 4 high bytes of the
        64-bit sequence number or ``b""`` when ESN is off.  Returns the ESP
        packet from SPI to ICV.
        """
        ...

    def open(self, esp: bytes | memoryview, esn_high: bytes) -> bytes | None:
        """Verify and decrypt a whole ESP packet (SPI to ICV).

        Returns the plaintext (payload, padding, pad length, next header) or
        ``None`` when the ICV does not verify.  The caller has checked the
        length (at least header, IV, one cipher block and the ICV).
        """
        ...


def _aad(header: bytes | memoryview, esn_high: bytes) -> bytes:
    # RFC 4106 §5 / RFC 7634 §2.1: SPI || [seq high] || seq low.
    if esn_high:
        return bytes(header[:4]) + esn_high + bytes(header[4:8])
    return bytes(header[:8])


# ---------------------------------------------------------------------------
# cryptography (OpenSSL) backend


class _CryptographyAead:
    """AES-GCM-16 or ChaCha20-Poly1305 with one reusable AEAD object."""

    def __init__(self, suite: SuiteInfo, enc_key: bytes) -> None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

        self.suite = suite
        key, self._salt = enc_key[:-SALT_LEN], enc_key[-SALT_LEN:]
        cls = ChaCha20Poly1305 if suite.name.startswith("chacha") else AESGCM
        self._aead = cls(key)
        self._invalid_tag = InvalidTag
        self._data_at = ESP_HEADER_LEN + suite.iv_len

    def seal(self, header: bytes, iv: bytes, plaintext: bytes, esn_high: bytes) -> bytes:
        aad = header[:4] + esn_high + header[4:] if esn_high else header
        return header + iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, esp: bytes | memoryview, esn_high: bytes) -> bytes | None:
        data_at = self._data_at
        header = bytes(esp[:ESP_HEADER_LEN])
        aad = header[:4] + esn_high + header[4:] if esn_high else header
        try:
            return self._aead.decrypt(self._salt + esp[ESP_HEADER_LEN:data_at], esp[data_at:], aad)
        except self._invalid_tag:
            return None


class _ChainedCbc:
    """AES-CBC with one long-lived OpenSSL context per SA and direction.

    Creating a CBC context costs about 8 µs, several times the encryption of
    a 1400-byte packet.  CBC's only state between calls is the last
    ciphertext block, so one context can serve every packet: encrypting
    ``P1 xor IV xor last`` as the first block through the running chain gives
    ``E(P1 xor IV)``, which is what a fresh context started with ``IV``
    would produce (RFC 3602 §2 chaining); decryption undoes the same
    substitution on its first output block.
    """

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        zero_iv = bytes(16)
        self._encryptor = Cipher(algorithms.AES(key), modes.CBC(zero_iv)).encryptor()
        self._decryptor = Cipher(algorithms.AES(key), modes.CBC(zero_iv)).decryptor()
        self._enc_chain = 0  # last ciphertext block the encryptor produced, as an int
        self._dec_chain = 0  # last ciphertext block the decryptor consumed, as an int

    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        first = int.from_bytes(plaintext[:16], "big") ^ int.from_bytes(iv, "big") ^ self._enc_chain
        ciphertext = self._encryptor.update(first.to_bytes(16, "big") + plaintext[16:])
        self._enc_chain = int.from_bytes(ciphertext[-16:], "big")
        return ciphertext

    def decrypt(self, iv: bytes | memoryview, ciphertext: bytes | memoryview) -> bytes:
        out = self._decryptor.update(ciphertext)
        first = int.from_bytes(out[:16], "big") ^ self._dec_chain ^ int.from_bytes(iv, "big")
        self._dec_chain = int.from_bytes(ciphertext[-16:], "big")
        return first.to_bytes(16, "big") + out[16:]


class _CryptographyMac:
    """HMAC with the key schedule done once: the keyed object is copied per packet."""

    def __init__(self, key: bytes, hash_name: str) -> None:
        from cryptography.hazmat.primitives import hashes, hmac

        self._keyed = hmac.HMAC(key, hashes.SHA512() if hash_name == "sha512" else hashes.SHA256())

    def tag(self, data: bytes | memoryview, extra: bytes = b"") -> bytes:
        mac = self._keyed.copy()
        mac.update(data)
        if extra:
            mac.update(extra)
        return mac.finalize()


class _CryptographyCbcHmac:
    """AES-CBC (or NULL) + HMAC-SHA2 truncated, RFC 3602 / RFC 4868 / RFC 2410."""

    def __init__(self, suite: SuiteInfo, enc_key: bytes, auth_key: bytes) -> None:
        self.suite = suite
        self._mac = _CryptographyMac(auth_key, _hash_name(suite))
        self._cbc = _ChainedCbc(enc_key) if suite.enc_key_len else None
        self._icv_len = suite.icv_len
        self._data_at = ESP_HEADER_LEN + suite.iv_len

    def seal(self, header: bytes, iv: bytes, plaintext: bytes, esn_high: bytes) -> bytes:
        ciphertext = self._cbc.encrypt(iv, plaintext) if self._cbc else plaintext
        body = header + iv + ciphertext
        # RFC 4303 §2.2.1: the ESN high half is implicit, appended after the packet.
        return body + self._mac.tag(body, esn_high)[: self._icv_len]

    def open(self, esp: bytes | memoryview, esn_high: bytes) -> bytes | None:
        end = len(esp) - self._icv_len
        # Encrypt-then-MAC: verify before touching the ciphertext (RFC 4303 §3.4.4).
        icv = self._mac.tag(esp[:end], esn_high)[: self._icv_len]
        if not _stdlib_hmac.compare_digest(icv, esp[end:]):
            return None
        if self._cbc is None:
            return bytes(esp[self._data_at:end])
        if (end - self._data_at) % 16:
            return None  # a partial block would desynchronise the running CBC chain
        return self._cbc.decrypt(esp[ESP_HEADER_LEN:self._data_at], esp[self._data_at:end])


# ---------------------------------------------------------------------------
# pycryptodome backend


class _PycryptodomeAead:
    def __init__(self, suite: SuiteInfo, enc_key: bytes) -> None:
        from Crypto.Cipher import AES, ChaCha20_Poly1305

        self.suite = suite
        self._key, self._salt = enc_key[:-SALT_LEN], enc_key[-SALT_LEN:]
        self._new: Callable[[bytes], Any]
        if suite.name.startswith("chacha"):
            self._new = lambda nonce: ChaCha20_Poly1305.new(key=self._key, nonce=nonce)
        else:
            self._new = lambda nonce: AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=16)
        self._data_at = ESP_HEADER_LEN + suite.iv_len
        self._icv_len = suite.icv_len

    def seal(self, header: bytes, iv: bytes, plaintext: bytes, esn_high: bytes) -> bytes:
        cipher = self._new(self._salt + iv)
        cipher.update(_aad(header, esn_high))
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        return header + iv + ciphertext + tag

    def open(self, esp: bytes | memoryview, esn_high: bytes) -> bytes | None:
        end = len(esp) - self._icv_len
        cipher = self._new(self._salt + bytes(esp[ESP_HEADER_LEN:self._data_at]))
        cipher.update(_aad(esp, esn_high))
        try:
            return cipher.decrypt_and_verify(esp[self._data_at:end], esp[end:])
        except ValueError:  # pycryptodome's "MAC check failed"
            return None


class _PycryptodomeMac:
    def __init__(self, key: bytes, hash_name: str) -> None:
        from Crypto.Hash import HMAC, SHA256, SHA512

        self._keyed = HMAC.new(key, digestmod=SHA512 if hash_name == "sha512" else SHA256)

    def tag(self, data: bytes | memoryview, extra: bytes = b"") -> bytes:
        mac = self._keyed.copy()
        mac.update(data)
        if extra:
            mac.update(extra)
        return mac.digest()


class _PycryptodomeCbcHmac:
    def __init__(self, suite: SuiteInfo, enc_key: bytes, auth_key: bytes) -> None:
        from Crypto.Cipher import AES

        self.suite = suite
        self._mac = _PycryptodomeMac(auth_key, _hash_name(suite))
        self._key = enc_key
        self._aes = AES
        self._icv_len = suite.icv_len
        self._data_at = ESP_HEADER_LEN + suite.iv_len

    def seal(self, header: bytes, iv: bytes, plaintext: bytes, esn_high: bytes) -> bytes:
        if self._key:
            plaintext = self._aes.new(self._key, self._aes.MODE_CBC, iv=iv).encrypt(plaintext)
        body = header + iv + plaintext
        return body + self._mac.tag(body, esn_high)[: self._icv_len]

    def open(self, esp: bytes | memoryview, esn_high: bytes) -> bytes | None:
        end = len(esp) - self._icv_len
        icv = self._mac.tag(esp[:end], esn_high)[: self._icv_len]
        if not _stdlib_hmac.compare_digest(icv, esp[end:]):
            return None
        ciphertext = esp[self._data_at:end]
        if not self._key:
            return bytes(ciphertext)
        if len(ciphertext) % 16:
            return None
        iv = bytes(esp[ESP_HEADER_LEN:self._data_at])
        return self._aes.new(self._key, self._aes.MODE_CBC, iv=iv).decrypt(ciphertext)


# ---------------------------------------------------------------------------


def _hash_name(suite: SuiteInfo) -> str:
    # RFC 4868: HMAC-SHA2-512-256 has a 32-byte ICV, HMAC-SHA2-256-128 a 16-byte one.
    return "sha512" if suite.icv_len == 32 else "sha256"


def hmac_tag(backend: str, hash_name: str, key: bytes, data: bytes) -> bytes:
    """Full HMAC-SHA-256/512 of ``data`` with the MAC the ESP transforms use.

    For known-answer tests of the backends (RFC 4231); ESP itself truncates
    the tag to the suite's ICV length (RFC 4868 §2.3).
    """
    if hash_name not in ("sha256", "sha512"):
        raise EspSetupError(f"unsupported hash {hash_name!r}")
    if backend == "cryptography":
        return _CryptographyMac(key, hash_name).tag(data)
    if backend == "pycryptodome":
        return _PycryptodomeMac(key, hash_name).tag(data)
    raise EspSetupError(f"unknown crypto backend {backend!r}; known: {', '.join(BACKENDS)}")


def make_transform(suite: SuiteInfo, enc_key: bytes, auth_key: bytes = b"",
                   backend: str = "cryptography") -> Transform:
    """Build the transform of one SA; :class:`EspSetupError` if it cannot be built."""
    if backend not in BACKENDS:
        raise EspSetupError(f"unknown crypto backend {backend!r}; known: {', '.join(BACKENDS)}")
    if len(enc_key) != suite.enc_key_len:
        raise EspSetupError(
            f"suite {suite.name} needs a {suite.enc_key_len}-byte encryption key"
            f"{' (salt included)' if suite.aead else ''}, got {len(enc_key)} bytes")
    if len(auth_key) != suite.auth_key_len:
        raise EspSetupError(
            f"suite {suite.name} needs a {suite.auth_key_len}-byte authentication key,"
            f" got {len(auth_key)} bytes")
    enc_key, auth_key = bytes(enc_key), bytes(auth_key)
    if backend == "cryptography":
        if suite.aead:
            return _CryptographyAead(suite, enc_key)
        return _CryptographyCbcHmac(suite, enc_key, auth_key)
    if suite.aead:
        return _PycryptodomeAead(suite, enc_key)
    return _PycryptodomeCbcHmac(suite, enc_key, auth_key)
