"""vmip.cli.render: tables for people, JSON for scripts."""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from vmip.cli.render import (
    Column,
    add_json_flag,
    format_address,
    format_bitrate,
    format_bool,
    format_bytes,
    format_count,
    format_duration,
    format_hex,
    print_record,
    print_rows,
)


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None), out


# -- formatters (expected values worked out by hand from the unit definitions) --

@pytest.mark.parametrize("count, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (10 * 1024, "10 KiB"), (5 * 1024 ** 3 // 2, "2.5 GiB"), (-2048, "-2.0 KiB"),
])
def test_format_bytes(count, text):
    assert format_bytes(count) == text


@pytest.mark.parametrize("rate, text", [
    (950, "950 bit/s"), (1500, "1.5 kbit/s"), (123_000_000, "123 Mbit/s"), (2.5e9, "2.5 Gbit/s"),
])
def test_format_bitrate(rate, text):
    assert format_bitrate(rate) == text


@pytest.mark.parametrize("seconds, text", [
    (0.00025, "250 µs"), (0.035, "35 ms"), (1.5, "1.5 s"), (42, "42 s"), (60, "1m 00s"),
    (303, "5m 03s"), (7500, "2h 05m"), (3 * 86400 + 4 * 3600 + 59, "3d 04h"),
    (-2, "-2.0 s"), (float("inf"), "forever"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@given(st.binary(min_size=16, max_size=16))
def test_format_address_of_packed_ipv6_matches_inet_ntop(packed):
    assert format_address(packed) == socket.inet_ntop(socket.AF_INET6, packed)


def test_format_address_forms():
    assert format_address("2001:DB8:0:0::0:1") == "2001:db8::1"
    assert format_address(bytes([192, 0, 2, 7])) == "192.0.2.7"
    assert format_address(ipaddress.IPv6Address("::")) == "::"
    assert format_address(("2001:db8::1", 6275)) == "[2001:db8::1]:6275"
    assert format_address(("192.0.2.1", 4500)) == "192.0.2.1:4500"
    assert format_address("2001:db8:0::5/64") == "2001:db8::5/64"
    assert format_address("wifi0") == "wifi0"


def test_small_formatters():
    assert format_count(1234567) == "1,234,567"
    assert format_hex(0x1234) == "0x00001234"
    assert format_hex(0xFFFFFFFF) == "0xffffffff"
    assert (format_bool(True), format_bool(0)) == ("yes", "no")


# -- tables -------------------------------------------------------------------

SAS = [
    {"spi": 0x1234, "peer": "2001:db8:0::1", "bytes": 1536, "age": 303, "note": "[bold]x[/bold]"},
    {"spi": 0xABCD, "peer": "2001:db8::2", "bytes": None, "age": 0.035},
]
COLUMNS = [Column("spi", "SPI", kind="hex"), Column("peer", kind="address"),
           Column("bytes", kind="bytes"), Column("age", "Age", kind="duration"), "note"]


def test_table_has_the_callers_columns_in_order_and_human_values():
    console, out = _console()
    print_rows(SAS, COLUMNS, title="Security associations", console=console)
    text = out.getvalue()
    assert "Security associations" in text
    header = next(line for line in text.splitlines() if "SPI" in line)
    positions = [header.index(title) for title in ("SPI", "PEER", "BYTES", "Age", "NOTE")]
    assert positions == sorted(positions)
    first = next(line for line in text.splitlines() if "0x00001234" in line)
    second = next(line for line in text.splitlines() if "0x0000abcd" in line)
    for cell in ("2001:db8::1", "1.5 KiB", "5m 03s", "[bold]x[/bold]"):
        assert cell in first  # markup in a value is shown literally, not interpreted
    assert "35 ms" in second
    assert second.split().count("-") == 2  # missing bytes and missing note


def test_numbers_are_right_aligned():
    console, out = _console()
    rows = [{"n": 5}, {"n": 123456}]
    print_rows(rows, [Column("n", kind="count")], console=console)
    lines = [line for line in out.getvalue().splitlines() if any(c.isdigit() for c in line)]
    ends = {len(line.rstrip().rstrip("│").rstrip()) for line in lines}
    assert len(ends) == 1


def test_json_output_is_the_whole_rows():
    out = io.StringIO()
    rows = [dict(SAS[0], extra=ipaddress.IPv6Address("2001:db8::9"))]
    print_rows(rows, COLUMNS, as_json=True, file=out)
    assert json.loads(out.getvalue()) == [dict(SAS[0], extra="2001:db8::9")]


def test_empty_listing():
    console, out = _console()
    print_rows([], COLUMNS, title="Security associations", empty="no SAs", console=console)
    assert out.getvalue().strip() == "Security associations: no SAs"
    out = io.StringIO()
    print_rows([], COLUMNS, as_json=True, file=out)
    assert json.loads(out.getvalue()) == []


def test_record():
    console, out = _console()
    status = {"role": "mn", "hoa": "2001:db8:0::5", "uptime": 3725}
    print_record(status, ["role", Column("hoa", "home address", kind="address"),
                          Column("uptime", kind="duration")], title="node", console=console)
    lines = out.getvalue().splitlines()
    assert any("home address" in line and "2001:db8::5" in line for line in lines)
    assert any("uptime" in line and "1h 02m" in line for line in lines)
    out = io.StringIO()
    print_record(status, ["role"], as_json=True, file=out)
    assert json.loads(out.getvalue()) == status


def test_a_value_the_formatter_cannot_take_is_shown_as_is():
    assert Column("bytes", kind="bytes").cell({"bytes": "n/a"}) == "n/a"
    assert Column("spi", kind="hex").cell({"spi": "0x12"}) == "0x12"


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown column kind"):
        Column("x", kind="furlongs")


def test_json_flag():
    parser = argparse.ArgumentParser()
    add_json_flag(parser)
    assert parser.parse_args(["--json"]).json is True
    assert parser.parse_args([]).json is False


def test_a_pipe_gets_no_padding_at_line_ends():
    console, out = _console()
    print_rows(SAS, COLUMNS, title="Security associations", console=console)
    print_record({"role": "mn"}, ["role"], console=console)
    lines = out.getvalue().splitlines()
    assert lines and all(line == line.rstrip() for line in lines)
