"""Per-command argument specs: a bad argument is ``bad_args`` with what is expected, never ``internal``."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmip.control import COMMAND_ARGS, BadArgs, check_args, require_specs
from vmip.control.commands import Arg


def _exchange(sock: socket.socket, line: bytes) -> dict[str, Any]:
    sock.sendall(line)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return json.loads(data)


def _request(cmd: str, args: Any, request_id: int = 1) -> bytes:
    return json.dumps({"cmd": cmd, "args": args, "id": request_id}).encode() + b"\n"


# Handlers that use their arguments the way the node's do (args["link"], ...):
# without the spec in front of them a bad argument would raise KeyError/TypeError.
def _strict_handler(cmd: str):
    spec = COMMAND_ARGS[cmd]

    def handler(args: dict[str, Any]) -> dict[str, Any]:
        for name, arg in spec.items():
            if arg.required:
                assert isinstance(args[name], arg.kinds)
        return {"cmd": cmd, "args": sorted(args)}

    return handler


NODE_HANDLERS = require_specs({cmd: _strict_handler(cmd) for cmd in COMMAND_ARGS
                               if cmd not in ("ping", "commands")}
                              | {"undeclared": lambda args: "ran"})


def test_check_args_names_what_is_wrong_and_what_is_expected():
    spec = COMMAND_ARGS["mn.move"]
    with pytest.raises(BadArgs, match=r"unknown argument\(s\) 'lnk'; mn.move takes: link "
                                      r"\(a string, required\): the name of one of"):
        check_args("mn.move", {"lnk": "wifi0"}, spec)
    with pytest.raises(BadArgs, match="missing argument 'link': the name of one of"):
        check_args("mn.move", {}, spec)
    with pytest.raises(BadArgs, match="argument 'link' must be a string .*, not an integer"):
        check_args("mn.move", {"link": 3}, spec)
    with pytest.raises(BadArgs, match="must not be empty"):
        check_args("mn.move", {"link": " "}, spec)
    check_args("mn.move", {"link": "wifi0"}, spec)


def test_json_true_is_not_a_number_and_null_is_not_given():
    spec = COMMAND_ARGS["events"]
    with pytest.raises(BadArgs, match="not a boolean"):
        check_args("events", {"since": True}, spec)
    check_args("events", {"since": None}, spec)
    check_args("events", {"since": 1.5}, spec)
    with pytest.raises(BadArgs, match="finite"):
        check_args("events", {"since": float("inf")}, spec)


def test_capture_paths_must_be_absolute():
    spec = COMMAND_ARGS["pcap.start"]
    with pytest.raises(BadArgs, match="absolute path"):
        check_args("pcap.start", {"wire": "wire.pcap"}, spec)
    with pytest.raises(BadArgs, match="NUL"):
        check_args("pcap.start", {"wire": "/tmp/a\0b"}, spec)


def test_ike_commands_are_declared():
    assert set(COMMAND_ARGS["ike.rekey"]) == {"name", "ike"}
    assert COMMAND_ARGS["ike.initiate"]["name"].required
    assert COMMAND_ARGS["ike.list"] == {}


@pytest.mark.parametrize("cmd", sorted(COMMAND_ARGS))
def test_every_command_refuses_an_unknown_argument_with_bad_args(start_server, caplog, cmd):
    server = start_server(NODE_HANDLERS)
    with caplog.at_level(logging.DEBUG), server.connect() as sock:
        reply = _exchange(sock, _request(cmd, {"no_such_argument": 1}))
        assert reply["error"]["code"] == "bad_args", reply
        assert "no_such_argument" in reply["error"]["message"]
        assert _exchange(sock, _request("ping", {}))["ok"] is True
    assert "Traceback" not in caplog.text


def test_undeclared_command_takes_no_arguments(start_server):
    server = start_server(NODE_HANDLERS)
    with server.connect() as sock:
        assert _exchange(sock, _request("undeclared", {}))["result"] == "ran"
        reply = _exchange(sock, _request("undeclared", {"x": 1}))
        assert reply["error"]["code"] == "bad_args"
        assert "undeclared takes: none" in reply["error"]["message"]


def test_server_checks_specs_given_to_it(start_server):
    server = start_server({"echo": lambda args: args},
                          arg_specs={"echo": {"n": Arg((int,), "a count", required=True)}})
    with server.connect() as sock:
        assert _exchange(sock, _request("echo", {"n": 2}))["result"] == {"n": 2}
        assert _exchange(sock, _request("echo", {"n": "2"}))["error"]["code"] == "bad_args"
    server.server.register("later", lambda args: "ok", args={})
    with server.connect() as sock:
        assert _exchange(sock, _request("later", {"y": 1}))["error"]["code"] == "bad_args"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8)


@pytest.fixture(scope="module")
def node_like_server(tmp_path_factory):
    import asyncio
    import tempfile
    import threading
    from pathlib import Path

    from vmip.control.server import ControlServer

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory(prefix="vc-") as name:
        server = ControlServer(Path(name) / "n.sock", NODE_HANDLERS)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(server.path))
        try:
            yield sock
        finally:
            sock.close()
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.sampled_from(sorted(COMMAND_ARGS)),
       args=st.dictionaries(st.sampled_from(["link", "since", "wire", "inner", "name", "ike", "x"]),
                            _json, max_size=4))
def test_arbitrary_arguments_get_ok_or_bad_args_never_internal(node_like_server, cmd, args):
    reply = _exchange(node_like_server, _request(cmd, args))
    assert reply["ok"] or reply["error"]["code"] == "bad_args", reply
