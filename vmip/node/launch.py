"""Starting a node for ``vmip run``: build it, drop privileges, serve, clean up."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from vmip.node.runtime import Node


async def run_node(config, *, config_path: Path | None = None, pcap_wire: str | None = None,
                   pcap_inner: str | None = None, drop_to: str | None = None,
                   ready: Callable[[Node], None] | None = None) -> int:
    """Start a node, drop privileges, serve until SIGTERM/SIGINT, clean up."""
    node = Node(config, config_path=config_path, pcap_wire=pcap_wire, pcap_inner=pcap_inner)
    await node.start()
    try:
        if drop_to:
            from vmip.node.privileges import CAP_NET_ADMIN, CAP_NET_RAW, drop_privileges

            # Everything the node may import later must be loaded now: the
            # new user may not be able to read the Python installation
            # (/root/.pyenv under a 0700 /root, for instance).
            _preload_modules()

            keep = [CAP_NET_ADMIN]
            if any(str(link.driver) == "raw" for link in config.links):
                keep.append(CAP_NET_RAW)
            drop_privileges(drop_to, keep)
        if ready is not None:
            ready(node)
        await node.wait_stopped()
    finally:
        await node.close()
    return 0


def _preload_modules() -> None:
    import importlib

    for name in ("vmip.ipsec.esp", "vmip.ipsec.crypto", "vmip.ipsec.replay",
                 "vmip.ipsec.wireshark", "vmip.wire.mh", "vmip.wire.flow", "json",
                 "encodings.idna", "cryptography.hazmat.primitives.ciphers.aead",
                 "cryptography.hazmat.primitives.hmac", "Crypto.Cipher.AES"):
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - optional backend
            pass
