"""tshark 4.0 decrypts and authenticates vmip's ESP with the exported SA rows.

The packets go into a pcap of link type LINKTYPE_IPV6 written here by hand;
tshark (Wireshark's own ESP code) is the oracle.  ESN is off: Wireshark 4.0
cannot check ESN SAs (see vmip.ipsec.wireshark).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from ipaddress import IPv6Address
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from vmip.ipsec.esp import EspSA, transport_encap, tunnel_encap
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.suites import SUITES
from vmip.ipsec.wireshark import tshark_args, wireshark_rows

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (tools/install-deps)")

LINKTYPE_IPV6 = 229
SA_SRC = IPv6Address("2001:db8:a::1")
SA_DST = IPv6Address("2001:db8:b::2")
INNER_SRC, INNER_DST = "2001:db8:c::3", "2001:db8:d::4"
#: Every suite tshark 4.0 knows (no ChaCha20 there).
SUITES_40 = [s for s in sorted(SUITES) if not s.startswith("chacha")]


def write_pcap(path: Path, packets: list[bytes]) -> None:
    """Classic pcap (magic a1b2c3d4), one record per packet."""
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_IPV6))
        for index, packet in enumerate(packets):
            out.write(struct.pack("<IIII", 1_700_000_000 + index, 0, len(packet), len(packet)))
            out.write(packet)


def run_tshark(pcap: Path, rows: list[str], fields: list[str]) -> list[dict[str, str]]:
    command = [TSHARK, "-n", "-r", str(pcap), *tshark_args(rows), "-T", "fields",
               "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return [dict(zip(fields, line.split("|"))) for line in result.stdout.splitlines()]


def make_sa(suite: str, spi: int, mode: Mode) -> EspSA:
    info = SUITES[suite]
    params = SaParams(spi=spi, direction=Direction.OUT, src=SA_SRC, dst=SA_DST, suite=suite,
                      enc_key=os.urandom(info.enc_key_len), auth_key=os.urandom(info.auth_key_len),
                      mode=mode, esn=False)
    return EspSA(params, 0.0)


def udp(port: int, payload: bytes, src: str, dst: str) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=40000, dport=port) / Raw(payload))


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> tuple[list[dict[str, str]], list[dict]]:
    """All suites, both modes, in one pcap and one tshark run."""
    packets, expected, sas = [], [], []
    spi = 0x7000
    for suite in SUITES_40:
        for mode in Mode:
            spi += 1
            sa = make_sa(suite, spi, mode)
            sas.append(sa)
            port = 30000 + spi % 1000
            payload = f"{suite}/{mode.value}".encode()
            if mode is Mode.TUNNEL:
                wire = tunnel_encap(udp(port, payload, INNER_SRC, INNER_DST), sa, 1.0)
            else:
                wire = transport_encap(udp(port, payload, str(SA_SRC), str(SA_DST)), sa, 1.0)
            packets.append(wire)
            expected.append(dict(spi=spi, port=port, payload=payload, mode=mode, suite=suite))
    pcap = tmp_path_factory.mktemp("tshark") / "esp.pcap"
    write_pcap(pcap, packets)
    rows = wireshark_rows([sa.params for sa in sas],
                          on_wire={sa.spi: (SA_SRC, SA_DST) for sa in sas[::2]})
    fields = ["esp.spi", "esp.icv_good", "esp.icv_bad", "ipv6.dst", "udp.dstport", "data.data"]
    return run_tshark(pcap, rows, fields), expected


@pytest.mark.parametrize("index", range(len(SUITES_40) * 2))
def test_tshark_authenticates_and_decrypts(capture, index: int) -> None:
    lines, expected = capture
    line, want = lines[index], expected[index]
    assert int(line["esp.spi"], 16) == want["spi"]
    assert line["esp.icv_good"] in ("1", "True"), (want["suite"], line)
    assert line["esp.icv_bad"] in ("", "0", "False")
    # The decrypted inner protocol: UDP port and payload, and in tunnel mode
    # the inner IPv6 header after the outer one.
    assert line["udp.dstport"] == str(want["port"])
    assert bytes.fromhex(line["data.data"]) == want["payload"]
    if want["mode"] is Mode.TUNNEL:
        assert line["ipv6.dst"].split(",") == [str(SA_DST), INNER_DST]


def test_tshark_flags_a_wrong_key(tmp_path: Path) -> None:
    # The negative control: the same check fails when the exported key is wrong.
    sa = make_sa("aes128gcm16", 0x7777, Mode.TRANSPORT)
    wire = transport_encap(udp(9, b"secret", str(SA_SRC), str(SA_DST)), sa, 1.0)
    pcap = tmp_path / "bad.pcap"
    write_pcap(pcap, [wire])
    wrong = SaParams(**{**{f: getattr(sa.params, f) for f in sa.params.__dataclass_fields__},
                        "enc_key": bytes(20)})
    [line] = run_tshark(pcap, wireshark_rows([wrong]), ["esp.icv_good", "udp.dstport"])
    assert line["esp.icv_good"] not in ("1", "True")
    assert line["udp.dstport"] == ""
