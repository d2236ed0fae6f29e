"""Default control socket path: named after the network namespace the process runs in."""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmip.control.paths import (
    current_netns_name,
    default_socket_path,
    socket_path_for_netns,
)

pytestmark = pytest.mark.timeout(60)

CLONE_NEWNET = 0x40000000
REPO = Path(__file__).resolve().parents[2]


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _env() -> dict[str, str]:
    # The child must import this checkout of vmip, whatever is installed.
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"vt{os.getpid()}-p"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_socket_path_for_netns():
    assert socket_path_for_netns("vmip-mn") == Path("/run/vmip/vmip-mn.sock")
    assert socket_path_for_netns(None) == Path("/run/vmip/vmip.sock")
    assert socket_path_for_netns("x", Path("/tmp/r")) == Path("/tmp/r/x.sock")


def test_no_names_directory_means_unnamed(tmp_path):
    assert current_netns_name(tmp_path / "missing") is None
    assert default_socket_path(run_dir=tmp_path, netns_dir=tmp_path / "missing") == \
        tmp_path / "vmip.sock"


def test_entries_that_are_not_our_namespace_are_ignored(tmp_path):
    # A plain file (a name whose mount is gone) never matches a namespace inode.
    (tmp_path / "stale").write_text("")
    assert current_netns_name(tmp_path) is None


@pytest.mark.root
def test_process_inside_a_named_namespace(netns):
    out = subprocess.run(
        ["ip", "netns", "exec", netns,
         *_python("from vmip.control.paths import default_socket_path; "
                  "print(default_socket_path())")],
        env=_env(), capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == f"/run/vmip/{netns}.sock"


@pytest.mark.root
def test_process_in_an_unnamed_namespace():
    out = subprocess.run(
        ["unshare", "--net",
         *_python("from vmip.control.paths import default_socket_path; "
                  "print(default_socket_path())")],
        env=_env(), capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "/run/vmip/vmip.sock"


@pytest.mark.root
def test_thread_that_entered_a_namespace_sees_its_name(netns):
    # setns(2) moves only the calling thread; the answer must follow the thread.
    libc = ctypes.CDLL(None, use_errno=True)
    seen: dict[str, object] = {}

    def inside() -> None:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                seen["error"] = os.strerror(ctypes.get_errno())
                return
        finally:
            os.close(fd)
        seen["path"] = default_socket_path()

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join(timeout=10)
    assert seen.get("path") == Path(f"/run/vmip/{netns}.sock"), seen
    # The main thread never moved.
    assert current_netns_name() != netns


@pytest.mark.root
def test_client_without_flags_finds_the_node_of_its_namespace(netns):
    """What `vmip lab exec mn -- vmip status` relies on."""
    socket_path = Path(f"/run/vmip/{netns}.sock")
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, *_python("""
            import asyncio, sys
            from vmip.control import ControlServer
            async def main():
                async with ControlServer(handlers={"where": lambda args: "node-in-ns"}) as s:
                    print(s.path, flush=True)
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(None, sys.stdin.read)  # until stdin closes
            asyncio.run(main())
        """)],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 20)
        assert ready, "the server did not start"
        assert server.stdout.readline().strip() == str(socket_path)
        client = subprocess.run(
            ["ip", "netns", "exec", netns,
             *_python("from vmip.control import ControlClient; "
                      "print(ControlClient().call('where'))")],
            check=False, env=_env(), capture_output=True, text=True, timeout=30)
        assert client.stdout.strip() == "node-in-ns", client.stderr
        # From the host namespace the default path is another one: no node there.
        assert default_socket_path() != socket_path
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        left_behind = socket_path.exists()
        socket_path.unlink(missing_ok=True)
    assert server.returncode == 0
    assert not left_behind  # the server removed its socket on close
