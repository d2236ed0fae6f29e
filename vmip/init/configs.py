"""Node configs for a described network (schema: docs/configuration.md).

The structure is the lab's (``vmip/lab/configs.py``, ``configs/*.toml``):
MN-HA MH in ESP transport between HoA and HA, the MN-HA payload in an ESP
tunnel from the CoA, ESP transport between each MN's HoA and each of its
correspondents (CNs and other MNs) so IRO can take that traffic direct, the
rest of the MN's traffic through the HA tunnel, and an HA that drops
unprotected mobility messages.  The SA model (:class:`LabSa`), the policy
builder, priorities, suites and IKE proposals are the lab's own, imported.

What differs from the lab, and why:

- Any number of correspondents, named by the user: SA and policy names
  carry the peer's name (``to-web``), and the SPI plan has room for them:
  ``0x<m:2><p:2><k><d>``, m the MN's index, p 0 for the HA, the CN's index,
  or 0x80 + the other MN's index, k 1 MH / 2 tunnel / 3 transport, d 1 for
  what the MN (the lower-indexed MN) sends, 2 for what it receives.
- Static SAs keep extended sequence numbers (the schema's default) and no
  lifetime: the lab turns ESN off for Wireshark 4.0 and gives tunnel SAs a
  day, but static keys cannot rekey, so an expiry would cut the network.
- No clear-text class (UDP echo stays on the HA path in the lab's demo).
- MNs have ESP transport SAs with each other (HoA <-> HoA) but register
  with each other only when the description lists the other MN: the lab
  gives each MN a static locator for the other's wifi CoA, a generated
  network cannot (laptops move and sit behind NAT), and without one the
  address test to the other's CoA never arrives.  Their traffic then goes
  through the HA, still end-to-end ESP.
- Links bind no address: the underlay addresses of laptops and servers are
  not known here; an HA or CN listens on its port on every address.
- The control socket and the state directory keep their defaults
  (``/run/vmip/vmip.sock``, ``/var/lib/vmip/<node>``): one node per host,
  so ``vmip status`` needs no flag.
- IKE authenticates with certificates from the network's own CA: each node
  has an FQDN identity (``<name>.<domain>``), each peer's is pinned
  (``remote_id``).  The HA lists no MN: it admits any MN the CA certified,
  with the home address its certificate names (``mobile_node_policies``,
  RFC 4877 §4), where the lab's HA has one ``[[ike.peer]]`` per MN CoA; so
  ``--add-mn`` leaves the HA's config alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmip.init.network import DEFAULT_PORT, Correspondent, MobileNode, Network
from vmip.lab.configs import (
    BINDING_LIFETIME,
    IKE_ESP_PROPOSALS,
    IKE_PROPOSALS,
    MH_SUITE,
    NAT_KEEPALIVE,
    PAYLOAD_SUITE,
    PRIORITY_BYPASS,
    PRIORITY_CN,
    PRIORITY_MH,
    PRIORITY_TUNNEL,
    PRIORITY_UNPROTECTED_MH,
    REPLAY_WINDOW,
    TUN_MTU,
    TUN_NAME,
    LabSa,
    _policy,
    _without_sa_names,
)

#: SPI plan digits (module notes).
_KIND = {"mh": 1, "tunnel": 2, "cn": 3, "mn": 3}
_MN_PEER = 0x80
#: Paths inside a node's directory, as the config names them (relative to the config).
KEYS_DIR = "keys"
CA_FILE = "ca.pem"


@dataclass(frozen=True)
class InitSa(LabSa):
    """A lab SA, named after the correspondent too (there may be several)."""

    def name_at(self, node: str) -> str:
        if self.purpose == "cn" and node == self.mobile:
            return f"{self.mobile}-{self.peer}-{self.direction_at(node)}"
        return super().name_at(node)

    def config_at(self, node: str) -> dict[str, Any]:
        entry = super().config_at(node)
        # Static keys cannot rekey: keep ESN (the default) and no expiry.
        entry.pop("esn", None)
        entry.pop("lifetime", None)
        return entry


def _host(address: Any) -> str:
    return f"{address}/128"


def spi(mn_index: int, peer_code: int, purpose: str, from_mobile: bool) -> int:
    return (mn_index << 16) | (peer_code << 8) | (_KIND[purpose] << 4) | (1 if from_mobile else 2)


def static_sas(net: Network) -> list[InitSa]:
    """Every SA of the network, both directions, in a stable order."""
    ha = str(net.ha.address)
    sas: list[InitSa] = []
    for mn in net.mns:
        index = net.mn_index(mn.name)
        hoa, coa = str(mn.home_address), str(mn.links[0].coa)
        ends = [("mh", net.ha.name, 0, hoa, ha, "transport", MH_SUITE),
                ("tunnel", net.ha.name, 0, coa, ha, "tunnel", PAYLOAD_SUITE)]
        cns, mns = net.correspondents_of(mn)
        ends += [("cn", cn.name, net.cn_index(cn.name), hoa, str(cn.address), "transport",
                  PAYLOAD_SUITE) for cn in cns]
        # MN-MN pairs once, from the lower-indexed MN.
        ends += [("mn", other.name, _MN_PEER | net.mn_index(other.name), hoa,
                  str(other.home_address), "transport", PAYLOAD_SUITE)
                 for other in mns if net.mn_index(other.name) > index]
        for purpose, peer, code, mobile_end, peer_end, mode, suite_name in ends:
            for from_mobile in (True, False):
                src, dst = (mobile_end, peer_end) if from_mobile else (peer_end, mobile_end)
                sas.append(InitSa(mn.name, peer, purpose, from_mobile,
                                  spi(index, code, purpose, from_mobile), mode, suite_name,
                                  src, dst))
    return sas


def sas_of(net: Network, name: str) -> list[InitSa]:
    return [sa for sa in static_sas(net) if name in (sa.mobile, sa.peer)]


def _sa_names(net: Network, node: str, peer: str) -> dict[tuple[str, str], str]:
    """(purpose, direction at *node*) -> SA name, for the SAs between *node* and *peer*."""
    return {(sa.purpose, sa.direction_at(node)): sa.name_at(node)
            for sa in sas_of(net, node) if {sa.mobile, sa.peer} == {node, peer}}


# --- policies ---------------------------------------------------------------------------------

def mobile_policies(net: Network, mn: MobileNode) -> list[dict[str, Any]]:
    hoa, ha = _host(mn.home_address), _host(net.ha.address)
    with_ha = _sa_names(net, mn.name, net.ha.name)
    policies = [
        # BU/BA: ESP transport between HoA and HA (RFC 3776 §5.2.1, draft §7).
        _policy("mh-to-ha", "out", hoa, ha, "protect", PRIORITY_MH, with_ha[("mh", "out")], "mh"),
        _policy("mh-from-ha", "in", ha, hoa, "protect", PRIORITY_MH, with_ha[("mh", "in")],
                "mh"),
    ]
    cns, mns = net.correspondents_of(mn)
    peers: list[Correspondent | MobileNode] = [*cns, *mns]
    for peer in peers:
        address = _host(peer.address if isinstance(peer, Correspondent) else peer.home_address)
        names = _sa_names(net, mn.name, peer.name)
        purpose = "cn" if isinstance(peer, Correspondent) else "mn"
        # All traffic with a correspondent: ESP transport, HoA <-> peer, so IRO
        # can take it direct once bound; nothing unprotected flows there (§3.6).
        policies += [
            _policy(f"to-{peer.name}", "out", hoa, address, "protect", PRIORITY_CN,
                    names[(purpose, "out")]),
            _policy(f"from-{peer.name}", "in", address, hoa, "protect", PRIORITY_CN,
                    names[(purpose, "in")]),
        ]
    # The rest goes through the HA, in the ESP tunnel (draft appendix D).
    policies += [
        _policy("via-ha-out", "out", hoa, "::/0", "protect", PRIORITY_TUNNEL,
                with_ha[("tunnel", "out")]),
        _policy("via-ha-in", "in", "::/0", hoa, "protect", PRIORITY_TUNNEL,
                with_ha[("tunnel", "in")]),
    ]
    return policies


#: The HA's policies for every mobile node at once (IKE: admission by certificate).
MN_POLICIES = ("mh-to-mobile-nodes", "tunnel-to-mobile-nodes")


def ha_admission_policies(net: Network) -> list[dict[str, Any]]:
    """The HA's policies with IKE: one set over the whole home prefix.

    Each MN's CHILD_SAs narrow them to the home address its certificate
    names (``[ike] mobile_node_policies``, RFC 4877 §4), so a new MN needs
    nothing here.
    """
    ha, home = _host(net.ha.address), str(net.home_prefix)
    return [
        _policy("mh-from-mobile-nodes", "in", home, ha, "protect", PRIORITY_MH, None, "mh"),
        _policy(MN_POLICIES[0], "out", ha, home, "protect", PRIORITY_MH, None, "mh"),
        # A Binding Update must come through ESP (RFC 6275 §5.1): drop any other MH.
        _policy("unprotected-mh", "in", "::/0", ha, "discard", PRIORITY_UNPROTECTED_MH,
                protocol="mh"),
        _policy(MN_POLICIES[1], "out", "::/0", home, "protect", PRIORITY_TUNNEL),
        _policy("tunnel-from-mobile-nodes", "in", home, "::/0", "protect", PRIORITY_TUNNEL),
        # The rest of the home prefix's traffic passes as it is (MN-CN traffic in it is ESP).
        _policy("home-prefix-in", "in", "::/0", home, "bypass", PRIORITY_BYPASS),
        _policy("home-prefix-out", "out", home, "::/0", "bypass", PRIORITY_BYPASS),
    ]


def ha_policies(net: Network) -> list[dict[str, Any]]:
    if net.keys == "ike":
        return ha_admission_policies(net)
    ha = _host(net.ha.address)
    policies = []
    for mn in net.mns:
        hoa = _host(mn.home_address)
        names = _sa_names(net, net.ha.name, mn.name)
        policies += [
            _policy(f"mh-from-{mn.name}", "in", hoa, ha, "protect", PRIORITY_MH,
                    names[("mh", "in")], "mh"),
            _policy(f"mh-to-{mn.name}", "out", ha, hoa, "protect", PRIORITY_MH,
                    names[("mh", "out")], "mh"),
        ]
    # A Binding Update must come through ESP (RFC 6275 §5.1): drop any other MH.
    policies.append(_policy("unprotected-mh", "in", "::/0", ha, "discard",
                            PRIORITY_UNPROTECTED_MH, protocol="mh"))
    for mn in net.mns:
        hoa = _host(mn.home_address)
        names = _sa_names(net, net.ha.name, mn.name)
        policies += [
            _policy(f"tunnel-to-{mn.name}", "out", "::/0", hoa, "protect", PRIORITY_TUNNEL,
                    names[("tunnel", "out")]),
            _policy(f"tunnel-from-{mn.name}", "in", hoa, "::/0", "protect", PRIORITY_TUNNEL,
                    names[("tunnel", "in")]),
        ]
    home = str(net.home_prefix)
    # The rest of the home prefix's traffic passes as it is (MN-CN traffic in it is ESP).
    policies += [_policy("home-prefix-in", "in", "::/0", home, "bypass", PRIORITY_BYPASS),
                 _policy("home-prefix-out", "out", home, "::/0", "bypass", PRIORITY_BYPASS)]
    return policies


def cn_policies(net: Network, cn: Correspondent) -> list[dict[str, Any]]:
    address = _host(cn.address)
    policies = []
    for mn in net.mns_of(cn):
        hoa = _host(mn.home_address)
        names = _sa_names(net, cn.name, mn.name)
        policies += [
            _policy(f"from-{mn.name}", "in", hoa, address, "protect", PRIORITY_CN,
                    names[("cn", "in")]),
            _policy(f"to-{mn.name}", "out", address, hoa, "protect", PRIORITY_CN,
                    names[("cn", "out")]),
        ]
    policies += [_policy("other-in", "in", "::/0", "::/0", "bypass", PRIORITY_BYPASS),
                 _policy("other-out", "out", "::/0", "::/0", "bypass", PRIORITY_BYPASS)]
    return policies


# --- IKE ------------------------------------------------------------------------------------

def ike_peers(net: Network, name: str) -> list[dict[str, Any]]:
    """``[[ike.peer]]`` of one node, as the lab's, each peer's identity pinned."""
    if name == net.ha.name:
        # No peer per MN: the HA admits every MN the CA certifies (mobile_node_policies).
        return []
    for cn in net.cns:
        if cn.name == name:
            return [{"name": mn.name, "address": str(mn.home_address),
                     "remote_id": net.fqdn(mn.name), "policies": [f"to-{mn.name}"]}
                    for mn in net.mns_of(cn)]
    mn = net.mn(name)
    cns, mns = net.correspondents_of(mn)
    peers = [{"name": net.ha.name, "address": str(net.ha.address),
              "remote_id": net.fqdn(net.ha.name), "initiate": True,
              "policies": ["mh-to-ha", "via-ha-out"]}]
    # To a CN from the HoA, reverse-tunnelled through the HA (draft appendix B).
    peers += [{"name": cn.name, "address": str(cn.address), "remote_id": net.fqdn(cn.name),
               "initiate": True, "policies": [f"to-{cn.name}"]} for cn in cns]
    index = net.mn_index(name)
    # MN-MN: the lower-indexed MN initiates, the other waits.
    peers += [{"name": other.name, "address": str(other.home_address),
               "remote_id": net.fqdn(other.name),
               "initiate": index < net.mn_index(other.name),
               "policies": [f"to-{other.name}"]} for other in mns]
    return peers


# --- whole configs ----------------------------------------------------------------------------

def _server_link(port: int) -> dict[str, Any]:
    # No bind: a server's public address may not even be local (cloud NAT).
    return {"name": "net0", "driver": "udp", "port": port, "keepalive": 0}


def _with_keys(config: dict[str, Any], net: Network, name: str,
               policies: list[dict[str, Any]]) -> dict[str, Any]:
    if net.keys == "ike":
        config["keys"] = {"mode": "ike", "backend": "cryptography",
                          "replay_window": REPLAY_WINDOW}
        config["policy"] = _without_sa_names(policies)
        config["ike"] = {
            "local_id": net.fqdn(name),
            "certificate": f"{KEYS_DIR}/{name}.pem",
            "private_key": f"{KEYS_DIR}/{name}.key",
            "ca": [f"{KEYS_DIR}/{CA_FILE}"],
            "proposals": list(IKE_PROPOSALS),
            "esp_proposals": list(IKE_ESP_PROPOSALS),
        }
        if name == net.ha.name:
            config["ike"]["mobile_node_policies"] = list(MN_POLICIES)
        peers = ike_peers(net, name)
        if peers:
            config["ike"]["peer"] = peers
    else:
        config["keys"] = {"mode": "static", "backend": "cryptography",
                          "replay_window": REPLAY_WINDOW,
                          "sa": [sa.config_at(name) for sa in sas_of(net, name)]}
        config["policy"] = policies
    config["logging"] = {"level": "info", "format": "text"}
    return config


def ha_config(net: Network) -> dict[str, Any]:
    ha = net.ha
    config: dict[str, Any] = {
        "node": {"name": ha.name, "roles": ["ha"]},
        "tun": {"name": TUN_NAME, "mtu": TUN_MTU,
                "addresses": [f"{ha.address}/{net.home_prefix.prefixlen}"]},
        "link": [_server_link(ha.endpoint.port)],
    }
    if net.cns:
        config["peer"] = [{"name": cn.name, "prefixes": [_host(cn.address)],
                           "endpoint": str(cn.endpoint), "framing": "udp"} for cn in net.cns]
    config["mobility"] = {"home_prefix": str(net.home_prefix),
                          "binding_lifetime": BINDING_LIFETIME, "tunnel": "esp"}
    return _with_keys(config, net, ha.name, ha_policies(net))


def cn_config(net: Network, cn: Correspondent) -> dict[str, Any]:
    config: dict[str, Any] = {
        "node": {"name": cn.name, "roles": ["cn"]},
        "tun": {"name": TUN_NAME, "mtu": TUN_MTU, "addresses": [_host(cn.address)],
                # Home addresses are reached through the overlay (the HA or a binding).
                "routes": [str(net.home_prefix)]},
        "link": [_server_link(cn.endpoint.port)],
        # Traffic to any home address goes to the HA until a binding says otherwise;
        # the MNs' CoAs are learned from their authenticated packets.
        "peer": [{"name": net.ha.name,
                  "prefixes": [_host(net.ha.address), str(net.home_prefix)],
                  "endpoint": str(net.ha.endpoint), "framing": "udp"}],
        "mobility": {"proof_cache_size": 1024},
    }
    return _with_keys(config, net, cn.name, cn_policies(net, cn))


def mn_config(net: Network, mn: MobileNode) -> dict[str, Any]:
    cns, mns = net.correspondents_of(mn)
    links = []
    for priority, link in enumerate(mn.links, start=1):
        entry: dict[str, Any] = {"name": link.name, "driver": "udp"}
        if link.interface:
            entry["interface"] = link.interface
        # One port per link: two sockets of one node cannot share one.
        entry.update({"port": DEFAULT_PORT + priority - 1, "coa": str(link.coa),
                      "priority": 10 * priority, "keepalive": NAT_KEEPALIVE})
        links.append(entry)
    tun: dict[str, Any] = {"name": TUN_NAME, "mtu": TUN_MTU,
                           "addresses": [f"{mn.home_address}/{net.home_prefix.prefixlen}"]}
    if cns:
        # The CNs are reached through the overlay, not the underlay's routes.
        tun["routes"] = [_host(cn.address) for cn in cns]
    config: dict[str, Any] = {
        "node": {"name": mn.name, "roles": ["mn"]},
        "tun": tun,
        "link": links,
        "peer": [{"name": net.ha.name, "prefixes": [_host(net.ha.address)],
                  "endpoint": str(net.ha.endpoint), "framing": "udp", "default": True},
                 *({"name": cn.name, "prefixes": [_host(cn.address)],
                    "endpoint": str(cn.endpoint), "framing": "udp"} for cn in cns)],
        "mobility": {
            "home_prefix": str(net.home_prefix),
            "home_address": str(mn.home_address),
            "home_agent": str(net.ha.address),
            # Another MN only when the description names it: registering with it
            # (draft §5.2.2) needs its CoA's underlay endpoint, which laptops
            # behind NAT do not have; MN-MN traffic still flows, through the HA.
            "correspondents": [str(cn.address) for cn in cns]
            + [str(other.home_address) for other in mns
               if mn.correspondents is not None and other.name in mn.correspondents],
            "binding_lifetime": BINDING_LIFETIME,
            "tunnel": "esp",
        },
    }
    return _with_keys(config, net, mn.name, mobile_policies(net, mn))


def node_configs(net: Network) -> dict[str, dict[str, Any]]:
    """node name -> its config, as a TOML-ready dict."""
    configs = {net.ha.name: ha_config(net)}
    configs.update({mn.name: mn_config(net, mn) for mn in net.mns})
    configs.update({cn.name: cn_config(net, cn) for cn in net.cns})
    return configs


def role_of(net: Network, name: str) -> str:
    if name == net.ha.name:
        return "ha"
    return "mn" if name in {mn.name for mn in net.mns} else "cn"
