"""Hosts on an IPv4 internet, in per-pid namespaces, for the deployment guide's tests.

The topology of docs/deploy.md: an "internet" router, the HA's site (a
public IPv4 address), the CN's site, a laptop with two links behind two
NATs (a Wi-Fi router and a phone's tether, itself behind carrier NAT
addresses), and, for attacks, a second laptop ("evil") with a public
address of its own.  IPv4 only on the underlay.

Each host is a network namespace ``vt<pid>-dp-<host>`` plus a mount
namespace of its own, held by one sleeping process: ``/etc`` and
``/var/lib`` are overlays whose upper layers live in the test's directory,
so the guide's ``install ... /etc/vmip`` and each node's default state
directory (``/var/lib/vmip/<node>``) are private to the host and vanish
with it, and each host has a home directory (``$HOME``) of its own.
Commands run there through ``nsenter``, exactly as written in the guide.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

#: host -> [(interface, address/len, peer host, peer interface, peer address/len)]
#: for the links between namespaces; the first host of each pair creates the veth.
LINKS = [
    ("inet", "ha0", "192.0.2.254/24", "ha", "eth0", "192.0.2.1/24"),
    ("inet", "cn0", "198.51.100.254/24", "cn", "eth0", "198.51.100.7/24"),
    ("inet", "wifi0", "203.0.113.254/24", "wifi", "wan", "203.0.113.1/24"),
    ("inet", "cgn0", "100.64.0.254/24", "phone", "wan", "100.64.0.1/24"),
    ("inet", "evil0", "198.18.0.254/24", "evil", "eth0", "198.18.0.66/24"),
    ("wifi", "lan", "192.168.1.1/24", "laptop", "wlan0", "192.168.1.23/24"),
    ("phone", "lan", "172.20.10.1/28", "laptop", "usb0", "172.20.10.2/28"),
]
#: host -> default routes (gateway, device, metric)
ROUTES = {
    "ha": [("192.0.2.254", "eth0", 0)],
    "cn": [("198.51.100.254", "eth0", 0)],
    "wifi": [("203.0.113.254", "wan", 0)],
    "phone": [("100.64.0.254", "wan", 0)],
    "evil": [("198.18.0.254", "eth0", 0)],
    # Two uplinks: the kernel prefers the Wi-Fi; vmip binds each link to its device.
    "laptop": [("192.168.1.1", "wlan0", 100), ("172.20.10.1", "usb0", 200)],
}
NATS = ("wifi", "phone")
ROUTERS = ("inet", "wifi", "phone")
#: A home NAT and a carrier NAT: masquerade what leaves the "wan" side.
NFT_NAT = """\
table ip deploy_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
"""


#: Commands the lab runs besides ``ip``, with the package that has them.
TOOLS = {"nsenter": "util-linux", "unshare": "util-linux", "nft": "nftables", "ping": "iputils-ping"}


def missing_tools() -> list[str]:
    """What this machine lacks to build the lab (empty: nothing)."""
    return [f"{tool} ({package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Host:
    """A network namespace with private /etc and /var/lib, and a home directory."""

    def __init__(self, lab: DeployLab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = f"vt{os.getpid()}-dp-{name}"
        self.root = lab.workdir / name
        self.home = self.root / "home"
        self.holder: subprocess.Popen | None = None

    def create(self) -> None:
        _ip("netns", "add", self.netns)
        self.lab.created.append(self.netns)
        for part in ("home", "etc.up", "etc.work", "lib.up", "lib.work"):
            (self.root / part).mkdir(parents=True)
        r = self.root
        mounts = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={r}/etc.up,"
                  f"workdir={r}/etc.work /etc && "
                  f"mount -t overlay overlay -o lowerdir=/var/lib,upperdir={r}/lib.up,"
                  f"workdir={r}/lib.work /var/lib && echo ready && exec sleep 3600")
        # ip netns exec -> unshare -> sh -> sleep: one pid, in both namespaces.
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation",
             "private", "sh", "-c", mounts], stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            raise AssertionError(f"host {self.name}: mount namespace not set up")

    def _argv(self, script: str) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--",
                "env", f"HOME={self.home}", "sh", "-c", f'cd "$HOME" && {script}']

    def sh(self, script: str, *, check: bool = True, timeout: float = 60):
        """Run a shell script on the host (errexit), from its home directory."""
        result = subprocess.run(self._argv("set -e\n" + script), capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"on {self.name}, exit {result.returncode}:\n{script}\n"
                                 f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return result

    def spawn(self, script: str, log: Path) -> subprocess.Popen:
        """Start a long-running command (a node) in the background; its output to *log*."""
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(self._argv("exec " + script), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.lab.procs.append(proc)
        return proc


class DeployLab:
    def __init__(self, workdir: Path, hosts=("inet", "ha", "cn", "wifi", "phone", "laptop")):
        self.workdir = workdir
        self.created: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.hosts = {name: Host(self, name) for name in hosts}

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def build(self) -> DeployLab:
        for host in self.hosts.values():
            host.create()
        for index, (a, a_dev, a_addr, b, b_dev, b_addr) in enumerate(LINKS):
            if a not in self.hosts or b not in self.hosts:
                continue
            ns_a, ns_b = self.hosts[a].netns, self.hosts[b].netns
            # Unique temporary names, then moved and renamed in their namespaces.
            tmp_a, tmp_b = (f"{end}{os.getpid() % 100000}-{index}" for end in ("dp", "dq"))
            _ip("link", "add", tmp_a, "netns", ns_a, "type", "veth", "peer", "name", tmp_b,
                "netns", ns_b)
            _ip("-n", ns_a, "link", "set", tmp_a, "name", a_dev)
            _ip("-n", ns_b, "link", "set", tmp_b, "name", b_dev)
            for ns, dev, addr in ((ns_a, a_dev, a_addr), (ns_b, b_dev, b_addr)):
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        for host in self.hosts.values():
            _ip("-n", host.netns, "link", "set", "lo", "up")
            devices = {dev for a, a_dev, _, b, b_dev, _ in LINKS if a in self.hosts
                       and b in self.hosts for h, dev in ((a, a_dev), (b, b_dev))
                       if h == host.name}
            for gateway, dev, metric in ROUTES.get(host.name, []):
                if dev not in devices:
                    continue
                _ip("-n", host.netns, "route", "add", "default", "via", gateway, "dev", dev,
                    "metric", str(metric))
        for name in ROUTERS:
            if name in self.hosts:
                self.hosts[name].sh("sysctl -qw net.ipv4.ip_forward=1")
        for name in NATS:
            if name in self.hosts:
                subprocess.run(["ip", "netns", "exec", self.hosts[name].netns, "nft", "-f", "-"],
                               input=NFT_NAT, text=True, check=True, capture_output=True,
                               timeout=10)
        return self

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for host in self.hosts.values():
            if host.holder is not None and host.holder.poll() is None:
                os.killpg(host.holder.pid, signal.SIGKILL)
                host.holder.wait(5)
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10,
                           check=False)
        for host in self.hosts.values():
            try:
                Path(f"/run/vmip/{host.netns}.sock").unlink()
            except OSError:
                pass


def wait_for(predicate, what: str, timeout: float = 20.0, interval: float = 0.2):
    """Poll *predicate* (bounded in time) until it returns something true."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
