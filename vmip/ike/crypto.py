"""IKEv2 cryptography (RFC 7296 §2.13-§2.17, RFC 7427, RFC 5282), on `cryptography`.

Key material is handled as :class:`vmip.log.Secret` where it is stored, so it
never prints.  Errors about peer-supplied values (a bad DH public value, a
signature or certificate that does not verify) raise :class:`IkeCryptoError`.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from vmip.errors import VmipError
from vmip.ike.constants import DhGroupId, Encr, HashAlg, IdType, Integ, Prf
from vmip.log import Secret

Rng = Callable[[int], bytes]


#: The private keys AUTH method 14 signs with (RFC 7427): ECDSA or RSA.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class IkeCryptoError(VmipError):
    """A peer's DH value, signature or certificate was refused."""


# --------------------------------------------------------------------- PRF
_PRF_HASH: dict[Prf, Callable[[], hashes.HashAlgorithm]] = {
    Prf.HMAC_SHA2_256: hashes.SHA256, Prf.HMAC_SHA2_384: hashes.SHA384,
    Prf.HMAC_SHA2_512: hashes.SHA512}


def prf(alg: int, key: bytes, data: bytes) -> bytes:
    """The negotiated PRF: HMAC-SHA2 with the full output (RFC 4868 §2.2)."""
    h = chmac.HMAC(bytes(key), _PRF_HASH[Prf(alg)]())
    h.update(data)
    return h.finalize()


def prf_length(alg: int) -> int:
    return _PRF_HASH[Prf(alg)]().digest_size


def prf_plus(alg: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (§2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        if counter > 255:
            raise IkeCryptoError("prf+ cannot produce that much keying material")
        block = prf(alg, key, block + seed + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


# ------------------------------------------------------- encryption for SK
@dataclass(frozen=True)
class EncrInfo:
    aead: bool
    key_len: int     # bytes of the cipher key (without salt)
    salt_len: int
    iv_len: int
    icv_len: int     # AEAD tag
    block: int


def encr_info(encr: int, key_bits: int | None) -> EncrInfo:
    if encr == Encr.AES_GCM_16:
        if key_bits not in (128, 192, 256):
            raise IkeCryptoError(f"AES-GCM key length {key_bits}")
        return EncrInfo(True, key_bits // 8, 4, 8, 16, 1)  # RFC 5282 §7.1: 4-byte salt
    if encr == Encr.CHACHA20_POLY1305:
        return EncrInfo(True, 32, 4, 8, 16, 1)             # RFC 7634 §3
    if encr == Encr.AES_CBC:
        if key_bits not in (128, 192, 256):
            raise IkeCryptoError(f"AES-CBC key length {key_bits}")
        return EncrInfo(False, key_bits // 8, 0, 16, 0, 16)
    raise IkeCryptoError(f"unsupported encryption transform {encr}")


_INTEG = {Integ.HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),
          Integ.HMAC_SHA2_384_192: (hashes.SHA384, 48, 24),
          Integ.HMAC_SHA2_512_256: (hashes.SHA512, 64, 32)}


def integ_key_len(integ: int) -> int:
    return 0 if integ == Integ.NONE else _INTEG[Integ(integ)][1]


def integ_icv_len(integ: int) -> int:
    return 0 if integ == Integ.NONE else _INTEG[Integ(integ)][2]


class SkCipher:
    """Protects SK payloads in one direction (§3.14, RFC 5282 for AEAD)."""

    def __init__(self, encr: int, key_bits: int | None, integ: int, enc_key: bytes,
                 integ_key: bytes, rng: Rng = os.urandom):
        self.info = encr_info(encr, key_bits)
        self.encr = encr
        self.integ = integ
        self._rng = rng
        info = self.info
        key, self._salt = bytes(enc_key[:info.key_len]), bytes(enc_key[info.key_len:])
        if len(enc_key) != info.key_len + info.salt_len:
            raise IkeCryptoError("SK_e has the wrong length")
        if info.aead:
            self._aead = AESGCM(key) if encr == Encr.AES_GCM_16 else ChaCha20Poly1305(key)
            self.icv_len = info.icv_len
        else:
            self._key = key
            self._integ_key = bytes(integ_key)
            self.icv_len = integ_icv_len(integ)
            if self.icv_len == 0:
                raise IkeCryptoError("a non-AEAD cipher needs an integrity algorithm")

    def __repr__(self) -> str:
        return f"SkCipher(encr={self.encr}, integ={self.integ})"

    def sealed_length(self, plain_len: int) -> int:
        """Length of IV | ciphertext | ICV for *plain_len* octets of payloads."""
        padded = plain_len + 1
        block = self.info.block
        padded += (-padded) % block
        return self.info.iv_len + padded + self.icv_len

    def seal(self, aad: bytes, plain: bytes) -> bytes:
        """*aad* is the IKE header and SK generic header (lengths already final)."""
        block = self.info.block
        pad = (-(len(plain) + 1)) % block
        padded = plain + bytes(pad) + bytes([pad])
        iv = self._rng(self.info.iv_len)
        if self.info.aead:
            return iv + self._aead.encrypt(self._salt + iv, padded, aad)
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        return iv + ct + self._mac(aad + iv + ct)

    def _mac(self, data: bytes) -> bytes:
        halg, _, icv = _INTEG[Integ(self.integ)]
        h = chmac.HMAC(self._integ_key, halg())
        h.update(data)
        return h.finalize()[:icv]

    def open(self, aad: bytes, sealed: bytes) -> bytes:
        """Verify and decrypt; raises ``IkeIntegrityError`` (a parse error)."""
        from vmip.ike.payloads import IkeIntegrityError
        info = self.info
        if len(sealed) < info.iv_len + self.icv_len + 1:
            raise IkeIntegrityError("SK payload too short")
        iv = sealed[:info.iv_len]
        if info.aead:
            try:
                padded = self._aead.decrypt(self._salt + iv, sealed[info.iv_len:], aad)
            except InvalidTag:
                raise IkeIntegrityError("SK payload failed authentication") from None
        else:
            ct, icv = sealed[info.iv_len:-self.icv_len], sealed[-self.icv_len:]
            if not _consteq(self._mac(aad + sealed[:-self.icv_len]), icv):
                raise IkeIntegrityError("SK payload ICV mismatch")
            if not ct or len(ct) % 16:
                raise IkeIntegrityError("SK ciphertext is not whole blocks")
            dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
            padded = dec.update(ct) + dec.finalize()
        if not padded or padded[-1] + 1 > len(padded):
            raise IkeIntegrityError("SK padding length runs past the plaintext")
        return padded[:len(padded) - 1 - padded[-1]]


def _consteq(a: bytes, b: bytes) -> bool:
    import hmac as _hmac
    return _hmac.compare_digest(a, b)


# ----------------------------------------------------------- key schedule
@dataclass(frozen=True)
class IkeKeys:
    """SK_d, SK_ai/ar, SK_ei/er, SK_pi/pr (§2.14)."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def skeyseed(prf_alg: int, nonce_i: bytes, nonce_r: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (§2.14)."""
    return prf(prf_alg, nonce_i + nonce_r, shared)


def rekey_skeyseed(prf_alg: int, old_sk_d: bytes, shared: bytes, nonce_i: bytes,
                   nonce_r: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (§2.18)."""
    return prf(prf_alg, old_sk_d, shared + nonce_i + nonce_r)


def derive_ike_keys(prf_alg: int, seed: bytes, nonce_i: bytes, nonce_r: bytes,
                    spi_i: bytes, spi_r: bytes, enc_key_len: int, integ_len: int) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    plen = prf_length(prf_alg)
    sizes = [plen, integ_len, integ_len, enc_key_len, enc_key_len, plen, plen]
    stream = prf_plus(prf_alg, seed, nonce_i + nonce_r + spi_i + spi_r, sum(sizes))
    parts = []
    pos = 0
    for size in sizes:
        parts.append(Secret(stream[pos:pos + size]))
        pos += size
    return IkeKeys(*parts)


def child_keymat(prf_alg: int, sk_d: bytes, nonce_i: bytes, nonce_r: bytes, length: int,
                 shared: bytes | None = None) -> bytes:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (§2.17)."""
    return prf_plus(prf_alg, sk_d, (shared or b"") + nonce_i + nonce_r, length)


# ------------------------------------------------------------------ groups
# RFC 3526 §3: the 2048-bit MODP group, generator 2.
MODP2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)


class DhKey:
    """One ephemeral (EC)DH key pair of a group."""

    def __init__(self, group: int, rng: Rng = os.urandom):
        self.group = DhGroupId(group)
        if self.group == DhGroupId.MODP_2048:
            # A 256-bit exponent: twice the 128-bit strength of the group (RFC 3526 §8).
            self._x = int.from_bytes(rng(32), "big") | (1 << 255)
            self.public = pow(2, self._x, MODP2048_P).to_bytes(256, "big")
        elif self.group == DhGroupId.CURVE25519:
            self._x25519 = x25519.X25519PrivateKey.generate()
            self.public = self._x25519.public_key().public_bytes_raw()
        elif self.group in (DhGroupId.ECP_256, DhGroupId.ECP_384):
            self._curve = ec.SECP256R1() if self.group == DhGroupId.ECP_256 else ec.SECP384R1()
            self._ec = ec.generate_private_key(self._curve)
            point = self._ec.public_key().public_bytes(serialization.Encoding.X962,
                                                         serialization.PublicFormat.UncompressedPoint)
            self.public = point[1:]  # RFC 5903 §7: x | y, no 0x04 prefix
        else:  # pragma: no cover - DhGroupId() already refused
            raise IkeCryptoError(f"unsupported DH group {group}")

    def __repr__(self) -> str:
        return f"DhKey(group={int(self.group)})"

    def shared_secret(self, peer: bytes) -> Secret:
        """g^ir; peer values are checked as RFC 6989 asks."""
        if self.group == DhGroupId.MODP_2048:
            if len(peer) != 256:
                raise IkeCryptoError("MODP-2048 public value is not 256 octets")
            y = int.from_bytes(peer, "big")
            # RFC 6989 §2.1: 1 < y < p-1 (and the group is a safe prime, so no
            # subgroup test is needed beyond that).
            if not 1 < y < MODP2048_P - 1:
                raise IkeCryptoError("MODP public value out of range")
            return Secret(pow(y, self._x, MODP2048_P).to_bytes(256, "big"))
        if self.group == DhGroupId.CURVE25519:
            if len(peer) != 32:
                raise IkeCryptoError("Curve25519 public value is not 32 octets")
            try:
                shared = self._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            except ValueError as exc:  # all-zero result: RFC 8031 §2.3
                raise IkeCryptoError("Curve25519 shared secret is zero") from exc
            return Secret(shared)
        size = 32 if self.group == DhGroupId.ECP_256 else 48
        if len(peer) != 2 * size:
            raise IkeCryptoError(f"ECP public value is not {2 * size} octets")
        try:
            # RFC 6989 §2.3: the point must be on the curve; from_encoded_point checks.
            pub = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer)
        except ValueError as exc:
            raise IkeCryptoError("ECP public value is not a point on the curve") from exc
        return Secret(self._ec.exchange(ec.ECDH(), pub))  # x coordinate (RFC 5903 §7)


SUPPORTED_GROUPS = (DhGroupId.MODP_2048, DhGroupId.ECP_256, DhGroupId.ECP_384, DhGroupId.CURVE25519)


# -------------------------------------------------------------------- AUTH
KEY_PAD = b"Key Pad for IKEv2"


def signed_octets(real_message: bytes, peer_nonce: bytes, prf_alg: int, sk_p: bytes,
                  id_body: bytes) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (§2.15); *id_body* is
    the ID payload without its generic header."""
    return real_message + peer_nonce + prf(prf_alg, sk_p, id_body)


def psk_auth(prf_alg: int, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (§2.15)."""
    return prf(prf_alg, prf(prf_alg, psk, KEY_PAD), octets)


# RFC 7427 AlgorithmIdentifier DER blobs (appendix A), built from the OIDs.
def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    lb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(lb)]) + lb + content


def _oid(dotted: str) -> bytes:
    parts = [int(x) for x in dotted.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, body)


_NULL = b"\x05\x00"
_SHA256_ALG = _der(0x30, _oid("2.16.840.1.101.3.4.2.1") + _NULL)
ALG_ECDSA_SHA256 = _der(0x30, _oid("1.2.840.10045.4.3.2"))
ALG_ECDSA_SHA384 = _der(0x30, _oid("1.2.840.10045.4.3.3"))
ALG_ECDSA_SHA512 = _der(0x30, _oid("1.2.840.10045.4.3.4"))
ALG_RSA_SHA256 = _der(0x30, _oid("1.2.840.113549.1.1.11") + _NULL)
ALG_RSA_PSS_SHA256 = _der(0x30, _oid("1.2.840.113549.1.1.10") + _der(0x30,
    _der(0xA0, _SHA256_ALG)
    + _der(0xA1, _der(0x30, _oid("1.2.840.113549.1.1.8") + _SHA256_ALG))
    + _der(0xA2, _der(0x02, b"\x20"))))

_SIG_ALGS: dict[bytes, tuple[str, type[hashes.HashAlgorithm]]] = {
    ALG_ECDSA_SHA256: ("ecdsa", hashes.SHA256), ALG_ECDSA_SHA384: ("ecdsa", hashes.SHA384),
    ALG_ECDSA_SHA512: ("ecdsa", hashes.SHA512), ALG_RSA_SHA256: ("rsa", hashes.SHA256),
    ALG_RSA_PSS_SHA256: ("rsa-pss", hashes.SHA256),
}
_HASH_IDS = {hashes.SHA256: HashAlg.SHA2_256, hashes.SHA384: HashAlg.SHA2_384,
             hashes.SHA512: HashAlg.SHA2_512}


def signature_hash_algorithms_data() -> bytes:
    """The SIGNATURE_HASH_ALGORITHMS notify data we send (RFC 7427 §4)."""
    return struct.pack("!HHH", HashAlg.SHA2_256, HashAlg.SHA2_384, HashAlg.SHA2_512)


def sign_auth(key: SigningKey, octets: bytes, peer_hashes: Sequence[int] = ()) -> bytes:
    """AUTH data for method 14 (RFC 7427 §3): length | AlgorithmIdentifier | signature."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # Match the hash to the curve size (RFC 5656 §6.2.1 convention).
        alg = ALG_ECDSA_SHA384 if key.curve.key_size >= 384 else ALG_ECDSA_SHA256
        if key.curve.key_size > 384:
            alg = ALG_ECDSA_SHA512
        _, h = _SIG_ALGS[alg]
        sig = key.sign(octets, ec.ECDSA(h()))
    elif isinstance(key, rsa.RSAPrivateKey):
        alg = ALG_RSA_PSS_SHA256
        sig = key.sign(octets, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    else:
        raise IkeCryptoError(f"unsupported private key type {type(key).__name__}")
    return bytes([len(alg)]) + alg + sig


def verify_auth(public_key: object, auth_data: bytes, octets: bytes) -> None:
    """Check an RFC 7427 AUTH; raises :class:`IkeCryptoError`."""
    if not auth_data or len(auth_data) < 1 + auth_data[0]:
        raise IkeCryptoError("AUTH data too short for its AlgorithmIdentifier")
    alg, sig = auth_data[1:1 + auth_data[0]], auth_data[1 + auth_data[0]:]
    try:
        kind, h = _SIG_ALGS[alg]
    except KeyError:
        raise IkeCryptoError("unsupported signature AlgorithmIdentifier") from None
    try:
        if kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, octets, ec.ECDSA(h()))
        elif kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(sig, octets, padding.PKCS1v15(), h())
        elif kind == "rsa-pss" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(sig, octets, padding.PSS(padding.MGF1(h()), 32), h())
        else:
            raise IkeCryptoError(f"signature algorithm {kind} does not fit the key")
    except InvalidSignature:
        raise IkeCryptoError("AUTH signature does not verify") from None


# ------------------------------------------------------------------ X.509
def load_certificates(pem_or_der: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in pem_or_der:
        return x509.load_pem_x509_certificates(pem_or_der)
    return [x509.load_der_x509_certificate(pem_or_der)]


def load_private_key(data: bytes):
    if b"-----BEGIN" in data:
        return serialization.load_pem_private_key(data, None)
    return serialization.load_der_private_key(data, None)


#: CERT payloads we look at in one IKE_AUTH (leaf included, after removing
#: duplicates).  RFC 7296 §3.6 lets a peer send its chain; real chains are
#: two or three certificates, and every extra one is work an unauthenticated
#: peer makes us do before its AUTH is checked.
MAX_PEER_CERTIFICATES = 5


def dedupe_certificates(ders: Sequence[bytes]) -> list[bytes]:
    """*ders* in order without repeats (the same DER sent twice is one certificate)."""
    return list(dict.fromkeys(bytes(d) for d in ders))


def _issuer_candidates(cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> list:
    return [c for c in pool if c.subject == cert.issuer]


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False   # a wrong key, or one we cannot check, proves nothing
    return True


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _linear_path(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                 cas: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The intermediates from *leaf* up to a trust anchor, built greedily.

    Path building with backtracking is exponential in the number of
    certificates that can issue each other (a handful of self-issued CA
    certificates under one key, RFC 5280 §6.1); an unauthenticated peer
    chooses them.  Here each step takes the first certificate that names and
    verifies the current one, never uses a certificate twice and never
    repeats a (subject, key) pair, so the work is at most len(intermediates)
    steps of len(intermediates) + len(cas) signature checks.
    """
    path: list[x509.Certificate] = []
    seen = {(leaf.subject.public_bytes(), _spki(leaf))}
    unused = list(intermediates)
    current = leaf
    for _ in range(len(intermediates) + 1):
        if any(_signed_by(current, ca) for ca in _issuer_candidates(current, cas)):
            return path
        step = None
        for candidate in _issuer_candidates(current, unused):
            key = (candidate.subject.public_bytes(), _spki(candidate))
            if key in seen:
                continue
            if _signed_by(current, candidate):
                step = candidate
                seen.add(key)
                break
        if step is None:
            break
        unused.remove(step)
        path.append(step)
        current = step
    raise IkeCryptoError("certificate chain does not verify: no path to a configured CA")


def verify_chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                 cas: Sequence[x509.Certificate], now: float) -> None:
    """Validate *leaf* up to one of *cas* (RFC 5280 path validation by
    ``cryptography.x509.verification``).  IKE certificates need no particular
    EKU, so the end-entity extension policy is relaxed; CAs keep the WebPKI
    rules (basicConstraints cA, keyUsage keyCertSign).

    The peer's certificates are bounded (:data:`MAX_PEER_CERTIFICATES`) and
    the path is found linearly first (:func:`_linear_path`); the verifier then
    sees only that path, with its depth capped, so it has nothing to search.
    """
    from cryptography.x509 import verification as v
    if not cas:
        raise IkeCryptoError("no CA certificate configured to check the peer's certificate")
    if 1 + len(intermediates) > MAX_PEER_CERTIFICATES:
        raise IkeCryptoError(f"{1 + len(intermediates)} certificates; at most "
                             f"{MAX_PEER_CERTIFICATES} are accepted")
    path = _linear_path(leaf, intermediates, cas)
    builder = (v.PolicyBuilder().store(v.Store(list(cas)))
               .time(datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
               .max_chain_depth(len(path) + 1)
               .extension_policies(ca_policy=v.ExtensionPolicy.webpki_defaults_ca(),
                                   ee_policy=v.ExtensionPolicy.permit_all()))
    try:
        builder.build_client_verifier().verify(leaf, path)
    except v.VerificationError as exc:
        raise IkeCryptoError(f"certificate chain does not verify: {exc}") from None


def identity_matches_certificate(id_type: int, id_data: bytes, cert: x509.Certificate) -> bool:
    """Is the IKE identity one the certificate vouches for (§3.5, RFC 4945 §3.1)?"""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if id_type == IdType.DER_ASN1_DN:
        return cert.subject.public_bytes() == id_data
    if san is None:
        return False
    if id_type == IdType.FQDN:
        want = id_data.decode("ascii", "replace").lower()
        return any(n.lower() == want for n in san.get_values_for_type(x509.DNSName))
    if id_type == IdType.RFC822_ADDR:
        want = id_data.decode("ascii", "replace").lower()
        return any(n.lower() == want for n in san.get_values_for_type(x509.RFC822Name))
    if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        try:
            want_ip = ip_address(id_data)
        except ValueError:
            return False
        return want_ip in san.get_values_for_type(x509.IPAddress)
    return False


def dn_to_der(text: str) -> bytes:
    """An RFC 4514 DN string ("CN=a,O=b") as DER (ID_DER_ASN1_DN)."""
    try:
        return x509.Name.from_rfc4514_string(text).public_bytes()
    except ValueError as exc:
        raise IkeCryptoError(f"not a distinguished name: {text!r}") from exc


def der_to_dn_text(der: bytes) -> str:
    return "dn:" + der.hex()


def certreq_hash(ca: x509.Certificate) -> bytes:
    """CERTREQ authority: SHA-1 of the CA's SubjectPublicKeyInfo (§3.7)."""
    spki = ca.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    # §3.7 hashes the subjectPublicKey BIT STRING contents only: strip the
    # SPKI's algorithm, keeping what follows the BIT STRING's unused-bits octet.
    return hashlib.sha1(_spki_bitstring(spki)).digest()


def _spki_bitstring(spki: bytes) -> bytes:
    def read(pos: int) -> tuple[int, int, int]:
        tag = spki[pos]
        length = spki[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(spki[pos:pos + n], "big")
            pos += n
        return tag, pos, length
    _, pos, _ = read(0)                 # outer SEQUENCE
    _, apos, alen = read(pos)           # AlgorithmIdentifier
    _tag, bpos, blen = read(apos + alen)  # BIT STRING
    return spki[bpos + 1:bpos + blen]


# ---------------------------------------------------------------- NAT-T
def nat_detection_hash(spi_i: bytes, spi_r: bytes, addr: str | IPv4Address | IPv6Address,
                       port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) (§2.23)."""
    return hashlib.sha1(spi_i + spi_r + ip_address(addr).packed + struct.pack("!H", port)).digest()
