"""SIGTERM to a mobile node's `vmip run`: it deregisters before it goes (RFC 6275 §11.7.1).

Two real nodes in PairLab's namespaces: ``a`` is a home agent for the
prefix around its overlay address, ``b`` a mobile node away from home (its
CoA on the udp link), on static ESP SAs laid out as in configs/: the MH in
transport mode between HoA and HA, the payload in the MN-HA tunnel.  Before,
the HA kept the binding after the MN stopped, for the whole lifetime.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from pairlab import OVERLAY, UNDERLAY4, PairLab, wait_for

from vmip.config.keyfile import write_key_file

pytestmark = pytest.mark.root

HA = OVERLAY["a"]                       # 2001:db8:a::1
HOME_PREFIX = "2001:db8:a::/64"
HOA = "2001:db8:a::10"
COA = "2001:db8:b::1"
#: name -> (spi, sent by, src, dst, mode)
SAS = {
    "mh-up": (0x1101, "b", HOA, HA, "transport"),
    "mh-down": (0x1102, "a", HA, HOA, "transport"),
    "tunnel-up": (0x1201, "b", COA, HA, "tunnel"),
    "tunnel-down": (0x1202, "a", HA, COA, "tunnel"),
}


def _sa(name: str, me: str, keydir: Path) -> str:
    spi, sender, src, dst, mode = SAS[name]
    return f"""
[[keys.sa]]
name = "{name}"
spi = {spi}
direction = "{'out' if sender == me else 'in'}"
src = "{src}"
dst = "{dst}"
mode = "{mode}"
suite = "aes128gcm16"
key_file = "{keydir}/{name}.key"
"""


def _policy(name: str, direction: str, src: str, dst: str, action: str, priority: int,
            sa: str = "", protocol: str = "") -> str:
    lines = [f'name = "{name}"', f'direction = "{direction}"', f'src = "{src}"',
             f'dst = "{dst}"', f'action = "{action}"', f"priority = {priority}"]
    if protocol:
        lines.append(f'protocol = "{protocol}"')
    if sa:
        lines.append(f'sa = ["{sa}"]')
    return "\n[[policy]]\n" + "\n".join(lines) + "\n"


def _common(me: str, name: str, roles: str, address: str, peer: str, peer_prefix: str,
            workdir: Path, link_extra: str = "", peer_extra: str = "") -> str:
    return f"""
[node]
name = "{name}"
roles = [{roles}]

[tun]
name = "vmip0"
addresses = ["{address}/64"]
mtu = 1400

[[link]]
name = "eth0"
driver = "udp"
interface = "veth-{me}"
bind = "{UNDERLAY4[me]}"
port = 6275
keepalive = 0
{link_extra}
[[peer]]
name = "{peer}"
prefixes = ["{peer_prefix}/128"]
endpoint = "{UNDERLAY4['b' if me == 'a' else 'a']}:6275"
framing = "udp"
{peer_extra}
[keys]
mode = "static"
state_dir = "{workdir}/state-{me}"
"""


def ha_config(workdir: Path, keydir: Path) -> str:
    return (_common("a", "ha", '"ha"', HA, "mn", COA, workdir)
            + f'\n[mobility]\nhome_prefix = "{HOME_PREFIX}"\n'
            + "".join(_sa(name, "a", keydir) for name in SAS)
            + _policy("mh-from-mn", "in", f"{HOA}/128", f"{HA}/128", "protect", 10,
                      "mh-up", "mh")
            + _policy("mh-to-mn", "out", f"{HA}/128", f"{HOA}/128", "protect", 10,
                      "mh-down", "mh")
            + _policy("unprotected-mh", "in", "::/0", f"{HA}/128", "discard", 50, protocol="mh")
            + _policy("tunnel-to-mn", "out", "::/0", f"{HOA}/128", "protect", 100,
                      "tunnel-down")
            + _policy("tunnel-from-mn", "in", f"{HOA}/128", "::/0", "protect", 100, "tunnel-up"))


def mn_config(workdir: Path, keydir: Path) -> str:
    return (_common("b", "mn", '"mn"', HOA, "ha", HA, workdir, link_extra=f'coa = "{COA}"\n',
                    peer_extra="default = true\n")
            + f'\n[mobility]\nhome_address = "{HOA}"\nhome_agent = "{HA}"\n'
            + "".join(_sa(name, "b", keydir) for name in SAS)
            + _policy("mh-to-ha", "out", f"{HOA}/128", f"{HA}/128", "protect", 10, "mh-up", "mh")
            + _policy("mh-from-ha", "in", f"{HA}/128", f"{HOA}/128", "protect", 10,
                      "mh-down", "mh")
            + _policy("via-ha-out", "out", f"{HOA}/128", "::/0", "protect", 100, "tunnel-up")
            + _policy("via-ha-in", "in", "::/0", f"{HOA}/128", "protect", 100, "tunnel-down"))


@pytest.fixture
def pair(tmp_path):
    lab = PairLab(tmp_path, netns_tag="dr")
    try:
        lab.build()
        keydir = tmp_path / "sa-keys"
        keydir.mkdir(mode=0o700)
        for name in SAS:
            write_key_file(keydir / f"{name}.key", secrets.token_bytes(20))
        for side, text in (("a", ha_config(tmp_path, keydir)), ("b", mn_config(tmp_path, keydir))):
            lab.configs[side].write_text(text)
        yield lab
    finally:
        lab.close()


def ha_binding_cache(lab: PairLab) -> list[dict]:
    return lab.json("a", "bindings")["ha"]["binding_cache"]


def test_sigterm_to_the_mn_empties_the_has_binding_cache_within_a_second(pair) -> None:
    pair.start("a")
    pair.start("b")
    wait_for(lambda: [b["hoa"] for b in ha_binding_cache(pair)] == [HOA],
             "the MN registered with the HA", timeout=15)
    started = time.monotonic()
    assert pair.stop("b") == 0
    took = time.monotonic() - started
    assert ha_binding_cache(pair) == []
    assert took < 3.0          # the deregistration waits 1 s at most; the rest is shutdown
    log = pair.logs["b"].read_text()
    assert "binding deleted" in log and "stop step unfinished" not in log
