"""Drive two sans-IO IKE peers against each other with a fake clock."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from vmip.ike.endpoint import IkeEndpoint
from vmip.ike.ikesa import IkeSa, IkeSaConfig, Role

A = ("2001:db8::a", 500)
B = ("2001:db8::b", 500)


@dataclass
class Wire:
    """Carries datagrams between an initiator IkeSa and a responder endpoint."""

    initiator: IkeSa
    responder: IkeEndpoint
    now: float = 1000.0
    #: Drop datagrams for which this returns True: f(direction, data).
    drop: object = None
    #: Addresses nobody answers at: the responder's datagrams to them are lost.
    unreachable: set = field(default_factory=set)
    log: list = field(default_factory=list)
    events_i: list = field(default_factory=list)
    events_r: list = field(default_factory=list)

    def pump(self, rounds: int = 50) -> None:
        """Deliver until quiet (bounded)."""
        for _ in range(rounds):
            moved = False
            for data, addr in self.initiator.datagrams_to_send(self.now):
                moved = True
                self.log.append(("i>r", data, addr))
                if self.drop and self.drop("i>r", data):
                    continue
                src = self.initiator.local_addr
                self.responder.receive_datagram(data, src, self.now)
            for data, addr in self.responder.datagrams_to_send(self.now):
                moved = True
                self.log.append(("r>i", data, addr))
                if self.drop and self.drop("r>i", data) or tuple(addr) in self.unreachable:
                    continue
                src = (self.responder.local_addr[0], addr[1] if data[:4] == bytes(4) else 500)
                self.initiator.receive_datagram(data, src, self.now)
            self._drain()
            if not moved:
                return
        raise AssertionError("exchange did not settle")

    def _drain(self) -> None:
        while (ev := self.initiator.next_event()) is not None:
            self.events_i.append(ev)
        self.responder.collect()
        while (item := self.responder.next_event()) is not None:
            self.events_r.append(item[1])

    def advance_to_timer(self) -> bool:
        timers = [t for t in (self.initiator.get_timer(), self.responder.get_timer()) if t is not None]
        if not timers:
            return False
        self.now = max(self.now, min(timers))
        self.initiator.handle_timer(self.now)
        self.responder.handle_timer(self.now)
        self._drain()
        return True

    def of(self, side: str, cls: type) -> list:
        return [e for e in (self.events_i if side == "i" else self.events_r) if isinstance(e, cls)]

    @property
    def responder_sa(self) -> IkeSa:
        sas = [sa for sa in self.responder.sas]
        assert len(sas) == 1, sas
        return sas[0]


def make_pair(cfg_i: IkeSaConfig, cfg_r: IkeSaConfig, now: float = 1000.0,
              cookie_threshold: int = 32) -> Wire:
    spis = iter(range(0x1000, 0x10000))
    responder = IkeEndpoint(lambda addr: cfg_r, B, spi_allocator=lambda t: next(spis),
                            cookie_threshold=cookie_threshold)
    initiator = IkeSa(cfg_i, Role.INITIATOR, A, B, now,
                      spi_allocator=lambda t: next(spis) + 0x100000)
    return Wire(initiator, responder, now)


@dataclass
class Pki:
    ca_key: object
    ca: x509.Certificate
    certs: dict
    keys: dict


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(names: dict[str, str], key_type: str = "ec256", now: float | None = None) -> Pki:
    """A CA and one leaf per {label: SAN (FQDN or IP)}."""
    t = datetime.datetime.fromtimestamp(now, datetime.timezone.utc) if now else \
        datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("vmip test CA")).issuer_name(_name("vmip test CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(t - datetime.timedelta(days=1)).not_valid_after(t + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    certs, keys = {}, {}
    for i, (label, san) in enumerate(names.items()):
        if key_type == "rsa":
            key = rsa.generate_private_key(65537, 2048)
        elif key_type == "ec384":
            key = ec.generate_private_key(ec.SECP384R1())
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        try:
            gn = x509.IPAddress(ipaddress.ip_address(san))
        except ValueError:
            gn = x509.DNSName(san)
        cert = (x509.CertificateBuilder().subject_name(_name(san)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(100 + i)
                .not_valid_before(t - datetime.timedelta(days=1)).not_valid_after(t + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([gn]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        certs[label], keys[label] = cert, key
    return Pki(ca_key, ca, certs, keys)
