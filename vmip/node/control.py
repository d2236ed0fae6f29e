"""The node's control commands: what ``vmip status``, ``vmip sa list`` … ask a running node.

Like wireguard-go's ``uapi.go``, this is the one place that turns the
node's state into the control protocol's JSON (and back): the node itself
deals in typed objects.  Every command's arguments are checked against
:mod:`vmip.control.commands` before a handler runs.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from vmip import __version__
from vmip.ipsec.wireshark import wireshark_rows
from vmip.log import get_logger
from vmip.node.errors import NodeError
from vmip.node.pcap import PcapWriter

log = get_logger(__name__)


class NodeControl:
    """The handlers of one node's control socket."""

    def __init__(self, node: Any) -> None:
        # The whole vmip.node.runtime.Node: reporting its state is this class's job.
        self.node = node

    def handlers(self) -> dict[str, Callable[[dict], Any]]:
        from vmip.control.commands import require_specs

        # Every command's arguments are checked against vmip/control/commands.py
        # first (bad_args, no traceback); a command not declared there takes none.
        return require_specs({
            "status": self._status,
            "sa.list": self._sa_list,
            "spd.list": self._spd_list,
            "locators": self._locators,
            "counters": self._counters,
            "keys.wireshark": self._keys_wireshark,
            "pcap.start": self._pcap_start,
            "pcap.stop": self._pcap_stop,
            "reload": self._reload_command,
            "mn.move": self._mn_move,
            "remap.list": self._remap_list,
            "mobility": lambda args: {**self.node.mobility.status(), "movement": (
                self.node.movement.status() if self.node.movement is not None else None),
                "link_quality": self.node.link_quality.status(self.node.clock())},
            "events": self._events,
            **(self._ike_handlers() if self.node.keying is not None else {}),
        })

    def _ike_handlers(self) -> dict[str, Callable[[dict], Any]]:
        from vmip.control.errors import BadArgs
        from vmip.node.keying import KeyingError

        # The IKE manager refuses with KeyingError ("no IKE peer 'x'; peers:
        # ..."): the client's mistake, so bad_args rather than a traceback.
        def refusing(handler: Callable[[dict], Any]) -> Callable[[dict], Any]:
            def handle(args: dict) -> Any:
                try:
                    return handler(args)
                except KeyingError as exc:
                    raise BadArgs(str(exc)) from None
            return handle

        return {cmd: refusing(handler) for cmd, handler in self.node.keying.handlers().items()}

    def _reload_command(self, args: dict) -> dict:
        error = self.node.reload()
        return {"reloaded": error is None, "error": error, "reloads": self.node.counters["reloads"]}

    def _mn_move(self, args: dict) -> dict:
        from vmip.control.errors import BadArgs

        try:
            return self.node.move(args["link"])
        except NodeError as exc:   # not an MN, no such link, a link without a CoA
            raise BadArgs(str(exc)) from None

    def _remap_list(self, args: dict) -> dict:
        return {"rules": self.node.mobility.remap.format_rules(),
                "counters": dict(self.node.mobility.remap.counters)}

    def _events(self, args: dict) -> list:
        since = args.get("since") or 0   # type-checked by vmip/control/commands.py
        return self.node.events.records(since)

    def _status(self, args: dict) -> dict:
        from vmip.node import gcstats
        from vmip.privileges import privilege_summary

        cfg = self.node.config
        now = self.node.clock()
        return {
            "name": cfg.node.name,
            "version": __version__,
            "roles": [str(r) for r in cfg.node.roles],
            "pid": os.getpid(),
            "uptime_s": round(now - self.node.started_at, 3),
            "tun": self.node.tun.status() if self.node.tun is not None else None,
            "links": [
                {"name": name, "driver": driver.kind, "counters": dict(driver.counters),
                 "mtu": self.node.link_mtu.get(name),
                 "own_addresses": sorted(str(ipaddress.IPv6Address(a))
                                         for a in driver.own_addresses())}
                for name, driver in self.node.links.items()
            ],
            "sas": len(self.node.sad.dump(publish=False)),
            "policies": len(self.node.spd.list()),
            "locators": len(self.node.locators),
            # Reassembly of the host's fragments and of the wire's (vmip.wire.fragment).
            "fragments": {"tun": dict(self.node.tun_reassembly.counters),
                          "wire": dict(self.node.wire_reassembly.counters)},
            "control": str(self.node.control_path),
            "active_link": self.node.active_link,
            # RTT and loss measured per link (vmip.node.quality; docs/control.md).
            "link_quality": self.node.link_quality.status(now),
            "path_mtu": self.node.onwire_icmp.rows(now),
            "capture": {
                "wire": str(self.node.pcap_wire.path) if self.node.pcap_wire else None,
                "inner": str(self.node.pcap_inner.path) if self.node.pcap_inner else None,
            },
            "privileges": privilege_summary(),
            # The cyclic collector: frozen start-up objects, pauses (vmip/node/gcstats.py).
            "gc": gcstats.status(),
        }

    def _sa_list(self, args: dict) -> list[dict]:
        rows = []
        for info in self.node.sad.dump(publish=False):
            esp = self.node.sad.esp(info.spi, info.direction, info.dst)
            rows.append({
                "name": info.name,
                "spi": info.spi,
                "direction": info.direction.value,
                "src": str(info.src),
                "dst": str(info.dst),
                "state": info.state,
                "mode": info.mode.value if info.mode else None,
                "suite": info.suite,
                "origin": info.origin,
                "packets": info.packets,
                "bytes": info.bytes,
                "drops": dict(esp.drops) if esp is not None else {},
            })
        return rows

    def _spd_list(self, args: dict) -> list[dict]:
        rows = []
        for policy in self.node.spd.list():
            rows.append({
                "name": policy.name,
                "direction": policy.direction.value,
                "selector": selector_record(policy.selector),
                "action": policy.action.value,
                "sa": [str(t) for t in policy.sa_bundle],
                "priority": policy.priority,
            })
        return rows

    def _locators(self, args: dict) -> list[dict]:
        return self.node.locators.rows(self.node.clock())

    def _counters(self, args: dict) -> dict:
        esp_drops: Counter[str] = Counter()
        for info in self.node.sad.dump(publish=False):
            esp = self.node.sad.esp(info.spi, info.direction, info.dst)
            if esp is not None:
                esp_drops.update(esp.drops)
        return {
            "node": dict(self.node.counters),
            "ipsec": dict(self.node.engine.drops),
            "esp": dict(esp_drops),
            "links": {name: dict(d.counters) for name, d in self.node.links.items()},
            "mobility": dict(self.node.mobility.counters),
            "remap": dict(self.node.mobility.remap.counters),
            "paths": dict(self.node.mobility.paths.counters),   # RFC 5648 bound paths
            "icmp": dict(self.node.onwire_icmp.counters),
            # Packets per [[flow]] (classified only towards peers with several paths).
            "flows": self.node.flows.policy.status(),
            "tun": self.node.tun.status() if self.node.tun is not None else {},
        }

    def _keys_wireshark(self, args: dict) -> dict:
        params = []
        for info in self.node.sad.dump(publish=False):
            esp = self.node.sad.esp(info.spi, info.direction, info.dst)
            if esp is not None:
                params.append(esp.params)
        return {"rows": wireshark_rows(params)}

    def _pcap_start(self, args: dict) -> dict:
        from vmip.control.errors import BadArgs
        from vmip.node.pcap import CaptureError

        wire, inner = args.get("wire"), args.get("inner")   # checked: absolute paths
        if not wire and not inner:
            raise BadArgs("give 'wire' and/or 'inner': absolute paths of new pcap files")
        if wire is not None and wire == inner:
            raise BadArgs("'wire' and 'inner' must be two different files")
        # Open both before stopping the running capture: a refused path
        # (it exists, or is a symlink) leaves the current capture as it was.
        opened: list[PcapWriter | None] = []
        try:
            for path in (wire, inner):
                opened.append(PcapWriter(path) if path else None)
        except CaptureError as exc:
            for writer in opened:
                if writer is not None:
                    writer.close()
                    writer.path.unlink(missing_ok=True)   # ours, created an instant ago
            raise BadArgs(str(exc)) from None
        self._pcap_stop({})
        self.node.pcap_wire, self.node.pcap_inner = opened
        log.info("capture started", wire=wire or "-", inner=inner or "-")
        return {"wire": wire, "inner": inner}

    def _pcap_stop(self, args: dict) -> dict:
        stopped = {}
        for attr in ("pcap_wire", "pcap_inner"):
            writer = getattr(self.node, attr)
            if writer is not None:
                writer.close()
                stopped[attr[5:]] = {"file": str(writer.path), "packets": writer.packets}
                setattr(self.node, attr, None)
        return stopped


def selector_record(selector: Any) -> dict[str, Any]:
    """A selector's fields as JSON: prefixes as text, ranges as ``[low, high]``,
    OPAQUE as ``"opaque"``, ANY as ``null`` (RFC 4301 §4.4.1.1)."""
    record: dict[str, Any] = {}
    for name in ("local", "remote", "proto", "local_ports", "remote_ports", "icmp_type",
                 "icmp_code", "mh_type"):
        value = getattr(selector, name)
        if value is None or isinstance(value, int):
            record[name] = value
        elif isinstance(value, tuple):
            record[name] = list(value)
        elif hasattr(value, "value") and not hasattr(value, "prefixlen"):
            record[name] = value.value        # Opaque.OPAQUE -> "opaque"
        else:
            record[name] = str(value)
    return record
