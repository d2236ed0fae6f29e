"""Printing what the node answers: rich tables for people, JSON for scripts.

The CLI commands that query a node (``vmip status``, ``vmip sa list``,
``vmip spd list``, ``vmip locators``, ``vmip counters``) get a list of dicts
over the control socket and hand it here with the columns they want, in
their order::

    print_rows(sas, [Column("spi", "SPI", kind="hex"), "peer",
                     Column("bytes", kind="bytes"), Column("age", kind="duration")],
               as_json=args.json, title="Security associations")

With ``--json`` the rows are printed whole (every key, raw values) so that
scripts never parse a table; in a table each value goes through the
formatter of its column's *kind*.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vmip.control.protocol import to_json_value

#: What a table shows for a missing or null value.
MISSING: Final = "-"

Justify = Literal["left", "center", "right"]


# -- value formatters ---------------------------------------------------------

_BINARY_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: int | float) -> str:
    """Byte counts in binary units: ``512 B``, ``1.5 KiB``, ``12 MiB``."""
    value = float(count)
    sign = "-" if value < 0 else ""
    value = abs(value)
    unit = 0
    while value >= 1024 and unit < len(_BINARY_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{sign}{int(value)} B"
    return f"{sign}{value:.1f} {_BINARY_UNITS[unit]}" if value < 10 else \
        f"{sign}{value:.0f} {_BINARY_UNITS[unit]}"


def format_bitrate(bits_per_second: int | float) -> str:
    """Rates in decimal units, as networks count them: ``950 bit/s``, ``1.2 Mbit/s``."""
    value = float(bits_per_second)
    units = ("bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s")
    unit = 0
    while abs(value) >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    if unit == 0 or abs(value) >= 10:
        return f"{value:.0f} {units[unit]}"
    return f"{value:.1f} {units[unit]}"


def format_duration(seconds: int | float) -> str:
    """Durations the way people read them: ``250 µs``, ``35 ms``, ``4.2 s``, ``5m 03s``, ``2h 05m``, ``3d 04h``."""
    value = float(seconds)
    if math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "forever" if value > 0 else "-forever"
    if value < 0:
        return "-" + format_duration(-value)
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.0f} ms"
    if value < 10:
        return f"{value:.1f} s"
    whole = int(value)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def format_address(value: Any) -> str:
    """An address in its canonical text form (RFC 5952 for IPv6).

    Accepts ``ipaddress`` objects, packed bytes (4 or 16), text, and
    ``(host, port)`` endpoints, shown as ``[2001:db8::1]:6275`` or
    ``192.0.2.1:4500``.  Text that is not an address (an interface name, a
    hostname) is shown as it is.
    """
    if isinstance(value, (tuple, list)) and len(value) == 2:
        host, port = format_address(value[0]), value[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(value, (bytes, bytearray)) and len(value) in (4, 16):
        return str(ipaddress.ip_address(bytes(value)))
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
        try:
            return str(ipaddress.ip_interface(value))
        except ValueError:
            return value
    return str(value)


def format_count(value: int | float) -> str:
    """Packet and event counts with thousands separators: ``1,234,567``."""
    return f"{value:,}"


def format_hex(value: int) -> str:
    """SPIs and similar 32-bit identifiers: ``0x00001234``."""
    return f"0x{value:08x}"


def format_bool(value: Any) -> str:
    return "yes" if value else "no"


FORMATTERS: Final[dict[str, Callable[[Any], str]]] = {
    "text": str,
    "bytes": format_bytes,
    "bitrate": format_bitrate,
    "duration": format_duration,
    "address": format_address,
    "count": format_count,
    "hex": format_hex,
    "bool": format_bool,
}

# Numbers line up on the right, like in every `ip -s` or `ss` listing.
_RIGHT_ALIGNED: Final = frozenset({"bytes", "bitrate", "duration", "count"})


# -- columns ------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of a table: which key, what header, how to format its values.

    ``kind`` picks a formatter from :data:`FORMATTERS`; ``formatter`` overrides
    it for a one-off.  A value that a formatter cannot handle is shown as it
    is rather than failing the whole listing.
    """

    key: str
    header: str | None = None
    kind: str = "text"
    justify: Justify | None = None
    formatter: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        if self.formatter is None and self.kind not in FORMATTERS:
            raise ValueError(f"unknown column kind {self.kind!r}; "
                             f"known: {', '.join(sorted(FORMATTERS))}")

    @property
    def title(self) -> str:
        return self.header if self.header is not None else self.key.replace("_", " ").upper()

    @property
    def alignment(self) -> Justify:
        if self.justify is not None:
            return self.justify
        return "right" if self.kind in _RIGHT_ALIGNED else "left"

    def cell(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.key)
        if value is None:
            return MISSING
        format_value = self.formatter or FORMATTERS[self.kind]
        try:
            return format_value(value)
        except (TypeError, ValueError, OverflowError):
            return str(value)


ColumnSpec = Column | str


def _as_columns(columns: Sequence[ColumnSpec]) -> list[Column]:
    return [c if isinstance(c, Column) else Column(c) for c in columns]


# -- output -------------------------------------------------------------------


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` option every listing command offers."""
    parser.add_argument("--json", action="store_true",
                        help="print JSON (complete, raw values) instead of a table")


def dumps_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=to_json_value, ensure_ascii=False)


def print_json(data: Any, file: IO[str] | None = None) -> None:
    out = file if file is not None else sys.stdout
    out.write(dumps_json(data) + "\n")


def build_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[ColumnSpec], *,
                title: str | None = None) -> Table:
    cols = _as_columns(columns)
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in cols:
        table.add_column(column.title, justify=column.alignment, no_wrap=column.kind != "text")
    for row in rows:
        # Text, not str: rich would otherwise read "[...]" in values as markup.
        table.add_row(*(Text(column.cell(row)) for column in cols))
    return table


def print_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[ColumnSpec], *,
               as_json: bool = False, title: str | None = None,
               empty: str = "(none)", console: Console | None = None,
               file: IO[str] | None = None) -> None:
    """A list of records as a table, or as JSON when *as_json* (the whole rows)."""
    if as_json:
        print_json(list(rows), file=file)
        return
    console = console or Console(file=file)
    if not rows:
        console.print(Text(f"{title}: {empty}" if title else empty))
        return
    console.print(build_table(rows, columns, title=title))


def print_record(record: Mapping[str, Any], fields: Sequence[ColumnSpec], *,
                 as_json: bool = False, title: str | None = None,
                 console: Console | None = None, file: IO[str] | None = None) -> None:
    """One record (``vmip status``) as a two-column field/value table, or as JSON."""
    if as_json:
        print_json(dict(record), file=file)
        return
    console = console or Console(file=file)
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for column in _as_columns(fields):
        table.add_row(Text(column.header or column.key.replace("_", " ")),
                      Text(column.cell(record)))
    console.print(table)
