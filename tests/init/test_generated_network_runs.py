"""A network written by 'vmip init' runs: real nodes on the in-process network (vmip.sim).

The HA and the CN sit at the addresses given to 'vmip init', the laptop
behind a NAT on two links; the nodes load the generated configs, keys and
certificates as 'vmip run' would.  No root, virtual time.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmip.cli.main import main
from vmip.init.generate import load_description
from vmip.sim.loop import VirtualTimeLoop
from vmip.sim.network import SimNetwork
from vmip.sim.scenario import ProbeStream
from vmip.sim.world import SimWorld

NAT = "203.0.113.1"
#: node -> link -> (underlay address, NAT address or None)
UNDERLAY = {
    "ha": {"net0": ("192.0.2.1", None)},
    "web": {"net0": ("198.51.100.7", None)},
    "laptop": {"wlan0": ("10.0.0.2", NAT), "wwan0": ("10.1.0.2", NAT)},
}


class InitWorld(SimWorld):
    """The simulator's world around a generated network instead of the lab's."""

    def __init__(self, directory: Path, underlay=None) -> None:  # not super(): that is the lab
        underlay = underlay or UNDERLAY
        self._tmp = None
        self.workdir = directory
        self.loop = VirtualTimeLoop()
        self.network = SimNetwork(self.loop, seed=1)
        self.keys = load_description(directory).keys
        self.config_paths = {name: directory / name / f"{name}.toml" for name in underlay}
        self.nodes, self.tuns, self.movements, self.tun_sinks = {}, {}, {}, {}
        nodes = []
        for node, links in underlay.items():
            for link, (address, nat) in links.items():
                self.network.add_access(node, link, address, nat=nat)
            nodes.append(SimpleNamespace(name=node, links=[
                SimpleNamespace(name=link, node_ipv4=SimpleNamespace(ip=address))
                for link, (address, _) in links.items()]))
        # What SimWorld.ports_for reads of the lab's plan: each node's links and addresses.
        self.plan = SimpleNamespace(node=lambda name: next(n for n in nodes if n.name == name))


async def until(world: SimWorld, what: str, check, timeout: float) -> None:
    start = world.loop.time()
    while not check():
        if world.loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("keys", ["static", "ike"])
def test_the_laptop_registers_and_reaches_the_web_server_then_roams(tmp_path, capsys, keys):
    directory = tmp_path / "net"
    assert main(["init", str(directory), "--ha", "ha=192.0.2.1:6275",
                 "--mn", "laptop:wlan0,wwan0", "--cn", "web=198.51.100.7:6275",
                 "--keys", keys]) == 0
    capsys.readouterr()
    net = load_description(directory)
    ha, cn = str(net.ha.address), str(net.cns[0].address)
    hoa = net.mns[0].home_address
    coa = {link.name: str(link.coa) for link in net.mns[0].links}

    world = InitWorld(directory)

    def bound_on(link: str) -> bool:
        status = world.nodes["laptop"].mobility.status()
        entries = {e["peer"]: e for e in status["mn"]["binding_update_list"]}
        return all(entries.get(p, {}).get("state") == "bound"
                   and entries[p]["coa"] == coa[link] for p in (ha, cn))

    async def scenario():
        for name in ("ha", "web", "laptop"):
            await world.start(name)
        await until(world, "registered with the HA and the CN", lambda: bound_on("wlan0"), 30)
        out = ProbeStream(world, "laptop", hoa, IPv6Address(cn), 20)
        back = ProbeStream(world, "web", IPv6Address(cn), hoa, 20)
        world.tun_sinks["web"], world.tun_sinks["laptop"] = out.received, back.received
        out.start()
        back.start()
        await asyncio.sleep(2)
        assert len(out.arrivals) >= 30 and len(back.arrivals) >= 30
        world.set_link("laptop", "wlan0", False)
        await until(world, "moved to wwan0", lambda: bound_on("wwan0"), 30)
        before = len(out.arrivals), len(back.arrivals)
        await asyncio.sleep(2)
        assert len(out.arrivals) - before[0] >= 30 and len(back.arrivals) - before[1] >= 30
        out.stop()
        back.stop()
        if keys == "ike":
            # IKE over the IPv4 underlay (HOST:PORT endpoints): the laptop's IKE
            # SA with the HA negotiated MOBIKE and followed the move with it.
            laptop_sa = next(sa for sa in world.nodes["laptop"].keying.listing()["sas"]
                             if sa["name"] == "ha")
            assert laptop_sa["mobike"] and laptop_sa["local"].startswith(coa["wwan0"])
            assert laptop_sa["stats"].get("mobike_updates_sent") == 1

    try:
        world.run(scenario())
    finally:
        world.cleanup()


@pytest.mark.parametrize("keys", ["static", "ike"])
def test_a_mobile_node_added_later_reaches_the_first_one(tmp_path, capsys, keys):
    # Through the HA, end-to-end ESP: neither knows where the other's CoA is.
    directory = tmp_path / "net"
    assert main(["init", str(directory), "--ha", "ha=192.0.2.1:6275",
                 "--mn", "laptop:wlan0,wwan0", "--cn", "web=198.51.100.7:6275",
                 "--keys", keys]) == 0
    ha_config = (directory / "ha" / "ha.toml").read_bytes()
    assert main(["init", str(directory), "--add-mn", "phone"]) == 0
    # IKE: the HA runs its config from before the phone existed (admission by certificate).
    assert ((directory / "ha" / "ha.toml").read_bytes() == ha_config) == (keys == "ike")
    capsys.readouterr()
    net = load_description(directory)
    ha = str(net.ha.address)
    laptop, phone = (mn.home_address for mn in net.mns)
    world = InitWorld(directory, {**UNDERLAY, "phone": {"net0": ("192.0.2.77", None)}})

    def bound(node: str, peers) -> bool:
        status = world.nodes[node].mobility.status()
        entries = {e["peer"]: e for e in status["mn"]["binding_update_list"]}
        return all(entries.get(str(p), {}).get("state") == "bound" for p in peers)

    async def scenario():
        for name in ("ha", "web", "laptop", "phone"):
            await world.start(name)
        await until(world, "laptop bound", lambda: bound("laptop", (ha,)), 30)
        await until(world, "phone bound", lambda: bound("phone", (ha,)), 30)
        out = ProbeStream(world, "laptop", laptop, phone, 20)
        world.tun_sinks["phone"] = out.received
        out.start()
        await asyncio.sleep(2)
        out.stop()
        assert len(out.arrivals) >= 30

    try:
        world.run(scenario())
    finally:
        world.cleanup()
