"""The config schema, spelled once: the model's dataclass fields and their metadata.

A field of a section (:mod:`vmip.config.model`) that the file can set is
declared with ``field(metadata=key(...))`` (a key and its parser, default,
example, what "not set" means) or ``field(metadata=section(...))`` (a
``[table]`` or ``[[array]]`` of another section).  From that one declaration the loader knows which keys a table
accepts and how to read the simple ones, and the effective config knows
what to print and in which order (the field order).  A field without this
metadata is not a key of the file (``NodeConfig.source``, the key material
the loader reads from key files).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vmip.config.values import MISSING, Parser

__all__ = ["DERIVED", "REQUIRED", "Key", "headers", "key", "key_of", "keys_of", "section",
           "settings"]

#: The key must be written (the loader says "is missing; add ...").
REQUIRED: Any = MISSING
#: The default depends on other keys or on the file (the loader computes it).
DERIVED: Any = object()

_METADATA = "vmip.config"


@dataclass(frozen=True)
class Key:
    """How one field of a section appears in the config file."""

    #: The key in the file.
    name: str
    #: Reads the file's value; None: the loader reads it with code of its own
    #: (the value depends on other keys, or is read from a key file).
    parse: Parser[Any] | None = None
    #: The value when the key is absent: a value, REQUIRED or DERIVED.
    default: Any = REQUIRED
    #: Shown in "is missing; add KEY = EXAMPLE".
    example: str = ""
    #: What None means, as a comment in the effective config.
    unset: str | None = None
    #: The field's value as the file would write it (default: values.show_plain).
    show: Callable[[Any], Any] | None = None
    #: The key's value read from the whole section object (default: the field);
    #: for keys that hold more than one field (an SA's ``lifetime``).
    value_of: Callable[[Any], Any] | None = None
    #: A sub-table's section class; with ``array``, a ``[[key]]`` array of them.
    section: type | None = None
    array: bool = False


def key(parse: Parser[Any] | None = None, *, name: str | None = None, default: Any = REQUIRED,
        example: str = "", unset: str | None = None, show: Callable[[Any], Any] | None = None,
        value_of: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """The metadata of a dataclass field that is a key of the file (see :class:`Key`).

    ``name`` defaults to the field's name.  Use as ``field(metadata=key(...))``;
    a ``field(default=...)`` is for code that builds sections itself, not the
    file's default.
    """
    return {_METADATA: {"name": name, "parse": parse, "default": default, "example": example,
                        "unset": unset, "show": show, "value_of": value_of}}


def section(kind: type, *, name: str | None = None, array: bool = False,
            unset: str | None = None) -> dict[str, Any]:
    """The metadata of a field holding a sub-table ``[name]`` or an array ``[[name]]`` of *kind*."""
    return {_METADATA: {"name": name, "section": kind, "array": array, "unset": unset,
                        "default": DERIVED}}


def key_of(field: dataclasses.Field[Any]) -> Key | None:
    """The :class:`Key` of a dataclass field, or None if the file cannot set it."""
    spec = field.metadata.get(_METADATA)
    if spec is None:
        return None
    return Key(**{**spec, "name": spec["name"] or field.name})


def settings(section: type) -> Iterator[tuple[dataclasses.Field[Any], Key]]:
    """The fields of *section* that are keys of the file, with their keys, in field order."""
    for field in dataclasses.fields(section):
        key = key_of(field)
        if key is not None:
            yield field, key


def keys_of(section: type) -> tuple[str, ...]:
    """The keys a table of *section* accepts, in the order the effective config prints them."""
    return tuple(key.name for _, key in settings(section))


def headers(root: type) -> Iterator[tuple[str, type]]:
    """Every table under *root* as ``("[keys]", KeysConfig)``, ``("[[keys.sa]]", SaConfig)``...

    A table comes before the tables nested in it; siblings keep field order.
    """
    def walk(kind: type, prefix: str) -> Iterator[tuple[str, type]]:
        for _, key in settings(kind):
            if key.section is None:
                continue
            dotted = f"{prefix}{key.name}"
            yield (f"[[{dotted}]]" if key.array else f"[{dotted}]"), key.section
            yield from walk(key.section, f"{dotted}.")
    yield from walk(root, "")
