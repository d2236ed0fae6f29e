"""The network's own CA and one certificate per node, for IKEv2 (docs/ike.md).

ECDSA P-256 throughout (what ``ecp256`` in the IKE proposal and RFC 7427
signatures need, and small).  The profile is the one vmip's certificate
check accepts (``vmip.ike.crypto.verify_chain``: WebPKI rules for the CA,
basicConstraints cA and keyUsage keyCertSign; no EKU needed on the leaf).
Each leaf's subjectAltName holds the node's FQDN identity (its
``ike.local_id``) and its overlay address (an MN's home address).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_DAYS = 3650
LEAF_DAYS = 825
#: Clocks of freshly installed hosts are often a little behind.
BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Issued:
    certificate_pem: bytes
    key_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmip"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str, now: datetime.datetime | None = None) -> Issued:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: Issued, fqdn: str, addresses: Sequence[IPv6Address],
          now: datetime.datetime | None = None) -> Issued:
    """A node certificate for *fqdn* and its overlay *addresses*, signed by *ca*."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca_cert = x509.load_pem_x509_certificate(ca.certificate_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(fqdn)]
    names += [x509.IPAddress(address) for address in addresses]
    cert = (x509.CertificateBuilder().subject_name(_name(fqdn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS),
                                 ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def san_of(certificate_pem: bytes) -> tuple[list[str], list[IPv6Address]]:
    """(DNS names, IP addresses) of a certificate's subjectAltName."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (list(san.get_values_for_type(x509.DNSName)),
            [a for a in san.get_values_for_type(x509.IPAddress) if isinstance(a, IPv6Address)])
