"""Read a node config (TOML) into :class:`~vmip.config.model.NodeConfig`.

Every mistake becomes one :class:`ConfigError` naming the file, the dotted
key (``link[1].coa``, indexes count from 0 in file order) and what to write
instead; nothing else escapes, whatever the input (the hypothesis tests in
tests/config feed it arbitrary documents).  The first mistake found wins:
unknown keys of a table are reported before its values, values before the
cross-checks between sections.

Which keys a table has, and how the simple ones are read, is the model's
field metadata (:mod:`vmip.config.schema`); this module reads the keys that
depend on others, and checks what spans keys and sections.

Key files are read here, once per load: the material goes into the model
(``SaConfig.enc_key``/``auth_key``, ``IkeConfig.psk``) after its size is
checked against the suite, so nothing below the config layer opens them.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
from collections.abc import Callable, Mapping
from ipaddress import IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from vmip import log
from vmip.compat import tomllib
from vmip.config import values as v
from vmip.config.errors import ConfigError
from vmip.config.keyfile import read_key_file
from vmip.config.model import (
    DEFAULT_KEEPALIVE,
    DEFAULT_PORTS,
    LIFETIME_KEYS,
    MAX_CARE_OF_ADDRESSES,
    PROTOCOL_NUMBERS,
    Action,
    Address,
    ControlConfig,
    Direction,
    Driver,
    Endpoint,
    FlowConfig,
    IkeConfig,
    IkePeerConfig,
    KeyMode,
    KeysConfig,
    Lifetime,
    LinkConfig,
    LoggingConfig,
    MobilityConfig,
    Network,
    NodeConfig,
    NodeSection,
    PeerConfig,
    PolicyConfig,
    Role,
    SaConfig,
    TunConfig,
)
from vmip.config.schema import DERIVED, Key, headers, keys_of, settings
from vmip.ipsec.seqstate import DEFAULT_STATE_ROOT
from vmip.ipsec.suites import SUITES
from vmip.wire import proto

_log = log.get_logger(__name__)

T = TypeVar("T")

# sockaddr_un.sun_path is 108 bytes, NUL included.
MAX_SOCKET_PATH = 107
MIN_PSK_LEN = 16
#: Protocols whose selectors have ports (RFC 4301 §4.4.1.1): TCP, UDP, SCTP, UDP-Lite.
PORTED_PROTOCOLS = (proto.TCP, proto.UDP, proto.SCTP, proto.UDPLITE)

#: The header of each section's table, as messages name it ("[[keys.sa]]").
_HEADERS: dict[type, str] = {kind: header for header, kind in headers(NodeConfig)}

#: Where each key is at home, to say "'coa' belongs in [[link]]" when a key
#: is written under the wrong table (a key of several tables: the first).
_TABLE_OF_KEY: dict[str, str] = {}
for _header, _kind in headers(NodeConfig):
    for _key in keys_of(_kind):
        _TABLE_OF_KEY.setdefault(_key, _header)

_ROOT_KEYS = keys_of(NodeConfig)
_NOT_GIVEN: Any = object()


# --------------------------------------------------------------------------
# Entry points


def load_config(path: str | os.PathLike[str], *, check_key_files: bool = True,
                before_check: Callable[[Mapping[str, Any]], None] | None = None) -> NodeConfig:
    """Read and check the config file at *path*.

    ``check_key_files=False`` skips opening the key files (for tools that
    only need addresses, e.g. a config generator checking its own output).
    *before_check* sees the parsed TOML document before it is checked (e.g.
    ``vmip run`` reads ``node.user`` there, which decides which key-file
    owner is accepted), so the file is read and parsed once.
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
    return parse_config(text, shown, check_key_files=check_key_files, before_check=before_check)


def parse_config(text: str, path: str | os.PathLike[str], *,
                 check_key_files: bool = True,
                 before_check: Callable[[Mapping[str, Any]], None] | None = None) -> NodeConfig:
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
    if before_check is not None:
        before_check(data)
    return build_config(data, shown, check_key_files=check_key_files)


def build_config(data: Mapping[str, Any], path: str | os.PathLike[str], *,
                 check_key_files: bool = True) -> NodeConfig:
    """Check an already-parsed TOML document (a dict as tomllib returns it)."""
    ctx = v.Context(os.fspath(path), check_key_files)
    if not isinstance(data, Mapping):
        ctx.fail(None, "the document is not a TOML table", "start from configs/mn.toml")
    root = _Table(ctx, data, "", NodeConfig, "the top level")
    node = _parse_node(ctx, root)
    tun = _parse_tun(ctx, root)
    links = tuple(_parse_link(ctx, table, i) for i, table in enumerate(root.tables("link")))
    peers = tuple(_parse_peer(ctx, table, i) for i, table in enumerate(root.tables("peer")))
    mobility = _parse_mobility(ctx, root)
    keys = _parse_keys(ctx, root, node)
    policies = tuple(_parse_policy(ctx, table, i)
                     for i, table in enumerate(root.tables("policy")))
    flows = tuple(_parse_flow(ctx, table) for table in root.tables("flow"))
    ike_table = root.table("ike")
    ike = _parse_ike(ctx, ike_table) if ike_table is not None else None
    control = _parse_control(ctx, root, node)
    logging_ = _parse_logging(ctx, root)

    mobility = _check_roles(ctx, node, tun, links, mobility)
    _check_peers(ctx, links, peers)
    _check_keys(ctx, keys, ike, policies)
    _check_replay_for_copies(ctx, keys, mobility)
    _check_own_addresses(ctx, node, tun, links, keys)
    _check_raw_sends(ctx, tun, links, peers)
    _check_admission(ctx, node, mobility, ike, policies)
    _check_policies(ctx, keys, policies)
    _check_flows(ctx, node, links, flows)
    if keys.mode is KeyMode.IKE and ike is not None:
        _check_ike_paths(ctx, links, peers, ike, policies)
    config = NodeConfig(
        source=ctx.source, node=node, tun=tun, links=links, peers=peers, mobility=mobility,
        keys=keys, policies=policies, flows=flows, ike=ike, control=control, logging=logging_,
    )
    _log.debug("config loaded", file=ctx.file, node=node.name,
               roles=",".join(node.roles), sas=len(keys.sa), policies=len(policies))
    return config




# --------------------------------------------------------------------------
# One table of the file


class _Table:
    """One TOML table: its dotted path, and typed access to its keys.

    *kind* is the section the table holds (its keys come from the schema),
    or, for the few tables that are not sections, the tuple of their keys.
    """

    def __init__(self, ctx: v.Context, data: Mapping[str, Any], where: str,
                 kind: type | tuple[str, ...], header: str | None = None):
        self.ctx = ctx
        self.data = data
        self.where = where
        if isinstance(kind, tuple):
            known, self.schema = kind, {}
            self.header = header or ""
        else:
            self.schema = {key.name: key for _, key in settings(kind)}
            known = tuple(self.schema)
            self.header = header or _HEADERS[kind]
        for key in data:
            if key not in known:
                self._unknown(str(key), known)

    def _unknown(self, key: str, known: tuple[str, ...]) -> NoReturn:
        path = v.join(self.where, key)
        is_table = isinstance(self.data[key], (Mapping, list)) and not self.where
        close = v.suggest(key, known)
        home = _TABLE_OF_KEY.get(key)
        if not self.where and key not in _ROOT_KEYS and home is not None:
            hint = f"'{key}' belongs in {home}; move it there"
        elif home is not None and home != self.header and close is None:
            hint = f"'{key}' belongs in {home}, not in {self.header}; move it there"
        elif close is not None:
            hint = f"did you mean '{close}'?"
        else:
            hint = f"known keys in {self.header}: {', '.join(known)}"
        what = "table" if is_table else "key"
        shown = repr(key) if v.BARE_KEY_RE.fullmatch(key) else v.quote(key)
        self.ctx.fail(path, f"unknown {what} {shown}", hint)

    def path(self, key: str | int) -> str:
        return v.join(self.where, key)

    def get(self, key: str, parse: Callable[[v.Context, str, Any], T],
            default: Any = v.MISSING, *, example: str = "") -> T:
        value = self.data.get(key, v.MISSING)
        if value is v.MISSING:
            if default is v.MISSING:
                self.ctx.fail(self.path(key), "is missing",
                              f"add {key} = {example} to {self.header}")
            return default
        return parse(self.ctx, self.path(key), value)

    def value(self, key: str, default: Any = _NOT_GIVEN) -> Any:
        """Key *key* read as the schema says; *default* stands in for a DERIVED one."""
        spec: Key = self.schema[key]
        if default is _NOT_GIVEN:
            default = spec.default
        if spec.parse is None or default is DERIVED:
            raise TypeError(f"{self.header} {key}: the loader must read this key itself")
        return self.get(key, spec.parse, default, example=spec.example)

    def build(self, kind: type[T], defaults: Mapping[str, Any] | None = None,
              **given: Any) -> T:
        """A *kind* from the *given* fields (already read) and the table's other keys.

        The other keys are read in field order, so the first bad one is the
        one reported; *defaults* holds the DERIVED defaults, by field name.
        """
        fields = dict(given)
        for field, spec in settings(kind):
            if field.name not in fields:
                fields[field.name] = self.value(spec.name,
                                                (defaults or {}).get(field.name, _NOT_GIVEN))
        return kind(**fields)

    def table(self, key: str) -> Mapping[str, Any] | None:
        """A sub-table written ``[key]`` (or ``key = {...}``); None when absent."""
        value = self.data.get(key, v.MISSING)
        if value is v.MISSING:
            return None
        if isinstance(value, list):
            self.ctx.fail(self.path(key), f"is a list of tables ([[{self.path(key)}]])",
                          f"write [{self.path(key)}] with single brackets: there is only one")
        if not isinstance(value, Mapping):
            self.ctx.fail(self.path(key), f"expected a table, got {v.type_name(value)} {v.show(value)}",
                          f"write the keys under a [{self.path(key)}] header")
        return value

    def tables(self, key: str) -> list[tuple[str, Mapping[str, Any]]]:
        """An array of tables written ``[[key]]``; empty when absent."""
        value = self.data.get(key, v.MISSING)
        if value is v.MISSING:
            return []
        if isinstance(value, Mapping):
            self.ctx.fail(self.path(key), "is a single table ([" + self.path(key) + "])",
                          f"write [[{self.path(key)}]] with double brackets, once per entry")
        if not isinstance(value, list):
            self.ctx.fail(self.path(key), f"expected tables, got {v.type_name(value)} {v.show(value)}",
                          f"write a [[{self.path(key)}]] header for each entry")
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                self.ctx.fail(v.join(self.path(key), i),
                              f"expected a table, got {v.type_name(item)} {v.show(item)}",
                              f"write a [[{self.path(key)}]] header for each entry")
        return [(v.join(self.path(key), i), item) for i, item in enumerate(value)]
def _endpoint(framing_port: int | None) -> v.Parser[Endpoint]:
    example = '"192.0.2.2:6275" or "[2001:db8:10::2]:6275"'

    def parse(ctx: v.Context, path: str, value: Any) -> Endpoint:
        if not isinstance(value, str):
            v.wrong_type(ctx, path, value, "an address:port string", '"192.0.2.2:6275"')
        host, port_text = value, None
        if value.startswith("["):
            close = value.find("]")
            if close < 0 or (close + 1 < len(value) and value[close + 1] != ":"):
                ctx.fail(path, f"{v.show(value)} is not an address:port", f"write {example}")
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
            ctx.fail(path, f"{v.show(value)} is not an address:port",
                     f"write {example} (addresses only, no host names)")
        if value.startswith("[") and address.version != 6:
            ctx.fail(path, f"{v.show(value)} puts an IPv4 address in brackets", f"write {example}")
        if port_text is None:
            if framing_port is None:
                ctx.fail(path, f"{v.show(value)} has no port", f"write {example}")
            return Endpoint(address, framing_port)
        if not port_text.isdigit() or not port_text.isascii() or not 1 <= int(port_text) <= 65535:
            ctx.fail(path, f"{v.show(value)} has no valid port (1-65535)", f"write {example}")
        return Endpoint(address, int(port_text))
    return parse


# --------------------------------------------------------------------------
# Sections: the keys that depend on others, then the schema's for the rest


def _parse_node(ctx: v.Context, root: _Table) -> NodeSection:
    table = _Table(ctx, root.table("node") or {}, "node", NodeSection)
    stem = ctx.source.stem
    default_name = stem if v.NAME_RE.fullmatch(stem) else "vmip"
    node = table.build(NodeSection, defaults={"name": default_name})
    if node.user is not None:
        try:
            pwd.getpwnam(node.user)
        except KeyError:
            ctx.fail("node.user", f"no user named {node.user!r} on this machine",
                     f"create it (useradd --system {node.user}) or remove node.user")
    return node


def _parse_tun(ctx: v.Context, root: _Table) -> TunConfig:
    return _Table(ctx, root.table("tun") or {}, "tun", TunConfig).build(TunConfig)


def _parse_link(ctx: v.Context, entry: tuple[str, Mapping[str, Any]], index: int) -> LinkConfig:
    where, data = entry
    table = _Table(ctx, data, where, LinkConfig)
    driver = table.value("driver")
    default_port = DEFAULT_PORTS[driver]
    if driver is Driver.RAW:
        if "port" in data:
            ctx.fail(table.path("port"), "the raw driver has no port",
                     "remove port, or use driver = \"udp\"")
        port = None
    else:
        port = table.get("port", v.integer(str(default_port), 1, 65535, "a UDP port"),
                         default_port)
    keepalive = 0 if driver is Driver.RAW else DEFAULT_KEEPALIVE
    return table.build(LinkConfig, {"keepalive": keepalive}, driver=driver, port=port)


def _parse_peer(ctx: v.Context, entry: tuple[str, Mapping[str, Any]], index: int) -> PeerConfig:
    where, data = entry
    table = _Table(ctx, data, where, PeerConfig)
    framing = table.value("framing")
    prefixes = table.value("prefixes")
    for i, prefix in enumerate(prefixes):
        # Only ESP-in-UDP peers speak IPv4 on the wire; vmip's own framing
        # carries IPv6 packets.
        if prefix.version == 4 and framing is not Driver.RFC3948:
            ctx.fail(v.join(table.path("prefixes"), i),
                     f"{v.quote(str(prefix))} is IPv4, but {framing} framing carries IPv6 packets",
                     'write an IPv6 prefix, or framing = "rfc3948" for a plain IPsec peer')
    if framing is Driver.RAW:
        if "endpoint" in data:
            ctx.fail(table.path("endpoint"), "raw framing has no underlay endpoint",
                     "remove endpoint: the operating system routes raw packets")
        endpoint = None
    else:
        endpoint = table.get("endpoint", _endpoint(DEFAULT_PORTS[framing]), None)
    return table.build(PeerConfig, framing=framing, prefixes=prefixes, endpoint=endpoint)


def _parse_mobility(ctx: v.Context, root: _Table) -> MobilityConfig:
    table = _Table(ctx, root.table("mobility") or {}, "mobility", MobilityConfig)
    lifetime = table.value("binding_lifetime")
    if lifetime % 4:
        # RFC 6275 §6.1.7: the lifetime field counts 4-second units.
        ctx.fail(table.path("binding_lifetime"), f"{lifetime} is not a multiple of 4",
                 f"write {lifetime - lifetime % 4} or {lifetime - lifetime % 4 + 4} "
                 "(RFC 6275 counts 4-second units)")
    return table.build(MobilityConfig, binding_lifetime=lifetime)


def _parse_lifetime(ctx: v.Context, path: str, value: Any) -> tuple[Lifetime, Lifetime]:
    if not isinstance(value, Mapping):
        v.wrong_type(ctx, path, value, "an inline table",
                     "{ soft_seconds = 3000, hard_seconds = 3600 }")
    table = _Table(ctx, value, path, LIFETIME_KEYS, "lifetime")
    count = v.integer("1000000", 1, 2**63 - 1, "a count")  # TOML integers are 64-bit
    limits: dict[str, Any] = {
        key: table.get(key, v.seconds("3600") if key.endswith("seconds") else count, None)
        for key in LIFETIME_KEYS
    }
    for unit in ("seconds", "bytes", "packets"):
        soft, hard = limits[f"soft_{unit}"], limits[f"hard_{unit}"]
        if soft is not None and hard is not None and soft > hard:
            # RFC 4301 §4.4.2.1: the soft limit warns before the hard one ends the SA.
            ctx.fail(table.path(f"soft_{unit}"),
                     f"soft limit {soft} is above the hard limit {hard}",
                     f"write a soft_{unit} below hard_{unit}")
    return (Lifetime(limits["soft_seconds"], limits["soft_bytes"], limits["soft_packets"]),
            Lifetime(limits["hard_seconds"], limits["hard_bytes"], limits["hard_packets"]))


def _parse_sa(ctx: v.Context, entry: tuple[str, Mapping[str, Any]],
              default_window: int) -> SaConfig:
    where, data = entry
    table = _Table(ctx, data, where, SaConfig)
    first = {key: table.value(key) for key in ("name", "spi", "direction", "src", "dst")}
    src, dst = first["src"], first["dst"]
    if src.version != dst.version:
        ctx.fail(table.path("dst"), f"{dst} is IPv{dst.version} but src {src} is IPv{src.version}",
                 "write both addresses of the SA in the same IP version")
    mode = table.value("mode")
    suite_name = table.value("suite")
    suite = SUITES[suite_name]
    key_file, enc_key = _sa_key_file(ctx, table, "key_file", suite_name, suite.enc_key_len,
                                     "encryption key", "no encryption key (NULL encryption)")
    auth_key_file, auth_key = _sa_key_file(
        ctx, table, "auth_key_file", suite_name, suite.auth_key_len, "authentication key",
        "an AEAD suite, which has no separate authentication key")
    soft, hard = table.get("lifetime", _parse_lifetime, (None, None))
    if soft is None:
        soft, hard = Lifetime(), Lifetime()
    return table.build(SaConfig, {"replay_window": default_window}, **first, mode=mode,
                       suite=suite_name, key_file=key_file, auth_key_file=auth_key_file,
                       soft=soft, hard=hard, enc_key=enc_key, auth_key=auth_key)


def _sa_key_file(ctx: v.Context, table: _Table, key: str, suite_name: str, needed: int,
                 what: str, why_none: str) -> tuple[Path | None, bytes | None]:
    """One key file of an SA: its path and, when key files are read, its key.

    The key's size is checked against the suite here, once; messages give
    sizes and paths, never the key.
    """
    path = table.path(key)
    if needed == 0:
        if key in table.data:
            ctx.fail(path, f"suite {suite_name} has {why_none}",
                     f"remove {key} from this [[keys.sa]]")
        return None, None
    example = '"keys/mn-to-cn.key"' if key == "key_file" else '"keys/mn-to-ha-mh.auth"'
    raw = table.get(key, v.string(example), example=example)
    resolved = ctx.resolve(raw)
    shown = ctx.shown_path(raw)
    if not ctx.check_key_files:
        return resolved, None
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
    # Secret: prints as <redacted> should it ever reach a log line.
    return resolved, log.Secret(material)


def _parse_keys(ctx: v.Context, root: _Table, node: NodeSection) -> KeysConfig:
    table = _Table(ctx, root.table("keys") or {}, "keys", KeysConfig)
    window = table.value("replay_window")
    mode = table.value("mode")
    backend = table.value("backend")
    sa = tuple(_parse_sa(ctx, entry, window) for entry in table.tables("sa"))
    # Static keys resume their sequence numbers from here (vmip.ipsec.seqstate).
    state_dir = table.get("state_dir", v.file_path(f'"/var/lib/vmip/{node.name}"'),
                          DEFAULT_STATE_ROOT / node.name)
    return table.build(KeysConfig, mode=mode, backend=backend, replay_window=window, sa=sa,
                       state_dir=state_dir)


def _parse_policy(ctx: v.Context, entry: tuple[str, Mapping[str, Any]],
                  index: int) -> PolicyConfig:
    where, data = entry
    table = _Table(ctx, data, where, PolicyConfig)
    selector = {key: table.value(key) for key in ("name", "direction", "src", "dst")}
    src, dst = selector["src"], selector["dst"]
    if src.version != dst.version:
        ctx.fail(table.path("dst"), f"{dst} is IPv{dst.version} but src {src} is IPv{src.version}",
                 'write both prefixes in the same IP version ("::/0" matches any IPv6 address)')
    for key in ("protocol", "src_ports", "dst_ports", "icmp_type", "icmp_code", "mh_type"):
        selector[key] = table.value(key)
    protocol = selector["protocol"]
    icmp_type, icmp_code = selector["icmp_type"], selector["icmp_code"]
    # RFC 4301 §4.4.1.1: ports exist only for some protocols; ICMP type/code
    # and MH type take their place for ICMPv6 and MH.
    for key in ("src_ports", "dst_ports"):
        if selector[key] is not None and protocol not in PORTED_PROTOCOLS:
            ctx.fail(table.path(key), "ports need a protocol that has them",
                     'add protocol = "tcp" or "udp" to this policy, or write ' + key + ' = "any"')
    if (icmp_type is not None or icmp_code is not None) and protocol != PROTOCOL_NUMBERS["icmpv6"]:
        key = "icmp_type" if icmp_type is not None else "icmp_code"
        ctx.fail(table.path(key), "an ICMPv6 selector needs protocol = \"icmpv6\"",
                 'add protocol = "icmpv6" to this policy')
    if icmp_code is not None and icmp_type is None:
        ctx.fail(table.path("icmp_code"), "an ICMPv6 code without a type",
                 "add icmp_type (the code is only meaningful within a type)")
    if selector["mh_type"] is not None and protocol != PROTOCOL_NUMBERS["mh"]:
        ctx.fail(table.path("mh_type"), "an MH type selector needs protocol = \"mh\"",
                 'add protocol = "mh" to this policy')
    return table.build(PolicyConfig, **selector)


_SEND_HINT = 'write "best", "duplicate" or "link:<name of a [[link]]>", such as "link:lte0"'


def _flow_send(ctx: v.Context, path: str, value: Any) -> str:
    text = v.string('"duplicate"')(ctx, path, value)
    if text in ("best", "duplicate"):
        return text
    if text.startswith("link:"):
        if not v.NAME_RE.fullmatch(text[5:]):
            ctx.fail(path, f"{v.show(text)} does not name a link", _SEND_HINT)
        return text
    close = v.suggest(text, ("best", "duplicate"))
    ctx.fail(path, f"{v.show(text)} is not a way to send",
             f'did you mean "{close}"? ' + _SEND_HINT if close else _SEND_HINT)


def _parse_flow(ctx: v.Context, entry: tuple[str, Mapping[str, Any]]) -> FlowConfig:
    where, data = entry
    table = _Table(ctx, data, where, FlowConfig)
    name = table.value("name")
    protocol = table.value("protocol")
    remote = table.value("remote")
    ports = {key: table.value(key) for key in ("local_ports", "remote_ports")}
    for key, value in ports.items():
        # Ports are read where the protocol's header has them (RFC 4301 §4.4.1.1).
        if value is not None and protocol not in PORTED_PROTOCOLS:
            ctx.fail(table.path(key), "ports need a protocol that has them",
                     f'add protocol = "tcp" or "udp" to this flow, or remove {key}')
    send = table.get("send", _flow_send, "best", example='"duplicate"')
    return table.build(FlowConfig, name=name, protocol=protocol, remote=remote, send=send,
                       **ports)


def _private_file(ctx: v.Context, table: _Table, key: str,
                  example: str) -> tuple[Path | None, bytes | None]:
    """A file holding a secret (PSK, private key): present and private.

    Returns its path and, for ``psk_file`` when key files are read, the PSK.
    """
    raw = table.get(key, v.string(example), None)
    if raw is None:
        return None, None
    resolved, shown = ctx.resolve(raw), ctx.shown_path(raw)
    if not ctx.check_key_files:
        return resolved, None
    psk = None
    try:
        if key == "psk_file":
            psk = read_key_file(resolved)
        else:
            _check_private(resolved)
    except ConfigError as exc:
        ctx.fail(table.path(key), f"{shown}: {exc.problem}", exc.hint.replace(str(resolved), shown))
    if psk is not None and len(psk) < MIN_PSK_LEN:
        # RFC 7296 §2.15: a PSK must be as strong as the keys derived from it.
        ctx.fail(table.path(key), f"{shown} holds a {len(psk)}-byte PSK, too short",
                 f"write a random PSK of at least {MIN_PSK_LEN} bytes (hex) in {shown}")
    return resolved, None if psk is None else log.Secret(psk)


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


def _parse_ike(ctx: v.Context, data: Mapping[str, Any]) -> IkeConfig:
    table = _Table(ctx, data, "ike", IkeConfig)
    local_id = table.value("local_id")
    psk_file, psk = _private_file(ctx, table, "psk_file", '"keys/ike.psk"')
    certificate = table.value("certificate")
    private_key, _ = _private_file(ctx, table, "private_key", '"certs/mn.key"')
    ca = table.value("ca")
    proposals = table.value("proposals")
    esp_proposals = table.value("esp_proposals")
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
    peers = [_Table(ctx, item, where, IkePeerConfig).build(IkePeerConfig)
             for where, item in table.tables("peer")]
    _check_unique_names(ctx, "ike.peer", peers)
    return table.build(IkeConfig, local_id=local_id, psk_file=psk_file, certificate=certificate,
                       private_key=private_key, ca=ca, proposals=proposals,
                       esp_proposals=esp_proposals, peers=tuple(peers), psk=psk)


def _parse_control(ctx: v.Context, root: _Table, node: NodeSection) -> ControlConfig:
    table = _Table(ctx, root.table("control") or {}, "control", ControlConfig)
    example = f'"/run/vmip/{node.name}.sock"'
    socket = table.get("socket", v.file_path(example), None)
    if socket is not None and len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        ctx.fail(table.path("socket"), f"the socket path is longer than {MAX_SOCKET_PATH} bytes",
                 f"write a shorter path (a Unix socket limit), such as {example}")
    return table.build(ControlConfig, socket=socket)


def _parse_logging(ctx: v.Context, root: _Table) -> LoggingConfig:
    table = _Table(ctx, root.table("logging") or {}, "logging", LoggingConfig)
    file = table.get("file", v.string('"/run/vmip/mn.log"', allow_empty=True), "")
    # "" is how TOML, which has no null, spells "standard error".
    return table.build(LoggingConfig, file=ctx.resolve(file) if file else None)



# --------------------------------------------------------------------------
# Cross-checks


def _check_unique_names(ctx: v.Context, section: str, items: list[Any] | tuple[Any, ...]) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            ctx.fail(f"{section}[{i}].name",
                     f"{v.quote(item.name)} is already the name of {section}[{seen[item.name]}]",
                     "give each entry its own name")
        seen[item.name] = i


def _check_roles(ctx: v.Context, node: NodeSection, tun: TunConfig, links: tuple[LinkConfig, ...],
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
               "correspondents": mobility.correspondents,
               "multiple_care_of": mobility.multiple_care_of}
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
    if mobility.multiple_care_of and len(coas) > MAX_CARE_OF_ADDRESSES:
        # One binding per link, and one IRO rule expects at most this many CoAs.
        ctx.fail("mobility.multiple_care_of",
                 f"{len(coas)} links have a care-of address; with multiple_care_of "
                 f"at most {MAX_CARE_OF_ADDRESSES} may",
                 f"keep coa on {MAX_CARE_OF_ADDRESSES} links, or set multiple_care_of = false")
    home_address = mobility.home_address
    if prefix is None:
        # Interface identifiers are 64 bits (RFC 4291 §2.5.1), so a home
        # subnet is a /64 unless told otherwise.
        prefix = IPv6Network(f"{home_address}/64", strict=False)
        mobility = dataclasses.replace(mobility, home_prefix=prefix)
    if home_address not in prefix:
        ctx.fail("mobility.home_address",
                 f"{home_address} is outside home_prefix {prefix}",
                 f"write a home address inside {prefix}, such as {v.quote(str(prefix[0x10]))}"
                 if prefix.num_addresses > 0x10 else "fix home_address or home_prefix")
    if home_address in coas:
        ctx.fail(f"link[{coas[home_address]}].coa",
                 "the care-of address equals the home address",
                 "write the address the link has on the visited network")
    if not any(address.ip == mobility.home_address for address in tun.addresses):
        ctx.fail("tun.addresses", f"the home address {mobility.home_address} is not on the TUN",
                 f'add "{mobility.home_address}/{prefix.prefixlen}" to tun.addresses (first)')
    return mobility


def _check_peers(ctx: v.Context, links: tuple[LinkConfig, ...], peers: tuple[PeerConfig, ...]) -> None:
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


def _check_raw_sends(ctx: v.Context, tun: TunConfig, links: tuple[LinkConfig, ...],
                     peers: tuple[PeerConfig, ...]) -> None:
    """The kernel routes what a raw link sends with the same table that sends
    overlay traffic into the TUN: without ``interface`` (SO_BINDTODEVICE) an
    on-wire packet to a prefix the TUN routes would go back into the TUN."""
    unbound = [i for i, link in enumerate(links)
               if link.driver is Driver.RAW and not link.interface]
    if not unbound:
        return
    into_tun = [(f"tun.routes[{j}]", route) for j, route in enumerate(tun.routes)]
    into_tun += [(f"tun.addresses[{j}]", iface.network) for j, iface in enumerate(tun.addresses)
                 if iface.network.prefixlen < iface.max_prefixlen]
    for i, peer in enumerate(peers):
        if peer.framing is not Driver.RAW:
            continue
        for j, prefix in enumerate(peer.prefixes):
            for where, routed in into_tun:
                if prefix.version == routed.version and prefix.overlaps(routed):
                    first = unbound[0]
                    ctx.fail(f"link[{first}].interface",
                             f"raw peer[{i}].prefixes[{j}] {prefix} is also routed into the "
                             f"TUN ({where} {routed}): without an interface the kernel would "
                             f"send the on-wire packets there back into the TUN",
                             f'set interface = "eth0" (the underlay interface) on link[{first}]')


def _check_own_addresses(ctx: v.Context, node: NodeSection, tun: TunConfig,
                         links: tuple[LinkConfig, ...], keys: KeysConfig) -> None:
    """A node receives only on-wire packets addressed to its own on-wire
    addresses (tun.addresses, an MN's coa, a link's own_addresses or what a
    raw/rfc3948 link derives): say so when the config cannot receive."""
    derives_at_start = any(
        link.own_addresses is None and link.driver is Driver.RAW and link.interface
        for link in links)
    known = {iface.ip for iface in tun.addresses}
    for link in links:
        if link.coa is not None:
            known.add(link.coa)
        if link.own_addresses is not None:
            known.update(link.own_addresses)
        elif link.driver in (Driver.RAW, Driver.RFC3948) and link.bind is not None:
            known.add(link.bind)
    if not tun.addresses and not known and not derives_at_start:
        ctx.fail("tun.addresses", "this node has no on-wire address: it could receive nothing",
                 'add an overlay address to tun.addresses, or own_addresses = '
                 '["2001:db8:20::2"] (or interface, on a raw link) to a [[link]]')
    if not tun.addresses and (Role.MN in node.roles or Role.HA in node.roles):
        ctx.fail("tun.addresses", "is empty, but a mobile node or home agent needs its "
                 "home-prefix address on the TUN", 'add "2001:db8:100::1/64" (an HA) '
                 'or the home address (an MN)')
    raw = [i for i, link in enumerate(links) if link.driver is Driver.RAW]
    if not raw or derives_at_start:
        return   # the interface's addresses are known only where the node runs
    for j, sa in enumerate(keys.sa):
        if sa.direction is not Direction.IN or sa.dst in known:
            continue
        first = raw[0]
        ctx.fail(f"keys.sa[{j}].dst",
                 f"{sa.dst} is not an on-wire address of this node (tun.addresses, coa, "
                 f"own_addresses), so every packet to it over raw link[{first}] would be "
                 f"dropped as rx_drop_not_for_us",
                 f'add own_addresses = ["{sa.dst}"] to link[{first}], or set link[{first}].'
                 f'interface to read them from the interface')


def _check_keys(ctx: v.Context, keys: KeysConfig, ike: IkeConfig | None,
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
                             f"{v.show(name)} is not an outbound protect policy",
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
                     f"({v.quote(keys.sa[used[slot]].name)}) for direction {sa.direction.value} "
                     f"to {sa.dst}",
                     f"pick another SPI, such as {free:#x}")
        used[slot] = i


def _check_replay_for_copies(ctx: v.Context, keys: KeysConfig, mobility: MobilityConfig) -> None:
    """Anti-replay is what drops the extra copies of duplicate mode.

    A peer with several bindings here may send each ESP packet on every path
    (docs/multi-coa.md); the receiver's replay window accepts the first copy
    and drops the others (RFC 4303 §3.4.3).  Without a window every copy would
    reach the TUN, and an authentic packet re-sent from another bound CoA
    would look fresh.
    """
    if not (mobility.max_care_of_addresses or mobility.multiple_care_of):
        return
    fix = ("give it a window (at least 32; the default is 1024), or set "
           "max_care_of_addresses = 0 and multiple_care_of = false under [mobility]")
    problem = ("0 turns anti-replay off, but with several care-of addresses a peer may "
               "send each packet on every path, and every copy would be delivered")
    if keys.replay_window == 0:
        ctx.fail("keys.replay_window", problem, fix)
    for i, sa in enumerate(keys.sa):
        if sa.direction is Direction.IN and sa.replay_window == 0:
            ctx.fail(f"keys.sa[{i}].replay_window", problem, fix)


def _check_ike_paths(ctx: v.Context, links: tuple[LinkConfig, ...], peers: tuple[PeerConfig, ...],
                     ike: IkeConfig, policies: tuple[PolicyConfig, ...]) -> None:
    """What IKE needs from the underlay for each [[ike.peer]] (docs/ike.md "IPv4 underlay").

    An IKE peer reached through an rfc3948 [[peer]] runs IKE between underlay
    addresses: the link needs a ``bind`` of the peer's IP version.  An IPv4
    IKE peer can only be such a peer (vmip's own framing carries IPv6), and
    IPv4 outer addresses carry IPv6 only in tunnel mode, so it needs IPv6
    protect policies to propose as traffic selectors.
    """
    def rfc3948_peer(address):
        for peer in peers:
            if peer.framing is Driver.RFC3948 and any(
                    p.version == address.version and address in p for p in peer.prefixes):
                return peer
        return None

    for i, ike_peer in enumerate(ike.peers):
        address = ike_peer.address
        where = f"ike.peer[{i}].address"
        plain = rfc3948_peer(address)
        if plain is None and address.version == 4:
            ctx.fail(where, f"{address} is IPv4, but IKE over vmip's own framing runs between "
                     "IPv6 overlay addresses",
                     f'add a [[peer]] with framing = "rfc3948" and prefixes = ["{address}/32"] '
                     'and an rfc3948 [[link]] with an IPv4 bind, or write the IPv6 overlay '
                     'address of the peer')
        if plain is None:
            continue
        binds = [link for link in links if link.driver is Driver.RFC3948
                 and link.bind is not None and link.bind.version == address.version]
        if not binds:
            example = "192.0.2.1" if address.version == 4 else "2001:db8:ff::1"
            ctx.fail(where, f"IKE with {address} runs over an rfc3948 link, but no rfc3948 "
                     f"[[link]] binds an IPv{address.version} address",
                     f'set bind = "{example}" (this host\'s underlay address) on the rfc3948 '
                     "[[link]]")
        if address.version == 4:
            wanted = set(ike_peer.policies)
            protect = [pc for pc in policies if pc.action is Action.PROTECT
                       and pc.direction is Direction.OUT and (not wanted or pc.name in wanted)]
            if not protect:
                ctx.fail(where, f"{address} is IPv4: the tunnel carries IPv6, and no outbound "
                         "protect policy says which IPv6 traffic to propose",
                         'add a [[policy]] with direction = "out", action = "protect" and the '
                         "IPv6 src/dst to carry through the tunnel")
            for pc in protect:
                if pc.src.version == 4:
                    ctx.fail(f"policy[{policies.index(pc)}].src",
                             f"{pc.src} is IPv4: over an IPv4 underlay vmip carries IPv6 "
                             "inside the tunnel only",
                             "write the IPv6 prefixes the tunnel carries")


def _check_admission(ctx: v.Context, node: NodeSection, mobility: MobilityConfig,
                     ike: IkeConfig | None, policies: tuple[PolicyConfig, ...]) -> None:
    """``ike.mobile_node_policies``: an HA admitting MNs by certificate (RFC 4877 §4)."""
    if ike is None or not ike.mobile_node_policies:
        return
    where = "ike.mobile_node_policies"
    if "ha" not in node.roles:
        ctx.fail(where, "only a home agent admits mobile nodes by certificate",
                 'add "ha" to node.roles, or remove mobile_node_policies')
    if ike.certificate is None:
        ctx.fail(where, "admitting mobile nodes by certificate needs certificates, not a PSK",
                 "set certificate, private_key and ca under [ike] (vmip init --keys ike "
                 "writes them)")
    protect_out = {pc.name: pc for pc in policies
                   if str(pc.action) == "protect" and pc.direction is Direction.OUT}
    prefix = mobility.home_prefix
    for j, name in enumerate(ike.mobile_node_policies):
        policy = protect_out.get(name)
        if policy is None:
            ctx.fail(f"{where}[{j}]", f"{v.show(name)} is not an outbound protect policy",
                     "name a [[policy]] with direction = \"out\" and action = \"protect\"")
        elif prefix is not None and not policy.dst.overlaps(prefix):
            ctx.fail(f"{where}[{j}]", f"policy {v.show(name)} has dst {policy.dst}, outside the "
                     f"home prefix {prefix}: no home address can match it",
                     f'write dst = "{prefix}" in that policy')


def _check_policies(ctx: v.Context, keys: KeysConfig, policies: tuple[PolicyConfig, ...]) -> None:
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
                close = v.suggest(name, list(sas))
                known = ", ".join(sas) or "none"
                ctx.fail(f"{where}.sa[{j}]", f"no [[keys.sa]] is named {v.quote(name)}",
                         f"did you mean {v.quote(close)}?" if close
                         else f"name one of the SAs in [[keys.sa]] (known: {known})")
            if sas[name].direction is not policy.direction:
                ctx.fail(f"{where}.sa[{j}]",
                         f"SA {v.quote(name)} is {sas[name].direction.value}bound but the policy "
                         f"is {policy.direction.value}bound",
                         "name SAs of the policy's direction")


def _check_flows(ctx: v.Context, node: NodeSection, links: tuple[LinkConfig, ...],
                 flows: tuple[FlowConfig, ...]) -> None:
    """Flow names are unique; ``send = "link:X"`` names a link of this MN that has a CoA."""
    _check_unique_names(ctx, "flow", flows)
    by_name = {link.name: (i, link) for i, link in enumerate(links)}
    bound = [link.name for link in links if link.coa is not None]
    for i, flow in enumerate(flows):
        if not flow.send.startswith("link:"):
            continue
        where, wanted = f"flow[{i}].send", flow.send[5:]
        if Role.MN not in node.roles:
            ctx.fail(where, "only a mobile node picks the link a flow leaves on (its care-of "
                     "addresses); other nodes send where the mobile node's bindings lead",
                     'write send = "best" or "duplicate"')
        if wanted not in by_name:
            close = v.suggest(wanted, list(by_name))
            ctx.fail(where, f"no [[link]] is named {v.quote(wanted)}",
                     f'did you mean "link:{close}"?' if close
                     else f"name one of the links with a care-of address: {', '.join(bound)}")
        index, link = by_name[wanted]
        if link.coa is None:
            ctx.fail(where, f"link[{index}] ({v.quote(wanted)}) has no care-of address, so no "
                     "binding runs over it", f"add coa to link[{index}], or name one of "
                     f"{', '.join(bound)}")


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
