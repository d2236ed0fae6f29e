"""``vmip run`` reads and checks its config once (docs/scale.md: a home agent
with 10,000 MNs has an 8.8 MB config; reading it twice cost ~15 s a time)."""

from __future__ import annotations

import pwd

from vmip.cli.main import main
from vmip.config import keyfile, loader

CONFIG = """\
[node]
roles = ["mn"]
user = "{user}"

[tun]
addresses = ["2001:db8:100::10/64"]

[[link]]
name = "wifi0"
coa = "2001:db8:31::2"

[mobility]
home_address = "2001:db8:100::10"
home_agent = "2001:db8:100::1"
"""


def run_with_counters(monkeypatch, tmp_path, *extra):
    user = pwd.getpwuid(65534).pw_name
    path = tmp_path / "mn.toml"
    path.write_text(CONFIG.format(user=user))
    checks, trusted, started = [], [], []
    real_build = loader.build_config

    def counting_build(*args, **kwargs):
        checks.append(kwargs.get("check_key_files", True))
        return real_build(*args, **kwargs)

    async def fake_run_node(config, **kwargs):
        started.append((config, kwargs))
        return 0

    monkeypatch.setattr(loader, "build_config", counting_build)
    monkeypatch.setattr(keyfile, "trust_key_file_owner", trusted.append)
    monkeypatch.setattr("vmip.node.launch.run_node", fake_run_node)
    monkeypatch.setattr("vmip.log.setup", lambda *args, **kwargs: None)
    assert main(["run", "-c", str(path), *extra]) == 0
    return checks, trusted, started


def test_run_checks_the_config_once_and_still_trusts_the_node_user(monkeypatch, tmp_path):
    checks, trusted, [(config, kwargs)] = run_with_counters(monkeypatch, tmp_path)
    assert checks == [True]                     # once, with the key files
    assert trusted == [65534]                   # node.user's key files accepted before that
    assert kwargs["drop_to"] == config.node.user == pwd.getpwuid(65534).pw_name


def test_run_without_dropping_trusts_no_one(monkeypatch, tmp_path):
    checks, trusted, [(_config, kwargs)] = run_with_counters(monkeypatch, tmp_path, "--no-drop")
    assert checks == [True] and trusted == [] and kwargs["drop_to"] is None
