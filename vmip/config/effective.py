"""The effective config: what a node will run with, every default filled in.

:func:`to_dict` gives the config in the file's own shape (the keys and
spellings a user writes, ``"any"`` for wildcards, ``None`` for "not set")
for ``vmip check --json``; :func:`dump_effective` renders the same data as
TOML that :func:`vmip.config.parse_config` reads back to an equal config.
Key material is never part of either: SAs only name their key files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Any

from vmip import __version__
from vmip.config.model import (
    PROTOCOL_NUMBERS,
    Endpoint,
    IkeConfig,
    Lifetime,
    LinkConfig,
    NodeConfig,
    PeerConfig,
    PolicyConfig,
    PortRange,
    SaConfig,
)
from vmip.tomlwriter import toml_key, toml_string

_PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}

#: What "not set" means, shown as a comment in the TOML dump.
_UNSET_MEANING = {
    "interface": "chosen by the routing table",
    "bind": "any local address",
    "port": "none (the raw driver has no port)",
    "coa": "none (not a mobile node's link)",
    "endpoint": "none (learned from authenticated packets, or routed for raw)",
    "home_prefix": "none (not a mobile node or home agent)",
    "home_address": "none (not a mobile node)",
    "home_agent": "none (not a mobile node)",
    "key_file": "none (the suite has no encryption key)",
    "auth_key_file": "none (the suite is AEAD)",
    "local_id": "the local IP address",
    "remote_id": "the peer's IP address",
    "psk_file": "none (certificates)",
    "certificate": "none (PSK)",
    "private_key": "none (PSK)",
    "socket": "/run/vmip/<network namespace>.sock, chosen at start",
    "file": "standard error",
    "state_dir": "/var/lib/vmip/<node name>",
    "ike": 'not used (keys.mode = "static")',
}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (IPv4Address, IPv6Address, IPv4Network, IPv6Network, IPv4Interface,
                          IPv6Interface, Path, Endpoint)):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _ports(ports: PortRange | None) -> int | str:
    if ports is None:
        return "any"
    low, high = ports
    return low if low == high else f"{low}-{high}"


def _lifetime(soft: Lifetime, hard: Lifetime) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for unit in ("seconds", "bytes", "packets"):
        out[f"soft_{unit}"] = getattr(soft, unit)
        out[f"hard_{unit}"] = getattr(hard, unit)
    return out


def _link(link: LinkConfig) -> dict[str, Any]:
    return {key: _plain(getattr(link, key)) for key in
            ("name", "driver", "interface", "bind", "port", "coa", "priority", "keepalive")}


def _peer(peer: PeerConfig) -> dict[str, Any]:
    return {key: _plain(getattr(peer, key)) for key in
            ("name", "prefixes", "endpoint", "framing", "default")}


def _sa(sa: SaConfig) -> dict[str, Any]:
    out = {key: _plain(getattr(sa, key)) for key in
           ("name", "spi", "direction", "src", "dst", "mode", "suite", "key_file",
            "auth_key_file", "esn", "replay_window")}
    out["lifetime"] = _lifetime(sa.soft, sa.hard)
    return out


def _policy(policy: PolicyConfig) -> dict[str, Any]:
    protocol = policy.protocol
    return {
        "name": policy.name,
        "direction": policy.direction.value,
        "src": str(policy.src),
        "dst": str(policy.dst),
        "protocol": "any" if protocol is None else _PROTOCOL_NAMES.get(protocol, protocol),
        "src_ports": _ports(policy.src_ports),
        "dst_ports": _ports(policy.dst_ports),
        "icmp_type": "any" if policy.icmp_type is None else policy.icmp_type,
        "icmp_code": "any" if policy.icmp_code is None else policy.icmp_code,
        "mh_type": "any" if policy.mh_type is None else policy.mh_type,
        "action": policy.action.value,
        "sa": list(policy.sa),
        "priority": policy.priority,
    }


def _ike(ike: IkeConfig | None) -> dict[str, Any] | None:
    if ike is None:
        return None
    out = {key: _plain(getattr(ike, key)) for key in
           ("local_id", "psk_file", "certificate", "private_key", "ca", "proposals",
            "esp_proposals")}
    out["peer"] = [{key: _plain(getattr(peer, key)) for key in
                    ("name", "address", "remote_id", "initiate", "policies")} for peer in ike.peers]
    return out


def to_dict(cfg: NodeConfig) -> dict[str, Any]:
    """The effective config as plain JSON-able data, in the file's shape."""
    mobility = cfg.mobility
    return {
        "node": {"name": cfg.node.name, "roles": _plain(cfg.node.roles)},
        "tun": {"name": cfg.tun.name, "addresses": _plain(cfg.tun.addresses),
                "mtu": cfg.tun.mtu, "routes": _plain(cfg.tun.routes)},
        "link": [_link(link) for link in cfg.links],
        "peer": [_peer(peer) for peer in cfg.peers],
        "mobility": {key: _plain(getattr(mobility, key)) for key in
                     ("home_prefix", "home_address", "home_agent", "correspondents",
                      "binding_lifetime", "tunnel", "proof_cache_size")},
        "keys": {"mode": cfg.keys.mode.value, "backend": cfg.keys.backend,
                 "replay_window": cfg.keys.replay_window,
                 "state_dir": _plain(cfg.keys.state_dir),
                 "sa": [_sa(sa) for sa in cfg.keys.sa]},
        "policy": [_policy(policy) for policy in cfg.policies],
        "ike": _ike(cfg.ike),
        "control": {"socket": _plain(cfg.control.socket)},
        "logging": {"level": cfg.logging.level, "format": cfg.logging.format,
                    "file": _plain(cfg.logging.file)},
    }


# --------------------------------------------------------------------------
# The effective config's TOML layout (strings and keys: vmip.tomlwriter).


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:#x}" if key == "spi" else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("TOML config values are finite")
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(key, item) for item in value) + "]"
    if isinstance(value, Mapping):
        entries = [f"{toml_key(k)} = {_toml_value(k, v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(entries) + " }" if entries else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _write_table(lines: list[str], name: str, table: Mapping[str, Any], array: bool) -> None:
    lines.append("")
    lines.append(f"[[{name}]]" if array else f"[{name}]")
    nested = []
    for key, value in table.items():
        if _is_table_array(value):
            nested.append((key, value))
        elif value is None:
            lines.append(f"# {key}: not set: {_UNSET_MEANING.get(key, 'default')}")
        elif isinstance(value, Mapping) and not any(v is not None for v in value.values()):
            lines.append(f"{toml_key(key)} = {{}}  # no limit")
        else:
            lines.append(f"{toml_key(key)} = {_toml_value(key, value)}")
    for key, items in nested:
        for item in items:
            _write_table(lines, f"{name}.{key}", item, array=True)


def dump_effective(cfg: NodeConfig) -> str:
    """The effective config as TOML; reading it back gives an equal config."""
    data = to_dict(cfg)
    lines = [
        f"# Effective configuration of {cfg.source}",
        f"# (vmip {__version__}; every default filled in, paths absolute, key material omitted)",
    ]
    # Top-level keys must precede the first [table] header in TOML: empty
    # arrays of tables are written as "link = []" up here.
    for key, value in data.items():
        if isinstance(value, list) and not value:
            lines.append(f"{key} = []")
    for key, value in data.items():
        if value is None:
            lines.append("")
            lines.append(f"# [{key}]: {_UNSET_MEANING.get(key, 'not set')}")
        elif isinstance(value, list):
            for item in value:
                _write_table(lines, key, item, array=True)
        elif isinstance(value, Mapping):
            _write_table(lines, key, value, array=False)
    return "\n".join(lines) + "\n"
