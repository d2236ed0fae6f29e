"""The network description ``vmip init`` works from, and its parsers.

A description names one home agent, any number of mobile nodes and of
correspondents, the home prefix and how keys are made.  It comes from the
command line (``--ha NAME=HOST:PORT --mn NAME --cn NAME=HOST:PORT``) or from
a TOML file, and is saved as ``DIR/network.toml`` with every address it
allocated written out, so that ``vmip init DIR --add-mn NAME`` later keeps
every existing node where it is and only appends.

Addressing (docs/init.md):

- home prefix: given, or a random ULA /64 (RFC 4193: fd00::/8 + 40 random
  bits + subnet 0); the HA takes ``::1``, mobile node *i* (1-based, in
  description order) ``::10 * i`` unless the description gives a HoA;
- a second prefix, the *site* /48 (the home prefix's own /48 when the home
  prefix is a ULA we made, else a fresh random ULA /48), gives the overlay
  addresses no host owns on the underlay: mobile node *i*'s link *j* (0-based)
  gets the care-of address ``<site>:<i*0x100 + j + 1>::2`` (the lab's CoAs
  are ``::2`` in a /64 per link, too), correspondent *k* ``<site>:ffff::<k>``.

Every parser raises :class:`DescriptionError` (exit status 2) with the fix
spelled out, and nothing else.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from typing import Any

from vmip.errors import UsageError

#: vmip's usual udp-driver port (docs/configuration.md).
DEFAULT_PORT = 6275
KEY_MODES = ("ike", "static")
DEFAULT_KEY_MODE = "ike"
DEFAULT_DOMAIN = "vmip.internal"
#: The SPI plan packs node indices into one octet each, the top bit marking an MN peer.
MAX_NODES = 127
#: Node names as the config schema takes them (``node.name``).
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Linux interface names: IFNAMSIZ 16 with the NUL, no '/', ':' or spaces.
_IFNAME_RE = re.compile(r"[^/:\s]{1,15}")
_DOMAIN_RE = re.compile(r"(?=.{1,200}$)[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
#: Subnet of the site prefix that holds the correspondents' overlay addresses.
CN_SUBNET = 0xFFFF
DEFAULT_LINK = "net0"


class DescriptionError(UsageError):
    """The network description cannot work; the message says what to write instead."""


@dataclass(frozen=True)
class Endpoint:
    """An underlay address and port, as a ``[[peer]] endpoint`` takes it."""

    host: IPv4Address | IPv6Address
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.host.version == 6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HomeAgent:
    name: str
    endpoint: Endpoint
    address: IPv6Address


@dataclass(frozen=True)
class Correspondent:
    name: str
    endpoint: Endpoint
    address: IPv6Address


@dataclass(frozen=True)
class MnLink:
    name: str
    coa: IPv6Address
    interface: str | None = None


@dataclass(frozen=True)
class MobileNode:
    name: str
    home_address: IPv6Address
    links: tuple[MnLink, ...]
    #: Names of the CNs and MNs it registers with; ``None``: all of them.
    correspondents: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Network:
    keys: str
    home_prefix: IPv6Network
    site_prefix: IPv6Network
    ha: HomeAgent
    mns: tuple[MobileNode, ...] = ()
    cns: tuple[Correspondent, ...] = ()
    domain: str = DEFAULT_DOMAIN

    @property
    def names(self) -> list[str]:
        return [self.ha.name, *(mn.name for mn in self.mns), *(cn.name for cn in self.cns)]

    def mn(self, name: str) -> MobileNode:
        for mn in self.mns:
            if mn.name == name:
                return mn
        raise KeyError(name)

    def mn_index(self, name: str) -> int:
        """1-based position: the SPI plan and the CoA subnets use it."""
        return [mn.name for mn in self.mns].index(name) + 1

    def cn_index(self, name: str) -> int:
        return [cn.name for cn in self.cns].index(name) + 1

    def correspondents_of(self, mn: MobileNode) -> tuple[list[Correspondent], list[MobileNode]]:
        """The CNs and the other MNs *mn* has SAs with and registers with.

        MN-MN is symmetric: the pair exists when either lists the other,
        since each end is the other's correspondent (draft §5.2.2).
        """
        def lists(a: MobileNode, b: str) -> bool:
            return a.correspondents is None or b in a.correspondents
        cns = [cn for cn in self.cns if lists(mn, cn.name)]
        mns = [other for other in self.mns if other.name != mn.name
               and (lists(mn, other.name) or lists(other, mn.name))]
        return cns, mns

    def mns_of(self, cn: Correspondent) -> list[MobileNode]:
        return [mn for mn in self.mns if cn in self.correspondents_of(mn)[0]]

    def fqdn(self, name: str) -> str:
        """The node's IKE identity and certificate DNS name."""
        return f"{name}.{self.domain}"


# --- command-line specs ---------------------------------------------------------------------

def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise DescriptionError(
            f"{what}: {name!r} is not a usable node name; use letters, digits, '.', '_' or "
            "'-' (64 at most), such as laptop")
    return name


def parse_endpoint(text: object, what: str) -> Endpoint:
    """``HOST:PORT`` with HOST an IPv4 address, or ``[IPv6]:PORT``; the port is required."""
    example = "192.0.2.1:6275 or [2001:db8::1]:6275"
    if not isinstance(text, str) or not text:
        raise DescriptionError(f"{what}: give the node's underlay address and port, "
                               f"such as {example}")
    port_text: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (close + 1 < len(text) and text[close + 1] != ":"):
            raise DescriptionError(f"{what}: {text!r} is not an address:port; write {example}")
        host, port_text = text[1:close], (text[close + 2:] if close + 1 < len(text) else None)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    try:
        if "%" in host or "/" in host:
            raise ValueError(host)
        address = ip_address(host)
    except ValueError:
        if _looks_like_hostname(host):
            # The config schema takes addresses only ([[peer]] endpoint): no resolver at start.
            raise DescriptionError(
                f"{what}: {host!r} is a host name, but node configs take underlay addresses "
                f"only; give its address instead (getent ahosts {host}), such as "
                f"203.0.113.5:{port_text or DEFAULT_PORT}") from None
        raise DescriptionError(f"{what}: {text!r} is not an address:port; "
                               f"write {example}") from None
    if text.startswith("[") and address.version != 6:
        raise DescriptionError(f"{what}: {text!r} puts an IPv4 address in brackets; "
                               f"write {address}:{port_text or DEFAULT_PORT}")
    if port_text is None:
        shown = f"[{address}]" if address.version == 6 else str(address)
        raise DescriptionError(
            f"{what}: {text!r} has no port; the other nodes must know where it listens: "
            f"write {shown}:{DEFAULT_PORT} ({DEFAULT_PORT} is vmip's usual port)")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise DescriptionError(f"{what}: {text!r} has no valid port (1-65535); write {example}")
    if address.is_unspecified or address.is_multicast:
        raise DescriptionError(f"{what}: {address} cannot be a node's address; give the "
                               "address the other nodes reach it at")
    return Endpoint(address, int(port_text))


def _looks_like_hostname(host: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?", host)) \
        and not host.replace(".", "").isdigit()


def parse_named_endpoint(spec: str, option: str) -> tuple[str, Endpoint]:
    """``NAME=HOST:PORT`` (``--ha``, ``--cn``)."""
    if not isinstance(spec, str) or "=" not in spec:
        raise DescriptionError(f"{option} {spec!r}: write NAME=HOST:PORT, such as "
                               f"{option} {option.strip('-')}=192.0.2.1:{DEFAULT_PORT}")
    name, _, endpoint = spec.partition("=")
    check_name(name, f"{option} {spec}")
    return name, parse_endpoint(endpoint, f"{option} {spec}")


@dataclass(frozen=True)
class MnSpec:
    """``--mn NAME[:IFACE,IFACE...][=HOA]`` before addresses are allocated."""

    name: str
    interfaces: tuple[str, ...] = ()
    home_address: IPv6Address | None = None


def parse_mn_spec(spec: str) -> MnSpec:
    what = f"--mn {spec}"
    if not isinstance(spec, str):
        raise DescriptionError("--mn: write NAME, such as --mn laptop")
    left, eq, hoa_text = spec.partition("=")
    name, colon, ifaces_text = left.partition(":")
    check_name(name, what)
    interfaces: tuple[str, ...] = ()
    if colon:
        interfaces = tuple(ifaces_text.split(","))
        for iface in interfaces:
            _check_ifname(iface, what)
        if len(set(interfaces)) != len(interfaces):
            raise DescriptionError(f"{what}: an interface is named twice; name each once")
    hoa = _ipv6(hoa_text, what, "a home address such as fd12:3456:789a::10") if eq else None
    return MnSpec(name, interfaces, hoa)


def _check_ifname(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name) or name in (".", ".."):
        raise DescriptionError(f"{what}: {name!r} is not a Linux interface name; "
                               "write up to 15 characters without '/', ':' or spaces, "
                               "such as wlan0")
    return name


def _ipv6(text: Any, what: str, example: str) -> IPv6Address:
    try:
        if not isinstance(text, str) or "%" in text:
            raise ValueError(text)
        address = ip_address(text)
    except ValueError:
        raise DescriptionError(f"{what}: {text!r} is not an IPv6 address; write {example}") \
            from None
    if address.version != 6:
        raise DescriptionError(f"{what}: {text!r} is IPv4; overlay addresses are IPv6: "
                               f"write {example}")
    return address


def parse_prefix(text: Any, what: str) -> IPv6Network:
    example = "fd12:3456:789a::/64"
    try:
        if not isinstance(text, str) or "/" not in text:
            raise ValueError(text)
        prefix = IPv6Network(text)
    except ValueError:
        hint = f"write {text}/64" if isinstance(text, str) and "/" not in text else \
            f"write an IPv6 prefix without host bits, such as {example}"
        raise DescriptionError(f"{what}: {text!r} is not an IPv6 prefix; {hint}") from None
    if not 16 <= prefix.prefixlen <= 120:
        raise DescriptionError(f"{what}: {prefix} leaves no room for home addresses or is too "
                               f"wide; use a length from /16 to /120, usually /64")
    if prefix.is_multicast or prefix.is_loopback or prefix.is_link_local:
        raise DescriptionError(f"{what}: {prefix} cannot be a home prefix; use a global or "
                               f"ULA prefix such as {example}")
    return prefix


def random_ula(prefixlen: int = 64) -> IPv6Network:
    """RFC 4193 §3.2: fd00::/8 and a 40-bit random Global ID (subnet 0 for a /64)."""
    global_id = secrets.randbits(40)
    value = (0xFD << 120) | (global_id << 80)
    return IPv6Network((value, prefixlen))


# --- building and checking a network ----------------------------------------------------------

@dataclass
class _Builder:
    keys: str = DEFAULT_KEY_MODE
    home_prefix: IPv6Network | None = None
    site_prefix: IPv6Network | None = None
    domain: str = DEFAULT_DOMAIN
    ha: tuple[str, Endpoint] | None = None
    mns: list[tuple[MnSpec, list[MnLink] | None, tuple[str, ...] | None]] = field(
        default_factory=list)
    cns: list[tuple[str, Endpoint, IPv6Address | None]] = field(default_factory=list)


def build_network(*, ha: str | None, mns: Iterable[str] = (), cns: Iterable[str] = (),
                  keys: str = DEFAULT_KEY_MODE, home_prefix: str | None = None,
                  domain: str = DEFAULT_DOMAIN) -> Network:
    """The network of ``vmip init``'s command line, with every address allocated."""
    if ha is None:
        raise DescriptionError("a network needs its home agent: add --ha NAME=HOST:PORT, "
                               f"such as --ha ha=192.0.2.1:{DEFAULT_PORT}")
    builder = _Builder(keys=_key_mode(keys, "--keys"), domain=_domain(domain, "--domain"))
    builder.ha = parse_named_endpoint(ha, "--ha")
    if home_prefix is not None:
        builder.home_prefix = parse_prefix(home_prefix, "--home-prefix")
    for spec in mns:
        builder.mns.append((parse_mn_spec(spec), None, None))
    for spec in cns:
        name, endpoint = parse_named_endpoint(spec, "--cn")
        builder.cns.append((name, endpoint, None))
    return _finish(builder)


def add_mobile_node(network: Network, spec: str) -> Network:
    """*network* with one more MN (``--add-mn``); nothing already there moves."""
    parsed = parse_mn_spec(spec)
    if parsed.name in network.names:
        raise DescriptionError(f"--add-mn {spec}: the network has a node named "
                               f"{parsed.name!r} already; choose another name")
    builder = _builder_of(network)
    builder.mns.append((parsed, None, None))
    return _finish(builder)


def _builder_of(network: Network) -> _Builder:
    builder = _Builder(keys=network.keys, home_prefix=network.home_prefix,
                       site_prefix=network.site_prefix, domain=network.domain,
                       ha=(network.ha.name, network.ha.endpoint))
    builder.mns = [(MnSpec(mn.name, (), mn.home_address), list(mn.links), mn.correspondents)
                   for mn in network.mns]
    builder.cns = [(cn.name, cn.endpoint, cn.address) for cn in network.cns]
    return builder


def _key_mode(keys: Any, what: str) -> str:
    if keys not in KEY_MODES:
        raise DescriptionError(f"{what}: {keys!r} is not a key mode; write one of "
                               f"{', '.join(KEY_MODES)}")
    return keys


def _domain(domain: Any, what: str) -> str:
    if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain):
        raise DescriptionError(f"{what}: {domain!r} is not a DNS domain; write one such as "
                               f"{DEFAULT_DOMAIN}")
    return domain.lower()


def _finish(b: _Builder) -> Network:
    """Check names and addresses, allocate what is missing."""
    assert b.ha is not None
    names = [b.ha[0], *(spec.name for spec, _, _ in b.mns), *(name for name, _, _ in b.cns)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DescriptionError(f"two nodes are named {name!r}; give each node its own name")
        seen.add(name)
    if not b.mns:
        raise DescriptionError("a network needs at least one mobile node: add --mn NAME, "
                               "such as --mn laptop")
    if len(b.mns) > MAX_NODES or len(b.cns) > MAX_NODES:
        raise DescriptionError(f"at most {MAX_NODES} mobile nodes and {MAX_NODES} "
                               "correspondents fit the SPI plan; split the network")
    if b.home_prefix is None:
        b.home_prefix = random_ula(64)
    if b.site_prefix is None:
        b.site_prefix = _site_prefix_for(b.home_prefix)
    home, site = b.home_prefix, b.site_prefix
    ha_address = home.network_address + 1
    used: dict[IPv6Address, str] = {ha_address: f"the home agent {b.ha[0]!r}"}

    mns: list[MobileNode] = []
    for index, (spec, links, correspondents) in enumerate(b.mns, start=1):
        what = f"mobile node {spec.name!r}"
        hoa = spec.home_address
        if hoa is None:
            hoa = _next_hoa(home, used)
        elif hoa not in home:
            raise DescriptionError(
                f"{what}: home address {hoa} is outside the home prefix {home}; give one "
                f"inside it, such as {home.network_address + 0x10 * index}, or leave it out "
                "to have one allocated")
        elif hoa == home.network_address:
            raise DescriptionError(f"{what}: {hoa} is the home prefix's subnet-router anycast "
                                   f"address (RFC 4291 §2.6.1); use another, such as "
                                   f"{home.network_address + 0x10 * index}")
        if hoa in used:
            raise DescriptionError(f"{what}: home address {hoa} is already {used[hoa]}; "
                                   "give each node its own address")
        used[hoa] = what
        if links is None:
            interfaces = spec.interfaces or (None,)
            links = [MnLink(iface or DEFAULT_LINK, _coa(site, index, j), iface)
                     for j, iface in enumerate(interfaces)]
        for link in links:
            if link.coa in home:
                raise DescriptionError(f"{what}: care-of address {link.coa} is inside the home "
                                       f"prefix {home}; a CoA belongs to a visited network")
            if link.coa in used:
                raise DescriptionError(f"{what}: care-of address {link.coa} is already "
                                       f"{used[link.coa]}; give each link its own address")
            used[link.coa] = f"{what}'s link {link.name!r}"
        mns.append(MobileNode(spec.name, hoa, tuple(links), correspondents))

    cns: list[Correspondent] = []
    for index, (name, endpoint, address) in enumerate(b.cns, start=1):
        what = f"correspondent {name!r}"
        if address is None:
            address = site.network_address + (CN_SUBNET << 64) + index
        if address in home:
            raise DescriptionError(f"{what}: overlay address {address} is inside the home "
                                   f"prefix {home}; home addresses belong to mobile nodes")
        if address in used:
            raise DescriptionError(f"{what}: overlay address {address} is already "
                                   f"{used[address]}; give each node its own address")
        used[address] = what
        cns.append(Correspondent(name, endpoint, address))

    network = Network(b.keys, home, site, HomeAgent(b.ha[0], b.ha[1], ha_address),
                      tuple(mns), tuple(cns), b.domain)
    known = set(network.names)
    for mn in network.mns:
        for other in mn.correspondents or ():
            if other not in known:
                raise DescriptionError(
                    f"mobile node {mn.name!r}: correspondents names {other!r}, which is not a "
                    f"node of this network (nodes: {', '.join(network.names)}); add it with "
                    "--cn NAME=HOST:PORT or remove it from the list")
            if other in (mn.name, network.ha.name):
                raise DescriptionError(
                    f"mobile node {mn.name!r}: correspondents names {other!r}; list "
                    "correspondents and other mobile nodes only")
    return network


def _site_prefix_for(home: IPv6Network) -> IPv6Network:
    # The home prefix's own /48 only when it is a ULA /64 at subnet 0 (what we
    # make): the rest of that /48 is then free for CoAs and correspondents.
    if home.prefixlen == 64 and home.network_address in IPv6Network("fd00::/8"):
        site = home.supernet(new_prefix=48)
        if site.network_address == home.network_address:
            return site
    return random_ula(48)


def _next_hoa(home: IPv6Network, used: Mapping[IPv6Address, str]) -> IPv6Address:
    step = 1
    while True:
        candidate = home.network_address + 0x10 * step
        if candidate not in home:
            raise DescriptionError(f"the home prefix {home} has no free home address left; "
                                   "use a wider --home-prefix (a /64)")
        if candidate not in used:
            return candidate
        step += 1


def _coa(site: IPv6Network, index: int, link: int) -> IPv6Address:
    return site.network_address + (((index << 8) + link + 1) << 64) + 2


# --- network.toml ----------------------------------------------------------------------------

def to_document(network: Network) -> dict[str, Any]:
    """What ``DIR/network.toml`` holds; :func:`from_document` reads it back."""
    doc: dict[str, Any] = {
        "keys": network.keys, "domain": network.domain,
        "home_prefix": str(network.home_prefix), "site_prefix": str(network.site_prefix),
        "ha": {"name": network.ha.name, "endpoint": str(network.ha.endpoint),
               "address": str(network.ha.address)},
    }
    mns = []
    for mn in network.mns:
        entry: dict[str, Any] = {"name": mn.name, "home_address": str(mn.home_address)}
        if mn.correspondents is not None:
            entry["correspondents"] = list(mn.correspondents)
        entry["link"] = [{"name": link.name, "coa": str(link.coa),
                          **({"interface": link.interface} if link.interface else {})}
                         for link in mn.links]
        mns.append(entry)
    if mns:
        doc["mn"] = mns
    if network.cns:
        doc["cn"] = [{"name": cn.name, "endpoint": str(cn.endpoint), "address": str(cn.address)}
                     for cn in network.cns]
    return doc


_TOP_KEYS = ("keys", "domain", "home_prefix", "site_prefix", "ha", "mn", "cn")


def from_document(doc: Mapping[str, Any], where: str = "network.toml") -> Network:
    """A description read from TOML: addresses may be left out (then allocated)."""
    _known_keys(doc, _TOP_KEYS, where)
    if "ha" not in doc or not isinstance(doc["ha"], Mapping):
        raise DescriptionError(f"{where}: no [ha] table; add one with name and endpoint, such "
                               f'as [ha] name = "ha" endpoint = "192.0.2.1:{DEFAULT_PORT}"')
    ha = doc["ha"]
    _known_keys(ha, ("name", "endpoint", "address"), f"{where}: [ha]")
    builder = _Builder(keys=_key_mode(doc.get("keys", DEFAULT_KEY_MODE), f"{where}: keys"),
                       domain=_domain(doc.get("domain", DEFAULT_DOMAIN), f"{where}: domain"))
    ha_name = check_name(ha.get("name"), f"{where}: ha.name")
    builder.ha = (ha_name, parse_endpoint(ha.get("endpoint"), f"{where}: ha.endpoint"))
    if "home_prefix" in doc:
        builder.home_prefix = parse_prefix(doc["home_prefix"], f"{where}: home_prefix")
    if "site_prefix" in doc:
        if builder.home_prefix is None:
            raise DescriptionError(f"{where}: site_prefix without home_prefix; give both or "
                                   "neither")
        builder.site_prefix = parse_prefix(doc["site_prefix"], f"{where}: site_prefix")
        if builder.site_prefix.overlaps(builder.home_prefix) \
                and not builder.home_prefix.subnet_of(builder.site_prefix):
            raise DescriptionError(f"{where}: site_prefix {builder.site_prefix} and "
                                   f"home_prefix {builder.home_prefix} overlap oddly; "
                                   "remove site_prefix to get a fresh one")
    if "address" in ha and builder.home_prefix is not None:
        address = _ipv6(ha["address"], f"{where}: ha.address", "the home prefix's ::1")
        if address != builder.home_prefix.network_address + 1:
            raise DescriptionError(f"{where}: ha.address must be the home prefix's ::1 "
                                   f"({builder.home_prefix.network_address + 1}); fix or "
                                   "remove it")
    for i, entry in enumerate(_tables(doc.get("mn", []), f"{where}: mn")):
        what = f"{where}: mn[{i}]"
        _known_keys(entry, ("name", "home_address", "correspondents", "link"), what)
        name = check_name(entry.get("name"), f"{what}.name")
        hoa = _ipv6(entry["home_address"], f"{what}.home_address",
                    "an address in the home prefix") if "home_address" in entry else None
        correspondents = None
        if "correspondents" in entry:
            value = entry["correspondents"]
            if not isinstance(value, list):
                raise DescriptionError(f"{what}.correspondents: write a list of node names, "
                                       'such as ["web"]')
            correspondents = tuple(check_name(n, f"{what}.correspondents") for n in value)
        links = None
        if "link" in entry:
            links = []
            for j, link in enumerate(_tables(entry["link"], f"{what}.link")):
                lwhat = f"{what}.link[{j}]"
                _known_keys(link, ("name", "coa", "interface"), lwhat)
                if "coa" not in link:
                    raise DescriptionError(f"{lwhat}: no coa; give one such as "
                                           f'coa = "{_coa(random_ula(48), i + 1, j)}"')
                interface = _check_ifname(link["interface"], f"{lwhat}.interface") \
                    if "interface" in link else None
                links.append(MnLink(check_name(link.get("name"), f"{lwhat}.name"),
                                    _ipv6(link["coa"], f"{lwhat}.coa", "fd12:3456:789a:101::2"),
                                    interface))
            if not links:
                raise DescriptionError(f"{what}.link: an MN needs at least one link; remove "
                                       "the empty list to get one")
            if len({link.name for link in links}) != len(links):
                raise DescriptionError(f"{what}.link: two links have one name; rename one")
        builder.mns.append((MnSpec(name, (), hoa), links, correspondents))
    for i, entry in enumerate(_tables(doc.get("cn", []), f"{where}: cn")):
        what = f"{where}: cn[{i}]"
        _known_keys(entry, ("name", "endpoint", "address"), what)
        name = check_name(entry.get("name"), f"{what}.name")
        endpoint = parse_endpoint(entry.get("endpoint"), f"{what}.endpoint")
        cn_address = _ipv6(entry["address"], f"{what}.address", "fd12:3456:789a:ffff::1") \
            if "address" in entry else None
        builder.cns.append((name, endpoint, cn_address))
    if builder.site_prefix is None and builder.home_prefix is not None:
        builder.site_prefix = _site_prefix_for(builder.home_prefix)
    return _finish(builder)


def _tables(value: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise DescriptionError(f"{what}: write it as an array of tables ([[{what.split()[-1]}]])")
    return value


def _known_keys(table: Any, known: tuple[str, ...], what: str) -> None:
    if not isinstance(table, Mapping):
        raise DescriptionError(f"{what}: expected a table")
    for key in table:
        if key not in known:
            raise DescriptionError(f"{what}: unknown key {key!r}; the keys are "
                                   f"{', '.join(known)}")


def with_keys(network: Network, keys: str) -> Network:
    return replace(network, keys=_key_mode(keys, "--keys"))
