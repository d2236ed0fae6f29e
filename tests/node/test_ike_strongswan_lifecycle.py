"""The life of a ``vmip run`` node's IKE SAs with strongSwan charon (5.9,
kernel-libipsec) as the peer, through real failures: charon killed under
traffic (dead-peer detection, re-establishment), charon restarted and
initiating with INITIAL_CONTACT, rekeys of both kinds by both ends under a
ping flood, terminate and stop, and refusals (wrong PSK, proposals) that vmip
must explain.

Oracles: charon's own SA list, the kernel's ping through both ends, and
vmip's ``ike list`` / ``spd list`` / ``sa list``.  Each test is bounded by
short liveness and retransmission settings ([ike] dpd_interval,
retransmit_timeout, retransmit_tries).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from charonpair import CHARON, STRONGSWAN_MISSING, SWANCTL, CharonPair, _run
from pairlab import netns_exec, wait_for
from test_ike_strongswan_runtime import IN_A, IN_B, PSK, SWANCTL_CONF, vmip_config

pytestmark = [pytest.mark.root, pytest.mark.slow]

UNDER_A, UNDER_B = "2001:db8:ff::1", "2001:db8:ff::2"


def lifecycle_ike(dpd: float, initiate: bool = True, proposals: str | None = None,
                  tries: int = 3):
    """The runtime test's vmip config with short liveness settings."""
    extra = (f"dpd_interval = {dpd}\nretransmit_timeout = 0.5\nretransmit_tries = {tries}\n")
    def edit(text: str) -> str:
        text = text.replace('esp_proposals = ["aes128gcm16"]\n',
                            'esp_proposals = ["aes128gcm16"]\n' + extra)
        if not initiate:
            text = text.replace("initiate = true", "initiate = false")
        if proposals is not None:
            text = text.replace('proposals = ["aes128gcm16-prfsha256-ecp256"]',
                                f'proposals = ["{proposals}"]')
        return text
    return edit


def charon_conf(*, start: bool = False, psk: bytes = PSK, ike: str | None = None,
                esp: str | None = None) -> str:
    conf = SWANCTL_CONF.replace(f"secret = 0x{PSK.hex()}", f"secret = 0x{psk.hex()}")
    if start:
        conf = conf.replace("mode = tunnel", "mode = tunnel\n        start_action = start")
        # charon sends INITIAL_CONTACT only towards a remote identity it was
        # given (not %any).
        conf = conf.replace("remote { auth = psk }", f"remote {{ auth = psk\n id = {UNDER_A} }}")
    if ike is not None:
        conf = conf.replace("proposals = aes128gcm16-prfsha256-ecp256", f"proposals = {ike}", 1)
    if esp is not None:
        conf = conf.replace("esp_proposals = aes128gcm16", f"esp_proposals = {esp}")
    return conf


class Interop(CharonPair):
    """vmip in namespace a (rfc3948 link), charon in b; everything removed on close."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "isl", PSK)
        self.kill_at_close = True

    def open(self) -> "Interop":
        super().open()
        self.veth("vtisl-a", "vtisl-b")
        self.address(self.ns_a, "vtisl-a", f"{UNDER_A}/64")
        self.address(self.ns_b, "vtisl-b", f"{UNDER_B}/64")
        self.address(self.ns_b, "lo", f"{IN_B}/128")
        return self

    def start_node(self, edit) -> None:   # type: ignore[override]
        super().start_node(edit(vmip_config(self.workdir)))


@pytest.fixture
def interop(tmp_path):
    if CHARON is None or SWANCTL is None:
        pytest.skip(STRONGSWAN_MISSING)
    lab = Interop(tmp_path)
    try:
        yield lab.open()
    finally:
        lab.close()


def ping(ns: str, *args: str, count: int = 1, wait: float = 1, interval: float = 0.2):
    return netns_exec(ns, "ping", "-c", str(count), "-i", str(interval), "-W", str(wait),
                      *args, timeout=count * interval + wait + 20)


def pings_from_a(lab: Interop) -> bool:
    return ping(lab.ns_a, IN_B).returncode == 0


def pings_from_b(lab: Interop) -> bool:
    return ping(lab.ns_b, "-I", IN_B, IN_A).returncode == 0


def installed_child(lab: Interop) -> set[str]:
    """charon's installed CHILD_SA inbound SPIs (hex)."""
    text = lab.charon_sas()
    return set(re.findall(r"spi-in=([0-9a-f]+)", text)) if "INSTALLED" in text else set()


def ike_rows(lab: Interop) -> list[dict]:
    return lab.json("ike", "list")["sas"]


def peer_row(lab: Interop) -> dict:
    return lab.json("ike", "list")["peers"][0]


def outbound_ike_policies(lab: Interop) -> list[dict]:
    return [p for p in lab.json("spd", "list") if p["name"].startswith("ike-")
            and p["direction"] == "out" and p["action"] == "protect"]


def test_dead_peer_is_detected_and_re_established(interop):
    """charon killed under traffic and restarted (without initiating): vmip's
    liveness check finds it dead and vmip re-establishes by itself."""
    lab = interop
    lab.start_charon(charon_conf())
    lab.start_node(lifecycle_ike(dpd=1))
    first = wait_for(lambda: installed_child(lab), "charon's CHILD_SA", timeout=25)
    assert pings_from_a(lab)
    # charon rekeys the IKE SA: vmip is its "responder" now, and must still
    # re-establish it (the config says initiate = true).
    lab.charon.swanctl("--rekey", "--ike", "vmip")
    wait_for(lambda: [r for r in ike_rows(lab) if r["role"] == "responder"],
             "vmip the responder of the rekeyed IKE SA", timeout=10)
    flood = subprocess.Popen(["ip", "netns", "exec", lab.ns_a, "ping", "-i", "0.05", "-W", "1",
                              "-w", "30", IN_B], stdout=subprocess.PIPE, text=True)
    try:
        lab.kill_charon()
        killed = time.monotonic()
        lab.start_charon(charon_conf())
        again = wait_for(lambda: installed_child(lab) - first, "the re-established CHILD_SA",
                         timeout=20, interval=0.2)
        assert again
        wait_for(lambda: pings_from_a(lab), "ping through the new SAs", timeout=5)
        recovered = time.monotonic() - killed
    finally:
        flood.send_signal(signal.SIGINT)
        flood.wait(10)
    rows = ike_rows(lab)
    assert len(rows) == 1 and rows[0]["state"] == "established", rows
    counters = lab.json("ike", "list")["counters"]
    assert counters["ike_sa_failed"] >= 1 and counters["initiate_retries"] >= 1
    assert recovered < 15, recovered
    assert len(outbound_ike_policies(lab)) == 1


def test_peer_restart_with_initial_contact_recovers_within_10_s(interop):
    """charon (which initiates) restarted: its new IKE SA carries INITIAL_CONTACT;
    vmip drops the stale SAs and traffic flows both ways within 10 s, with no
    liveness checks and no initiation of vmip's own to help it."""
    lab = interop
    lab.start_charon(charon_conf(start=True))
    lab.start_node(lifecycle_ike(dpd=0, initiate=False))
    first = wait_for(lambda: installed_child(lab), "charon's CHILD_SA", timeout=25)
    assert pings_from_a(lab) and pings_from_b(lab)
    lab.kill_charon()
    restarted = time.monotonic()
    lab.start_charon(charon_conf(start=True))
    wait_for(lambda: installed_child(lab) - first, "charon's new CHILD_SA", timeout=10)
    wait_for(lambda: pings_from_a(lab) and pings_from_b(lab), "ping both ways", timeout=10)
    took = time.monotonic() - restarted
    assert took < 10, took
    rows = ike_rows(lab)
    assert len(rows) == 1, rows                       # the stale IKE SA is gone
    assert len(rows[0]["children"]) == 1
    # NAT-T runs (UDP-encapsulated, on 4500): the listing says 4500, not 500.
    assert rows[0]["nat_t"] and rows[0]["local"] == f"{UNDER_A}[4500]", rows[0]
    assert len(outbound_ike_policies(lab)) == 1       # one outbound policy, the new SA's
    counters = lab.json("ike", "list")["counters"]
    assert counters["ike_sa_replaced_initial_contact"] == 1


def test_rekeys_under_load_lose_no_ping_and_stop_sends_delete(interop):
    """CHILD_SA and IKE SA rekeys started by either end while pings flow at
    50/s: not one is lost.  Then vmip stops: charon is told (DELETE)."""
    lab = interop
    lab.start_charon(charon_conf())
    lab.start_node(lifecycle_ike(dpd=5))
    wait_for(lambda: installed_child(lab), "charon's CHILD_SA", timeout=25)
    wait_for(lambda: pings_from_a(lab), "a first ping", timeout=5)
    count = 300
    flood = subprocess.Popen(["ip", "netns", "exec", lab.ns_a, "ping", "-c", str(count), "-i",
                              "0.02", "-W", "2", IN_B], stdout=subprocess.PIPE, text=True)
    try:
        steps = [lambda: lab.vmip("ike", "rekey", "charon"),
                 lambda: lab.charon.swanctl("--rekey", "--child", "net"),
                 lambda: lab.vmip("ike", "rekey", "charon", "--ike"),
                 lambda: lab.charon.swanctl("--rekey", "--ike", "vmip")]
        for step in steps:
            before = installed_child(lab) | {r["spi_i"] + r["spi_r"] for r in ike_rows(lab)}
            step()
            wait_for(lambda: (installed_child(lab) | {r["spi_i"] + r["spi_r"]
                                                      for r in ike_rows(lab)}) - before,
                     "the rekey", timeout=10, interval=0.1)
        out, _ = flood.communicate(timeout=30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(5)
    assert f"{count} packets transmitted, {count} received" in out, out[-400:]
    counters = lab.json("ike", "list")["counters"]
    assert counters["child_sa_rekeyed"] >= 2 and counters["ike_sa_rekeyed"] >= 2
    # Stop: a DELETE tells charon, which drops its IKE SA at once.
    assert "ESTABLISHED" in lab.charon_sas()
    os.killpg(lab.node.pid, signal.SIGTERM)
    assert lab.node.wait(10) == 0
    wait_for(lambda: "ESTABLISHED" not in lab.charon_sas(), "charon dropping the SA",
             timeout=5, interval=0.1)
    assert "ike sas deleted on stop" in lab.log()


def test_terminate_on_a_dead_peer_holds_until_initiate(interop):
    lab = interop
    lab.start_charon(charon_conf())
    lab.start_node(lifecycle_ike(dpd=1))
    first = wait_for(lambda: installed_child(lab), "charon's CHILD_SA", timeout=25)
    lab.kill_charon()
    started = time.monotonic()
    result = lab.vmip("ike", "terminate", "charon")
    assert time.monotonic() - started < 5 and "1 IKE SA" in result.stdout
    assert ike_rows(lab) == []                   # gone at once, not after 31 s
    lab.start_charon(charon_conf())
    # Longer than the first retry would take (2 s +25 %): terminate holds.
    time.sleep(4)
    assert ike_rows(lab) == [] and not installed_child(lab)
    assert peer_row(lab)["terminated"] is True
    result = lab.vmip("ike", "initiate", "charon")
    assert "started" in result.stdout
    wait_for(lambda: installed_child(lab) - first, "the CHILD_SA initiated again", timeout=15)
    assert pings_from_a(lab)
    # Initiating what exists is no success.
    again = lab.vmip("ike", "initiate", "charon", check=False)
    assert again.returncode == 1 and "nothing done" in again.stderr


def test_wrong_psk_and_proposal_mismatch_are_explained_on_vmip_side(interop):
    lab = interop
    lab.start_charon(charon_conf(psk=b"another-psk-than-vmips-0123456789"))
    lab.start_node(lifecycle_ike(dpd=0))
    row = wait_for(lambda: (r := peer_row(lab))["last_error"] and r, "the AUTH refusal",
                   timeout=15)
    assert "refused our AUTH" in row["last_error"], row
    assert UNDER_A in row["last_error"] and "PSK" in row["last_error"]
    table = " ".join(lab.vmip("ike", "list").stdout.split())   # what a person sees, unwrapped
    assert "IKE peers not up" in table and "refused our AUTH" in table, table
    # Retried with backoff, and no SPI reserved for the failed SA is left behind.
    row = wait_for(lambda: (r := peer_row(lab))["failures"] >= 2 and r, "a second failure",
                   timeout=15)
    assert row["retry_in_s"] is not None
    sas = lab.json("sa", "list")
    assert [sa for sa in sas if sa["state"] == "larval"] == [], sas
    assert "ike sa failed" in lab.log() and "0123456789" not in lab.log()
    # IKE proposals charon does not take.
    lab.charon.load(charon_conf(ike="aes256-sha384-modp3072"))
    lab.vmip("ike", "terminate", "charon")
    lab.vmip("ike", "initiate", "charon")
    row = wait_for(lambda: "IKE proposals" in ((r := peer_row(lab))["last_error"] or "") and r,
                   "the proposal refusal", timeout=15)
    assert "NO_PROPOSAL_CHOSEN" in row["last_error"]
    assert "aes128gcm16-prfsha256-ecp256" in row["last_error"]
    # ESP proposals charon does not take: the IKE SA stands, the CHILD_SA does not.
    lab.charon.load(charon_conf(esp="aes256-sha256"))
    lab.vmip("ike", "terminate", "charon")
    lab.vmip("ike", "initiate", "charon")
    row = wait_for(lambda: "ESP proposals" in ((r := peer_row(lab))["last_error"] or "") and r,
                   "the ESP proposal refusal", timeout=15)
    assert "aes128gcm16" in row["last_error"]


def cert_setup(lab: Interop) -> None:
    """Certificates for both ends: vmip is its address, charon is charon.test."""
    from test_ike_strongswan import _install_certs

    from ikepair import make_pki
    from cryptography.hazmat.primitives import serialization

    pki = make_pki({"vmip": UNDER_A, "charon": "charon.test"})
    pem = serialization.Encoding.PEM
    (lab.workdir / "vmip.pem").write_bytes(pki.certs["vmip"].public_bytes(pem))
    (lab.workdir / "ca.pem").write_bytes(pki.ca.public_bytes(pem))
    key = lab.workdir / "vmip.key"
    key.write_bytes(pki.keys["vmip"].private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key.chmod(0o600)
    lab.start_charon(charon_conf())         # replaced below, with certificates
    _install_certs(lab.charon, pki)


def cert_charon_conf(start: bool) -> str:
    conf = charon_conf(start=start)
    conf = conf.replace("local { auth = psk }",
                        "local { auth = pubkey\n certs = charon.pem\n id = charon.test }")
    conf = re.sub(r"remote \{ auth = psk[^}]*\}", f"remote {{ auth = pubkey\n id = {UNDER_A} }}",
                  conf)
    return re.sub(r"secrets \{.*\}\s*$", "secrets { private-charon { file = charon.key } }\n",
                  conf, flags=re.DOTALL)


def cert_edit(lab: Interop, remote_id: str, initiate: bool):
    base = lifecycle_ike(dpd=0, initiate=initiate)

    def edit(text: str) -> str:
        text = base(text).replace(
            f'psk_file = "{lab.workdir}/ike.psk"',
            f'certificate = "{lab.workdir}/vmip.pem"\nprivate_key = "{lab.workdir}/vmip.key"\n'
            f'ca = ["{lab.workdir}/ca.pem"]')
        return text.replace('name = "charon"\naddress',
                            f'name = "charon"\nremote_id = "{remote_id}"\naddress')
    return edit


def load_cert_conf(lab: Interop, start: bool) -> None:
    path = lab.charon.dir / "swanctl" / "swanctl.conf"
    path.write_text(cert_charon_conf(start))
    lab.charon.swanctl("--load-all", "--clear", "--file", str(path))


def test_wrong_remote_id_with_certificates_says_who_refused_what(interop):
    lab = interop
    cert_setup(lab)
    load_cert_conf(lab, start=False)
    # vmip initiates asking for wrong.test: charon, which is charon.test, refuses.
    lab.start_node(cert_edit(lab, "wrong.test", initiate=True))
    row = wait_for(lambda: (r := peer_row(lab))["last_error"] and r, "the refusal", timeout=15)
    error = row["last_error"]
    assert "the peer refused our AUTH" in error and "wrong.test" in error, error
    assert UNDER_A in error and "certificate" in error
    os.killpg(lab.node.pid, signal.SIGTERM)
    lab.node.wait(10)
    # charon initiates as charon.test; vmip expects wrong.test and says so.
    load_cert_conf(lab, start=True)
    lab.start_node(cert_edit(lab, "wrong.test", initiate=False))
    lab.charon.swanctl_async("--initiate", "--child", "net", "--timeout", "5")
    row = wait_for(lambda: (r := peer_row(lab))["last_error"] and r, "our refusal", timeout=15)
    error = row["last_error"]
    assert "we refused the peer's AUTH" in error, error
    assert "charon.test" in error and "wrong.test" in error
    os.killpg(lab.node.pid, signal.SIGTERM)
    lab.node.wait(10)
    # The right identity: certificates work through the runtime.
    load_cert_conf(lab, start=False)
    lab.start_node(cert_edit(lab, "charon.test", initiate=True))
    wait_for(lambda: installed_child(lab), "charon's CHILD_SA", timeout=20)
    assert pings_from_a(lab)


class IkeGate:
    """nftables in vmip's namespace holding IKE back (UDP 4500 datagrams that
    start with the non-ESP marker; ESP passes) in either direction."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._nft("add table inet ikegate")
        for chain, hook in (("out", "output"), ("in", "input")):
            self._nft(f"add chain inet ikegate {chain} {{ type filter hook {hook} priority 0 ; }}")

    def _nft(self, command: str) -> str:
        return _run("ip", "netns", "exec", self.ns, "nft", *command.split())

    def close(self, chain: str, *, responses_only: bool = False) -> None:
        """Hold IKE back (only responses: *responses_only*), in place of what
        the chain held back before, in one nftables transaction."""
        port = "dport" if chain == "out" else "sport"
        # After the UDP header (8 octets): the marker, then the IKE header,
        # whose flags octet (19) has the Response bit 0x20 (RFC 7296 §3.1).
        response = " @th,250,1 1" if responses_only else ""
        self._nft(f"flush chain inet ikegate {chain} ; add rule inet ikegate {chain} udp {port} "
                  f"4500 @th,64,32 0{response} counter drop")

    def open(self, chain: str) -> None:
        self._nft(f"flush chain inet ikegate {chain}")

    def dropped(self, chain: str) -> int:
        text = self._nft(f"list chain inet ikegate {chain}")
        found = re.search(r"packets (\d+)", text)
        return int(found.group(1)) if found else 0


@pytest.mark.parametrize("what", ["child", "ike"])
def test_simultaneous_rekeys_with_charon(interop, what):
    """vmip and charon rekey the same SA at once (RFC 7296 §2.8.1/§2.8.2).

    The requests are made to cross: IKE is held back both ways while both
    ends send their request, then let through towards charon (which answers
    vmip's while its own is pending), then towards vmip (which answers
    charon's while its own is pending).  One SA must remain, the same at both
    ends, and carry traffic."""
    lab = interop
    # No MOBIKE: charon's address announcements (INFORMATIONAL) would be
    # requests of its own in the way of the crossing.
    lab.start_charon(charon_conf().replace("version = 2", "version = 2\n    mobike = no"))
    lab.start_node(lifecycle_ike(dpd=0, tries=6))
    wait_for(lambda: installed_child(lab), "charon's CHILD_SA", timeout=25)
    assert pings_from_a(lab)
    sent_before = lab.charon.log().count("generating CREATE_CHILD_SA request")
    before = ike_rows(lab)[0]
    old = (before["spi_i"], before["children"][0]["spi_in"])
    gate = IkeGate(lab.ns_a)
    gate.close("out")
    gate.close("in")
    if what == "child":
        lab.vmip("ike", "rekey", "charon")
        lab.charon.swanctl("--rekey", "--child", "net")
    else:
        lab.vmip("ike", "rekey", "charon", "--ike")
        lab.charon.swanctl("--rekey", "--ike", "vmip")
    wait_for(lambda: gate.dropped("out") >= 1 and gate.dropped("in") >= 1 and
             lab.charon.log().count("generating CREATE_CHILD_SA request") > sent_before,
             "both requests sent", timeout=10, interval=0.05)
    # vmip's request (retransmitted) reaches charon, whose own is pending: it
    # answers, but its answer is held back; charon's request (retransmitted)
    # reaches vmip, whose own is pending: vmip answers it.
    gate.close("in", responses_only=True)   # first: no answer may slip through
    gate.open("out")
    answered = "rekey=True" if what == "child" else "ike rekey crossed"
    wait_for(lambda: answered in (lab.workdir / "a.log").read_text(),
             "vmip answering charon's rekey", timeout=15, interval=0.05)
    gate.open("in")                     # and vmip gets charon's answer

    def settled():
        rows = ike_rows(lab)
        text = lab.charon_sas()
        if len(rows) != 1 or len(rows[0]["children"]) != 1 or text.count("INSTALLED") != 1 \
                or text.count("ESTABLISHED") != 1 or not rows[0]["stats"].get(stat):
            return None
        row = rows[0]
        new = (row["spi_i"], row["children"][0]["spi_in"])
        return row if new[0 if what == "ike" else 1] != old[0 if what == "ike" else 1] else None
    stat = f"simultaneous_{what}_rekeys"
    row = wait_for(settled, "one SA left at both ends", timeout=30, interval=0.2)
    text = lab.charon_sas()
    child = row["children"][0]
    assert f"spi-in={child['spi_out']:08x}" in text and f"spi-out={child['spi_in']:08x}" in text
    assert f"initiator-spi={row['spi_i']}" in text and f"responder-spi={row['spi_r']}" in text
    stats = row["stats"]
    assert stats.get(f"simultaneous_{what}_rekeys") == 1, (stats, lab.log())
    assert len(outbound_ike_policies(lab)) == 1
    assert pings_from_a(lab) and pings_from_b(lab)
