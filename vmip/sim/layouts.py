"""SA layouts for the simulated world, on top of the lab's generated configs.

The lab protects everything between an MN's home address and the CN with
one SA pair ("mixed": MH and data together, draft §5.1.3 first bullet).
Such an SA's inbound MH rule accepts any on-wire source (draft §3.1 rule
2), so it also lets data from an unproven CoA through, and hides whether
the CN's data rules follow draft §4.5.1.

``split`` is the draft's own layout (§5.2.2 examples 1-3): between each MN
and the CN, one SA pair for Mobility Header only and another for data
(UDP, TCP, ICMPv6), each with policies of its own.  The MN–HA and MN–MN
SAs are left as the lab makes them.  Static keys only (IKE would negotiate
the same split from the policies, but the lab's IKE peers name one pair).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from vmip.compat import tomllib
from vmip.config.keyfile import write_key_file
from vmip.ipsec.suites import suite
from vmip.lab import configs as lab_configs
from vmip.lab.topology import LabPlan
from vmip.tomlwriter import dump_toml

LAYOUTS = ("lab", "split")
#: SPI digit of the MN–CN Mobility Header SAs (configs/README.md's plan has 1-4).
_MH_CN_DIGIT = 5
#: Data protocols the data SA carries (everything the scenarios send end to end).
DATA_PROTOCOLS = ("udp", "tcp", "icmpv6")
#: Between the MN–HA MH policies (10) and the clear-text class (15).
_PRIORITY_MH_CN = 12


def _host(address: Any) -> str:
    return f"{address}/128"


def _policy(name: str, direction: str, src: str, dst: str, priority: int, sa: str,
            protocol: str) -> dict[str, Any]:
    return {"name": name, "direction": direction, "src": src, "dst": dst, "protocol": protocol,
            "action": "protect", "sa": [sa], "priority": priority}


def _mh_sa(name: str, spi: int, direction: str, src: str, dst: str, key: str) -> dict[str, Any]:
    return {"name": name, "spi": spi, "direction": direction, "src": src, "dst": dst,
            "mode": "transport", "suite": lab_configs.PAYLOAD_SUITE,
            "key_file": f"keys/{key}", "esn": False}


def _split_policies(policies: list[dict[str, Any]], data_names: set[str],
                    mh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """*policies* with each one named in *data_names* split per data protocol, *mh* first."""
    result = list(mh)
    for policy in policies:
        if policy["name"] not in data_names:
            result.append(policy)
            continue
        for protocol in DATA_PROTOCOLS:
            result.append({**policy, "name": f"{policy['name']}-{protocol}",
                           "protocol": protocol})
    return result


def apply_split(plan: LabPlan, paths: dict[str, Path]) -> None:
    """Rewrite the configs at *paths* (from the lab's generator) to the ``split`` layout."""
    cn = str(plan.node("cn").overlay_addresses[0])
    documents = {name: tomllib.loads(path.read_text()) for name, path in paths.items()}
    if documents["cn"]["keys"]["mode"] != "static":
        raise ValueError("the split layout needs static keys")
    mobiles = [node for node in plan.nodes if node.is_mobile]
    cn_mh_policies: list[dict[str, Any]] = []
    cn_data: set[str] = set()
    length = suite(lab_configs.PAYLOAD_SUITE).enc_key_len
    for index, node in enumerate(mobiles, start=1):
        name, hoa = node.name, str(node.overlay_addresses[0])
        up_spi = (index << 12) | (_MH_CN_DIGIT << 8) | 1
        down_spi = up_spi + 1
        up_key, down_key = f"{name}-to-cn-mh.key", f"cn-to-{name}-mh.key"
        for key in (up_key, down_key):
            material = secrets.token_bytes(length)
            for holder in (name, "cn"):
                write_key_file(lab_configs.key_path(plan, holder, key), material)
        mobile = documents[name]
        mobile["keys"]["sa"] += [
            _mh_sa(f"{name}-cn-mh-out", up_spi, "out", hoa, cn, up_key),
            _mh_sa(f"{name}-cn-mh-in", down_spi, "in", cn, hoa, down_key)]
        mobile["policy"] = _split_policies(mobile["policy"], {"to-cn", "from-cn"}, [
            _policy("mh-to-cn", "out", _host(hoa), _host(cn),
                    _PRIORITY_MH_CN, f"{name}-cn-mh-out", "mh"),
            _policy("mh-from-cn", "in", _host(cn), _host(hoa),
                    _PRIORITY_MH_CN, f"{name}-cn-mh-in", "mh")])
        documents["cn"]["keys"]["sa"] += [
            _mh_sa(f"{name}-mh-in", up_spi, "in", hoa, cn, up_key),
            _mh_sa(f"{name}-mh-out", down_spi, "out", cn, hoa, down_key)]
        cn_mh_policies += [
            _policy(f"mh-from-{name}", "in", _host(hoa), _host(cn),
                    _PRIORITY_MH_CN, f"{name}-mh-in", "mh"),
            _policy(f"mh-to-{name}", "out", _host(cn), _host(hoa),
                    _PRIORITY_MH_CN, f"{name}-mh-out", "mh")]
        cn_data |= {f"from-{name}", f"to-{name}"}
    documents["cn"]["policy"] = _split_policies(documents["cn"]["policy"], cn_data,
                                                cn_mh_policies)
    for name, document in documents.items():
        lab_configs.write_private_file(paths[name], dump_toml(document))
