"""What a loaded node config *is*: frozen dataclasses, one per section.

Values are already typed and checked when these objects exist: addresses
are :mod:`ipaddress` objects, prefixes ``ip_network``, paths absolute (the
loader resolves them against the config file's directory), ``None`` means
"not set" with the meaning documented on each field.  docs/configuration.md
is the user-facing reference; keep the two in step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path

from vmip.ipsec.sa import Direction, Lifetime, Mode

__all__ = [
    "DEFAULT_PORTS",
    "PROTOCOL_NUMBERS",
    "Action",
    "Address",
    "ControlConfig",
    "Direction",
    "Driver",
    "Endpoint",
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

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Interface = IPv4Interface | IPv6Interface
#: Inclusive (low, high); ``None`` stands for "any port".
PortRange = tuple[int, int]


class Role(enum.StrEnum):
    MN = "mn"
    HA = "ha"
    CN = "cn"


class Driver(enum.StrEnum):
    """How on-wire packets travel (DESIGN-BRIEF §3); also a peer's framing."""

    UDP = "udp"
    RAW = "raw"
    RFC3948 = "rfc3948"


#: Underlay port of each driver when the config names none (raw has no port).
DEFAULT_PORTS: dict[Driver, int | None] = {Driver.UDP: 6275, Driver.RFC3948: 4500, Driver.RAW: None}

#: Protocol names accepted in policies (IANA protocol numbers).
PROTOCOL_NUMBERS: dict[str, int] = {"tcp": 6, "udp": 17, "icmpv6": 58, "mh": 135}


class Action(enum.StrEnum):
    """What an SPD entry does with matching traffic (RFC 4301 §4.4.1)."""

    PROTECT = "protect"
    BYPASS = "bypass"
    DISCARD = "discard"


class KeyMode(enum.StrEnum):
    STATIC = "static"
    IKE = "ike"


class TunnelKind(enum.StrEnum):
    """How MN-HA payload is tunnelled (draft appendix D allows plain IPv6-in-IPv6)."""

    ESP = "esp"
    IP6IP6 = "ip6ip6"


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
    name: str
    #: Every node also answers as a CN; ``cn`` alone is the default.
    roles: tuple[Role, ...]
    #: After start-up the node becomes this user, keeping only CAP_NET_ADMIN
    #: (and CAP_NET_RAW for the raw driver); None: it stays as started.
    user: str | None = None


@dataclass(frozen=True)
class TunConfig:
    name: str
    #: Overlay addresses with their prefix length; an MN's HoA is among them.
    addresses: tuple[Interface, ...]
    mtu: int
    #: Extra prefixes routed into the TUN.
    routes: tuple[Network, ...]


@dataclass(frozen=True)
class LinkConfig:
    name: str
    driver: Driver
    #: Underlay interface to bind to; None: whatever the routing table picks.
    interface: str | None
    #: Local underlay address to bind; None: any address.
    bind: Address | None
    #: Underlay port; None only for the raw driver, which has none.
    port: int | None
    #: MN only: the care-of address this link gives (an on-wire address).
    coa: IPv6Address | None
    #: Lower is preferred (wifi before lte); ties keep file order.
    priority: int
    #: Seconds between NAT keepalives; 0 turns them off.
    keepalive: int


@dataclass(frozen=True)
class PeerConfig:
    name: str
    #: On-wire addresses reachable through this peer (static locators).
    prefixes: tuple[Network, ...]
    #: None for raw framing (the OS routes) or when the locator is learned.
    endpoint: Endpoint | None
    framing: Driver
    #: The peer for on-wire destinations no prefix matches.
    default: bool


@dataclass(frozen=True)
class MobilityConfig:
    home_prefix: IPv6Network | None
    home_address: IPv6Address | None
    home_agent: IPv6Address | None
    correspondents: tuple[IPv6Address, ...]
    #: Seconds; RFC 6275 §6.1.7 carries it in 4-second units in 16 bits.
    binding_lifetime: int
    tunnel: TunnelKind
    #: CN: how many proven (HoA, CoA) pairs are kept (draft §4.5.1, bounded cache).
    proof_cache_size: int


@dataclass(frozen=True)
class SaConfig:
    """One static SA, as setkey's ``add`` (contract: :class:`vmip.ipsec.sa.SaParams`)."""

    name: str
    spi: int
    direction: Direction
    #: SA-level addresses (HoA, never the CoA, for IRO-tracked SAs); the
    #: outer endpoints for tunnel mode (RFC 4301 §4.4.2).
    src: Address
    dst: Address
    mode: Mode
    suite: str
    #: Encryption key (salt included for AEAD); None only for NULL encryption.
    key_file: Path | None
    #: Integrity key; None for AEAD suites.
    auth_key_file: Path | None
    esn: bool
    replay_window: int
    soft: Lifetime
    hard: Lifetime


@dataclass(frozen=True)
class KeysConfig:
    mode: KeyMode
    backend: str
    #: Default replay window of the SAs that do not set one.
    replay_window: int
    sa: tuple[SaConfig, ...]
    #: Where static SAs keep their sequence numbers across restarts
    #: (vmip.ipsec.seqstate); None: /var/lib/vmip/<node name>.
    state_dir: Path | None = None


@dataclass(frozen=True)
class PolicyConfig:
    """One SPD entry (RFC 4301 §4.4.1); ``None`` selector fields mean ANY."""

    name: str
    direction: Direction
    src: Network
    dst: Network
    protocol: int | None
    src_ports: PortRange | None
    dst_ports: PortRange | None
    icmp_type: int | None
    icmp_code: int | None
    mh_type: int | None
    action: Action
    #: SA bundle by name, innermost first (static keying, PROTECT only).
    sa: tuple[str, ...]
    #: Lower wins; ties keep file order.
    priority: int


@dataclass(frozen=True)
class IkePeerConfig:
    name: str
    address: Address
    #: None: the peer's IP address is its identity.
    remote_id: str | None
    initiate: bool
    #: Names of outbound ``protect`` policies whose selectors are proposed as
    #: traffic selectors to this peer; empty: every outbound protect policy.
    policies: tuple[str, ...] = ()


@dataclass(frozen=True)
class IkeConfig:
    #: None: the local IP address the IKE SA runs from is the identity.
    local_id: str | None
    psk_file: Path | None
    certificate: Path | None
    private_key: Path | None
    ca: tuple[Path, ...]
    proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    peers: tuple[IkePeerConfig, ...]


@dataclass(frozen=True)
class ControlConfig:
    #: None: ``/run/vmip/<network namespace>.sock`` chosen at run time, which
    #: is where ``vmip`` commands started in the same namespace look.
    socket: Path | None


@dataclass(frozen=True)
class LoggingConfig:
    level: str
    format: str
    #: None: standard error.
    file: Path | None


@dataclass(frozen=True)
class NodeConfig:
    #: The file the config was read from (absolute).
    source: Path = field(compare=False)
    node: NodeSection
    tun: TunConfig
    links: tuple[LinkConfig, ...]
    peers: tuple[PeerConfig, ...]
    mobility: MobilityConfig
    keys: KeysConfig
    policies: tuple[PolicyConfig, ...]
    ike: IkeConfig | None
    control: ControlConfig
    logging: LoggingConfig

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
