"""The node runtime end to end: two vmip nodes, static keys, the udp driver."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pairlab import OVERLAY, UNDERLAY4, PairLab, netns_exec

pytestmark = pytest.mark.root


@pytest.fixture
def pair(tmp_path):
    lab = PairLab(tmp_path)
    try:
        lab.build()
        lab.start("a")
        lab.start("b")
        yield lab
    finally:
        lab.close()


def test_ping_through_esp_overlay(pair):
    result = netns_exec(pair.netns["a"], "ping", "-c", "3", "-i", "0.2", "-W", "2",
                        OVERLAY["b"])
    assert result.returncode == 0, result.stdout + result.stderr
    sas = json.loads(pair.vmip("a", "sa", "list", "--json").stdout)
    by_dir = {sa["direction"]: sa for sa in sas}
    assert by_dir["out"]["packets"] >= 3 and by_dir["in"]["packets"] >= 3
    locators = json.loads(pair.vmip("a", "locators", "--json").stdout)
    assert any(row.get("source") == "learned" for row in locators), locators


def test_sigterm_removes_tun(pair):
    assert pair.stop("a", signal.SIGTERM) == 0
    links = netns_exec(pair.netns["a"], "ip", "-o", "link").stdout
    assert "vmip0" not in links
    assert not pair.socket("a").exists()


def _counters(pair, side):
    return json.loads(pair.vmip(side, "counters", "--json").stdout)


def _ping(pair, side="a", count=3, target=None, extra=()):
    peer = "b" if side == "a" else "a"
    return netns_exec(pair.netns[side], "ping", "-c", str(count), "-i", "0.05", "-W", "2",
                      *extra, target or OVERLAY[peer])


def test_sighup_reload_keeps_unchanged_sas(pair):
    assert _ping(pair).returncode == 0
    before = {sa["name"]: sa for sa in json.loads(pair.vmip("a", "sa", "list", "--json").stdout)}
    # Add a discard policy for a prefix nobody uses: policies change, SAs do not.
    config = pair.configs["a"]
    config.write_text(config.read_text() + """
[[policy]]
name = "extra"
direction = "out"
src = "2001:db8:a::1/128"
dst = "2001:db8:dead::/48"
action = "discard"
""")
    pair.procs["a"].send_signal(signal.SIGHUP)
    # The reload is observable through the control socket: wait for it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _counters(pair, "a")["node"].get("reloads") == 1:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no reload seen")
    policies = json.loads(pair.vmip("a", "spd", "list", "--json").stdout)
    assert "extra" in {p["name"] for p in policies}
    after = {sa["name"]: sa for sa in json.loads(pair.vmip("a", "sa", "list", "--json").stdout)}
    # The SAs were not re-created: their counters carried on.
    assert after["out"]["packets"] >= before["out"]["packets"] > 0
    assert _ping(pair).returncode == 0
    after2 = {sa["name"]: sa for sa in json.loads(pair.vmip("a", "sa", "list", "--json").stdout)}
    assert after2["out"]["packets"] >= before["out"]["packets"] + 3


def test_bad_reload_keeps_running_config(pair):
    pair.configs["a"].write_text("this is [not toml")
    pair.procs["a"].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _counters(pair, "a")["node"].get("reload_failed") == 1:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the failed reload was not counted")
    assert _ping(pair).returncode == 0


def test_flood_of_bad_datagrams(pair):
    """10,000 bad datagrams: the node stays up, counts drops by reason, traffic flows."""
    # A real ESP packet from b to replay: capture one on a's wire.
    capture = pair.workdir / "wire.pcap"
    pair.vmip("a", "capture", "start", "--wire", str(capture))
    assert _ping(pair, side="b", count=1).returncode == 0
    pair.vmip("a", "capture", "stop")
    from scapy.utils import rdpcap
    real = [bytes(p) for p in rdpcap(str(capture)) if bytes(p)[8:24] == _packed(OVERLAY["b"])]
    assert real, "no packet from b captured"
    script = f"""
import os, random, socket, struct
random.seed(7)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = ("{UNDERLAY4['a']}", 6275)
real = bytes.fromhex("{real[0].hex()}")
for i in range(10000):
    kind = i % 4
    if kind == 0:
        data = os.urandom(random.randint(1, 1500))
    elif kind == 1:
        data = real[:random.randint(1, len(real) - 1)]
    elif kind == 2:
        data = real[:40] + struct.pack("!II", random.randint(256, 2**32 - 1), i) + real[48:]
    else:
        data = real
    s.sendto(data, dst)
"""
    flood = subprocess.Popen(["ip", "netns", "exec", pair.netns["b"], sys.executable, "-c",
                              script])
    during = _ping(pair, count=20)
    flood.wait(60)
    assert flood.returncode == 0
    assert pair.procs["a"].poll() is None
    assert during.returncode == 0, during.stdout
    counters = _counters(pair, "a")
    drops = {**counters["ipsec"], **counters["esp"],
             **{k: v for k, v in counters["links"]["eth0"].items() if k.startswith("rx_drop")}}
    assert drops.get("unknown_spi", 0) > 0, counters
    assert drops.get("duplicate", 0) > 0, counters   # the replayed copies of `real`
    assert sum(v for k, v in counters["links"]["eth0"].items() if k.startswith("rx_drop")) > 0
    assert _ping(pair).returncode == 0


def test_spoofed_source_leaves_locators(pair):
    assert _ping(pair).returncode == 0
    before = json.loads(pair.vmip("a", "locators", "--json").stdout)
    capture = pair.workdir / "wire.pcap"
    pair.vmip("a", "capture", "start", "--wire", str(capture))
    assert _ping(pair, side="b", count=1).returncode == 0
    pair.vmip("a", "capture", "stop")
    from scapy.utils import rdpcap
    real = [bytes(p) for p in rdpcap(str(capture)) if bytes(p)[8:24] == _packed(OVERLAY["b"])]
    forged = bytearray(real[0])
    forged[-1] ^= 0xFF   # bad ICV
    script = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{UNDERLAY4['b']}", 7777))   # another underlay endpoint
for data in (bytes.fromhex("{real[0].hex()}"), bytes.fromhex("{bytes(forged).hex()}")):
    s.sendto(data, ("{UNDERLAY4['a']}", 6275))
"""
    netns_exec(pair.netns["b"], sys.executable, "-c", script, check=True)
    # Both were processed (and dropped) once the counters show them.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        # The replay check comes before the ICV (RFC 4303 §3.4.3), so both
        # count as replays: same sequence number as an accepted packet.
        if _counters(pair, "a")["ipsec"].get("esp_failed", 0) >= 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"drops not seen: {_counters(pair, 'a')}")
    after = json.loads(pair.vmip("a", "locators", "--json").stdout)
    assert after == before or [r.get("endpoint") for r in after] == \
        [r.get("endpoint") for r in before]
    assert not any("7777" in str(r.get("endpoint")) for r in after)


def test_capture_decrypts_in_tshark(pair, tmp_path):
    # tshark 4.0 cannot check ICVs over ESN SAs (docs/ipsec.md): use 32-bit sequence numbers.
    pair.write_configs(esn=False)
    for side in ("a", "b"):
        pair.stop(side)
        pair.start(side)
    capture = tmp_path / "wire.pcap"
    pair.vmip("a", "capture", "start", "--wire", str(capture))
    assert _ping(pair, count=2).returncode == 0
    pair.vmip("a", "capture", "stop")
    rows = pair.vmip("a", "keys", "--wireshark").stdout.split("\n")
    rows = [r for r in rows if r.strip()]
    assert len(rows) == 2
    args = ["tshark", "-r", str(capture), "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE"]
    for row in rows:
        args += ["-o", f"uat:esp_sa:{row}"]
    out = subprocess.run(args + ["-T", "fields", "-e", "esp.spi", "-e", "icmpv6.type",
                                 "-e", "esp.icv_good"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.strip().splitlines()]
    assert len(lines) >= 4
    assert {line[1] for line in lines} == {"128", "129"}
    assert all(line[2] in ("1", "True") for line in lines), lines


def test_packet_too_big_to_sender(pair):
    # Shrink the underlay so a full-size inner packet no longer fits once wrapped.
    for side in ("a", "b"):
        netns_exec(pair.netns[side], "ip", "link", "set", f"veth-{side}", "mtu", "1400",
                   check=True)
    pair.stop("a")
    pair.start("a")
    result = _ping(pair, count=1, extra=("-M", "do", "-s", "1352"))
    assert "mtu" in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    counters = _counters(pair, "a")
    assert counters["node"].get("tx_drop_too_big", 0) >= 1
    # A packet that fits still goes through.
    assert _ping(pair, count=1, extra=("-s", "1000")).returncode == 0


def test_runs_without_root_after_start(pair):
    pair.stop("a")
    pair.start("a", "--user", "nobody")
    pid = _node_pid(pair, "a")
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"65534"}
    cap_eff = int(next(line for line in status.splitlines()
                       if line.startswith("CapEff:")).split()[1], 16)
    assert cap_eff == 1 << 12   # CAP_NET_ADMIN only
    assert _ping(pair).returncode == 0
    assert json.loads(pair.vmip("a", "sa", "list", "--json").stdout)
    assert pair.vmip("a", "keys", "--wireshark").stdout.strip()


def _node_pid(pair, side) -> int:
    return json.loads(pair.vmip(side, "status", "--json").stdout)["pid"]


def _packed(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def test_unknown_destination_gets_icmpv6_unreachable(pair):
    # Let clear traffic to the rest of a's overlay /64 out (bypass), where no peer is.
    config = pair.configs["a"]
    config.write_text(config.read_text() + """
[[policy]]
name = "nowhere"
direction = "out"
src = "2001:db8:a::1/128"
dst = "2001:db8:a::/64"
action = "bypass"
""")
    pair.stop("a")
    pair.start("a")
    result = _ping(pair, count=1, target="2001:db8:a::99")
    assert result.returncode != 0
    assert "unreachable" in result.stdout.lower(), result.stdout
    assert _counters(pair, "a")["node"].get("tx_drop_no_locator", 0) >= 1
