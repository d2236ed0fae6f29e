"""A small TOML writer: the lab's generated configs and ``vmip check``'s effective config.

The standard library reads TOML (tomllib) but cannot write it, and vmip
needs only tables, arrays of tables and plain values.  Tests check that
``tomllib.loads(dump_toml(doc)) == doc`` for arbitrary documents.
:func:`toml_string` and :func:`toml_key` are shared with
:mod:`vmip.config.effective`, which writes its own layout (comments for
unset keys, SPIs in hex) around them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INT64 = range(-(2**63), 2**63)
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string; control characters (DEL included) escaped."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            # TOML 1.0 section "String": control characters must be escaped.
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted one."""
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, not {type(key).__name__}")
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"TOML integers are 64-bit; {value} does not fit")
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(k)} = {_value(v)}" for k, v in value.items()) + " }" \
            if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(item, Mapping) for item in value))


def _emit_table(path: list[str], table: Mapping[str, Any], lines: list[str]) -> None:
    # TOML wants a table's own key/values before any of its sub-tables.
    subtables = []
    for key, value in table.items():
        if isinstance(value, Mapping) or _is_table_array(value):
            subtables.append((key, value))
        else:
            lines.append(f"{toml_key(key)} = {_value(value)}")
    for key, value in subtables:
        name = ".".join(toml_key(part) for part in [*path, key])
        if isinstance(value, Mapping):
            lines.append("")
            lines.append(f"[{name}]")
            _emit_table([*path, key], value, lines)
        else:
            for item in value:
                lines.append("")
                lines.append(f"[[{name}]]")
                _emit_table([*path, key], item, lines)


def dump_toml(document: Mapping[str, Any], header: str = "") -> str:
    """Render *document* as TOML, with *header* as leading ``#`` comment lines."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _emit_table([], document, lines)
    text = "\n".join(lines).lstrip("\n")
    return text + "\n"
