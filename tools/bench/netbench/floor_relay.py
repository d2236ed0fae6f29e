"""The least a Python userspace tunnel can do: the benchmark's ``python-floor``.

    python3 floor_relay.py --tun NAME --address ADDR/LEN --bind IP --peer IP
                           --port N --key-file PATH [--mtu 1400]

One uvloop loop, one TUN (no packet-information header) and one UDP socket.
A packet read from the TUN is sealed with AES-128-GCM and sent to the peer
as ``counter (8 octets) || ciphertext``; a datagram from the peer is opened
and written to the TUN, or dropped if it does not authenticate.  There is no
SPD, no replay window, no rekeying, no mobility, no counters worth the name:
nothing vmip must do per packet beyond the system calls and the AEAD.

What it is for: vmip's per-crossing cost, measured against the same system
calls and cipher done by the least Python code that can do them, on the same
machine in the same run (docs/benchmarks.md, "The Python floor").  It is a
measuring stick, never a VPN: without a replay window an on-path attacker
can replay any datagram into it.  tools/bench/run starts it only inside the
benchmark's own namespaces, with a key made for the run.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys

import uvloop
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pytun import IFF_NO_PI, IFF_TUN, TunTapDevice

#: AES-128 key and the 4-octet salt in front of each 8-octet counter (RFC 4106 §4).
KEY_FILE_OCTETS = 20
COUNTER_OCTETS = 8
READ_SIZE = 65536


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="floor_relay.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tun", required=True, help="TUN device to create")
    parser.add_argument("--address", required=True, help="overlay address/prefix on the TUN")
    parser.add_argument("--bind", required=True, help="local IPv4 underlay address")
    parser.add_argument("--peer", required=True, help="the other relay's IPv4 address")
    parser.add_argument("--port", type=int, required=True, help="UDP port, both sides")
    parser.add_argument("--key-file", required=True,
                        help=f"{KEY_FILE_OCTETS} octets: AES-128 key, then the salt")
    parser.add_argument("--mtu", type=int, default=1400)
    return parser.parse_args(argv)


class Relay:
    def __init__(self, tun_fd: int, sock: socket.socket, peer: tuple[str, int],
                 key_material: bytes) -> None:
        if len(key_material) != KEY_FILE_OCTETS:
            raise ValueError(f"key file holds {len(key_material)} octets, "
                             f"not {KEY_FILE_OCTETS}")
        self.tun_fd = tun_fd
        self.sock = sock
        self.peer = peer
        self.aead = AESGCM(key_material[:16])
        self.salt = key_material[16:]
        self.sent = 0
        self.dropped = 0

    def on_tun_readable(self) -> None:
        while True:
            try:
                packet = os.read(self.tun_fd, READ_SIZE)
            except BlockingIOError:
                return
            self.sent += 1
            counter = self.sent.to_bytes(COUNTER_OCTETS, "big")
            sealed = self.aead.encrypt(self.salt + counter, packet, None)
            try:
                self.sock.sendto(counter + sealed, self.peer)
            except OSError:
                self.dropped += 1

    def on_socket_readable(self) -> None:
        while True:
            try:
                datagram = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                return
            try:
                packet = self.aead.decrypt(self.salt + datagram[:COUNTER_OCTETS],
                                           datagram[COUNTER_OCTETS:], None)
            except (InvalidTag, ValueError):
                self.dropped += 1
                continue
            try:
                os.write(self.tun_fd, packet)
            except OSError:
                self.dropped += 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open(args.key_file, "rb") as key_file:
        key_material = key_file.read()
    tun = TunTapDevice(name=args.tun, flags=IFF_TUN | IFF_NO_PI)
    os.set_blocking(tun.fileno(), False)
    for command in (["ip", "link", "set", args.tun, "mtu", str(args.mtu), "up"],
                    ["ip", "addr", "add", args.address, "dev", args.tun, "nodad"]):
        subprocess.run(command, check=True, timeout=10)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    sock.setblocking(False)
    relay = Relay(tun.fileno(), sock, (args.peer, args.port), key_material)
    loop = uvloop.new_event_loop()
    loop.add_reader(tun.fileno(), relay.on_tun_readable)
    loop.add_reader(sock.fileno(), relay.on_socket_readable)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    try:
        loop.run_forever()
    finally:
        loop.close()
        sock.close()
        tun.close()
    print(f"floor_relay: {relay.sent} sent, {relay.dropped} dropped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
