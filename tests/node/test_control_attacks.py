"""A running node's control socket under bad requests: ``bad_args`` with the fix, no traceback.

The requests go over the node's real socket (/run/vmip/<netns>.sock); the
node's log is read afterwards for tracebacks, and the node must still answer.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pairlab import PairLab

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    lab = PairLab(tmp_path_factory.mktemp("ctl"), netns_tag="ca")
    try:
        lab.build()
        lab.start("a")
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def conn(pair):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(pair.socket("a")))
    try:
        yield sock
    finally:
        sock.close()


def _send(sock: socket.socket, line: bytes) -> dict[str, Any]:
    sock.sendall(line)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1 << 20)
        assert chunk, "the node closed the connection"
        data += chunk
    return json.loads(data)


def _call(sock: socket.socket, cmd: str, args: Any = None) -> dict[str, Any]:
    return _send(sock, json.dumps({"cmd": cmd, "args": args or {}, "id": 1}).encode() + b"\n")


def _assert_clean_log(pair: PairLab) -> None:
    log = pair.logs["a"].read_text()
    assert "Traceback" not in log and "control command failed" not in log, log


def test_unknown_argument_of_every_command_is_bad_args(pair, conn):
    commands = _call(conn, "commands")["result"]
    assert "mn.move" in commands and "pcap.start" in commands
    for cmd in commands:
        reply = _call(conn, cmd, {"bogus": 1})
        assert reply["ok"] is False and reply["error"]["code"] == "bad_args", (cmd, reply)
        assert "'bogus'" in reply["error"]["message"]
    assert _call(conn, "status")["ok"]
    _assert_clean_log(pair)


@pytest.mark.parametrize(("cmd", "args", "expected"), [
    ("mn.move", {}, "missing argument 'link'"),
    ("mn.move", {"link": 7}, "must be a string"),
    ("mn.move", {"link": "eth0"}, "not a mobile node"),   # a CN: the request cannot apply
    ("events", {"since": "yesterday"}, "must be an integer or a number"),
    ("events", {"since": True}, "not a boolean"),
    ("pcap.start", {}, "give 'wire' and/or 'inner'"),
    ("pcap.start", {"wire": "relative.pcap"}, "absolute path"),
    ("pcap.start", {"wire": ["/tmp/x"]}, "must be a string"),
])
def test_bad_values_are_bad_args_with_the_fix(pair, conn, cmd, args, expected):
    reply = _call(conn, cmd, args)
    assert reply["error"]["code"] == "bad_args", reply
    assert expected in reply["error"]["message"], reply
    assert _call(conn, "status")["ok"]
    _assert_clean_log(pair)


def test_capture_through_a_symlink_is_refused_and_the_target_untouched(pair, conn):
    victim = pair.workdir / "victim"
    victim.write_text("precious\n")
    link = pair.workdir / "through-link.pcap"
    link.symlink_to(victim)
    reply = _call(conn, "pcap.start", {"wire": str(link)})
    assert reply["error"]["code"] == "bad_args", reply
    assert "remove it or choose another name" in reply["error"]["message"]
    assert victim.read_text() == "precious\n"
    # A refused second file leaves neither a capture running nor a file behind.
    fresh = pair.workdir / "fresh.pcap"
    reply = _call(conn, "pcap.start", {"wire": str(fresh), "inner": str(link)})
    assert reply["error"]["code"] == "bad_args", reply
    assert not fresh.exists()
    assert _call(conn, "status")["result"]["capture"] == {"wire": None, "inner": None}
    _assert_clean_log(pair)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=16)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=6)

# pcap.start with arbitrary absolute paths would create files as root: covered above.
_FUZZED = ["status", "sa.list", "spd.list", "locators", "counters", "keys.wireshark",
           "pcap.stop", "reload", "mn.move", "remap.list", "mobility", "events", "ping",
           "commands", "ike.list", "nope"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.one_of(
    st.binary(max_size=200).filter(lambda b: b"\n" not in b),
    st.builds(lambda cmd, args, extra: json.dumps({"cmd": cmd, "args": args, **extra}).encode(),
              st.sampled_from(_FUZZED),
              st.dictionaries(st.sampled_from(["link", "since", "wire", "name", "x"]), _json,
                              max_size=3) | _json,
              st.dictionaries(st.sampled_from(["id", "argz"]), _json, max_size=1))))
def test_arbitrary_requests_get_a_clear_error_never_internal(pair, conn, line):
    reply = _send(conn, line + b"\n")
    if not reply["ok"]:
        assert reply["error"]["code"] in ("bad_request", "unknown_command", "bad_args"), reply


def test_after_the_fuzz_the_node_answers_and_logged_no_traceback(pair, conn):
    assert _call(conn, "status")["ok"]
    _assert_clean_log(pair)


def test_ike_refusals_are_bad_args_through_the_node_table():
    """The IKE manager's handlers sit behind the same checks, and its KeyingError is bad_args."""
    import asyncio
    import types

    from vmip.control.server import ControlServer
    from vmip.node.keying import KeyingError
    from vmip.node.control import NodeControl
    from vmip.node.runtime import Node

    def initiate(args):
        raise KeyingError(f"no IKE peer {args['name']!r}; peers: ha")

    node = Node.__new__(Node)   # only the handler table is needed, not a started node
    node.keying = types.SimpleNamespace(handlers=lambda: {
        "ike.initiate": initiate, "ike.list": lambda args: {"sas": []}})
    node.movement = None
    server = ControlServer("/nonexistent/unused.sock", NodeControl(node).handlers())

    def ask(cmd: str, args: dict) -> dict:
        line = json.dumps({"cmd": cmd, "args": args, "id": 1}).encode()
        return json.loads(asyncio.run(server.reply_to(line)))

    reply = ask("ike.initiate", {"name": "nope"})
    assert reply["error"] == {"code": "bad_args",
                              "message": "ike.initiate: no IKE peer 'nope'; peers: ha"}
    assert ask("ike.initiate", {})["error"]["code"] == "bad_args"
    assert ask("ike.initiate", {"name": "ha", "force": True})["error"]["code"] == "bad_args"
    assert ask("ike.list", {"x": 1})["error"]["code"] == "bad_args"
    assert ask("ike.list", {})["result"] == {"sas": []}
