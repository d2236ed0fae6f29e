"""Per-node configs for the lab (schema: docs/configuration.md).

One function per node builds that node's config as a plain dict, so later
issues (IKE, mobility options) can extend one node without touching the
others; :func:`write_node_configs` renders them as TOML under the lab
directory and writes the key files they name.

Decisions (docs/lab.md):

- ``--driver raw`` (docs/lab.md, "The native lab"): the same nodes, SAs and
  policies over native IPv6: raw links bound to their interfaces (own
  on-wire addresses read there), raw peers without endpoints, the CN's TUN
  without the CN's address, both CoAs of the other MN as peers (no NAT).
- The overlay uses the ``udp`` driver over the **IPv4** underlay, so the
  MNs' lte links go through the router's NAT (the hard case: keepalives,
  locator learning).  Each MN link binds its own underlay address, so its
  datagrams leave through that link (source-based policy routing).
- The MNs know the HA and the CN as static peers; the HA and the CN learn
  the MNs' locators (docs/design.md §3), since NAT mappings cannot be known in
  advance.
- ``keys = "static"`` (the default): the SAs and policies of
  ``configs/*.toml`` (same SPI plan, same structure: MN-HA MH transport,
  MN-HA ESP tunnel, MN-CN transport, MN-MN2 transport), with fresh random
  keys written by
  :func:`write_static_keys`, never the published example keys.  The MN-HA
  payload tunnel is ESP (``mobility.tunnel = "esp"``).
- ``keys = "ike"``: the same policies without SA names, an ``[ike]``
  section and ``[[ike.peer]]`` entries whose ``policies`` become the
  proposed traffic selectors (docs/ike.md "The lab on IKE").  The MN
  initiates to the HA (from its CoA), to the CN (from its HoA, through the
  HA tunnel: draft appendix B) and to every MN after it in the plan; the HA
  knows each MN by each of its CoAs, the CN by its HoA.  One lab PSK
  (``keys/ike.psk``, 0600, fresh at each ``lab up``): the config has one
  ``psk_file`` per node, so per-pair keys would need a per-peer key file.
- Static SAs protect *all* traffic between each MN's HoA and the CN, and
  between the two MNs' HoAs, so IRO takes that traffic direct once bound
  (draft §3.6: only IPsec traffic is rerouted).  Each MN lists the CN and
  the other MN as correspondents (MN-MN: draft §5.2.2 examples 3 and 4).
- One documented **clear-text class** stays on the HA path: UDP to the CN's
  port 7 (echo, RFC 862) and the CN's answers from port 7.  The MN's
  policy puts it in the ESP tunnel to the HA (not end-to-end IPsec), the HA
  forwards it in clear to the CN, the CN bypasses it and answers to the HoA,
  which the underlay routes to the HA (docs/iro.md, "Clear-text class").
- The lab's SAs use 32-bit sequence numbers (``esn = false``): Wireshark
  4.0 cannot check ICVs over ESN SAs, and a lab capture should verify
  completely in tshark (docs/ipsec.md, "Limits of Wireshark 4.0").
- Static keys keep their sequence-number state in ``<lab_dir>/<node>/state``
  (``keys.state_dir``; docs/ipsec.md, "Static keys across restarts").
- ``LabPlan.multi_coa`` (``vmip demo --multi-coa``, ``vmip sim
  --multi-coa``; docs/multi-coa.md): the MN ``mn`` registers one binding
  per link (``multiple_care_of = true``, link quality probed every second:
  ``link_probe_interval = 1``) and both the MN and the CN carry
  the demo's ``[[flow]]`` tables, each about what that side sends: the
  interactive classes (UDP probes on port 5002, ping) duplicated on every
  bound path, the second probe stream (port 5003) and the TCP stream (5001)
  on the best path.  The HA and the CN keep at most two bindings per home
  address (``max_care_of_addresses = 2``, the MNs' two links: a third BID
  would be a bug, refused and counted).  ``mn2`` stays single-CoA, so the
  HA and the CN serve both kinds of MN at once.
- The control socket is ``/run/vmip/<netns>.sock``, where ``vmip`` client
  commands run inside the namespace look by default, so ``vmip lab exec mn
  -- vmip status`` needs no flag.  Logs go to standard error, which
  ``vmip lab start`` sends to ``<lab_dir>/<node>/vmip.log``.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmip.config.errors import ConfigError
from vmip.config.keyfile import read_key_file, write_key_file
from vmip.control.paths import socket_path_for_netns
from vmip.ipsec.suites import suite
from vmip.lab.errors import LabError, LabUsageError
from vmip.lab.topology import AccessLink, LabNode, LabPlan
from vmip.tomlwriter import dump_toml

TUN_NAME = "vmip0"
TUN_MTU = 1400
#: RFC 6275 lifetimes count 4-second units; 420 s = 105 units.
BINDING_LIFETIME = 420
#: Seconds between NAT keepalives on links behind NAT (RFC 3948 §4 suggests 20).
NAT_KEEPALIVE = 20
#: The schema's ``priority`` of each MN link: lower is preferred (wifi before lte).
LINK_PRIORITY = {"wifi0": 10, "lte0": 20}

#: How the lab keys its SAs: ``static`` now, ``ike`` once IKEv2 exists.
KEY_MODES = ("static", "ike")
DEFAULT_KEY_MODE = "static"
#: Suites of the lab's SAs, as in configs/*.toml.
MH_SUITE = "aes128cbc-sha256"
PAYLOAD_SUITE = "aes128gcm16"
REPLAY_WINDOW = 1024
#: Tunnel SAs expire as in the examples (no rekeying without IKE).
TUNNEL_LIFETIME = {"soft_seconds": 86000, "hard_seconds": 86400}
#: Policy priorities of configs/README.md: lower wins.
PRIORITY_MH = 10
PRIORITY_UNPROTECTED_MH = 50
PRIORITY_CN = 20
#: The clear-text class (UDP echo, port 7): above the CN's protect-all policies.
PRIORITY_CLEAR = 15
CLEAR_UDP_PORT = 7
PRIORITY_TUNNEL = 100
PRIORITY_BYPASS = 1000

#: The demo's traffic classes (vmip.demo.traffic), by port; the multi-CoA
#: configs map them to ``[[flow]]`` send modes.
DUPLICATE_PROBE_PORT = 5002
BEST_PROBE_PORT = 5003
TCP_STREAM_PORT = 5001
#: ``link_probe_interval`` of the multi-CoA lab's MN (seconds).
MULTI_COA_PROBE_INTERVAL = 1

#: ``max_care_of_addresses`` of the HA and the CN in the multi-CoA lab.
MULTI_COA_MAX_BINDINGS = 2
#: The MN that registers one binding per link in the multi-CoA lab.
MULTI_COA_MN = "mn"

HEADER = """\
Generated by 'vmip lab up' for lab node {node} (namespace {netns}).
Rewritten each time the lab is brought up: edit a copy, not this file."""
#: Added for static keys: TOML integers are written in decimal.
STATIC_KEYS_HEADER = """
Static SAs with fresh random keys (keys/, 0600; the same key at both ends).
SPIs follow configs/README.md, 0x<m><p>0<d>, written in decimal here
(4353 = 0x1101: mn, MH with the HA, sent by the MN)."""


#: The lab's IKE key file (one PSK for the lab, see the module notes) and suites.
IKE_PSK_FILE = "ike.psk"
IKE_PSK_BYTES = 32
IKE_PROPOSALS = ["aes128gcm16-prfsha256-ecp256"]
IKE_ESP_PROPOSALS = [PAYLOAD_SUITE, MH_SUITE]
IKE_KEYS_HEADER = """
SAs negotiated by IKEv2 (vmip's own): [[ike.peer]] policies name the
protect policies proposed as traffic selectors; keys/ike.psk is the lab PSK."""


def check_key_mode(keys: str) -> None:
    """Refuse key modes the lab cannot build (exit status 2)."""
    if keys not in KEY_MODES:
        raise LabUsageError(f"--keys must be one of {', '.join(KEY_MODES)}, not {keys!r}")


# --- the static SA plan ------------------------------------------------------------------

#: SPI digit of each kind of SA (configs/README.md "SPI plan": 0x<m><p>0<d>).
_PURPOSE_DIGIT = {"mh": 1, "tunnel": 2, "cn": 3, "mn": 4}


@dataclass(frozen=True)
class LabSa:
    """One SA of the lab's static plan; both of its ends are built from it.

    ``sender`` protects with it, ``receiver`` checks with it.  ``src``/``dst``
    are the SA-level addresses: home addresses for transport SAs (IRO
    rewrites them on the wire, never the SA), the CoA and the HA for the
    tunnel SAs (draft §7.2).
    """

    mobile: str
    peer: str
    purpose: str
    from_mobile: bool
    spi: int
    mode: str
    suite: str
    src: str
    dst: str

    @property
    def sender(self) -> str:
        return self.mobile if self.from_mobile else self.peer

    @property
    def receiver(self) -> str:
        return self.peer if self.from_mobile else self.mobile

    def direction_at(self, node: str) -> str:
        return "out" if node == self.sender else "in"

    def name_at(self, node: str) -> str:
        """The SA's name in *node*'s config, as in configs/*.toml."""
        direction = self.direction_at(node)
        if self.purpose == "mn":
            # MN-MN: each end names the SA after itself and the other MN.
            other = self.peer if node == self.mobile else self.mobile
            return f"{node}-{other}-{direction}"
        if node == self.mobile:
            kind = {"mh": "ha-mh", "tunnel": "ha-tunnel", "cn": "cn"}[self.purpose]
            return f"{self.mobile}-{kind}-{direction}"
        if self.purpose == "cn":
            return f"{self.mobile}-{direction}"
        return f"{self.mobile}-{self.purpose}-{direction}"

    @property
    def key_files(self) -> list[tuple[str, str, int]]:
        """``(config key, file name, length)`` of each key: named after who sends with it."""
        info = suite(self.suite)
        stem = f"{self.sender}-to-{self.receiver}"
        if self.purpose not in ("cn", "mn"):
            stem += f"-{self.purpose}"
        if info.aead:
            return [("key_file", f"{stem}.key", info.enc_key_len)]
        return [("key_file", f"{stem}.enc", info.enc_key_len),
                ("auth_key_file", f"{stem}.auth", info.auth_key_len)]

    def config_at(self, node: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name_at(node), "spi": self.spi, "direction": self.direction_at(node),
            "src": self.src, "dst": self.dst, "mode": self.mode, "suite": self.suite,
        }
        for key, file_name, _ in self.key_files:
            entry[key] = f"keys/{file_name}"
        entry["esn"] = False
        if self.mode == "tunnel":
            entry["lifetime"] = dict(TUNNEL_LIFETIME)
        return entry


def _preferred_coa(node: LabNode) -> str:
    # The tunnel SA starts on the preferred link's CoA; vmip moves it (MIGRATE).
    link = min(node.links, key=lambda link: LINK_PRIORITY.get(link.name, 50))
    return str(link.node_ipv6.ip)


def static_sas(plan: LabPlan) -> list[LabSa]:
    """Every SA of the lab: per MN, MH and tunnel with the HA, transport with the CN;
    per pair of MNs, transport between their home addresses (SPI 0x<m>40<d>, m
    the first MN's index, d = 1 for what the first MN sends)."""
    ha = str(plan.node("ha").overlay_addresses[0])
    cn = str(plan.node("cn").overlay_addresses[0])
    mobiles = [node for node in plan.nodes if node.is_mobile]
    sas = []
    for index, node in enumerate(mobiles, start=1):
        hoa = str(node.overlay_addresses[0])
        coa = _preferred_coa(node)
        ends = {"mh": ("ha", hoa, ha, "transport", MH_SUITE),
                "tunnel": ("ha", coa, ha, "tunnel", PAYLOAD_SUITE),
                "cn": ("cn", hoa, cn, "transport", PAYLOAD_SUITE)}
        for purpose, (peer, mobile_end, peer_end, mode, suite_name) in ends.items():
            for from_mobile, last_digit in ((True, 1), (False, 2)):
                src, dst = (mobile_end, peer_end) if from_mobile else (peer_end, mobile_end)
                spi = (index << 12) | (_PURPOSE_DIGIT[purpose] << 8) | last_digit
                sas.append(LabSa(node.name, peer, purpose, from_mobile, spi, mode, suite_name,
                                 src, dst))
    for index, node in enumerate(mobiles, start=1):
        hoa = str(node.overlay_addresses[0])
        for other in mobiles[index:]:
            other_hoa = str(other.overlay_addresses[0])
            for from_mobile, last_digit in ((True, 1), (False, 2)):
                src, dst = (hoa, other_hoa) if from_mobile else (other_hoa, hoa)
                spi = (index << 12) | (_PURPOSE_DIGIT["mn"] << 8) | last_digit
                sas.append(LabSa(node.name, other.name, "mn", from_mobile, spi, "transport",
                                 PAYLOAD_SUITE, src, dst))
    return sas


def _sas_of(plan: LabPlan, name: str) -> list[LabSa]:
    return [sa for sa in static_sas(plan) if name in (sa.mobile, sa.peer)]


def _keys_section(plan: LabPlan, name: str) -> dict[str, Any]:
    # Sequence-number state (docs/ipsec.md) lives with the node's keys in the
    # lab directory, so a fresh lab with fresh keys starts a fresh state.
    return {"mode": "static", "backend": "cryptography", "replay_window": REPLAY_WINDOW,
            "state_dir": str(plan.node_dir(name) / "state"),
            "sa": [sa.config_at(name) for sa in _sas_of(plan, name)]}


def _policy(name: str, direction: str, src: str, dst: str, action: str, priority: int,
            sa: str | None = None, protocol: str | None = None, *,
            src_ports: int | None = None, dst_ports: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "direction": direction, "src": src, "dst": dst}
    if protocol is not None:
        entry["protocol"] = protocol
    if src_ports is not None:
        entry["src_ports"] = src_ports
    if dst_ports is not None:
        entry["dst_ports"] = dst_ports
    entry["action"] = action
    if sa is not None:
        entry["sa"] = [sa]
    entry["priority"] = priority
    return entry


def _host(address: Any) -> str:
    return f"{address}/128"


def _mobile_policies(plan: LabPlan, node: LabNode) -> list[dict[str, Any]]:
    hoa, ha = _host(node.overlay_addresses[0]), _host(plan.node("ha").overlay_addresses[0])
    cn = _host(plan.node("cn").overlay_addresses[0])
    sa = {(s.purpose, s.direction_at(node.name)): s.name_at(node.name)
          for s in _sas_of(plan, node.name) if s.purpose != "mn"}
    mobile_peers = []
    for s in _sas_of(plan, node.name):
        if s.purpose != "mn":
            continue
        other = s.peer if s.mobile == node.name else s.mobile
        other_hoa = _host(plan.node(other).overlay_addresses[0])
        # Everything between the two home addresses: ESP transport, so IRO can
        # take it direct once each MN holds the other's binding (draft §5.2.2).
        if s.direction_at(node.name) == "out":
            mobile_peers.append(_policy(f"to-{other}", "out", hoa, other_hoa, "protect",
                                        PRIORITY_CN, s.name_at(node.name)))
        else:
            mobile_peers.append(_policy(f"from-{other}", "in", other_hoa, hoa, "protect",
                                        PRIORITY_CN, s.name_at(node.name)))
    mobile_peers.sort(key=lambda policy: policy["direction"] != "out")
    return [
        # BU/BA with the HA: ESP transport between HoA and HA (RFC 3776 §5.2.1, draft §7).
        _policy("mh-to-ha", "out", hoa, ha, "protect", PRIORITY_MH, sa[("mh", "out")], "mh"),
        _policy("mh-from-ha", "in", ha, hoa, "protect", PRIORITY_MH, sa[("mh", "in")], "mh"),
        # The clear-text class: UDP echo with the CN rides the HA tunnel, never
        # end-to-end IPsec, so no binding ever moves it off the HA path (§3.6).
        _policy("echo-to-cn", "out", hoa, cn, "protect", PRIORITY_CLEAR,
                sa[("tunnel", "out")], "udp", dst_ports=CLEAR_UDP_PORT),
        _policy("echo-from-cn", "in", cn, hoa, "protect", PRIORITY_CLEAR,
                sa[("tunnel", "in")], "udp", src_ports=CLEAR_UDP_PORT),
        # Everything else with the CN, ESP transport HoA <-> CN: nothing
        # unprotected flows direct (§3.6).
        _policy("to-cn", "out", hoa, cn, "protect", PRIORITY_CN, sa[("cn", "out")]),
        _policy("from-cn", "in", cn, hoa, "protect", PRIORITY_CN, sa[("cn", "in")]),
        *mobile_peers,
        # The rest goes through the HA, in the ESP tunnel (draft appendix D).
        _policy("via-ha-out", "out", hoa, "::/0", "protect", PRIORITY_TUNNEL,
                sa[("tunnel", "out")]),
        _policy("via-ha-in", "in", "::/0", hoa, "protect", PRIORITY_TUNNEL,
                sa[("tunnel", "in")]),
    ]


def _ha_policies(plan: LabPlan) -> list[dict[str, Any]]:
    ha = _host(plan.node("ha").overlay_addresses[0])
    mobiles = [node for node in plan.nodes if node.is_mobile]
    policies = []
    for node in mobiles:
        hoa = _host(node.overlay_addresses[0])
        sa = {(s.purpose, s.direction_at("ha")): s.name_at("ha")
              for s in _sas_of(plan, node.name) if s.peer == "ha"}
        policies += [
            _policy(f"mh-from-{node.name}", "in", hoa, ha, "protect", PRIORITY_MH,
                    sa[("mh", "in")], "mh"),
            _policy(f"mh-to-{node.name}", "out", ha, hoa, "protect", PRIORITY_MH,
                    sa[("mh", "out")], "mh"),
        ]
    # A Binding Update must come through ESP (RFC 6275 §5.1): drop any other MH.
    policies.append(_policy("unprotected-mh", "in", "::/0", ha, "discard",
                            PRIORITY_UNPROTECTED_MH, protocol="mh"))
    for node in mobiles:
        hoa = _host(node.overlay_addresses[0])
        sa = {(s.purpose, s.direction_at("ha")): s.name_at("ha")
              for s in _sas_of(plan, node.name) if s.peer == "ha"}
        policies += [
            _policy(f"tunnel-to-{node.name}", "out", "::/0", hoa, "protect", PRIORITY_TUNNEL,
                    sa[("tunnel", "out")]),
            _policy(f"tunnel-from-{node.name}", "in", hoa, "::/0", "protect", PRIORITY_TUNNEL,
                    sa[("tunnel", "in")]),
        ]
    home = str(plan.home_prefix)
    # The rest of the home prefix's traffic passes as it is (MN-CN traffic in it is ESP).
    policies += [_policy("home-prefix-in", "in", "::/0", home, "bypass", PRIORITY_BYPASS),
                 _policy("home-prefix-out", "out", home, "::/0", "bypass", PRIORITY_BYPASS)]
    return policies


def _cn_policies(plan: LabPlan) -> list[dict[str, Any]]:
    cn = _host(plan.node("cn").overlay_addresses[0])
    home = str(plan.home_prefix)
    # The clear-text class (UDP echo, port 7) comes and goes through the HA, in clear.
    policies = [
        _policy("echo-from-home", "in", home, cn, "bypass", PRIORITY_CLEAR, protocol="udp",
                dst_ports=CLEAR_UDP_PORT),
        _policy("echo-to-home", "out", cn, home, "bypass", PRIORITY_CLEAR, protocol="udp",
                src_ports=CLEAR_UDP_PORT),
    ]
    for node in (node for node in plan.nodes if node.is_mobile):
        hoa = _host(node.overlay_addresses[0])
        sa = {s.direction_at("cn"): s.name_at("cn")
              for s in _sas_of(plan, node.name) if s.peer == "cn"}
        policies += [
            _policy(f"from-{node.name}", "in", hoa, cn, "protect", PRIORITY_CN, sa["in"]),
            _policy(f"to-{node.name}", "out", cn, hoa, "protect", PRIORITY_CN, sa["out"]),
        ]
    policies += [_policy("other-in", "in", "::/0", "::/0", "bypass", PRIORITY_BYPASS),
                 _policy("other-out", "out", "::/0", "::/0", "bypass", PRIORITY_BYPASS)]
    return policies


# --- node configs ---------------------------------------------------------------------------

def demo_flows(remote: str, *, ports: str) -> list[dict[str, Any]]:
    """The multi-CoA demo's ``[[flow]]`` tables of one side (first match wins).

    *remote* is the other side's SA-level address (the inner destination of
    what this side sends); *ports* says which of the packet's ports is the
    demo's well-known one: ``remote_ports`` at the MN (it talks to the CN's
    ports), ``local_ports`` at the CN (it answers from them).  The probes on
    5002 and ping are interactive: one copy on every bound path, so a link
    that dies loses none of them.  The probes on 5003 and the TCP stream
    take the best path only (no extra bytes).
    """
    if ports not in ("remote_ports", "local_ports"):
        raise ValueError(f"ports must be remote_ports or local_ports, not {ports!r}")
    return [
        {"name": "probes-duplicate", "protocol": "udp", "remote": remote,
         ports: str(DUPLICATE_PROBE_PORT), "send": "duplicate"},
        {"name": "ping-duplicate", "protocol": "icmpv6", "remote": remote, "send": "duplicate"},
        {"name": "probes-best", "protocol": "udp", "remote": remote,
         ports: str(BEST_PROBE_PORT), "send": "best"},
        {"name": "tcp-best", "protocol": "tcp", "remote": remote,
         ports: str(TCP_STREAM_PORT), "send": "best"},
    ]


def _endpoint(link: AccessLink, port: int) -> str:
    return f"{link.node_ipv4.ip}:{port}"


def _common(node: LabNode, roles: list[str]) -> dict[str, Any]:
    return {"node": {"name": node.name, "roles": roles}}


def _control_and_logging(plan: LabPlan, node: LabNode) -> dict[str, Any]:
    # Where 'vmip status' run inside the namespace looks (vmip.control.paths);
    # no log file: 'vmip lab start' sends standard error to <node>/vmip.log.
    return {
        "control": {"socket": str(socket_path_for_netns(node.netns))},
        "logging": {"level": "info", "format": "text"},
    }


def _server_link(plan: LabPlan, node: LabNode) -> dict[str, Any]:
    link = node.links[0]
    if plan.driver == "raw":
        # Native IPv6: the node's own on-wire addresses are read from the
        # interface (own_addresses), the kernel routes what it sends.
        return {"name": link.name, "driver": "raw", "interface": link.name, "priority": 10}
    return {"name": link.name, "driver": "udp", "interface": link.name, "bind": "0.0.0.0",
            "port": plan.overlay_port, "priority": 10, "keepalive": 0}


def _framed(plan: LabPlan, peer: dict[str, Any]) -> dict[str, Any]:
    """A peer as the plan's driver reaches it: raw peers have no endpoint (the OS routes)."""
    if plan.driver == "raw":
        peer = {k: v for k, v in peer.items() if k != "endpoint"}
        peer["framing"] = "raw"
    return peer


def _ha_peer(plan: LabPlan, *, default: bool) -> dict[str, Any]:
    ha = plan.node("ha")
    return _framed(plan, {
        "name": "ha",
        # The HA's underlay address and its on-wire (overlay) address.
        "prefixes": [f"{ha.links[0].node_ipv6.ip}/128", f"{ha.overlay_addresses[0]}/128"],
        "endpoint": _endpoint(ha.links[0], plan.overlay_port),
        "framing": "udp",
        "default": default,
    })


def _cn_peer(plan: LabPlan) -> dict[str, Any]:
    cn = plan.node("cn")
    return _framed(plan, {
        "name": "cn",
        "prefixes": [f"{address}/128" for address in cn.overlay_addresses],
        "endpoint": _endpoint(cn.links[0], plan.overlay_port),
        "framing": "udp",
        "default": False,
    })


def _mobile_peer(plan: LabPlan, other: LabNode) -> dict[str, Any]:
    """The other MN's CoAs that are not behind NAT: MN-MN AOTC/BA/data go there
    direct; a NATed CoA is learned from its authenticated packets (§3)."""
    # Native IPv6 has no NAT: every CoA is reachable as it is.
    links = [link for link in other.links if plan.driver == "raw" or not link.behind_nat]
    return _framed(plan, {
        "name": other.name,
        "prefixes": [f"{link.node_ipv6.ip}/128" for link in links],
        "endpoint": _endpoint(links[0], plan.overlay_port),
        "framing": "udp",
        "default": False,
    })


def _ike_peers(plan: LabPlan, name: str) -> list[dict[str, Any]]:
    """``[[ike.peer]]`` of one node; ``policies`` name its outbound protect policies."""
    mobiles = [node for node in plan.nodes if node.is_mobile]
    if name == "ha":
        # The MN's IKE comes from its CoA (docs/design.md §8): one peer per CoA.
        return [{"name": f"{node.name}-{link.name}", "address": str(link.node_ipv6.ip),
                 "policies": [f"mh-to-{node.name}", f"tunnel-to-{node.name}"]}
                for node in mobiles for link in node.links]
    if name == "cn":
        return [{"name": node.name, "address": str(node.overlay_addresses[0]),
                 "policies": [f"to-{node.name}"]} for node in mobiles]
    ha, cn = plan.node("ha"), plan.node("cn")
    names = [node.name for node in mobiles]
    peers = [
        {"name": "ha", "address": str(ha.overlay_addresses[0]), "initiate": True,
         "policies": ["mh-to-ha", "echo-to-cn", "via-ha-out"]},
        # From the HoA: reverse-tunnelled through the HA (draft appendix B).
        {"name": "cn", "address": str(cn.overlay_addresses[0]), "initiate": True,
         "policies": ["to-cn"]},
    ]
    for other in mobiles:
        if other.name == name:
            continue
        # MN-MN: the MN first in the plan initiates, the other waits.
        peers.append({"name": other.name, "address": str(other.overlay_addresses[0]),
                      "initiate": names.index(name) < names.index(other.name),
                      "policies": [f"to-{other.name}"]})
    return peers


def _without_sa_names(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # With IKE, protect policies name no SA: IKE makes them (docs/ike.md).
    return [{k: v for k, v in policy.items() if k != "sa"} for policy in policies]


def check_lab_options(plan: LabPlan, keys: str) -> None:
    """Refuse a key mode the plan's driver cannot carry (exit status 2)."""
    check_key_mode(keys)
    if keys == "ike" and plan.driver == "raw":
        # IKE rides the overlay as UDP inside on-wire packets; on a native
        # path it would be plain UDP to the kernel, which no raw socket reads.
        raise LabUsageError("--keys ike needs --driver udp: on the raw driver IKE would be "
                            "plain UDP that the node's raw sockets never see; use --keys static "
                            "with --driver raw")


def _with_keys(config: dict[str, Any], plan: LabPlan, name: str, keys: str,
               policies: list[dict[str, Any]]) -> dict[str, Any]:
    check_lab_options(plan, keys)
    control_and_logging = {k: config.pop(k) for k in ("control", "logging")}
    if keys == "ike":
        config["keys"] = {"mode": "ike", "backend": "cryptography",
                          "replay_window": REPLAY_WINDOW}
        config["policy"] = _without_sa_names(policies)
        config["ike"] = {"psk_file": f"keys/{IKE_PSK_FILE}", "proposals": list(IKE_PROPOSALS),
                         "esp_proposals": list(IKE_ESP_PROPOSALS),
                         "peer": _ike_peers(plan, name)}
        config.update(control_and_logging)
        return config
    config["keys"] = _keys_section(plan, name)
    config["policy"] = policies
    config.update(control_and_logging)  # keep [control] and [logging] last, as the examples
    return config


def ha_config(plan: LabPlan, keys: str = DEFAULT_KEY_MODE) -> dict[str, Any]:
    node = plan.node("ha")
    config = {
        **_common(node, ["ha"]),
        "tun": {"name": TUN_NAME, "mtu": TUN_MTU,
                "addresses": [f"{node.overlay_addresses[0]}/{plan.home_prefix.prefixlen}"]},
        "link": [_server_link(plan, node)],
        "peer": [_cn_peer(plan)],
        "mobility": {"home_prefix": str(plan.home_prefix),
                     "binding_lifetime": BINDING_LIFETIME, "tunnel": "esp"},
        **_control_and_logging(plan, node),
    }
    if plan.multi_coa:
        config["mobility"]["max_care_of_addresses"] = MULTI_COA_MAX_BINDINGS
    return _with_keys(config, plan, "ha", keys, _ha_policies(plan))


def cn_config(plan: LabPlan, keys: str = DEFAULT_KEY_MODE) -> dict[str, Any]:
    node = plan.node("cn")
    ha = plan.node("ha")
    home_peer = _ha_peer(plan, default=False)
    # Traffic to any home address goes to the HA, as the router routes it.
    home_peer["prefixes"] = [f"{ha.links[0].node_ipv6.ip}/128", str(plan.home_prefix)]
    # On raw the CN's address lives on eth0 only (the link's own address);
    # its TUN just routes the home prefix into vmip.
    addresses = [] if plan.driver == "raw" else [f"{a}/128" for a in node.overlay_addresses]
    config = {
        **_common(node, ["cn"]),
        "tun": {"name": TUN_NAME, "mtu": TUN_MTU, "addresses": addresses,
                "routes": [str(plan.home_prefix)]},
        "link": [_server_link(plan, node)],
        "peer": [home_peer],
        "mobility": {"proof_cache_size": 1024},
        **_control_and_logging(plan, node),
    }
    if plan.multi_coa:
        config["mobility"]["max_care_of_addresses"] = MULTI_COA_MAX_BINDINGS
        mobile = plan.node(MULTI_COA_MN)
        config["flow"] = demo_flows(_host(mobile.overlay_addresses[0]), ports="local_ports")
    return _with_keys(config, plan, "cn", keys, _cn_policies(plan))


def _mobile_node_config(plan: LabPlan, name: str, keys: str) -> dict[str, Any]:
    node = plan.node(name)
    cn = plan.node("cn")
    ha = plan.node("ha")
    other_mns = [other for other in plan.nodes if other.is_mobile and other.name != name]
    links = []
    for link in node.links:
        if plan.driver == "raw":
            # Native IPv6: the CoA is the link's routed address, no NAT, no keepalive.
            links.append({"name": link.name, "driver": "raw", "interface": link.name,
                          "coa": str(link.node_ipv6.ip),
                          "priority": LINK_PRIORITY.get(link.name, 50)})
            continue
        links.append({
            "name": link.name, "driver": "udp", "interface": link.name,
            "bind": str(link.node_ipv4.ip), "port": plan.overlay_port,
            "coa": str(link.node_ipv6.ip),
            "priority": LINK_PRIORITY.get(link.name, 50),
            "keepalive": NAT_KEEPALIVE if link.behind_nat else 0,
        })
    config = {
        **_common(node, ["mn"]),
        "tun": {"name": TUN_NAME, "mtu": TUN_MTU,
                "addresses": [f"{node.overlay_addresses[0]}/{plan.home_prefix.prefixlen}"],
                # The CN is reached through the overlay, not the underlay route.
                "routes": [f"{address}/128" for address in cn.overlay_addresses]},
        "link": links,
        "peer": [_ha_peer(plan, default=True), _cn_peer(plan),
                 *(_mobile_peer(plan, other) for other in other_mns)],
        "mobility": {
            "home_prefix": str(plan.home_prefix),
            "home_address": str(node.overlay_addresses[0]),
            "home_agent": str(ha.overlay_addresses[0]),
            # MN-MN works: each MN is the other's CN (draft section 5.2.2).
            "correspondents": [str(a) for a in cn.overlay_addresses]
            + [str(other.overlay_addresses[0]) for other in other_mns],
            "binding_lifetime": BINDING_LIFETIME,
            "tunnel": "esp",
        },
        **_control_and_logging(plan, node),
    }
    if plan.multi_coa and name == MULTI_COA_MN:
        # One binding per [[link]]: BID = the link's 1-based position (wifi0 1, lte0 2).
        config["mobility"]["multiple_care_of"] = True
        # The demo changes links every few seconds: a refresh per link every
        # second lets link quality follow within the schedule (a BU and a BA
        # per link and second, about 200 octets a second).
        config["mobility"]["link_probe_interval"] = MULTI_COA_PROBE_INTERVAL
        config["flow"] = demo_flows(_host(cn.overlay_addresses[0]), ports="remote_ports")
    return _with_keys(config, plan, name, keys, _mobile_policies(plan, node))


def mn_config(plan: LabPlan, keys: str = DEFAULT_KEY_MODE) -> dict[str, Any]:
    return _mobile_node_config(plan, "mn", keys)


def mn2_config(plan: LabPlan, keys: str = DEFAULT_KEY_MODE) -> dict[str, Any]:
    return _mobile_node_config(plan, "mn2", keys)


#: node name -> its config builder; a node added to the plan needs one here.
CONFIG_BUILDERS = {"ha": ha_config, "cn": cn_config, "mn": mn_config, "mn2": mn2_config}


def node_config_text(plan: LabPlan, name: str, keys: str = DEFAULT_KEY_MODE) -> str:
    node = plan.node(name)
    header = HEADER.format(node=name, netns=node.netns)
    if keys == "static":
        header += STATIC_KEYS_HEADER
    else:
        header += IKE_KEYS_HEADER
    return dump_toml(CONFIG_BUILDERS[name](plan, keys), header)


# --- files ----------------------------------------------------------------------------------

def write_private_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Write *text* to *path* atomically, created with *mode* (never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def prepare_node_dir(plan: LabPlan, name: str) -> Path:
    """Create ``<lab_dir>/<node>/`` with ``keys/`` (0700) and ``pcap/``."""
    node_dir = plan.node_dir(name)
    node_dir.mkdir(parents=True, exist_ok=True)
    keys = node_dir / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    os.chmod(keys, 0o700)  # also when an older lab left it wider
    (node_dir / "pcap").mkdir(exist_ok=True)
    return node_dir


def key_path(plan: LabPlan, node: str, file_name: str) -> Path:
    return plan.node_dir(node) / "keys" / file_name


def _existing_pair(paths: list[Path], length: int) -> bytes | None:
    """The key both ends hold, if they hold the same one of the right length."""
    try:
        keys = {read_key_file(path) for path in paths}
    except ConfigError:
        return None
    key = keys.pop() if len(keys) == 1 else None
    return key if key is not None and len(key) == length else None


def _share_key(paths: list[Path], length: int, *, fresh: bool) -> None:
    """One random key of *length* bytes at every path; ``fresh=False`` keeps
    a key they all already hold."""
    if not fresh and _existing_pair(paths, length) is not None:
        return
    material = secrets.token_bytes(length)
    for path in paths:
        try:
            write_key_file(path, material)
        except ConfigError as exc:
            raise LabError(f"cannot write lab key {path}: {exc}") from exc


def write_static_keys(plan: LabPlan, *, fresh: bool = True) -> dict[str, list[Path]]:
    """Write one random key per SA key file, the same bytes at both ends (0600).

    ``fresh=False`` keeps a key that both ends already hold (a running node
    still uses it; changing one end would cut that SA).  Returns file name ->
    the paths written or kept.
    """
    written: dict[str, list[Path]] = {}
    for sa in static_sas(plan):
        for _, file_name, length in sa.key_files:
            paths = [key_path(plan, node, file_name) for node in (sa.sender, sa.receiver)]
            _share_key(paths, length, fresh=fresh)
            written[file_name] = paths
    return written


def write_ike_psk(plan: LabPlan, *, fresh: bool = True) -> list[Path]:
    """The lab PSK at every node (0600); ``fresh=False`` keeps one all nodes hold."""
    paths = [key_path(plan, node.name, IKE_PSK_FILE) for node in plan.nodes]
    _share_key(paths, IKE_PSK_BYTES, fresh=fresh)
    return paths


def write_node_configs(plan: LabPlan, keys: str = DEFAULT_KEY_MODE, *,
                       fresh_keys: bool = True) -> dict[str, Path]:
    """Write every node's config (0600) and, for static keys, the key files it names."""
    check_lab_options(plan, keys)
    paths = {}
    for node in plan.nodes:
        prepare_node_dir(plan, node.name)
    if keys == "static":
        write_static_keys(plan, fresh=fresh_keys)
    else:
        write_ike_psk(plan, fresh=fresh_keys)
    for node in plan.nodes:
        path = plan.config_path(node.name)
        write_private_file(path, node_config_text(plan, node.name, keys))
        paths[node.name] = path
    return paths
