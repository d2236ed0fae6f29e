"""docs/deploy.md, run as written: its ``deploy:HOST`` blocks, in order, on namespaces like its picture.

The blocks are read from the guide itself, so the guide and this test
cannot drift: a command changed there is the command run here.  Hosts
(tests/init/deploylab.py): an "internet" router, the HA (public IPv4), the
CN, a Wi-Fi router and a phone tether (both NAT) in front of the laptop's
``wlan0`` and ``usb0``; IPv4 only on the underlay.  The only stand-in is
``scp``, which copies into the target host's home directory (the hosts
share one file system).  Then: the laptop registered over NAT with IKE,
pinged the HA and the CN from its HoA, the CN holds a binding (IRO), a ping
stream to the CN survived the Wi-Fi going down and the laptop moved to the
tether, and adding an MN left the HA's config alone.
"""

from __future__ import annotations

import json
import re
import textwrap
from vmip.compat import tomllib
from pathlib import Path

import pytest
from deploylab import DeployLab, missing_tools, wait_for

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
BLOCK = re.compile(r"^```sh deploy:(\w+)(:daemon)?\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: The guide's underlay addresses, as scp targets.
SCP_TARGETS = {"192.0.2.1": "ha", "198.51.100.7": "cn"}
HOSTS = {"laptop": "laptop", "ha": "ha", "cn": "cn"}
HA, CN = "fd12:3456:789a::1", "fd12:3456:789a:ffff::1"


def guide_blocks() -> list[tuple[str, bool, str]]:
    """(host, daemon?, script) of each tested block of the guide, in order."""
    return [(host, bool(daemon), textwrap.dedent(script))
            for host, daemon, script in BLOCK.findall(GUIDE.read_text())]


def test_the_guide_has_its_steps():
    blocks = guide_blocks()
    assert {host for host, _, _ in blocks} == set(HOSTS)
    assert [host for host, daemon, _ in blocks if daemon] == ["ha", "cn", "laptop"]
    assert any("ip link set wlan0 down" in script for _, _, script in blocks)


def _scp_shim(lab: DeployLab) -> Path:
    """``scp -r DIR root@ADDRESS:``, the only form the guide uses, into that host's home."""
    bin_dir = lab.workdir / "bin"
    bin_dir.mkdir()
    homes = " ".join(f"{address}={lab[host].home}" for address, host in SCP_TARGETS.items())
    shim = bin_dir / "scp"
    shim.write_text(f"""#!/bin/sh
set -e
[ "$1" = "-r" ] && [ $# -eq 3 ] || {{ echo "scp stand-in: only 'scp -r DIR root@HOST:'" >&2; exit 2; }}
target="${{3#root@}}"; target="${{target%:}}"
for pair in {homes}; do
    if [ "${{pair%%=*}}" = "$target" ]; then exec cp -a "$2" "${{pair#*=}}/"; fi
done
echo "scp stand-in: unknown host $target" >&2; exit 2
""")
    shim.chmod(0o755)
    return bin_dir


@pytest.fixture
def lab(tmp_path):
    if missing_tools():
        pytest.skip("the namespace lab needs " + ", ".join(missing_tools()))
    lab = DeployLab(tmp_path)
    try:
        yield lab.build()
    finally:
        lab.close()


@pytest.mark.root
@pytest.mark.slow
def test_the_deployment_guide_runs_as_written(lab):
    bin_dir = _scp_shim(lab)
    outputs: list[tuple[str, str, str]] = []
    for index, (host_name, daemon, script) in enumerate(guide_blocks()):
        host = lab[HOSTS[host_name]]
        if daemon:
            log = lab.workdir / f"daemon-{index}-{host_name}.log"
            proc = host.spawn(script.strip(), log)

            def ready(host=host, proc=proc, log=log, script=script):
                if proc.poll() is not None:
                    raise AssertionError(f"{script} exited:\n{log.read_text()}")
                return host.sh("vmip status", check=False).returncode == 0
            wait_for(ready, f"{script.strip()} on {host_name}", 20)
            continue
        result = host.sh(f'PATH="{bin_dir}:$PATH"\n{script}', timeout=90)
        outputs.append((host_name, script, result.stdout))

    # Step 7: the stream to the CN survived the Wi-Fi going down.
    handover = next(out for _, script, out in outputs if "wlan0 down" in script)
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received",
                                        handover).groups())
    assert sent == 40 and received >= 32, handover  # measured: 40 of 40
    laptop, cn = lab["laptop"], lab["cn"]
    status = json.loads(laptop.sh("vmip bindings --json").stdout)
    entries = {e["peer"]: e for e in status["mn"]["binding_update_list"]}
    config = tomllib.loads((laptop.home / "vmip-net" / "laptop" / "laptop.toml").read_text())
    assert entries[HA]["state"] == "bound" and entries[CN]["state"] == "bound", entries
    usb_coa = next(link["coa"] for link in config["link"] if link["name"] == "usb0")
    assert entries[HA]["coa"] == usb_coa and entries[CN]["coa"] == usb_coa, entries
    assert entries[CN]["direct"] == usb_coa, entries  # IRO: MN-CN traffic off the HA path
    # IRO: the CN holds the laptop's binding, at its new CoA.
    cache = json.loads(cn.sh("vmip bindings --json").stdout)["cn"]["binding_cache"]
    assert [e["coa"] for e in cache if e["hoa"] == "fd12:3456:789a::10"] == [usb_coa], cache
    # Step 8: the HA's config is not among the changed ones.
    add_mn = outputs[-1]
    assert "--add-mn laptop2" in add_mn[1] and "added mobile node laptop2" in add_mn[2]
    assert "ha.toml" not in add_mn[2] and "web/web.toml" in add_mn[2], add_mn[2]
