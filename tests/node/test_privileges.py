"""What a running node may still do after start-up, and that it still stops and reloads.

Each test starts ``vmip run`` in the pair's namespaces and reads the node's
/proc/<pid>/status: the capability sets, NoNewPrivs and the uid are the
kernel's word, not the node's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pairlab import OVERLAY, PairLab, netns_exec

pytestmark = pytest.mark.root

CAP_NET_ADMIN = 1 << 12


def _proc_status(pid: int) -> dict[str, str]:
    rows = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (row.partition(":") for row in rows)}


def _node_pid(pair: PairLab, side: str) -> int:
    return json.loads(pair.vmip(side, "status", "--json").stdout)["pid"]


def _counter(pair: PairLab, side: str, name: str) -> int:
    counters = json.loads(pair.vmip(side, "counters", "--json").stdout)
    return counters["node"].get(name, 0)


def _wait_counter(pair: PairLab, side: str, name: str, value: int, timeout: float = 10) -> None:
    # The reload runs in the node's loop; its counter is what we can observe.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _counter(pair, side, name) >= value:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached {value}:\n" + pair.logs[side].read_text())


def _ping(pair: PairLab) -> int:
    return netns_exec(pair.netns["a"], "ping", "-c", "2", "-i", "0.2", "-W", "2",
                      OVERLAY["b"]).returncode


def _add_discard_policy(config: Path) -> None:
    config.write_text(config.read_text() + """
[[policy]]
name = "extra"
direction = "out"
src = "2001:db8:a::1/128"
dst = "2001:db8:dead::/48"
action = "discard"
""")


@pytest.fixture
def workdir():
    # World-traversable (not pytest's 0700 tree): a node that switched to
    # 'nobody' must still be able to read its config on SIGHUP.
    path = Path(tempfile.mkdtemp(prefix="vmip-priv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pair(workdir):
    lab = PairLab(workdir, netns_tag="pv")
    try:
        lab.build()
        for config in lab.configs.values():
            config.chmod(0o644)
        lab.start("b")
        yield lab
    finally:
        lab.close()


def test_default_keeps_only_net_admin_sealed_and_still_reloads_and_stops(pair):
    pair.start("a")
    pid = _node_pid(pair, "a")
    status = _proc_status(pid)
    assert status["Uid"].split() == ["0"] * 4
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == CAP_NET_ADMIN, (field, status[field])
    assert int(status["CapInh"], 16) == 0 and int(status.get("CapAmb", "0"), 16) == 0
    assert status["NoNewPrivs"] == "1"
    node_status = json.loads(pair.vmip("a", "status", "--json").stdout)
    privileges = node_status["privileges"]
    assert privileges["capabilities"] == ["net_admin"] and privileges["no_new_privs"] is True
    assert "net_admin" in pair.vmip("a", "status").stdout
    # Start-up's objects are out of the collector's walks, and its pauses timed.
    assert node_status["gc"]["frozen_objects"] > 10_000 and node_status["gc"]["timed"] is True
    assert _ping(pair) == 0

    # SIGHUP after the drop: the config and the root-owned key files are re-read.
    _add_discard_policy(pair.configs["a"])
    pair.procs["a"].send_signal(signal.SIGHUP)
    _wait_counter(pair, "a", "reloads", 1)
    policies = json.loads(pair.vmip("a", "spd", "list", "--json").stdout)
    assert "extra" in {p["name"] for p in policies}
    assert _ping(pair) == 0

    # SIGTERM after the drop: socket, TUN and links all go, nothing skipped.
    assert pair.stop("a") == 0
    assert not pair.socket("a").exists()
    assert "vmip0" not in netns_exec(pair.netns["a"], "ip", "-o", "link").stdout
    log = pair.logs["a"].read_text()
    assert "close step failed" not in log and "Traceback" not in log, log


def test_node_user_switch_seals_reload_names_unreadable_key_and_socket_is_removed(pair):
    pair.start("a", "--user", "nobody")
    status = _proc_status(_node_pid(pair, "a"))
    assert status["Uid"].split() == ["65534"] * 4
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == CAP_NET_ADMIN, (field, status[field])
    assert status["NoNewPrivs"] == "1"

    # The key files stay root's, 0600 in a 0700 directory: nobody cannot read them.
    _add_discard_policy(pair.configs["a"])
    pair.procs["a"].send_signal(signal.SIGHUP)
    _wait_counter(pair, "a", "reload_failed", 1)
    log = pair.logs["a"].read_text()
    refused = next(line for line in log.splitlines() if "reload refused" in line)
    assert str(pair.workdir / "keys") in refused and "chown nobody" in refused, refused
    policies = json.loads(pair.vmip("a", "spd", "list", "--json").stdout)
    assert "extra" not in {p["name"] for p in policies}   # the running config stayed
    assert _ping(pair) == 0

    assert pair.stop("a") == 0
    assert not pair.socket("a").exists()   # removed by the helper that kept uid 0
    assert "vmip0" not in netns_exec(pair.netns["a"], "ip", "-o", "link").stdout
    assert "close step failed" not in pair.logs["a"].read_text()


def test_node_user_with_its_own_key_files_reloads(pair):
    keydir = pair.workdir / "keys"
    os.chown(keydir, 65534, 65534)
    for key in keydir.iterdir():
        os.chown(key, 65534, 65534)
    pair.start("a", "--user", "nobody")
    _add_discard_policy(pair.configs["a"])
    pair.procs["a"].send_signal(signal.SIGHUP)
    _wait_counter(pair, "a", "reloads", 1)
    assert _counter(pair, "a", "reload_failed") == 0


def test_no_drop_keeps_everything_and_says_so(pair):
    pair.start("a", "--no-drop")
    status = _proc_status(_node_pid(pair, "a"))
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) != CAP_NET_ADMIN
    assert status["NoNewPrivs"] == "0"
    assert "--no-drop" in pair.logs["a"].read_text()


# -- files the node opens at start --------------------------------------------------------

def _run_expecting_failure(pair: PairLab, *args: str) -> str:
    """``vmip run`` that must fail fast (a hang fails the test through the timeout)."""
    result = netns_exec(pair.netns["a"], sys.executable, "-m", "vmip", "run", "-c",
                        str(pair.configs["a"]), *args, timeout=20)
    assert result.returncode != 0, result.stderr
    return result.stderr


def test_key_file_fifo_fails_fast_with_a_clear_error(pair):
    key = pair.workdir / "keys" / "a.key"
    key.unlink()
    os.mkfifo(key, 0o600)
    stderr = _run_expecting_failure(pair)
    assert f"{key}: key file is not a regular file" in stderr, stderr


def test_key_file_symlink_is_refused(pair):
    key = pair.workdir / "keys" / "a.key"
    real = key.with_name("real-a.key")
    key.rename(real)
    key.symlink_to(real)
    stderr = _run_expecting_failure(pair)
    assert f"{key}: key file is a symbolic link" in stderr, stderr


def test_key_file_owned_by_another_user_is_refused(pair):
    key = pair.workdir / "keys" / "a.key"
    os.chown(key, 65534, 65534)
    stderr = _run_expecting_failure(pair)
    assert "key file is owned by nobody" in stderr and f"chown root {key}" in stderr, stderr


def test_capture_through_a_symlink_is_refused_and_the_target_untouched(pair):
    victim = pair.workdir / "victim"
    victim.write_text("precious\n")
    link = pair.workdir / "wire.pcap"
    link.symlink_to(victim)
    stderr = _run_expecting_failure(pair, "--pcap-wire", str(link))
    assert f"capture file {link} already exists" in stderr
    assert "remove it or choose another name" in stderr, stderr
    assert victim.read_text() == "precious\n"


def test_lab_nodes_are_started_to_drop_privileges():
    """``vmip lab start``/``vmip demo`` run ``vmip run`` without --no-drop: the default drop."""
    from vmip.lab.runner import NodeFiles, node_command

    files = NodeFiles(config=Path("/run/vmip-lab/mn/mn.toml"), log=Path("/x/vmip.log"),
                      pcap=Path("/x/wire.pcap"), pid_file=Path("/x/vmip.pid"),
                      control_socket=Path("/run/vmip/vmip-mn.sock"))
    argv = node_command(files)
    assert argv[:4] == [sys.executable, "-m", "vmip", "run"]
    assert "--no-drop" not in argv


def test_close_runs_every_step_when_one_fails(caplog):
    """A step that fails after the drop (EPERM) is logged; the TUN, links and captures still close."""
    import asyncio
    import functools
    import logging
    import types

    from vmip.node.runtime import Node

    closed: list[str] = []

    def failing() -> None:
        raise PermissionError(1, "Operation not permitted")

    async def failing_async() -> None:
        failing()

    async def link_close() -> None:
        closed.append("link")

    async def no_deletes() -> None:
        closed.append("ike deletes")

    node = types.SimpleNamespace(
        loop=None, ports=types.SimpleNamespace(signals=False),
        pump=types.SimpleNamespace(close=lambda: None), movement=None,
        keying=types.SimpleNamespace(close=failing, stop=no_deletes),
        control=types.SimpleNamespace(close=failing_async),
        links={"eth0": types.SimpleNamespace(close=link_close)},
        tun=types.SimpleNamespace(close=lambda: closed.append("tun")),
        pcap_wire=types.SimpleNamespace(close=lambda: closed.append("pcap")), pcap_inner=None,
        seq_state=None, config=types.SimpleNamespace(node=types.SimpleNamespace(name="t")),
        _serving=False)
    node._close_step = functools.partial(Node._close_step, node)
    node._close_step_async = functools.partial(Node._close_step_async, node)
    with caplog.at_level(logging.INFO):
        asyncio.run(Node.close(node))
    assert closed == ["ike deletes", "link", "tun", "pcap"]
    assert node.tun is None and node.control is None and node.links == {}
    failed = [r.vmip_fields["step"] for r in caplog.records if r.getMessage().startswith("close step")]
    assert failed == ["IKE", "control socket"]
