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
from typing import Any

from vmip import __version__
from vmip.config.model import NodeConfig
from vmip.config.schema import headers, settings
from vmip.config.values import show_plain
from vmip.tomlwriter import toml_key, toml_string

#: What a table that is not set means (the root's tables), by key.
_UNSET_TABLE = {key.name: key.unset for _, key in settings(NodeConfig) if key.unset}
#: What "not set" means for each key, shown as a comment in the TOML dump
#: (a key's name means the same in every table that has it).
_UNSET_MEANING = {key.name: key.unset for _, kind in headers(NodeConfig)
                  for _, key in settings(kind) if key.unset}


def _section(obj: Any) -> dict[str, Any]:
    """One section as the file would write it: its keys in schema order."""
    out: dict[str, Any] = {}
    for field, key in settings(type(obj)):
        value = key.value_of(obj) if key.value_of else getattr(obj, field.name)
        if key.section is not None:
            if key.array:
                out[key.name] = [_section(item) for item in value]
            else:
                out[key.name] = None if value is None else _section(value)
        else:
            out[key.name] = key.show(value) if key.show else show_plain(value)
    return out


def to_dict(cfg: NodeConfig) -> dict[str, Any]:
    """The effective config as plain JSON-able data, in the file's shape."""
    return _section(cfg)


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
            lines.append(f"# [{key}]: {_UNSET_TABLE.get(key, 'not set')}")
        elif isinstance(value, list):
            for item in value:
                _write_table(lines, key, item, array=True)
        elif isinstance(value, Mapping):
            _write_table(lines, key, value, array=False)
    return "\n".join(lines) + "\n"
