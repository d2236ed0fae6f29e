"""Errors of the control socket, on both sides of it.

The server maps what goes wrong to the four error codes of the protocol
(docs/control.md); the client turns a failed call into one of these
exceptions so the CLI can print a single clear line.
"""

from __future__ import annotations

from vmip.compat import StrEnum
from vmip.errors import VmipError


class ErrorCode(StrEnum):
    """The ``error.code`` values a reply can carry."""

    BAD_REQUEST = "bad_request"  # the line is not a well-formed request
    UNKNOWN_COMMAND = "unknown_command"  # well-formed, but no handler has that name
    BAD_ARGS = "bad_args"  # the handler refused its arguments
    INTERNAL = "internal"  # the handler failed; the node logged why


class ControlError(VmipError):
    """Base of every control-socket error."""


class ProtocolError(ControlError):
    """A line that is not a valid request or reply: the one error the parsers raise.

    ``request_id`` is the id of the request when it could be read before the
    problem was found, so the error reply can still be matched by the client.
    """

    def __init__(self, message: str, request_id: str | int | None = None):
        super().__init__(message)
        self.request_id = request_id


class BadArgs(ControlError):
    """Raised by a handler (or :func:`vmip.control.protocol.get_arg`) for arguments it cannot use."""


class NodeNotRunning(ControlError):
    """Nothing accepts connections on the control socket."""


class ControlTimeout(ControlError):
    """The node did not answer in time."""


class RemoteError(ControlError):
    """The node answered ``ok: false``; ``code`` is one of :class:`ErrorCode`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
