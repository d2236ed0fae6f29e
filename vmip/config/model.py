"""What a loaded node config *is*: frozen dataclasses, one per section.

Values are already typed and checked when these objects exist: addresses
are :mod:`ipaddress` objects, prefixes ``ip_network``, paths absolute (the
loader resolves them against the config file's directory), ``None`` means
"not set" with the meaning documented on each field.  docs/configuration.md
is the user-facing reference; keep the two in step.

This is also the schema of the file (:mod:`vmip.config.schema`): each field
the file can set says so in its metadata, with its key, parser, default and
example.  Adding a simple key is adding one field here (and its line in
docs/configuration.md); the loader and the effective config follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from vmip import log
from vmip.compat import StrEnum
from vmip.config import values as v
from vmip.config.schema import DERIVED, key, section
from vmip.config.values import PROTOCOL_NUMBERS, Address, Interface, Network, PortRange
from vmip.ipsec.sa import Direction, Lifetime, Mode
from vmip.ipsec.suites import BACKENDS, SUITES

__all__ = [
    "DEFAULT_PORTS",
    "LIFETIME_KEYS",
    "PROTOCOL_NUMBERS",
    "Action",
    "Address",
    "ControlConfig",
    "Direction",
    "Driver",
    "Endpoint",
    "FlowConfig",
    "IkeConfig",
    "IkePeerConfig",
    "Interface",
    "KeyMode",
    "KeysConfig",
    "Lifetime",
    "LinkConfig",
    "LoggingConfig",
    "MobilityConfig",
    "Mode",
    "Network",
    "NodeConfig",
    "NodeSection",
    "PeerConfig",
    "PolicyConfig",
    "PortRange",
    "Role",
    "SaConfig",
    "TunConfig",
    "TunnelKind",
]


class Role(StrEnum):
    MN = "mn"
    HA = "ha"
    CN = "cn"


class Driver(StrEnum):
    """How on-wire packets travel; also a peer's framing."""

    UDP = "udp"
    RAW = "raw"
    RFC3948 = "rfc3948"


#: Underlay port of each driver when the config names none (raw has no port).
DEFAULT_PORTS: dict[Driver, int | None] = {Driver.UDP: 6275, Driver.RFC3948: 4500, Driver.RAW: None}


class Action(StrEnum):
    """What an SPD entry does with matching traffic (RFC 4301 §4.4.1)."""

    PROTECT = "protect"
    BYPASS = "bypass"
    DISCARD = "discard"


class KeyMode(StrEnum):
    STATIC = "static"
    IKE = "ike"


class TunnelKind(StrEnum):
    """How MN-HA payload is tunnelled (draft appendix D allows plain IPv6-in-IPv6)."""

    ESP = "esp"
    IP6IP6 = "ip6ip6"


# Defaults and limits of the file's keys (docs/configuration.md).
DEFAULT_TUN_NAME = "vmip0"
DEFAULT_MTU = 1400
MIN_MTU = 1280  # RFC 8200 §5: every IPv6 link carries 1280-byte packets
DEFAULT_BINDING_LIFETIME = 420
# RFC 6275 §6.1.7: the BU lifetime is 16 bits of 4-second units.
MAX_BINDING_LIFETIME = 0xFFFF * 4
DEFAULT_PROOF_CACHE_SIZE = 1024
#: HA: home registrations kept at most (RFC 6275 §9.5.1 status 130 beyond).
DEFAULT_MAX_HOME_BINDINGS = 16384
#: HA/CN: RFC 5648 bindings kept per home address, default and most (the
#: cores' max_bids_per_hoa; one IRO remap rule expects at most 16 CoAs).
DEFAULT_MAX_CARE_OF_ADDRESSES = 4
MAX_CARE_OF_ADDRESSES = 16
DEFAULT_REPLAY_WINDOW = 1024
DEFAULT_PRIORITY = 100
# RFC 3948 §4: NAT keepalives every 20 s unless told otherwise.
DEFAULT_KEEPALIVE = 20
DEFAULT_IKE_PROPOSALS = ("aes128gcm16-prfsha256-ecp256",)
DEFAULT_ESP_PROPOSALS = ("aes128gcm16",)
LOG_LEVELS = log.LEVELS
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Endpoint:
    """An underlay address and port (a peer's locator)."""

    address: Address
    port: int

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class NodeSection:
    #: Default: the config file's name without .toml ("vmip" if not a usable name).
    name: str = field(metadata=key(v.name('"mn"'), default=DERIVED))
    #: Every node also answers as a CN; ``cn`` alone is the default.
    roles: tuple[Role, ...] = field(metadata=key(
        v.enum_list(Role, '"mn"', min_items=1, what="role"), default=(Role.CN,)))
    #: After start-up the node becomes this user, keeping only CAP_NET_ADMIN
    #: (and CAP_NET_RAW for the raw driver); None: it stays as started.
    user: str | None = field(default=None, metadata=key(
        v.string('"vmip"'), default=None,
        unset="none (the node keeps the user that started it)"))


@dataclass(frozen=True)
class TunConfig:
    name: str = field(metadata=key(v.ifname('"vmip0"'), default=DEFAULT_TUN_NAME))
    #: Overlay addresses with their prefix length; an MN's HoA is among them.
    #: Empty only for a CN or plain node whose on-wire addresses are its
    #: links' (``own_addresses``, or a raw link's interface): the TUN then
    #: only carries routes.
    addresses: tuple[Interface, ...] = field(metadata=key(
        v.list_of(v.interface("an overlay address", '"2001:db8:100::10/64"'),
                  '"2001:db8:100::10/64"', what="overlay address"),
        example='["2001:db8:100::10/64"]'))
    mtu: int = field(metadata=key(v.integer("1400", MIN_MTU, 65535, "an MTU"),
                                  default=DEFAULT_MTU))
    #: Extra prefixes routed into the TUN.
    routes: tuple[Network, ...] = field(metadata=key(
        v.list_of(v.network("a prefix", '"2001:db8:20::/64"', address_hint_len=128),
                  '"2001:db8:20::/64"', what="prefix"), default=()))


@dataclass(frozen=True)
class LinkConfig:
    name: str = field(metadata=key(v.name('"wifi0"'), example='"wifi0"'))
    driver: Driver = field(metadata=key(v.enum(Driver), default=Driver.UDP))
    #: Underlay interface to bind to; None: whatever the routing table picks.
    interface: str | None = field(metadata=key(
        v.ifname('"wifi0"'), default=None, unset="chosen by the routing table"))
    #: Local underlay address to bind; None: any address.
    bind: Address | None = field(metadata=key(
        v.address("a local underlay address", '"192.0.2.34"'), default=None,
        unset="any local address"))
    #: Underlay port; None only for the raw driver, which has none.  Default:
    #: the driver's (DEFAULT_PORTS), read by the loader.
    port: int | None = field(metadata=key(default=DERIVED,
                                          unset="none (the raw driver has no port)"))
    #: MN only: the care-of address this link gives (an on-wire address).
    coa: IPv6Address | None = field(metadata=key(
        v.ipv6("a care-of address", '"2001:db8:31::2"'), default=None,
        unset="none (not a mobile node's link)"))
    #: This node's own on-wire addresses on this link: packets to them are
    #: the node's (ESP, MH, tunnels), never forwarded or dropped as not for
    #: it.  None: derived when the link starts (raw: the global IPv6
    #: addresses of ``interface``, else ``bind``; rfc3948: an IPv6 ``bind``).
    own_addresses: tuple[IPv6Address, ...] | None = field(metadata=key(
        v.list_of(v.ipv6("an on-wire address of this node", '"2001:db8:20::2"'),
                  '"2001:db8:20::2"', what="address"),
        default=None, example='["2001:db8:20::2"]',
        unset="derived at start (raw: the interface's global IPv6 addresses, else bind)"))
    #: Lower is preferred (wifi before lte); ties keep file order.
    priority: int = field(metadata=key(v.integer("10", 0, 65535, "a priority"),
                                       default=DEFAULT_PRIORITY))
    #: Seconds between NAT keepalives; 0 turns them off.  Default: 0 for raw,
    #: DEFAULT_KEEPALIVE otherwise.
    keepalive: int = field(metadata=key(v.integer("20", 0, 3600, "a number of seconds"),
                                        default=DERIVED))


@dataclass(frozen=True)
class PeerConfig:
    name: str = field(metadata=key(v.name('"ha"'), example='"ha"'))
    #: On-wire addresses reachable through this peer (static locators).
    prefixes: tuple[Network, ...] = field(metadata=key(
        v.list_of(v.network("an on-wire prefix", '"2001:db8:20::2/128"', address_hint_len=128),
                  '"2001:db8:20::2/128"', min_items=1, what="prefix"),
        example='["2001:db8:20::2/128"]'))
    #: None for raw framing (the OS routes) or when the locator is learned;
    #: its default port depends on the framing, so the loader reads it.
    endpoint: Endpoint | None = field(metadata=key(
        default=DERIVED, unset="none (learned from authenticated packets, or routed for raw)"))
    framing: Driver = field(metadata=key(v.enum(Driver), default=Driver.UDP))
    #: The peer for on-wire destinations no prefix matches.
    default: bool = field(metadata=key(v.boolean("false"), default=False))


@dataclass(frozen=True)
class MobilityConfig:
    #: An MN without one uses the /64 around its home address.
    home_prefix: IPv6Network | None = field(metadata=key(
        v.network("the home prefix", '"2001:db8:100::/64"', 6, address_hint_len=64),
        default=None, unset="none (not a mobile node or home agent)"))
    home_address: IPv6Address | None = field(metadata=key(
        v.ipv6("a home address", '"2001:db8:100::10"'), default=None,
        unset="none (not a mobile node)"))
    home_agent: IPv6Address | None = field(metadata=key(
        v.ipv6("the home agent's address", '"2001:db8:100::1"'), default=None,
        unset="none (not a mobile node)"))
    correspondents: tuple[IPv6Address, ...] = field(metadata=key(
        v.list_of(v.ipv6("a correspondent's address", '"2001:db8:20::2"'), '"2001:db8:20::2"',
                  what="address"), default=()))
    #: Seconds; RFC 6275 §6.1.7 carries it in 4-second units in 16 bits.
    binding_lifetime: int = field(metadata=key(
        v.integer("420", 4, MAX_BINDING_LIFETIME, "a lifetime in seconds"),
        default=DEFAULT_BINDING_LIFETIME))
    tunnel: TunnelKind = field(metadata=key(v.enum(TunnelKind), default=TunnelKind.ESP))
    #: CN: how many proven (HoA, CoA) pairs are kept (draft §4.5.1, bounded cache).
    proof_cache_size: int = field(metadata=key(
        v.integer("1024", 1, 1_000_000, "a cache size"), default=DEFAULT_PROOF_CACHE_SIZE))
    #: HA: how many home registrations its binding cache holds; a BU that would
    #: add one more gets status 130, insufficient resources (RFC 6275 §9.5.1).
    max_home_bindings: int = field(metadata=key(
        v.integer("16384", 1, 1_000_000, "a cache size"), default=DEFAULT_MAX_HOME_BINDINGS))
    #: CN: a HoA test (draft §4.5.3) when an MN's registration is first accepted.
    home_test_on_registration: bool = field(metadata=key(v.boolean("true"), default=False))
    #: CN: seconds between HoA tests of each registered MN (draft §4.5.3).
    home_test_interval: float | None = field(metadata=key(
        v.seconds("3600"), default=None, unset="none (no regular HoA test)"))
    #: MN: one binding per usable link at once (RFC 5648 Binding Identifiers,
    #: BID = the link's 1-based position in the [[link]] list).
    multiple_care_of: bool = field(metadata=key(v.boolean("true"), default=False))
    #: HA and CN: bindings kept per home address (RFC 5648); 0: no RFC 5648
    #: support at all (the BID option is skipped like any unknown option).
    max_care_of_addresses: int = field(metadata=key(
        v.integer("4", 0, MAX_CARE_OF_ADDRESSES, "a number of bindings"),
        default=DEFAULT_MAX_CARE_OF_ADDRESSES))
    #: MN with multiple_care_of: seconds without a request on a bound link
    #: before a binding refresh measures it (vmip.node.quality); 0: never.
    link_probe_interval: float = field(metadata=key(
        v.seconds_between("5", 0, 3600, "an interval"), default=5.0))


#: The keys of an SA's ``lifetime`` table: soft and hard limit of each unit.
LIFETIME_KEYS = tuple(f"{level}_{unit.name}" for unit in dataclasses.fields(Lifetime)
                      for level in ("soft", "hard"))


def _show_lifetime(limits: tuple[Lifetime, Lifetime]) -> dict[str, Any]:
    soft, hard = limits
    return {name: getattr(soft if name.startswith("soft_") else hard, name.split("_", 1)[1])
            for name in LIFETIME_KEYS}


@dataclass(frozen=True)
class SaConfig:
    """One static SA, as setkey's ``add`` (contract: :class:`vmip.ipsec.sa.SaParams`).

    ``enc_key`` and ``auth_key`` hold what the loader read from ``key_file``
    and ``auth_key_file``, checked against the suite: None when the suite
    has no such key, or when the config was loaded with
    ``check_key_files=False``.  They are left out of repr and of the
    effective config (which shows the files' names only).
    """

    name: str = field(metadata=key(v.name('"mn-ha-mh-out"'), example='"mn-ha-mh-out"'))
    # RFC 4303 §2.1: SPIs 1-255 are reserved by IANA and 0 is for local use.
    spi: int = field(metadata=key(v.integer("0x1001", 256, 0xFFFFFFFF, "an SPI"),
                                  example="0x1001"))
    direction: Direction = field(metadata=key(v.enum(Direction, ("in", "out")),
                                              example='"out"'))
    #: SA-level addresses (HoA, never the CoA, for IRO-tracked SAs); the
    #: outer endpoints for tunnel mode (RFC 4301 §4.4.2).
    src: Address = field(metadata=key(
        v.address("an SA source address", '"2001:db8:100::10"'), example='"2001:db8:100::10"'))
    dst: Address = field(metadata=key(
        v.address("an SA destination address", '"2001:db8:100::1"'),
        example='"2001:db8:100::1"'))
    mode: Mode = field(metadata=key(v.enum(Mode, ("transport", "tunnel")),
                                    default=Mode.TRANSPORT))
    suite: str = field(metadata=key(v.choice(tuple(SUITES), '"aes128gcm16"'),
                                    example='"aes128gcm16"'))
    #: Encryption key (salt included for AEAD); None only for NULL encryption.
    #: Whether it may be set depends on the suite, so the loader reads it.
    key_file: Path | None = field(metadata=key(
        default=DERIVED, unset="none (the suite has no encryption key)"))
    #: Integrity key; None for AEAD suites.
    auth_key_file: Path | None = field(metadata=key(default=DERIVED,
                                                    unset="none (the suite is AEAD)"))
    esn: bool = field(metadata=key(v.boolean(), default=True))
    #: Default: keys.replay_window.
    replay_window: int = field(metadata=key(v.replay_window, default=DERIVED))
    #: The file's ``lifetime`` table holds both limits; absent: no limit.
    soft: Lifetime = field(metadata=key(name="lifetime", default=DERIVED, show=_show_lifetime,
                                        value_of=lambda sa: (sa.soft, sa.hard)))
    hard: Lifetime
    enc_key: bytes | None = field(default=None, repr=False)
    auth_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KeysConfig:
    mode: KeyMode = field(metadata=key(v.enum(KeyMode), default=KeyMode.STATIC))
    backend: str = field(metadata=key(v.choice(BACKENDS), default=BACKENDS[0]))
    #: Default replay window of the SAs that do not set one.
    replay_window: int = field(metadata=key(v.replay_window, default=DEFAULT_REPLAY_WINDOW))
    #: Where static SAs keep their sequence numbers across restarts
    #: (vmip.ipsec.seqstate); the loader's default is /var/lib/vmip/<node name>.
    state_dir: Path | None = field(default=None, metadata=key(
        default=DERIVED, unset="/var/lib/vmip/<node name>"))
    sa: tuple[SaConfig, ...] = field(default=(), metadata=section(SaConfig, array=True))


_SELECTOR = v.network("a prefix", '"2001:db8:100::10/128"', address_hint_len=128)


@dataclass(frozen=True)
class PolicyConfig:
    """One SPD entry (RFC 4301 §4.4.1); ``None`` selector fields mean ANY."""

    name: str = field(metadata=key(v.name('"mn-cn-out"'), example='"mn-cn-out"'))
    direction: Direction = field(metadata=key(v.enum(Direction, ("in", "out")),
                                              example='"out"'))
    src: Network = field(metadata=key(_SELECTOR, example='"2001:db8:100::10/128"'))
    dst: Network = field(metadata=key(_SELECTOR, example='"2001:db8:20::2/128"'))
    protocol: int | None = field(metadata=key(v.protocol, default=None, show=v.show_protocol))
    src_ports: PortRange | None = field(metadata=key(v.port_range, default=None,
                                                     show=v.show_ports))
    dst_ports: PortRange | None = field(metadata=key(v.port_range, default=None,
                                                     show=v.show_ports))
    icmp_type: int | None = field(metadata=key(v.byte_or_any("an ICMPv6 type"), default=None,
                                               show=v.show_byte_or_any))
    icmp_code: int | None = field(metadata=key(v.byte_or_any("an ICMPv6 code"), default=None,
                                               show=v.show_byte_or_any))
    mh_type: int | None = field(metadata=key(v.byte_or_any("an MH type"), default=None,
                                             show=v.show_byte_or_any))
    action: Action = field(metadata=key(v.enum(Action), default=Action.PROTECT))
    #: SA bundle by name, innermost first (static keying, PROTECT only).
    sa: tuple[str, ...] = field(metadata=key(
        v.list_of(v.name('"mn-cn-out"'), '"mn-cn-out"', what="SA name"), default=()))
    #: Lower wins; ties keep file order.
    priority: int = field(metadata=key(v.integer("100", 0, 2**31 - 1, "a priority"),
                                       default=DEFAULT_PRIORITY))


@dataclass(frozen=True)
class FlowConfig:
    """One ``[[flow]]``: how this node sends the packets it matches when a peer
    has several bound paths (multiple care-of addresses, docs/multi-coa.md).

    Matched on the inner packet as it leaves, before ESP; the first flow that
    matches wins, a packet no flow matches is sent as ``"best"``.
    """

    name: str = field(metadata=key(v.name('"voice"'), example='"voice"'))
    protocol: int | None = field(metadata=key(v.protocol, default=None, show=v.show_protocol))
    #: The inner destination; None: any.
    remote: IPv6Network | None = field(metadata=key(
        v.prefix_or_address("the inner destination", '"2001:db8:20::2/128"'), default=None,
        unset="any destination"))
    #: Inner source ports (ours) and destination ports (the peer's); tcp/udp only.
    local_ports: PortRange | None = field(metadata=key(v.port_range, default=None,
                                                       show=v.show_ports))
    remote_ports: PortRange | None = field(metadata=key(v.port_range, default=None,
                                                        show=v.show_ports))
    #: "best", "duplicate" or "link:<name of a [[link]]>" (checked by the loader).
    send: str = field(metadata=key(v.string('"duplicate"'), default="best"))


@dataclass(frozen=True)
class IkePeerConfig:
    name: str = field(metadata=key(v.name('"ha"'), example='"ha"'))
    address: Address = field(metadata=key(
        v.address("the peer's address", '"2001:db8:100::1"'), example='"2001:db8:100::1"'))
    #: None: the peer's IP address is its identity.
    remote_id: str | None = field(metadata=key(v.string('"ha@example.net"'), default=None,
                                               unset="the peer's IP address"))
    initiate: bool = field(metadata=key(v.boolean("true"), default=False))
    #: Names of outbound ``protect`` policies whose selectors are proposed as
    #: traffic selectors to this peer; empty: every outbound protect policy.
    policies: tuple[str, ...] = field(default=(), metadata=key(
        v.list_of(v.string('"mh-to-ha"'), '"mh-to-ha"', what="policy name"), default=()))


@dataclass(frozen=True)
class IkeConfig:
    """IKEv2 settings; ``psk`` is what the loader read from ``psk_file``.

    Like an SA's keys, ``psk`` is left out of repr and of the effective config.
    """

    #: None: the local IP address the IKE SA runs from is the identity.
    local_id: str | None = field(metadata=key(v.string('"mn@example.net"'), default=None,
                                              unset="the local IP address"))
    #: The loader reads both secret files itself (they must be private).
    psk_file: Path | None = field(metadata=key(default=DERIVED, unset="none (certificates)"))
    certificate: Path | None = field(metadata=key(v.public_file('"certs/mn.pem"'), default=None,
                                                  unset="none (PSK)"))
    private_key: Path | None = field(metadata=key(default=DERIVED, unset="none (PSK)"))
    ca: tuple[Path, ...] = field(metadata=key(
        v.list_of(v.public_file('"certs/ca.pem"'), '"certs/ca.pem"', what="CA file"),
        default=()))
    proposals: tuple[str, ...] = field(metadata=key(
        v.list_of(v.ike_proposal, '"aes128gcm16-prfsha256-ecp256"', min_items=1,
                  what="proposal"), default=DEFAULT_IKE_PROPOSALS))
    esp_proposals: tuple[str, ...] = field(metadata=key(
        v.list_of(v.choice(tuple(SUITES), '"aes128gcm16"'), '"aes128gcm16"', min_items=1,
                  what="suite"), default=DEFAULT_ESP_PROPOSALS))
    #: Liveness check (RFC 7296 §2.4) after this many seconds without a
    #: message from the peer; 0: never.
    dpd_interval: float = field(metadata=key(
        v.seconds_between("30", 0, 86400, "an interval (0: no liveness checks)"), default=30.0))
    #: First retransmission of an IKE request after this long; each next one
    #: waits twice as long.
    retransmit_timeout: float = field(metadata=key(
        v.seconds_between("1", 0.05, 60, "a timeout"), default=1.0))
    #: Sends of one request before the peer is declared dead (the first counts).
    retransmit_tries: int = field(metadata=key(
        v.integer("5", 1, 20, "a number of sends"), default=5))
    peers: tuple[IkePeerConfig, ...] = field(metadata=section(IkePeerConfig, name="peer",
                                                              array=True))
    #: HA only: admit any mobile node the CA certifies, bound to the home
    #: addresses its certificate names (subjectAltName IPs inside the home
    #: prefix, RFC 4877 §4): these outbound protect policies over the home
    #: prefix are each MN's traffic selectors, narrowed to its own home
    #: addresses.  Empty: off (every MN is an [[ike.peer]]).
    mobile_node_policies: tuple[str, ...] = field(default=(), metadata=key(
        v.list_of(v.string('"mh-to-mobile-nodes"'), '"mh-to-mobile-nodes"', what="policy name"),
        default=()))
    psk: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ControlConfig:
    #: None: ``/run/vmip/<network namespace>.sock`` chosen at run time, which
    #: is where ``vmip`` commands started in the same namespace look.  The
    #: loader reads it (its example names the node).
    socket: Path | None = field(metadata=key(
        default=DERIVED, unset="/run/vmip/<network namespace>.sock, chosen at start"))


@dataclass(frozen=True)
class LoggingConfig:
    level: str = field(metadata=key(v.choice(LOG_LEVELS), default="info"))
    format: str = field(metadata=key(v.choice(LOG_FORMATS), default="text"))
    #: None: standard error ("" in the file: TOML has no null).
    file: Path | None = field(metadata=key(default=DERIVED, unset="standard error"))


@dataclass(frozen=True)
class NodeConfig:
    #: The file the config was read from (absolute).
    source: Path = field(compare=False)
    node: NodeSection = field(metadata=section(NodeSection))
    tun: TunConfig = field(metadata=section(TunConfig))
    links: tuple[LinkConfig, ...] = field(metadata=section(LinkConfig, name="link", array=True))
    peers: tuple[PeerConfig, ...] = field(metadata=section(PeerConfig, name="peer", array=True))
    mobility: MobilityConfig = field(metadata=section(MobilityConfig))
    keys: KeysConfig = field(metadata=section(KeysConfig))
    policies: tuple[PolicyConfig, ...] = field(metadata=section(PolicyConfig, name="policy",
                                                                array=True))
    flows: tuple[FlowConfig, ...] = field(metadata=section(FlowConfig, name="flow", array=True))
    ike: IkeConfig | None = field(metadata=section(IkeConfig,
                                                   unset='not used (keys.mode = "static")'))
    control: ControlConfig = field(metadata=section(ControlConfig))
    logging: LoggingConfig = field(metadata=section(LoggingConfig))

    def has_role(self, role: Role | str) -> bool:
        return Role(role) in self.node.roles

    def sa_by_name(self, name: str) -> SaConfig:
        for sa in self.keys.sa:
            if sa.name == name:
                return sa
        raise KeyError(name)

    @property
    def care_of_addresses(self) -> tuple[IPv6Address, ...]:
        """The CoAs of the links, most preferred link first."""
        ordered = sorted(self.links, key=lambda link: link.priority)
        return tuple(link.coa for link in ordered if link.coa is not None)
