"""Binding Identifier mobility option (RFC 5648 §6.1): layout, round trips, tshark."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import wrpcap
from scapy.layers.inet6 import IPv6
from wire_strategies import DST_A, SRC_A, mutations

from vmip.wire import mh
from vmip.wire._tlv import padding
from vmip.wire.errors import FieldValueError, WireError

COA = IPv6Address("2001:db8:c0a::1")


def _bu(*options: mh.MobilityOption) -> mh.BindingUpdate:
    return mh.BindingUpdate(7, 100, ack=True, home_registration=True,
                            options=(mh.AlternateCareOfAddress(COA), *options))


def _option_bytes(option: mh.BindingIdentifier) -> bytes:
    """The option's TLV as laid out in a BU (found after the AltCoA)."""
    data = mh.build_mh(_bu(option), SRC_A, DST_A)
    offset = data.index(bytes((35,)), 12 + 18)
    return data[offset: offset + 2 + data[offset + 1]]


def test_layout_follows_rfc5648_figure():
    # Type 35, Len 4, BID, Status, H|O|reserved (RFC 5648 §6.1).
    assert _option_bytes(mh.BindingIdentifier(0x0102, 0, overwrite=True)) == bytes.fromhex(
        "2304" "0102" "00" "40")
    assert _option_bytes(mh.BindingIdentifier(3, 166, simultaneous_home=True)) == bytes.fromhex(
        "2304" "0003" "a6" "80")
    # Len 8 with an IPv4 CoA, 20 with an IPv6 one.
    assert _option_bytes(mh.BindingIdentifier(1, care_of_address=IPv4Address("192.0.2.1"))) \
        == bytes.fromhex("2308" "0001" "00" "00" "c0000201")
    assert _option_bytes(mh.BindingIdentifier(1, care_of_address=COA)) == bytes.fromhex(
        "2314" "0001" "00" "00") + COA.packed


def test_option_alignment_is_2n():
    data = mh.build_mh(mh.BindingAck(0, 1, 1, options=(mh.BindingIdentifier(9),)), SRC_A, DST_A)
    offset = data.index(bytes((35, 4)), 12)
    assert offset % 2 == 0


@given(st.integers(0, 0xFFFF), st.integers(0, 255), st.booleans(), st.booleans(),
       st.one_of(st.none(), st.binary(min_size=16, max_size=16).map(IPv6Address),
                 st.binary(min_size=4, max_size=4).map(IPv4Address)))
def test_round_trip_in_bu_and_ba(bid, status, home, overwrite, address):
    option = mh.BindingIdentifier(bid, status, home, overwrite, address)
    for message in (_bu(option), mh.BindingAck(status, 3, 0, options=(option,))):
        parsed = mh.parse_mh(mh.build_mh(message, SRC_A, DST_A), SRC_A, DST_A)
        assert parsed == message
        assert parsed.binding_identifiers == (option,)


@given(st.binary(max_size=40))
def test_any_option_35_parses_or_raises_only_wire_error(value):
    # An option 35 of any length and content in a BU: a BindingIdentifier
    # for lengths 4, 8 and 20, else a MobilityHeaderError pointing at it.
    fixed = mh.BindingUpdate(1, 1).fixed()
    body = fixed + bytes((35, len(value))) + value
    body += padding((-(6 + len(body))) % 8)
    data = bytes((59, (6 + len(body)) // 8 - 1, 5, 0, 0, 0)) + body
    try:
        parsed = mh.parse_mh(data)
    except mh.MobilityHeaderError as error:
        assert len(value) not in (4, 8, 20)
        assert error.pointer == 6 + len(fixed) + 1
        return
    assert isinstance(parsed, mh.BindingUpdate)
    (option,) = parsed.binding_identifiers
    assert len(value) in (4, 8, 20)
    assert option.bid == int.from_bytes(value[:2], "big")
    assert option.status == value[2]


def test_bad_field_values_are_refused_by_the_builder():
    with pytest.raises(FieldValueError):
        mh.BindingIdentifier(0x10000)
    with pytest.raises(FieldValueError):
        mh.BindingIdentifier(1, 256)
    with pytest.raises(FieldValueError):
        mh.BindingIdentifier(1, care_of_address=b"\x01" * 16)  # type: ignore[arg-type]


def test_rfc5648_status_values_are_ianas():
    status = mh.BindingAckStatus
    assert (status.MCOA_NOTCOMPLETE, status.MCOA_RETURNHOME_WO_NDP) == (4, 5)
    assert [status.MCOA_MALFORMED, status.MCOA_NON_MCOA_BINDING_EXISTS, status.MCOA_PROHIBITED,
            status.MCOA_UNKNOWN_COA, status.MCOA_BULK_REGISTRATION_PROHIBITED,
            status.MCOA_SIMULTANEOUS_HOME_AND_FOREIGN_PROHIBITED] == list(range(164, 170))
    assert mh.MobilityOptionType.BINDING_IDENTIFIER == 35


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_dissects_the_binding_identifier(tmp_path):
    messages = [
        _bu(mh.BindingIdentifier(2, overwrite=True)),
        mh.BindingAck(165, 7, 0, options=(mh.BindingIdentifier(2, 165),)),
        _bu(mh.BindingIdentifier(513, 0, True, False, COA)),
        _bu(mh.BindingIdentifier(4, care_of_address=IPv4Address("192.0.2.7"))),
    ]
    pcap = tmp_path / "bid.pcap"
    wrpcap(str(pcap), [IPv6(mh.build_mh_packet(m, SRC_A, DST_A)) for m in messages])
    fields = ["mip6.mhtype", "mip6.ba.status", "mip6.bi.bid", "mip6.bi.status",
              "mip6.bi.h_flag", "mip6.bi.coa_ipv6", "mip6.bi.coa_ipv4", "_ws.expert"]
    command = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    rows = [dict(zip(fields, line.split("|"))) for line in result.stdout.splitlines()]
    assert [row["mip6.bi.bid"] for row in rows] == ["2", "2", "513", "4"]
    assert [row["mip6.bi.status"] for row in rows] == ["0", "165", "0", "0"]
    assert rows[1]["mip6.ba.status"] == "165"
    assert [row["mip6.bi.h_flag"] for row in rows] == ["0", "0", "1", "0"]
    assert rows[2]["mip6.bi.coa_ipv6"] == str(COA)
    assert rows[3]["mip6.bi.coa_ipv4"] == "192.0.2.7"
    assert all(row["_ws.expert"] == "" for row in rows), rows


_BID_SEEDS = [
    mh.build_mh(message, SRC_A, DST_A)
    for message in (
        _bu(mh.BindingIdentifier(2, overwrite=True)),
        _bu(mh.BindingIdentifier(5, care_of_address=COA), mh.BindingIdentifier(6)),
        mh.BindingAck(130, 9, 0, options=(mh.BindingIdentifier(3, 130),)),
        _bu(mh.BindingIdentifier(4, care_of_address=IPv4Address("192.0.2.7"))),
    )
]


@given(mutations(_BID_SEEDS))
def test_mutated_bid_messages_raise_only_wire_error(data):
    try:
        message = mh.parse_mh(data)
    except WireError:
        return
    for option in getattr(message, "options", ()):
        if isinstance(option, mh.BindingIdentifier):
            assert 0 <= option.bid <= 0xFFFF
