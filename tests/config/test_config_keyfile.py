"""Key files: formats, refusals (missing, empty, too open), atomic 0600 writes."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.config import ConfigError, read_key_file, write_key_file
from vmip.config.keyfile import parse_key_text


def private_file(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    path.chmod(0o600)
    return path


KEY = bytes(range(0xA0, 0xB4))  # 20 bytes, e.g. AES-128 + salt


@pytest.mark.parametrize("text", [
    KEY.hex(),
    KEY.hex().upper() + "\n",
    "0x" + KEY.hex(),
    "0X" + KEY.hex().upper(),
    ":".join(f"{b:02x}" for b in KEY),
    "  " + " ".join(KEY.hex()[i:i + 8] for i in range(0, 40, 8)) + "\n\n",
    KEY.hex()[:20] + "\n" + KEY.hex()[20:] + "\n",
    "base64:" + base64.b64encode(KEY).decode(),
    "base64:" + base64.b64encode(KEY).decode()[:12] + "\n  " + base64.b64encode(KEY).decode()[12:] + "\n",
], ids=["hex", "upper", "0x", "0X", "colons", "spaces", "two-lines", "base64", "base64-wrapped"])
def test_accepted_formats(tmp_path: Path, text: str) -> None:
    assert read_key_file(private_file(tmp_path / "k.key", text)) == KEY


@pytest.mark.parametrize("content, problem", [
    ("", "key file is empty"),
    (" \n\t\n", "key file is empty"),
    ("abc", "odd number of hex digits"),
    ("zz" * 10, "neither hex nor base64"),
    ("0x", "holds no key bytes"),
    ("base64:", "holds no key bytes"),
    ("base64:!!!!", "not valid base64"),
    ("base64:QUJ", "not valid base64"),
    ("٠١٢٣", "not text"),                        # Arabic-Indic digits are not hex
    (b"\xff\xfe\x00\x01", "not text"),
])
def test_malformed_key_files_are_refused(tmp_path: Path, content: str | bytes, problem: str) -> None:
    path = private_file(tmp_path / "k.key", content)
    with pytest.raises(ConfigError) as caught:
        read_key_file(path)
    assert problem in caught.value.problem
    assert caught.value.file == str(path) and caught.value.key is None
    assert caught.value.hint


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_key_file(tmp_path / "absent.key")
    assert caught.value.problem == "key file does not exist"


def test_directory_is_not_a_key_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ConfigError) as caught:
        read_key_file(tmp_path / "dir")
    assert "not a regular file" in caught.value.problem


def test_oversized_key_file(tmp_path: Path) -> None:
    path = private_file(tmp_path / "big.key", "00" * 4096)
    with pytest.raises(ConfigError) as caught:
        read_key_file(path)
    assert "too big" in caught.value.problem


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o610, 0o601, 0o666])
def test_key_files_others_can_reach_are_refused(tmp_path: Path, mode: int) -> None:
    path = private_file(tmp_path / "k.key", KEY.hex())
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        read_key_file(path)
    assert f"(mode {mode:04o})" in caught.value.problem
    assert caught.value.hint == f"run chmod 600 {path}"


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = private_file(tmp_path / "k.key", KEY.hex())
    path.chmod(mode)
    assert read_key_file(path) == KEY


def test_errors_never_show_the_content(tmp_path: Path) -> None:
    secret = "5ec4e75ec4e75ec4e75ec4e7"
    for content in (secret + "zz", secret + "a", "base64:" + secret + "!"):
        path = private_file(tmp_path / "k.key", content)
        with pytest.raises(ConfigError) as caught:
            read_key_file(path)
        assert secret not in str(caught.value)
    path.chmod(0o644)
    path.write_text(secret)
    with pytest.raises(ConfigError) as caught:
        read_key_file(path)
    assert secret not in str(caught.value)


def test_write_key_file_creates_a_private_file_atomically(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the most permissive umask must not matter
    try:
        path = tmp_path / "new.key"
        write_key_file(path, KEY)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == KEY
    assert bytes.fromhex(path.read_text()) == KEY   # plain hex, readable by other tools
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.key"]  # no temporary left


def test_write_key_file_replaces_an_open_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_text("00" * 20)
    path.chmod(0o644)
    inode_before = path.stat().st_ino
    write_key_file(path, KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode_before  # renamed over, not rewritten in place
    assert read_key_file(path) == KEY


def test_write_key_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        write_key_file(tmp_path / "no-such-dir" / "k.key", KEY)
    assert "cannot create key file" in caught.value.problem
    with pytest.raises(ConfigError):
        write_key_file(tmp_path / "k.key", b"")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=128))
def test_write_then_read_gives_the_key_back(tmp_path_factory: pytest.TempPathFactory, key: bytes) -> None:
    path = tmp_path_factory.mktemp("roundtrip") / "k.key"
    write_key_file(path, key)
    assert read_key_file(path) == key


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_bytes_or_config_error(text: str) -> None:
    try:
        key = parse_key_text(text, "k.key")
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(key, bytes) and key


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.sampled_from(["hex", "0x", "colons", "base64"]))
def test_every_documented_encoding_decodes_to_the_key(key: bytes, encoding: str) -> None:
    text = {
        "hex": key.hex(),
        "0x": "0x" + key.hex().upper(),
        "colons": ":".join(f"{b:02x}" for b in key),
        "base64": "base64:" + base64.b64encode(key).decode(),
    }[encoding]
    assert parse_key_text(text, "k.key") == key


# -- what the file is and who owns it ------------------------------------------------------

def _write_private(path: Path) -> Path:
    return private_file(path, KEY.hex())


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_key_file(fifo)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():
        # The open() waits for a writer: be one, so the thread ends, then fail.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=5)
        pytest.fail("reading a FIFO as a key file hung")
    assert isinstance(outcome[0], ConfigError)
    assert "not a regular file" in outcome[0].problem


def test_symlink_is_refused(tmp_path: Path) -> None:
    target = _write_private(tmp_path / "real.key")
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(ConfigError) as excinfo:
        read_key_file(link)
    message = str(excinfo.value)
    assert "symbolic link" in message and str(target) in message
    assert KEY.hex() not in message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = _write_private(tmp_path / "other.key")
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError) as excinfo:
        read_key_file(path)
    message = str(excinfo.value)
    assert "owned by" in message and "chown root" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_key_file_owned_by_the_node_user_is_accepted(tmp_path: Path, monkeypatch) -> None:
    from vmip.config import keyfile

    monkeypatch.setattr(keyfile, "_trusted_owners", set())
    path = _write_private(tmp_path / "node.key")
    os.chown(path, 65534, 65534)
    keyfile.trust_key_file_owner(65534)
    assert read_key_file(path) == KEY


def test_unreadable_key_file_names_the_fix(tmp_path: Path, monkeypatch) -> None:
    path = _write_private(tmp_path / "k.key")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    with pytest.raises(ConfigError) as excinfo:
        read_key_file(path)
    message = str(excinfo.value)
    assert str(path) in message and "permission denied" in message
    assert f"chown nobody {path}" in message
