"""The control server and client over a real Unix socket."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmip.control import (
    BadArgs,
    ControlClient,
    ControlError,
    ControlServer,
    ControlTimeout,
    NodeNotRunning,
    RemoteError,
    get_arg,
)
from vmip.control.protocol import MAX_REQUEST_BYTES

pytestmark = pytest.mark.timeout(60)


def read_line(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """One reply line (newline stripped); fails the test on EOF or an endless line."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"server closed the connection; got so far {bytes(data)!r}"
        data += chunk
        assert len(data) < limit, "reply line never ends"
    return bytes(data[:-1])


def _sa_list(args):
    peer = get_arg(args, "peer", str, default=None)
    sas = [{"spi": 0x1234, "peer": "2001:db8::1"}, {"spi": 0x5678, "peer": "2001:db8::2"}]
    return [sa for sa in sas if peer is None or sa["peer"] == peer]


async def _slow_echo(args):
    await asyncio.sleep(get_arg(args, "delay", (int, float), default=0))
    return args


def _explode(args):
    raise RuntimeError("the SAD is on fire")


HANDLERS = {
    "sa.list": _sa_list,
    "echo": _slow_echo,
    "explode": _explode,
    "not.json": lambda args: object(),
}


def _exchange(sock: socket.socket, line: bytes) -> dict:
    sock.sendall(line)
    return json.loads(read_line(sock))


# -- round trips ------------------------------------------------------------


def test_sync_round_trip(start_server):
    node = start_server(HANDLERS)
    client = ControlClient(node.path)
    assert client.call("sa.list") == [{"spi": 0x1234, "peer": "2001:db8::1"},
                                      {"spi": 0x5678, "peer": "2001:db8::2"}]
    assert client.call("sa.list", peer="2001:db8::2") == [{"spi": 0x5678, "peer": "2001:db8::2"}]
    assert client.call("echo", cmd="an argument named cmd", n=[1, {"x": None}]) == {
        "cmd": "an argument named cmd", "n": [1, {"x": None}]}


def test_async_round_trip(start_server):
    node = start_server(HANDLERS)

    async def calls():
        client = ControlClient(node.path)
        return await client.acall("sa.list", peer="2001:db8::1"), await client.acall("ping")

    sas, ping = asyncio.run(calls())
    assert sas == [{"spi": 0x1234, "peer": "2001:db8::1"}]
    assert ping["pid"] == os.getpid()


def test_server_and_client_on_uvloop(sock_dir):
    """The node runs on uvloop: the same server, on its loop, with malformed input too."""
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
    path = sock_dir / "uv.sock"

    async def scenario():
        async with ControlServer(path, HANDLERS):
            client = ControlClient(path)
            listed = await asyncio.gather(*(client.acall("echo", n=n) for n in range(5)))
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"x" * (MAX_REQUEST_BYTES + 10) + b'\n{"cmd": "ping", "id": 3}\n')
            await writer.drain()
            refused, served = json.loads(await reader.readline()), json.loads(await reader.readline())
            writer.close()
            await writer.wait_closed()
            return listed, refused, served

    listed, refused, served = uvloop.run(scenario())
    assert [r["n"] for r in listed] == list(range(5))
    assert refused["error"]["code"] == "bad_request"
    assert (served["id"], served["ok"]) == (3, True)
    assert not path.exists()


def test_raw_wire_format(start_server):
    node = start_server(HANDLERS)
    with node.connect() as sock:
        assert _exchange(sock, b'{"cmd": "sa.list", "args": {"peer": "2001:db8::2"}, "id": 7}\n') \
            == {"id": 7, "ok": True, "result": [{"spi": 22136, "peer": "2001:db8::2"}]}
        # Several requests in one write are answered in order.
        sock.sendall(b'{"cmd": "echo", "args": {"delay": 0.05, "n": 1}, "id": "a"}\n'
                     b'{"cmd": "echo", "args": {"n": 2}, "id": "b"}\n')
        first, second = json.loads(read_line(sock)), json.loads(read_line(sock))
        assert (first["id"], first["result"]["n"]) == ("a", 1)
        assert (second["id"], second["result"]["n"]) == ("b", 2)


def test_built_in_commands(start_server):
    node = start_server(HANDLERS)
    client = ControlClient(node.path)
    assert client.call("commands") == sorted([*HANDLERS, "ping", "commands"])
    assert client.call("ping")["pid"] == os.getpid()


def test_unterminated_last_request_is_answered(start_server):
    node = start_server(HANDLERS)
    with node.connect() as sock:
        sock.sendall(b'{"cmd": "ping", "id": 1}')
        sock.shutdown(socket.SHUT_WR)
        assert json.loads(read_line(sock))["ok"] is True
        assert sock.recv(1) == b""  # then the server closes


# -- malformed input --------------------------------------------------------

MALFORMED = [
    (b"this is not json", None, "bad_request"),
    (b"\xff\xfe\xfd", None, "bad_request"),
    (b"", None, "bad_request"),
    (b"[1, 2, 3]", None, "bad_request"),
    (b'"ping"', None, "bad_request"),
    (b"[" * 50_000, None, "bad_request"),
    (b'{"cmd": "ping", "id": {"nested": 1}}', None, "bad_request"),
    (b'{"id": 11}', 11, "bad_request"),
    (b'{"cmd": 12, "id": 12}', 12, "bad_request"),
    (b'{"cmd": "ping", "args": [], "id": 13}', 13, "bad_request"),
    (b'{"cmd": "ping", "bogus": 1, "id": 14}', 14, "bad_request"),
    (b'{"cmd": "no.such.command", "id": 15}', 15, "unknown_command"),
    (b'{"cmd": "sa.list", "args": {"peer": 5}, "id": 16}', 16, "bad_args"),
    (b'{"cmd": "ping", "args": {"x": 1}, "id": 17}', 17, "bad_args"),
    (b'{"cmd": "explode", "id": 18}', 18, "internal"),
    (b'{"cmd": "not.json", "id": 19}', 19, "internal"),
    (b"x" * (MAX_REQUEST_BYTES + 1), None, "bad_request"),
]


def test_every_kind_of_malformed_request_gets_an_error_and_the_server_keeps_serving(
        start_server):
    node = start_server(HANDLERS)
    with node.connect() as sock:
        for line, expected_id, expected_code in MALFORMED:
            reply = _exchange(sock, line + b"\n")
            assert reply["ok"] is False, line[:60]
            assert reply["id"] == expected_id, line[:60]
            assert reply["error"]["code"] == expected_code, (line[:60], reply)
            assert reply["error"]["message"]
        # Same connection, still answered properly.
        assert _exchange(sock, b'{"cmd": "ping", "id": 99}\n')["ok"] is True
    # And new clients too.
    assert ControlClient(node.path).call("sa.list", peer="2001:db8::1")[0]["spi"] == 0x1234


def test_overlong_line_is_refused_without_waiting_for_its_end(start_server):
    node = start_server(HANDLERS, max_request_bytes=1024)
    with node.connect() as sock:
        sock.sendall(b"{" + b" " * 5000)  # still no newline: the error comes now
        reply = json.loads(read_line(sock))
        assert (reply["ok"], reply["error"]["code"]) == (False, "bad_request")
        assert "1024" in reply["error"]["message"]
        sock.sendall(b" " * 100_000 + b'\n{"cmd": "ping", "id": 2}\n')
        assert json.loads(read_line(sock)) == {"id": 2, "ok": True,
                                               "result": ControlClient(node.path).call("ping")}


def test_handler_failure_is_logged_and_reported_as_internal(start_server):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("vmip.control.server")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        node = start_server(HANDLERS)
        with pytest.raises(RemoteError) as caught:
            ControlClient(node.path).call("explode")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert caught.value.code == "internal"
    assert "the SAD is on fire" in str(caught.value)
    failures = [r for r in records if r.getMessage() == "control command failed"]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].vmip_fields["cmd"] == "explode"  # type: ignore[attr-defined]


def test_client_raises_remote_error_with_code(start_server):
    node = start_server(HANDLERS)
    client = ControlClient(node.path)
    with pytest.raises(RemoteError) as caught:
        client.call("sa.lsit")
    assert caught.value.code == "unknown_command"
    assert "sa.list" in str(caught.value)  # the known commands are listed
    with pytest.raises(RemoteError) as caught:
        client.call("sa.list", peer=["not", "a", "string"])
    assert caught.value.code == "bad_args"


@given(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_lines_never_kill_the_server(start_server_once, line):
    node = start_server_once
    with node.connect() as sock:
        reply = _exchange(sock, line + b"\n")
        assert set(reply) >= {"id", "ok"}
        if not reply["ok"]:
            assert reply["error"]["code"] in {"bad_request", "unknown_command", "bad_args",
                                              "internal"}
        assert _exchange(sock, b'{"cmd": "ping", "id": 1}\n')["ok"] is True


@given(st.lists(st.binary(max_size=200), max_size=8))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_byte_streams_never_kill_the_server(start_server_once, chunks):
    node = start_server_once
    with node.connect() as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        # End whatever line is open, then a good request must still work.
        sock.sendall(b'\n{"cmd": "ping", "id": "last"}\n')
        for _ in range(10_000):
            reply = json.loads(read_line(sock))
            if reply["id"] == "last" and reply["ok"]:
                break
        else:
            pytest.fail("no reply to the final ping")
    assert ControlClient(node.path).call("ping")["pid"] == os.getpid()


@pytest.fixture
def start_server_once(start_server):
    # One server for all hypothesis examples of a test: they are independent
    # connections, and a server that died in one example fails the next.
    return start_server(HANDLERS)


# -- many clients -----------------------------------------------------------


def test_concurrent_clients(start_server):
    node = start_server(HANDLERS)
    clients, results, errors = 24, {}, []

    def one(n: int) -> None:
        try:
            # Each handler waits, so the calls overlap in the server.
            results[n] = ControlClient(node.path).call("echo", delay=0.2, n=n)["n"]
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert results == {n: n for n in range(clients)}


def test_concurrent_async_clients_overlap(start_server):
    node = start_server(HANDLERS)

    async def many():
        client = ControlClient(node.path)
        loop = asyncio.get_running_loop()
        started = loop.time()
        replies = await asyncio.gather(*(client.acall("echo", delay=0.5, n=n) for n in range(20)))
        return replies, loop.time() - started

    replies, elapsed = asyncio.run(many())
    assert [r["n"] for r in replies] == list(range(20))
    assert elapsed < 5.0  # served side by side, not 20 × 0.5 s one after the other


def test_client_limit(start_server):
    node = start_server(HANDLERS, max_clients=2)
    first, second = node.connect(), node.connect()
    try:
        # Make sure both are being served before the third arrives.
        for sock in (first, second):
            assert _exchange(sock, b'{"cmd": "ping", "id": 1}\n')["ok"]
        with node.connect() as third:
            reply = json.loads(read_line(third))
            assert reply["ok"] is False and "too many" in reply["error"]["message"]
            assert third.recv(1) == b""
    finally:
        first.close()
        second.close()


# -- the socket file ----------------------------------------------------------


def test_socket_is_0600_even_with_a_permissive_umask(start_server, sock_dir):
    previous = os.umask(0)
    try:
        node = start_server(HANDLERS, path=sock_dir / "sub" / "node.sock")
        umask_after_start = os.umask(0)
    finally:
        os.umask(previous)
    mode = os.stat(node.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert umask_after_start == 0  # the server put the process umask back


def test_bind_happens_under_a_restrictive_umask(sock_dir, monkeypatch):
    # The socket must never exist with wider permissions, even for an instant:
    # record the umask in force at the moment bind() runs.
    seen: list[int] = []
    real_socket = socket.socket

    class SpySocket(real_socket):
        def bind(self, address):
            current = os.umask(0)
            os.umask(current)
            seen.append(current)
            return super().bind(address)

    monkeypatch.setattr(socket, "socket", SpySocket)

    async def run():
        async with ControlServer(sock_dir / "spy.sock", {}):
            pass

    asyncio.run(run())
    assert seen and all(mask & 0o177 == 0o177 for mask in seen)


def test_close_removes_the_socket_and_clients_then_get_a_clear_error(start_server, sock_dir):
    path = sock_dir / "node.sock"

    async def run():
        async with ControlServer(path, HANDLERS):
            assert path.exists()
        assert not path.exists()

    asyncio.run(run())
    with pytest.raises(NodeNotRunning) as caught:
        ControlClient(path).call("ping")
    assert str(caught.value) == (f"no vmip node is listening on {path} — "
                                 "is `vmip run` started in this namespace?")


def test_stale_socket_is_replaced(sock_dir):
    path = sock_dir / "node.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays; nobody listens: a crashed node's leftover
    with pytest.raises(NodeNotRunning):
        ControlClient(path).call("ping")

    async def run():
        async with ControlServer(path, HANDLERS):
            return await ControlClient(path).acall("ping")

    assert asyncio.run(run())["pid"] == os.getpid()


def test_a_second_node_on_the_same_socket_is_refused(start_server):
    node = start_server(HANDLERS)

    async def second():
        await ControlServer(node.path, HANDLERS).start()

    with pytest.raises(ControlError, match="already listening"):
        asyncio.run(second())
    assert ControlClient(node.path).call("ping")  # the first one is untouched


def test_a_file_that_is_not_a_socket_is_left_alone(sock_dir):
    path = sock_dir / "node.sock"
    path.write_text("precious")

    async def run():
        await ControlServer(path, HANDLERS).start()

    with pytest.raises(ControlError, match="not a socket"):
        asyncio.run(run())
    assert path.read_text() == "precious"


def test_too_long_socket_path_is_a_clear_error(sock_dir):
    async def run():
        await ControlServer(sock_dir / ("x" * 120) / "node.sock", HANDLERS).start()

    with pytest.raises(ControlError, match="longer than 107 bytes"):
        asyncio.run(run())


# -- client errors ----------------------------------------------------------------


def test_client_times_out_on_a_silent_node(sock_dir):
    path = sock_dir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)  # accepts connections (backlog) but never answers
    try:
        with pytest.raises(ControlTimeout, match=r"did not answer 'ping' within 0.3 s"):
            ControlClient(path, timeout=0.3).call("ping")

        async def acall():
            await ControlClient(path, timeout=0.3).acall("ping")

        with pytest.raises(ControlTimeout):
            asyncio.run(acall())
    finally:
        listener.close()


def test_client_reports_a_node_that_hangs_up(sock_dir):
    path = sock_dir / "rude.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        with pytest.raises(ControlError, match="closed the connection without answering"):
            ControlClient(path, timeout=5).call("ping")
    finally:
        thread.join(timeout=5)
        listener.close()


def test_client_refuses_a_malformed_reply(sock_dir):
    path = sock_dir / "liar.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(2)
    answers = [b"garbage\n", b'{"id": 12345, "ok": true, "result": 1}\n']

    def answer() -> None:
        for text in answers:
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.sendall(text)
            conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        with pytest.raises(ControlError, match="malformed reply"):
            ControlClient(path).call("ping")
        with pytest.raises(ControlError, match="answered request 12345"):
            ControlClient(path).call("ping")
    finally:
        thread.join(timeout=5)
        listener.close()


@pytest.mark.root
def test_permission_denied_is_explained(sock_dir):
    # Root passes any permission check on the socket file itself, so deny the
    # search permission on the directory for an unprivileged child instead.
    sock_dir.chmod(0o700)
    path = sock_dir / "node.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody and try
            try:
                os.close(read_end)
                os.setgid(65534)
                os.setuid(65534)
                try:
                    ControlClient(path, timeout=2).call("ping")
                    message = b"no error"
                except ControlError as exc:
                    message = str(exc).encode()
                os.write(write_end, message)
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode()
        os.waitpid(pid, 0)
    finally:
        listener.close()
    assert message.startswith(f"permission denied on {path}")


def test_handlers_can_be_registered_after_start(start_server):
    node = start_server({})

    async def register() -> None:
        node.server.register("late", lambda args: "here")

    asyncio.run_coroutine_threadsafe(register(), node.loop).result(timeout=5)
    assert ControlClient(node.path).call("late") == "here"


def test_bad_args_raised_by_async_handler(start_server):
    async def picky(args):
        raise BadArgs("spi must be 0x100 or more")

    node = start_server({"picky": picky})
    with pytest.raises(RemoteError, match=r"picky: spi must be 0x100 or more \[bad_args\]"):
        ControlClient(node.path).call("picky")


def test_default_path_is_used_when_none_given(monkeypatch, sock_dir):
    monkeypatch.setattr("vmip.control.server.default_socket_path", lambda: sock_dir / "d.sock")
    monkeypatch.setattr("vmip.control.client.default_socket_path", lambda: sock_dir / "d.sock")
    assert ControlServer().path == Path(sock_dir / "d.sock")
    assert ControlClient().path == Path(sock_dir / "d.sock")
