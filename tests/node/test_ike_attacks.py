"""A running node's IKE under attack from a third host (namespace x).

Node a answers IKE for peer b and has no static locator for b: it learns
where b is from IKE, as an HA learns a CoA.  The attacker in namespace x
(one veth behind b) writes b's overlay address as the on-wire source of
packets it sends from its own underlay endpoint:

- with a wrong PSK it runs IKE_SA_INIT and IKE_AUTH: a must not move b's
  locator to x (RFC 7296 §2.15, §2.23);
- 10,000 IKE_SA_INIT naming b: the real b still establishes, half-open SAs
  stay bounded (RFC 7296 §2.6);
- garbage UDP 500 datagrams from 50,000 on-wire sources: a's memory does not
  grow per source;
- with certificates: an IKE_AUTH carrying a certificate bomb is refused in
  milliseconds, and a keeps answering (RFC 5280 §6.1 path building, bounded).
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from pairlab import ATTACKER4, OVERLAY, UNDERLAY4, PairLab, ike_node_config, started_pair
from pairlab import wait_for as _wait_for

from vmip.config.keyfile import write_key_file
from vmip.ike.ikesa import IkeSa, IkeSaConfig, Role
from vmip.ike.payloads import Identity
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ike"))
from ikepair import make_pki
from test_ike_hardening import bomb

pytestmark = pytest.mark.root

UDP_PORT = 6275


def config(me: str, peer: str, workdir: Path, *, initiate: bool, static_peer: bool) -> str:
    # Without a static [[peer]], where the peer is comes from IKE (learned locators only).
    return ike_node_config(me, peer, workdir, initiate=initiate, static_peer=static_peer)


class AttackLab(PairLab):
    def write_configs(self, **options) -> None:
        psk = self.workdir / "keys" / "ike.psk"
        if not psk.exists():
            write_key_file(psk, secrets.token_bytes(32))
        for me, peer in (("a", "b"), ("b", "a")):
            path = self.workdir / f"{me}.toml"
            path.write_text(config(me, peer, self.workdir, initiate=(me == "b"),
                                   static_peer=(me == "b")))
            self.configs[me] = path




def wait_for(predicate, what: str, timeout: float = 20.0, interval: float = 0.1):
    return _wait_for(predicate, what, timeout, interval)


@pytest.fixture
def lab(tmp_path):
    yield from started_pair(AttackLab(tmp_path, netns_tag="ika", attacker=True), "a")


class Attacker:
    """Overlay packets from x's own UDP endpoint with an on-wire source of its choosing."""

    def __init__(self, pair: PairLab) -> None:
        self.sock = pair.attacker_socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ATTACKER4["x"], UDP_PORT))
        self.sock.settimeout(0.2)
        self.target = (UNDERLAY4["a"], UDP_PORT)

    def send(self, src: str, payload: bytes, sport: int = 500) -> None:
        s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6,
                                                                         OVERLAY["a"])
        udp = build_udp(sport, 500, payload, s, d)
        self.sock.sendto(build_ipv6_header(s, d, 17, len(udp)) + udp, self.target)

    def receive_ike(self, timeout: float = 3.0) -> list[bytes]:
        """IKE payloads a sent to x within *timeout* (bounded)."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not got:
            try:
                packet = self.sock.recv(65535)
            except TimeoutError:
                continue
            if len(packet) > 48 and packet[6] == 17:
                got.append(packet[48:])
        return got

    def close(self) -> None:
        self.sock.close()


def locator_of(pair: AttackLab, address: str):
    rows = pair.json("a", "locators")
    rows = rows.get("locators", rows) if isinstance(rows, dict) else rows
    return [row for row in rows if address in json.dumps(row)]


def test_wrong_psk_attacker_spoofing_b_does_not_get_b_s_locator(lab):
    attacker = Attacker(lab)
    try:
        sa = IkeSa(IkeSaConfig(psk=b"a guess at the psk"), Role.INITIATOR, (OVERLAY["b"], 500),
                   (OVERLAY["a"], 500), time.monotonic())
        sa.initiate(time.monotonic())
        for _ in range(4):   # IKE_SA_INIT, then IKE_AUTH (bounded)
            for data, _addr in sa.datagrams_to_send(time.monotonic()):
                attacker.send(OVERLAY["b"], data, 4500 if data[:4] == bytes(4) else 500)
            replies = attacker.receive_ike()
            for reply in replies:
                sa.receive_datagram(reply, (OVERLAY["a"], 500), time.monotonic())
            if sa.is_finished:
                break
        assert sa.is_finished and not sa.is_established
        listing = wait_for(lambda: (l := lab.json("a", "ike", "list"))["counters"].get(
            "AuthenticationFailed") and l, "a refusing the attacker's AUTH")
        assert not [s for s in listing["sas"] if s["state"] == "established"]
        # a answered x (no locator for b yet) but learned nothing from it.
        assert not [row for row in locator_of(lab, OVERLAY["b"])
                    if ATTACKER4["x"] in json.dumps(row)], locator_of(lab, OVERLAY["b"])
        # The real b comes along: it establishes, and its locator is b's endpoint.
        lab.start("b")
        wait_for(lambda: [s for s in lab.json("a", "ike", "list")["sas"]
                          if s["state"] == "established"], "the real b established")
        rows = locator_of(lab, OVERLAY["b"])
        assert rows and UNDERLAY4["b"] in json.dumps(rows) \
            and ATTACKER4["x"] not in json.dumps(rows), rows
    finally:
        attacker.close()


def test_ten_thousand_spoofed_inits_leave_room_for_the_real_peer(lab):
    attacker = Attacker(lab)
    sent: list[int] = []
    cookie: list[bool] = []

    def flood() -> None:
        # Past the cookie threshold first, then fetch one COOKIE at x's endpoint
        # (a answers there: it has no locator for b) and replay it from
        # 10,000 on-wire ports; also fresh initiators that never return one.
        for n in range(40):
            sa = IkeSa(IkeSaConfig(psk=b"x" * 32), Role.INITIATOR, (OVERLAY["b"], 2000 + n),
                       (OVERLAY["a"], 500), 0.0)
            sa.initiate(0.0)
            attacker.send(OVERLAY["b"], sa.datagrams_to_send(0.0)[0][0], 2000 + n)
        one = IkeSa(IkeSaConfig(psk=b"x" * 32), Role.INITIATOR, (OVERLAY["b"], 1024),
                    (OVERLAY["a"], 500), 0.0)
        one.initiate(0.0)
        first = one.datagrams_to_send(0.0)[0][0]
        with_cookie = first
        attacker.send(OVERLAY["b"], first, 1024)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and with_cookie is first:   # bounded
            for reply in attacker.receive_ike(timeout=0.5):
                if reply[:8] != one.spi_i:
                    continue   # an answer to one of the 40
                one.receive_datagram(reply, (OVERLAY["a"], 500), 0.0)
                out = one.datagrams_to_send(0.0)
                if out:
                    with_cookie = out[0][0]
        # (With the per-source cap x gets no COOKIE at all: it floods without.)
        cookie.append(with_cookie is not first)
        for n in range(10_000):
            attacker.send(OVERLAY["b"], with_cookie, 1024 + n)
            sent.append(n)
    try:
        started = time.monotonic()
        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        lab.start("b")   # b initiates at start, while the flood goes on
        wait_for(lambda: [s for s in lab.json("b", "ike", "list")["sas"]
                          if s["state"] == "established" and s["children"]],
                 "the real b established under the flood", timeout=30)
        took = time.monotonic() - started
        flooder.join(60)
        assert not flooder.is_alive() and len(sent) == 10_000
        listing = lab.json("a", "ike", "list")
        stats = listing["endpoints"][OVERLAY["a"]]
        # Bounded: the per-source cap from x, and the cookie no longer
        # covers other ports (plus b's own SA, if still half-open).
        assert stats["half_open"] <= 8 + 1, stats
        # A real flood reached a (how much of it depends on how busy the machine
        # is: the rest overflowed a's socket buffer), and what did was dropped
        # and counted, O(1) each.
        assert listing["counters"]["rx_ike"] >= 1_000, listing["counters"]
        assert stats.get("dropped_half_open_per_source", 0) + stats.get("cookie_sent", 0) \
            >= listing["counters"]["rx_ike"] - 100, (stats, listing["counters"])
        assert stats.get("dropped_too_many_sas", 0) == 0, stats
        assert lab.procs["a"].poll() is None
        print(f"real peer established {took:.1f} s after the flood started "
              f"(x got a cookie: {cookie}); a: {stats}")
    finally:
        attacker.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_garbage_from_fifty_thousand_sources_does_not_grow_memory(lab):
    attacker = Attacker(lab)
    try:
        pid = lab.procs["a"].pid

        def rx_ike() -> int:
            return lab.json("a", "ike", "list")["counters"].get("rx_ike", 0)
        # Warm up (allocator, first endpoint), then measure.
        for n in range(2000):
            attacker.send(f"2001:db8:77::{n:x}", b"\x01" * 20)
        wait_for(lambda: rx_ike() >= 1500, "the warm-up counted")
        before, counted_before = rss_kib(pid), rx_ike()
        total = 0
        for chunk in range(25):
            for n in range(2000):
                host = chunk * 2000 + n
                attacker.send(f"2001:db8:{0x100 + host // 65536:x}::{host % 65536:x}",
                              b"\x01" * 20)
            total += 2000
            # Paced by what a has counted, so its socket buffer keeps up (bounded).
            wait_for(lambda t=total: rx_ike() - counted_before >= t * 0.8,
                     "a counting the garbage", timeout=20, interval=0.05)
        counted = rx_ike() - counted_before
        grown = rss_kib(pid) - before
        assert counted >= 40_000, counted
        listing = lab.json("a", "ike", "list")
        assert listing["endpoints"][OVERLAY["a"]].get("dropped_short", 0) >= counted
        print(f"{counted} garbage datagrams from distinct sources: RSS +{grown} KiB")
        assert grown < 4096, f"RSS grew {grown} KiB for {counted} datagrams"
    finally:
        attacker.close()


# --- certificate mode ---------------------------------------------------------------------------

class CertLab(AttackLab):
    """Node a with a certificate, a private key and a CA (no PSK)."""

    def write_configs(self, **options) -> None:
        from cryptography.hazmat.primitives import serialization

        super().write_configs(**options)
        pki = make_pki({"a": "a.example"})
        self.pki = pki
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        pem = serialization.Encoding.PEM
        (certs / "a.pem").write_bytes(pki.certs["a"].public_bytes(pem))
        (certs / "ca.pem").write_bytes(pki.ca.public_bytes(pem))
        key = certs / "a.key"
        key.write_bytes(pki.keys["a"].private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
        key.chmod(0o600)
        text = self.configs["a"].read_text().replace(
            f'psk_file = "{self.workdir}/keys/ike.psk"\n',
            f'certificate = "{certs}/a.pem"\nprivate_key = "{key}"\nca = ["{certs}/ca.pem"]\n'
            'local_id = "a.example"\n')
        assert "certificate" in text
        self.configs["a"].write_text(text)


@pytest.fixture
def cert_lab(tmp_path):
    yield from started_pair(CertLab(tmp_path, netns_tag="ikc", attacker=True), "a")


def test_certificate_bomb_in_ike_auth_is_refused_in_milliseconds(cert_lab):
    leaf, leaf_key, extra = bomb(cert_lab.pki, 4)   # ~29 s of CPU each before
    attacker = Attacker(cert_lab)
    try:
        sa = IkeSa(IkeSaConfig(local_id=Identity.from_text("mn.example"), certificate=leaf,
                               private_key=leaf_key, intermediates=tuple(extra),
                               cas=(cert_lab.pki.ca,)),
                   Role.INITIATOR, (OVERLAY["b"], 500), (OVERLAY["a"], 500), time.monotonic())
        sa.initiate(time.monotonic())
        answered_in = []
        for _ in range(3):   # IKE_SA_INIT, then IKE_AUTH (bounded)
            out = sa.datagrams_to_send(time.monotonic())
            if not out:
                break
            started = time.monotonic()
            for data, _addr in out:
                attacker.send(OVERLAY["b"], data, 4500 if data[:4] == bytes(4) else 500)
            for reply in attacker.receive_ike(timeout=10):
                answered_in.append(time.monotonic() - started)
                sa.receive_datagram(reply, (OVERLAY["a"], 500), time.monotonic())
        assert len(answered_in) == 2, answered_in
        # a answered the IKE_AUTH (AUTHENTICATION_FAILED) at once, not after
        # seconds of path building on its event loop.
        assert answered_in[1] < 1.0, answered_in
        assert sa.is_finished and not sa.is_established
        counters = cert_lab.json("a", "ike", "list")["counters"]
        assert counters.get("AuthenticationFailed", 0) >= 1, counters
        assert cert_lab.procs["a"].poll() is None
        print(f"IKE_AUTH with a certificate bomb answered in {answered_in[1] * 1000:.0f} ms")
    finally:
        attacker.close()
