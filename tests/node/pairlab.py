"""Two vmip nodes in two network namespaces, for runtime tests.

``PairLab`` builds namespaces ``vt<pid>-rt-a``/``-b`` joined by a veth
(underlay 192.0.2.1/.2 and 2001:db8:ff::1/::2), writes a config per node
(overlay 2001:db8:a::1 and 2001:db8:b::1 on ``vmip0``, udp driver, static
AES-128-GCM transport SAs protecting everything between the overlay
addresses), starts ``vmip run`` in each, and removes everything on close,
also when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from vmip.config.keyfile import write_key_file

OVERLAY = {"a": "2001:db8:a::1", "b": "2001:db8:b::1"}
UNDERLAY4 = {"a": "192.0.2.1", "b": "192.0.2.2"}
UNDERLAY6 = {"a": "2001:db8:ff::1", "b": "2001:db8:ff::2"}
SPI = {"a": 0x0A01, "b": 0x0B01}  # SPI of the SA each node sends on
#: The attacker's namespace ``x`` (``PairLab(attacker=True)``) hangs off node b
#: through its own veth: it can reach b, and a through b's routing, from
#: addresses of its own; it is never on the a-b link.
ATTACKER4 = {"x": "203.0.113.66", "b": "203.0.113.2"}
ATTACKER6 = {"x": "2001:db8:fe::66", "b": "2001:db8:fe::2"}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_exec(netns: str, *cmd: str, timeout: float = 30, check: bool = False):
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True,
                          text=True, timeout=timeout, check=check)


def node_sections(me: str, peer: str, *, user: str = "") -> str:
    """[node], [tun], the udp [[link]] on the veth and the [[peer]]: what every pair config shares."""
    user_line = f'user = "{user}"\n' if user else ""
    return f"""
[node]
name = "{me}"
roles = ["cn"]
{user_line}
[tun]
name = "vmip0"
addresses = ["{OVERLAY[me]}/64"]
mtu = 1400
routes = ["{OVERLAY[peer]}/128"]

[[link]]
name = "eth0"
driver = "udp"
interface = "veth-{me}"
bind = "{UNDERLAY4[me]}"
port = 6275
keepalive = 0

[[peer]]
name = "{peer}"
prefixes = ["{OVERLAY[peer]}/128"]
endpoint = "{UNDERLAY4[peer]}:6275"
framing = "udp"
"""


def protect_policies(me: str, peer: str, *, out_sa: str = "", in_sa: str = "",
                     addresses: dict[str, str] = OVERLAY) -> str:
    """Protect everything between the two overlay addresses, each way (on the named SA, if any)."""
    out_line = f'sa = ["{out_sa}"]\n' if out_sa else ""
    in_line = f'sa = ["{in_sa}"]\n' if in_sa else ""
    return f"""
[[policy]]
name = "out"
direction = "out"
src = "{addresses[me]}/128"
dst = "{addresses[peer]}/128"
action = "protect"
{out_line}
[[policy]]
name = "in"
direction = "in"
src = "{addresses[peer]}/128"
dst = "{addresses[me]}/128"
action = "protect"
{in_line}"""


def static_keys(me: str, peer: str, *, key_dir: Path, state_dir: Path,
                addresses: dict[str, str] = OVERLAY, spis: dict[str, int] = SPI,
                mode: str = "transport", esn: bool | None = None) -> str:
    """[keys] with one static aes128gcm16 SA each way, named "out" and "in",
    between *addresses* (the SA's outer addresses in tunnel mode); each node's
    key in ``key_dir/<name>.key``."""
    esn_line = "" if esn is None else f"esn = {str(esn).lower()}\n"
    sections = f"""
[keys]
mode = "static"
state_dir = "{state_dir}"
"""
    for name, src, dst in (("out", me, peer), ("in", peer, me)):
        sections += f"""
[[keys.sa]]
name = "{name}"
spi = {spis[src]}
direction = "{name}"
src = "{addresses[src]}"
dst = "{addresses[dst]}"
mode = "{mode}"
suite = "aes128gcm16"
key_file = "{key_dir}/{src}.key"
{esn_line}"""
    return sections


def node_config(me: str, peer: str, keydir: Path, *, extra: str = "", user: str = "",
                esn: bool = True) -> str:
    """A node of the pair on static transport SAs (one each way) from *keydir*."""
    # Each node's sequence-number state in the test's own directory: the default,
    # /var/lib/vmip/<name>, is shared by every pair named a/b on the machine.
    return node_sections(me, peer, user=user) + static_keys(
        me, peer, key_dir=keydir, state_dir=keydir.parent / f"state-{me}", esn=esn) \
        + protect_policies(me, peer, out_sa="out", in_sa="in") + f"""{extra}
"""


class PairLab:
    def __init__(self, workdir: Path, *, netns_tag: str = "rt", attacker: bool = False) -> None:
        self.workdir = workdir
        pid = os.getpid()
        self.netns = {side: f"vt{pid}-{netns_tag}-{side}" for side in ("a", "b")}
        self.attacker = attacker
        if attacker:
            self.netns["x"] = f"vt{pid}-{netns_tag}-x"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.configs: dict[str, Path] = {}
        self._created: list[str] = []

    # -- topology ------------------------------------------------------------

    def write_configs(self, **options) -> None:
        keydir = self.workdir / "keys"
        for me, peer in (("a", "b"), ("b", "a")):
            path = self.workdir / f"{me}.toml"
            path.write_text(node_config(me, peer, keydir, **options))
            self.configs[me] = path

    def build(self) -> "PairLab":
        for side in ("a", "b"):
            ip("netns", "add", self.netns[side])
            self._created.append(self.netns[side])
        ip("-n", self.netns["a"], "link", "add", "veth-a", "type", "veth", "peer", "name",
           "veth-b", "netns", self.netns["b"])
        for side in ("a", "b"):
            ns = self.netns[side]
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{UNDERLAY4[side]}/24", "dev", f"veth-{side}")
            ip("-n", ns, "addr", "add", f"{UNDERLAY6[side]}/64", "dev", f"veth-{side}", "nodad")
            ip("-n", ns, "link", "set", f"veth-{side}", "up")
        if self.attacker:
            self._build_attacker()
        keydir = self.workdir / "keys"
        keydir.mkdir(mode=0o700)
        for side in ("a", "b"):
            write_key_file(keydir / f"{side}.key", secrets.token_bytes(20))
        self.write_configs()
        return self

    def _build_attacker(self) -> None:
        """Namespace x: a host of the attacker's, one veth away from b (``veth-bx``)."""
        ns_x, ns_b = self.netns["x"], self.netns["b"]
        ip("netns", "add", ns_x)
        self._created.append(ns_x)
        ip("-n", ns_b, "link", "add", "veth-bx", "type", "veth", "peer", "name", "veth-x",
           "netns", ns_x)
        for ns, dev, side in ((ns_b, "veth-bx", "b"), (ns_x, "veth-x", "x")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{ATTACKER4[side]}/24", "dev", dev)
            ip("-n", ns, "addr", "add", f"{ATTACKER6[side]}/64", "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
        # x reaches a's underlay through b (b routes; a answers x through b).
        ip("-n", ns_x, "route", "add", "192.0.2.0/24", "via", ATTACKER4["b"])
        ip("-n", ns_x, "-6", "route", "add", "2001:db8:ff::/64", "via", ATTACKER6["b"])
        ip("-n", self.netns["a"], "route", "add", "203.0.113.0/24", "via", UNDERLAY4["b"])
        ip("-n", self.netns["a"], "-6", "route", "add", "2001:db8:fe::/64", "via", UNDERLAY6["b"])
        subprocess.run(["ip", "netns", "exec", ns_b, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                        "net.ipv6.conf.all.forwarding=1"], check=True, capture_output=True,
                       timeout=10)

    def attacker_socket(self, family: int = socket.AF_INET,
                        kind: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
        """A socket opened in the attacker's namespace x (the caller closes it)."""
        from vmip.lab.netns import entered

        with entered(self.netns["x"]):
            return socket.socket(family, kind, proto)

    # -- nodes ---------------------------------------------------------------

    def socket(self, side: str) -> Path:
        return Path("/run/vmip") / f"{self.netns[side]}.sock"

    def start(self, side: str, *extra_args: str) -> subprocess.Popen:
        log = self.workdir / f"{side}.log"
        self.logs[side] = log
        sock = self.socket(side)
        if sock.exists():
            sock.unlink()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns[side], sys.executable, "-m", "vmip",
             "--log-level", "debug", "run", "-c", str(self.configs[side]), *extra_args],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
        self.procs[side] = proc
        self.wait_ready(side)
        return proc

    def wait_ready(self, side: str, timeout: float = 20.0) -> None:
        """Until the node answers ``status`` on its control socket."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[side]
            if proc.poll() is not None:
                raise AssertionError(f"vmip run ({side}) exited {proc.returncode}:\n"
                                     + self.logs[side].read_text())
            result = self.vmip(side, "status", "--json", check=False)
            if result.returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"vmip run ({side}) not ready:\n" + self.logs[side].read_text())

    def json(self, side: str, *args: str):
        """``vmip ARGS --json`` at *side*, parsed."""
        return json.loads(self.vmip(side, *args, "--json").stdout)

    def vmip(self, side: str, *args: str, check: bool = True, timeout: float = 30):
        result = netns_exec(self.netns[side], sys.executable, "-m", "vmip", *args,
                            timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"vmip {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr}")
        return result

    def stop(self, side: str, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        proc = self.procs.pop(side)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                raise
        return proc.returncode

    def close(self) -> None:
        for side in list(self.procs):
            try:
                self.stop(side)
            except Exception:
                pass
        for ns in self._created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        for side in self.netns:
            try:
                self.socket(side).unlink()
            except OSError:
                pass


def ike_node_config(me: str, peer: str, workdir: Path, *, initiate: bool,
                    static_peer: bool = True) -> str:
    """The pair's node, link and peer sections, with IKE-made SAs under the policies;
    without *static_peer* there is no [[peer]]: where the peer is comes from IKE."""
    sections = node_sections(me, peer)
    if not static_peer:
        sections = sections[:sections.index("[[peer]]")]
    return sections + """
[keys]
mode = "ike"
""" + protect_policies(me, peer) + f"""
[ike]
psk_file = "{workdir}/keys/ike.psk"
esp_proposals = ["aes128gcm16"]

[[ike.peer]]
name = "{peer}"
address = "{OVERLAY[peer]}"
initiate = {str(initiate).lower()}
"""


def wait_for(predicate, what: str, timeout: float = 15.0, interval: float = 0.1):
    """Poll *predicate* (bounded in time) until it returns something true."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def started_pair(lab: PairLab, *sides: str):
    """Build *lab*, start *sides*, yield it, and always tear it down (a fixture body)."""
    try:
        lab.build()
        for side in sides:
            lab.start(side)
        yield lab
    finally:
        lab.close()
