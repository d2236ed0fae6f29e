"""The demo's traffic agent with two probe classes, both ways, in a namespace of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmip.demo.traffic import build_parser

REPO = Path(__file__).resolve().parents[2]
MN, CN = "fd00:5::10", "fd00:5::20"


def test_probe_class_option_is_name_equals_port() -> None:
    args = build_parser().parse_args(["--role", "mn", "--local", MN, "--peer", CN, "--out", "o",
                                      "--status", "s", "--probe-class", "duplicate=5002",
                                      "--probe-class", "best=5003"])
    assert args.probe_class == [("duplicate", 5002), ("best", 5003)]
    for bad in ("duplicate", "=5002", "best=0", "best=70000", "best=x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--role", "mn", "--local", MN, "--peer", CN, "--out", "o",
                                       "--status", "s", "--probe-class", bad])


@pytest.mark.root
@pytest.mark.timeout(60)
def test_two_probe_classes_flow_both_ways_on_their_own_ports(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux) for a private network namespace")
    agent = [sys.executable, "-m", "vmip.demo.traffic", "--rate", "50", "--duration", "2",
             "--probe-class", "duplicate=5002", "--probe-class", "best=5003"]

    def role(name: str, local: str, peer: str) -> str:
        return " ".join([*agent, "--role", name, "--local", local, "--peer", peer,
                         "--out", str(tmp_path / f"{name}.json"),
                         "--status", str(tmp_path / f"{name}.status")])

    script = (f"ip link set lo up && ip -6 addr add {MN}/128 dev lo nodad && "
              f"ip -6 addr add {CN}/128 dev lo nodad && "
              f"({role('cn', CN, MN)} & sleep 0.3; {role('mn', MN, CN)}; wait)")
    done = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                          text=True, timeout=50, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("mn", "cn"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        classes = record["probe_classes"]
        assert {k: v["port"] for k, v in classes.items()} == {"duplicate": 5002, "best": 5003}
        for probe_class in classes.values():
            assert probe_class["sent"] >= 50
            seqs = [a[0] for a in probe_class["arrivals"]]
            # The peer's probes of this class, on this class's port, in order (the
            # CN's first ones went before the MN's agent listened).
            assert len(seqs) >= 40 and seqs == sorted(set(seqs))
        # The first class is also the record's plain "arrivals", as before classes existed.
        assert record["arrivals"] == classes["duplicate"]["arrivals"]
    assert json.loads((tmp_path / "cn.json").read_text())["tcp"]["bytes"] > 0
