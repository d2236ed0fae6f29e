"""Key material: read once, when the config loads, and kept in the model, never shown."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vmip.config import dump_effective, load_config, read_key_file, to_dict, write_key_file
from vmip.ipsec.suites import SUITES


def test_sa_keys_are_in_the_loaded_config(configs: Path) -> None:
    cfg = load_config(configs / "mn.toml")
    assert cfg.keys.sa
    for sa in cfg.keys.sa:
        suite = SUITES[sa.suite]
        for path, key, size in ((sa.key_file, sa.enc_key, suite.enc_key_len),
                                (sa.auth_key_file, sa.auth_key, suite.auth_key_len)):
            if size:
                assert key == read_key_file(path) and len(key) == size
                assert str(key) == "<redacted>"   # should it ever reach a log line
            else:
                assert path is None and key is None


def test_no_keys_without_key_files(configs: Path) -> None:
    cfg = load_config(configs / "mn.toml", check_key_files=False)
    assert all(sa.enc_key is None and sa.auth_key is None for sa in cfg.keys.sa)
    # Everything else is the same config.
    loaded = load_config(configs / "mn.toml")
    assert [sa.key_file for sa in cfg.keys.sa] == [sa.key_file for sa in loaded.keys.sa]


def test_keys_stay_out_of_reprs_and_dumps(configs: Path) -> None:
    cfg = load_config(configs / "ha.toml")
    shown = repr(cfg) + "".join(map(repr, cfg.keys.sa)) + dump_effective(cfg) \
        + json.dumps(to_dict(cfg))
    for sa in cfg.keys.sa:
        for key in filter(None, (sa.enc_key, sa.auth_key)):
            assert key.hex()[:12] not in shown and repr(bytes(key))[2:14] not in shown
    assert "enc_key" not in shown and "auth_key=" not in shown


def test_loading_again_reads_the_new_keys(configs: Path) -> None:
    """A reload (SIGHUP) loads the config again, and with it the key files as they are now."""
    first = load_config(configs / "mn.toml")
    sa = first.keys.sa[0]
    new_key = bytes(len(sa.enc_key))
    os.unlink(sa.key_file)
    write_key_file(sa.key_file, new_key)
    again = load_config(configs / "mn.toml")
    assert again.keys.sa[0].enc_key == new_key != sa.enc_key
    assert again != first

