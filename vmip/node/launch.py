"""Starting a node for ``vmip run``: build it, drop privileges, serve, clean up."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vmip.log import get_logger
from vmip.node.latency_trace import ENV_VAR
from vmip.node.runtime import Node

log = get_logger(__name__)


async def run_node(config, *, config_path: Path | None = None, pcap_wire: str | None = None,
                   pcap_inner: str | None = None, drop_to: str | None = None,
                   drop: bool = True, ready: Callable[[Node], None] | None = None) -> int:
    """Start a node, drop privileges, serve until SIGTERM/SIGINT, clean up.

    After start-up the node keeps only CAP_NET_ADMIN (and CAP_NET_RAW for the
    ``raw`` driver), sealed by no_new_privs and a matching bounding set: as
    root by default, as *drop_to* (``node.user``) when given.  ``drop=False``
    (``vmip run --no-drop``) keeps everything, for debugging.  Started
    without root, the node needs a prepared TUN (``vmip tun create``); what
    else it would need is named before anything is opened
    (:func:`vmip.privileges.check_unprivileged_start`).
    """
    from vmip.privileges import can_drop, check_unprivileged_start, seal_unprivileged

    node = Node(config, config_path=config_path, pcap_wire=pcap_wire, pcap_inner=pcap_inner)
    if os.environ.get(ENV_VAR):   # per-stage timestamps of pings (docs/performance.md)
        from vmip.node.latency_trace import install_from_env

        install_from_env(node)
    privileged = can_drop()
    if not privileged:
        # Not root (or root without capabilities): say now what cannot work.
        check_unprivileged_start(config, node.control_path if node.ports.control else None)
    await node.start()
    _settle_the_heap()
    try:
        if drop and privileged:
            _drop(node, config, drop_to)
        elif drop:
            if drop_to:
                log.warning("not root: node.user/--user ignored; the node runs as it was started",
                            user=drop_to)
            seal_unprivileged()
        else:
            from vmip.privileges import drop_nothing

            drop_nothing()
        if ready is not None:
            ready(node)
        await node.wait_stopped()
    finally:
        await node.close()
    return 0


#: ``VMIP_GC_FREEZE=0``: leave start-up's objects to the collector (to
#: measure what freezing them saves, docs/scale.md).
GC_FREEZE_ENV = "VMIP_GC_FREEZE"


def _settle_the_heap() -> None:
    """Freeze what start-up made, so full collections stop walking it
    (vmip/node/gcstats.py), and time the collections from now on."""
    from vmip.node import gcstats

    if os.environ.get(GC_FREEZE_ENV, "1") == "0":
        gcstats.PAUSES.install()
        log.info("start-up objects left to the garbage collector", env=GC_FREEZE_ENV)
        return
    frozen = gcstats.freeze_start_up()
    log.debug("start-up objects frozen", objects=frozen)


def kept_capabilities(config) -> list[int]:
    """What the node keeps after start-up: CAP_NET_ADMIN, plus CAP_NET_RAW for a raw link."""
    from vmip.privileges import CAP_NET_ADMIN, CAP_NET_RAW

    keep = [CAP_NET_ADMIN]
    if any(str(link.driver) == "raw" for link in config.links):
        keep.append(CAP_NET_RAW)
    return keep


def _drop(node: Node, config, drop_to: str | None) -> None:
    from vmip.privileges import drop_capabilities, drop_privileges

    keep = kept_capabilities(config)
    if not drop_to:
        drop_capabilities(keep)
        return
    # Everything the node may import later must be loaded now: the
    # new user may not be able to read the Python installation
    # (/root/.pyenv under a 0700 /root, for instance).
    _preload_modules()
    if node.control is not None:
        # /run/vmip stays root's: a helper that keeps uid 0 removes the socket.
        node.control.keep_removable()
    drop_privileges(drop_to, keep)


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
