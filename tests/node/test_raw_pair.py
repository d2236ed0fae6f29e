"""Two plain vmip nodes on the ``raw`` driver: native IPv6, no address duplicated.

The pair of tests/node/pairlab.py (namespaces, veth, keys), with each node's
overlay address on its TUN and ESP tunnel SAs whose outer addresses are the
underlay addresses on the veth: the on-wire packets are native IPv6 between
those.  A node knows them as its own from the link (``own_addresses``, or
read from ``interface``), never from a copy on its TUN.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from pairlab import (OVERLAY, UNDERLAY6, PairLab, netns_exec, protect_policies, started_pair,
                     static_keys)


def raw_node_config(me: str, peer: str, lab: PairLab, *, link: str) -> str:
    keydir = lab.workdir / "keys"
    return f"""
[node]
name = "{me}"
roles = ["cn"]

[tun]
name = "vmip0"
addresses = ["{OVERLAY[me]}/64"]
mtu = 1400
routes = ["{OVERLAY[peer]}/128"]

[[link]]
name = "eth0"
driver = "raw"
{link}

[[peer]]
name = "{peer}"
prefixes = ["{UNDERLAY6[peer]}/128"]
framing = "raw"

""" + static_keys(me, peer, key_dir=keydir, state_dir=lab.workdir / f"state-{me}",
                  addresses=UNDERLAY6, mode="tunnel") \
        + protect_policies(me, peer, out_sa="out", in_sa="in")


#: How each test's link learns the node's own on-wire address.
LINKS = {
    # Read from the interface when the link starts.
    "interface": lambda me: f'interface = "veth-{me}"',
    # Declared in the config.
    "own_addresses": lambda me: f'own_addresses = ["{UNDERLAY6[me]}"]',
}


@pytest.fixture(params=sorted(LINKS))
def raw_pair(request, tmp_path):
    lab = PairLab(tmp_path, netns_tag="raw")
    original = lab.write_configs

    def write_configs(**_options) -> None:
        original()
        for me, peer in (("a", "b"), ("b", "a")):
            lab.configs[me].write_text(
                raw_node_config(me, peer, lab, link=LINKS[request.param](me)))

    lab.write_configs = write_configs  # type: ignore[method-assign]
    yield from started_pair(lab, "a", "b")


def ping(lab: PairLab, side: str, target: str, *args: str) -> subprocess.CompletedProcess:
    return netns_exec(lab.netns[side], "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                      *args, target, timeout=30)


@pytest.mark.root
def test_ping_over_raw_without_the_underlay_address_on_the_tun(raw_pair):
    lab = raw_pair
    result = ping(lab, "a", OVERLAY["b"])
    assert result.returncode == 0, result.stdout + result.stderr
    # Large packets too: 1400-octet TUN MTU, ESP tunnel overhead, 1500 veth.
    result = ping(lab, "a", OVERLAY["b"], "-s", "1300")
    assert result.returncode == 0, result.stdout + result.stderr
    for side in ("a", "b"):
        counters = lab.json(side, "counters")
        assert counters["node"].get("rx_drop_not_for_us", 0) == 0, counters
        assert counters["node"]["rx_delivered"] >= 6, counters
        assert counters["links"]["eth0"]["rx"] >= 6, counters
        status = lab.json(side, "status")
        assert status["links"][0]["own_addresses"] == [UNDERLAY6[side]], status["links"]
        tun = netns_exec(lab.netns[side], "ip", "-6", "-o", "addr", "show", "dev", "vmip0")
        assert UNDERLAY6[side] not in tun.stdout, tun.stdout


@pytest.mark.root
def test_a_raw_link_without_cap_net_raw_fails_at_start_naming_the_fix(tmp_path):
    """Root minus CAP_NET_RAW (dropped from the bounding set, so gone after
    exec): 'vmip run' stops at once, exit status 1, saying what to change."""
    lab = PairLab(tmp_path, netns_tag="rawcap")
    try:
        lab.build()
        lab.configs["a"].write_text(raw_node_config("a", "b", lab, link='interface = "veth-a"'))
        result = subprocess.run(
            ["ip", "netns", "exec", lab.netns["a"], "setpriv", "--bounding-set=-net_raw",
             "--inh-caps=-net_raw", sys.executable, "-m", "vmip", "run",
             "-c", str(lab.configs["a"])],
            check=False, capture_output=True, text=True, timeout=30)
    finally:
        lab.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'link eth0: driver = "raw"' in result.stderr, result.stderr
    assert "CAP_NET_RAW" in result.stderr and 'driver = "udp"' in result.stderr, result.stderr
