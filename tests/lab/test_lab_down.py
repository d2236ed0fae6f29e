"""``vmip lab down`` removes everything, also after a crash; commands need a lab."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from lab_support import (
    assert_host_untouched,
    host_snapshot,
    netns_identities,
    processes_in,
    remove_stale_lab,
    teardown_lab,
    vmip_cli,
)

from vmip.lab.manage import lab_up
from vmip.lab.netns import list_netns, popen_in

pytestmark = pytest.mark.root

# A process that ignores SIGTERM, as a hung daemon would: down must SIGKILL it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "print('ready', flush=True); time.sleep(300)"


def test_down_after_a_crash_removes_namespaces_processes_and_files() -> None:
    remove_stale_lab()
    host_before = host_snapshot()
    strays: list[subprocess.Popen] = []
    try:
        lab_up()
        # The "crash": processes left running in the lab, namespaces left up,
        # and no record of any of it anywhere.
        strays.append(popen_in("vmip-mn", ["sleep", "300"], start_new_session=True))
        stubborn = popen_in("vmip-net", [sys.executable, "-c", STUBBORN], text=True,
                            stdout=subprocess.PIPE, start_new_session=True)
        strays.append(stubborn)
        assert stubborn.stdout.readline().strip() == "ready"  # its SIGTERM handler is set
        identities = netns_identities()
        assert set(identities) == {"vmip-net", "vmip-ha", "vmip-cn", "vmip-mn", "vmip-mn2"}
        assert len(processes_in(identities)) == 2

        result = vmip_cli("lab", "down")
        assert result.returncode == 0, result.stderr
        assert "stopped 2 processes" in result.stdout

        assert strays[0].wait(timeout=5) == -signal.SIGTERM
        assert strays[1].wait(timeout=5) == -signal.SIGKILL
        assert list_netns("vmip-") == []
        assert processes_in(identities) == []
        assert not Path("/run/vmip-lab").exists()
        assert_host_untouched(host_before, host_snapshot())
    finally:
        for proc in strays:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        if list_netns("vmip-"):
            teardown_lab()


def test_down_removes_a_half_built_lab() -> None:
    """Only some namespaces exist (a crash during 'lab up'): down still clears them."""
    from vmip.lab.netns import create_netns

    remove_stale_lab()
    try:
        create_netns("vmip-mn")
        create_netns("vmip-net")
        result = vmip_cli("lab", "down")
        assert result.returncode == 0, result.stderr
        assert list_netns("vmip-") == []
    finally:
        if list_netns("vmip-"):
            teardown_lab()


def test_down_when_nothing_is_up_is_fine() -> None:
    remove_stale_lab()
    result = vmip_cli("lab", "down")
    assert result.returncode == 0, result.stderr
    assert "not up" in result.stdout


@pytest.mark.parametrize("args", [
    ("lab", "link", "mn", "wifi0", "down"),
    ("lab", "exec", "mn", "--", "true"),
    ("lab", "shape", "mn", "wifi0", "--delay", "10"),
])
def test_commands_that_need_the_lab_say_so(args: tuple[str, ...]) -> None:
    remove_stale_lab()
    result = vmip_cli(*args)
    assert result.returncode != 0
    assert "vmip lab up" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_of_a_lab_that_is_down() -> None:
    remove_stale_lab()
    result = vmip_cli("lab", "status")
    assert result.returncode == 1
    assert "down" in result.stdout
    assert os.path.exists("/run/netns/vmip-net") is False
