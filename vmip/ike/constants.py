"""IKEv2 registry numbers (IANA "Internet Key Exchange Version 2 Parameters").

Only the values vmip speaks or must recognise; RFC 7296 §3 unless noted.
"""

from __future__ import annotations

import enum


class ExchangeType(enum.IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class PayloadType(enum.IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53  # RFC 7383 fragment


class Flags(enum.IntFlag):
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class TransformType(enum.IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class Encr(enum.IntEnum):
    AES_CBC = 12
    AES_GCM_16 = 20          # RFC 5282
    CHACHA20_POLY1305 = 28   # RFC 7634


class Prf(enum.IntEnum):
    HMAC_SHA2_256 = 5        # RFC 4868
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class Integ(enum.IntEnum):
    NONE = 0
    HMAC_SHA2_256_128 = 12   # RFC 4868
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhGroupId(enum.IntEnum):
    NONE = 0
    MODP_2048 = 14           # RFC 3526
    ECP_256 = 19             # RFC 5903
    ECP_384 = 20
    CURVE25519 = 31          # RFC 8031


class Esn(enum.IntEnum):
    NO = 0
    YES = 1


class ProtocolId(enum.IntEnum):
    IKE = 1
    AH = 2
    ESP = 3


#: Transform attribute "Key Length" (TV format, RFC 7296 §3.3.5).
ATTR_KEY_LENGTH = 14


class IdType(enum.IntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    KEY_ID = 11


class AuthMethod(enum.IntEnum):
    RSA_SIG = 1
    PSK = 2
    DSS = 3
    ECDSA_256 = 9
    ECDSA_384 = 10
    ECDSA_521 = 11
    DIGITAL_SIGNATURE = 14   # RFC 7427


class CertEncoding(enum.IntEnum):
    X509_SIGNATURE = 4


class TsType(enum.IntEnum):
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class HashAlg(enum.IntEnum):
    """RFC 7427 §7 hash algorithm identifiers (SIGNATURE_HASH_ALGORITHMS)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4


class Notify(enum.IntEnum):
    # Errors (< 16384)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    UNACCEPTABLE_ADDRESSES = 40       # RFC 4555 §4
    UNEXPECTED_NAT_DETECTED = 41      # RFC 4555 §4
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # Status (>= 16384)
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    ADDITIONAL_IP4_ADDRESS = 16397    # RFC 4555 §4
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431


#: Notify types below this value are errors (RFC 7296 §3.10.1).
NOTIFY_ERROR_MAX = 16383

IKE_PORT = 500
NAT_T_PORT = 4500
#: RFC 3948 §2.2: IKE on port 4500 is preceded by four zero octets.
NON_ESP_MARKER = b"\x00\x00\x00\x00"
