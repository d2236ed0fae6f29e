#!/usr/bin/env python3
"""ESP per-packet cost: vmip's protect/unprotect against the raw crypto call.

    python tools/bench/esp.py [--json FILE] [--size 1400] [--quick]

For every suite and backend: microseconds per packet for ``EspSA.protect``
and ``EspSA.unprotect`` (header, IV, padding, replay window, counters and
crypto) and, measured in the same run on the same bytes, the bare library
call they wrap: the AEAD encrypt/decrypt for AEAD suites, a CBC context plus
HMAC for the others.  The ratio shows what the ESP engine adds.  For
AES-128-GCM with ``cryptography`` the whole-packet helpers (tunnel mode,
outer IPv6 header included) are measured too.  The target (docs/design.md §9,
docs/ipsec.md) is 3 µs per 1400-byte packet for AES-128-GCM.

Each figure is the best of several rounds (least disturbed by the machine).
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from ipaddress import IPv6Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vmip.ipsec.esp import EspSA, decap, tunnel_encap
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.suites import BACKENDS, SUITES

ROUNDS = 20


def best_us(step: Callable[[], object], count: int) -> float:
    """Best per-call time in µs over ROUNDS rounds of ``count`` calls."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(count):
            step()
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def params(suite: str, backend: str, mode: Mode = Mode.TRANSPORT) -> SaParams:
    info = SUITES[suite]
    return SaParams(spi=0xBE7C, direction=Direction.OUT, src=IPv6Address("2001:db8::1"),
                    dst=IPv6Address("2001:db8::2"), suite=suite,
                    enc_key=os.urandom(info.enc_key_len), auth_key=os.urandom(info.auth_key_len),
                    backend=backend, mode=mode, replay_window=1024, esn=True)


def raw_reference(suite: str, backend: str, size: int) -> tuple[str, Callable, Callable]:
    """(label, encrypt-side call, decrypt-side call) of the bare library."""
    info = SUITES[suite]
    plaintext = os.urandom(size + 2 + (-(size + 2) % info.block))
    nonce, aad, iv = os.urandom(12), os.urandom(12), os.urandom(16)
    enc_key = os.urandom(info.enc_key_len)
    if backend == "cryptography":
        from cryptography.hazmat.primitives import hashes, hmac
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

        if info.aead:
            cls = ChaCha20Poly1305 if suite.startswith("chacha") else AESGCM
            aead = cls(enc_key[:-4])
            sealed = aead.encrypt(nonce, plaintext, aad)
            return ("AEAD encrypt/decrypt", lambda: aead.encrypt(nonce, plaintext, aad),
                    lambda: aead.decrypt(nonce, sealed, aad))
        digest = hashes.SHA512() if info.icv_len == 32 else hashes.SHA256()
        keyed = hmac.HMAC(os.urandom(info.auth_key_len), digest)

        def mac(data: bytes) -> bytes:
            copy = keyed.copy()
            copy.update(data)
            return copy.finalize()

        if not info.enc_key_len:
            return "HMAC only", lambda: mac(plaintext), lambda: mac(plaintext)

        def cbc_encrypt_then_mac() -> bytes:
            encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
            return mac(encryptor.update(plaintext))

        def mac_then_cbc_decrypt() -> bytes:
            mac(plaintext)
            return Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor().update(plaintext)

        return "fresh CBC context + HMAC", cbc_encrypt_then_mac, mac_then_cbc_decrypt

    from Crypto.Cipher import AES, ChaCha20_Poly1305
    from Crypto.Hash import HMAC, SHA256, SHA512

    if info.aead:
        key = enc_key[:-4]

        def new():
            if suite.startswith("chacha"):
                return ChaCha20_Poly1305.new(key=key, nonce=nonce)
            return AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)

        cipher = new()
        cipher.update(aad)
        sealed, tag = cipher.encrypt_and_digest(plaintext)

        def encrypt():
            c = new()
            c.update(aad)
            return c.encrypt_and_digest(plaintext)

        def decrypt():
            c = new()
            c.update(aad)
            return c.decrypt_and_verify(sealed, tag)

        return "AEAD encrypt/decrypt", encrypt, decrypt
    keyed = HMAC.new(os.urandom(info.auth_key_len),
                     digestmod=SHA512 if info.icv_len == 32 else SHA256)

    def pmac(data: bytes) -> bytes:
        copy = keyed.copy()
        copy.update(data)
        return copy.digest()

    if not info.enc_key_len:
        return "HMAC only", lambda: pmac(plaintext), lambda: pmac(plaintext)
    return ("fresh CBC context + HMAC",
            lambda: pmac(AES.new(enc_key, AES.MODE_CBC, iv=iv).encrypt(plaintext)),
            lambda: (pmac(plaintext), AES.new(enc_key, AES.MODE_CBC, iv=iv).decrypt(plaintext)))


def best_unprotect_us(p: SaParams, packets: list[bytes],
                     step: Callable[[EspSA, bytes], object]) -> float:
    """Best per-packet time of ``step(receiver, packet)`` over ROUNDS rounds.

    Each round gets a fresh receiver, so the same packets (already in the
    cache, like packets just read from a socket) pass the replay window again.
    """
    best = float("inf")
    for _ in range(ROUNDS):
        receiver = EspSA(p, 0.0)
        start = time.perf_counter()
        for packet in packets:
            step(receiver, packet)
        best = min(best, (time.perf_counter() - start) / len(packets))
        assert not receiver.drops, receiver.drops
    return best * 1e6


def bench_suite(suite: str, backend: str, size: int, count: int) -> dict:
    payload = os.urandom(size)
    p = params(suite, backend)
    sender = EspSA(p, 0.0)
    packets = [sender.protect(payload, 41, 1.0) for _ in range(count)]
    protect = best_us(lambda: sender.protect(payload, 41, 1.0), count)
    unprotect = best_unprotect_us(p, packets, lambda sa, packet: sa.unprotect(packet, 1.0))
    label, raw_encrypt, raw_decrypt = raw_reference(suite, backend, size)
    raw_enc = best_us(raw_encrypt, count)
    raw_dec = best_us(raw_decrypt, count)
    return {"suite": suite, "backend": backend, "size": size, "protect_us": protect,
            "unprotect_us": unprotect, "raw": label, "raw_encrypt_us": raw_enc,
            "raw_decrypt_us": raw_dec, "protect_ratio": protect / raw_enc,
            "unprotect_ratio": unprotect / raw_dec}


def bench_whole_packets(size: int, count: int) -> dict:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    inner = bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::2") / UDP(sport=1, dport=2)
                  / Raw(os.urandom(size - 48)))
    p = params("aes128gcm16", "cryptography", Mode.TUNNEL)
    sender = EspSA(p, 0.0)
    wires = [tunnel_encap(inner, sender, 1.0) for _ in range(count)]
    encap = best_us(lambda: tunnel_encap(inner, sender, 1.0), count)
    decapsulate = best_unprotect_us(p, wires, lambda sa, wire: decap(wire, 40, sa, 1.0))
    return {"suite": "aes128gcm16", "backend": "cryptography", "size": len(inner),
            "tunnel_encap_us": encap, "decap_us": decapsulate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--size", type=int, default=1400, help="payload bytes (default 1400)")
    parser.add_argument("--quick", action="store_true", help="fewer packets, noisier figures")
    parser.add_argument("--suite", action="append", choices=sorted(SUITES),
                        help="only this suite (repeatable)")
    parser.add_argument("--backend", action="append", choices=BACKENDS,
                        help="only this backend (repeatable)")
    args = parser.parse_args(argv)
    counts = {"cryptography": 500 if args.quick else 2000,
              "pycryptodome": 20 if args.quick else 100}
    results = []
    print(f"{'suite':18} {'backend':13} {'protect':>9} {'unprotect':>10} "
          f"{'raw enc':>8} {'raw dec':>8} {'ratio':>11}  reference")
    for suite in args.suite or sorted(SUITES):
        for backend in args.backend or BACKENDS:
            r = bench_suite(suite, backend, args.size, counts[backend])
            results.append(r)
            print(f"{suite:18} {backend:13} {r['protect_us']:8.2f}µ {r['unprotect_us']:9.2f}µ "
                  f"{r['raw_encrypt_us']:7.2f}µ {r['raw_decrypt_us']:7.2f}µ "
                  f"{r['protect_ratio']:5.2f}/{r['unprotect_ratio']:<5.2f} {r['raw']}")
    whole = bench_whole_packets(args.size, counts["cryptography"])
    print(f"whole packets, aes128gcm16/cryptography, {whole['size']}-byte inner IPv6: "
          f"tunnel_encap {whole['tunnel_encap_us']:.2f} µs, decap {whole['decap_us']:.2f} µs")
    if args.json:
        args.json.write_text(json.dumps({
            "python": platform.python_version(), "machine": platform.machine(),
            "size": args.size, "suites": results, "whole_packets": whole}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
