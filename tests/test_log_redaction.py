"""Log redaction: real secrets never reach a log line, ordinary fields that
merely contain the letters "key" (rekey, rekey_of) do."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmip import log

SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")


def _line(fmt: str, **fields) -> str:
    stream = io.StringIO()
    log.setup("debug", fmt, stream=stream)
    try:
        log.get_logger("vmip.test").info("event", **fields)
    finally:
        log.setup("info", "text")
    return stream.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_rekey_fields_are_shown(fmt):
    line = _line(fmt, rekey=True, rekey_of="0x00001234", rekeys=3, keys_mode="ike")
    assert "<redacted>" not in line
    assert "0x00001234" in line and "rekey" in line


@pytest.mark.parametrize("name", ["key", "psk", "enc_key_in", "auth_key_out", "nonce_key",
                                  "private_key", "privkey", "secret", "sk_d", "skd", "keymat",
                                  "skeyseed", "password", "SK_ai", "shared-key", "keys", "child_keys",
                                  "esp_keys", "keying", "keymaterial", "sharedsecret",
                                  "dhsecret", "pskhex", "keyseed", "passwords"])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_fields_never_reach_the_line(fmt, name):
    line = _line(fmt, **{name: SECRET.hex(), "spi": 7})
    assert SECRET.hex() not in line
    assert "<redacted>" in line
    if fmt == "json":
        assert json.loads(line)[name] == "<redacted>"


def test_a_secret_value_is_redacted_under_any_name():
    line = _line("text", rekey_of=log.Secret(SECRET), note=log.Secret(SECRET))
    assert SECRET.hex() not in line and repr(SECRET) not in line


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", max_size=24))
def test_any_name_with_a_word_holding_key_is_secret(name):
    words = [w for w in name.replace("-", "_").split("_") if w]
    if any("key" in w and not w.startswith("rekey") for w in words) and name != "keys_mode" \
            and not name.endswith(("_file", "_path", "_len", "_length", "_bits", "_id")):
        assert log.redact({name: "x"})[name] == "<redacted>"
