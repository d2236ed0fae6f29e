"""Read a node config (TOML) into :class:`~vmip.config.model.NodeConfig`.

Every mistake becomes one :class:`ConfigError` naming the file, the dotted
key (``link[1].coa``, indexes count from 0 in file order) and what to write
instead; nothing else escapes, whatever the input (the hypothesis tests in
tests/config feed it arbitrary documents).  The first mistake found wins:
unknown keys of a table are reported before its values, values before the
cross-checks between sections.

The loader reads key files only to check that they exist, are private and
have the size their suite needs; it keeps no key material.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from ipaddress import (
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from vmip import log
from vmip.config.errors import ConfigError
from vmip.config.keyfile import read_key_file
from vmip.config.model import (
    DEFAULT_PORTS,
    PROTOCOL_NUMBERS,
    Action,
    Address,
    ControlConfig,
    Direction,
    Driver,
    Endpoint,
    IkeConfig,
    IkePeerConfig,
    Interface,
    KeyMode,
    KeysConfig,
    Lifetime,
    LinkConfig,
    LoggingConfig,
    MobilityConfig,
    Mode,
    Network,
    NodeConfig,
    NodeSection,
    PeerConfig,
    PolicyConfig,
    PortRange,
    Role,
    SaConfig,
    TunConfig,
    TunnelKind,
)
from vmip.ipsec.seqstate import DEFAULT_STATE_ROOT
from vmip.ipsec.suites import BACKENDS, SUITES

_log = log.get_logger(__name__)

T = TypeVar("T")

# --------------------------------------------------------------------------
# Schema: which keys each table knows (the order is the order of the dump).

ROOT_KEYS = ("node", "tun", "link", "peer", "mobility", "keys", "policy", "ike",
             "control", "logging")
NODE_KEYS = ("name", "roles", "user")
TUN_KEYS = ("name", "addresses", "mtu", "routes")
LINK_KEYS = ("name", "driver", "interface", "bind", "port", "coa", "priority", "keepalive")
PEER_KEYS = ("name", "prefixes", "endpoint", "framing", "default")
MOBILITY_KEYS = ("home_prefix", "home_address", "home_agent", "correspondents",
                 "binding_lifetime", "tunnel", "proof_cache_size")
KEYS_KEYS = ("mode", "backend", "replay_window", "state_dir", "sa")
SA_KEYS = ("name", "spi", "direction", "src", "dst", "mode", "suite", "key_file",
           "auth_key_file", "esn", "replay_window", "lifetime")
LIFETIME_KEYS = ("soft_seconds", "hard_seconds", "soft_bytes", "hard_bytes",
                 "soft_packets", "hard_packets")
POLICY_KEYS = ("name", "direction", "src", "dst", "protocol", "src_ports", "dst_ports",
               "icmp_type", "icmp_code", "mh_type", "action", "sa", "priority")
IKE_KEYS = ("local_id", "psk_file", "certificate", "private_key", "ca", "proposals",
            "esp_proposals", "peer")
IKE_PEER_KEYS = ("name", "address", "remote_id", "initiate", "policies")
CONTROL_KEYS = ("socket",)
LOGGING_KEYS = ("level", "format", "file")

#: Where each key is at home, to say "'coa' belongs in [[link]]" when a key
#: is written under the wrong table.
_TABLE_OF_KEY: dict[str, str] = {}
for _header, _keys in (
    ("[node]", NODE_KEYS), ("[tun]", TUN_KEYS), ("[mobility]", MOBILITY_KEYS),
    ("[keys]", KEYS_KEYS), ("[control]", CONTROL_KEYS), ("[logging]", LOGGING_KEYS),
    ("[[link]]", LINK_KEYS), ("[[peer]]", PEER_KEYS), ("[[keys.sa]]", SA_KEYS),
    ("[[policy]]", POLICY_KEYS), ("[ike]", IKE_KEYS), ("[[ike.peer]]", IKE_PEER_KEYS),
):
    for _key in _keys:
        _TABLE_OF_KEY.setdefault(_key, _header)

DEFAULT_TUN_NAME = "vmip0"
DEFAULT_MTU = 1400
MIN_MTU = 1280  # RFC 8200 §5: every IPv6 link carries 1280-byte packets
DEFAULT_BINDING_LIFETIME = 420
# RFC 6275 §6.1.7: the BU lifetime is 16 bits of 4-second units.
MAX_BINDING_LIFETIME = 0xFFFF * 4
DEFAULT_PROOF_CACHE_SIZE = 1024
DEFAULT_REPLAY_WINDOW = 1024
MAX_REPLAY_WINDOW = 1 << 20
DEFAULT_PRIORITY = 100
# RFC 3948 §4: NAT keepalives every 20 s unless told otherwise.
DEFAULT_KEEPALIVE = 20
DEFAULT_IKE_PROPOSALS = ("aes128gcm16-prfsha256-ecp256",)
DEFAULT_ESP_PROPOSALS = ("aes128gcm16",)
LOG_LEVELS = log.LEVELS
LOG_FORMATS = ("text", "json")
# sockaddr_un.sun_path is 108 bytes, NUL included.
MAX_SOCKET_PATH = 107
MIN_PSK_LEN = 16
#: Protocols whose selectors have ports (RFC 4301 §4.4.1.1): TCP, UDP, SCTP, UDP-Lite.
PORTED_PROTOCOLS = (6, 17, 132, 136)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PROPOSAL_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

_MISSING: Any = object()


# --------------------------------------------------------------------------
# Entry points


def load_config(path: str | os.PathLike[str], *, check_key_files: bool = True) -> NodeConfig:
    """Read and check the config file at *path*.

    ``check_key_files=False`` skips opening the key files (for tools that
    only need addresses, e.g. a config generator checking its own output).
    """
    shown = os.fspath(path)
    if "\0" in shown:
        raise ConfigError(shown, None, "the path contains a NUL byte", "fix the path")
    try:
        raw = Path(shown).read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, None, "no such file",
                          "check the path, or start from configs/mn.toml") from None
    except IsADirectoryError:
        raise ConfigError(shown, None, "is a directory, not a config file",
                          "name a .toml file, such as configs/mn.toml") from None
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot be read ({exc.strerror})",
                          "check the path and its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(shown, f"line {line}", "the file is not UTF-8 text",
                          "save it as UTF-8 (TOML requires it)") from None
    return parse_config(text, shown, check_key_files=check_key_files)


def parse_config(text: str, path: str | os.PathLike[str], *,
                 check_key_files: bool = True) -> NodeConfig:
    """Parse config *text* as if read from *path* (names it in errors, anchors relative paths)."""
    shown = os.fspath(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(shown, text, str(exc)) from None
    except (ValueError, TypeError, RecursionError):
        # tomllib raises only TOMLDecodeError for bad TOML, but guard the
        # pathological cases (e.g. absurd nesting) the same way.
        raise ConfigError(shown, None, "the file is not valid TOML",
                          "simplify the document; see docs/configuration.md") from None
    return build_config(data, shown, check_key_files=check_key_files)


def build_config(data: Mapping[str, Any], path: str | os.PathLike[str], *,
                 check_key_files: bool = True) -> NodeConfig:
    """Check an already-parsed TOML document (a dict as tomllib returns it)."""
    ctx = _Context(os.fspath(path), check_key_files)
    if not isinstance(data, Mapping):
        ctx.fail(None, "the document is not a TOML table", "start from configs/mn.toml")
    root = _Table(ctx, data, "", ROOT_KEYS, "the top level")
    node = _parse_node(ctx, root)
    tun = _parse_tun(ctx, root)
    links = tuple(_parse_link(ctx, table, i) for i, table in enumerate(root.tables("link")))
    peers = tuple(_parse_peer(ctx, table, i) for i, table in enumerate(root.tables("peer")))
    mobility = _parse_mobility(ctx, root)
    keys = _parse_keys(ctx, root, node)
    policies = tuple(_parse_policy(ctx, table, i)
                     for i, table in enumerate(root.tables("policy")))
    ike_table = root.table("ike")
    ike = _parse_ike(ctx, ike_table) if ike_table is not None else None
    control = _parse_control(ctx, root, node)
    logging_ = _parse_logging(ctx, root)

    mobility = _check_roles(ctx, node, tun, links, mobility)
    _check_peers(ctx, links, peers)
    _check_keys(ctx, keys, ike, policies)
    _check_policies(ctx, keys, policies)
    config = NodeConfig(
        source=ctx.source, node=node, tun=tun, links=links, peers=peers, mobility=mobility,
        keys=keys, policies=policies, ike=ike, control=control, logging=logging_,
    )
    _log.debug("config loaded", file=ctx.file, node=node.name,
               roles=",".join(node.roles), sas=len(keys.sa), policies=len(policies))
    return config


# --------------------------------------------------------------------------
# Plumbing: where we are, how to complain


class _Context:
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


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    part = key if _BARE_KEY_RE.fullmatch(key) else _quote(key)
    return f"{where}.{part}" if where else part


def _quote(text: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML), kept short for messages."""
    import json
    if len(text) > 80:
        text = text[:77] + "..."
    return json.dumps(text)


def _show(value: Any) -> str:
    """A value as it would appear in the file, short enough for one line."""
    if isinstance(value, str):
        return _quote(value)
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


def _type_name(value: Any) -> str:
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


def _suggest(word: str, candidates: tuple[str, ...] | list[str]) -> str | None:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not close and word.lower() in candidates:
        return word.lower()
    return close[0] if close else None


class _Table:
    """One TOML table: its dotted path, and typed access to its keys."""

    def __init__(self, ctx: _Context, data: Mapping[str, Any], where: str,
                 known: tuple[str, ...], header: str):
        self.ctx = ctx
        self.data = data
        self.where = where
        self.header = header
        for key in data:
            if key not in known:
                self._unknown(str(key), known)

    def _unknown(self, key: str, known: tuple[str, ...]) -> NoReturn:
        path = _join(self.where, key)
        is_table = isinstance(self.data[key], (Mapping, list)) and not self.where
        close = _suggest(key, known)
        home = _TABLE_OF_KEY.get(key)
        if not self.where and key not in ROOT_KEYS and home is not None:
            hint = f"'{key}' belongs in {home}; move it there"
        elif home is not None and home != self.header and close is None:
            hint = f"'{key}' belongs in {home}, not in {self.header}; move it there"
        elif close is not None:
            hint = f"did you mean '{close}'?"
        else:
            hint = f"known keys in {self.header}: {', '.join(known)}"
        what = "table" if is_table else "key"
        shown = repr(key) if _BARE_KEY_RE.fullmatch(key) else _quote(key)
        self.ctx.fail(path, f"unknown {what} {shown}", hint)

    def path(self, key: str | int) -> str:
        return _join(self.where, key)

    def get(self, key: str, parse: Callable[[_Context, str, Any], T], default: Any = _MISSING,
            *, example: str = "") -> T:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                self.ctx.fail(self.path(key), "is missing",
                              f"add {key} = {example} to {self.header}")
            return default
        return parse(self.ctx, self.path(key), value)

    def table(self, key: str) -> Mapping[str, Any] | None:
        """A sub-table written ``[key]`` (or ``key = {...}``); None when absent."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return None
        if isinstance(value, list):
            self.ctx.fail(self.path(key), f"is a list of tables ([[{self.path(key)}]])",
                          f"write [{self.path(key)}] with single brackets: there is only one")
        if not isinstance(value, Mapping):
            self.ctx.fail(self.path(key), f"expected a table, got {_type_name(value)} {_show(value)}",
                          f"write the keys under a [{self.path(key)}] header")
        return value

    def tables(self, key: str) -> list[tuple[str, Mapping[str, Any]]]:
        """An array of tables written ``[[key]]``; empty when absent."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return []
        if isinstance(value, Mapping):
            self.ctx.fail(self.path(key), "is a single table ([" + self.path(key) + "])",
                          f"write [[{self.path(key)}]] with double brackets, once per entry")
        if not isinstance(value, list):
            self.ctx.fail(self.path(key), f"expected tables, got {_type_name(value)} {_show(value)}",
                          f"write a [[{self.path(key)}]] header for each entry")
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                self.ctx.fail(_join(self.path(key), i),
                              f"expected a table, got {_type_name(item)} {_show(item)}",
                              f"write a [[{self.path(key)}]] header for each entry")
        return [(_join(self.path(key), i), item) for i, item in enumerate(value)]


def _wrong_type(ctx: _Context, path: str, value: Any, expected: str, example: str) -> NoReturn:
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
    ctx.fail(path, f"expected {expected}, got {_type_name(value)} {_show(value)}", hint)


# --------------------------------------------------------------------------
# Value parsers: (ctx, path, value) -> typed value, or ConfigError.

Parser = Callable[[_Context, str, Any], T]


def _string(example: str, *, allow_empty: bool = False) -> Parser[str]:
    def parse(ctx: _Context, path: str, value: Any) -> str:
        if not isinstance(value, str):
            _wrong_type(ctx, path, value, "a string", example)
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


def _name(example: str) -> Parser[str]:
    def parse(ctx: _Context, path: str, value: Any) -> str:
        text = _string(example)(ctx, path, value)
        if not _NAME_RE.fullmatch(text):
            ctx.fail(path, f"{_show(text)} is not a usable name",
                     f"use letters, digits, '.', '_' or '-' (64 at most), such as {example}")
        return text
    return parse


def _ifname(example: str) -> Parser[str]:
    def parse(ctx: _Context, path: str, value: Any) -> str:
        text = _string(example)(ctx, path, value)
        # Linux dev_valid_name(): IFNAMSIZ is 16 with the NUL; no '/', ':' or spaces.
        if len(text) > 15:
            ctx.fail(path, f"{_show(text)} is longer than 15 characters",
                     f"use a Linux interface name of 15 characters at most, such as {example}")
        if text in (".", "..") or any(c in text for c in "/:") or any(c.isspace() for c in text):
            ctx.fail(path, f"{_show(text)} is not a valid interface name",
                     f"avoid '/', ':' and spaces, such as {example}")
        return text
    return parse


def _choice(choices: tuple[str, ...], example: str | None = None) -> Parser[str]:
    def parse(ctx: _Context, path: str, value: Any) -> str:
        shown = ", ".join(_quote(c) for c in choices)
        if not isinstance(value, str):
            _wrong_type(ctx, path, value, "a string", example or _quote(choices[0]))
        if value not in choices:
            close = _suggest(value, choices)
            ctx.fail(path, f"{_show(value)} is not one of {shown}",
                     f"did you mean {_quote(close)}?" if close else f"write one of {shown}")
        return value
    return parse


def _integer(example: str, lo: int, hi: int | None, what: str) -> Parser[int]:
    def parse(ctx: _Context, path: str, value: Any) -> int:
        # bool is an int in Python but never a number in TOML.
        if isinstance(value, bool) or not isinstance(value, int):
            _wrong_type(ctx, path, value, "an integer", example)
        if value < lo or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
            ctx.fail(path, f"{_show(value)} is out of range", f"write {what} {bound}, such as {example}")
        return value
    return parse


def _boolean(example: str = "true") -> Parser[bool]:
    def parse(ctx: _Context, path: str, value: Any) -> bool:
        if not isinstance(value, bool):
            _wrong_type(ctx, path, value, "true or false", example)
        return value
    return parse


def _seconds(example: str) -> Parser[float]:
    def parse(ctx: _Context, path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _wrong_type(ctx, path, value, "a number of seconds", example)
        if not math.isfinite(value) or value <= 0:
            ctx.fail(path, f"{_show(value)} is not a positive number of seconds",
                     f"write a number above 0, such as {example}, or leave the key out for no limit")
        return value
    return parse


def _address(what: str, example: str, version: int | None = None) -> Parser[Address]:
    kind = {4: "an IPv4 address", 6: "an IPv6 address", None: "an IP address"}[version]

    def parse(ctx: _Context, path: str, value: Any) -> Address:
        if not isinstance(value, str):
            _wrong_type(ctx, path, value, f"{kind} in a string", example)
        if "/" in value:
            ctx.fail(path, f"{_show(value)} is a prefix, not an address",
                     f"write {what} without '/len', such as {example}")
        if "%" in value:
            ctx.fail(path, f"{_show(value)} has a zone index", f"write {what} without '%zone', such as {example}")
        try:
            address = ip_address(value)
        except ValueError:
            ctx.fail(path, f"{_show(value)} is not {kind}", f"write {what} such as {example}")
        if version is not None and address.version != version:
            ctx.fail(path, f"{_show(value)} is not {kind}", f"write {what} such as {example}")
        return address
    return parse


def _ipv6(what: str, example: str) -> Parser[IPv6Address]:
    """An IPv6 address: on-wire addresses (CoA, HoA, HA, CN) are always IPv6."""
    parse_any = _address(what, example, 6)

    def parse(ctx: _Context, path: str, value: Any) -> IPv6Address:
        address = parse_any(ctx, path, value)
        assert isinstance(address, IPv6Address)
        return address
    return parse


def _network(what: str, example: str, version: int | None = None,
             address_hint_len: int | None = None) -> Parser[Network]:
    """A prefix ``addr/len`` with no host bits set.

    ``address_hint_len``: when a bare address is written, the prefix length
    to suggest (128 for "this one address", 64 for a home prefix).
    """
    kind = {4: "an IPv4 prefix", 6: "an IPv6 prefix", None: "an IP prefix"}[version]

    def parse(ctx: _Context, path: str, value: Any) -> Network:
        if not isinstance(value, str):
            _wrong_type(ctx, path, value, f"{kind} in a string", example)
        if "%" in value:
            ctx.fail(path, f"{_show(value)} has a zone index", f"write {what} such as {example}")
        if "/" not in value:
            try:
                address = ip_address(value)
                if version is not None and address.version != version:
                    raise ValueError
            except ValueError:
                ctx.fail(path, f"{_show(value)} is not {kind}", f"write {what} such as {example}")
            length = address.max_prefixlen if address_hint_len is None else address_hint_len
            length = min(length, address.max_prefixlen)
            suggestion = ip_network(f"{address}/{length}", strict=False)
            if length == address.max_prefixlen:
                ctx.fail(path, f"{_show(value)} is an address, not a prefix",
                         f"write {_quote(str(suggestion))} for this one address")
            ctx.fail(path, f"{_show(value)} is an address, not a prefix",
                     f"write the prefix with its length, such as {_quote(str(suggestion))}")
        try:
            network = ip_network(value, strict=False)
        except ValueError:
            ctx.fail(path, f"{_show(value)} is not {kind}", f"write {what} such as {example}")
        if network.network_address != ip_interface(value).ip:
            ctx.fail(path, f"{_show(value)} has bits set after the prefix length",
                     f"write {_quote(str(network))}")
        if version is not None and network.version != version:
            ctx.fail(path, f"{_show(value)} is not {kind}", f"write {what} such as {example}")
        return network
    return parse


def _interface(what: str, example: str) -> Parser[Interface]:
    def parse(ctx: _Context, path: str, value: Any) -> Interface:
        if not isinstance(value, str):
            _wrong_type(ctx, path, value, "an address/prefix-length string", example)
        if "%" in value:
            ctx.fail(path, f"{_show(value)} has a zone index", f"write {what} such as {example}")
        try:
            if "/" not in value:
                address = ip_address(value)
                length = 64 if address.version == 6 else 24
                ctx.fail(path, f"{_show(value)} has no prefix length",
                         f"write {what} with its prefix length, such as {_quote(f'{address}/{length}')}")
            interface = ip_interface(value)
        except ValueError:
            ctx.fail(path, f"{_show(value)} is not an address with a prefix length",
                     f"write {what} such as {example}")
        return interface
    return parse


def _endpoint(framing_port: int | None) -> Parser[Endpoint]:
    example = '"192.0.2.2:6275" or "[2001:db8:10::2]:6275"'

    def parse(ctx: _Context, path: str, value: Any) -> Endpoint:
        if not isinstance(value, str):
            _wrong_type(ctx, path, value, "an address:port string", '"192.0.2.2:6275"')
        host, port_text = value, None
        if value.startswith("["):
            close = value.find("]")
            if close < 0 or (close + 1 < len(value) and value[close + 1] != ":"):
                ctx.fail(path, f"{_show(value)} is not an address:port", f"write {example}")
            host, rest = value[1:close], value[close + 1:]
            port_text = rest[1:] if rest else None
        elif value.count(":") == 1:
            host, port_text = value.split(":")
        # A bare IPv6 address (several colons, no brackets) takes the default port.
        try:
            if "%" in host or "/" in host:
                raise ValueError
            address = ip_address(host)
        except ValueError:
            ctx.fail(path, f"{_show(value)} is not an address:port",
                     f"write {example} (addresses only, no host names)")
        if value.startswith("[") and address.version != 6:
            ctx.fail(path, f"{_show(value)} puts an IPv4 address in brackets", f"write {example}")
        if port_text is None:
            if framing_port is None:
                ctx.fail(path, f"{_show(value)} has no port", f"write {example}")
            return Endpoint(address, framing_port)
        if not port_text.isdigit() or not port_text.isascii() or not 1 <= int(port_text) <= 65535:
            ctx.fail(path, f"{_show(value)} has no valid port (1-65535)", f"write {example}")
        return Endpoint(address, int(port_text))
    return parse


_PORT_RANGE_HINT = 'write a port (22), a range ("1000-2000") or "any"'


def _port_range(ctx: _Context, path: str, value: Any) -> PortRange | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        _wrong_type(ctx, path, value, "a port, a range or \"any\"", '"1000-2000"')
    if value == "any":
        return None
    if isinstance(value, int):
        low = high = value
    else:
        parts = value.split("-")
        if len(parts) > 2 or not all(p.strip().isdigit() and p.strip().isascii() for p in parts):
            ctx.fail(path, f"{_show(value)} is not a port range", _PORT_RANGE_HINT)
        low, high = int(parts[0]), int(parts[-1])
    if not (0 <= low <= 65535 and 0 <= high <= 65535):
        ctx.fail(path, f"{_show(value)} is outside 0-65535", _PORT_RANGE_HINT)
    if low > high:
        ctx.fail(path, f"{_show(value)} starts above its end",
                 f'write the lower port first, such as "{high}-{low}"')
    return (low, high)


def _protocol(ctx: _Context, path: str, value: Any) -> int | None:
    names = ", ".join(_quote(n) for n in ("any", *PROTOCOL_NUMBERS))
    hint = f"write one of {names} or a protocol number 0-255"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        _wrong_type(ctx, path, value, "a protocol name or number", '"tcp"')
    if value == "any":
        return None
    if isinstance(value, str):
        if value in PROTOCOL_NUMBERS:
            return PROTOCOL_NUMBERS[value]
        close = _suggest(value, ("any", *PROTOCOL_NUMBERS))
        ctx.fail(path, f"{_show(value)} is not a known protocol",
                 (f"did you mean {_quote(close)}? " if close else "") + hint)
    if not 0 <= value <= 255:
        ctx.fail(path, f"{_show(value)} is out of range", hint)
    return value


def _byte_or_any(what: str) -> Parser[int | None]:
    def parse(ctx: _Context, path: str, value: Any) -> int | None:
        if value == "any":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            _wrong_type(ctx, path, value, f"{what} (0-255) or \"any\"", "1")
        if not 0 <= value <= 255:
            ctx.fail(path, f"{_show(value)} is out of range", f'write {what} from 0 to 255 or "any"')
        return value
    return parse


def _path(example: str) -> Parser[Path]:
    def parse(ctx: _Context, path: str, value: Any) -> Path:
        text = _string(example)(ctx, path, value)
        return ctx.resolve(text)
    return parse


def _list(item: Parser[T], example: str, *, min_items: int = 0, unique: bool = True,
          what: str = "item") -> Parser[tuple[T, ...]]:
    def parse(ctx: _Context, path: str, value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            _wrong_type(ctx, path, value, "a list", f"[{example}]")
        if len(value) < min_items:
            ctx.fail(path, "is empty", f"write at least one {what}, such as [{example}]")
        items: list[T] = []
        for i, raw in enumerate(value):
            parsed = item(ctx, _join(path, i), raw)
            if unique and parsed in items:
                ctx.fail(_join(path, i), f"{_show(raw)} repeats {_join(path, items.index(parsed))}",
                         "write each entry once")
            items.append(parsed)
        return tuple(items)
    return parse


# --------------------------------------------------------------------------
# Sections


def _parse_node(ctx: _Context, root: _Table) -> NodeSection:
    table = _Table(ctx, root.table("node") or {}, "node", NODE_KEYS, "[node]")
    stem = ctx.source.stem
    default_name = stem if _NAME_RE.fullmatch(stem) else "vmip"
    name = table.get("name", _name('"mn"'), default_name)
    roles = table.get("roles", _list(_choice(tuple(Role), '"mn"'), '"mn"', min_items=1,
                                     what="role"), ("cn",))
    user = table.get("user", _string('"vmip"'), None)
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            ctx.fail("node.user", f"no user named {user!r} on this machine",
                     f"create it (useradd --system {user}) or remove node.user")
    return NodeSection(name=name, roles=tuple(Role(r) for r in roles), user=user)


def _parse_tun(ctx: _Context, root: _Table) -> TunConfig:
    table = _Table(ctx, root.table("tun") or {}, "tun", TUN_KEYS, "[tun]")
    return TunConfig(
        name=table.get("name", _ifname('"vmip0"'), DEFAULT_TUN_NAME),
        addresses=table.get("addresses", _list(
            _interface("an overlay address", '"2001:db8:100::10/64"'),
            '"2001:db8:100::10/64"', min_items=1, what="overlay address"),
            example='["2001:db8:100::10/64"]'),
        mtu=table.get("mtu", _integer("1400", MIN_MTU, 65535, "an MTU"), DEFAULT_MTU),
        routes=table.get("routes", _list(
            _network("a prefix", '"2001:db8:20::/64"', address_hint_len=128),
            '"2001:db8:20::/64"', what="prefix"), ()),
    )


def _parse_link(ctx: _Context, entry: tuple[str, Mapping[str, Any]], index: int) -> LinkConfig:
    where, data = entry
    table = _Table(ctx, data, where, LINK_KEYS, "[[link]]")
    driver = Driver(table.get("driver", _choice(tuple(Driver)), Driver.UDP))
    default_port = DEFAULT_PORTS[driver]
    if driver is Driver.RAW:
        if "port" in data:
            ctx.fail(table.path("port"), "the raw driver has no port",
                     "remove port, or use driver = \"udp\"")
        port = None
    else:
        port = table.get("port", _integer(str(default_port), 1, 65535, "a UDP port"), default_port)
    return LinkConfig(
        name=table.get("name", _name('"wifi0"'), example='"wifi0"'),
        driver=driver,
        interface=table.get("interface", _ifname('"wifi0"'), None),
        bind=table.get("bind", _address("a local underlay address", '"192.0.2.34"'), None),
        port=port,
        coa=table.get("coa", _ipv6("a care-of address", '"2001:db8:31::2"'), None),
        priority=table.get("priority", _integer("10", 0, 65535, "a priority"), DEFAULT_PRIORITY),
        keepalive=table.get("keepalive", _integer("20", 0, 3600, "a number of seconds"),
                            0 if driver is Driver.RAW else DEFAULT_KEEPALIVE),
    )


def _parse_peer(ctx: _Context, entry: tuple[str, Mapping[str, Any]], index: int) -> PeerConfig:
    where, data = entry
    table = _Table(ctx, data, where, PEER_KEYS, "[[peer]]")
    framing = Driver(table.get("framing", _choice(tuple(Driver)), Driver.UDP))
    prefixes = table.get("prefixes", _list(
        _network("an on-wire prefix", '"2001:db8:20::2/128"', address_hint_len=128),
        '"2001:db8:20::2/128"', min_items=1, what="prefix"), example='["2001:db8:20::2/128"]')
    for i, prefix in enumerate(prefixes):
        # Only ESP-in-UDP peers speak IPv4 on the wire; vmip's own framing
        # carries IPv6 packets (DESIGN-BRIEF §3).
        if prefix.version == 4 and framing is not Driver.RFC3948:
            ctx.fail(_join(table.path("prefixes"), i),
                     f"{_quote(str(prefix))} is IPv4, but {framing} framing carries IPv6 packets",
                     'write an IPv6 prefix, or framing = "rfc3948" for a plain IPsec peer')
    if framing is Driver.RAW:
        if "endpoint" in data:
            ctx.fail(table.path("endpoint"), "raw framing has no underlay endpoint",
                     "remove endpoint: the operating system routes raw packets")
        endpoint = None
    else:
        endpoint = table.get("endpoint", _endpoint(DEFAULT_PORTS[framing]), None)
    return PeerConfig(
        name=table.get("name", _name('"ha"'), example='"ha"'),
        prefixes=prefixes,
        endpoint=endpoint,
        framing=framing,
        default=table.get("default", _boolean("false"), False),
    )


def _parse_mobility(ctx: _Context, root: _Table) -> MobilityConfig:
    table = _Table(ctx, root.table("mobility") or {}, "mobility", MOBILITY_KEYS, "[mobility]")
    lifetime = table.get("binding_lifetime",
                         _integer("420", 4, MAX_BINDING_LIFETIME, "a lifetime in seconds"),
                         DEFAULT_BINDING_LIFETIME)
    if lifetime % 4:
        # RFC 6275 §6.1.7: the lifetime field counts 4-second units.
        ctx.fail(table.path("binding_lifetime"), f"{lifetime} is not a multiple of 4",
                 f"write {lifetime - lifetime % 4} or {lifetime - lifetime % 4 + 4} "
                 "(RFC 6275 counts 4-second units)")
    home_prefix = table.get("home_prefix", _network(
        "the home prefix", '"2001:db8:100::/64"', 6, address_hint_len=64), None)
    assert home_prefix is None or isinstance(home_prefix, IPv6Network)
    return MobilityConfig(
        home_prefix=home_prefix,
        home_address=table.get("home_address", _ipv6("a home address", '"2001:db8:100::10"'),
                               None),
        home_agent=table.get("home_agent", _ipv6("the home agent's address", '"2001:db8:100::1"'),
                             None),
        correspondents=table.get("correspondents", _list(
            _ipv6("a correspondent's address", '"2001:db8:20::2"'),
            '"2001:db8:20::2"', what="address"), ()),
        binding_lifetime=lifetime,
        tunnel=TunnelKind(table.get("tunnel", _choice(tuple(TunnelKind)), TunnelKind.ESP)),
        proof_cache_size=table.get("proof_cache_size", _integer(
            "1024", 1, 1_000_000, "a cache size"), DEFAULT_PROOF_CACHE_SIZE),
    )


def _parse_lifetime(ctx: _Context, path: str, value: Any) -> tuple[Lifetime, Lifetime]:
    if not isinstance(value, Mapping):
        _wrong_type(ctx, path, value, "an inline table", "{ soft_seconds = 3000, hard_seconds = 3600 }")
    table = _Table(ctx, value, path, LIFETIME_KEYS, "lifetime")
    count = _integer("1000000", 1, 2**63 - 1, "a count")  # TOML integers are 64-bit
    limits: dict[str, Any] = {
        key: table.get(key, _seconds("3600") if key.endswith("seconds") else count, None)
        for key in LIFETIME_KEYS
    }
    for unit in ("seconds", "bytes", "packets"):
        soft, hard = limits[f"soft_{unit}"], limits[f"hard_{unit}"]
        if soft is not None and hard is not None and soft > hard:
            # RFC 4301 §4.4.2.1: the soft limit warns before the hard one ends the SA.
            ctx.fail(table.path(f"soft_{unit}"), f"soft limit {soft} is above the hard limit {hard}",
                     f"write a soft_{unit} below hard_{unit}")
    return (Lifetime(limits["soft_seconds"], limits["soft_bytes"], limits["soft_packets"]),
            Lifetime(limits["hard_seconds"], limits["hard_bytes"], limits["hard_packets"]))


def _parse_sa(ctx: _Context, entry: tuple[str, Mapping[str, Any]], default_window: int) -> SaConfig:
    where, data = entry
    table = _Table(ctx, data, where, SA_KEYS, "[[keys.sa]]")
    name = table.get("name", _name('"mn-ha-mh-out"'), example='"mn-ha-mh-out"')
    # RFC 4303 §2.1: SPIs 1-255 are reserved by IANA and 0 is for local use.
    spi = table.get("spi", _integer("0x1001", 256, 0xFFFFFFFF, "an SPI"), example="0x1001")
    direction = Direction(table.get("direction", _choice(("in", "out")), example='"out"'))
    src = table.get("src", _address("an SA source address", '"2001:db8:100::10"'),
                    example='"2001:db8:100::10"')
    dst = table.get("dst", _address("an SA destination address", '"2001:db8:100::1"'),
                    example='"2001:db8:100::1"')
    if src.version != dst.version:
        ctx.fail(table.path("dst"), f"{dst} is IPv{dst.version} but src {src} is IPv{src.version}",
                 "write both addresses of the SA in the same IP version")
    mode = Mode(table.get("mode", _choice(("transport", "tunnel")), "transport"))
    suite_name = table.get("suite", _choice(tuple(SUITES), '"aes128gcm16"'), example='"aes128gcm16"')
    suite = SUITES[suite_name]
    key_file = _sa_key_file(ctx, table, "key_file", suite_name, suite.enc_key_len,
                            "encryption key", "no encryption key (NULL encryption)")
    auth_key_file = _sa_key_file(ctx, table, "auth_key_file", suite_name, suite.auth_key_len,
                                 "authentication key", "an AEAD suite, which has no separate "
                                 "authentication key")
    soft, hard = table.get("lifetime", _parse_lifetime, (None, None))
    if soft is None:
        soft, hard = Lifetime(), Lifetime()
    return SaConfig(
        name=name, spi=spi, direction=direction, src=src, dst=dst, mode=mode,
        suite=suite_name, key_file=key_file, auth_key_file=auth_key_file,
        esn=table.get("esn", _boolean(), True),
        replay_window=table.get("replay_window", _replay_window, default_window),
        soft=soft, hard=hard,
    )


def _sa_key_file(ctx: _Context, table: _Table, key: str, suite_name: str, needed: int,
                 what: str, why_none: str) -> Path | None:
    """Check one key file of an SA against its suite; the key itself is dropped."""
    path = table.path(key)
    if needed == 0:
        if key in table.data:
            ctx.fail(path, f"suite {suite_name} has {why_none}",
                     f"remove {key} from this [[keys.sa]]")
        return None
    example = '"keys/mn-to-cn.key"' if key == "key_file" else '"keys/mn-to-ha-mh.auth"'
    raw = table.get(key, _string(example), example=example)
    resolved = ctx.resolve(raw)
    shown = ctx.shown_path(raw)
    if ctx.check_key_files:
        try:
            material = read_key_file(resolved)
        except ConfigError as exc:
            hint = exc.hint.replace(str(resolved), shown)
            ctx.fail(path, f"{shown}: {exc.problem}", hint)
        if len(material) != needed:
            salt = " (key + 4-byte salt)" if SUITES[suite_name].aead else ""
            ctx.fail(path, f"{shown} holds a {len(material)}-byte key, suite {suite_name} "
                           f"needs {needed} bytes{salt}",
                     f"write a {needed}-byte {what} ({2 * needed} hex digits) in {shown}")
        del material
    return resolved


def _replay_window(ctx: _Context, path: str, value: Any) -> int:
    window = _integer("1024", 0, MAX_REPLAY_WINDOW, "a window size")(ctx, path, value)
    # RFC 4303 §3.4.3: a window, when used, is at least 32 packets; 0 turns it off.
    if 0 < window < 32:
        ctx.fail(path, f"{window} is below the minimum window of 32",
                 "write 0 (no anti-replay) or a window from 32 up, such as 1024")
    return window


def _parse_keys(ctx: _Context, root: _Table, node: NodeSection) -> KeysConfig:
    table = _Table(ctx, root.table("keys") or {}, "keys", KEYS_KEYS, "[keys]")
    window = table.get("replay_window", _replay_window, DEFAULT_REPLAY_WINDOW)
    return KeysConfig(
        mode=KeyMode(table.get("mode", _choice(tuple(KeyMode)), KeyMode.STATIC)),
        backend=table.get("backend", _choice(BACKENDS), BACKENDS[0]),
        replay_window=window,
        sa=tuple(_parse_sa(ctx, entry, window) for entry in table.tables("sa")),
        # Static keys resume their sequence numbers from here (vmip.ipsec.seqstate).
        state_dir=table.get("state_dir", _path(f'"/var/lib/vmip/{node.name}"'),
                            DEFAULT_STATE_ROOT / node.name),
    )


def _parse_policy(ctx: _Context, entry: tuple[str, Mapping[str, Any]], index: int) -> PolicyConfig:
    where, data = entry
    table = _Table(ctx, data, where, POLICY_KEYS, "[[policy]]")
    name = table.get("name", _name('"mn-cn-out"'), example='"mn-cn-out"')
    direction = Direction(table.get("direction", _choice(("in", "out")), example='"out"'))
    selector = _network("a prefix", '"2001:db8:100::10/128"', address_hint_len=128)
    src = table.get("src", selector, example='"2001:db8:100::10/128"')
    dst = table.get("dst", selector, example='"2001:db8:20::2/128"')
    if src.version != dst.version:
        ctx.fail(table.path("dst"), f"{dst} is IPv{dst.version} but src {src} is IPv{src.version}",
                 'write both prefixes in the same IP version ("::/0" matches any IPv6 address)')
    protocol = table.get("protocol", _protocol, None)
    ports = {key: table.get(key, _port_range, None) for key in ("src_ports", "dst_ports")}
    icmp_type = table.get("icmp_type", _byte_or_any("an ICMPv6 type"), None)
    icmp_code = table.get("icmp_code", _byte_or_any("an ICMPv6 code"), None)
    mh_type = table.get("mh_type", _byte_or_any("an MH type"), None)
    # RFC 4301 §4.4.1.1: ports exist only for some protocols; ICMP type/code
    # and MH type take their place for ICMPv6 and MH.
    for key, value in ports.items():
        if value is not None and protocol not in PORTED_PROTOCOLS:
            ctx.fail(table.path(key), "ports need a protocol that has them",
                     'add protocol = "tcp" or "udp" to this policy, or write ' + key + ' = "any"')
    if (icmp_type is not None or icmp_code is not None) and protocol != PROTOCOL_NUMBERS["icmpv6"]:
        key = "icmp_type" if icmp_type is not None else "icmp_code"
        ctx.fail(table.path(key), "an ICMPv6 selector needs protocol = \"icmpv6\"",
                 'add protocol = "icmpv6" to this policy')
    if icmp_code is not None and icmp_type is None:
        ctx.fail(table.path("icmp_code"), "an ICMPv6 code without a type",
                 "add icmp_type (the code is only meaningful within a type)")
    if mh_type is not None and protocol != PROTOCOL_NUMBERS["mh"]:
        ctx.fail(table.path("mh_type"), "an MH type selector needs protocol = \"mh\"",
                 'add protocol = "mh" to this policy')
    return PolicyConfig(
        name=name, direction=direction, src=src, dst=dst, protocol=protocol,
        src_ports=ports["src_ports"], dst_ports=ports["dst_ports"],
        icmp_type=icmp_type, icmp_code=icmp_code, mh_type=mh_type,
        action=Action(table.get("action", _choice(tuple(Action)), Action.PROTECT)),
        sa=table.get("sa", _list(_name('"mn-cn-out"'), '"mn-cn-out"', what="SA name"), ()),
        priority=table.get("priority", _integer("100", 0, 2**31 - 1, "a priority"),
                           DEFAULT_PRIORITY),
    )


def _private_file(ctx: _Context, table: _Table, key: str, example: str) -> Path | None:
    """A file holding a secret (PSK, private key): present and private."""
    raw = table.get(key, _string(example), None)
    if raw is None:
        return None
    resolved, shown = ctx.resolve(raw), ctx.shown_path(raw)
    if not ctx.check_key_files:
        return resolved
    psk_len = None
    try:
        if key == "psk_file":
            psk_len = len(read_key_file(resolved))
        else:
            _check_private(resolved)
    except ConfigError as exc:
        ctx.fail(table.path(key), f"{shown}: {exc.problem}", exc.hint.replace(str(resolved), shown))
    if psk_len is not None and psk_len < MIN_PSK_LEN:
        # RFC 7296 §2.15: a PSK must be as strong as the keys derived from it.
        ctx.fail(table.path(key), f"{shown} holds a {psk_len}-byte PSK, too short",
                 f"write a random PSK of at least {MIN_PSK_LEN} bytes (hex) in {shown}")
    return resolved


def _check_private(path: Path) -> None:
    shown = str(path)
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(shown, None, "file does not exist", "create it or fix the path") from None
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot be read ({exc.strerror})", "fix the path") from None
    if not path.is_file():
        raise ConfigError(shown, None, "is not a regular file", "point to the PEM file")
    mode = info.st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(shown, None,
                          f"private key is readable or writable by group or others (mode {mode:04o})",
                          f"run chmod 600 {shown}")


def _public_file(ctx: _Context, path: str, value: Any, example: str) -> Path:
    raw = _string(example)(ctx, path, value)
    resolved = ctx.resolve(raw)
    if ctx.check_key_files and not resolved.is_file():
        ctx.fail(path, f"{ctx.shown_path(raw)} does not exist", "create it or fix the path")
    return resolved


def _parse_ike(ctx: _Context, data: Mapping[str, Any]) -> IkeConfig:
    table = _Table(ctx, data, "ike", IKE_KEYS, "[ike]")
    local_id = table.get("local_id", _string('"mn@example.net"'), None)
    psk_file = _private_file(ctx, table, "psk_file", '"keys/ike.psk"')
    certificate = table.get("certificate", lambda c, p, v: _public_file(c, p, v, '"certs/mn.pem"'),
                            None)
    private_key = _private_file(ctx, table, "private_key", '"certs/mn.key"')
    ca = table.get("ca", _list(lambda c, p, v: _public_file(c, p, v, '"certs/ca.pem"'),
                               '"certs/ca.pem"', what="CA file"), ())
    proposal = _string('"aes128gcm16-prfsha256-ecp256"')

    def ike_proposal(c: _Context, p: str, v: Any) -> str:
        text = proposal(c, p, v)
        if not _PROPOSAL_RE.fullmatch(text):
            c.fail(p, f"{_show(text)} is not a proposal",
                   'write algorithms joined by "-", such as "aes128gcm16-prfsha256-ecp256"')
        return text

    proposals = table.get("proposals", _list(ike_proposal, '"aes128gcm16-prfsha256-ecp256"',
                                             min_items=1, what="proposal"), DEFAULT_IKE_PROPOSALS)
    esp_proposals = table.get("esp_proposals", _list(_choice(tuple(SUITES), '"aes128gcm16"'),
                                                     '"aes128gcm16"', min_items=1, what="suite"),
                              DEFAULT_ESP_PROPOSALS)
    if psk_file is not None and (certificate is not None or private_key is not None):
        ctx.fail(table.path("psk_file"), "both a PSK and a certificate are set",
                 "keep psk_file, or certificate + private_key + ca, not both")
    if psk_file is None:
        if certificate is None or private_key is None:
            missing = "certificate" if certificate is None else "private_key"
            ctx.fail(table.path(missing if certificate or private_key else "psk_file"),
                     "no way to authenticate: neither psk_file nor certificate + private_key",
                     'add psk_file = "keys/ike.psk", or certificate, private_key and ca')
        if not ca:
            ctx.fail(table.path("ca"), "certificate authentication needs a CA to check peers",
                     'add ca = ["certs/ca.pem"]')
    peers = []
    for where, item in table.tables("peer"):
        peer = _Table(ctx, item, where, IKE_PEER_KEYS, "[[ike.peer]]")
        peers.append(IkePeerConfig(
            name=peer.get("name", _name('"ha"'), example='"ha"'),
            address=peer.get("address", _address("the peer's address", '"2001:db8:100::1"'),
                             example='"2001:db8:100::1"'),
            remote_id=peer.get("remote_id", _string('"ha@example.net"'), None),
            initiate=peer.get("initiate", _boolean("true"), False),
            policies=peer.get("policies", _list(_string('"mh-to-ha"'), '"mh-to-ha"',
                                                what="policy name"), ()),
        ))
    _check_unique_names(ctx, "ike.peer", peers)
    return IkeConfig(local_id=local_id, psk_file=psk_file, certificate=certificate,
                     private_key=private_key, ca=ca, proposals=proposals,
                     esp_proposals=esp_proposals, peers=tuple(peers))


def _parse_control(ctx: _Context, root: _Table, node: NodeSection) -> ControlConfig:
    table = _Table(ctx, root.table("control") or {}, "control", CONTROL_KEYS, "[control]")
    example = f'"/run/vmip/{node.name}.sock"'
    socket = table.get("socket", _path(example), None)
    if socket is not None and len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        ctx.fail(table.path("socket"), f"the socket path is longer than {MAX_SOCKET_PATH} bytes",
                 f"write a shorter path (a Unix socket limit), such as {example}")
    return ControlConfig(socket=socket)


def _parse_logging(ctx: _Context, root: _Table) -> LoggingConfig:
    table = _Table(ctx, root.table("logging") or {}, "logging", LOGGING_KEYS, "[logging]")
    file = table.get("file", _string('"/run/vmip/mn.log"', allow_empty=True), "")
    return LoggingConfig(
        level=table.get("level", _choice(LOG_LEVELS), "info"),
        format=table.get("format", _choice(LOG_FORMATS), "text"),
        # "" is how TOML, which has no null, spells "standard error".
        file=ctx.resolve(file) if file else None,
    )


# --------------------------------------------------------------------------
# Cross-checks


def _check_unique_names(ctx: _Context, section: str, items: list[Any] | tuple[Any, ...]) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            ctx.fail(f"{section}[{i}].name",
                     f"{_quote(item.name)} is already the name of {section}[{seen[item.name]}]",
                     "give each entry its own name")
        seen[item.name] = i


def _check_roles(ctx: _Context, node: NodeSection, tun: TunConfig, links: tuple[LinkConfig, ...],
                 mobility: MobilityConfig) -> MobilityConfig:
    if not links:
        ctx.fail("link", "a node needs at least one [[link]] to reach its peers",
                 'add [[link]] with name = "eth0" (driver "udp" by default)')
    _check_unique_names(ctx, "link", links)
    is_mn, is_ha = Role.MN in node.roles, Role.HA in node.roles
    coas: dict[IPv6Address, int] = {}
    for i, link in enumerate(links):
        if link.coa is None:
            continue
        if not is_mn:
            ctx.fail(f"link[{i}].coa", "a care-of address only makes sense on a mobile node",
                     'remove coa, or add "mn" to node.roles')
        if link.coa in coas:
            ctx.fail(f"link[{i}].coa", f"{link.coa} is already the CoA of link[{coas[link.coa]}]",
                     "give each link its own care-of address")
        coas[link.coa] = i

    mn_only = {"home_address": mobility.home_address, "home_agent": mobility.home_agent,
               "correspondents": mobility.correspondents}
    if not is_mn:
        for key, value in mn_only.items():
            if value:
                ctx.fail(f"mobility.{key}", "is only used by a mobile node",
                         f'remove {key}, or add "mn" to node.roles')
        if mobility.home_prefix is not None and not is_ha:
            ctx.fail("mobility.home_prefix", "is only used by a mobile node or a home agent",
                     'remove home_prefix, or add "mn" or "ha" to node.roles')
    if is_ha and mobility.home_prefix is None:
        ctx.fail("mobility.home_prefix", "a home agent needs the home prefix it serves",
                 'add home_prefix = "2001:db8:100::/64" under [mobility]')
    if not is_mn:
        return mobility

    prefix = mobility.home_prefix
    if mobility.home_address is None:
        example = f'"{prefix[0x10]}"' if prefix is not None and prefix.num_addresses > 0x10 \
            else '"2001:db8:100::10"'
        ctx.fail("mobility.home_address", "a mobile node needs its home address",
                 f"add home_address = {example} under [mobility]")
    if mobility.home_agent is None:
        example = f'"{prefix[1]}"' if prefix is not None and prefix.num_addresses > 1 \
            else '"2001:db8:100::1"'
        ctx.fail("mobility.home_agent", "a mobile node needs its home agent's address",
                 f"add home_agent = {example} under [mobility]")
    if not coas:
        ctx.fail("link", "a mobile node needs at least one link with a care-of address",
                 'add coa = "2001:db8:31::2" to a [[link]]')
    home_address = mobility.home_address
    if prefix is None:
        # Interface identifiers are 64 bits (RFC 4291 §2.5.1), so a home
        # subnet is a /64 unless told otherwise.
        prefix = IPv6Network(f"{home_address}/64", strict=False)
        mobility = dataclasses.replace(mobility, home_prefix=prefix)
    if home_address not in prefix:
        ctx.fail("mobility.home_address",
                 f"{home_address} is outside home_prefix {prefix}",
                 f"write a home address inside {prefix}, such as {_quote(str(prefix[0x10]))}"
                 if prefix.num_addresses > 0x10 else "fix home_address or home_prefix")
    if home_address in coas:
        ctx.fail(f"link[{coas[home_address]}].coa",
                 "the care-of address equals the home address",
                 "write the address the link has on the visited network")
    if not any(address.ip == mobility.home_address for address in tun.addresses):
        ctx.fail("tun.addresses", f"the home address {mobility.home_address} is not on the TUN",
                 f'add "{mobility.home_address}/{prefix.prefixlen}" to tun.addresses (first)')
    return mobility


def _check_peers(ctx: _Context, links: tuple[LinkConfig, ...], peers: tuple[PeerConfig, ...]) -> None:
    _check_unique_names(ctx, "peer", peers)
    drivers = {link.driver for link in links}
    owner: dict[Network, int] = {}
    default_peer: int | None = None
    for i, peer in enumerate(peers):
        if peer.framing not in drivers:
            ctx.fail(f"peer[{i}].framing",
                     f"no [[link]] uses the {peer.framing} driver to reach this peer",
                     f'add a [[link]] with driver = "{peer.framing}", or change framing')
        for j, prefix in enumerate(peer.prefixes):
            if prefix in owner:
                ctx.fail(f"peer[{i}].prefixes[{j}]",
                         f"{prefix} already leads to peer[{owner[prefix]}]",
                         "list each on-wire prefix under one peer only")
            owner[prefix] = i
        if peer.default:
            if default_peer is not None:
                ctx.fail(f"peer[{i}].default", f"peer[{default_peer}] is already the default",
                         "set default = true on one peer only")
            default_peer = i


def _check_keys(ctx: _Context, keys: KeysConfig, ike: IkeConfig | None,
                policies: tuple[PolicyConfig, ...]) -> None:
    if keys.mode is KeyMode.IKE and ike is None:
        ctx.fail("keys.mode", '"ike" needs an [ike] section',
                 'add [ike] with psk_file or certificates, or write mode = "static"')
    if keys.mode is KeyMode.STATIC and ike is not None:
        ctx.fail("ike", 'an [ike] section is set but keys.mode is "static"',
                 'write mode = "ike" under [keys], or remove [ike]')
    if keys.mode is KeyMode.IKE and keys.sa:
        ctx.fail("keys.sa[0]", 'static SAs need keys.mode = "static"',
                 'remove the [[keys.sa]] tables (IKE makes the SAs), or write mode = "static"')
    _check_unique_names(ctx, "keys.sa", keys.sa)
    if ike is not None:
        protect_out = {pc.name for pc in policies
                       if str(pc.action) == "protect" and pc.direction is Direction.OUT}
        for i, peer in enumerate(ike.peers):
            for j, name in enumerate(peer.policies):
                if name not in protect_out:
                    ctx.fail(f"ike.peer[{i}].policies[{j}]",
                             f"{_show(name)} is not an outbound protect policy",
                             "name a [[policy]] with direction = \"out\" and action = \"protect\"")
    used: dict[tuple[Direction, Address, int], int] = {}
    for i, sa in enumerate(keys.sa):
        # RFC 4301 §4.1: an inbound SA is found by SPI (and destination).
        slot = (sa.direction, sa.dst, sa.spi)
        if slot in used:
            free = max(s.spi for s in keys.sa) + 1
            free = free if free <= 0xFFFFFFFF else 0x100
            ctx.fail(f"keys.sa[{i}].spi",
                     f"SPI {sa.spi:#x} is already used by keys.sa[{used[slot]}] "
                     f"({_quote(keys.sa[used[slot]].name)}) for direction {sa.direction.value} "
                     f"to {sa.dst}",
                     f"pick another SPI, such as {free:#x}")
        used[slot] = i


def _check_policies(ctx: _Context, keys: KeysConfig, policies: tuple[PolicyConfig, ...]) -> None:
    _check_unique_names(ctx, "policy", policies)
    sas = {sa.name: sa for sa in keys.sa}
    for i, policy in enumerate(policies):
        where = f"policy[{i}]"
        if policy.action is not Action.PROTECT:
            if policy.sa:
                ctx.fail(f"{where}.sa", f"a {policy.action} policy uses no SA",
                         'remove sa, or write action = "protect"')
            continue
        if keys.mode is KeyMode.IKE:
            if policy.sa:
                ctx.fail(f"{where}.sa", "with IKE, the SAs of a policy are negotiated",
                         "remove sa from this policy")
            continue
        if not policy.sa:
            example = next(iter(sas), "mn-cn-out")
            ctx.fail(f"{where}.sa", "a protect policy needs the SAs to apply",
                     f'add sa = ["{example}"] naming a [[keys.sa]]')
        for j, name in enumerate(policy.sa):
            if name not in sas:
                close = _suggest(name, list(sas))
                known = ", ".join(sas) or "none"
                ctx.fail(f"{where}.sa[{j}]", f"no [[keys.sa]] is named {_quote(name)}",
                         f"did you mean {_quote(close)}?" if close
                         else f"name one of the SAs in [[keys.sa]] (known: {known})")
            if sas[name].direction is not policy.direction:
                ctx.fail(f"{where}.sa[{j}]",
                         f"SA {_quote(name)} is {sas[name].direction.value}bound but the policy "
                         f"is {policy.direction.value}bound",
                         "name SAs of the policy's direction")


# --------------------------------------------------------------------------
# TOML syntax errors: point at the line and guess the key


_TOML_POSITION_RE = re.compile(r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$")
_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\[\]#]+?)\s*\]\]?\s*(?:#.*)?$")
_ASSIGN_RE = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=\s*(.*)$")


def _syntax_error(file: str, text: str, message: str) -> ConfigError:
    match = _TOML_POSITION_RE.match(message)
    lines = text.splitlines()
    if match and match.group("line"):
        line_no, column = int(match.group("line")), int(match.group("col"))
        where = f"line {line_no}, column {column}"
    else:
        line_no, column = max(len(lines), 1), None
        where = f"line {line_no} (end of file)"
    reason = (match.group("msg") if match else message).rstrip(".")
    line = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
    key = _guess_key(lines, line_no) or f"line {line_no}"
    return ConfigError(file, key, f"TOML syntax error at {where}: {reason}",
                       _syntax_hint(reason, line))


def _guess_key(lines: list[str], line_no: int) -> str | None:
    """The dotted key the broken line sets, from the table headers above it."""
    if not 0 < line_no <= len(lines):
        return None
    current = lines[line_no - 1]
    header = _HEADER_RE.match(current)
    if header:
        return header.group(2).strip()
    assign = _ASSIGN_RE.match(current)
    if not assign:
        return None
    key = assign.group(1).strip()
    table, counts = "", dict[str, int]()
    for previous in lines[:line_no - 1]:
        found = _HEADER_RE.match(previous)
        if not found:
            continue
        name = found.group(2).strip()
        if found.group(1) == "[[":
            counts[name] = counts.get(name, -1) + 1
            table = f"{name}[{counts[name]}]"
        else:
            table = name
    # An array of tables nested in another ([[keys.sa]] after [keys]) keeps its own count.
    return f"{table}.{key}" if table else key


def _syntax_hint(reason: str, line: str) -> str:
    assign = _ASSIGN_RE.match(line)
    value = assign.group(2).strip() if assign else ""
    value = value.split(" #", 1)[0].strip()
    if reason.startswith(("Cannot declare", "Cannot overwrite", "Cannot mutate")):
        return "each key and [table] may appear once; use [[name]] for repeated tables"
    if reason.startswith("Unterminated string"):
        return "close the string with the same quote it opened with, on the same line"
    if "Unescaped" in reason or "escape" in reason:
        return "double the backslash (\\\\) or use a 'literal string'"
    if assign and value and value[0] not in "\"'[{" and value not in ("true", "false") \
            and not re.fullmatch(r"[+-]?(0x[0-9a-fA-F_]+|[0-9_]+(\.[0-9_]+)?([eE][+-]?\d+)?)", value):
        key = assign.group(1).strip()
        return f'strings and addresses take double quotes: write {key} = "{value}"'
    if reason.startswith(("Invalid statement", "Expected '='")):
        return "each line is a [table], a [[table]] or key = value"
    return "fix the TOML at that position (see https://toml.io and docs/configuration.md)"
