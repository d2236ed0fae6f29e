"""The control line protocol without sockets: parsing, encoding, framing."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.control.errors import BadArgs, ProtocolError
from vmip.control.protocol import (
    OVERLONG,
    LineFramer,
    encode_error,
    encode_request,
    encode_result,
    get_arg,
    parse_reply,
    parse_request,
    reject_unknown_args,
)

# -- requests -------------------------------------------------------------


def test_full_request_parses():
    request = parse_request(b'{"cmd": "sa.list", "args": {"peer": "2001:db8::1"}, "id": 7}')
    assert (request.cmd, request.args, request.id) == ("sa.list", {"peer": "2001:db8::1"}, 7)


@pytest.mark.parametrize("line, expected_id", [
    (b'{"cmd": "status"}', None),
    (b'{"cmd": "status", "args": null, "id": "abc"}', "abc"),
    (b'  {"cmd": "status", "id": null}\r', None),
])
def test_args_and_id_are_optional(line, expected_id):
    request = parse_request(line)
    assert request.cmd == "status"
    assert request.args == {}
    assert request.id == expected_id


@pytest.mark.parametrize("line", [
    b"\xff\xfe{}",                          # not UTF-8
    b"",                                    # empty line
    b"sa.list",                             # not JSON
    b'{"cmd": "x"',                         # truncated JSON
    b'{"cmd": "x", "args": {"n": NaN}}',    # NaN is not JSON
    b'{"cmd": "x", "args": {"n": -Infinity}}',
    b"[1, 2]",                              # not an object
    b'"sa.list"',
    b"42",
    b"null",
    b"[" * 100_000 + b"]" * 100_000,        # nests deeper than the recursion limit
    b'{"cmd": "x", "id": ' + b"9" * 5000 + b"}",  # an integer Python refuses to convert
    b'{"cmd": "x", "id": true}',            # ids are strings, integers or null
    b'{"cmd": "x", "id": 1.5}',
    b'{"cmd": "x", "id": {"a": 1}}',
    b'{"cmd": "x", "id": [1]}',
], ids=lambda line: repr(line[:24]))
def test_malformed_request_lines_raise_protocol_error(line):
    with pytest.raises(ProtocolError):
        parse_request(line)


@pytest.mark.parametrize("line", [
    b'{"id": 3}',                                   # no cmd
    b'{"cmd": null, "id": 3}',
    b'{"cmd": 5, "id": 3}',
    b'{"cmd": "", "id": 3}',
    b'{"cmd": "sa list; rm -rf /", "id": 3}',
    b'{"cmd": "' + b"a" * 200 + b'", "id": 3}',
    b'{"cmd": "sa.list", "args": [1], "id": 3}',     # args must be an object
    b'{"cmd": "sa.list", "args": "x", "id": 3}',
    b'{"cmd": "sa.list", "argz": {}, "id": 3}',      # a typo in a field name
], ids=lambda line: repr(line[:24]))
def test_protocol_errors_keep_the_request_id(line):
    with pytest.raises(ProtocolError) as caught:
        parse_request(line)
    assert caught.value.request_id == 3


@given(st.binary(max_size=512))
@settings(max_examples=500)
def test_arbitrary_bytes_raise_only_protocol_error(line):
    try:
        parse_request(line)
    except ProtocolError:
        pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_request_like = st.dictionaries(
    st.sampled_from(["cmd", "args", "id", "extra"]) | st.text(max_size=5),
    _json_values | st.sampled_from(["sa.list", "status", "bad cmd"]),
    max_size=4,
)


@given(_request_like)
@settings(max_examples=300)
def test_request_shaped_json_parses_or_raises_protocol_error(obj):
    line = json.dumps(obj).encode()
    try:
        request = parse_request(line)
    except ProtocolError:
        return
    # What parses is exactly what was sent (the oracle is the stdlib json dump).
    assert request.cmd == obj["cmd"]
    assert request.args == (obj.get("args") or {})
    assert request.id == obj.get("id")


# -- replies --------------------------------------------------------------


def test_encoded_lines_are_single_json_lines():
    for line in (encode_request("sa.list", {"peer": "2001:db8::1"}, 9),
                 encode_result(9, [{"spi": 4660}]),
                 encode_error(9, "bad_args", "no\nnewline inside")):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        line.decode("ascii")
    assert json.loads(encode_request("sa.list", {"peer": "2001:db8::1"}, 9)) == {
        "cmd": "sa.list", "args": {"peer": "2001:db8::1"}, "id": 9}
    assert json.loads(encode_result(9, [{"spi": 4660}])) == {
        "id": 9, "ok": True, "result": [{"spi": 4660}]}
    assert json.loads(encode_error(9, "bad_args", "no\nnewline inside")) == {
        "id": 9, "ok": False, "error": {"code": "bad_args", "message": "no\nnewline inside"}}


def test_replies_parse():
    ok = parse_reply(b'{"id": 1, "ok": true, "result": {"a": [1, 2]}}')
    assert ok.ok and ok.id == 1 and ok.result == {"a": [1, 2]}
    failed = parse_reply(b'{"id": "x", "ok": false, "error": {"code": "internal", "message": "m"}}')
    assert not failed.ok and failed.id == "x"
    assert (failed.error_code, failed.error_message) == ("internal", "m")


@pytest.mark.parametrize("line", [
    b"nope", b"[]", b'{"id": 1}', b'{"id": 1, "ok": 1}', b'{"id": 1, "ok": false}',
    b'{"id": 1, "ok": false, "error": "x"}',
    b'{"id": 1, "ok": false, "error": {"code": 1, "message": "m"}}',
    b'{"id": 1.5, "ok": true}',
])
def test_malformed_replies_raise_protocol_error(line):
    with pytest.raises(ProtocolError):
        parse_reply(line)


@given(st.binary(max_size=256) | _json_values.map(lambda v: json.dumps(v).encode()))
@settings(max_examples=200)
def test_arbitrary_reply_lines_raise_only_protocol_error(line):
    try:
        parse_reply(line)
    except ProtocolError:
        pass


class Color(Enum):
    RED = "red"


@dataclass
class Point:
    x: int
    y: int


def test_results_of_common_types_become_json():
    result = {
        "v6": ipaddress.IPv6Address("2001:db8:0:0::1"),
        "net": ipaddress.ip_network("2001:db8::/32"),
        "path": Path("/run/vmip/x.sock"),
        "nonce": b"\x01\xab",
        "color": Color.RED,
        "point": Point(1, 2),
        "set": {3, 1},
    }
    assert json.loads(encode_result(1, result))["result"] == {
        "v6": "2001:db8::1", "net": "2001:db8::/32", "path": "/run/vmip/x.sock",
        "nonce": "01ab", "color": "red", "point": {"x": 1, "y": 2}, "set": [1, 3],
    }


def test_results_that_are_not_json_are_refused():
    with pytest.raises(TypeError):
        encode_result(1, object())
    with pytest.raises(ValueError):
        encode_result(1, float("nan"))


# -- framing --------------------------------------------------------------


def test_framer_joins_lines_across_chunks():
    framer = LineFramer(max_line=100)
    assert framer.feed(b'{"cmd":') == []
    assert framer.feed(b' "a"}\n{"cmd": "b"}\n{"c') == [b'{"cmd": "a"}', b'{"cmd": "b"}']
    assert framer.feed(b'md": "c"}\n') == [b'{"cmd": "c"}']
    assert framer.end_of_stream() == []


def test_framer_reports_an_overlong_line_once_and_recovers():
    framer = LineFramer(max_line=10)
    assert framer.feed(b"x" * 8) == []
    assert framer.feed(b"x" * 8) == [OVERLONG]       # reported as soon as the cap is passed
    assert framer.feed(b"y" * 1000) == []            # the rest is dropped, not buffered
    assert framer.feed(b"zz\nshort\n") == [b"short"]
    assert framer.feed(b"a" * 11 + b"\nok\n") == [OVERLONG, b"ok"]
    assert framer.feed(b"a" * 10 + b"\n") == [b"a" * 10]  # exactly the cap is fine


def test_framer_hands_out_an_unterminated_last_line():
    framer = LineFramer(max_line=100)
    framer.feed(b'{"cmd": "a"}\n{"cmd": "b"}')
    assert framer.end_of_stream() == [b'{"cmd": "b"}']


_lines = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20)


@given(_lines, st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30))
@settings(max_examples=300)
def test_framer_output_does_not_depend_on_chunking(lines, cuts):
    cap = 24
    stream = b"".join(line + b"\n" for line in lines)
    framer = LineFramer(max_line=cap)
    out: list[object] = []
    position, turn = 0, 0
    while position < len(stream):
        size = cuts[turn % len(cuts)]
        out += framer.feed(stream[position:position + size])
        position += size
        turn += 1
    expected = [line if len(line) <= cap else OVERLONG for line in lines]
    assert out == expected
    assert framer.end_of_stream() == []


# -- handler argument helpers ----------------------------------------------


def test_get_arg():
    args = {"spi": 4660, "peer": "2001:db8::1", "flag": True, "none": None}
    assert get_arg(args, "spi", int) == 4660
    assert get_arg(args, "peer", str) == "2001:db8::1"
    assert get_arg(args, "missing", int, default=3) == 3
    assert get_arg(args, "none", int, default=5) == 5
    assert get_arg(args, "flag", bool) is True
    with pytest.raises(BadArgs, match="missing argument 'missing'"):
        get_arg(args, "missing", int)
    with pytest.raises(BadArgs, match="'peer' must be an integer"):
        get_arg(args, "peer", int)
    with pytest.raises(BadArgs, match="boolean"):
        get_arg(args, "flag", int)


def test_reject_unknown_args():
    reject_unknown_args({"a": 1}, {"a", "b"})
    with pytest.raises(BadArgs, match="'c'.*accepted: a, b"):
        reject_unknown_args({"a": 1, "c": 2}, {"a", "b"})
