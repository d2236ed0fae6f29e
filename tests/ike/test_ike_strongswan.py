"""Interoperability with strongSwan 5.9 (charon + kernel-libipsec).

Our IkeSa runs in this process with UDP sockets bound inside namespace
``vt<pid>-ike-a``; charon runs in ``vt<pid>-ike-b``.  Assertions compare
charon's own view (``swanctl --list-sas --raw``) with our events, and decrypt
ESP that libipsec sends with the keys from our ChildSaCreated.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from vmip.ike.events import (ChildSaCreated, ChildSaDeleted, ChildSaRekeyed, IkeSaDeleted,
                             IkeSaEstablished, IkeSaRekeyed)
from vmip.ike.endpoint import IkeEndpoint
from vmip.ike.ikesa import IkeSaConfig
from vmip.ike.payloads import Identity, TrafficSelector
from vmip.ipsec.esp import EspSA

from ikepair import make_pki

pytestmark = pytest.mark.root

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
# Inner addresses for the traffic selectors: a TS equal to the IKE peer would
# route charon's own IKE packets into libipsec's TUN.
IN_A, IN_B = "198.51.100.1", "198.51.100.2"
PSK = b"vmip-interop-psk-0123456789"
CHARON = shutil.which("charon-systemd")
SWANCTL = shutil.which("swanctl")

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def _run(*cmd: str, timeout: float = 10) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


class Charon:
    def __init__(self, ns: str, workdir: Path):
        self.ns = ns
        self.dir = workdir
        self.vici = f"unix://{workdir}/charon.vici"
        (workdir / "strongswan.conf").write_text(f"""
charon-systemd {{
  load = random nonce openssl pem pkcs1 pkcs8 x509 revocation constraints pubkey kdf curve25519 hmac gcm aes sha2 kernel-libipsec kernel-netlink socket-default vici
  port = 500
  port_nat_t = 4500
  retransmit_tries = 3
  plugins {{
    vici {{ socket = {self.vici} }}
    kernel-libipsec {{ allow_peer_ts = yes }}
  }}
  filelog {{
    log {{ path = {workdir}/charon.log
          default = 2
          ike = 2
          cfg = 2 }}
  }}
  journal {{ default = -1 }}
}}
""")
        env = dict(os.environ, STRONGSWAN_CONF=str(workdir / "strongswan.conf"))
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, CHARON], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (workdir / "charon.vici").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("charon did not start: " + self.log())
            time.sleep(0.05)

    def log(self) -> str:
        p = self.dir / "charon.log"
        return p.read_text() if p.exists() else ""

    def swanctl(self, *args: str, timeout: float = 10) -> str:
        return _run("ip", "netns", "exec", self.ns, SWANCTL, *args, "-u", self.vici, timeout=timeout)

    def swanctl_async(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, SWANCTL, *args, "-u", self.vici],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def load(self, conf: str) -> None:
        path = self.dir / "swanctl.conf"
        path.write_text(conf)
        self.swanctl("--load-all", "--clear", "--file", str(path))

    def list_sas(self) -> str:
        return self.swanctl("--list-sas", "--raw")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if CHARON is None or SWANCTL is None:
        pytest.skip("strongSwan missing: apt-get install strongswan-swanctl charon-systemd "
                    "libcharon-extra-plugins")
    pid = os.getpid()
    ns_a, ns_b = f"vt{pid}-ike-a", f"vt{pid}-ike-b"
    work = tmp_path_factory.mktemp("charon")
    os.chmod(work, 0o755)
    charon = None
    try:
        for ns in (ns_a, ns_b):
            _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", "vtike-a", "netns", ns_a, "type", "veth", "peer", "name", "vtike-b",
             "netns", ns_b)
        for ns, dev, ip in ((ns_a, "vtike-a", A_IP), (ns_b, "vtike-b", B_IP)):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns_b, "addr", "add", f"{IN_B}/32", "dev", "lo")
        charon = Charon(ns_b, work)
        yield ns_a, charon
    finally:
        if charon is not None:
            charon.stop()
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Harness:
    """Our endpoint on UDP 500/4500 inside namespace A, pumped with select()."""

    def __init__(self, ns: str, config: IkeSaConfig):
        own = "/proc/self/ns/net"
        keep = os.open(own, os.O_RDONLY)
        try:
            _setns(f"/var/run/netns/{ns}")
            self.sock500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock500.bind((A_IP, 500))
            self.sock4500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock4500.bind((A_IP, 4500))
        finally:
            if _libc.setns(keep, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
            os.close(keep)
        self.config = config
        self.endpoint = IkeEndpoint(lambda addr: config, (A_IP, 500))
        self.events: list = []
        self.esp: list[bytes] = []

    def close(self) -> None:
        self.sock500.close()
        self.sock4500.close()

    def _flush(self) -> None:
        now = time.monotonic()
        for data, addr in self.endpoint.datagrams_to_send(now):
            sock = self.sock4500 if data[:4] == bytes(4) else self.sock500
            sock.sendto(data, addr)
        while (item := self.endpoint.next_event()) is not None:
            self.events.append(item[1])

    def pump(self, until, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._flush()
            if until() and (proc is None or proc.poll() is not None):
                return
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"timed out; events so far: {self.events}")
            timer = self.endpoint.get_timer()
            wait = min(0.05, max(0.0, (timer - now) if timer else 0.05))
            ready, _, _ = select.select([self.sock500, self.sock4500], [], [], wait)
            now = time.monotonic()
            for sock in ready:
                data, addr = sock.recvfrom(65535)
                if sock is self.sock4500 and data[:4] != bytes(4):
                    if data != b"\xff":
                        self.esp.append(data)   # ESP in UDP (RFC 3948)
                    continue
                self.endpoint.receive_datagram(data, addr, now)
            timer = self.endpoint.get_timer()
            if timer is not None and time.monotonic() >= timer:
                self.endpoint.handle_timer(time.monotonic())

    def of(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    @property
    def sa(self):
        assert len(self.endpoint.sas) == 1, self.endpoint.sas
        return self.endpoint.sas[0]


def _conf(ike: str, esp: str, auth: str, initiate: str = "none") -> str:
    if auth == "psk":
        local = f"local {{ auth = psk\n id = {B_IP} }}"
        remote = f"remote {{ auth = psk\n id = {A_IP} }}"
        secrets = f'secrets {{ ike-vmip {{ id-a = {A_IP}\n id-b = {B_IP}\n secret = "{PSK.decode()}" }} }}'
    else:
        local = "local { auth = pubkey\n certs = charon.pem\n id = charon.test }"
        remote = "remote { auth = pubkey\n id = vmip.test }"
        secrets = "secrets { private-charon { file = charon.key } }"
    return f"""
connections {{
  vmip {{
    version = 2
    local_addrs = {B_IP}
    remote_addrs = {A_IP}
    proposals = {ike}
    rekey_time = 0
    {local}
    {remote}
    children {{
      c {{
        local_ts = {IN_B}/32
        remote_ts = {IN_A}/32
        esp_proposals = {esp}
        mode = tunnel
        rekey_time = 0
        start_action = {initiate}
      }}
    }}
  }}
}}
{secrets}
"""


def _charon_sa(text: str) -> dict:
    """A few fields of the single IKE SA and child in ``--list-sas --raw`` output."""
    out = {}
    for key in ("initiator-spi", "responder-spi", "spi-in", "spi-out", "state",
                "encr-alg", "integ-alg", "encap"):
        m = re.findall(rf"{key}=([0-9a-zA-Z_-]+)", text)
        out[key] = m
    return out


def _agree(h: "Harness", charon: Charon, pred, timeout: float = 8.0) -> None:
    """Pump until charon's view satisfies *pred* (old SAs linger briefly)."""
    h.pump(lambda: pred(_charon_sa(charon.list_sas())), timeout=timeout)


def _install_certs(charon: Charon, pki) -> None:
    swan = charon.dir / "swanctl"
    for sub in ("x509", "x509ca", "private"):
        (swan / sub).mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (swan / "x509" / "charon.pem").write_bytes(pki.certs["charon"].public_bytes(pem))
    (swan / "x509ca" / "ca.pem").write_bytes(pki.ca.public_bytes(pem))
    (swan / "private" / "charon.key").write_bytes(pki.keys["charon"].private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _load_with_certs(charon: Charon, conf: str) -> None:
    path = charon.dir / "swanctl" / "swanctl.conf"
    path.write_text(conf)
    charon.swanctl("--load-all", "--clear", "--file", str(path))


def _ping_from_b(ns_b: str, count: int = 2) -> None:
    subprocess.run(["ip", "netns", "exec", ns_b, "ping", "-c", str(count), "-i", "0.2", "-W", "1",
                    "-I", IN_B, IN_A], capture_output=True, timeout=10)


def _decrypts(h: Harness, child: ChildSaCreated) -> bool:
    """Does some captured ESP from charon decrypt with our inbound keys?"""
    inbound, _ = child.sa_params()
    sa = EspSA(inbound, time.monotonic())
    for pkt in h.esp:
        if int.from_bytes(pkt[:4], "big") != child.spi_in:
            continue
        if sa.unprotect(pkt, time.monotonic()) is not None:
            return True
    return False


def test_vmip_initiator_psk_gcm_rekeys_and_delete(lab):
    ns_a, charon = lab
    charon.load(_conf("aes128gcm16-prfsha256-ecp256", "aes128gcm16", "psk"))
    cfg = IkeSaConfig(name="swan", psk=PSK, ike_proposals=("aes128gcm16-prfsha256-ecp256",),
                      esp_proposals=("aes128gcm16",), remote_id=Identity.from_text(B_IP),
                      retransmit_timeout=0.5,
                      local_ts=(TrafficSelector.from_network(IN_A + "/32"),),
                      remote_ts=(TrafficSelector.from_network(IN_B + "/32"),))
    h = Harness(ns_a, cfg)
    try:
        sa = h.endpoint.initiate(cfg, (B_IP, 500), time.monotonic())
        h.pump(lambda: h.of(ChildSaCreated))
        child = h.of(ChildSaCreated)[0]
        assert h.of(IkeSaEstablished)[0].nat_detected  # libipsec fakes NAT: port 4500
        assert child.udp_encap
        # charon agrees on SPIs
        _agree(h, charon, lambda sw: sw["initiator-spi"] == [sa.spi_i.hex()]
               and sw["responder-spi"] == [sa.spi_r.hex()])
        _agree(h, charon, lambda sw: sw["spi-in"] == [f"{child.spi_out:08x}"]
               and sw["spi-out"] == [f"{child.spi_in:08x}"])
        # and on keys: ESP from libipsec decrypts with ours
        _ping_from_b(charon.ns)
        h.pump(lambda: _decrypts(h, child), timeout=5)

        # CHILD_SA rekey started by charon
        proc = charon.swanctl_async("--rekey", "--child", "c")
        h.pump(lambda: h.of(ChildSaRekeyed) and h.of(ChildSaDeleted), proc=proc)
        new = h.of(ChildSaRekeyed)[0].new
        _agree(h, charon, lambda sw: sw["spi-in"] == [f"{new.spi_out:08x}"]
               and sw["spi-out"] == [f"{new.spi_in:08x}"])
        h.esp.clear()
        _ping_from_b(charon.ns)
        h.pump(lambda: _decrypts(h, new), timeout=5)

        # CHILD_SA rekey started by us
        sa.rekey_child(None, time.monotonic())
        h.endpoint.collect()
        h.pump(lambda: len(h.of(ChildSaRekeyed)) == 2 and len(h.of(ChildSaDeleted)) == 2)
        new2 = h.of(ChildSaRekeyed)[1].new
        _agree(h, charon, lambda sw: sw["spi-in"] == [f"{new2.spi_out:08x}"])

        # IKE SA rekey by us, then by charon
        sa.rekey_ike(time.monotonic())
        h.endpoint.collect()
        h.pump(lambda: h.of(IkeSaRekeyed) and sa._old is None)
        _agree(h, charon, lambda sw: sw["initiator-spi"] == [sa.spi_i.hex()]
               and sw["responder-spi"] == [sa.spi_r.hex()])
        proc = charon.swanctl_async("--rekey", "--ike", "vmip")
        h.pump(lambda: len(h.of(IkeSaRekeyed)) == 2 and sa._old is None, proc=proc)
        _agree(h, charon, lambda sw: sw["initiator-spi"] == [sa.spi_i.hex()]
               and sw["responder-spi"] == [sa.spi_r.hex()])
        # the rekeyed IKE SA still carries CHILD_SA work
        sa.rekey_child(None, time.monotonic())
        h.endpoint.collect()
        h.pump(lambda: len(h.of(ChildSaRekeyed)) == 3)

        # DELETE by us
        sa.delete(time.monotonic())
        h.endpoint.collect()
        h.pump(lambda: h.of(IkeSaDeleted))
        assert "vmip" not in charon.list_sas()
    finally:
        h.close()


def test_vmip_responder_certs_cbc_and_delete_by_charon(lab):
    ns_a, charon = lab
    pki = make_pki({"vmip": "vmip.test", "charon": "charon.test"})
    _install_certs(charon, pki)
    _load_with_certs(charon, _conf("aes256-sha256-modp2048", "aes128-sha256", "cert"))
    cfg = IkeSaConfig(name="swan", ike_proposals=("aes256-sha256-modp2048",),
                      esp_proposals=("aes128cbc-sha256",), local_id=Identity.from_text("vmip.test"),
                      remote_id=Identity.from_text("charon.test"), certificate=pki.certs["vmip"],
                      private_key=pki.keys["vmip"], cas=(pki.ca,),
                      local_ts=(TrafficSelector.from_network(IN_A + "/32"),),
                      remote_ts=(TrafficSelector.from_network(IN_B + "/32"),))
    h = Harness(ns_a, cfg)
    try:
        proc = charon.swanctl_async("--initiate", "--child", "c", "--timeout", "15")
        h.pump(lambda: h.of(ChildSaCreated), proc=proc)
        assert proc.returncode == 0, proc.stdout.read()
        child = h.of(ChildSaCreated)[0]
        assert child.suite == "aes128cbc-sha256"
        sa = h.sa
        swan = _charon_sa(charon.list_sas())
        assert swan["initiator-spi"] == [sa.spi_i.hex()]
        assert swan["spi-in"] == [f"{child.spi_out:08x}"] and swan["spi-out"] == [f"{child.spi_in:08x}"]
        _ping_from_b(charon.ns)
        h.pump(lambda: _decrypts(h, child), timeout=5)

        # rekeys started by us as responder: child, then IKE SA
        sa.rekey_child(None, time.monotonic())
        h.endpoint.collect()
        h.pump(lambda: h.of(ChildSaRekeyed) and h.of(ChildSaDeleted))
        new = h.of(ChildSaRekeyed)[0].new
        _agree(h, charon, lambda sw: sw["spi-out"] == [f"{new.spi_in:08x}"])
        sa.rekey_ike(time.monotonic())
        h.endpoint.collect()
        h.pump(lambda: h.of(IkeSaRekeyed) and sa._old is None)
        _agree(h, charon, lambda sw: sw["initiator-spi"] == [sa.spi_i.hex()]
               and sw["responder-spi"] == [sa.spi_r.hex()])

        # charon deletes the CHILD_SA, then the IKE SA
        proc = charon.swanctl_async("--terminate", "--child", "c", "--timeout", "10")
        h.pump(lambda: len(h.of(ChildSaDeleted)) == 2 and h.of(ChildSaDeleted)[-1].by_peer, proc=proc)
        proc = charon.swanctl_async("--terminate", "--ike", "vmip", "--timeout", "10")
        h.pump(lambda: h.of(IkeSaDeleted), proc=proc)
        assert h.of(IkeSaDeleted)[0].by_peer
    finally:
        h.close()
