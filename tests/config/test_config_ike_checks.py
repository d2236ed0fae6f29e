"""``vmip check`` on IKE configs: what cannot work is refused with the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vmip.config.keyfile import write_key_file

CONFIG = """
[node]
name = "a"
roles = ["cn"]

[tun]
name = "vmip0"
addresses = ["2001:db8:a::1/64"]

[[link]]
name = "esp0"
driver = "rfc3948"
{bind}
port = 4500

[[peer]]
name = "gw"
prefixes = ["2001:db8:ff::2/128"]
endpoint = "[2001:db8:ff::2]:4500"
framing = "rfc3948"

[keys]
mode = "ike"

[ike]
psk_file = "ike.psk"
dpd_interval = {dpd}

[[ike.peer]]
name = "gw"
address = "2001:db8:ff::2"
initiate = true
"""


def _check(tmp_path: Path, bind: str, dpd: str = "30"):
    write_key_file(tmp_path / "ike.psk", bytes(range(32)))
    path = tmp_path / "a.toml"
    path.write_text(CONFIG.format(bind=bind, dpd=dpd))
    return subprocess.run([sys.executable, "-m", "vmip", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_rfc3948_link_without_bind_is_refused_in_ike_mode(tmp_path):
    result = _check(tmp_path, "")
    assert result.returncode != 0
    assert "ike.peer[0].address" in result.stderr and "bind =" in result.stderr


def test_rfc3948_link_with_bind_passes_and_dpd_is_checked(tmp_path):
    assert _check(tmp_path, 'bind = "2001:db8:ff::1"').returncode == 0
    result = _check(tmp_path, 'bind = "2001:db8:ff::1"', dpd="-1")
    assert result.returncode != 0 and "ike.dpd_interval" in result.stderr
