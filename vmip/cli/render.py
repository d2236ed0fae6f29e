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
formatter of its column's *kind*.  A column given by its key alone gets the
kind that key always has (:data:`KEY_KINDS`: ``spi`` is hex, ``selector``
is spelled out, ``confirmed_ago`` reads "2.3 s ago", a monotonic
``last_confirmed`` is left out of tables).

Tables never cut a cell short: columns get their natural width when the
terminal (80 columns for a pipe) allows, else text wraps between words; a
table whose words alone do not fit becomes one block of ``field value``
lines per row.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vmip.control.protocol import to_json_value
from vmip.humanize import MISSING, event_value, format_ago, format_duration
from vmip.wire import proto

__all__ = ["MISSING", "event_value", "format_ago", "format_duration"]

Justify = Literal["left", "center", "right"]


# -- value formatters ---------------------------------------------------------

_BINARY_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: float) -> str:
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


def format_bitrate(bits_per_second: float) -> str:
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


def format_count(value: float) -> str:
    """Packet and event counts with thousands separators: ``1,234,567``."""
    return f"{value:,}"


def format_hex(value: int) -> str:
    """SPIs and similar 32-bit identifiers: ``0x00001234``."""
    return f"0x{value:08x}"


def format_bool(value: Any) -> str:
    return "yes" if value else "no"


def format_milliseconds(value: float) -> str:
    """A time given in milliseconds (a smoothed RTT): ``12 ms``, ``1.3 s``."""
    return format_duration(float(value) / 1000)


def format_percent(value: float) -> str:
    """A fraction 0..1 (a loss rate) in percent: ``0%``, ``0.5%``, ``12%``."""
    percent = float(value) * 100
    if percent == 0:
        return "0%"
    return f"{percent:.1f}%" if abs(percent) < 10 else f"{percent:.0f}%"


#: Protocol numbers people know by name (IANA "Protocol Numbers").
PROTOCOL_NAMES: Final = {proto.ICMP: "icmp", proto.TCP: "tcp", proto.UDP: "udp",
                         proto.ICMPV6: "icmpv6", proto.MOBILITY: "mh"}


def _selector_fields(value: Any) -> dict[str, Any]:
    """The fields of a selector, as a node sends them (a mapping)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(value)


def _range(value: Any) -> str:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = value
        return str(low) if low == high else f"{low}-{high}"
    return str(value)


def format_selector(value: Any, direction: str | None = None) -> str:
    """An SPD selector as people write it: ``2001:db8::1/128 → ::/0 proto udp dport 7``.

    The arrow follows the packets: local → remote for outbound policies,
    remote → local for inbound ones; ``sport``/``dport`` follow the arrow.
    """
    fields = _selector_fields(value)
    local = str(fields.get("local") or "any")
    remote = str(fields.get("remote") or "any")
    local_ports, remote_ports = fields.get("local_ports"), fields.get("remote_ports")
    if direction == "in":
        parts = [f"{remote} → {local}"]
        sport, dport = remote_ports, local_ports
    else:
        parts = [f"{local} → {remote}"]
        sport, dport = local_ports, remote_ports
    proto = fields.get("proto")
    if proto is not None:
        parts.append(f"proto {PROTOCOL_NAMES.get(proto, proto)}")
    for name, ports in (("sport", sport), ("dport", dport)):
        if ports is not None:
            parts.append(f"{name} {_range(ports)}")
    for key, name in (("icmp_type", "type"), ("icmp_code", "code"), ("mh_type", "mh type")):
        if fields.get(key) is not None:
            parts.append(f"{name} {_range(fields[key])}")
    return " ".join(parts)


def format_sa_bundle(value: Any) -> str:
    """SA names as they are, SPIs (numbers) in hex."""
    items = value if isinstance(value, (list, tuple)) else \
        [item for item in str(value).split(", ") if item]
    out = []
    for item in items:
        text = str(item)
        out.append(format_hex(int(text)) if text.isascii() and text.isdigit() else text)
    return ", ".join(out) if out else MISSING


FORMATTERS: Final[dict[str, Callable[[Any], str]]] = {
    "text": str,
    "bytes": format_bytes,
    "bitrate": format_bitrate,
    "duration": format_duration,
    "address": format_address,
    "count": format_count,
    "hex": format_hex,
    "bool": format_bool,
    "milliseconds": format_milliseconds,
    "percent": format_percent,
    "ago": format_ago,
    "selector": format_selector,
    "sa_bundle": format_sa_bundle,
    # Left out of tables (JSON keeps it): a monotonic clock reading means nothing to people.
    "hidden": str,
}

#: The kind of a column named by its key alone: keys mean the same in every listing.
KEY_KINDS: Final[dict[str, str]] = {
    "spi": "hex", "spi_in": "hex", "spi_out": "hex",
    "selector": "selector", "sa": "sa_bundle",
    "confirmed_ago": "ago", "last_confirmed": "hidden",
    "packets": "count", "bytes": "bytes", "uptime_s": "duration", "age_s": "duration",
    "default": "bool", "priority": "count",
    # Link quality (vmip.node.quality): smoothed RTT and variation, loss rate.
    "srtt_ms": "milliseconds", "rttvar_ms": "milliseconds", "score_ms": "milliseconds",
    "loss": "percent", "best": "bool", "samples": "count",
}
#: Headers for keys whose name says less than it could in a table.
KEY_HEADERS: Final[dict[str, str]] = {"confirmed_ago": "CONFIRMED", "uptime_s": "UPTIME",
                                      "age_s": "AGE", "direction": "DIR", "priority": "PRIO",
                                      "srtt_ms": "RTT", "rttvar_ms": "RTTVAR",
                                      "score_ms": "SCORE"}

# Numbers line up on the right, like in every `ip -s` or `ss` listing.
_RIGHT_ALIGNED: Final = frozenset({"bytes", "bitrate", "duration", "count", "ago",
                                   "milliseconds", "percent"})


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
        try:
            if self.formatter is None and self.kind == "selector":
                # Which way the arrow points depends on the policy's direction.
                return format_selector(value, row.get("direction"))
            return (self.formatter or FORMATTERS[self.kind])(value)
        except (TypeError, ValueError, OverflowError):
            return str(value)


ColumnSpec = Column | str


def _as_columns(columns: Sequence[ColumnSpec]) -> list[Column]:
    return [c if isinstance(c, Column)
            else Column(c, KEY_HEADERS.get(c), kind=KEY_KINDS.get(c, "text")) for c in columns]


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


#: Between two columns of a table: one space of padding each side, no divider
#: (like ``ps`` or ``ss``: uppercase headers are enough to read by).
_GAP: Final = 2
_WORD = re.compile(r"\S+")


def _longest_word(text: str) -> int:
    return max((len(word) for word in _WORD.findall(text)), default=0)


def column_widths(titles: Sequence[str], cells: Sequence[Sequence[str]],
                  width: int) -> list[int] | None:
    """Widths that fit *width* without breaking a word, or ``None`` if none do.

    Every column starts at its longest word (or its title); the room left is
    shared in proportion to what each column would need to show its cells on
    one line.
    """
    natural = [max([len(title), *(len(row[i]) for row in cells)]) for i, title in
               enumerate(titles)]
    minimum = [max([len(title), *(_longest_word(row[i]) for row in cells)]) for i, title in
               enumerate(titles)]
    room = width - _GAP * (len(titles) - 1)
    if sum(natural) <= room:
        return natural
    if sum(minimum) > room:
        return None
    widths = list(minimum)
    spare = room - sum(minimum)
    wants = [n - m for n, m in zip(natural, minimum, strict=True)]
    total = sum(wants)
    for i, want in enumerate(wants):
        widths[i] += want * spare // total
    # Hand out what integer division left, to the columns still short.
    left = room - sum(widths)
    for i in sorted(range(len(widths)), key=lambda i: natural[i] - widths[i], reverse=True):
        if left <= 0:
            break
        if widths[i] < natural[i]:
            widths[i] += 1
            left -= 1
    return widths


def build_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[ColumnSpec], *,
                title: str | None = None, width: int | None = None) -> Table:
    """A table of *rows*; with *width*, one whose cells wrap between words to fit it.

    Raises ``ValueError`` when the words alone do not fit *width*
    (:func:`print_rows` then prints one block per row instead).
    """
    cols = [c for c in _as_columns(columns) if c.kind != "hidden"]
    cells = [[column.cell(row) for column in cols] for row in rows]
    widths = None
    if width is not None:
        widths = column_widths([c.title for c in cols], cells, width)
        if widths is None:
            raise ValueError(f"the table needs more than {width} columns")
    table = Table(title=title, title_justify="left", header_style="bold", box=None,
                  pad_edge=False)
    for i, column in enumerate(cols):
        table.add_column(column.title, justify=column.alignment, overflow="fold",
                         width=widths[i] if widths else None)
    for row in cells:
        # Text, not str: rich would otherwise read "[...]" in values as markup.
        table.add_row(*(Text(cell) for cell in row))
    return table


def build_records(rows: Sequence[Mapping[str, Any]], columns: Sequence[ColumnSpec], *,
                  title: str | None = None) -> Table:
    """One ``field value`` block per row: for tables too wide for the terminal."""
    cols = [c for c in _as_columns(columns) if c.kind != "hidden"]
    table = Table(title=title, title_justify="left", show_header=False, box=None,
                  pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for index, row in enumerate(rows):
        if index:
            table.add_row("", "")
        for column in cols:
            label = (column.header or column.key.replace("_", " ")).lower()
            table.add_row(Text(label), Text(column.cell(row)))
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
    try:
        table = build_table(rows, columns, title=title, width=console.width)
    except ValueError:
        table = build_records(rows, columns, title=title)
    _print(console, table)


def _print(console: Console, renderable: Any) -> None:
    if console.is_terminal:
        console.print(renderable)
        return
    # A pipe or a file: no padding at the ends of lines for grep, diff and cut.
    with console.capture() as capture:
        console.print(renderable)
    console.file.write("".join(line.rstrip() + "\n" for line in
                               capture.get().splitlines()))


def print_record(record: Mapping[str, Any], fields: Sequence[ColumnSpec], *,
                 as_json: bool = False, title: str | None = None,
                 console: Console | None = None, file: IO[str] | None = None) -> None:
    """One record (``vmip status``) as a two-column field/value table, or as JSON."""
    if as_json:
        print_json(dict(record), file=file)
        return
    console = console or Console(file=file)
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for column in _as_columns(fields):
        table.add_row(Text(column.header or column.key.replace("_", " ")),
                      Text(column.cell(record)))
    _print(console, table)
