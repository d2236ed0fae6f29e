"""The systems under test: how each is brought up between the two namespaces.

Every system has its own overlay prefix (documentation space, RFC 3849) and
port, so all of them are up at the same time and the runner can interleave
their repetitions.  All traffic measured is IPv6 inside the tunnel; the
tunnels ride the IPv4 underlay (192.0.2.0/24).  Tunnel MTU 1400 everywhere.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from netbench.errors import SetupError
from netbench.lab import UNDERLAY4, UNDERLAY6, VETH, Lab, tail, wait_until

TUNNEL_MTU = 1400
REPO_ROOT = Path(__file__).resolve().parents[3]
Which = Callable[[str], str | None]


@dataclass(frozen=True)
class Missing:
    """Why a system cannot run here, and what to install."""

    reason: str
    install: str


def _first_line(cmd: list[str]) -> str:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def _missing_programs(programs: list[str], which: Which) -> list[str]:
    return [program for program in programs if which(program) is None]


#: The Debian package of each program a reference system runs.
PACKAGE_OF = {"wireguard-go": "wireguard-go", "wg": "wireguard-tools", "unshare": "util-linux",
              "openvpn": "openvpn", "openssl": "openssl"}

#: Installs every reference system at once (tools/install-deps).
INSTALL_ALL = "tools/install-deps --bench"


def install_command(programs: list[str]) -> str:
    """The exact apt-get command that brings *programs* (each once, in order)."""
    packages = dict.fromkeys(PACKAGE_OF[program] for program in programs)
    return "apt-get install " + " ".join(packages)


def interface_mtu(lab: Lab, side: str, interface: str) -> int | None:
    result = lab.run(side, ["ip", "-o", "link", "show", "dev", interface], timeout=10)
    match = re.search(r"\bmtu (\d+)", result.stdout)
    return int(match.group(1)) if match else None


def await_reachable(lab: Lab, target: str, timeout: float = 15.0) -> None:
    """One echo reply from *target*, seen from side a (neighbour discovery, handshakes)."""
    def answered() -> bool:
        result = lab.run("a", ["ping", "-n", "-c", "1", "-W", "1", target], timeout=5)
        return result.returncode == 0

    if not wait_until(answered, timeout, interval=0.1):
        raise SetupError(f"{target} does not answer ping through the tunnel within {timeout:.0f} s")


class System:
    """One thing to measure.  ``setup`` raises SetupError with a useful message."""

    name: ClassVar[str]
    #: Shown in the table's notes column.
    summary: ClassVar[str] = ""
    #: The address on side b that iperf3 and ping aim at.
    target: str
    interface: str | None = None

    def __init__(self) -> None:
        self.details: dict[str, Any] = {"summary": self.summary}

    def missing(self, which: Which = shutil.which) -> Missing | None:
        return None

    def setup(self, lab: Lab) -> None:
        raise NotImplementedError

    def _after_setup(self, lab: Lab) -> None:
        await_reachable(lab, self.target)
        self.details["target"] = self.target
        if self.interface is not None:
            mtus = {side: interface_mtu(lab, side, self.interface) for side in ("a", "b")}
            self.details["interface"] = self.interface
            self.details["mtu"] = mtus["a"]
            if any(mtu != TUNNEL_MTU for mtu in mtus.values()):
                raise SetupError(f"{self.interface} MTU is {mtus}, not {TUNNEL_MTU}")


class Underlay(System):
    name = "underlay"
    summary = "bare veth, MTU 1500, no tunnel"
    target = UNDERLAY6["b"]

    def setup(self, lab: Lab) -> None:
        self.details["version"] = _first_line(["uname", "-sr"])
        self.details["mtu"] = interface_mtu(lab, "a", VETH)
        self._after_setup(lab)


# -- vmip -----------------------------------------------------------------------

VMIP_OVERLAY = {"a": "2001:db8:a1::1", "b": "2001:db8:a1::2"}
VMIP_SPI = {"a": 0xA101, "b": 0xA102}  # the SPI each side sends on
VMIP_PORT = 6275


VMIP_RAW_OVERLAY = {"a": "2001:db8:a5::1", "b": "2001:db8:a5::2"}
VMIP_RAW_SPI = {"a": 0xA501, "b": 0xA502}
#: Metric of the underlay route to the peer's overlay address on the raw
#: system: behind the TUN's route (1024), found only by the raw link's
#: sockets, which are bound to the veth (SO_BINDTODEVICE).
RAW_ROUTE_METRIC = 2048


def vmip_config(me: str, peer: str, keydir: Path, *, driver: str = "udp") -> str:
    """A static-key node config as in tests/node/pairlab.py.

    ESP transport SAs (AES-128-GCM) protect everything between the two
    overlay addresses.  ``udp``: the overlay over the IPv4 underlay.
    ``raw``: the same on-wire packets as native IPv6 on the veth (each
    side routes the other's overlay address there); nothing else differs.
    """
    overlay, spi = (VMIP_OVERLAY, VMIP_SPI) if driver == "udp" else (VMIP_RAW_OVERLAY,
                                                                     VMIP_RAW_SPI)
    if driver == "udp":
        tun_name = "vmip0"
        link = f"""\
driver = "udp"
interface = "{VETH}"
bind = "{UNDERLAY4[me]}"
port = {VMIP_PORT}
keepalive = 0"""
        peer_framing = f'endpoint = "{UNDERLAY4[peer]}:{VMIP_PORT}"\nframing = "udp"'
    else:
        tun_name = "vmip1"
        link = f'driver = "raw"\ninterface = "{VETH}"'
        peer_framing = 'framing = "raw"'
    return f"""\
[node]
name = "bench-{driver}-{me}"
roles = ["cn"]

[tun]
name = "{tun_name}"
addresses = ["{overlay[me]}/64"]
mtu = {TUNNEL_MTU}
routes = ["{overlay[peer]}/128"]

[[link]]
name = "eth0"
{link}

[[peer]]
name = "bench-{peer}"
prefixes = ["{overlay[peer]}/128"]
{peer_framing}

[keys]
mode = "static"
state_dir = "{keydir.parent}/state-{driver}-{me}"

[[keys.sa]]
name = "out"
spi = {spi[me]}
direction = "out"
src = "{overlay[me]}"
dst = "{overlay[peer]}"
mode = "transport"
suite = "aes128gcm16"
key_file = "{keydir}/{me}.key"

[[keys.sa]]
name = "in"
spi = {spi[peer]}
direction = "in"
src = "{overlay[peer]}"
dst = "{overlay[me]}"
mode = "transport"
suite = "aes128gcm16"
key_file = "{keydir}/{peer}.key"

[[policy]]
name = "out"
direction = "out"
src = "{overlay[me]}/128"
dst = "{overlay[peer]}/128"
action = "protect"
sa = ["out"]

[[policy]]
name = "in"
direction = "in"
src = "{overlay[peer]}/128"
dst = "{overlay[me]}/128"
action = "protect"
sa = ["in"]
"""


def vmip_env() -> dict[str, str]:
    """The environment for ``python -m vmip``: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class Vmip(System):
    name = "vmip"
    summary = "udp driver, ESP AES-128-GCM (transport, static keys)"
    target = VMIP_OVERLAY["b"]
    interface = "vmip0"
    driver = "udp"

    def __init__(self) -> None:
        super().__init__()
        self.python = sys.executable
        self.pids: dict[str, int] = {}

    def missing(self, which: Which = shutil.which) -> Missing | None:
        result = subprocess.run([self.python, "-c", "import vmip"], capture_output=True,
                                text=True, timeout=30, env=vmip_env(), check=False)
        if result.returncode != 0:
            return Missing(f"{self.python} cannot import vmip",
                           f"pip install -e {REPO_ROOT}")
        return None

    def _status(self, lab: Lab, side: str, socket: Path) -> bool:
        result = lab.run(side, [self.python, "-m", "vmip", "status", "--json",
                                "--socket", str(socket)], timeout=15, env=vmip_env())
        return result.returncode == 0

    def setup(self, lab: Lab) -> None:
        from vmip.config.keyfile import write_key_file

        keydir = lab.path(f"{self.name}-keys")
        keydir.mkdir(mode=0o700)
        for side in ("a", "b"):
            # AES-128-GCM key material: 16 key bytes + 4 salt bytes (RFC 4106 §8.1).
            write_key_file(keydir / f"{side}.key", secrets.token_bytes(20))
        self._before_nodes(lab)
        for me, peer in (("a", "b"), ("b", "a")):
            config = lab.path(f"{self.name}-{me}.toml")
            config.write_text(vmip_config(me, peer, keydir, driver=self.driver))
            socket = lab.path(f"{self.name}-{me}.sock")
            log = lab.path(f"{self.name}-{me}.log")
            proc = lab.spawn(me, [self.python, "-m", "vmip", "run", "-c", str(config),
                                  "--control-socket", str(socket)], log=log, env=vmip_env())
            self.pids[me] = proc.pid

            def ready(side: str = me, sock: Path = socket, proc: subprocess.Popen[bytes] = proc,
                      log: Path = log) -> bool:
                if proc.poll() is not None:
                    raise SetupError(f"vmip run ({side}) exited {proc.returncode}: {tail(log)}")
                return sock.exists() and self._status(lab, side, sock)

            if not wait_until(ready, 30, interval=0.1):
                raise SetupError(f"vmip run ({me}) not answering status in 30 s: {tail(log)}")
        self.details["version"] = _first_line([self.python, "-m", "vmip", "--version"])
        self.details["pids"] = dict(self.pids)
        self._after_setup(lab)

    def _before_nodes(self, lab: Lab) -> None:
        """Hook: underlay set-up the nodes need (none on udp)."""


class VmipRaw(Vmip):
    """The same two nodes, SAs and on-wire packets as ``vmip``, on the raw
    driver: native IPv6 on the veth instead of UDP over IPv4."""

    name = "vmip-raw"
    summary = "raw driver (native IPv6), ESP AES-128-GCM (transport, static keys)"
    target = VMIP_RAW_OVERLAY["b"]
    interface = "vmip1"
    driver = "raw"

    def _before_nodes(self, lab: Lab) -> None:
        # Each side routes the peer's overlay address to the peer's underlay
        # address on the veth, behind the TUN's own route to it.
        for me, peer in (("a", "b"), ("b", "a")):
            result = lab.run(me, ["ip", "-6", "route", "replace", f"{VMIP_RAW_OVERLAY[peer]}/128",
                                  "via", UNDERLAY6[peer], "dev", VETH,
                                  "metric", str(RAW_ROUTE_METRIC)])
            if result.returncode != 0:
                raise SetupError(f"route to {VMIP_RAW_OVERLAY[peer]} ({me}): "
                                 f"{result.stderr.strip()}")


# -- wireguard-go ---------------------------------------------------------------

WG_OVERLAY = {"a": "2001:db8:a2::1", "b": "2001:db8:a2::2"}
WG_PORT = 51820
WG_RUN_DIR = Path("/var/run/wireguard")


class WireguardGo(System):
    name = "wireguard-go"
    summary = "userspace WireGuard (Go), ChaCha20-Poly1305"
    target = WG_OVERLAY["b"]
    interface = "wg0"

    def missing(self, which: Which = shutil.which) -> Missing | None:
        absent = _missing_programs(["wireguard-go", "wg", "unshare"], which)
        if absent:
            return Missing(f"not installed: {', '.join(absent)}", install_command(absent))
        return None

    def _in_own_run_dir(self, lab: Lab, side: str, command: str) -> list[str]:
        # The UAPI socket directory is fixed (/var/run/wireguard) and shared by
        # all namespaces; a private mount namespace gives each side its own.
        rundir = lab.path(f"wg-run-{side}")
        return ["unshare", "-m", "sh", "-c",
                f"mount --bind {rundir} {WG_RUN_DIR} && exec {command}"]

    def setup(self, lab: Lab) -> None:
        WG_RUN_DIR.mkdir(parents=True, exist_ok=True)
        keys: dict[str, tuple[Path, str]] = {}
        for side in ("a", "b"):
            lab.path(f"wg-run-{side}").mkdir(mode=0o700)
            private = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                                     timeout=10, check=True).stdout.strip()
            public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            key_path = lab.path(f"wg-{side}.key")
            key_path.touch(mode=0o600)
            key_path.write_text(private + "\n")
            keys[side] = (key_path, public)
        for side in ("a", "b"):
            log = lab.path(f"wg-{side}.log")
            proc = lab.spawn(side, self._in_own_run_dir(lab, side, "wireguard-go -f wg0"),
                             log=log)
            socket = lab.path(f"wg-run-{side}") / "wg0.sock"

            def ready(side: str = side, sock: Path = socket, log: Path = log,
                      proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise SetupError(f"wireguard-go ({side}) exited {proc.returncode}: "
                                     f"{tail(log)}")
                return sock.exists()

            if not wait_until(ready, 15):
                raise SetupError(f"wireguard-go ({side}) made no UAPI socket: {tail(log)}")
        for me, peer in (("a", "b"), ("b", "a")):
            command = (f"wg set wg0 private-key {keys[me][0]} listen-port {WG_PORT} "
                       f"peer {keys[peer][1]} endpoint {UNDERLAY4[peer]}:{WG_PORT} "
                       f"allowed-ips {WG_OVERLAY[peer]}/128")
            result = lab.run(me, self._in_own_run_dir(lab, me, command), timeout=15)
            if result.returncode != 0:
                raise SetupError(f"wg set ({me}): {result.stderr.strip()}")
            for args in (["addr", "add", f"{WG_OVERLAY[me]}/64", "dev", "wg0", "nodad"],
                         ["link", "set", "wg0", "mtu", str(TUNNEL_MTU), "up"]):
                result = lab.run(me, ["ip", *args], timeout=10)
                if result.returncode != 0:
                    raise SetupError(f"ip {' '.join(args)} ({me}): {result.stderr.strip()}")
        self.details["version"] = _first_line(["wireguard-go", "--version"])
        self._after_setup(lab)


# -- OpenVPN --------------------------------------------------------------------

OVPN_OVERLAY = {"a": "2001:db8:a3::1", "b": "2001:db8:a3::2"}
OVPN_PORT = 1194
OVPN_READY = "Initialization Sequence Completed"
OPENVPN_MODES = ("auto", "tls", "static")


class OpenVpn(System):
    """OpenVPN 2.6 point-to-point over UDP.

    ``tls``: TLS p2p mode, data channel AES-256-GCM negotiated (its fast path,
    needs a tiny PKI).  ``static``: pre-shared static key, AES-256-CBC +
    HMAC-SHA256 (deprecated in 2.6).  ``auto``: tls, and static if tls fails.
    """

    name = "openvpn"
    target = OVPN_OVERLAY["b"]
    interface = "ovpn0"

    def __init__(self, mode: str = "auto") -> None:
        super().__init__()
        if mode not in OPENVPN_MODES:
            raise ValueError(f"openvpn mode {mode!r}")
        self.mode = mode

    def missing(self, which: Which = shutil.which) -> Missing | None:
        needed = ["openvpn"] + (["openssl"] if self.mode == "tls" else [])
        absent = _missing_programs(needed, which)
        if absent:
            return Missing(f"not installed: {', '.join(absent)}", install_command(absent))
        return None

    def _common(self, side: str) -> list[str]:
        peer = "b" if side == "a" else "a"
        return ["openvpn", "--dev", self.interface or "ovpn0", "--dev-type", "tun",
                "--proto", "udp", "--local", UNDERLAY4[side], "--lport", str(OVPN_PORT),
                "--remote", UNDERLAY4[peer], "--rport", str(OVPN_PORT),
                "--ifconfig-ipv6", f"{OVPN_OVERLAY[side]}/64", OVPN_OVERLAY[peer],
                "--tun-mtu", str(TUNNEL_MTU), "--verb", "3", "--mute-replay-warnings"]

    def _make_pki(self, lab: Lab) -> Path:
        pki = lab.path("ovpn-pki")
        pki.mkdir(mode=0o700)

        def openssl(*args: str) -> None:
            result = subprocess.run(["openssl", *args], capture_output=True, text=True,
                                    timeout=30, cwd=pki, check=False)
            if result.returncode != 0:
                raise SetupError(f"openssl {args[0]}: {result.stderr.strip()[-300:]}")

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                "-subj", "/CN=netbench-ca")
        for side in ("a", "b"):
            openssl("req", *ec, "-keyout", f"{side}.key", "-out", f"{side}.csr",
                    "-subj", f"/CN=netbench-{side}")
            openssl("x509", "-req", "-in", f"{side}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", f"{side}.crt", "-days", "2")
        return pki

    def _commands(self, lab: Lab, mode: str) -> dict[str, list[str]]:
        commands: dict[str, list[str]] = {}
        if mode == "tls":
            pki = self._make_pki(lab)
            for side in ("a", "b"):
                peer = "b" if side == "a" else "a"
                # Side b plays the TLS server (ECDH only: no DH parameters).
                role = ["--tls-client"] if side == "a" else ["--tls-server", "--dh", "none"]
                commands[side] = self._common(side) + role + [
                    "--ca", str(pki / "ca.crt"), "--cert", str(pki / f"{side}.crt"),
                    "--key", str(pki / f"{side}.key"),
                    "--verify-x509-name", f"netbench-{peer}", "name",
                    "--data-ciphers", "AES-256-GCM"]
        else:
            key = lab.path("ovpn-static.key")
            result = subprocess.run(["openvpn", "--genkey", "secret", str(key)],
                                    capture_output=True, text=True, timeout=15, check=False)
            if result.returncode != 0:
                raise SetupError(f"openvpn --genkey: {result.stderr.strip()}")
            for side, direction in (("a", "0"), ("b", "1")):
                commands[side] = self._common(side) + [
                    "--secret", str(key), direction, "--cipher", "AES-256-CBC",
                    "--auth", "SHA256"]
        return commands

    def _start(self, lab: Lab, mode: str) -> None:
        procs = {}
        for side, command in self._commands(lab, mode).items():
            log = lab.path(f"ovpn-{mode}-{side}.log")
            procs[side] = (lab.spawn(side, command, log=log), log)

        def ready() -> bool:
            for side, (proc, log) in procs.items():
                if proc.poll() is not None:
                    raise SetupError(f"openvpn {mode} ({side}) exited {proc.returncode}: "
                                     f"{tail(log)}")
            return all(OVPN_READY in log.read_text(errors="replace")
                       for _, log in procs.values())

        try:
            if not wait_until(ready, 20, interval=0.1):
                raise SetupError(f"openvpn {mode}: no '{OVPN_READY}' in 20 s: "
                                 f"{tail(procs['a'][1])}")
            self._after_setup(lab)
        except SetupError:
            for proc, _ in procs.values():
                lab.stop(proc)
            raise
        log_text = procs["a"][1].read_text(errors="replace")
        cipher = re.search(r"Data Channel: cipher '([^']+)'", log_text)
        if mode == "tls":
            self.details["mode"] = (f"TLS p2p, data channel {cipher.group(1) if cipher else '?'}")
        else:
            self.details["mode"] = "static key, AES-256-CBC + HMAC-SHA256"
        self.details["summary"] = self.details["mode"]

    def setup(self, lab: Lab) -> None:
        banner = re.match(r"OpenVPN \S+", _first_line(["openvpn", "--version"]))
        self.details["version"] = banner.group(0) if banner else "unknown"
        modes = ["tls", "static"] if self.mode == "auto" else [self.mode]
        failures = []
        for mode in modes:
            if mode == "tls" and shutil.which("openssl") is None:
                failures.append("tls: openssl not installed")
                continue
            try:
                self._start(lab, mode)
                if failures:
                    self.details["fallback_because"] = "; ".join(failures)
                return
            except SetupError as exc:
                failures.append(f"{mode}: {exc}")
        raise SetupError(" / ".join(failures))


# -- strongSwan with kernel-libipsec --------------------------------------------

SWAN_OVERLAY = {"a": "2001:db8:a4::1", "b": "2001:db8:a4::2"}
SWAN_PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
#: Needed whatever the crypto provider is.
SWAN_REQUIRED_PLUGINS = ["random", "nonce", "kdf", "kernel-libipsec", "kernel-netlink",
                         "socket-default", "vici", "pem", "pkcs1", "x509", "pubkey",
                         "revocation", "sha1", "sha2", "hmac", "aes"]
#: openssl first: it provides AES-GCM and X25519 (OpenSSL's AES-NI code);
#: the own gcm/curve25519 plugins are the fallback.
SWAN_CRYPTO_PLUGINS = ["openssl", "gcm", "curve25519"]
SWAN_PACKAGES = ("strongswan-swanctl charon-systemd libcharon-extra-plugins "
                 "libstrongswan-standard-plugins libstrongswan-extra-plugins")


def _plugin_present(name: str, plugin_dir: Path = SWAN_PLUGIN_DIR) -> bool:
    return (plugin_dir / f"libstrongswan-{name}.so").exists()


def strongswan_conf(side: str, workdir: Path, plugins: list[str]) -> str:
    return f"""\
charon-systemd {{
  load = {' '.join(plugins)}
  install_routes = yes
  filelog {{
    netbench {{
      path = {workdir}/swan-{side}.log
      default = 1
      flush_line = yes
    }}
  }}
  journal {{
    default = -1
  }}
  plugins {{
    vici {{
      socket = unix://{workdir}/swan-{side}.vici
    }}
  }}
}}
"""


def swanctl_conf(side: str, psk_hex: str) -> str:
    peer = "b" if side == "a" else "a"
    return f"""\
connections {{
  bench {{
    version = 2
    local_addrs = {UNDERLAY4[side]}
    remote_addrs = {UNDERLAY4[peer]}
    proposals = aes128-sha256-x25519
    # kernel-libipsec does ESP in UDP only (RFC 3948); force it without NAT.
    encap = yes
    local {{
      auth = psk
      id = netbench-{side}
    }}
    remote {{
      auth = psk
      id = netbench-{peer}
    }}
    children {{
      bench {{
        local_ts = {SWAN_OVERLAY[side]}/128
        remote_ts = {SWAN_OVERLAY[peer]}/128
        esp_proposals = aes128gcm16
        mode = tunnel
      }}
    }}
  }}
}}
secrets {{
  ike-bench {{
    id-a = netbench-a
    id-b = netbench-b
    secret = 0x{psk_hex}
  }}
}}
"""


class StrongswanLibipsec(System):
    name = "strongswan-libipsec"
    summary = "charon + kernel-libipsec, IKEv2 PSK, ESP AES-128-GCM tunnel in UDP"
    target = SWAN_OVERLAY["b"]
    interface = "ipsec0"

    def __init__(self, plugin_dir: Path = SWAN_PLUGIN_DIR) -> None:
        super().__init__()
        self.plugin_dir = plugin_dir

    def _charon(self, which: Which) -> str | None:
        found = which("charon-systemd")
        if found is None and Path("/usr/sbin/charon-systemd").exists() and which is shutil.which:
            found = "/usr/sbin/charon-systemd"
        return found

    def missing(self, which: Which = shutil.which) -> Missing | None:
        problems = []
        if self._charon(which) is None:
            problems.append("charon-systemd")
        if which("swanctl") is None:
            problems.append("swanctl")
        absent = [name for name in SWAN_REQUIRED_PLUGINS
                  if not _plugin_present(name, self.plugin_dir)]
        if not _plugin_present("openssl", self.plugin_dir) and not all(
                _plugin_present(name, self.plugin_dir) for name in ("gcm", "curve25519")):
            absent.append("openssl (or gcm and curve25519)")
        if absent:
            problems.append("plugins " + ", ".join(absent))
        if problems:
            return Missing(f"not installed: {'; '.join(problems)}",
                           f"apt-get install {SWAN_PACKAGES}")
        return None

    def setup(self, lab: Lab) -> None:
        assert lab.workdir is not None
        charon = self._charon(shutil.which)
        assert charon is not None
        plugins = [name for name in SWAN_REQUIRED_PLUGINS[:2] + SWAN_CRYPTO_PLUGINS
                   + SWAN_REQUIRED_PLUGINS[2:] if _plugin_present(name, self.plugin_dir)]
        self.details["plugins"] = " ".join(plugins)
        psk_hex = secrets.token_hex(32)
        for side in ("a", "b"):
            # The local traffic selector address lives on lo: libipsec routes
            # the peer's /128 into ipsec0 with it as source.
            result = lab.run(side, ["ip", "addr", "add", f"{SWAN_OVERLAY[side]}/128", "dev", "lo"])
            if result.returncode != 0:
                raise SetupError(f"ip addr add on lo ({side}): {result.stderr.strip()}")
            conf_dir = lab.path(f"swan-{side}")
            conf_dir.mkdir(mode=0o700)
            (conf_dir / "strongswan.conf").write_text(strongswan_conf(side, lab.workdir, plugins))
            swanctl = conf_dir / "swanctl.conf"
            swanctl.touch(mode=0o600)
            swanctl.write_text(swanctl_conf(side, psk_hex))
            env = dict(os.environ, STRONGSWAN_CONF=str(conf_dir / "strongswan.conf"))
            log = lab.path(f"swan-{side}.out")
            proc = lab.spawn(side, [charon], log=log, env=env)
            vici = f"unix://{lab.workdir}/swan-{side}.vici"

            def loaded(side: str = side, proc=proc, log: Path = log, vici: str = vici,
                       swanctl: Path = swanctl) -> bool:
                if proc.poll() is not None:
                    raise SetupError(f"charon ({side}) exited {proc.returncode}: {tail(log)}")
                if not (lab.workdir / f"swan-{side}.vici").exists():  # type: ignore[operator]
                    return False
                result = lab.run(side, ["swanctl", "--load-all", "--file", str(swanctl),
                                        "-u", vici], timeout=15)
                return result.returncode == 0 and "loaded connection 'bench'" in result.stdout

            if not wait_until(loaded, 20, interval=0.1):
                raise SetupError(f"charon ({side}): config not loaded in 20 s: "
                                 f"{tail(lab.path(f'swan-{side}.log'))}")
        result = lab.run("a", ["swanctl", "--initiate", "--child", "bench", "--timeout", "15",
                               "-u", f"unix://{lab.workdir}/swan-a.vici"], timeout=25)
        if result.returncode != 0 or "initiate completed successfully" not in result.stdout:
            raise SetupError(f"swanctl --initiate: {(result.stdout + result.stderr)[-400:]}")
        selected = re.search(r"selected proposal: (ESP:\S+)", result.stdout)
        self.details["esp"] = selected.group(1) if selected else "?"
        for side in ("a", "b"):
            result = lab.run(side, ["ip", "link", "set", "ipsec0", "mtu", str(TUNNEL_MTU)])
            if result.returncode != 0:
                raise SetupError(f"ipsec0 MTU ({side}): {result.stderr.strip()}")
        # swanctl --version asks the daemon; the package knows without one.
        package = _first_line(["dpkg-query", "-W", "-f", "${Version}", "charon-systemd"])
        self.details["version"] = f"strongSwan {package}"
        self._after_setup(lab)


# -- the Python floor -------------------------------------------------------------

FLOOR_OVERLAY = {"a": "2001:db8:a9::1", "b": "2001:db8:a9::2"}
FLOOR_PORT = 6999
FLOOR_RELAY = Path(__file__).resolve().parent / "floor_relay.py"


class PythonFloor(System):
    """netbench/floor_relay.py on both sides: TUN, AES-128-GCM and UDP in the
    least Python that does them, with vmip's interpreter and event loop.
    A reference for what vmip's own code adds per crossing, not a tunnel."""

    name = "python-floor"
    summary = "reference: TUN -> AES-128-GCM -> UDP in ~30 lines of Python (no SPD, no replay window)"
    target = FLOOR_OVERLAY["b"]
    interface = "pyfloor0"

    def missing(self, which: Which = shutil.which) -> Missing | None:
        result = subprocess.run([sys.executable, "-c", "import uvloop, pytun, cryptography"],
                                capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            return Missing(f"{sys.executable} cannot import uvloop, pytun and cryptography",
                           f"pip install -e {REPO_ROOT}")
        return None

    def setup(self, lab: Lab) -> None:
        key_path = lab.path("python-floor.key")
        key_path.touch(mode=0o600)
        key_path.write_bytes(secrets.token_bytes(20))
        for me, peer in (("a", "b"), ("b", "a")):
            log = lab.path(f"python-floor-{me}.log")
            proc = lab.spawn(me, [sys.executable, str(FLOOR_RELAY), "--tun", self.interface,
                                  "--address", f"{FLOOR_OVERLAY[me]}/64",
                                  "--bind", UNDERLAY4[me], "--peer", UNDERLAY4[peer],
                                  "--port", str(FLOOR_PORT), "--key-file", str(key_path),
                                  "--mtu", str(TUNNEL_MTU)], log=log)

            def up(side: str = me, proc: subprocess.Popen[bytes] = proc, log: Path = log) -> bool:
                if proc.poll() is not None:
                    raise SetupError(f"floor_relay ({side}) exited {proc.returncode}: {tail(log)}")
                return interface_mtu(lab, side, "pyfloor0") == TUNNEL_MTU

            if not wait_until(up, 15, interval=0.1):
                raise SetupError(f"floor_relay ({me}) brought no {self.interface} up: {tail(log)}")
        self.details["version"] = f"Python {sys.version.split()[0]}"
        self._after_setup(lab)


SYSTEM_NAMES = ("vmip", "vmip-raw", "wireguard-go", "openvpn", "strongswan-libipsec", "underlay")
#: Measured only when named in --systems: references, not tunnels to compare.
EXTRA_SYSTEM_NAMES = ("python-floor",)


def make_system(name: str, openvpn_mode: str = "auto") -> System:
    if name == "vmip":
        return Vmip()
    if name == "vmip-raw":
        return VmipRaw()
    if name == "wireguard-go":
        return WireguardGo()
    if name == "openvpn":
        return OpenVpn(openvpn_mode)
    if name == "strongswan-libipsec":
        return StrongswanLibipsec()
    if name == "underlay":
        return Underlay()
    if name == "python-floor":
        return PythonFloor()
    raise ValueError(f"unknown system {name!r}")
