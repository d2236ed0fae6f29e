"""The esp_sa UAT rows: format, on-wire addresses, and tshark 4.0 accepting them."""

from __future__ import annotations

import shutil
import struct
import subprocess
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from vmip.ipsec.sa import Direction, SaParams
from vmip.ipsec.suites import SUITES
from vmip.ipsec.wireshark import tshark_args, wireshark_rows

TSHARK = shutil.which("tshark")


def sa(suite: str, spi: int = 0x1234, **overrides) -> SaParams:
    info = SUITES[suite]
    fields = {"spi": spi, "direction": Direction.OUT, "src": IPv6Address("2001:db8::1"),
              "dst": IPv6Address("2001:db8::2"), "suite": suite,
              "enc_key": bytes(range(1, 1 + info.enc_key_len)),
              "auth_key": bytes(range(100, 100 + info.auth_key_len))}
    fields.update(overrides)
    return SaParams(**fields)


def test_gcm_row_is_key_then_salt_with_null_authentication() -> None:
    # The row shape tshark 4.0 takes (docs/ipsec.md, "Decrypting a capture in Wireshark").
    [row] = wireshark_rows([sa("aes128gcm16")])
    key = bytes(range(1, 21)).hex()
    assert row == ('"IPv6","*","*","0x00001234","AES-GCM with 16 octet ICV [RFC4106]",'
                   f'"0x{key}","NULL",""')


def test_cbc_rows_name_the_hmac() -> None:
    rows = wireshark_rows([sa("aes256cbc-sha256", spi=0x100), sa("aes128cbc-sha512", spi=0x101)])
    assert rows[0] == ('"IPv6","*","*","0x00000100","AES-CBC [RFC3602]",'
                       f'"0x{bytes(range(1, 33)).hex()}","HMAC-SHA-256-128 [RFC4868]",'
                       f'"0x{bytes(range(100, 132)).hex()}"')
    assert '"HMAC-SHA-512-256 [RFC4868]"' in rows[1]


def test_null_encryption_row_has_no_key() -> None:
    [row] = wireshark_rows([sa("null-sha256")])
    assert row.split(",")[4:6] == ['"NULL"', '""']


def test_on_wire_addresses_replace_the_wildcards() -> None:
    rows = wireshark_rows(
        [sa("aes128gcm16", spi=0x200), sa("aes128gcm16", spi=0x201)],
        on_wire={0x200: (IPv6Address("2001:db8:c0a::1"), "2001:db8::2"),
                 0x201: (IPv4Address("192.0.2.1"), None)})
    assert rows[0].startswith('"IPv6","2001:db8:c0a::1","2001:db8::2","0x00000200"')
    assert rows[1].startswith('"IPv4","192.0.2.1","*","0x00000201"')


def test_chacha20_needs_wireshark_4_2() -> None:
    assert wireshark_rows([sa("chacha20poly1305")]) == []
    [row] = wireshark_rows([sa("chacha20poly1305")], version=(4, 2))
    assert '"ChaCha20 with Poly1305 [RFC7634]"' in row


def test_tshark_args_enable_decryption_and_authentication() -> None:
    args = tshark_args(["ROW"])
    assert args == ["-o", "esp.enable_encryption_decode:TRUE",
                    "-o", "esp.enable_authentication_check:TRUE", "-o", "uat:esp_sa:ROW"]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (tools/install-deps)")
def test_tshark_4_0_accepts_every_exported_row(tmp_path: Path) -> None:
    # tshark refuses the whole command line on an unknown algorithm name,
    # so this checks every string against the real dissector.
    pcap = tmp_path / "empty.pcap"
    pcap.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 229))
    rows = wireshark_rows([sa(name, spi=0x300 + i) for i, name in enumerate(sorted(SUITES))])
    assert len(rows) == len(SUITES) - 1  # all but ChaCha20
    result = subprocess.run([TSHARK, "-r", str(pcap), *tshark_args(rows)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    bad = subprocess.run([TSHARK, "-r", str(pcap), *tshark_args(
        [rows[0].replace("AES-CBC [RFC3602]", "AES-CBC")])],
        capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "invalid value" in bad.stderr
