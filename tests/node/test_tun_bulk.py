"""Bulk TCP through two vmip nodes: the offloads on the real data path.

The kernel's TCP on both ends is the oracle: 8 MB sent from a to b must
arrive intact (SHA-256 on both sides), while the counters show the
offloads were used: UDP GSO sends on a, UDP GRO reads and TUN super-packets
on b.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pairlab import OVERLAY, PairLab, netns_exec

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

PORT = 5299
SIZE = 8 * 1024 * 1024

SERVER = f"""
import hashlib, socket
server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
server.bind(("{OVERLAY['b']}", {PORT}))
server.listen(1)
server.settimeout(60)
print("listening", flush=True)
peer, _ = server.accept()
peer.settimeout(60)
digest, got = hashlib.sha256(), 0
while got < {SIZE}:
    chunk = peer.recv(1 << 20)
    if not chunk:
        break
    digest.update(chunk)
    got += len(chunk)
print(got, digest.hexdigest(), flush=True)
"""

CLIENT = f"""
import hashlib, random, socket
data = random.Random(7).randbytes({SIZE})
sock = socket.create_connection(("{OVERLAY['b']}", {PORT}), timeout=60)
sock.sendall(data)
sock.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


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


def test_bulk_tcp_arrives_intact_through_the_offloads(pair):
    server = subprocess.Popen(["ip", "netns", "exec", pair.netns["b"], sys.executable, "-c",
                               SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        client = netns_exec(pair.netns["a"], sys.executable, "-c", CLIENT, timeout=90)
        assert client.returncode == 0, client.stderr
        received, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
    assert received.split() == client.stdout.split() == [str(SIZE), received.split()[1]]

    sender = json.loads(pair.vmip("a", "counters", "--json").stdout)
    receiver = json.loads(pair.vmip("b", "counters", "--json").stdout)
    tun_b = json.loads(pair.vmip("b", "status", "--json").stdout)["tun"]
    assert sum(link.get("tx_gso_batches", 0) for link in sender["links"].values()) > 0
    assert sum(link.get("rx_gro_batches", 0) for link in receiver["links"].values()) > 0
    assert tun_b["tx_gro_writes"] > 0 and tun_b["tx_gro_segments"] >= 2 * tun_b["tx_gro_writes"]
    assert tun_b["tx_dropped"] == tun_b["tx_errors"] == 0
