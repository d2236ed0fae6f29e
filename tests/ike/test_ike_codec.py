"""IKE codec: round trips, scapy as an independent decoder, and fuzzing."""

from __future__ import annotations

import os
import struct
from ipaddress import ip_address

import pytest
from hypothesis import given, settings, strategies as st

from vmip.ike.constants import ExchangeType, Notify, ProtocolId
from vmip.ike.crypto import SkCipher
from vmip.ike.messages import IkeMessage, decode_message, decrypt_message, encode_message
from vmip.ike.payloads import (AuthPayload, CertReqPayload, DeletePayload, IdiPayload, Identity,
                               IkeIntegrityError, IkeParseError, IkeUnsupportedCriticalPayload,
                               KePayload, NoncePayload, NotifyPayload, SaPayload, TrafficSelector,
                               TsiPayload, TsrPayload, UnknownPayload, VendorPayload)
from vmip.ike.proposals import esp_sa_payload_proposals, ike_sa_payload_proposals, parse_esp_proposal, parse_ike_proposal

SPI_I, SPI_R = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")


def _sample_payloads():
    return (SaPayload(ike_sa_payload_proposals(parse_ike_proposal("aes128gcm16-aes256-sha256-prfsha256-ecp256-modp2048"))),
            KePayload(19, os.urandom(64)), NoncePayload(os.urandom(32)),
            IdiPayload(Identity.from_text("mn@example.org")),
            AuthPayload(2, os.urandom(32)), CertReqPayload(4, os.urandom(20)),
            NotifyPayload(Notify.REKEY_SA, b"", ProtocolId.ESP, b"\x00\x00\x12\x34"),
            DeletePayload(ProtocolId.ESP, (b"\x00\x00\x12\x34", b"\x00\x00\x56\x78")),
            VendorPayload(b"vmip"),
            TsiPayload((TrafficSelector.from_network("2001:db8::/64"), TrafficSelector.mh("2001:db8::1/128", 5))),
            TsrPayload((TrafficSelector.from_network("192.0.2.0/24", 6, 80, 443),)))


def test_round_trip_plain():
    msg = IkeMessage(SPI_I, SPI_R, ExchangeType.IKE_SA_INIT, 0, True, False, _sample_payloads())
    assert decode_message(encode_message(msg)).payloads == msg.payloads


@pytest.mark.parametrize("encr,bits,integ,klen", [(20, 128, 0, 20), (20, 256, 0, 36), (28, None, 0, 36),
                                                  (12, 128, 12, 16), (12, 256, 14, 32)])
def test_round_trip_encrypted_and_bad_icv(encr, bits, integ, klen):
    enc, auth = os.urandom(klen), os.urandom(64 if integ == 14 else 32)
    cipher = SkCipher(encr, bits, integ, enc, auth)
    msg = IkeMessage(SPI_I, SPI_R, ExchangeType.IKE_AUTH, 1, True, False, _sample_payloads())
    raw = encode_message(msg, cipher)
    assert decrypt_message(decode_message(raw), cipher).payloads == msg.payloads
    for pos in (20, 40, len(raw) - 1):   # header (in AAD), ciphertext, ICV
        bad = bytearray(raw)
        bad[pos] ^= 1
        with pytest.raises(IkeParseError):
            decrypt_message(decode_message(bytes(bad)), cipher)
    other = SkCipher(encr, bits, integ, os.urandom(klen), os.urandom(64 if integ == 14 else 32))
    with pytest.raises(IkeIntegrityError):
        decrypt_message(decode_message(raw), other)


def test_scapy_decodes_our_ike_sa_init():
    scapy_ike = pytest.importorskip("scapy.contrib.ikev2")
    payloads = (SaPayload(ike_sa_payload_proposals(parse_ike_proposal("aes256-sha256-modp2048"))),
                KePayload(14, os.urandom(256)), NoncePayload(b"N" * 32),
                NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, b"h" * 20))
    raw = encode_message(IkeMessage(SPI_I, bytes(8), ExchangeType.IKE_SA_INIT, 0, True, False, payloads))
    pkt = scapy_ike.IKEv2(raw)
    assert pkt.init_SPI == SPI_I and pkt.exch_type == 34 and pkt.length == len(raw)
    sa = pkt[scapy_ike.IKEv2_SA]
    prop = sa.prop
    assert prop.trans_nb == 4
    transforms = []
    t = prop.trans
    while t is not None and t.__class__.__name__ == "IKEv2_Transform":
        transforms.append((t.transform_type, t.transform_id))
        t = t.payload if t.payload.__class__.__name__ == "IKEv2_Transform" else None
    assert (1, 12) in transforms and (4, 14) in transforms
    assert pkt[scapy_ike.IKEv2_KE].group == 14
    assert bytes(pkt[scapy_ike.IKEv2_Nonce].nonce) == b"N" * 32


def test_scapy_built_sa_payload_decodes():
    scapy_ike = pytest.importorskip("scapy.contrib.ikev2")
    tr = (scapy_ike.IKEv2_Transform(transform_type=1, transform_id=20, key_length=256)
          / scapy_ike.IKEv2_Transform(transform_type=2, transform_id=5)
          / scapy_ike.IKEv2_Transform(transform_type=4, transform_id=31))
    pkt = scapy_ike.IKEv2(init_SPI=SPI_I, exch_type=34, flags="Initiator") / scapy_ike.IKEv2_SA(
        prop=scapy_ike.IKEv2_Proposal(proposal=1, proto=1, trans_nb=3, trans=tr))
    msg = decode_message(bytes(pkt))
    sa, = msg.payloads
    assert [(t.type, t.id) for t in sa.proposals[0].transforms] == [(1, 20), (2, 5), (4, 31)]


def test_unknown_payloads():
    body = IkeMessage(SPI_I, SPI_R, 37, 2, True, False,
                      (UnknownPayload(200, b"abc"), NoncePayload(b"n" * 16)))
    assert decode_message(encode_message(body)).payloads[1] == NoncePayload(b"n" * 16)
    crit = IkeMessage(SPI_I, SPI_R, 37, 2, True, False, (UnknownPayload(200, b"abc", True),))
    with pytest.raises(IkeUnsupportedCriticalPayload) as exc:
        decode_message(encode_message(crit))
    assert exc.value.payload_type == 200


def test_ts_and_ids():
    ts = TrafficSelector.mh("2001:db8::1/128", 5)
    assert (ts.start_port, ts.end_port, ts.protocol) == (0x0500, 0x05FF, 135)
    assert Identity.from_text("192.0.2.1").data == ip_address("192.0.2.1").packed
    assert Identity.from_text("host.example").id_type == 2
    assert Identity.from_text("CN=host,O=vmip").id_type == 9


def test_esp_proposal_transforms():
    p, = esp_sa_payload_proposals([parse_esp_proposal("aes128cbc-sha256-ecp256-noesn")], b"\0\0\1\0", True)
    assert [(t.type, t.id, t.key_length) for t in p.transforms] == [(1, 12, 128), (3, 12, None), (4, 19, None), (5, 0, None)]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    try:
        decode_message(data)
    except IkeParseError:
        pass


_VALID = encode_message(IkeMessage(SPI_I, SPI_R, ExchangeType.IKE_SA_INIT, 0, True, False, _sample_payloads()))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.integers(0, 255), st.integers(1, len(_VALID)))
def test_fuzz_mutated_and_truncated(pos, value, cut):
    data = bytearray(_VALID)
    data[pos] = value
    for candidate in (bytes(data), _VALID[:cut], bytes(data[:cut])):
        try:
            decode_message(candidate)
        except IkeParseError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_fuzz_sk_payload(garbage):
    cipher = SkCipher(20, 128, 0, os.urandom(20), b"")
    header = struct.pack("!8s8sBBBBII", SPI_I, SPI_R, 46, 0x20, 35, 0x08, 1, 28 + 4 + len(garbage))
    raw = header + struct.pack("!BBH", 41, 0, 4 + len(garbage)) + garbage
    try:
        decrypt_message(decode_message(raw), cipher)
    except IkeParseError:
        pass
