"""An HA that admits mobile nodes by certificate refuses a HoA the certificate does not name.

RFC 4877 §4: the IKE identity authorizes the home address; the HA checks
that the HoA of the CHILD_SA traffic selectors and of the Binding Update
belongs to the authenticated identity.  A network from ``vmip init`` (IKE,
no per-MN entry at the HA) runs in namespaces (tests/init/deploylab.py):
the laptop behind its Wi-Fi NAT, and "evil", another MN of the same
network with a valid certificate for its own HoA, which edits its config
to claim the laptop's HoA.  The HA must refuse it and keep the laptop's
binding; the laptop keeps working.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from deploylab import DeployLab, missing_tools, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

PREFIX = "fd12:3456:789a"
HA = f"{PREFIX}::1"
LAPTOP_HOA, EVIL_HOA = f"{PREFIX}::10", f"{PREFIX}::20"
LAPTOP_COA = f"{PREFIX}:101::2"


def _install(host, directory: str, name: str) -> None:
    host.sh(f"cd {directory} && install -d -m 700 /etc/vmip /etc/vmip/keys && "
            f"install -m 644 {name}.toml /etc/vmip/ && install -m 600 keys/* /etc/vmip/keys/")


def _start(lab: DeployLab, host_name: str, node: str) -> None:
    host = lab[host_name]
    proc = host.spawn(f"vmip run -c /etc/vmip/{node}.toml", lab.workdir / f"{node}.log")

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"{node} exited:\n" + (lab.workdir / f"{node}.log").read_text())
        return host.sh("vmip status", check=False).returncode == 0
    wait_for(ready, f"{node} answering", 20)


def _json(host, *args: str):
    return json.loads(host.sh(f"vmip {' '.join(args)} --json").stdout)


def _ha_binding(lab: DeployLab, hoa: str):
    cache = _json(lab["ha"], "bindings")["ha"]["binding_cache"]
    return next((entry for entry in cache if entry["hoa"] == hoa), None)


@pytest.fixture
def lab(tmp_path):
    if missing_tools():
        pytest.skip("the namespace lab needs " + ", ".join(missing_tools()))
    lab = DeployLab(tmp_path, hosts=("inet", "ha", "wifi", "laptop", "evil"))
    try:
        yield lab.build()
    finally:
        lab.close()


def test_an_mn_certified_for_one_hoa_cannot_register_another(lab):
    laptop, evil, ha = lab["laptop"], lab["evil"], lab["ha"]
    laptop.sh(f"vmip init ~/net --ha ha=192.0.2.1:6275 --mn laptop:wlan0 --mn evil "
              f"--home-prefix {PREFIX}::/64")
    net = laptop.home / "net"
    assert "[[ike.peer]]" not in (net / "ha" / "ha.toml").read_text()  # nothing per MN
    shutil.copytree(net / "ha", ha.home / "ha")
    # evil has its own valid certificate (subjectAltName: its own HoA) ...
    shutil.copytree(net / "evil", evil.home / "evil")
    config = evil.home / "evil" / "evil.toml"
    # ... and claims the laptop's home address everywhere in its config.
    config.write_text(config.read_text().replace(EVIL_HOA, LAPTOP_HOA))
    _install(ha, "ha", "ha")
    _install(laptop, "net/laptop", "laptop")
    _install(evil, "evil", "evil")
    _start(lab, "ha", "ha")
    _start(lab, "laptop", "laptop")
    laptop.sh(f"ping -c 2 -w 30 {HA}")
    legit = wait_for(lambda: _ha_binding(lab, LAPTOP_HOA), "the laptop's binding at the HA")

    _start(lab, "evil", "evil")
    # Its IKE SA comes up (the certificate is valid), its CHILD_SAs for the
    # laptop's HoA do not: the HA narrows them to the certified HoA, nothing.
    def refused():
        ike = _json(ha, "ike", "list")
        return [sa for sa in ike["sas"] if sa["remote_id"] == "evil.vmip.internal"
                and sa["state"] == "established"] and \
            ike["counters"].get("admitted", 0) >= 2
    wait_for(refused, "evil's IKE SA admitted", 20)
    evil_ping = evil.sh(f"ping -c 3 -w 6 {HA}", check=False)
    assert evil_ping.returncode != 0, evil_ping.stdout
    # The binding is still the laptop's: same CoA, and the laptop still reaches the HA.
    now = _ha_binding(lab, LAPTOP_HOA)
    assert now is not None and now["coa"] == legit["coa"], (legit, now)
    evil_sas = [sa for sa in _json(ha, "ike", "list")["sas"]
                if sa["remote_id"] == "evil.vmip.internal"]
    assert evil_sas and all(not sa["children"] for sa in evil_sas), evil_sas
    # Every SA at the HA for the laptop's HoA is one of the laptop's CHILD_SAs.
    ike = _json(ha, "ike", "list")
    laptop_spis = {spi for sa in ike["sas"] if sa["remote_id"] == "laptop.vmip.internal"
                   for child in sa["children"] for spi in (child["spi_in"], child["spi_out"])}
    sas = _json(ha, "sa", "list")
    assert sas and {sa["spi"] for sa in sas} <= laptop_spis, sas
    bul = _json(evil, "bindings")["mn"]["binding_update_list"]
    assert all(entry["state"] != "bound" for entry in bul), bul
    laptop.sh(f"ping -c 2 -w 10 {HA}")


def test_an_mn_cannot_run_ike_from_another_mns_care_of_address(lab):
    # evil keeps its own HoA but takes the laptop's CoA, and comes first: were it
    # admitted, the HA's locator for that CoA would lead to evil, and the
    # laptop's IKE answers with it.  Its certificate names its own CoA only.
    laptop, evil, ha = lab["laptop"], lab["evil"], lab["ha"]
    laptop.sh(f"vmip init ~/net --ha ha=192.0.2.1:6275 --mn laptop:wlan0 --mn evil "
              f"--home-prefix {PREFIX}::/64")
    net = laptop.home / "net"
    shutil.copytree(net / "ha", ha.home / "ha")
    shutil.copytree(net / "evil", evil.home / "evil")
    config = evil.home / "evil" / "evil.toml"
    config.write_text(config.read_text().replace(f"{PREFIX}:201::2", LAPTOP_COA))
    _install(ha, "ha", "ha")
    _install(laptop, "net/laptop", "laptop")
    _install(evil, "evil", "evil")
    _start(lab, "ha", "ha")
    _start(lab, "evil", "evil")
    wait_for(lambda: _json(ha, "ike", "list")["counters"].get(
        "admission_refused_care_of_address"), "evil refused", 20)
    assert _ha_binding(lab, EVIL_HOA) is None
    locators = _json(ha, "locators")
    assert not [e for e in locators if e["address"] == LAPTOP_COA], locators
    _start(lab, "laptop", "laptop")
    laptop.sh(f"ping -c 2 -w 30 {HA}")
    binding = wait_for(lambda: _ha_binding(lab, LAPTOP_HOA), "the laptop's binding")
    assert binding["coa"] == LAPTOP_COA, (binding, _json(ha, "locators"))
    evil_ping = evil.sh(f"ping -c 2 -w 4 {HA}", check=False)
    assert evil_ping.returncode != 0, evil_ping.stdout


def test_an_admitted_mn_cannot_move_its_ike_sa_to_another_mns_care_of_address(lab):
    # evil is admitted from its own certified CoA, then moves (MOBIKE
    # UPDATE_SA_ADDRESSES) to a link whose CoA is the laptop's, while the
    # laptop is away: MOBIKE's address check reaches evil there (nobody else
    # has that address yet), so it is the certificate that must stop it;
    # followed, evil's BU and ESP would take that CoA's binding and locator.
    laptop, evil, ha = lab["laptop"], lab["evil"], lab["ha"]
    laptop.sh(f"vmip init ~/net --ha ha=192.0.2.1:6275 --mn laptop:wlan0 --mn evil:net0,net1 "
              f"--home-prefix {PREFIX}::/64")
    net = laptop.home / "net"
    shutil.copytree(net / "ha", ha.home / "ha")
    shutil.copytree(net / "evil", evil.home / "evil")
    config = evil.home / "evil" / "evil.toml"
    # Both links over eth0 (no such interfaces here); the second one on the laptop's CoA.
    text = re.sub(r'interface = "net[01]"\n', "", config.read_text())
    config.write_text(text.replace(f"{PREFIX}:202::2", LAPTOP_COA))
    _install(ha, "ha", "ha")
    _install(laptop, "net/laptop", "laptop")
    _install(evil, "evil", "evil")
    _start(lab, "ha", "ha")
    _start(lab, "evil", "evil")
    evil.sh(f"ping -c 2 -w 30 {HA}")  # admitted from its own CoA: it works there
    evil.sh("vmip mn move net1")

    def evil_moved():
        bul = _json(evil, "bindings")["mn"]["binding_update_list"]
        return [e for e in bul if e["peer"] == HA and e["coa"] == LAPTOP_COA]
    wait_for(evil_moved, "evil on the laptop's CoA", 20)
    evil.sh(f"ping -c 3 -w 4 {HA}", check=False)  # tunnel traffic from the laptop's CoA
    # The HA did not follow evil there: no IKE SA, no binding, no locator.
    ike = _json(ha, "ike", "list")
    assert not [sa for sa in ike["sas"] if sa["remote_id"] == "evil.vmip.internal"
                and sa["remote"].startswith(LAPTOP_COA) and sa["state"] == "established"], ike
    binding = _ha_binding(lab, EVIL_HOA)
    assert binding is None or binding["coa"] != LAPTOP_COA, binding
    locators = _json(ha, "locators")
    assert not [e for e in locators if e["address"] == LAPTOP_COA
                and e["endpoint"].startswith("198.18.0.66")], locators
    # The laptop comes and registers at its own CoA.
    _start(lab, "laptop", "laptop")
    laptop.sh(f"ping -c 2 -w 30 {HA}")
    # The HA's cache is read through the control socket while the laptop's
    # registration may still be settling: wait for its binding, do not race it.
    wait_for(lambda: (_ha_binding(lab, LAPTOP_HOA) or {}).get("coa") == LAPTOP_COA,
             "the laptop's binding at its own CoA", 20)
    assert next(e["endpoint"] for e in _json(ha, "locators")
                if e["address"] == LAPTOP_COA).startswith("203.0.113.1")
    assert ike["counters"].get("ike_sa_deleted_uncertified_move") == 1, ike["counters"]
