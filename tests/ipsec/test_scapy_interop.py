"""Interoperability with scapy's independent ESP (``scapy.layers.ipsec``).

Every vmip suite exists in scapy, so every suite is checked both ways, in
transport and tunnel mode, with and without ESN (scapy takes the high half
of the sequence number as a fixed SA parameter).
"""

from __future__ import annotations

import os
from ipaddress import IPv6Address

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from vmip.ipsec.esp import EspSA, decap, esp_spi, transport_encap, tunnel_encap
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.suites import SUITES

A = IPv6Address("2001:db8:10::1")
B = IPv6Address("2001:db8:20::2")

#: vmip suite -> (scapy crypt_algo, scapy auth_algo)
SCAPY_NAMES = {
    "aes128gcm16": ("AES-GCM", "NULL"),
    "aes256gcm16": ("AES-GCM", "NULL"),
    "chacha20poly1305": ("CHACHA20-POLY1305", "NULL"),
    "aes128cbc-sha256": ("AES-CBC", "SHA2-256-128"),
    "aes256cbc-sha256": ("AES-CBC", "SHA2-256-128"),
    "aes128cbc-sha512": ("AES-CBC", "SHA2-512-256"),
    "aes256cbc-sha512": ("AES-CBC", "SHA2-512-256"),
    "null-sha256": ("NULL", "SHA2-256-128"),
}
ESN_HIGH = 5


def test_every_vmip_suite_has_a_scapy_counterpart() -> None:
    assert set(SCAPY_NAMES) == set(SUITES)


def vmip_params(suite: str, mode: Mode, esn: bool) -> SaParams:
    info = SUITES[suite]
    return SaParams(spi=0x5EC0, direction=Direction.OUT, src=A, dst=B, suite=suite,
                    enc_key=os.urandom(info.enc_key_len), auth_key=os.urandom(info.auth_key_len),
                    mode=mode, esn=esn)


def scapy_sa(params: SaParams, seq_low: int = 1) -> SecurityAssociation:
    crypt, auth = SCAPY_NAMES[params.suite]
    tunnel = IPv6(src=str(params.src), dst=str(params.dst)) if params.mode is Mode.TUNNEL else None
    return SecurityAssociation(
        ESP, spi=params.spi, seq_num=seq_low, crypt_algo=crypt,
        crypt_key=params.enc_key or None, auth_algo=auth, auth_key=params.auth_key or None,
        tunnel_header=tunnel, esn_en=params.esn, esn=ESN_HIGH if params.esn else 0)


def inner_packets(mode: Mode) -> list[bytes]:
    packets = [bytes(IPv6(src=str(A), dst=str(B)) / UDP(sport=4000, dport=53) / Raw(b"q" * n))
               for n in (0, 1, 7, 200, 1300)]
    if mode is Mode.TUNNEL:
        packets.append(bytes(IP(src="192.0.2.1", dst="198.51.100.7") / ICMP() / Raw(b"ping")))
    return packets


CASES = [(suite, mode, esn) for suite in sorted(SUITES) for mode in Mode for esn in (False, True)]
IDS = [f"{s}-{m.value}-{'esn' if e else 'noesn'}" for s, m, e in CASES]


@pytest.mark.parametrize("suite,mode,esn", CASES, ids=IDS)
def test_scapy_decrypts_what_vmip_encrypts(suite: str, mode: Mode, esn: bool) -> None:
    params = vmip_params(suite, mode, esn)
    sender = EspSA(params, 0.0)
    if esn:
        sender.seq = (ESN_HIGH << 32) + 10
    peer = scapy_sa(params)
    encap = tunnel_encap if mode is Mode.TUNNEL else transport_encap
    for original in inner_packets(mode):
        wire = encap(original, sender, 1.0)
        assert wire is not None
        decrypted = peer.decrypt(IPv6(wire))  # raises on a bad ICV or padding
        assert bytes(decrypted) == original


@pytest.mark.parametrize("suite,mode,esn", CASES, ids=IDS)
def test_vmip_decrypts_what_scapy_encrypts(suite: str, mode: Mode, esn: bool) -> None:
    params = vmip_params(suite, mode, esn)
    receiver = EspSA(params, 0.0)
    if esn:
        # The receiver last saw the number before scapy's first one, so the
        # high half is inferred, not told.
        receiver.replay.accept((ESN_HIGH << 32) + 99)
    peer = scapy_sa(params, seq_low=100)
    for original in inner_packets(mode):
        if mode is Mode.TUNNEL:
            inner = IPv6(original) if original[0] >> 4 == 6 else IP(original)
        else:
            inner = IPv6(original)
        wire = bytes(peer.encrypt(inner))
        found = esp_spi(wire)
        assert found is not None and found[0] == params.spi
        assert decap(wire, found[1], receiver, 1.0) == original
    assert not receiver.drops
    assert receiver.replay.top == ((ESN_HIGH << 32) if esn else 0) + 100 + len(inner_packets(mode)) - 1
