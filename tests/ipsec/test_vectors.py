"""Published ESP and HMAC test vectors, checked byte for byte on both backends.

The expected values come from the documents named in each JSON file under
``vectors/`` (draft-mcgrew-gcm-test-01, RFC 7634 appendix A, RFC 3602 §4,
RFC 4231 §4, RFC 4868 §2.7.2), never from our own output.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from vmip.ipsec.crypto import hmac_tag, make_transform
from vmip.ipsec.esp import EspSA
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.suites import BACKENDS, SUITES

VECTORS = Path(__file__).parent / "vectors"
SRC = IPv6Address("2001:db8::1")
DST = IPv6Address("2001:db8::2")


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


GCM = load("gcm_esp_mcgrew.json")["cases"]
CHACHA = load("chacha20poly1305_esp_rfc7634.json")["cases"]
AEAD_CASES = GCM + CHACHA
CBC = load("aes_cbc_esp_rfc3602.json")["cases"]
HMAC = load("hmac_sha2_rfc4231_rfc4868.json")


def split_plaintext(plaintext: bytes) -> tuple[bytes, int, int]:
    """(payload, pad length, next header) of an ESP plaintext."""
    pad_len, next_header = plaintext[-2], plaintext[-1]
    return plaintext[: len(plaintext) - 2 - pad_len], pad_len, next_header


def aead_sa(case: dict, backend: str, direction: Direction, **extra) -> EspSA:
    params = SaParams(spi=int(case["spi"], 16), direction=direction, src=SRC, dst=DST,
                      suite=case["suite"], enc_key=bytes.fromhex(case["key"]),
                      esn=case["esn"], backend=backend, mode=Mode.TUNNEL)
    return EspSA(params, 0.0, **extra)


def ids(cases: list[dict]) -> list[str]:
    return [c["name"].split(":")[0] for c in cases]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", AEAD_CASES, ids=ids(AEAD_CASES))
def test_aead_transform_matches_published_packet(case: dict, backend: str) -> None:
    # The transform alone: ESP header, IV and AAD construction (RFC 4106 §5,
    # RFC 7634 §2.1) with the vector's own plaintext; covers the SPI-0 case
    # that SaParams (rightly) refuses.
    suite = SUITES[case["suite"]]
    transform = make_transform(suite, bytes.fromhex(case["key"]), b"", backend)
    expected = bytes.fromhex(case["esp"])
    seq = int(case["seq"], 16)
    esn_high = (seq >> 32).to_bytes(4, "big") if case["esn"] else b""
    sealed = transform.seal(expected[:8], bytes.fromhex(case["iv"]),
                            bytes.fromhex(case["plaintext"]), esn_high)
    assert sealed == expected
    assert transform.open(expected, esn_high) == bytes.fromhex(case["plaintext"])


SA_CASES = [c for c in AEAD_CASES if int(c["spi"], 16) >= 256]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SA_CASES, ids=ids(SA_CASES))
def test_esp_sa_protect_reproduces_published_packet(case: dict, backend: str) -> None:
    # The whole engine: header, sequence number (ESN high half only in the
    # AAD), RFC 4303 default padding and trailer, for an injected IV.
    iv = bytes.fromhex(case["iv"])
    sa = aead_sa(case, backend, Direction.OUT, iv_source=lambda n: iv)
    seq = int(case["seq"], 16)
    sa.seq = seq - 1
    payload, _, next_header = split_plaintext(bytes.fromhex(case["plaintext"]))
    assert sa.protect(payload, next_header, 1.0) == bytes.fromhex(case["esp"])
    assert sa.seq == seq


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SA_CASES, ids=ids(SA_CASES))
def test_esp_sa_unprotect_recovers_published_payload(case: dict, backend: str) -> None:
    sa = aead_sa(case, backend, Direction.IN)
    seq = int(case["seq"], 16)
    # The receiver has seen the packet before this one, so RFC 4303 A2 must
    # infer the vector's high half from the low 32 bits on the wire.
    sa.replay.accept(seq - 1)
    payload, _, next_header = split_plaintext(bytes.fromhex(case["plaintext"]))
    assert sa.unprotect(bytes.fromhex(case["esp"]), 1.0) == (next_header, payload)
    assert sa.replay.top == seq
    assert not sa.drops


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CBC, ids=ids(CBC))
def test_aes_cbc_matches_rfc3602_and_icv_is_hmac_sha256_128(case: dict, backend: str) -> None:
    auth_key = bytes(range(32))
    params = SaParams(spi=int(case["spi"], 16), direction=Direction.OUT, src=SRC, dst=DST,
                      suite=case["suite"], enc_key=bytes.fromhex(case["key"]),
                      auth_key=auth_key, esn=False, backend=backend, mode=Mode.TUNNEL)
    iv = bytes.fromhex(case["iv"])
    sender = EspSA(params, 0.0, iv_source=lambda n: iv)
    sender.seq = int(case["seq"], 16) - 1
    payload = bytes.fromhex(case["payload"])
    esp = sender.protect(payload, case["next_header"], 1.0)
    expected = bytes.fromhex(case["esp"])
    assert esp[:-16] == expected
    # RFC 4868 §2.3: HMAC-SHA-256 over SPI .. ciphertext, first 128 bits.
    assert esp[-16:] == hmac.new(auth_key, expected, hashlib.sha256).digest()[:16]

    receiver = EspSA(params, 0.0)
    icv = hmac.new(auth_key, expected, hashlib.sha256).digest()[:16]
    assert receiver.unprotect(expected + icv, 1.0) == (case["next_header"], payload)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", HMAC["rfc4231"], ids=[c["name"] for c in HMAC["rfc4231"]])
def test_backend_hmac_matches_rfc4231(case: dict, backend: str) -> None:
    key, data = bytes.fromhex(case["key"]), bytes.fromhex(case["data"])
    for hash_name in ("sha256", "sha512"):
        expected = case[hash_name]
        assert hmac_tag(backend, hash_name, key, data).hex()[: len(expected)] == expected


RFC4868_256 = [c for c in HMAC["rfc4868"] if c["hash"] == "sha256"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", HMAC["rfc4868"], ids=[c["name"] for c in HMAC["rfc4868"]])
def test_backend_hmac_matches_rfc4868(case: dict, backend: str) -> None:
    key, data = bytes.fromhex(case["key"]), bytes.fromhex(case["data"])
    assert hmac_tag(backend, case["hash"], key, data).hex() == case["prf"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", RFC4868_256, ids=[c["name"] for c in RFC4868_256])
def test_esp_icv_check_accepts_rfc4868_hmac_sha256_128(case: dict, backend: str) -> None:
    # Through the transform's own ICV check: with NULL encryption the ICV
    # covers exactly the bytes before it, so the RFC's data followed by its
    # PRF output truncated to 128 bits (RFC 4868 §2.3) must verify, and the
    # same with one bit flipped must not.
    suite = SUITES["null-sha256"]
    transform = make_transform(suite, b"", bytes.fromhex(case["key"]), backend)
    data = bytes.fromhex(case["data"])
    icv = bytes.fromhex(case["prf"])[:16]
    assert transform.open(data + icv, b"") is not None
    flipped = bytes([icv[0] ^ 1]) + icv[1:]
    assert transform.open(data + flipped, b"") is None
