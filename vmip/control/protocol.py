"""The control protocol, sans-IO: lines of JSON in, lines of JSON out.

One request per line, one reply per line, in the same order (docs/control.md):

    {"cmd": "sa.list", "args": {"peer": "2001:db8::1"}, "id": 7}
    {"id": 7, "ok": true, "result": [...]}
    {"id": 7, "ok": false, "error": {"code": "unknown_command", "message": "..."}}

Nothing here touches a socket: :class:`LineFramer` cuts a byte stream into
lines with a length cap, :func:`parse_request` / :func:`parse_reply` turn a
line into a value or raise :class:`ProtocolError` (and nothing else), and the
``encode_*`` functions build lines.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Final

from vmip.control.errors import BadArgs, ErrorCode, ProtocolError

#: Longest request line the server accepts, newline excluded.  Requests are
#: small (a command and a few arguments); the cap keeps one client from making
#: the node buffer without bound.
MAX_REQUEST_BYTES: Final = 64 * 1024

#: Longest reply line the client accepts.  Replies can list every SA or
#: binding of a busy node, so this is much larger than the request cap.
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024

# A command is a dotted name ("sa.list", "binding.flush"); anything else is
# refused before the handler table is consulted, which also keeps odd
# characters out of error messages and logs.
_COMMAND_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_REQUEST_KEYS = frozenset({"cmd", "args", "id"})

RequestId = str | int | None


@dataclass(frozen=True, slots=True)
class Request:
    cmd: str
    args: dict[str, Any]
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Reply:
    id: RequestId
    ok: bool
    result: Any = None
    error_code: str | None = None
    error_message: str | None = None


class OverlongLine:
    """Stands in :meth:`LineFramer.feed`'s output for a line that exceeded the cap."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERLONG"


OVERLONG: Final = OverlongLine()


class LineFramer:
    """Cuts a byte stream into newline-terminated lines of at most ``max_line`` bytes.

    A line that grows past the cap is reported once, as :data:`OVERLONG`, as
    soon as the cap is passed (so the peer gets its error without having to
    finish the line); the rest of it, up to its newline, is thrown away.
    Memory stays bounded by ``max_line`` plus one read.
    """

    def __init__(self, max_line: int = MAX_REQUEST_BYTES):
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | OverlongLine]:
        out: list[bytes | OverlongLine] = []
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if self._discarding:
                    self._buffer.clear()
                elif len(self._buffer) > self.max_line:
                    out.append(OVERLONG)
                    self._discarding = True
                    self._buffer.clear()
                return out
            if self._discarding:
                self._discarding = False
            elif newline > self.max_line:
                out.append(OVERLONG)
            else:
                out.append(bytes(self._buffer[:newline]))
            del self._buffer[: newline + 1]

    def end_of_stream(self) -> list[bytes]:
        """A last line the peer did not terminate before closing its side."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        if self._discarding or not rest.strip():
            return []
        return [rest]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json_line(line: bytes, what: str) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None
    try:
        # NaN/Infinity are Python extensions, not JSON (RFC 8259 §6).
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(f"{what} nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints longer than Python converts
        raise ProtocolError(f"{what} is not JSON: {exc}") from None


def _is_request_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def parse_request(line: bytes) -> Request:
    """One request line (without its newline) → :class:`Request`.

    Raises :class:`ProtocolError` for anything that is not a well-formed
    request; its ``request_id`` is set when the id could be read.
    """
    obj = _load_json_line(line, "the request")
    if not isinstance(obj, dict):
        raise ProtocolError(f"a request must be a JSON object, not {type(obj).__name__}")
    request_id = obj.get("id")
    if not _is_request_id(request_id):
        raise ProtocolError("'id' must be a string, an integer or null")
    unknown = sorted(obj.keys() - _REQUEST_KEYS)
    if unknown:
        raise ProtocolError(
            f"unknown request field(s) {', '.join(map(repr, unknown))}; "
            "a request has 'cmd', 'args' and 'id'",
            request_id,
        )
    cmd = obj.get("cmd")
    if cmd is None:
        raise ProtocolError("the request has no 'cmd'", request_id)
    if not isinstance(cmd, str) or not _COMMAND_NAME.fullmatch(cmd):
        raise ProtocolError("'cmd' must be a command name such as \"sa.list\"", request_id)
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError("'args' must be a JSON object", request_id)
    return Request(cmd=cmd, args=args, id=request_id)


def parse_reply(line: bytes) -> Reply:
    """One reply line → :class:`Reply`; raises :class:`ProtocolError` otherwise."""
    obj = _load_json_line(line, "the reply")
    if not isinstance(obj, dict):
        raise ProtocolError("a reply must be a JSON object")
    request_id = obj.get("id")
    if not _is_request_id(request_id):
        raise ProtocolError("the reply's 'id' must be a string, an integer or null")
    ok = obj.get("ok")
    if ok is True:
        return Reply(id=request_id, ok=True, result=obj.get("result"))
    if ok is not False:
        raise ProtocolError("the reply's 'ok' must be true or false", request_id)
    error = obj.get("error")
    if not isinstance(error, dict):
        raise ProtocolError("a failed reply must carry an 'error' object", request_id)
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise ProtocolError("'error' must have a string 'code' and 'message'", request_id)
    return Reply(id=request_id, ok=False, error_code=code, error_message=message)


def to_json_value(value: Any) -> Any:
    """``json.dumps`` fallback for the types handlers naturally return.

    Addresses and paths become their text form, bytes become hex (SPIs and
    keys are never sent, but cookies and nonces may be), enums their value,
    dataclasses their fields, sets sorted lists.
    """
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address,
                          ipaddress.IPv4Network, ipaddress.IPv6Network,
                          ipaddress.IPv4Interface, ipaddress.IPv6Interface, PurePath)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dump_line(obj: Mapping[str, Any]) -> bytes:
    # ensure_ascii keeps every line pure ASCII whatever a handler returns.
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=to_json_value)
    return text.encode("ascii") + b"\n"


def encode_request(cmd: str, args: Mapping[str, Any] | None = None,
                   request_id: RequestId = None) -> bytes:
    return _dump_line({"cmd": cmd, "args": dict(args or {}), "id": request_id})


def encode_result(request_id: RequestId, result: Any) -> bytes:
    """Raises TypeError/ValueError when *result* cannot be JSON (the server maps it to internal)."""
    return _dump_line({"id": request_id, "ok": True, "result": result})


def encode_error(request_id: RequestId, code: ErrorCode | str, message: str) -> bytes:
    return _dump_line({"id": request_id, "ok": False,
                       "error": {"code": str(code), "message": message}})


_MISSING: Final = object()


def get_arg(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
            default: Any = _MISSING) -> Any:
    """Read one handler argument, raising :class:`BadArgs` if it is missing or of the wrong type.

    ``bool`` is not accepted where ``int`` is asked (JSON has both and
    ``True`` would otherwise pass as 1).
    """
    if name not in args or args[name] is None:
        if default is _MISSING:
            raise BadArgs(f"missing argument {name!r}")
        return default
    value = args[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BadArgs(f"argument {name!r} must be {_kind_names(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise BadArgs(f"argument {name!r} must be {_kind_names(kinds)}, "
                      f"not {type(value).__name__}")
    return value


def reject_unknown_args(args: Mapping[str, Any], allowed: set[str] | frozenset[str]) -> None:
    """Raise :class:`BadArgs` naming every argument not in *allowed* (typos fail loudly)."""
    unknown = sorted(args.keys() - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise BadArgs(f"unknown argument(s) {', '.join(map(repr, unknown))}; accepted: {accepted}")


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", bool: "a boolean", float: "a number",
             list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
