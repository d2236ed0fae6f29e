"""The dashboard renderer from recorded snapshots, and ``vmip top`` in an 80×24 tmux."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmip.control.server import ControlServer
from vmip.demo.dashboard import collect, flow_paths, link_rates, render_text

DATA = Path(__file__).parent / "data" / "mn_snapshots.json"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def snapshots() -> tuple[dict, dict]:
    data = json.loads(DATA.read_text())
    return data["previous"], data["current"]


def _fits(text: str, width: int, height: int) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= height, f"{len(lines)} lines:\n{text}"
    assert max(len(line) for line in lines) <= width
    return lines


def test_render_fits_80x24_and_shows_the_state(snapshots):
    previous, current = snapshots
    text = render_text(current, previous, width=80, height=24)
    lines = _fits(text, 80, 24)
    assert lines[0].startswith("vmip top · mn (mn) · link wifi0 · CoA 2001:db8:31::2")
    wifi = next(line for line in lines if line.startswith("wifi0"))
    # The recording's wifi0 counters went 1100→1200 rx and 1180→1300 tx in 1 s;
    # its link quality: 11.6 ms smoothed RTT, no loss, the best of two links.
    assert wifi.split()[1:] == ["active", "up", "best", "12ms", "0%", "100", "120"]
    lte = next(line for line in lines if line.startswith("lte0"))
    assert lte.split()[1:] == ["up", "62ms", "0.5%", "0", "0"]
    assert any("2001:db8:20::2" in line and "direct" in line for line in lines)
    assert any("2001:db8:10::2" in line and "home agent" in line for line in lines)
    assert any(line.startswith("mn-cn-out") and "0x2001" in line for line in lines)
    assert "remap rules: 3" in text
    assert "AotResponseSent" in text


def test_link_rates_and_flow_paths(snapshots):
    previous, current = snapshots
    assert link_rates(previous, current) == {"wifi0": (100.0, 120.0), "lte0": (0.0, 0.0)}
    assert link_rates(None, current) == {}
    cn_via_ha = copy.deepcopy(current)
    cn_via_ha["mobility"]["mn"]["binding_update_list"][1]["direct"] = None
    paths = {peer: path for peer, _, _, path in flow_paths(cn_via_ha)}
    assert paths == {"2001:db8:10::2": "home agent", "2001:db8:20::2": "via HA"}


def test_render_a_busy_node_still_fits(snapshots):
    _, current = snapshots
    busy = copy.deepcopy(current)
    busy["sas"] = busy["sas"] * 20
    busy["events"] = busy["events"] * 30
    busy["remap"]["rules"] = busy["remap"]["rules"] * 10
    for height in (24, 40):
        _fits(render_text(busy, None, width=80, height=height), 80, height)


def test_render_survives_failed_queries():
    error = {"error": "no vmip node is listening on /run/vmip/x.sock"}
    snapshot = {"t": 1.0, **{k: error for k in ("status", "sas", "remap", "mobility",
                                                 "events", "counters")}}
    text = render_text(snapshot, None, width=80, height=24)
    _fits(text, 80, 24)
    assert "no vmip node is listening" in text


class _FakeNode:
    """A control server answering with a recorded snapshot, on a loop of its own."""

    def __init__(self, path: Path, snapshot: dict) -> None:
        self.path = path
        self.snapshot = snapshot
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def handlers(self) -> dict:
        s = self.snapshot
        return {"status": lambda a: s["status"], "sa.list": lambda a: s["sas"],
                "remap.list": lambda a: s["remap"], "mobility": lambda a: s["mobility"],
                "events": lambda a: s["events"], "counters": lambda a: s["counters"]}

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = ControlServer(self.path, self.handlers())
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.close())
        self.loop.close()

    def __enter__(self) -> _FakeNode:
        self.thread.start()
        assert self.ready.wait(5.0)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


def test_collect_through_a_control_socket(tmp_path, snapshots):
    from vmip.control.client import ControlClient

    _, current = snapshots
    with _FakeNode(tmp_path / "n.sock", current):
        snap = collect(ControlClient(tmp_path / "n.sock"))
    assert snap["status"]["name"] == "mn"
    assert snap["sas"] == current["sas"]
    assert snap["events"] == current["events"]


@pytest.mark.skipif(shutil.which("tmux") is None,
                    reason="tmux is missing (tools/install-deps installs it)")
def test_vmip_top_in_an_80x24_tmux(tmp_path, snapshots):
    _, current = snapshots
    sock = tmp_path / "n.sock"
    session = f"vt{os.getpid()}-top"
    env = dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm-256color")
    with _FakeNode(sock, current):
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                        f"{sys.executable} -m vmip top --socket {sock} --interval 0.3"],
                       check=True, env=env)
        try:
            screen = ""
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:
                screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                        capture_output=True, text=True, check=True).stdout
                # The second frame has rates (two snapshots): wait for the timeline line.
                if "AotResponseSent" in screen and "remap rules: 3" in screen:
                    break
                time.sleep(0.1)
            size = subprocess.run(["tmux", "display", "-p", "-t", session,
                                   "#{window_width}x#{window_height}"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert size == "80x24"
    lines = screen.rstrip("\n").splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert lines[0].startswith("vmip top · mn (mn) · link wifi0"), screen
    assert "AotResponseSent" in screen and "remap rules: 3" in screen
    assert any("2001:db8:20::2" in line and "direct" in line for line in lines)
