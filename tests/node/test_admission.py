"""An HA admitting MNs by certificate (vmip.node.admission), between two sans-IO IKE peers.

The running-node attack (an MN certified for one HoA claiming another) is
tests/init/test_cert_admission.py; here each rule alone: the HoA comes from
the certificate's subjectAltName inside the home prefix, the traffic
selectors are scoped to it after AUTH (initial and later CHILD_SAs), and a
certificate naming no HoA or a PSK peer is refused.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from dataclasses import replace
from pathlib import Path

from cryptography import x509

from vmip.ike import crypto
from vmip.ike.events import AuthenticationFailed, ChildSaCreated, ChildSaFailed
from vmip.ike.ikesa import IkeSaConfig, Mode
from vmip.ike.payloads import Identity, TrafficSelector
from vmip.init import pki
from vmip.node.admission import MobileNodeAdmission, certified_home_addresses, scope_selectors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ike"))
from ikepair import A, make_pair  # the IKE tests' two-peer driver

PREFIX = ipaddress.IPv6Network("2001:db8:100::/64")
HA = ipaddress.IPv6Address("2001:db8:100::1")
MINE, OTHER = ipaddress.IPv6Address("2001:db8:100::10"), ipaddress.IPv6Address("2001:db8:100::20")
MH = 135
#: The MN's IKE address in the pair: its care-of address.
COA = ipaddress.IPv6Address(A[0])


def _mh(start, end=None) -> TrafficSelector:
    return TrafficSelector(start, end or start, MH, 0, 0xFFFF)


def _any(start, end=None) -> TrafficSelector:
    return TrafficSelector(start, end or start)


CA = pki.make_ca("test CA")


def _credentials(fqdn: str, addresses) -> dict:
    issued = pki.issue(CA, fqdn, addresses)
    return {"local_id": Identity.from_text(fqdn),
            "certificate": x509.load_pem_x509_certificate(issued.certificate_pem),
            "private_key": crypto.load_private_key(issued.key_pem),
            "cas": (x509.load_pem_x509_certificate(CA.certificate_pem),)}


def _ha_config(admission: MobileNodeAdmission) -> IkeSaConfig:
    # What IkeManager gives an unknown initiator: the template's union over the prefix.
    top = PREFIX.broadcast_address
    return IkeSaConfig(name="mn:2001:db8::a", child_name="mn:2001:db8::a",
                       local_ts=(_mh(HA), _any(ipaddress.IPv6Address("::"),
                                               ipaddress.IPv6Address("ffff:" * 7 + "ffff"))),
                       remote_ts=(_mh(PREFIX.network_address, top),
                                  _any(PREFIX.network_address, top)),
                       mode=Mode.TRANSPORT,
                       authorize=admission.authorize,
                       **_credentials("ha.test", [HA]))


def _mn_config(hoa, certified, care_of=(COA,)) -> IkeSaConfig:
    return IkeSaConfig(name="ha", child_name="ha", remote_id=Identity.from_text("ha.test"),
                       local_ts=(_mh(hoa),), remote_ts=(_mh(HA),), mode=Mode.TRANSPORT,
                       **_credentials("mn.test", [*certified, *care_of]))


def _run(mn: IkeSaConfig):
    admission = MobileNodeAdmission(("mh", "tunnel"), PREFIX)
    wire = make_pair(mn, _ha_config(admission))
    wire.now = time.time()  # the certificates are valid from now on
    wire.initiator.initiate(wire.now)
    wire.pump()
    return wire, admission


def test_the_certified_hoa_gets_its_mh_pair_and_its_tunnel_named_by_identity():
    wire, admission = _run(_mn_config(MINE, [MINE]))
    created = wire.of("r", ChildSaCreated)
    assert created and created[0].remote_ts == (_mh(MINE),)
    sa = wire.responder_sa
    assert sa.config.name == "mn:mn.test" and sa.config.remote_ts == (_mh(MINE), _any(MINE))
    # A later CHILD_SA (the payload tunnel) is scoped the same way.
    wire.initiator.create_child(wire.now, "tunnel", (_any(MINE),),
                                (_any(ipaddress.IPv6Address("::"),
                                      ipaddress.IPv6Address("ffff:" * 7 + "ffff")),), Mode.TUNNEL)
    wire.pump()
    tunnel = wire.of("r", ChildSaCreated)[1]
    assert _any(MINE) in tunnel.remote_ts
    assert all(ts.start == ts.end == MINE for ts in tunnel.remote_ts)
    assert admission.counters["admitted"] == 1


def test_a_valid_certificate_does_not_buy_another_hoa():
    # Certified for OTHER, asks for MINE: narrowed to nothing (RFC 7296 §2.9).
    wire, _ = _run(_mn_config(MINE, [OTHER]))
    assert not wire.of("r", ChildSaCreated)
    assert wire.of("i", ChildSaFailed) or not wire.of("i", ChildSaCreated)
    # Asking for the whole prefix gets only the certified HoA.
    wide = replace(_mn_config(MINE, [OTHER]),
                   local_ts=(_mh(PREFIX.network_address, PREFIX.broadcast_address),))
    wire, _ = _run(wide)
    assert [c.remote_ts for c in wire.of("r", ChildSaCreated)] == [(_mh(OTHER),)]
    assert [c.local_ts for c in wire.of("i", ChildSaCreated)] == [(_mh(OTHER),)]


def test_a_certificate_without_a_hoa_in_the_prefix_is_refused():
    wire, admission = _run(_mn_config(MINE, [ipaddress.IPv6Address("2001:db8:200::10")]))
    assert wire.of("i", AuthenticationFailed) and not wire.of("r", ChildSaCreated)
    assert not [sa for sa in wire.responder.sas if sa.is_established]
    assert admission.counters["admission_refused_no_home_address"] == 1


def test_ike_from_a_care_of_address_the_certificate_does_not_name_is_refused():
    # Another MN's CoA: were it admitted, the HA's locator for it would follow us.
    other_coa = ipaddress.IPv6Address("2001:db8::b0")
    wire, admission = _run(_mn_config(MINE, [MINE], care_of=[other_coa]))
    assert wire.of("i", AuthenticationFailed) and not wire.of("r", ChildSaCreated)
    assert admission.counters["admission_refused_care_of_address"] == 1
    assert admission.may_use(_mn_config(MINE, [MINE]).certificate, A[0])
    assert not admission.may_use(_mn_config(MINE, [MINE]).certificate, str(other_coa))


def test_ike_auth_from_another_address_than_the_certified_one_is_refused():
    # IKE_SA_INIT from its own CoA, IKE_AUTH from another's: the check is at AUTH,
    # from where the SA will run (the responder follows the AUTH, RFC 7296 §2.23).
    admission = MobileNodeAdmission(("mh", "tunnel"), PREFIX)
    wire = make_pair(_mn_config(MINE, [MINE]), _ha_config(admission))

    def switch_at_auth(direction, data):
        if direction == "i>r" and data[18] == 35:  # IKE_AUTH (no NAT: no marker)
            wire.initiator.local_addr = ("2001:db8::b0", 500)
        return False
    wire.drop = switch_at_auth
    wire.now = time.time()
    wire.initiator.initiate(wire.now)
    wire.pump()
    assert wire.of("i", AuthenticationFailed) and not wire.of("r", ChildSaCreated)
    assert admission.counters["admission_refused_care_of_address"] == 1


def test_bindings_of_an_admitted_hoa_only_at_its_certified_care_of_addresses():
    wire, admission = _run(_mn_config(MINE, [MINE]))
    assert wire.of("r", ChildSaCreated)
    assert admission.care_of_refusal(MINE, COA) is None
    assert admission.care_of_refusal(MINE, ipaddress.IPv6Address("2001:db8::b0")) is not None
    assert admission.care_of_refusal(OTHER, COA) is None  # not admitted here: not ours
    assert admission.counters["binding_refused_care_of_address"] == 1


def test_only_certificates_name_a_hoa():
    admission = MobileNodeAdmission(("mh",), PREFIX)
    config = IkeSaConfig(remote_ts=(_any(PREFIX.network_address, PREFIX.broadcast_address),))
    assert isinstance(admission.authorize(config, Identity.from_text("mn.test"), None, A[0]),
                      str)
    # Addresses outside the prefix, IPv4 ones and duplicates are not home addresses.
    issued = pki.issue(CA, "mn.test", [MINE, MINE, ipaddress.IPv6Address("2001:db8:300::1")])
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert certified_home_addresses(cert, PREFIX) == (MINE,)
    assert scope_selectors((_mh(PREFIX.network_address, PREFIX.broadcast_address),
                            _any(HA)), (MINE,)) == (_mh(MINE),)

