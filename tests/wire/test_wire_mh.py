"""Mobility Header codec: round trips, layout rules, scapy and tshark cross-checks."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv6Address

import pytest
from hypothesis import given
from scapy.all import raw, wrpcap
from scapy.layers.inet6 import (
    HAO,
    MIP6MH_BA,
    MIP6MH_BE,
    MIP6MH_BRR,
    MIP6MH_BU,
    IPv6,
    IPv6ExtHdrDestOpt,
    MIP6MH_Generic,
    MIP6OptAltCoA,
    MIP6OptBRAdvice,
    MIP6OptNonceIndices,
    MIP6OptUnknown,
    Pad1,
    PadN,
    in6_chksum,
)
from wire_strategies import DST, DST_A, SRC, SRC_A, mobility_messages

from vmip.wire import mh
from vmip.wire.errors import ChecksumError, FieldValueError, WireError

HOA = IPv6Address("2001:db8:aaaa::1")
COA = IPv6Address("2001:db8:c0a::1")
NONCE = bytes.fromhex("0123456789abcdef")


def _scapy(message: mh.MobilityMessage) -> IPv6:
    """Our packet as scapy dissects it."""
    return IPv6(mh.build_mh_packet(message, SRC_A, DST_A))


def _mh_checksum_valid(packet: bytes) -> bool:
    """Independent check with scapy's RFC 8200 §8.1 implementation."""
    theirs = IPv6(packet)
    return in6_chksum(135, theirs.payload, packet[40:]) == 0


# --- round trips -------------------------------------------------------------


@given(mobility_messages)
def test_every_message_round_trips_with_valid_layout(message):
    data = mh.build_mh(message, SRC_A, DST_A)
    assert len(data) % 8 == 0  # RFC 6275 §6.1.1
    assert data[1] == len(data) // 8 - 1
    assert data[0] == 59 and data[2] == message.mh_type
    assert mh.parse_mh(data, SRC_A, DST_A) == message
    packet = mh.build_mh_packet(message, SRC_A, DST_A)
    assert _mh_checksum_valid(packet)


@given(mobility_messages)
def test_every_option_sits_at_its_alignment(message):
    data = mh.build_mh(message, SRC_A, DST_A)
    fixed = {0: 2, 5: 6, 6: 6, 7: 18, 30: 2, 31: 2, 32: 2, 33: 2}.get(data[2])
    if fixed is None:
        return
    # Walk the options independently of the codec and check every offset.
    offset = 6 + fixed
    alignment = {2: (2, 0), 3: (8, 6), 88: (8, 6)}
    while offset < len(data):
        option_type = data[offset]
        if option_type == 0:
            offset += 1
            continue
        if option_type in alignment:
            x, y = alignment[option_type]
            assert offset % x == y, f"option {option_type} at {offset}"
        offset += 2 + data[offset + 1]
    assert offset == len(data)


def test_named_constants_match_rfc_and_draft():
    assert mh.BindingAckStatus.ACCEPTED == 0
    assert mh.BindingAckStatus.NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE == 133
    assert mh.BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW == 135
    assert mh.BindingAckStatus.REGISTRATION_TYPE_CHANGE_DISALLOWED == 139
    assert [mh.MHType.AOTO, mh.MHType.AOTC, mh.MHType.AOTR, mh.MHType.AOTS] == [30, 31, 32, 33]
    assert mh.MobilityOptionType.NONCE == 88
    assert (mh.AotStatusCode.AOTO_NOT_ALLOWED, mh.AotStatusCode.PROOF_VALID) == (0, 1)


# --- vmip -> scapy -----------------------------------------------------------


def test_binding_update_in_scapy():
    message = mh.BindingUpdate(
        0xBEEF,
        75,
        ack=True,
        home_registration=True,
        link_local_compatibility=True,
        key_management_mobility=True,
        options=(mh.AlternateCareOfAddress(COA),),
    )
    theirs = _scapy(message)
    bu = theirs[MIP6MH_BU]
    assert (bu.seq, bu.mhtime, bu.nh) == (0xBEEF, 75, 59)
    assert {"A", "H", "L", "K"} <= set(str(bu.flags)) and "M" not in str(bu.flags)
    assert theirs[MIP6OptAltCoA].acoa == str(COA)
    assert _mh_checksum_valid(raw(theirs))
    flags_off = _scapy(mh.BindingUpdate(1, 2))[MIP6MH_BU].flags
    assert int(flags_off) == 0


def test_binding_ack_in_scapy():
    message = mh.BindingAck(
        mh.BindingAckStatus.NOT_HOME_SUBNET,
        42,
        900,
        key_management_mobility=True,
        options=(mh.BindingRefreshAdvice(300),),
    )
    theirs = _scapy(message)
    ba = theirs[MIP6MH_BA]
    assert (ba.status, ba.seq, ba.mhtime) == (132, 42, 900)
    assert "K" in str(ba.flags)
    assert theirs[MIP6OptBRAdvice].rinter == 300
    assert _mh_checksum_valid(raw(theirs))


def test_binding_error_and_brr_in_scapy():
    theirs = _scapy(mh.BindingError(mh.BindingErrorStatus.UNRECOGNIZED_MH_TYPE, HOA))
    assert (theirs[MIP6MH_BE].status, theirs[MIP6MH_BE].ha) == (2, str(HOA))
    assert _mh_checksum_valid(raw(theirs))
    theirs = _scapy(mh.BindingRefreshRequest())
    assert theirs[MIP6MH_BRR].mhtype == 0 and theirs[MIP6MH_BRR].len == 0
    assert _mh_checksum_valid(raw(theirs))


@pytest.mark.parametrize(
    ("message", "mh_type", "header_len"),
    [
        (mh.AotOffer(), 30, 0),
        (mh.AotChallenge(NONCE), 31, 2),
        (mh.AotResponse(NONCE), 32, 2),
        (mh.AotStatus(mh.AotStatusCode.PROOF_VALID), 33, 0),
    ],
)
def test_aot_messages_as_scapy_generic_mh(message, mh_type, header_len):
    packet = mh.build_mh_packet(message, SRC_A, DST_A)
    theirs = IPv6(packet)[MIP6MH_Generic]
    assert (theirs.mhtype, theirs.len, theirs.nh) == (mh_type, header_len, 59)
    assert _mh_checksum_valid(packet)
    # Recompute with scapy (checksum field cleared) and compare.  scapy's
    # generic message dissects 8 octets too few into ``msg``: take the raw bytes.
    rebuilt = IPv6(src=SRC, dst=DST) / MIP6MH_Generic(mhtype=mh_type, msg=packet[46:])
    assert IPv6(raw(rebuilt))[MIP6MH_Generic].cksum == theirs.cksum


def test_aotc_layout_follows_the_draft():
    data = mh.build_mh(mh.AotChallenge(NONCE), SRC_A, DST_A)
    # 6-byte MH header, 2 reserved, PadN of 6 (to reach 8n+6), Nonce type 88 length 8.
    assert data[6:8] == b"\x00\x00"
    assert data[8:14] == bytes([1, 4, 0, 0, 0, 0])
    assert data[14:16] == bytes([88, 8]) and data[16:24] == NONCE
    assert len(data) == 24


def test_aots_code_is_the_high_nibble():
    data = mh.build_mh(mh.AotStatus(mh.AotStatusCode.PROOF_VALID), SRC_A, DST_A)
    assert data[6:8] == b"\x10\x00"
    assert mh.parse_mh(data[:6] + b"\x0f\xff" + data[8:]) == mh.AotStatus(0)


# --- scapy -> vmip -----------------------------------------------------------


def test_scapy_binding_update_parses():
    theirs = raw(
        IPv6(src=SRC, dst=DST)
        / MIP6MH_BU(seq=513, flags="AK", mhtime=15, options=[MIP6OptAltCoA(acoa=str(COA))])
    )
    parsed = mh.parse_mh(theirs[40:], SRC_A, DST_A)
    assert parsed == mh.BindingUpdate(
        513, 15, ack=True, key_management_mobility=True, options=(mh.AlternateCareOfAddress(COA),)
    )
    assert parsed.alternate_care_of_address == COA and parsed.lifetime_seconds == 60


def test_scapy_binding_ack_parses():
    theirs = raw(
        IPv6(src=SRC, dst=DST)
        / MIP6MH_BA(status=135, flags=0, seq=77, mhtime=0, options=[MIP6OptBRAdvice(rinter=12)])
    )
    parsed = mh.parse_mh(theirs[40:], SRC_A, DST_A)
    assert parsed == mh.BindingAck(135, 77, 0, False, (mh.BindingRefreshAdvice(12),))
    assert not parsed.accepted and parsed.refresh_advice.interval_seconds == 48


def test_scapy_binding_error_and_brr_parse():
    theirs = raw(IPv6(src=SRC, dst=DST) / MIP6MH_BE(status=1, ha=str(HOA)))
    assert mh.parse_mh(theirs[40:], SRC_A, DST_A) == mh.BindingError(1, HOA)
    theirs = raw(IPv6(src=SRC, dst=DST) / MIP6MH_BRR())
    assert mh.parse_mh(theirs[40:], SRC_A, DST_A) == mh.BindingRefreshRequest()


def test_scapy_generic_aot_messages_parse():
    base = IPv6(src=SRC, dst=DST)
    # AOTC with the nonce reached through six Pad1 options rather than one PadN.
    challenge = bytes(2) + bytes(6) + bytes([88, 8]) + NONCE
    parsed = mh.parse_mh(raw(base / MIP6MH_Generic(mhtype=31, msg=challenge))[40:], SRC_A, DST_A)
    assert parsed == mh.AotChallenge(NONCE)
    parsed = mh.parse_mh(raw(base / MIP6MH_Generic(mhtype=32, msg=challenge))[40:], SRC_A, DST_A)
    assert parsed == mh.AotResponse(NONCE)
    offer = raw(base / MIP6MH_Generic(mhtype=30, msg=b"\x00\x00"))
    assert mh.parse_mh(offer[40:], SRC_A, DST_A) == mh.AotOffer()
    status = raw(base / MIP6MH_Generic(mhtype=33, msg=b"\x00\x00"))
    assert mh.parse_mh(status[40:], SRC_A, DST_A) == mh.AotStatus(mh.AotStatusCode.AOTO_NOT_ALLOWED)


def test_unknown_options_are_skipped():
    # scapy's Nonce Indices defaults to olen 16 (RFC 6275 says 4): give it 4.
    theirs = raw(
        IPv6(src=SRC, dst=DST)
        / MIP6MH_BU(
            seq=1,
            options=[
                MIP6OptNonceIndices(olen=4, hni=1, coni=2),
                MIP6OptUnknown(otype=200, odata=b"\xaa\xbb"),
                MIP6OptAltCoA(acoa=str(COA)),
            ],
        )
    )
    parsed = mh.parse_mh(theirs[40:], SRC_A, DST_A)
    assert parsed.alternate_care_of_address == COA
    assert mh.UnknownMobilityOption(4, b"\x00\x01\x00\x02") in parsed.options
    assert mh.UnknownMobilityOption(200, b"\xaa\xbb") in parsed.options


def test_unknown_mh_type_is_generic():
    theirs = raw(IPv6(src=SRC, dst=DST) / MIP6MH_Generic(mhtype=1, msg=bytes(2) + b"cookie!!"))
    # HoTI (type 1) is not implemented: it comes back raw.
    parsed = mh.parse_mh(theirs[40:], SRC_A, DST_A)
    assert parsed == mh.UnknownMobilityMessage(1, bytes(2) + b"cookie!!")


def test_checksum_with_home_address_option_from_scapy():
    # RFC 6275 §6.1.1/§6.3: the pseudo-header uses the home address.
    built = (
        IPv6(src=str(COA), dst=DST)
        / IPv6ExtHdrDestOpt(options=[HAO(hoa=str(HOA))])
        / MIP6MH_BU(seq=5, options=[MIP6OptAltCoA(acoa=str(COA))])
    )
    data = raw(built)
    from vmip.wire.ipv6 import parse_ipv6

    parsed = parse_ipv6(data)
    src, dst = parsed.checksum_addresses()
    assert mh.parse_mh(parsed.upper_layer, src, dst).sequence == 5
    with pytest.raises(ChecksumError):
        mh.parse_mh(parsed.upper_layer, COA, DST_A)


# --- rejection ---------------------------------------------------------------


def test_rejections():
    good = mh.build_mh(mh.BindingUpdate(1, 1), SRC_A, DST_A)
    with pytest.raises(ChecksumError):
        mh.parse_mh(good, DST_A, SRC_A + 1)
    with pytest.raises(mh.MobilityHeaderError) as caught:
        mh.parse_mh(bytes([6]) + good[1:])  # Payload Proto must be 59
    assert caught.value.pointer == 0
    short_bu = bytes([59, 0, 5, 0, 0, 0, 0, 0])  # a BU needs Header Len >= 1
    with pytest.raises(mh.MobilityHeaderError) as caught:
        mh.parse_mh(short_bu)
    assert caught.value.pointer == 1
    with pytest.raises(WireError):
        mh.parse_mh(good[:-1])
    no_nonce = bytes([59, 0, 31, 0, 0, 0, 0, 0])
    with pytest.raises(WireError):
        mh.parse_mh(no_nonce)
    bad_altcoa = bytes([59, 1, 5, 0, 0, 0]) + bytes(6) + bytes([3, 2, 0, 0])
    with pytest.raises(WireError):
        mh.parse_mh(bad_altcoa)


def test_builders_reject_unencodable_values():
    with pytest.raises(FieldValueError):
        mh.BindingUpdate(70000, 1)
    with pytest.raises(FieldValueError):
        mh.AotChallenge(b"short")
    with pytest.raises(FieldValueError):
        mh.AotStatus(16)
    with pytest.raises(FieldValueError):
        mh.UnknownMobilityOption(1, b"")


# --- tshark, a second independent dissector ------------------------------------


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_dissects_our_messages(tmp_path):
    messages = [
        mh.BindingUpdate(7, 100, ack=True, options=(mh.AlternateCareOfAddress(COA),)),
        mh.BindingAck(0, 7, 100, options=(mh.BindingRefreshAdvice(10),)),
        mh.BindingError(2, HOA),
        mh.BindingRefreshRequest(),
        mh.AotOffer(),
        mh.AotChallenge(NONCE),
        mh.AotResponse(NONCE),
        mh.AotStatus(1),
    ]
    pcap = tmp_path / "mh.pcap"
    wrpcap(str(pcap), [IPv6(mh.build_mh_packet(m, SRC_A, DST_A)) for m in messages])
    fields = [
        "mip6.mhtype",
        "mip6.hlen",
        "mip6.proto",
        "mip6.bu.seqnr",
        "mip6.bu.a_flag",
        "mip6.bu.lifetime",
        "mip6.acoa.acoa",
        "mip6.ba.status",
        "mip6.ba.lifetime",
        "mip6.bra.interval",
        "mip6.be.status",
        "mip6.be.haddr",
    ]
    command = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    rows = [dict(zip(fields, line.split("|"))) for line in result.stdout.splitlines()]
    assert [row["mip6.mhtype"] for row in rows] == ["5", "6", "7", "0", "30", "31", "32", "33"]
    assert [row["mip6.hlen"] for row in rows] == ["3", "1", "2", "0", "0", "2", "2", "0"]
    assert {row["mip6.proto"] for row in rows} == {"59"}
    bu, ba, be = rows[0], rows[1], rows[2]
    assert (bu["mip6.bu.seqnr"], bu["mip6.bu.a_flag"], bu["mip6.bu.lifetime"]) == ("7", "1", "100")
    assert bu["mip6.acoa.acoa"] == str(COA)
    assert (ba["mip6.ba.status"], ba["mip6.ba.lifetime"], ba["mip6.bra.interval"]) == (
        "0",
        "100",
        "10",
    )
    assert (be["mip6.be.status"], be["mip6.be.haddr"]) == ("2", str(HOA))


def test_pad_options_from_scapy_are_accepted():
    theirs = raw(
        IPv6(src=SRC, dst=DST)
        / MIP6MH_BRR(autopad=0, options=[Pad1(), Pad1(), PadN(optdata=bytes(4))])
    )
    assert mh.parse_mh(theirs[40:], SRC_A, DST_A) == mh.BindingRefreshRequest()


def test_ipv4_addresses_are_refused_for_the_pseudo_header():
    from ipaddress import IPv4Address

    with pytest.raises(FieldValueError):
        mh.build_mh(mh.AotOffer(), IPv4Address("192.0.2.1"), DST_A)
