"""The arguments each control command takes, checked before its handler runs.

A handler written as ``args.get("link")`` would otherwise accept a typo
(``{"lnk": ...}``) silently, or fail on a wrong type with an ``internal``
error and a traceback in the node's log.  Here every command of a node
declares its arguments once; :func:`check_args` refuses anything else with
:class:`~vmip.control.errors.BadArgs` (error code ``bad_args``), naming what
is wrong and what is expected.  docs/control.md lists the same table.

Handlers registered elsewhere (the IKE manager's ``ike.*``) are covered by
this table too, so they need no validation of their own; a command missing
from it takes no arguments on a node (see :func:`require_specs`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from vmip.control.errors import BadArgs

Handler = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: its JSON type(s), whether it must be given, what it means."""

    kinds: tuple[type, ...]
    doc: str
    required: bool = False
    #: Returns what is wrong with an already type-checked value, or None.
    check: Callable[[Any], str | None] | None = None


CommandArgs = Mapping[str, Arg]

_KIND_NAMES: Final = {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
                      list: "a list", dict: "an object"}


def _non_empty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _absolute_path(value: str) -> str | None:
    if "\0" in value:
        return "must not contain a NUL character"
    if not os.path.isabs(value):
        return "must be an absolute path (the node's working directory is not yours)"
    return None


def _finite(value: float) -> str | None:
    return "must be a finite number" if not math.isfinite(value) else None


_IKE_PEER: Final = Arg((str,), "an [[ike.peer]] name from the config", required=True,
                       check=_non_empty)

#: Every command of a node and its arguments; an empty mapping: none.
COMMAND_ARGS: Final[dict[str, CommandArgs]] = {
    "ping": {},
    "commands": {},
    "status": {},
    "sa.list": {},
    "spd.list": {},
    "locators": {},
    "counters": {},
    "keys.wireshark": {},
    "pcap.start": {
        "wire": Arg((str,), "the absolute path of a new pcap file for on-wire packets",
                    check=_absolute_path),
        "inner": Arg((str,), "the absolute path of a new pcap file for inner packets",
                     check=_absolute_path),
    },
    "pcap.stop": {},
    "reload": {},
    "mn.move": {"link": Arg((str,), "the name of one of the node's links", required=True,
                            check=_non_empty)},
    "remap.list": {},
    "mobility": {},
    "events": {"since": Arg((int, float), "a UNIX time: only events after it", check=_finite)},
    "ike.list": {},
    "ike.initiate": {"name": _IKE_PEER},
    "ike.terminate": {"name": _IKE_PEER},
    "ike.rekey": {"name": _IKE_PEER,
                  "ike": Arg((bool,), "true to rekey the IKE SA instead of the Child SAs")},
}


def describe(spec: CommandArgs) -> str:
    """``link (a string, required): the name of ...; ...`` or ``none``."""
    if not spec:
        return "none"
    parts = []
    for name, arg in sorted(spec.items()):
        kinds = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in arg.kinds)
        parts.append(f"{name} ({kinds}{', required' if arg.required else ''}): {arg.doc}")
    return "; ".join(parts)


def check_args(cmd: str, args: Mapping[str, Any], spec: CommandArgs) -> None:
    """Raise :class:`BadArgs` unless *args* fit *spec* (``null`` counts as not given)."""
    unknown = sorted(args.keys() - spec.keys())
    if unknown:
        names = ", ".join(repr(name[:64]) for name in unknown[:5])
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise BadArgs(f"unknown argument(s) {names}{more}; {cmd} takes: {describe(spec)}")
    for name, arg in spec.items():
        value = args.get(name)
        if value is None:
            if arg.required:
                raise BadArgs(f"missing argument {name!r}: {arg.doc}")
            continue
        # JSON true is not the integer 1.
        wrong_bool = isinstance(value, bool) and bool not in arg.kinds
        if wrong_bool or not isinstance(value, arg.kinds):
            kinds = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in arg.kinds)
            got = "a boolean" if isinstance(value, bool) else _KIND_NAMES.get(
                type(value), type(value).__name__)
            raise BadArgs(f"argument {name!r} must be {kinds} ({arg.doc}), not {got}")
        if arg.check is not None:
            problem = arg.check(value)
            if problem:
                raise BadArgs(f"argument {name!r} {problem} ({arg.doc})")


def require_specs(handlers: Mapping[str, Handler],
                  specs: Mapping[str, CommandArgs] = COMMAND_ARGS) -> dict[str, Handler]:
    """*handlers*, each behind the check of its arguments; undeclared commands take none.

    For a node: a command nobody declared is refused any argument rather
    than handed whatever a client sends (add it to :data:`COMMAND_ARGS`).
    """
    return {cmd: _checked(cmd, handler, specs.get(cmd, {})) for cmd, handler in handlers.items()}


def _checked(cmd: str, handler: Handler, spec: CommandArgs) -> Handler:
    def checked(args: dict[str, Any]) -> Any:
        check_args(cmd, args, spec)
        return handler(args)

    checked.__wrapped__ = handler  # type: ignore[attr-defined]
    return checked
