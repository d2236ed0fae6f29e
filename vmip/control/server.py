"""The node's end of the control socket (asyncio).

A Unix stream socket, mode 0600, one JSON request and one JSON reply per
line (see :mod:`vmip.control.protocol` and docs/control.md).  Handlers are
plain callables ``handler(args: dict) -> result`` or coroutines; whatever a
client sends, the server answers with an error reply and keeps serving:
malformed input never ends the server, nor the client's connection.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vmip import __version__
from vmip.control.commands import CommandArgs, check_args
from vmip.control.errors import BadArgs, ControlError, ErrorCode, ProtocolError
from vmip.control.paths import default_socket_path
from vmip.control.protocol import (
    MAX_REQUEST_BYTES,
    OVERLONG,
    LineFramer,
    OverlongLine,
    encode_error,
    encode_result,
    parse_request,
)
from vmip.log import get_logger

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

log = get_logger(__name__)

Handler = Callable[[dict[str, Any]], Any | Awaitable[Any]]

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107
_READ_CHUNK: Final = 16 * 1024
_DEFAULT_MAX_CLIENTS: Final = 128


class ControlServer:
    """Serve *handlers* on the Unix socket *path* (default: :func:`default_socket_path`).

    ``async with ControlServer(path, {"sa.list": list_sas}) as server: ...``
    or ``await server.start()`` / ``await server.close()``.  Two commands are
    built in unless *handlers* overrides them: ``ping`` (is a node there, which
    version, which pid) and ``commands`` (the names it answers to).
    """

    def __init__(self, path: Path | str | None = None,
                 handlers: Mapping[str, Handler] | None = None, *,
                 arg_specs: Mapping[str, CommandArgs] | None = None,
                 max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_clients: int = _DEFAULT_MAX_CLIENTS):
        self.path = Path(path) if path is not None else default_socket_path()
        self.handlers: dict[str, Handler] = {
            "ping": self._ping,
            "commands": self._commands,
        }
        self.handlers.update(handlers or {})
        #: Per command, the arguments it takes (vmip.control.commands); a command
        #: listed here gets ``bad_args`` for anything else before its handler runs.
        self.arg_specs: dict[str, CommandArgs] = {"ping": {}, "commands": {}}
        self.arg_specs.update(arg_specs or {})
        self.max_request_bytes = max_request_bytes
        self.max_clients = max_clients
        self._server: asyncio.AbstractServer | None = None
        self._bound_inode: int | None = None
        #: (pid, pipe) of the helper that removes the socket (:meth:`keep_removable`).
        self._remover: tuple[int, int] | None = None
        self._client_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise ControlError(f"the control server on {self.path} is already started")
        sock = self._bind()
        try:
            self._server = await asyncio.start_unix_server(self._serve_client, sock=sock)
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        log.info("control socket listening", path=str(self.path))

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._client_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        self._unlink_own_socket()
        log.info("control socket closed", path=str(self.path))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def client_count(self) -> int:
        return len(self._client_tasks)

    def register(self, cmd: str, handler: Handler, args: CommandArgs | None = None) -> None:
        """Add a command; *args* (name → :class:`~vmip.control.commands.Arg`) is checked first."""
        self.handlers[cmd] = handler
        if args is not None:
            self.arg_specs[cmd] = args

    # -- the socket file ---------------------------------------------------

    def _bind(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            raise ControlError(f"control socket path {path} is longer than "
                               f"{_MAX_SOCKET_PATH} bytes, the limit of a Unix socket path")
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The umask applies to bind(), so the socket file is born 0600: there is
        # no moment in which another user could connect (a chmod afterwards
        # would leave one).  umask is process-wide; nothing else in the node
        # creates files while this synchronous section runs.
        previous_umask = os.umask(0o177)
        try:
            sock.bind(os.fsencode(path))
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot create the control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(previous_umask)
        self._bound_inode = os.stat(path).st_ino
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def _remove_stale_socket(self) -> None:
        path = self.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path} exists and is not a socket; not touching it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(os.fsencode(path))
        except (ConnectionRefusedError, FileNotFoundError):
            # Left behind by a node that died without cleaning up.
            log.info("removing stale control socket", path=str(path))
            path.unlink(missing_ok=True)
            return
        except OSError as exc:
            raise ControlError(f"cannot check the existing control socket {path}: "
                               f"{exc.strerror or exc}") from None
        finally:
            probe.close()
        raise ControlError(f"another vmip node is already listening on {path}")

    def _unlink_own_socket(self) -> None:
        # Only our own socket: a node started after us may have replaced it.
        if self._bound_inode is None:
            return
        if self._remover is not None:
            self._finish_remover()
            self._bound_inode = None
            return
        try:
            if os.lstat(self.path).st_ino == self._bound_inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            # The next node removes a socket nobody listens on; say why it stayed.
            log.warning("control socket left behind", path=str(self.path),
                        error=exc.strerror or str(exc),
                        fix="the next vmip run removes it; or remove it by hand as root")
        self._bound_inode = None

    def keep_removable(self) -> None:
        """Before the node gives up root: leave the socket's removal to a helper that keeps uid 0.

        Removing a name needs write permission on its directory, checked at
        unlink time: a directory descriptor opened earlier does not help, and
        ``/run/vmip`` must stay root's (other nodes' sockets live there).  So
        a forked helper keeps uid 0 (without any capability: the directory's
        owner bits suffice), ignores the stop signals sent to the node's
        process group, and waits on a pipe.  When the node closes the pipe,
        or dies and the kernel closes it, the helper removes the socket if it
        is still this server's, and exits.
        """
        if self._bound_inode is None or self._remover is not None:
            return
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper; observed through the socket file
            code = 1
            try:
                _run_remover(read_end, self.path, self._bound_inode)
                code = 0
            finally:
                os._exit(code)
        os.close(read_end)
        self._remover = (pid, write_end)
        log.debug("control socket removal handed to a helper", pid=pid)

    def _finish_remover(self) -> None:
        assert self._remover is not None
        pid, write_end = self._remover
        self._remover = None
        os.close(write_end)   # end of file: the helper removes the socket and exits
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return
        if os.waitstatus_to_exitcode(status) != 0:
            log.warning("control socket helper failed; the next vmip run removes the socket",
                        path=str(self.path))

    # -- clients -----------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._client_tasks) >= self.max_clients:
            log.warning("control client refused", reason="too many clients",
                        max_clients=self.max_clients)
            writer.write(encode_error(None, ErrorCode.INTERNAL,
                                      f"too many control clients (limit {self.max_clients})"))
            await self._close_writer(writer)
            return
        self._client_tasks.add(task)
        framer = LineFramer(self.max_request_bytes)
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                items: list[bytes | OverlongLine] = []
                if data:
                    items = framer.feed(data)
                else:
                    items = list(framer.end_of_stream())
                for item in items:
                    writer.write(await self.reply_to(item))
                    await writer.drain()
                if not data:
                    break
        except (ConnectionError, BrokenPipeError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            # Only close() cancels us, and it waits for us.  Ending quietly
            # matters on Python 3.11, whose stream callback logs a spurious
            # error for a connection task that ends cancelled.
            pass
        finally:
            self._client_tasks.discard(task)
            await self._close_writer(writer)

    @staticmethod
    async def _close_writer(writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, BrokenPipeError):
            pass

    async def reply_to(self, line: bytes | OverlongLine) -> bytes:
        """The reply line for one request line: the whole protocol minus the socket."""
        if line is OVERLONG:
            return encode_error(None, ErrorCode.BAD_REQUEST,
                                f"request line longer than {self.max_request_bytes} bytes")
        assert isinstance(line, bytes)
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            log.debug("control bad request", error=str(exc))
            return encode_error(exc.request_id, ErrorCode.BAD_REQUEST, str(exc))
        handler = self.handlers.get(request.cmd)
        if handler is None:
            return encode_error(request.id, ErrorCode.UNKNOWN_COMMAND,
                                f"unknown command {request.cmd!r}; "
                                f"known: {', '.join(sorted(self.handlers))}")
        try:
            spec = self.arg_specs.get(request.cmd)
            if spec is not None:
                check_args(request.cmd, request.args, spec)
            result = handler(request.args)
            if inspect.isawaitable(result):
                result = await result
        except BadArgs as exc:
            # The client's mistake, not the node's: no traceback in the log.
            log.debug("control bad arguments", cmd=request.cmd, error=str(exc))
            return encode_error(request.id, ErrorCode.BAD_ARGS, f"{request.cmd}: {exc}")
        except Exception as exc:
            log.exception("control command failed", cmd=request.cmd,
                          error=f"{type(exc).__name__}: {exc}")
            return encode_error(request.id, ErrorCode.INTERNAL,
                                f"{request.cmd} failed: {type(exc).__name__}: {exc}")
        try:
            return encode_result(request.id, result)
        except (TypeError, ValueError) as exc:
            log.error("control result is not JSON", cmd=request.cmd, error=str(exc))
            return encode_error(request.id, ErrorCode.INTERNAL,
                                f"{request.cmd} returned a result that is not JSON: {exc}")

    # -- built-in commands -------------------------------------------------

    def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise BadArgs("ping takes no arguments")
        return {"version": __version__, "pid": os.getpid()}

    def _commands(self, args: dict[str, Any]) -> list[str]:
        if args:
            raise BadArgs("commands takes no arguments")
        return sorted(self.handlers)


def _run_remover(read_end: int, path: Path, inode: int) -> None:
    """The helper of :meth:`ControlServer.keep_removable`, in the forked child."""
    import contextlib
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # Nothing of the node's: not its listening socket, TUN or link sockets.
    os.closerange(0, read_end)
    os.closerange(read_end + 1, os.sysconf("SC_OPEN_MAX"))
    from vmip.privileges import drop_capabilities

    # Removing the socket matters more than the seal; stderr is closed: no log.
    with contextlib.suppress(Exception):
        drop_capabilities([], quiet=True)
    while True:
        try:
            if not os.read(read_end, 64):
                break
        except InterruptedError:
            continue
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
