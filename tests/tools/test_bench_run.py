"""tools/bench/run for real: namespaces, vmip nodes, iperf3 and ping (root).

Every run uses its own namespace prefix ``vt<pid>b`` (not the default
``vb``), so a benchmark someone runs by hand is never touched, and a
``--cleanup`` in the fixture's finally removes whatever a failed test left.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "tools" / "bench" / "run"
sys.path.insert(0, str(REPO / "tools" / "bench"))

from netbench.lab import Lab, existing_netns
from netbench.parse import parse_iperf3_json, parse_ping

pytestmark = pytest.mark.root


def bench(*args: str, timeout: float = 90, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.fixture
def prefix():
    name = f"vt{os.getpid()}b"
    try:
        yield name
    finally:
        bench("--cleanup", "--ns-prefix", name, timeout=60)
        assert not {f"{name}-a", f"{name}-b"} & existing_netns()


@pytest.fixture
def lone_netns():
    """One namespace with only loopback, for running the tools the harness parses."""
    name = f"vt{os.getpid()}-bench-lo"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)


@pytest.mark.timeout(120)
def test_quick_run_underlay_and_vmip(prefix, tmp_path):
    out = tmp_path / "bench.json"
    result = bench("--quick", "--systems", "underlay,vmip,python-floor", "--seconds", "2",
                   "--rounds", "1", "--ping-count", "10", "--ns-prefix", prefix,
                   "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert set(report["systems"]) == {"underlay", "vmip", "python-floor"}
    for name, entry in report["systems"].items():
        assert entry["status"] == "ok", (name, entry)
        assert entry["tcp_mbps"] > 0 and entry["rtt_ms"] > 0, (name, entry)
        assert entry["repetitions"] == {"tcp": 1, "rtt": 1}
    vmip = report["systems"]["vmip"]
    assert vmip["tcp_ratio_to_vmip"] == 1.0
    assert vmip["details"]["mtu"] == 1400 and vmip["details"]["interface"] == "vmip0"
    # Through a userspace tunnel TCP cannot beat the bare 1500-byte veth it rides on.
    assert report["systems"]["underlay"]["tcp_mbps"] > vmip["tcp_mbps"]
    assert report["comparison"]["vmip_rtt_minus_underlay_ms"] == pytest.approx(
        vmip["rtt_ms"] - report["systems"]["underlay"]["rtt_ms"])
    # The reference relay carried the same traffic through its own TUN.
    floor = report["systems"]["python-floor"]
    assert floor["details"]["interface"] == "pyfloor0" and floor["details"]["mtu"] == 1400
    assert report["comparison"]["vmip_over_python_floor"]["rtt_ms"]["median"] == pytest.approx(
        vmip["rtt_ms"] / floor["rtt_ms"])
    assert report["run"]["rounds"] == 1 and report["run"]["seconds"] == 2
    for name in ("underlay", "vmip", "python-floor"):
        assert name in result.stdout
    assert not {f"{prefix}-a", f"{prefix}-b"} & existing_netns()


@pytest.mark.timeout(60)
def test_missing_software_is_skipped_with_install_hint(prefix, tmp_path):
    # A PATH with the harness's own needs but neither wireguard-go nor openvpn.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ip", "iperf3", "ping"):
        (bindir / tool).symlink_to(shutil.which(tool))
    out = tmp_path / "bench.json"
    result = bench("--systems", "wireguard-go,openvpn,underlay", "--seconds", "1", "--rounds", "1",
                   "--ping-count", "5", "--ns-prefix", prefix, "--json", str(out),
                   env=dict(os.environ, PATH=str(bindir)))
    assert result.returncode == 0, result.stdout + result.stderr
    systems = json.loads(out.read_text())["systems"]
    for name, package in (("wireguard-go", "wireguard-go"), ("openvpn", "openvpn")):
        assert systems[name]["status"] == "skipped"
        assert systems[name]["tcp_mbps"] is None and systems[name]["rtt_ms"] is None
        assert package in systems[name]["reason"]
        assert systems[name]["install"].startswith("apt-get install")
    assert systems["underlay"]["status"] == "ok" and systems["underlay"]["tcp_mbps"] > 0
    assert "skipped" in result.stdout
    # Said as it happens, per peer: what is missing and the exact command.
    assert ("wireguard-go: skipped (not installed: wireguard-go, wg, unshare; install: "
            "apt-get install wireguard-go wireguard-tools util-linux, or every peer at once: "
            "tools/install-deps --bench)") in result.stderr
    assert "openvpn: skipped (not installed: openvpn" in result.stderr
    assert "round 1/1 underlay:" in result.stderr   # and the rest went on


@pytest.mark.timeout(120)
def test_bidir_streams_and_cpu_cases_end_to_end(prefix, tmp_path):
    out = tmp_path / "bench.json"
    result = bench("--systems", "underlay,vmip", "--seconds", "1", "--rounds", "2",
                   "--ping-count", "3", "--bidir", "--streams", "2", "--cpu",
                   "--ns-prefix", prefix, "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    for name, entry in report["systems"].items():
        for key in ("bidir", "streams2"):
            case = entry["cases"][key]
            assert len(case["mbps_samples"]) == 2 and case["mbps"] > 0, (name, key, case)
        # Both directions carried traffic.
        assert all(forward > 0 and reverse > 0
                   for forward, reverse in entry["details"]["bidir_mbps_each_way"]), name
        for key in ("tcp", "bidir", "streams2"):
            windows = entry["details"]["cpu"][key]
            assert len(windows) == 2
            assert all(w["cpus"] == os.cpu_count() and w["iperf3_pct"] > 0 for w in windows)
    vmip_cpu = report["systems"]["vmip"]["details"]["cpu"]["tcp"][0]["processes_pct"]
    assert {"vmip-a", "vmip-b"} <= set(vmip_cpu) and vmip_cpu["vmip-b"] > 0
    ratio = report["systems"]["underlay"]["cases"]["bidir"]["ratio_to_vmip"]
    assert ratio is not None and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert report["run"]["cases"]["streams2"]["iperf3_args"] == ["-P", "2"]
    assert "streams2: 2 TCP streams (-P 2)" in result.stdout
    assert "cpu during bidir: idle" in result.stderr


@pytest.mark.timeout(60)
def test_sigterm_mid_run_removes_the_namespaces(prefix):
    proc = subprocess.Popen([sys.executable, str(RUN), "--systems", "underlay", "--rounds", "50",
                             "--seconds", "1", "--ping-count", "5", "--ns-prefix", prefix],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        # The first finished round proves the namespaces and a measurement are live.
        while b"round 1/50" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
            chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                break
            seen += chunk
        assert b"round 1/50" in seen, seen.decode(errors="replace")
        assert {f"{prefix}-a", f"{prefix}-b"} <= existing_netns()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
    assert not {f"{prefix}-a", f"{prefix}-b"} & existing_netns()


@pytest.mark.timeout(60)
def test_cleanup_removes_leftover_namespaces_processes_and_workdir(prefix):
    lab = Lab(prefix)
    lab.build()
    try:
        sleeper = lab.spawn("b", ["sleep", "60"])
        workdir = lab.workdir
        result = bench("--cleanup", "--ns-prefix", prefix, timeout=30)
        assert result.returncode == 0, result.stderr
        assert f"netns {prefix}-a" in result.stdout and f"netns {prefix}-b" in result.stdout
        assert sleeper.wait(10) is not None
        assert not workdir.exists()
        assert not {f"{prefix}-a", f"{prefix}-b"} & existing_netns()
    finally:
        lab.teardown()


def test_refuses_to_run_over_existing_namespaces(prefix):
    subprocess.run(["ip", "netns", "add", f"{prefix}-a"], check=True, timeout=10)
    result = bench("--systems", "underlay", "--ns-prefix", prefix, timeout=30)
    assert result.returncode == 1
    assert "--cleanup" in result.stderr
    assert f"{prefix}-a" in existing_netns()  # not ours to delete: left for --cleanup


@pytest.mark.timeout(30)
def test_ping_parser_agrees_with_pings_own_summary(lone_netns):
    result = subprocess.run(["ip", "netns", "exec", lone_netns, "ping", "-n", "-c", "5", "-i",
                             "0.05", "::1"], capture_output=True, text=True, timeout=20,
                            check=False)
    assert result.returncode == 0, result.stderr
    parsed = parse_ping(result.stdout)
    low, avg, high = map(float, re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", result.stdout).groups())
    assert len(parsed.rtts_ms) == 5 and parsed.received == 5
    assert min(parsed.rtts_ms) == pytest.approx(low, abs=0.0015)
    assert max(parsed.rtts_ms) == pytest.approx(high, abs=0.0015)
    assert sum(parsed.rtts_ms) / 5 == pytest.approx(avg, abs=0.002)


@pytest.mark.timeout(30)
def test_iperf3_parser_reads_the_rate_iperf3_was_told_to_send(lone_netns):
    server = subprocess.Popen(["ip", "netns", "exec", lone_netns, "iperf3", "-s", "-1", "-i", "0",
                               "--forceflush"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 10)
        assert ready and b"listening" in os.read(server.stdout.fileno(), 4096)
        # -b paces the TCP sender: the receiver must see about 40 Mbit/s.
        result = subprocess.run(["ip", "netns", "exec", lone_netns, "iperf3", "-c", "::1",
                                 "-t", "2", "-b", "40M", "-J"],
                                capture_output=True, text=True, timeout=20, check=False)
        assert result.returncode == 0, result.stdout[-500:]
        parsed = parse_iperf3_json(result.stdout)
        assert parsed.receiver_mbps == pytest.approx(40, rel=0.15)
        assert parsed.seconds == pytest.approx(2, rel=0.2)
    finally:
        server.kill()
        server.wait(10)
        server.stdout.close()
