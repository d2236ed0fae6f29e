"""The two crypto backends: byte-identical output, cross-decryption, set-up errors."""

from __future__ import annotations

import os
from ipaddress import IPv6Address

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.errors import VmipError
from vmip.ipsec.crypto import EspSetupError, _ChainedCbc, hmac_tag, make_transform
from vmip.ipsec.esp import EspSA
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.suites import BACKENDS, SUITES

ALL_SUITES = sorted(SUITES)


def params(suite: str, backend: str, esn: bool) -> SaParams:
    info = SUITES[suite]
    return SaParams(spi=0xABCD, direction=Direction.OUT, src=IPv6Address("2001:db8::1"),
                    dst=IPv6Address("2001:db8::2"), suite=suite,
                    enc_key=bytes(range(3, 3 + info.enc_key_len)),
                    auth_key=bytes(range(50, 50 + info.auth_key_len)),
                    esn=esn, backend=backend, mode=Mode.TUNNEL)


def fixed_ivs():
    """An IV source giving the same IV sequence to every SA it is handed to."""
    counter = iter(range(1, 1 << 30))
    return lambda n: next(counter).to_bytes(n, "big")


PAYLOADS = [b"", b"a", os.urandom(15), os.urandom(16), os.urandom(333), os.urandom(1400)]


@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("suite", ALL_SUITES)
def test_backends_are_byte_identical_for_a_fixed_iv(suite: str, esn: bool) -> None:
    outputs = {}
    for backend in BACKENDS:
        sa = EspSA(params(suite, backend, esn), 0.0,
                   iv_source=None if SUITES[suite].aead else fixed_ivs())
        sa.seq = (1 << 32) - 3 if esn else 0  # cross the ESN boundary on the way
        outputs[backend] = [sa.protect(p, 41, 1.0) for p in PAYLOADS]
    first, second = (outputs[b] for b in BACKENDS)
    assert first == second
    assert len(set(first)) == len(PAYLOADS)


@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("suite", ALL_SUITES)
@pytest.mark.parametrize("sender_backend,receiver_backend",
                         [(a, b) for a in BACKENDS for b in BACKENDS if a != b])
def test_each_backend_decrypts_the_other(suite: str, esn: bool, sender_backend: str,
                                         receiver_backend: str) -> None:
    sender = EspSA(params(suite, sender_backend, esn), 0.0)
    receiver = EspSA(params(suite, receiver_backend, esn), 0.0)
    for payload in PAYLOADS:
        assert receiver.unprotect(sender.protect(payload, 4, 1.0), 1.0) == (4, payload)


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(st.tuples(st.binary(min_size=16, max_size=16),
                                   st.integers(min_value=1, max_value=8)), max_size=12))
def test_chained_cbc_context_equals_a_fresh_context_per_packet(messages) -> None:
    # The long-lived CBC context must give exactly what RFC 3602 CBC with a
    # fresh context and the packet's IV gives, packet after packet.
    key = bytes(range(16))
    chained = _ChainedCbc(key)
    for iv, blocks in messages:
        plaintext = os.urandom(16 * blocks)
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        expected = encryptor.update(plaintext) + encryptor.finalize()
        assert chained.encrypt(iv, plaintext) == expected
        assert chained.decrypt(iv, expected) == plaintext


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("suite", ALL_SUITES)
def test_wrong_key_sizes_are_setup_errors(suite: str, backend: str) -> None:
    info = SUITES[suite]
    with pytest.raises(EspSetupError):
        make_transform(info, bytes(info.enc_key_len + 1), bytes(info.auth_key_len), backend)
    with pytest.raises(EspSetupError):
        make_transform(info, bytes(info.enc_key_len), bytes(info.auth_key_len + 1), backend)
    assert make_transform(info, bytes(info.enc_key_len), bytes(info.auth_key_len), backend)


def test_unknown_backend_and_hash_are_setup_errors() -> None:
    info = SUITES["aes128gcm16"]
    with pytest.raises(EspSetupError):
        make_transform(info, bytes(20), b"", "libsodium")
    with pytest.raises(EspSetupError):
        hmac_tag("cryptography", "md5", b"k", b"d")
    with pytest.raises(EspSetupError):
        hmac_tag("libsodium", "sha256", b"k", b"d")
    assert issubclass(EspSetupError, VmipError)
