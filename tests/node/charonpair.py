"""vmip (``vmip run``) in one namespace and strongSwan charon in another, for
the interop tests of tests/node: namespaces, veths, the two daemons, and
their removal on every path out.

The tests give the topology (``veth``, ``address``, routes with ``run``) and
the two configurations; everything else is here once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ike"))
from test_ike_strongswan import CHARON, SWANCTL, Charon, _run  # noqa: E402

from pairlab import netns_exec, wait_for  # noqa: E402
from vmip.config.keyfile import write_key_file  # noqa: E402

STRONGSWAN_MISSING = ("strongSwan missing: apt-get install strongswan-swanctl charon-systemd "
                      "libcharon-extra-plugins")


class CharonPair:
    """vmip in namespace ``a``, charon in ``b`` (``vt<pid>-<tag>-a``/``-b``)."""

    def __init__(self, workdir: Path, tag: str, psk: bytes | None) -> None:
        pid = os.getpid()
        self.ns_a, self.ns_b = f"vt{pid}-{tag}-a", f"vt{pid}-{tag}-b"
        self.workdir = workdir
        self.charon: Charon | None = None
        self.node: subprocess.Popen | None = None
        #: A crash (SIGKILL) rather than a clean stop at close: no DELETEs.
        self.kill_at_close = False
        self._created: list[str] = []
        self._psk = psk

    def open(self) -> CharonPair:
        os.chmod(self.workdir, 0o755)
        if self._psk is not None:
            write_key_file(self.workdir / "ike.psk", self._psk)
        for ns in (self.ns_a, self.ns_b):
            _run("ip", "netns", "add", ns)
            self._created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def run(self, *args: str) -> None:
        _run(*args)

    def veth(self, dev_a: str, dev_b: str) -> None:
        _run("ip", "link", "add", dev_a, "netns", self.ns_a, "type", "veth", "peer", "name",
             dev_b, "netns", self.ns_b)

    def address(self, ns: str, dev: str, address: str, *, ipv4_only: bool = False) -> None:
        """Put *address* (with its prefix length) on *dev* and bring it up."""
        if ipv4_only:
            _run("ip", "netns", "exec", ns, "sysctl", "-qw",
                 f"net.ipv6.conf.{dev}.disable_ipv6=1")
        extra = () if ipv4_only or dev == "lo" else ("nodad",)
        _run("ip", "-n", ns, "addr", "add", address, "dev", dev, *extra)
        _run("ip", "-n", ns, "link", "set", dev, "up")

    def start_charon(self, conf: str | None) -> Charon:
        """charon in namespace b, with *conf* loaded (None: nothing loaded yet)."""
        (self.workdir / "charon.vici").unlink(missing_ok=True)
        self.charon = Charon(self.ns_b, self.workdir)
        if conf is not None:
            self.charon.load(conf)
        return self.charon

    def kill_charon(self) -> None:
        assert self.charon is not None
        self.charon.proc.kill()            # no DELETE: a crash
        self.charon.proc.wait(5)
        self.charon = None

    def start_node(self, config: str | Path, *, wait_ready: bool = True) -> None:
        """``vmip run`` in namespace a: *config* is the text, or the path of a file."""
        if isinstance(config, str):
            path = self.workdir / "a.toml"
            path.write_text(config)
        else:
            path = config
        log = open(self.workdir / "a.log", "ab")
        self.node = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_a, sys.executable, "-m", "vmip", "--log-level",
             "debug", "run", "-c", str(path)],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        if wait_ready:
            wait_for(lambda: self.vmip("status", check=False).returncode == 0, "vmip run ready",
                     timeout=20, interval=0.05)

    def vmip(self, *args: str, check: bool = True, timeout: float = 30):
        result = netns_exec(self.ns_a, sys.executable, "-m", "vmip", *args, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"vmip {' '.join(args)}: {result.stderr}\n{self.log()}")
        return result

    def json(self, *args: str):
        return json.loads(self.vmip(*args, "--json").stdout)

    def log(self) -> str:
        path = self.workdir / "a.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def charon_sas(self) -> str:
        return self.charon.list_sas() if self.charon is not None else ""

    def close(self) -> None:
        node = self.node
        if node is not None and node.poll() is None:
            if self.kill_at_close:
                os.killpg(node.pid, signal.SIGKILL)
            else:
                node.terminate()
            try:
                node.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(5)
        if self.charon is not None:
            self.charon.stop()
        for ns in self._created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        (Path("/run/vmip") / f"{self.ns_a}.sock").unlink(missing_ok=True)


@contextlib.contextmanager
def charon_pair(workdir: Path, tag: str, psk: bytes) -> Iterator[CharonPair]:
    """A :class:`CharonPair`, closed whatever happens; a skip without strongSwan."""
    if CHARON is None or SWANCTL is None:
        pytest.skip(STRONGSWAN_MISSING)
    pair = CharonPair(workdir, tag, psk)
    try:
        yield pair.open()
    finally:
        pair.close()
