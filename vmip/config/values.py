"""How one config value is read: TOML value -> typed value, or one ConfigError.

Each parser is a callable ``(ctx, path, value) -> typed value``: ``path`` is
the dotted key for messages (``link[1].coa``), ``ctx`` the file being read.
The model (:mod:`vmip.config.model`) names a parser per key in its field
metadata; the loader (:mod:`vmip.config.loader`) runs them.  The ``show_*``
functions go the other way, for the effective config.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from enum import Enum
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from vmip.config.errors import ConfigError
from vmip.wire import proto

T = TypeVar("T")
E = TypeVar("E", bound=Enum)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Interface = IPv4Interface | IPv6Interface
#: Inclusive (low, high); ``None`` stands for "any port".
PortRange = tuple[int, int]

#: Protocol names accepted in policies (IANA protocol numbers).
PROTOCOL_NUMBERS: dict[str, int] = {"tcp": proto.TCP, "udp": proto.UDP, "icmpv6": proto.ICMPV6,
                                    "mh": proto.MOBILITY}
_PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
MAX_REPLAY_WINDOW = 1 << 20

#: "Not in the file" (TOML has no null, so None cannot say it).
MISSING: Any = object()


# --------------------------------------------------------------------------
# Where we are, how to complain


class Context:
    """The file being read: names it in errors, anchors its relative paths."""

    def __init__(self, file: str, check_key_files: bool):
        self.file = file
        self.check_key_files = check_key_files
        source = Path(os.path.abspath(file)) if file else Path(os.getcwd()) / "config.toml"
        self.source = source
        self.base = source.parent
        #: The config's directory as the user would write it, for messages.
        self.shown_base = os.path.dirname(file)

    def fail(self, key: str | None, problem: str, hint: str) -> NoReturn:
        raise ConfigError(self.file, key, problem, hint)

    def resolve(self, value: str) -> Path:
        return Path(os.path.normpath(self.base / value))

    def shown_path(self, value: str) -> str:
        """The path as a user in the same directory would type it."""
        if os.path.isabs(value):
            return value
        return os.path.normpath(os.path.join(self.shown_base, value))


def join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    part = key if BARE_KEY_RE.fullmatch(key) else quote(key)
    return f"{where}.{part}" if where else part


def quote(text: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML), kept short for messages."""
    if len(text) > 80:
        text = text[:77] + "..."
    return json.dumps(text)


def show(value: Any) -> str:
    """A value as it would appear in the file, short enough for one line."""
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[...]" if value else "[]"
    if isinstance(value, Mapping):
        return "{...}" if value else "{}"
    return type(value).__name__


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (datetime, date, time)):
        return "a date/time"
    return "a " + type(value).__name__


def suggest(word: str, candidates: tuple[str, ...] | list[str]) -> str | None:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not close and word.lower() in candidates:
        return word.lower()
    return close[0] if close else None



def wrong_type(ctx: Context, path: str, value: Any, expected: str, example: str) -> NoReturn:
    leaf = path.rsplit(".", 1)[-1]
    if "[" in leaf and leaf.endswith("]") and not leaf.startswith('"'):
        hint = f"write each item as {example}"
    else:
        hint = f"write {leaf} = {example}"
    if expected in ("an integer", "a number") and isinstance(value, str):
        try:
            int(value, 0)
            hint += " (numbers take no quotes)"
        except ValueError:
            pass
    if expected == "a string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        hint += " (strings take double quotes)"
    ctx.fail(path, f"expected {expected}, got {type_name(value)} {show(value)}", hint)


# --------------------------------------------------------------------------
# Value parsers: (ctx, path, value) -> typed value, or ConfigError.

Parser = Callable[[Context, str, Any], T]


def string(example: str, *, allow_empty: bool = False) -> Parser[str]:
    def parse(ctx: Context, path: str, value: Any) -> str:
        if not isinstance(value, str):
            wrong_type(ctx, path, value, "a string", example)
        if "\0" in value or not _is_utf8(value):
            ctx.fail(path, "contains a NUL or an invalid character",
                     f"write a plain string such as {example}")
        if not value and not allow_empty:
            ctx.fail(path, "is empty", f"write a value such as {example}")
        return value
    return parse


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: no file name or address has them
        return False
    return True


def name(example: str) -> Parser[str]:
    def parse(ctx: Context, path: str, value: Any) -> str:
        text = string(example)(ctx, path, value)
        if not NAME_RE.fullmatch(text):
            ctx.fail(path, f"{show(text)} is not a usable name",
                     f"use letters, digits, '.', '_' or '-' (64 at most), such as {example}")
        return text
    return parse


def ifname(example: str) -> Parser[str]:
    def parse(ctx: Context, path: str, value: Any) -> str:
        text = string(example)(ctx, path, value)
        # Linux dev_valid_name(): IFNAMSIZ is 16 with the NUL; no '/', ':' or spaces.
        if len(text) > 15:
            ctx.fail(path, f"{show(text)} is longer than 15 characters",
                     f"use a Linux interface name of 15 characters at most, such as {example}")
        if text in (".", "..") or any(c in text for c in "/:") or any(c.isspace() for c in text):
            ctx.fail(path, f"{show(text)} is not a valid interface name",
                     f"avoid '/', ':' and spaces, such as {example}")
        return text
    return parse


def choice(choices: tuple[str, ...], example: str | None = None) -> Parser[str]:
    def parse(ctx: Context, path: str, value: Any) -> str:
        shown = ", ".join(quote(c) for c in choices)
        if not isinstance(value, str):
            wrong_type(ctx, path, value, "a string", example or quote(choices[0]))
        if value not in choices:
            close = suggest(value, choices)
            ctx.fail(path, f"{show(value)} is not one of {shown}",
                     f"did you mean {quote(close)}?" if close else f"write one of {shown}")
        return value
    return parse


def integer(example: str, lo: int, hi: int | None, what: str) -> Parser[int]:
    def parse(ctx: Context, path: str, value: Any) -> int:
        # bool is an int in Python but never a number in TOML.
        if isinstance(value, bool) or not isinstance(value, int):
            wrong_type(ctx, path, value, "an integer", example)
        if value < lo or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
            ctx.fail(path, f"{show(value)} is out of range", f"write {what} {bound}, such as {example}")
        return value
    return parse


def boolean(example: str = "true") -> Parser[bool]:
    def parse(ctx: Context, path: str, value: Any) -> bool:
        if not isinstance(value, bool):
            wrong_type(ctx, path, value, "true or false", example)
        return value
    return parse


def seconds(example: str) -> Parser[float]:
    def parse(ctx: Context, path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            wrong_type(ctx, path, value, "a number of seconds", example)
        if not math.isfinite(value) or value <= 0:
            ctx.fail(path, f"{show(value)} is not a positive number of seconds",
                     f"write a number above 0, such as {example}, or leave the key out for no limit")
        return value
    return parse


def seconds_between(example: str, lo: float, hi: float, what: str) -> Parser[float]:
    """A number of seconds from *lo* to *hi* (0 allowed when *lo* is 0)."""
    def parse(ctx: Context, path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            wrong_type(ctx, path, value, "a number of seconds", example)
        if not math.isfinite(value) or value < lo or value > hi or (lo == 0 and value < 0):
            ctx.fail(path, f"{show(value)} is out of range",
                     f"write {what} from {show(lo)} to {show(hi)} seconds, such as {example}")
        return float(value)
    return parse


def address(what: str, example: str, version: int | None = None) -> Parser[Address]:
    kind = {4: "an IPv4 address", 6: "an IPv6 address", None: "an IP address"}[version]

    def parse(ctx: Context, path: str, value: Any) -> Address:
        if not isinstance(value, str):
            wrong_type(ctx, path, value, f"{kind} in a string", example)
        if "/" in value:
            ctx.fail(path, f"{show(value)} is a prefix, not an address",
                     f"write {what} without '/len', such as {example}")
        if "%" in value:
            ctx.fail(path, f"{show(value)} has a zone index", f"write {what} without '%zone', such as {example}")
        try:
            address = ip_address(value)
        except ValueError:
            ctx.fail(path, f"{show(value)} is not {kind}", f"write {what} such as {example}")
        if version is not None and address.version != version:
            ctx.fail(path, f"{show(value)} is not {kind}", f"write {what} such as {example}")
        return address
    return parse


def ipv6(what: str, example: str) -> Parser[IPv6Address]:
    """An IPv6 address: on-wire addresses (CoA, HoA, HA, CN) are always IPv6."""
    parse_any = address(what, example, 6)

    def parse(ctx: Context, path: str, value: Any) -> IPv6Address:
        address = parse_any(ctx, path, value)
        assert isinstance(address, IPv6Address)
        return address
    return parse


def network(what: str, example: str, version: int | None = None,
             address_hint_len: int | None = None) -> Parser[Network]:
    """A prefix ``addr/len`` with no host bits set.

    ``address_hint_len``: when a bare address is written, the prefix length
    to suggest (128 for "this one address", 64 for a home prefix).
    """
    kind = {4: "an IPv4 prefix", 6: "an IPv6 prefix", None: "an IP prefix"}[version]

    def parse(ctx: Context, path: str, value: Any) -> Network:
        if not isinstance(value, str):
            wrong_type(ctx, path, value, f"{kind} in a string", example)
        if "%" in value:
            ctx.fail(path, f"{show(value)} has a zone index", f"write {what} such as {example}")
        if "/" not in value:
            try:
                address = ip_address(value)
                if version is not None and address.version != version:
                    raise ValueError
            except ValueError:
                ctx.fail(path, f"{show(value)} is not {kind}", f"write {what} such as {example}")
            length = address.max_prefixlen if address_hint_len is None else address_hint_len
            length = min(length, address.max_prefixlen)
            suggestion = ip_network(f"{address}/{length}", strict=False)
            if length == address.max_prefixlen:
                ctx.fail(path, f"{show(value)} is an address, not a prefix",
                         f"write {quote(str(suggestion))} for this one address")
            ctx.fail(path, f"{show(value)} is an address, not a prefix",
                     f"write the prefix with its length, such as {quote(str(suggestion))}")
        try:
            network = ip_network(value, strict=False)
        except ValueError:
            ctx.fail(path, f"{show(value)} is not {kind}", f"write {what} such as {example}")
        if network.network_address != ip_interface(value).ip:
            ctx.fail(path, f"{show(value)} has bits set after the prefix length",
                     f"write {quote(str(network))}")
        if version is not None and network.version != version:
            ctx.fail(path, f"{show(value)} is not {kind}", f"write {what} such as {example}")
        return network
    return parse


def prefix_or_address(what: str, example: str) -> Parser[IPv6Network]:
    """An IPv6 prefix, or one IPv6 address standing for its /128."""
    prefix = network(what, example, 6)

    def parse(ctx: Context, path: str, value: Any) -> IPv6Network:
        if isinstance(value, str) and "/" not in value and "%" not in value:
            try:
                address = ip_address(value)
            except ValueError:
                address = None
            if isinstance(address, IPv6Address):
                return IPv6Network((int(address), 128))
        result = prefix(ctx, path, value)
        assert isinstance(result, IPv6Network)
        return result
    return parse


def interface(what: str, example: str) -> Parser[Interface]:
    def parse(ctx: Context, path: str, value: Any) -> Interface:
        if not isinstance(value, str):
            wrong_type(ctx, path, value, "an address/prefix-length string", example)
        if "%" in value:
            ctx.fail(path, f"{show(value)} has a zone index", f"write {what} such as {example}")
        try:
            if "/" not in value:
                address = ip_address(value)
                length = 64 if address.version == 6 else 24
                ctx.fail(path, f"{show(value)} has no prefix length",
                         f"write {what} with its prefix length, such as {quote(f'{address}/{length}')}")
            interface = ip_interface(value)
        except ValueError:
            ctx.fail(path, f"{show(value)} is not an address with a prefix length",
                     f"write {what} such as {example}")
        return interface
    return parse




_PORT_RANGE_HINT = 'write a port (22), a range ("1000-2000") or "any"'


def port_range(ctx: Context, path: str, value: Any) -> PortRange | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        wrong_type(ctx, path, value, "a port, a range or \"any\"", '"1000-2000"')
    if value == "any":
        return None
    if isinstance(value, int):
        low = high = value
    else:
        parts = value.split("-")
        if len(parts) > 2 or not all(p.strip().isdigit() and p.strip().isascii() for p in parts):
            ctx.fail(path, f"{show(value)} is not a port range", _PORT_RANGE_HINT)
        low, high = int(parts[0]), int(parts[-1])
    if not (0 <= low <= 65535 and 0 <= high <= 65535):
        ctx.fail(path, f"{show(value)} is outside 0-65535", _PORT_RANGE_HINT)
    if low > high:
        ctx.fail(path, f"{show(value)} starts above its end",
                 f'write the lower port first, such as "{high}-{low}"')
    return (low, high)


def protocol(ctx: Context, path: str, value: Any) -> int | None:
    names = ", ".join(quote(n) for n in ("any", *PROTOCOL_NUMBERS))
    hint = f"write one of {names} or a protocol number 0-255"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        wrong_type(ctx, path, value, "a protocol name or number", '"tcp"')
    if value == "any":
        return None
    if isinstance(value, str):
        if value in PROTOCOL_NUMBERS:
            return PROTOCOL_NUMBERS[value]
        close = suggest(value, ("any", *PROTOCOL_NUMBERS))
        ctx.fail(path, f"{show(value)} is not a known protocol",
                 (f"did you mean {quote(close)}? " if close else "") + hint)
    if not 0 <= value <= 255:
        ctx.fail(path, f"{show(value)} is out of range", hint)
    return value


def byte_or_any(what: str) -> Parser[int | None]:
    def parse(ctx: Context, path: str, value: Any) -> int | None:
        if value == "any":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            wrong_type(ctx, path, value, f"{what} (0-255) or \"any\"", "1")
        if not 0 <= value <= 255:
            ctx.fail(path, f"{show(value)} is out of range", f'write {what} from 0 to 255 or "any"')
        return value
    return parse


def file_path(example: str) -> Parser[Path]:
    def parse(ctx: Context, path: str, value: Any) -> Path:
        text = string(example)(ctx, path, value)
        return ctx.resolve(text)
    return parse


def list_of(item: Parser[T], example: str, *, min_items: int = 0, unique: bool = True,
          what: str = "item") -> Parser[tuple[T, ...]]:
    def parse(ctx: Context, path: str, value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            wrong_type(ctx, path, value, "a list", f"[{example}]")
        if len(value) < min_items:
            ctx.fail(path, "is empty", f"write at least one {what}, such as [{example}]")
        items: list[T] = []
        for i, raw in enumerate(value):
            parsed = item(ctx, join(path, i), raw)
            if unique and parsed in items:
                ctx.fail(join(path, i), f"{show(raw)} repeats {join(path, items.index(parsed))}",
                         "write each entry once")
            items.append(parsed)
        return tuple(items)
    return parse


def enum(kind: type[E], choices: tuple[str, ...] | None = None,
         example: str | None = None) -> Parser[E]:
    """One of *kind*'s values, returned as the enum member."""
    pick = choice(choices or tuple(str(member.value) for member in kind), example)

    def parse(ctx: Context, path: str, value: Any) -> E:
        return kind(pick(ctx, path, value))
    return parse


def enum_list(kind: type[E], example: str, *, min_items: int = 0,
              what: str = "item") -> Parser[tuple[E, ...]]:
    """A list of *kind*'s values (each once), returned as enum members."""
    names = list_of(choice(tuple(str(member.value) for member in kind), example), example,
                    min_items=min_items, what=what)

    def parse(ctx: Context, path: str, value: Any) -> tuple[E, ...]:
        return tuple(kind(item) for item in names(ctx, path, value))
    return parse


def replay_window(ctx: Context, path: str, value: Any) -> int:
    window = integer("1024", 0, MAX_REPLAY_WINDOW, "a window size")(ctx, path, value)
    # RFC 4303 §3.4.3: a window, when used, is at least 32 packets; 0 turns it off.
    if 0 < window < 32:
        ctx.fail(path, f"{window} is below the minimum window of 32",
                 "write 0 (no anti-replay) or a window from 32 up, such as 1024")
    return window



def public_file(example: str) -> Parser[Path]:
    """A file others may read (a certificate): it must exist when key files are checked."""
    def parse(ctx: Context, path: str, value: Any) -> Path:
        raw = string(example)(ctx, path, value)
        resolved = ctx.resolve(raw)
        if ctx.check_key_files and not resolved.is_file():
            ctx.fail(path, f"{ctx.shown_path(raw)} does not exist", "create it or fix the path")
        return resolved
    return parse


_PROPOSAL_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def ike_proposal(ctx: Context, path: str, value: Any) -> str:
    """An IKE proposal: algorithm names joined by "-"."""
    text = string('"aes128gcm16-prfsha256-ecp256"')(ctx, path, value)
    if not _PROPOSAL_RE.fullmatch(text):
        ctx.fail(path, f"{show(text)} is not a proposal",
                 'write algorithms joined by "-", such as "aes128gcm16-prfsha256-ecp256"')
    return text

# --------------------------------------------------------------------------
# Typed value -> what the file would say (the effective config)


def show_plain(value: Any) -> Any:
    """Enums as their value, addresses and paths as text, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (IPv4Address, IPv6Address, IPv4Network, IPv6Network, IPv4Interface,
                          IPv6Interface, Path)):
        return str(value)
    if isinstance(value, tuple):
        return [show_plain(v) for v in value]
    if value is not None and not isinstance(value, (str, int, float, bool)):
        return str(value)   # e.g. an Endpoint: "addr:port"
    return value


def show_ports(ports: PortRange | None) -> int | str:
    """The inverse of :func:`port_range`."""
    if ports is None:
        return "any"
    low, high = ports
    return low if low == high else f"{low}-{high}"


def show_protocol(protocol: int | None) -> int | str:
    """The inverse of :func:`protocol`: a name where there is one."""
    return "any" if protocol is None else _PROTOCOL_NAMES.get(protocol, protocol)


def show_byte_or_any(value: int | None) -> int | str:
    """The inverse of :func:`byte_or_any`."""
    return "any" if value is None else value
