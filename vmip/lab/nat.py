"""The router's IPv4 NAT for the lte links (nftables).

pyroute2's nftables support cannot yet express NAT statements, so the
ruleset is handed to the ``nft`` binary, run inside vmip-net.  IPv6 is
routed, not translated: only the ``ip`` family is touched.
"""

from __future__ import annotations

import shutil

from vmip.lab.errors import LabPrerequisiteError
from vmip.lab.netns import run_in
from vmip.lab.topology import LabPlan

#: Our table in vmip-net; the link-emulation rules (iptables-nft) live in others.
NAT_TABLE = "vmip_lab"


def nat_ruleset(plan: LabPlan) -> str:
    """An nft script that (re)defines the lab's NAT table atomically.

    Declaring then deleting the table first makes the script idempotent: nft
    applies the whole file as one transaction, so there is no moment without
    NAT.
    """
    inside = ", ".join(str(net) for net in plan.nat_inside_networks)
    return f"""\
table ip {NAT_TABLE}
delete table ip {NAT_TABLE}
table ip {NAT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {{ {inside} }} snat to {plan.nat_address}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        # Like a carrier-grade NAT, let in only replies to what the inside
        # sent (endpoint-dependent filtering, RFC 4787 section 5).
        ip daddr {{ {inside} }} ct state established,related accept
        ip daddr {{ {inside} }} drop
    }}
}}
"""


def nft_binary() -> str:
    path = shutil.which("nft")
    if path is None:
        raise LabPrerequisiteError(
            "the 'nft' command is missing; the lab's lte NAT needs it. "
            "Hint: apt-get install nftables")
    return path


def apply_nat(plan: LabPlan) -> None:
    run_in(plan.router_netns, [nft_binary(), "-f", "-"], input=nat_ruleset(plan), check=True,
           timeout=15)
