"""The CLI's end of the control socket: one call, one connection.

``ControlClient().call("sa.list", peer="2001:db8::1")`` returns the result or
raises a :class:`~vmip.control.errors.ControlError` whose message is fit to
print as is; ``await client.acall(...)`` does the same from asyncio code.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any, Final

from vmip.compat import TIMEOUT_ERRORS
from vmip.control.errors import (
    ControlError,
    ControlTimeout,
    NodeNotRunning,
    ProtocolError,
    RemoteError,
)
from vmip.control.paths import default_socket_path
from vmip.control.protocol import MAX_REPLY_BYTES, Reply, encode_request, parse_reply

DEFAULT_TIMEOUT: Final = 5.0
_READ_CHUNK: Final = 64 * 1024


class ControlClient:
    """Talks to the node listening on *path* (default: the one of this namespace)."""

    def __init__(self, path: Path | str | None = None, *, timeout: float = DEFAULT_TIMEOUT):
        self.path = Path(path) if path is not None else default_socket_path()
        self.timeout = timeout
        self._ids = itertools.count(1)

    # -- synchronous -------------------------------------------------------

    def call(self, cmd: str, /, **args: Any) -> Any:
        """Run *cmd* on the node and return its result (blocking, at most ``timeout`` seconds)."""
        request_id = next(self._ids)
        line = encode_request(cmd, args, request_id)
        deadline = time.monotonic() + self.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(os.fsencode(self.path))
            except OSError as exc:
                raise self._connect_error(exc) from None
            try:
                sock.sendall(line)
                reply_line = self._read_line(sock, deadline, cmd)
            except TimeoutError:
                raise self._timeout_error(cmd) from None
            except OSError as exc:
                raise ControlError(f"lost the connection to the vmip node on {self.path} "
                                   f"during {cmd!r}: {exc.strerror or exc}") from None
        finally:
            sock.close()
        return self._result(parse_reply_checked(reply_line, self.path), request_id, cmd)

    def _read_line(self, sock: socket.socket, deadline: float, cmd: str) -> bytes:
        buffer = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(_READ_CHUNK)
            if not chunk:
                raise self._closed_error(cmd)
            newline = chunk.find(b"\n")
            if newline >= 0:
                buffer += chunk[:newline]
                return bytes(buffer)
            buffer += chunk
            if len(buffer) > MAX_REPLY_BYTES:
                raise ControlError(f"the reply to {cmd!r} from {self.path} is longer "
                                   f"than {MAX_REPLY_BYTES} bytes")

    # -- asyncio -----------------------------------------------------------

    async def acall(self, cmd: str, /, **args: Any) -> Any:
        """:meth:`call` for asyncio code."""
        request_id = next(self._ids)
        line = encode_request(cmd, args, request_id)
        try:
            reply_line = await asyncio.wait_for(self._exchange(cmd, line), self.timeout)
        except TIMEOUT_ERRORS:
            raise self._timeout_error(cmd) from None
        if not reply_line.endswith(b"\n"):
            raise self._closed_error(cmd)
        return self._result(parse_reply_checked(reply_line[:-1], self.path), request_id, cmd)

    async def _exchange(self, cmd: str, line: bytes) -> bytes:
        """Send one request line and read the reply line (unbounded: the caller times it)."""
        try:
            reader, writer = await asyncio.open_unix_connection(
                self.path, limit=MAX_REPLY_BYTES + 1)
        except OSError as exc:
            raise self._connect_error(exc) from None
        try:
            writer.write(line)
            await writer.drain()
            reply_line = await reader.readline()
        except OSError as exc:
            raise ControlError(f"lost the connection to the vmip node on {self.path} "
                               f"during {cmd!r}: {exc.strerror or exc}") from None
        except (asyncio.LimitOverrunError, ValueError):
            raise ControlError(f"the reply to {cmd!r} from {self.path} is longer "
                               f"than {MAX_REPLY_BYTES} bytes") from None
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        return reply_line

    # -- shared ------------------------------------------------------------

    def _result(self, reply: Reply, request_id: int, cmd: str) -> Any:
        if reply.id != request_id:
            raise ControlError(f"the vmip node on {self.path} answered request {reply.id!r} "
                               f"instead of {request_id} ({cmd!r})")
        if not reply.ok:
            raise RemoteError(reply.error_code or "internal",
                              f"{reply.error_message} [{reply.error_code}]")
        return reply.result

    def _connect_error(self, exc: OSError) -> ControlError:
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            return NodeNotRunning(f"no vmip node is listening on {self.path} — "
                                  "is `vmip run` started in this namespace?")
        if isinstance(exc, PermissionError):
            return ControlError(f"permission denied on {self.path}: the control socket "
                                "is for root only (mode 0600)")
        if isinstance(exc, TimeoutError):
            return self._timeout_error("connect")
        return ControlError(f"cannot connect to the vmip node on {self.path}: "
                            f"{exc.strerror or exc}")

    def _timeout_error(self, cmd: str) -> ControlTimeout:
        return ControlTimeout(f"the vmip node on {self.path} did not answer {cmd!r} "
                              f"within {self.timeout:g} s")

    def _closed_error(self, cmd: str) -> ControlError:
        return ControlError(f"the vmip node on {self.path} closed the connection "
                            f"without answering {cmd!r}")


def parse_reply_checked(line: bytes, path: Path) -> Reply:
    try:
        return parse_reply(line)
    except ProtocolError as exc:
        raise ProtocolError(f"the vmip node on {path} sent a malformed reply: {exc}") from None
