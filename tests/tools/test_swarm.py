"""tools/bench/swarm: provisioning, the emulated MN's packets, the statistics, and one real run.

The pure parts run anywhere; ``test_swarm_of_20_holds_every_binding`` builds
namespaces and starts a home agent, so it is marked ``root`` (CI runs it).
Timings are the benchmark's output (docs/scale.md), never asserted here.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from vmip.compat import tomllib

REPO = Path(__file__).resolve().parents[2]
SWARM = REPO / "tools" / "bench" / "swarm"
sys.path.insert(0, str(REPO / "tools" / "bench"))

from netbench.swarm import highest_sustained, parse_rates, proc_cpu_seconds, proc_rss_bytes
from netbench.swarm_config import (
    HA_ADDRESS,
    HOME_PREFIX,
    coa_of,
    ha_config,
    make_mns,
    write_ha_files,
)
from netbench.swarm_mn import EmulatedMn, percentile

from vmip.config import load_config
from vmip.config.loader import build_config
from vmip.ipsec.esp import EspSA, decap, transport_encap
from vmip.ipsec.sa import Direction, SaParams
from vmip.mobility.mn import MobileNode
from vmip.wire.mh import BindingAck, BindingUpdate, build_mh_packet, parse_mh


def _ha_end(mn, from_mobile: bool) -> EspSA:
    """The HA's end of an MN's MH SA, from the same keys the HA's key files hold."""
    sa = mn.sa("mh", from_mobile)
    enc, auth = mn.key_pair(sa)
    params = SaParams(spi=sa.spi, direction=Direction.IN if from_mobile else Direction.OUT,
                      src=IPv6Address(sa.src), dst=IPv6Address(sa.dst), suite=sa.suite,
                      enc_key=enc, auth_key=auth, esn=False)
    return EspSA(params, 0.0)


# --- provisioning ----------------------------------------------------------------------------

def test_each_mn_has_a_home_address_and_an_mh_sa_pair_of_its_own() -> None:
    mns = make_mns(50)
    assert len({mn.hoa for mn in mns}) == 50
    assert all(mn.hoa in HOME_PREFIX and mn.hoa != HA_ADDRESS for mn in mns)
    spis = [sa.spi for mn in mns for sa in mn.sas]
    assert len(spis) == len(set(spis)) == 100
    assert all(256 <= spi <= 0xFFFFFFFF for spi in spis)
    for mn in mns:
        enc, auth = mn.key_pair(mn.sa("mh", True))
        assert (len(enc), len(auth)) == (16, 32)   # aes128cbc-sha256, as configs/ha.toml


def test_keys_are_fresh_per_sa() -> None:
    mns = make_mns(20)
    keys = [key for mn in mns for key in mn.keys.values()]
    assert len(set(keys)) == len(keys)


def test_tunnel_sas_only_when_asked() -> None:
    assert {sa.purpose for sa in make_mns(2)[0].sas} == {"mh"}
    assert {sa.purpose for sa in make_mns(2, tunnel=True)[0].sas} == {"mh", "tunnel"}


def test_mn_count_is_bounded() -> None:
    with pytest.raises(ValueError):
        make_mns(0)


def test_the_ha_config_is_valid_and_has_configs_ha_toml_policies_per_mn(tmp_path) -> None:
    mns = make_mns(3, tunnel=True)
    data = ha_config(mns, control_socket=tmp_path / "ha.sock", state_dir=tmp_path / "state")
    config = build_config(data, tmp_path / "ha.toml", check_key_files=False)
    assert len(config.keys.sa) == 12
    names = {policy.name for policy in config.policies}
    for mn in mns:
        assert {f"mh-from-{mn.name}", f"mh-to-{mn.name}", f"tunnel-to-{mn.name}",
                f"tunnel-from-{mn.name}"} <= names
    assert {"unprotected-mh", "home-prefix-in", "home-prefix-out"} <= names


def test_written_files_load_and_keys_are_private(tmp_path) -> None:
    mns = make_mns(4)
    path = write_ha_files(mns, tmp_path, control_socket=tmp_path / "ha.sock",
                          state_dir=tmp_path / "state")
    config = load_config(path)   # reads and checks every key file
    assert len(config.keys.sa) == 8
    for key_file in (tmp_path / "keys").iterdir():
        info = key_file.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = tomllib.loads(path.read_text())
    assert document["mobility"]["home_prefix"] == str(HOME_PREFIX)


# --- the emulated MN's packets ----------------------------------------------------------------

def test_the_bu_is_the_one_vmip_mobile_node_sends_protected_and_remapped() -> None:
    mn = make_mns(2)[1]
    wire = EmulatedMn(mn, 0.0).binding_update(0.0)
    coa = coa_of(mn.index, 0)
    # On the wire: from the CoA (IRO outbound rule), to the HA, ESP under the MN's SPI.
    assert wire[8:24] == coa.packed and wire[24:40] == HA_ADDRESS.packed
    assert int.from_bytes(wire[40:44], "big") == mn.sa("mh", True).spi
    # The HA's inbound rule puts the HoA back; then ESP and the MH as vmip's MN builds it.
    inner = decap(wire[:8] + mn.hoa.packed + wire[24:], 40, _ha_end(mn, True), 0.0)
    reference = MobileNode(mn.hoa, HA_ADDRESS, clock_now=0.0, initial_sequence=1)
    reference.set_coa(coa, 0.0)
    assert inner == reference.datagrams_to_send(0.0)[0].packet
    bu = parse_mh(inner[40:], mn.hoa, HA_ADDRESS)
    assert isinstance(bu, BindingUpdate) and bu.ack and bu.home_registration


def test_a_move_takes_a_new_coa_and_every_bu_a_new_sequence_number() -> None:
    emulated = EmulatedMn(make_mns(1)[0], 0.0)
    first = emulated.binding_update(0.0)
    second = emulated.binding_update(0.0, move=True)
    assert first[8:24] != second[8:24] == emulated.coa.packed
    assert emulated.sequence == 2


def _ba_wire(mn, sequence: int, coa: IPv6Address, status: int = 0) -> bytes:
    inner = build_mh_packet(BindingAck(status, sequence, 105), HA_ADDRESS, mn.hoa)
    protected = transport_encap(inner, _ha_end(mn, False), 0.0)
    return protected[:24] + coa.packed + protected[40:]   # the HA's outbound rule: to the CoA


def test_a_ba_is_decrypted_and_matched_by_its_sequence_number() -> None:
    mn = make_mns(1)[0]
    emulated = EmulatedMn(mn, 0.0)
    ba = emulated.binding_ack(_ba_wire(mn, 7, emulated.coa), 0.0)
    assert isinstance(ba, BindingAck) and ba.sequence == 7 and ba.accepted


def test_a_tampered_ba_is_refused() -> None:
    mn = make_mns(1)[0]
    emulated = EmulatedMn(mn, 0.0)
    wire = bytearray(_ba_wire(mn, 7, emulated.coa))
    wire[-1] ^= 1
    assert emulated.binding_ack(bytes(wire), 0.0) is None
    assert emulated.binding_ack(b"\x60" + bytes(60), 0.0) is None


# --- statistics -------------------------------------------------------------------------------

def test_percentile_interpolates_between_ranks() -> None:
    samples = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 100) == 5.0
    assert percentile(samples, 25) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _step(rate: float, *, lost: int = 0, p99: float = 1.0, in_step: float = 1.0) -> dict:
    sent = int(rate * 3)
    return {"offered_bu_per_s": rate, "sent": sent, "answered": sent - lost, "lost": lost,
            "answered_in_step": int(sent * in_step), "behind": False,
            "bu_ba_ms": {"p50": p99 / 2, "p99": p99}}


def test_the_highest_sustained_rate_stops_at_the_first_failed_step() -> None:
    steps = [_step(100), _step(200), _step(400, lost=3), _step(700)]
    assert highest_sustained(steps)["offered_bu_per_s"] == 200
    # Nothing lost but the HA fell behind (BAs came after the step): not sustained.
    steps = [_step(100), _step(200, in_step=0.6)]
    assert highest_sustained(steps)["offered_bu_per_s"] == 100
    steps = [_step(100, p99=10), _step(200, p99=80)]
    assert highest_sustained(steps, p99_limit_ms=50)["offered_bu_per_s"] == 100
    assert highest_sustained([_step(100, lost=1)]) is None


def test_rates_must_increase() -> None:
    assert parse_rates("10,20,40") == [10, 20, 40]
    for text in ("20,10", "0,10", ""):
        with pytest.raises(ValueError):
            parse_rates(text)


def test_proc_readers_read_this_process() -> None:
    assert proc_rss_bytes(os.getpid()) > 1 << 20
    assert proc_cpu_seconds(os.getpid()) > 0


# --- one real run -----------------------------------------------------------------------------

@pytest.mark.root
def test_swarm_of_20_holds_every_binding(tmp_path) -> None:
    prefix = f"vsw{os.getpid()}"
    out = tmp_path / "swarm.json"
    cmd = [sys.executable, str(SWARM), "--mns", "20", "--json", str(out), "--rates", "20,40",
           "--step-seconds", "1", "--grace", "1", "--time-limit", "50", "--ns-prefix", prefix,
           "--restart"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    finally:
        # Only this test's namespaces: another swarm may be running on the machine.
        for side in ("ha", "mn"):
            subprocess.run(["ip", "netns", "del", f"{prefix}-{side}"], capture_output=True,
                           check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["mns"] == 20
    assert result["bindings"] == 20
    assert result["registration"]["complete"]
    for key in ("bu_per_s", "ha_rss_bytes_per_binding", "ha_cpu_percent"):
        assert isinstance(result[key], (int, float)), key
    assert set(result["bu_ba_ms"]) >= {"p50", "p99"}
    assert result["rounds"] and result["rounds"][0][0]["sent"] > 0
    assert result["ha_exit"] == 0
    # Restarted on its sequence-number state: every MN is accepted again.
    restart = result["restart"]
    assert restart["first_exit"] == 0 and restart["state_file_bytes"] > 0
    assert restart["bindings"] == 20 and restart["registration"]["statuses"] == {"0": 20}
    assert f"{prefix}-ha" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                text=True, check=False).stdout
