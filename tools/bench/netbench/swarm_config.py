"""Provisioning of the swarm: N mobile nodes and the one home agent config that serves them.

Each emulated MN gets a home address in the home prefix, an MH transport
SA pair with the HA (ESP, aes128cbc-sha256, as configs/mn.toml and
configs/ha.toml: BU/BA between HoA and HA, RFC 6275 §5.1 / RFC 3776
§5.2.1) with fresh random keys, and optionally the ESP tunnel SA pair the
HA migrates to the CoA.  The HA's side is written as a vmip config (TOML,
keys 0600); the MN side keeps its keys in memory (the emulator is the only
user).

Static keys rather than IKE: the point is the cost of *registrations* at
the HA, and a keyed swarm of 10,000 MNs with IKEv2 would first measure
10,000 IKE_SA_INIT/IKE_AUTH exchanges (Diffie-Hellman, signatures or PSK)
and the CHILD_SA installs, which the HA does once per MN and not per BU;
static SAs keep the ESP work per BU identical and the start-up honest to
time.

The SA objects are the lab's own (:class:`vmip.lab.configs.LabSa`: names,
key file names, config entries), with the suites, priorities and lifetimes
the lab uses; only the SPI plan and the address plan are the swarm's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from vmip.config.keyfile import write_key_file
from vmip.lab.configs import (
    BINDING_LIFETIME,
    MH_SUITE,
    PAYLOAD_SUITE,
    PRIORITY_BYPASS,
    PRIORITY_MH,
    PRIORITY_TUNNEL,
    PRIORITY_UNPROTECTED_MH,
    REPLAY_WINDOW,
    LabSa,
    write_private_file,
)
from vmip.tomlwriter import dump_toml

HOME_PREFIX = IPv6Network("2001:db8:100::/64")
HA_ADDRESS = IPv6Address("2001:db8:100::1")
#: HoA of MN i: 2001:db8:100::1:0 + i (room for 65,536 MNs).
HOA_BASE = int(HA_ADDRESS) - 1 + 0x10000
#: Visited networks: CoA generation g of MN i is 2001:db8:c<g>::<i+1> (g < 4096).
COA_BASE = int(IPv6Address("2001:db8:c000::"))
#: The underlay between the two namespaces (RFC 5737 documentation prefix).
HA_UNDERLAY = "192.0.2.1"
MN_UNDERLAY = "192.0.2.2"
OVERLAY_PORT = 6275
HA_NAME = "ha"
TUN_NAME = "vmip0"
LINK_NAME = "swarm0"
MAX_MNS = 65536
#: SPI plan: 0x1<i:5 hex><k><d>, k 1 MH / 2 tunnel, d 1 sent by the MN, 2 received by it.
_SPI_TOP = 0x10000000
_PURPOSE = {"mh": 1, "tunnel": 2}


def hoa_of(index: int) -> IPv6Address:
    return IPv6Address(HOA_BASE + index)


def coa_of(index: int, generation: int) -> IPv6Address:
    """The care-of address of MN *index* on its *generation*-th visited network."""
    return IPv6Address(COA_BASE + (generation % 4096) * (1 << 80) + index + 1)


def spi_of(index: int, purpose: str, from_mobile: bool) -> int:
    return _SPI_TOP | (index << 8) | (_PURPOSE[purpose] << 4) | (1 if from_mobile else 2)


def mn_name(index: int) -> str:
    return f"m{index}"


@dataclass
class SwarmMn:
    """One emulated MN: its addresses, its SAs (as the lab models them) and their keys."""

    index: int
    hoa: IPv6Address
    sas: list[LabSa]
    #: Key file name -> key bytes; the same bytes the HA's key file holds.
    keys: dict[str, bytes] = field(repr=False)

    @property
    def name(self) -> str:
        return mn_name(self.index)

    def sa(self, purpose: str, from_mobile: bool) -> LabSa:
        return next(s for s in self.sas if s.purpose == purpose and s.from_mobile == from_mobile)

    def key_pair(self, sa: LabSa) -> tuple[bytes, bytes]:
        """(encryption key, authentication key) of *sa*; the second is b"" for AEAD."""
        files = {key: name for key, name, _ in sa.key_files}
        return self.keys[files["key_file"]], self.keys.get(files.get("auth_key_file", ""), b"")


def make_mns(count: int, *, tunnel: bool = False, rng=secrets.token_bytes) -> list[SwarmMn]:
    """*count* MNs with fresh random keys (``rng(n)`` gives n random bytes)."""
    if not 1 <= count <= MAX_MNS:
        raise ValueError(f"the swarm has 1 to {MAX_MNS} mobile nodes, not {count}")
    ha = str(HA_ADDRESS)
    mns = []
    for index in range(count):
        hoa = hoa_of(index)
        name = mn_name(index)
        ends = [("mh", str(hoa), ha, "transport", MH_SUITE)]
        if tunnel:
            # The tunnel SA names the CoA (draft §7.2); the HA migrates it on each move.
            ends.append(("tunnel", str(coa_of(index, 0)), ha, "tunnel", PAYLOAD_SUITE))
        sas = []
        for purpose, mobile_end, ha_end, mode, suite_name in ends:
            for from_mobile in (True, False):
                src, dst = (mobile_end, ha_end) if from_mobile else (ha_end, mobile_end)
                sas.append(LabSa(name, HA_NAME, purpose, from_mobile,
                                 spi_of(index, purpose, from_mobile), mode, suite_name, src, dst))
        keys = {file_name: rng(length) for sa in sas for _, file_name, length in sa.key_files}
        mns.append(SwarmMn(index, hoa, sas, keys))
    return mns


def _policy(name: str, direction: str, src: str, dst: str, action: str, priority: int,
            sa: str | None = None, protocol: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "direction": direction, "src": src, "dst": dst}
    if protocol is not None:
        entry["protocol"] = protocol
    entry["action"] = action
    if sa is not None:
        entry["sa"] = [sa]
    entry["priority"] = priority
    return entry


def ha_policies(mns: list[SwarmMn]) -> list[dict[str, Any]]:
    """configs/ha.toml's policies, once per MN (same names, same priorities)."""
    ha = f"{HA_ADDRESS}/128"
    policies = []
    for mn in mns:
        hoa = f"{mn.hoa}/128"
        policies += [
            _policy(f"mh-from-{mn.name}", "in", hoa, ha, "protect", PRIORITY_MH,
                    mn.sa("mh", True).name_at(HA_NAME), "mh"),
            _policy(f"mh-to-{mn.name}", "out", ha, hoa, "protect", PRIORITY_MH,
                    mn.sa("mh", False).name_at(HA_NAME), "mh"),
        ]
    # A Binding Update to the HA must come through ESP (RFC 6275 §5.1).
    policies.append(_policy("unprotected-mh", "in", "::/0", ha, "discard",
                            PRIORITY_UNPROTECTED_MH, protocol="mh"))
    for mn in mns:
        if not any(sa.purpose == "tunnel" for sa in mn.sas):
            continue
        hoa = f"{mn.hoa}/128"
        policies += [
            _policy(f"tunnel-to-{mn.name}", "out", "::/0", hoa, "protect", PRIORITY_TUNNEL,
                    mn.sa("tunnel", False).name_at(HA_NAME)),
            _policy(f"tunnel-from-{mn.name}", "in", hoa, "::/0", "protect", PRIORITY_TUNNEL,
                    mn.sa("tunnel", True).name_at(HA_NAME)),
        ]
    home = str(HOME_PREFIX)
    policies += [_policy("home-prefix-in", "in", "::/0", home, "bypass", PRIORITY_BYPASS),
                 _policy("home-prefix-out", "out", home, "::/0", "bypass", PRIORITY_BYPASS)]
    return policies


def ha_config(mns: list[SwarmMn], *, control_socket: Path, state_dir: Path,
              log_level: str = "info") -> dict[str, Any]:
    """The HA's config as a dict (schema: docs/configuration.md)."""
    return {
        "node": {"name": "swarm-ha", "roles": ["ha"]},
        "tun": {"name": TUN_NAME, "addresses": [f"{HA_ADDRESS}/64"], "mtu": 1400},
        "link": [{"name": LINK_NAME, "driver": "udp", "interface": LINK_NAME,
                  "bind": HA_UNDERLAY, "port": OVERLAY_PORT, "keepalive": 0}],
        "mobility": {"home_prefix": str(HOME_PREFIX), "binding_lifetime": BINDING_LIFETIME,
                     "tunnel": "esp"},
        "keys": {"mode": "static", "backend": "cryptography", "replay_window": REPLAY_WINDOW,
                 "state_dir": str(state_dir),
                 "sa": [sa.config_at(HA_NAME) for mn in mns for sa in mn.sas]},
        "policy": ha_policies(mns),
        "control": {"socket": str(control_socket)},
        "logging": {"level": log_level, "format": "text"},
    }


def write_ha_files(mns: list[SwarmMn], directory: Path, *, control_socket: Path,
                   state_dir: Path, log_level: str = "info") -> Path:
    """Write ``directory/ha.toml`` and ``directory/keys/*`` (0600); returns the config path."""
    keys = directory / "keys"
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    for mn in mns:
        for file_name, material in mn.keys.items():
            write_key_file(keys / file_name, material)
    path = directory / "ha.toml"
    text = dump_toml(ha_config(mns, control_socket=control_socket, state_dir=state_dir,
                               log_level=log_level),
                     f"vmip swarm: home agent for {len(mns)} emulated mobile nodes "
                     "(generated by tools/bench/swarm)")
    write_private_file(path, text)
    return path

