"""A node run by an ordinary user without any capability, on a TUN root prepared.

``vmip tun create --config FILE --user nobody`` (as root, in node a's
namespace) makes the persistent TUN; then node a runs as uid 65534 with
empty capability sets, against node b run as root, and ESP traffic flows.
The kernel's /proc/<pid>/status is the witness of what the node held.

Running Python as another uid: the interpreter of this test lives under
/root (mode 0700 on this machine), which uid 65534 cannot traverse.  The
node is started in a private mount namespace where the interpreter's
prefix is bind-mounted at a world-reachable path, PYTHONPATH names the same
site-packages there and LD_LIBRARY_PATH its lib/ (the binary's RUNPATH
names libpython under /root; the loader would otherwise pick the system's
libpython of another patch level): the same interpreter and packages,
reached without /root, and nothing changes on the host.  (Keeping uid 0 and only
dropping the capabilities would miss what a real user lacks: the owner
bits of root's files and directories.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from pairlab import OVERLAY, PairLab, netns_exec, wait_for

pytestmark = pytest.mark.root

NOBODY = 65534


def _proc_status(pid: int) -> dict[str, str]:
    rows = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (row.partition(":") for row in rows)}


def _python_for_others(mount_point: Path) -> tuple[list[str], str]:
    """``(bind mount command, python path)`` and the PYTHONPATH that run this very
    interpreter from *mount_point* instead of its own prefix."""
    prefix = Path(sys.base_prefix).resolve()
    executable = Path(sys.executable).resolve()
    if not executable.is_relative_to(prefix) or sys.prefix != sys.base_prefix:
        pytest.skip(f"the interpreter {executable} is not a plain install under {prefix}")
    moved = mount_point / executable.relative_to(prefix)
    paths = [Path(__file__).resolve().parents[2]]   # the vmip under test
    for name in ("purelib", "platlib"):
        path = Path(sysconfig.get_paths()[name]).resolve()
        paths.append(mount_point / path.relative_to(prefix) if path.is_relative_to(prefix)
                     else path)
    return (["mount", "--bind", str(prefix), str(mount_point)],
            f"{moved}\n" + os.pathsep.join(dict.fromkeys(map(str, paths))))


def unprivileged_vmip(netns: str, mount_point: Path, *args: str) -> list[str]:
    """The command running ``vmip ARGS`` in *netns* as nobody, with no capability at all
    (setpriv: other uid, no inheritable, ambient or bounding capabilities)."""
    mount, python_and_path = _python_for_others(mount_point)
    python, pythonpath = python_and_path.split("\n")
    shell = ('"$@" && exec setpriv --reuid 65534 --regid 65534 --clear-groups '
             '--inh-caps=-all --bounding-set=-all '
             f'env PYTHONPATH={pythonpath} LD_LIBRARY_PATH={mount_point}/lib '
             f'{python} -m vmip {" ".join(args)}')
    return ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
            "sh", "-c", shell, "sh", *mount]


class UnprivilegedPair(PairLab):
    """PairLab whose node a runs as nobody: own key files, state and control socket."""

    def build(self) -> UnprivilegedPair:
        super().build()
        home = self.workdir / "a-home"
        home.mkdir(mode=0o700)
        keys = home / "keys"
        keys.mkdir(mode=0o700)
        for key in (self.workdir / "keys").iterdir():
            shutil.copy2(key, keys / key.name)
        for path in (home, keys, *keys.iterdir()):
            os.chown(path, NOBODY, NOBODY)
        config = self.configs["a"].read_text().replace(f"{self.workdir}/keys/", f"{keys}/")
        config = config.replace(f"{self.workdir}/state-a", f"{home}/state")
        self.configs["a"].write_text(config)
        for path in self.configs.values():
            path.chmod(0o644)
        self.home = home
        self.mount_point = self.workdir / "python"
        self.mount_point.mkdir()
        return self

    def socket(self, side: str) -> Path:
        return self.home / "vmip.sock" if side == "a" else super().socket(side)

    def unprivileged_command(self, *args: str) -> list[str]:
        """``vmip ARGS`` in namespace a as nobody, with no capability at all."""
        return unprivileged_vmip(self.netns["a"], self.mount_point, *args)

    def start_unprivileged(self) -> subprocess.Popen:
        log = self.workdir / "a.log"
        self.logs["a"] = log
        with open(log, "wb") as stderr:   # the child keeps its own copy
            proc = subprocess.Popen(
                self.unprivileged_command("--log-level", "debug", "run", "-c",
                                          str(self.configs["a"]), "--control-socket",
                                          str(self.socket("a"))),
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        self.procs["a"] = proc
        self.wait_ready("a")
        return proc

    def vmip(self, side: str, *args: str, check: bool = True, timeout: float = 30):
        if side == "a" and args and args[0] not in ("tun",):
            args = (*args, "--socket", str(self.socket("a")))
        return super().vmip(side, *args, check=check, timeout=timeout)


@pytest.fixture
def pair():
    # World-traversable (not pytest's 0700 tree): nobody reads its config here.
    workdir = Path(tempfile.mkdtemp(prefix="vmip-unpriv-"))
    workdir.chmod(0o755)
    lab = UnprivilegedPair(workdir, netns_tag="up")
    try:
        lab.build()
        lab.start("b")
        yield lab
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _ping(pair: PairLab) -> subprocess.CompletedProcess:
    return netns_exec(pair.netns["a"], "ping", "-c", "2", "-i", "0.2", "-W", "2", OVERLAY["b"])


def test_prepared_tun_lets_nobody_run_a_node_without_any_capability(pair):
    created = pair.vmip("a", "tun", "create", "--config", str(pair.configs["a"]),
                        "--user", "nobody")
    assert "persistent TUN for nobody" in created.stdout
    link = netns_exec(pair.netns["a"], "ip", "-d", "-j", "link", "show", "vmip0", check=True)
    details = json.loads(link.stdout)[0]
    assert details["mtu"] == 1400 and details["linkinfo"]["info_data"]["pi"] is False
    assert details["linkinfo"]["info_data"]["user"] in ("nobody", NOBODY)

    pair.start_unprivileged()
    pid = json.loads(pair.vmip("a", "status", "--json").stdout)["pid"]
    status = _proc_status(pid)
    assert status["Uid"].split() == [str(NOBODY)] * 4
    for field in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, (field, status[field])
    assert status["NoNewPrivs"] == "1"   # the node sealed itself
    log = pair.logs["a"].read_text()
    assert "running unprivileged" in log and "prepared by vmip tun create" in log, log
    privileges = json.loads(pair.vmip("a", "status", "--json").stdout)["privileges"]
    assert privileges["user"] == "nobody" and privileges["capabilities"] == []

    # ESP both ways between the unprivileged node and the root one.
    result = _ping(pair)
    assert result.returncode == 0, result.stdout + log
    sas = {sa["name"]: sa for sa in json.loads(pair.vmip("a", "sa", "list", "--json").stdout)}
    assert sas["out"]["packets"] >= 2 and sas["in"]["packets"] >= 2, sas

    # Stopping leaves the prepared TUN (and its addresses) for the next run.
    assert pair.stop("a") == 0
    assert not pair.socket("a").exists()
    addresses = netns_exec(pair.netns["a"], "ip", "-6", "-o", "addr", "show", "dev", "vmip0")
    assert OVERLAY["a"] in addresses.stdout
    log = pair.logs["a"].read_text()
    assert "close step failed" not in log and "Traceback" not in log, log

    # ... and a second run attaches to it again.
    pair.start_unprivileged()
    result = _ping(pair)
    assert result.returncode == 0, result.stdout
    assert pair.stop("a") == 0

    pair.vmip("a", "tun", "delete", "--config", str(pair.configs["a"]))
    assert "vmip0" not in netns_exec(pair.netns["a"], "ip", "-o", "link").stdout


def test_root_without_capabilities_runs_on_a_tun_prepared_for_root(pair):
    """uid 0 with every capability gone (setpriv) cannot drop anything (no
    CAP_SETPCAP): the node runs as it is, on a prepared TUN, and says so."""
    for path in (pair.home, *pair.home.rglob("*")):
        os.chown(path, 0, 0)   # node a's files are root's again
    pair.vmip("a", "tun", "create", "--config", str(pair.configs["a"]), "--user", "root")
    log = pair.workdir / "a.log"
    pair.logs["a"] = log
    with open(log, "wb") as stderr:
        pair.procs["a"] = subprocess.Popen(
            ["ip", "netns", "exec", pair.netns["a"], "setpriv", "--inh-caps=-all",
             "--bounding-set=-all", sys.executable, "-m", "vmip", "run", "-c",
             str(pair.configs["a"]), "--control-socket", str(pair.socket("a"))],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    pair.wait_ready("a")
    pid = json.loads(pair.vmip("a", "status", "--json").stdout)["pid"]
    status = _proc_status(pid)
    assert status["Uid"].split() == ["0"] * 4
    assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1"
    assert "running unprivileged user=root capabilities=none" in log.read_text()
    result = _ping(pair)
    assert result.returncode == 0, result.stdout
    assert pair.stop("a") == 0


def _unprivileged_run_fails(pair: UnprivilegedPair) -> str:
    result = subprocess.run(
        pair.unprivileged_command("run", "-c", str(pair.configs["a"]), "--control-socket",
                                  str(pair.socket("a"))),
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0, result.stderr
    return result.stderr


def test_without_a_prepared_tun_the_run_names_the_capability_and_the_fix(pair):
    stderr = _unprivileged_run_fails(pair)
    assert "CAP_NET_ADMIN for creating the TUN vmip0" in stderr, stderr
    assert "vmip tun create --config FILE --user nobody" in stderr, stderr
    assert "vmip0" not in netns_exec(pair.netns["a"], "ip", "-o", "link").stdout


def test_a_prepared_tun_that_no_longer_matches_the_config_is_refused(pair):
    pair.vmip("a", "tun", "create", "--config", str(pair.configs["a"]), "--user", "nobody")
    netns_exec(pair.netns["a"], "ip", "link", "set", "vmip0", "mtu", "1300", check=True)
    stderr = _unprivileged_run_fails(pair)
    assert "the prepared TUN vmip0 does not match the config: MTU 1300 instead of 1400" \
        in stderr, stderr
    assert "vmip tun delete" in stderr, stderr


def test_a_prepared_tun_belongs_to_its_user_only(pair):
    pair.vmip("a", "tun", "create", "--config", str(pair.configs["a"]), "--user", "root")
    stderr = _unprivileged_run_fails(pair)
    assert "cannot open TUN device vmip0: permission denied" in stderr, stderr
    assert "vmip tun create" in stderr, stderr


def test_tun_commands_refuse_what_they_cannot_do(pair):
    pair.vmip("a", "tun", "create", "--config", str(pair.configs["a"]), "--user", "nobody")
    again = pair.vmip("a", "tun", "create", "--config", str(pair.configs["a"]), "--user",
                      "nobody", check=False)
    assert again.returncode != 0 and "exists already" in again.stderr, again.stderr
    veth = pair.vmip("a", "tun", "delete", "--name", "veth-a", check=False)
    assert veth.returncode != 0 and "not a TUN" in veth.stderr, veth.stderr
    missing = pair.vmip("a", "tun", "delete", "--name", "nothere", check=False)
    assert missing.returncode != 0 and "no interface nothere" in missing.stderr


# -- a mobile node: the movement watcher and its per-link sockets -----------------------------

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def roaming(tmp_path_factory):
    """Namespaces mn and ha joined by two veths (wlan0, wwan0 on the MN's side), and the
    configs ``vmip init`` writes for them (static keys), the MN's owned by nobody."""
    pid = os.getpid()
    netns = {"mn": f"vt{pid}-um-mn", "ha": f"vt{pid}-um-ha"}
    workdir = Path(tempfile.mkdtemp(prefix="vmip-unpriv-mn-"))
    workdir.chmod(0o755)
    procs: list[subprocess.Popen] = []
    try:
        for name in netns.values():
            _ip("netns", "add", name)
        mn, ha = netns["mn"], netns["ha"]
        for index, (link, far) in enumerate((("wlan0", "hw0"), ("wwan0", "hw1"))):
            _ip("-n", mn, "link", "add", link, "type", "veth", "peer", "name", far, "netns", ha)
            _ip("-n", mn, "addr", "add", f"10.{index}.0.2/24", "dev", link)
            _ip("-n", ha, "addr", "add", f"10.{index}.0.1/24", "dev", far)
            _ip("-n", mn, "link", "set", link, "up")
            _ip("-n", ha, "link", "set", far, "up")
            # Each link's socket is bound to its device: each needs its own route.
            _ip("-n", mn, "route", "add", "192.0.2.1/32", "via", f"10.{index}.0.1", "dev", link,
                "metric", str(10 + index))
        _ip("-n", ha, "addr", "add", "192.0.2.1/32", "dev", "lo")
        for name in netns.values():
            _ip("-n", name, "link", "set", "lo", "up")
        network = workdir / "net"
        result = subprocess.run(
            [sys.executable, "-m", "vmip", "init", str(network), "--ha", "ha=192.0.2.1:6275",
             "--mn", "laptop:wlan0,wwan0", "--keys", "static"],
            capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        network.chmod(0o755)
        for node in ("laptop", "ha"):
            config = network / node / f"{node}.toml"
            text = config.read_text().replace(
                '[keys]\n', f'[keys]\nstate_dir = "{network / node / "state"}"\n', 1)
            config.write_text(text)
        for path in [network / "laptop", *(network / "laptop").rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        mount_point = workdir / "python"
        mount_point.mkdir()
        yield SimpleNamespace(netns=netns, network=network, workdir=workdir, procs=procs,
                              mount_point=mount_point)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        for name in netns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10,
                           check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def test_an_unprivileged_mobile_node_moves_to_its_other_link_when_one_goes_down(roaming):
    mn, ha = roaming.netns["mn"], roaming.netns["ha"]
    mn_config = roaming.network / "laptop" / "laptop.toml"
    mn_socket = roaming.network / "laptop" / "vmip.sock"
    ha_socket = roaming.workdir / "ha.sock"
    with open(roaming.workdir / "ha.log", "wb") as stderr:
        roaming.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ha, sys.executable, "-m", "vmip", "run", "-c",
             str(roaming.network / "ha" / "ha.toml"), "--control-socket", str(ha_socket)],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True))
    created = netns_exec(mn, sys.executable, "-m", "vmip", "tun", "create", "--config",
                         str(mn_config), "--user", "nobody")
    assert created.returncode == 0, created.stderr
    mn_log = roaming.workdir / "mn.log"
    with open(mn_log, "wb") as stderr:
        roaming.procs.append(subprocess.Popen(
            unprivileged_vmip(mn, roaming.mount_point, "--log-level", "debug", "run", "-c",
                              str(mn_config), "--control-socket", str(mn_socket)),
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True))

    def mobility(netns: str, sock: Path) -> dict | None:
        result = netns_exec(netns, sys.executable, "-m", "vmip", "bindings", "--json",
                            "--socket", str(sock))
        return json.loads(result.stdout) if result.returncode == 0 else None

    def registered_on(link: str):
        def check():
            status = mobility(mn, mn_socket)
            if status is None or status["movement"] is None:
                return None
            if status["movement"].get("current") != link:
                return None
            coa = status["mn"]["coa"]
            cache = (mobility(ha, ha_socket) or {}).get("ha", {}).get("binding_cache", [])
            return status if any(entry["coa"] == coa for entry in cache) else None
        return check

    first = wait_for(registered_on("wlan0"), "the MN registered on wlan0", timeout=30)
    pid = json.loads(netns_exec(mn, sys.executable, "-m", "vmip", "status", "--json",
                                "--socket", str(mn_socket)).stdout)["pid"]
    status = _proc_status(pid)
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert all(int(status[f], 16) == 0 for f in ("CapEff", "CapPrm", "CapBnd", "CapAmb"))
    assert first["movement"]["automatic"] is True

    # The watcher sees wlan0 go (netlink, unprivileged), and the MN re-registers its
    # wwan0 CoA with the HA through wwan0's socket (SO_BINDTODEVICE, unprivileged).
    _ip("-n", mn, "link", "set", "wlan0", "down")
    moved = wait_for(registered_on("wwan0"), "the MN registered on wwan0", timeout=30)
    assert moved["mn"]["coa"] != first["mn"]["coa"]
    assert moved["movement"]["decisions"][-1]["to"] == "wwan0"
    log = mn_log.read_text()
    assert "movement watcher" not in log or "no netlink" not in log, log
    assert "automatic move failed" not in log and "Traceback" not in log, log
