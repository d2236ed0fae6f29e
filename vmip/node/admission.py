"""A home agent that admits mobile nodes by certificate (RFC 4877 §4).

With ``[ike] mobile_node_policies`` the HA needs no ``[[ike.peer]]``, SA
or policy per mobile node: any IKE initiator may start an exchange, and
once its signature AUTH has verified against the configured CA, the
identity is bound to the home addresses its certificate names (the
subjectAltName IP addresses inside the HA's home prefix).  The IKE SA's
traffic selectors are then scoped to those addresses, so:

- a CHILD_SA whose TSi names another home address narrows to nothing and
  is refused (TS_UNACCEPTABLE, RFC 7296 §2.9);
- every CHILD_SA's SPD selectors name only the certified home addresses,
  so a Binding Update (or tunnelled payload) for another home address that
  arrives on such an SA fails the inbound selector check (RFC 4301 §5.2),
  the check RFC 4877 §4 asks of the HA (the home address in a BU must be
  one the IKE identity is authorized for; binding identities to child SA
  selectors is the Peer Authorization Database's role, RFC 4301 §4.4.3);
- a certificate naming no home address in the prefix (or a PSK peer) is
  refused with AUTHENTICATION_FAILED.

The mapping is the certificate itself: the CA that signs an MN's
certificate decides its home address (``vmip init`` writes the HoA into
every MN certificate's subjectAltName), so adding an MN changes no HA
config.  Pure functions and one small class; the IKE manager
(:mod:`vmip.node.keying`) calls them.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from dataclasses import replace

from cryptography import x509

from vmip.config.model import IkePeerConfig
from vmip.ike.ikesa import IkeSaConfig
from vmip.ike.payloads import Identity, TrafficSelector

#: IKE SAs of admitted MNs are named ``mn:<identity>`` (configured peer
#: names cannot hold ':', so the two never meet).
ADMITTED_PREFIX = "mn:"
#: Home addresses taken from one certificate, at most (a bound on what a
#: CA-signed certificate can make the HA install).
MAX_HOME_ADDRESSES = 8
#: Home addresses whose certified CoAs are remembered (oldest admission forgotten first).
MAX_REMEMBERED = 65536


def certified_home_addresses(certificate: x509.Certificate,
                             home_prefix: ipaddress.IPv6Network) -> tuple[ipaddress.IPv6Address, ...]:
    """The subjectAltName IP addresses of *certificate* inside *home_prefix*."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    found = [a for a in san.get_values_for_type(x509.IPAddress)
             if isinstance(a, ipaddress.IPv6Address) and a in home_prefix]
    return tuple(dict.fromkeys(found))[:MAX_HOME_ADDRESSES]


def certified_care_of_addresses(certificate: x509.Certificate | None,
                                home_prefix: ipaddress.IPv6Network
                                ) -> tuple[ipaddress.IPv6Address, ...]:
    """The subjectAltName IPv6 addresses of *certificate* outside *home_prefix*: its CoAs."""
    if certificate is None:
        return ()
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(dict.fromkeys(a for a in san.get_values_for_type(x509.IPAddress)
                               if isinstance(a, ipaddress.IPv6Address) and a not in home_prefix))


def scope_selectors(allowed: tuple[TrafficSelector, ...],
                    addresses: tuple[ipaddress.IPv6Address, ...]) -> tuple[TrafficSelector, ...]:
    """*allowed* narrowed to single *addresses* (protocol and ports kept)."""
    scoped = []
    for ts in allowed:
        for address in addresses:
            if ts.start.version == 6 and int(ts.start) <= int(address) <= int(ts.end):
                scoped.append(TrafficSelector(address, address, ts.protocol, ts.start_port,
                                              ts.end_port))
    return tuple(dict.fromkeys(scoped))


def is_admitted(name: str) -> bool:
    return name.startswith(ADMITTED_PREFIX)


class MobileNodeAdmission:
    """The HA's side: responder configs for unknown initiators, scoped after AUTH."""

    def __init__(self, policies: tuple[str, ...], home_prefix: ipaddress.IPv6Network) -> None:
        self.policies = policies
        self.home_prefix = home_prefix
        self.counters: Counter[str] = Counter()
        # HoA -> the CoAs its certificate named at its last admission: a BU may
        # bind it only there (the HA's care_of_check).
        self._care_of: OrderedDict[ipaddress.IPv6Address,
                                   tuple[ipaddress.IPv6Address, ...]] = OrderedDict()

    def care_of_refusal(self, hoa: ipaddress.IPv6Address,
                        coa: ipaddress.IPv6Address) -> str | None:
        """Why *hoa* may not be bound to *coa*, or None (unknown HoAs: not ours to judge)."""
        certified = self._care_of.get(hoa)
        if certified is None or coa in certified:
            return None
        self.counters["binding_refused_care_of_address"] += 1
        return f"the certificate for {hoa} does not name {coa}"

    def peer(self, name: str, address: str) -> IkePeerConfig:
        """The peer an admitted (or still anonymous) MN at IKE *address* stands for."""
        return IkePeerConfig(name=name, address=ipaddress.ip_address(address.split("%")[0]),
                             remote_id=None, initiate=False, policies=self.policies)

    def may_use(self, certificate: x509.Certificate | None, address: str) -> bool:
        """Is the IKE *address* (the MN's CoA on the overlay) one *certificate* names?"""
        try:
            wanted = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return wanted in certified_care_of_addresses(certificate, self.home_prefix)

    def authorize(self, config: IkeSaConfig, identity: Identity,
                  certificate: x509.Certificate | None, address: str) -> IkeSaConfig | str:
        """Bind the authenticated *identity* to its certified home addresses, and
        check that it runs IKE from one of its certified CoAs (*address*, where
        the IKE_AUTH request came from: the SA's address from then on)."""
        if certificate is None:
            self.counters["admission_refused_no_certificate"] += 1
            return "mobile nodes are admitted by certificate only"
        if not self.may_use(certificate, address):
            # Another MN's CoA: its locator would follow us (RFC 7296 §2.23).
            self.counters["admission_refused_care_of_address"] += 1
            return (f"the certificate of {identity} does not name {address}, the address "
                    f"its IKE comes from (a care-of address)")
        addresses = certified_home_addresses(certificate, self.home_prefix)
        if not addresses:
            self.counters["admission_refused_no_home_address"] += 1
            return (f"the certificate of {identity} names no home address in "
                    f"{self.home_prefix} (subjectAltName IP)")
        remote_ts = scope_selectors(config.remote_ts, addresses)
        if not remote_ts:
            self.counters["admission_refused_no_selector"] += 1
            return f"no policy covers the home addresses of {identity}"
        self.counters["admitted"] += 1
        care_of = certified_care_of_addresses(certificate, self.home_prefix)
        for hoa in addresses:
            self._care_of[hoa] = care_of
            self._care_of.move_to_end(hoa)
        while len(self._care_of) > MAX_REMEMBERED:
            self._care_of.popitem(last=False)
        name = f"{ADMITTED_PREFIX}{identity}"
        # The plans' child names follow the IKE SA's (keying_policy.child_plans).
        child = name + config.child_name[len(config.name):] \
            if config.child_name.startswith(config.name) else name
        return replace(config, name=name, child_name=child, remote_id=identity,
                       remote_ts=remote_ts, authorize=None)
