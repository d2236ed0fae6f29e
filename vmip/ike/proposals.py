"""Proposal strings, SA payload proposals and their negotiation (RFC 7296 §2.7, §3.3).

IKE proposals use strongSwan-like tokens joined by ``-``, e.g.
``aes128gcm16-prfsha256-ecp256`` or ``aes256-sha256-modp2048``:

- encryption: ``aes128 aes192 aes256`` (CBC), ``aes128gcm16 aes192gcm16
  aes256gcm16`` (also ``aesNNNgcm``), ``chacha20poly1305``;
- integrity (CBC only): ``sha256 sha384 sha512`` (HMAC-SHA2, RFC 4868);
- PRF: ``prfsha256 prfsha384 prfsha512``; default: the integrity hash, or
  SHA-256 with an AEAD;
- DH group: ``modp2048 ecp256 ecp384 curve25519`` (alias ``x25519``).

ESP proposals are a suite name of :mod:`vmip.ipsec.suites` optionally
followed by a DH group (PFS in CREATE_CHILD_SA) and ``esn``/``noesn``:
``aes128gcm16``, ``aes128cbc-sha256-ecp256``, ``chacha20poly1305-noesn``.
Without ``esn``/``noesn`` both are offered, ESN first.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmip.errors import VmipError
from vmip.ike.constants import DhGroupId, Encr, Esn, Integ, Prf, ProtocolId, TransformType
from vmip.ike.payloads import Proposal, Transform
from vmip.ipsec.suites import SUITES

ENCR_NULL = 11


class ProposalError(VmipError):
    """A proposal string vmip cannot use."""


_ENCR = {"aes128": (Encr.AES_CBC, 128), "aes192": (Encr.AES_CBC, 192), "aes256": (Encr.AES_CBC, 256),
         "aes128gcm16": (Encr.AES_GCM_16, 128), "aes192gcm16": (Encr.AES_GCM_16, 192),
         "aes256gcm16": (Encr.AES_GCM_16, 256), "aes128gcm": (Encr.AES_GCM_16, 128),
         "aes256gcm": (Encr.AES_GCM_16, 256),
         "chacha20poly1305": (Encr.CHACHA20_POLY1305, None)}
_INTEG = {"sha256": Integ.HMAC_SHA2_256_128, "sha2_256": Integ.HMAC_SHA2_256_128,
          "sha384": Integ.HMAC_SHA2_384_192, "sha2_384": Integ.HMAC_SHA2_384_192,
          "sha512": Integ.HMAC_SHA2_512_256, "sha2_512": Integ.HMAC_SHA2_512_256}
_PRF = {"prfsha256": Prf.HMAC_SHA2_256, "prfsha384": Prf.HMAC_SHA2_384,
        "prfsha512": Prf.HMAC_SHA2_512}
_INTEG_PRF = {Integ.HMAC_SHA2_256_128: Prf.HMAC_SHA2_256, Integ.HMAC_SHA2_384_192: Prf.HMAC_SHA2_384,
              Integ.HMAC_SHA2_512_256: Prf.HMAC_SHA2_512}
DH_NAMES = {"modp2048": DhGroupId.MODP_2048, "ecp256": DhGroupId.ECP_256,
            "ecp384": DhGroupId.ECP_384, "curve25519": DhGroupId.CURVE25519,
            "x25519": DhGroupId.CURVE25519}

#: ESP suite name -> (ENCR id, key bits or None, INTEG id)
ESP_SUITE_TRANSFORMS: dict[str, tuple[int, int | None, int]] = {
    "aes128gcm16": (Encr.AES_GCM_16, 128, Integ.NONE),
    "aes256gcm16": (Encr.AES_GCM_16, 256, Integ.NONE),
    "chacha20poly1305": (Encr.CHACHA20_POLY1305, None, Integ.NONE),
    "aes128cbc-sha256": (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128),
    "aes256cbc-sha256": (Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128),
    "aes128cbc-sha512": (Encr.AES_CBC, 128, Integ.HMAC_SHA2_512_256),
    "aes256cbc-sha512": (Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256),
    "null-sha256": (ENCR_NULL, None, Integ.HMAC_SHA2_256_128),
}
_ESP_BY_TRANSFORMS = {v: k for k, v in ESP_SUITE_TRANSFORMS.items()}


@dataclass(frozen=True)
class IkeSuite:
    """A negotiated (or single-choice) IKE SA algorithm set."""

    encr: int
    key_bits: int | None
    integ: int
    prf: int
    dh: int

    @property
    def aead(self) -> bool:
        return self.encr in (Encr.AES_GCM_16, Encr.CHACHA20_POLY1305)

    def transforms(self) -> tuple[Transform, ...]:
        ts = [Transform(TransformType.ENCR, self.encr, self.key_bits),
              Transform(TransformType.PRF, self.prf)]
        if not self.aead:
            ts.append(Transform(TransformType.INTEG, self.integ))
        ts.append(Transform(TransformType.DH, self.dh))
        return tuple(ts)

    def __str__(self) -> str:
        names: dict[tuple[int, int | None], str] = {v: k for k, v in _ENCR.items()}
        encr = names.get((self.encr, self.key_bits), str(self.encr))
        parts = [encr]
        if not self.aead:
            parts.append({v: k for k, v in _INTEG.items()}[Integ(self.integ)])
        parts.append({v: k for k, v in _PRF.items()}[Prf(self.prf)])
        parts.append({v: k for k, v in DH_NAMES.items() if k != "x25519"}[DhGroupId(self.dh)])
        return "-".join(parts)


@dataclass(frozen=True)
class EspSuite:
    """A CHILD_SA algorithm set: an ESP suite name, PFS group, ESN choices."""

    suite: str
    dh: int = DhGroupId.NONE
    esn: tuple[bool, ...] = (True, False)

    def transforms(self, with_dh: bool = True) -> tuple[Transform, ...]:
        encr, bits, integ = ESP_SUITE_TRANSFORMS[self.suite]
        ts = [Transform(TransformType.ENCR, encr, bits)]
        if integ != Integ.NONE:
            ts.append(Transform(TransformType.INTEG, integ))
        if with_dh and self.dh != DhGroupId.NONE:
            ts.append(Transform(TransformType.DH, self.dh))
        ts += [Transform(TransformType.ESN, Esn.YES if e else Esn.NO) for e in self.esn]
        return tuple(ts)


def parse_ike_proposal(text: str) -> list[IkeSuite]:
    """One proposal string -> the suites it allows (one per DH/ENCR combination)."""
    encrs, integs, prfs, dhs = [], [], [], []
    for token in text.lower().split("-"):
        if token in _ENCR:
            encrs.append(_ENCR[token])
        elif token in _INTEG:
            integs.append(_INTEG[token])
        elif token in _PRF:
            prfs.append(_PRF[token])
        elif token in DH_NAMES:
            dhs.append(DH_NAMES[token])
        else:
            raise ProposalError(f"unknown algorithm {token!r} in IKE proposal {text!r}")
    if not encrs or not dhs:
        raise ProposalError(f"IKE proposal {text!r} needs an encryption algorithm and a DH group")
    suites = []
    for encr, bits in encrs:
        aead = encr != Encr.AES_CBC
        if not aead and not integs:
            raise ProposalError(f"IKE proposal {text!r}: CBC needs an integrity algorithm (sha256)")
        for integ in ([Integ.NONE] if aead else integs):
            for p in prfs or [_INTEG_PRF.get(Integ(integ), Prf.HMAC_SHA2_256)]:
                for dh in dhs:
                    suites.append(IkeSuite(encr, bits, integ, p, dh))
    return suites


def parse_esp_proposal(text: str) -> EspSuite:
    text = text.lower()
    for name in sorted(ESP_SUITE_TRANSFORMS, key=len, reverse=True):
        if text == name or text.startswith(name + "-"):
            rest = [t for t in text[len(name):].split("-") if t]
            break
    else:
        raise ProposalError(f"unknown ESP suite in {text!r}; known: {', '.join(SUITES)}")
    dh = DhGroupId.NONE
    esn: tuple[bool, ...] = (True, False)
    for token in rest:
        if token in DH_NAMES:
            dh = DH_NAMES[token]
        elif token == "esn":
            esn = (True,)
        elif token == "noesn":
            esn = (False,)
        else:
            raise ProposalError(f"unknown token {token!r} in ESP proposal {text!r}")
    return EspSuite(name, dh, esn)


def ike_sa_payload_proposals(suites: list[IkeSuite], spi: bytes = b"") -> tuple[Proposal, ...]:
    """Group suites into proposals, one per suite (simple and unambiguous)."""
    return tuple(Proposal(i + 1, ProtocolId.IKE, spi, s.transforms()) for i, s in enumerate(suites))


def esp_sa_payload_proposals(suites: list[EspSuite], spi: bytes, with_dh: bool) -> tuple[Proposal, ...]:
    return tuple(Proposal(i + 1, ProtocolId.ESP, spi, s.transforms(with_dh))
                 for i, s in enumerate(suites))


def _options(p: Proposal) -> dict[int, set[tuple[int, int | None]]]:
    out: dict[int, set[tuple[int, int | None]]] = {}
    for t in p.transforms:
        out.setdefault(t.type, set()).add((t.id, t.key_length))
    return out


def _match(ours: Proposal, theirs: Proposal) -> dict[int, tuple[int, int | None]] | None:
    """Pick one transform per type present in either, as §3.3.6 asks."""
    if ours.protocol != theirs.protocol:
        return None
    mine, peer = _options(ours), _options(theirs)
    chosen = {}
    for ttype in set(mine) | set(peer):
        a = [t for t in ours.transforms if t.type == ttype]
        b = peer.get(ttype, set())
        # A missing DH/ESN/INTEG type equals "NONE" (§3.3.3).
        if not a:
            if b <= {(0, None)}:
                continue
            return None
        if not b:
            if all(t.id == 0 for t in a):
                continue
            return None
        for t in a:
            if (t.id, t.key_length) in b:
                chosen[ttype] = (t.id, t.key_length)
                break
        else:
            return None
    return chosen


def choose(ours: tuple[Proposal, ...], theirs: tuple[Proposal, ...]) -> tuple[Proposal, dict] | None:
    """Responder choice: our preference order first.  Returns the peer's
    proposal (its number and SPI matter) and the chosen transforms."""
    for mine in ours:
        for peer in theirs:
            chosen = _match(mine, peer)
            if chosen is not None:
                return peer, chosen
    return None


def accepted_proposal(peer: Proposal, chosen: dict) -> Proposal:
    """The single-transform-per-type proposal a responder returns."""
    return Proposal(peer.number, peer.protocol, peer.spi,
                    tuple(Transform(t, i, k) for t, (i, k) in sorted(chosen.items())))


def ike_suite_of(chosen: dict) -> IkeSuite:
    encr, bits = chosen[TransformType.ENCR]
    return IkeSuite(encr, bits, chosen.get(TransformType.INTEG, (Integ.NONE, None))[0],
                    chosen[TransformType.PRF][0], chosen.get(TransformType.DH, (0, None))[0])


def esp_suite_of(chosen: dict) -> tuple[str, int, bool]:
    """(suite name, DH group or 0, esn) of a chosen ESP proposal."""
    encr, bits = chosen[TransformType.ENCR]
    integ = chosen.get(TransformType.INTEG, (Integ.NONE, None))[0]
    name = _ESP_BY_TRANSFORMS.get((encr, bits, integ))
    if name is None:
        raise ProposalError(f"no ESP suite for ENCR {encr}/{bits} INTEG {integ}")
    esn = chosen.get(TransformType.ESN, (Esn.NO, None))[0] == Esn.YES
    return name, chosen.get(TransformType.DH, (0, None))[0], esn
