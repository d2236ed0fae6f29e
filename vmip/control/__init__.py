"""vmip.control: the control socket between a running node and the ``vmip`` command.

- :mod:`vmip.control.protocol`  the line protocol, sans-IO
- :mod:`vmip.control.server`    the node's asyncio server
- :mod:`vmip.control.client`    the CLI's client (sync and async)
- :mod:`vmip.control.paths`     where the socket lives (one per network namespace)

See docs/control.md.
"""

from vmip.control.client import ControlClient
from vmip.control.commands import COMMAND_ARGS, Arg, check_args, require_specs
from vmip.control.errors import (
    BadArgs,
    ControlError,
    ControlTimeout,
    ErrorCode,
    NodeNotRunning,
    ProtocolError,
    RemoteError,
)
from vmip.control.paths import default_socket_path, socket_path_for_netns
from vmip.control.protocol import get_arg, reject_unknown_args
from vmip.control.server import ControlServer

__all__ = [
    "COMMAND_ARGS",
    "Arg",
    "BadArgs",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "ControlTimeout",
    "ErrorCode",
    "NodeNotRunning",
    "ProtocolError",
    "RemoteError",
    "check_args",
    "default_socket_path",
    "get_arg",
    "reject_unknown_args",
    "require_specs",
    "socket_path_for_netns",
]
