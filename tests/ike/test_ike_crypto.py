"""IKE key schedule and AUTH, recomputed independently with hashlib/hmac and
OpenSSL's IKEV2KDF where the openssl CLI offers it."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from vmip.ike import crypto
from vmip.ike.constants import IdType, Prf


def _ref_prf_plus(h, key, seed, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(key, t + seed + bytes([i]), h).digest()
        out += t
        i += 1
    return out[:n]


@pytest.mark.parametrize("alg,h", [(Prf.HMAC_SHA2_256, hashlib.sha256), (Prf.HMAC_SHA2_384, hashlib.sha384),
                                   (Prf.HMAC_SHA2_512, hashlib.sha512)])
def test_prf_plus_matches_rfc_formula(alg, h):
    key, seed = os.urandom(40), os.urandom(77)
    assert crypto.prf_plus(alg, key, seed, 300) == _ref_prf_plus(h, key, seed, 300)


def test_key_schedule_matches_rfc_formula():
    ni, nr, g, spi_i, spi_r = os.urandom(32), os.urandom(32), os.urandom(64), os.urandom(8), os.urandom(8)
    seed = crypto.skeyseed(Prf.HMAC_SHA2_256, ni, nr, g)
    ref_seed = hmac.new(ni + nr, g, hashlib.sha256).digest()
    assert seed == ref_seed
    keys = crypto.derive_ike_keys(Prf.HMAC_SHA2_256, seed, ni, nr, spi_i, spi_r, 20, 0)
    stream = _ref_prf_plus(hashlib.sha256, ref_seed, ni + nr + spi_i + spi_r, 32 + 0 + 0 + 20 + 20 + 32 + 32)
    assert keys.sk_d == stream[:32] and keys.sk_ei == stream[32:52] and keys.sk_er == stream[52:72]
    assert keys.sk_pi == stream[72:104] and keys.sk_pr == stream[104:136]
    # rekey SKEYSEED (§2.18) and child KEYMAT with/without PFS (§2.17)
    assert crypto.rekey_skeyseed(Prf.HMAC_SHA2_256, keys.sk_d, g, ni, nr) == \
        hmac.new(keys.sk_d, g + ni + nr, hashlib.sha256).digest()
    assert crypto.child_keymat(Prf.HMAC_SHA2_256, keys.sk_d, ni, nr, 72) == \
        _ref_prf_plus(hashlib.sha256, keys.sk_d, ni + nr, 72)
    assert crypto.child_keymat(Prf.HMAC_SHA2_256, keys.sk_d, ni, nr, 72, g) == \
        _ref_prf_plus(hashlib.sha256, keys.sk_d, g + ni + nr, 72)


def _openssl_ikev2kdf(mode: str, key: bytes, **opts) -> bytes | None:
    if shutil.which("openssl") is None:
        return None
    args = ["openssl", "kdf", "-keylen", str(opts.pop("keylen")), "-kdfopt", "digest:SHA2-256",
            "-kdfopt", f"mode:{mode}", "-kdfopt", f"hexkey:{key.hex()}"]
    for k, v in opts.items():
        args += ["-kdfopt", f"hex{k}:{v.hex()}"]
    args.append("IKEV2KDF")
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return bytes.fromhex(r.stdout.strip().replace(":", ""))


def test_against_openssl_ikev2kdf_if_available():
    ni, nr, g = os.urandom(32), os.urandom(32), os.urandom(32)
    ours = crypto.skeyseed(Prf.HMAC_SHA2_256, ni, nr, g)
    theirs = _openssl_ikev2kdf("EXTRACT_ONLY", g, ni=ni, nr=nr, keylen=32)
    if theirs is None:
        pytest.skip("openssl here has no IKEV2KDF (needs OpenSSL >= 3.2); the RFC-formula tests cover it")
    assert ours == theirs


@pytest.mark.parametrize("group", crypto.SUPPORTED_GROUPS)
def test_dh_agreement_and_public_value_checks(group):
    a, b = crypto.DhKey(group), crypto.DhKey(group)
    assert a.shared_secret(b.public) == b.shared_secret(a.public)
    bad = {14: [bytes(256), (crypto.MODP2048_P - 1).to_bytes(256, "big"), b"\x01" * 10],
           19: [bytes(64), b"\x01" * 64], 20: [bytes(96)], 31: [bytes(32), b"\x01" * 31]}[int(group)]
    for value in bad:
        with pytest.raises(crypto.IkeCryptoError):
            a.shared_secret(value)


def test_psk_auth_formula():
    octets, psk = os.urandom(100), b"secret"
    inner = hmac.new(psk, b"Key Pad for IKEv2", hashlib.sha256).digest()
    assert crypto.psk_auth(Prf.HMAC_SHA2_256, psk, octets) == hmac.new(inner, octets, hashlib.sha256).digest()


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
                                 rsa.generate_private_key(65537, 2048)])
def test_signature_auth_round_trip(key):
    octets = os.urandom(200)
    data = crypto.sign_auth(key, octets)
    crypto.verify_auth(key.public_key(), data, octets)
    with pytest.raises(crypto.IkeCryptoError):
        crypto.verify_auth(key.public_key(), data, octets + b"x")


def test_rfc7427_algorithm_identifiers():
    # RFC 7427 appendix A: ecdsa-with-sha256 and sha256WithRSAEncryption blobs.
    assert crypto.ALG_ECDSA_SHA256.hex() == "300a06082a8648ce3d040302"
    assert crypto.ALG_RSA_SHA256.hex() == "300d06092a864886f70d01010b0500"


def test_certificate_identity_and_chain():
    from ikepair import make_pki
    pki = make_pki({"a": "a.example", "b": "192.0.2.7"})
    import time
    crypto.verify_chain(pki.certs["a"], [], [pki.ca], time.time())
    assert crypto.identity_matches_certificate(IdType.FQDN, b"a.example", pki.certs["a"])
    assert not crypto.identity_matches_certificate(IdType.FQDN, b"b.example", pki.certs["a"])
    assert crypto.identity_matches_certificate(IdType.IPV4_ADDR, bytes([192, 0, 2, 7]), pki.certs["b"])
    other = make_pki({"x": "a.example"})
    with pytest.raises(crypto.IkeCryptoError):
        crypto.verify_chain(other.certs["x"], [], [pki.ca], time.time())
