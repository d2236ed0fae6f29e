"""The node runtime: one asyncio loop around the sans-IO cores.

Like wireguard-go's device/conn/tun split, the runtime owns the I/O and
nothing else: the TUN, the link drivers, the control socket and the
movement watcher, all reached through :class:`~vmip.node.ports.NodePorts`
(kernel ones for ``vmip run``, memory ones for ``vmip sim``).  Every
decision is taken by a sans-IO core: the IPsec engine (SPD, SAD, ESP), the
locator table, the MIPv6 cores (through :class:`~vmip.node.mobility.MobilityAgent`)
and IKE (through :class:`~vmip.node.keying.IkeManager`).  The helpers get a
:class:`~vmip.node.services.NodeServices`, never the node; their timers are
kept by one :class:`~vmip.node.pump.Pump`; what they report travels as typed
events through one :class:`~vmip.node.events.EventHub`.  docs/architecture.md
draws the whole picture.

Packet paths (docs/architecture.md, "Processing order"):

- outbound: TUN batch → ``engine.outbound`` (SPD, ESP) → on-wire packet →
  too big for the link? ICMPv6 Packet Too Big to the sender → locator
  lookup → link driver.  No locator: ICMPv6 destination unreachable.
- inbound: link driver → IRO inbound rules → ``engine.inbound`` (SAD, ESP,
  anti-replay, the RFC 4301 §5.2 selector check) → MH, IKE, forwarding or
  TUN → locator learning, only for what the authenticating SA vouches for.

Nothing a peer sends can raise out of these paths: drops are counted by
reason and shown by ``vmip counters``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vmip.config import load_config
from vmip.control.paths import default_socket_path
from vmip.control.server import ControlServer
from vmip.errors import VmipError
from vmip.ipsec import static
from vmip.ipsec.engine import IpsecEngine
from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.sad import SAD
from vmip.ipsec.sadb import SadbBus
from vmip.ipsec.spd import SPD, Action
from vmip.links.base import LinkDriver
from vmip.links.locators import BINDING, LEARNED, PEER, Locator, LocatorTable, max_learned_for
from vmip.links.rfc3948 import Rfc3948Driver
from vmip.log import get_logger
from vmip.node import mh_protection
from vmip.node.control import NodeControl
from vmip.node.errors import NodeError
from vmip.node.events import EventHub
from vmip.node.flows import FlowPolicy, FlowSender
from vmip.node.keying import IkeManager
from vmip.node.keying_policy import static_keys
from vmip.node.mobility import MobilityAgent
from vmip.node.onwire_icmp import OnWireIcmp
from vmip.node.pcap import PcapWriter
from vmip.node.ports import REAL_PORTS, MovementPort, NodePorts, TunPort
from vmip.node.pump import Pump
from vmip.node.quality import LinkQuality
from vmip.node.quality import install as install_link_quality
from vmip.node.services import NodeServices
from vmip.wire import proto
from vmip.wire.errors import WireError
from vmip.wire.flow import flow_key
from vmip.wire.fragment import Reassembler, fragment, fragment_header_at
from vmip.wire.icmpv6 import DestinationUnreachable, build_icmpv6_packet, may_send_error

log = get_logger(__name__)

#: Bytes a link driver adds around the on-wire packet, by driver and
#: underlay family: IPv4/IPv6 header plus UDP header.
_UDP_OVERHEAD = {4: 20 + 8, 6: 40 + 8}
#: First Next Header values of a packet that may be an IPv6 fragment.
_MAY_BE_FRAGMENT = frozenset((proto.HOP_BY_HOP, proto.ROUTING, proto.FRAGMENT,
                              proto.DESTINATION_OPTIONS))

#: The underlay MTU assumed when the link's interface cannot be read.
DEFAULT_UNDERLAY_MTU = 1500

#: Seconds a clean stop waits for the helpers' last exchanges with their peers
#: (the MN's deregistration BAs, RFC 6275 §11.7.1; IKE DELETEs), all at once.
STOP_GRACE = 1.0

#: ICMPv6 destination unreachable, code 0 "no route to destination" (RFC 4443 §3.1).
_ICMP_DEST_UNREACH = 1
#: Upper-layer protocols: a packet whose first next header is one of them
#: carries no Mobility Header (RFC 8200 §4: the header chain ends there).
_NOT_MH = frozenset({proto.TCP, proto.UDP, proto.ICMPV6})


__all__ = ["Node", "NodeError"]


class Node:
    """One vmip node: TUN, links, IPsec, control socket.

    ``clock`` is the monotonic time source handed to every sans-IO core
    (tests may pass a fake one).  Build it, ``await start()``, then
    ``await wait_stopped()``; ``request_stop()`` (or SIGTERM/SIGINT) ends it,
    ``await close()`` releases everything.
    """

    def __init__(self, config, *, config_path: Path | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 pcap_wire: str | None = None, pcap_inner: str | None = None,
                 control_socket: Path | None = None, batch: int = 64,
                 ports: NodePorts = REAL_PORTS) -> None:
        self.config = config
        self.ports = ports
        self.config_path = config_path
        self.clock = clock
        self.batch = batch
        self.started_at = clock()
        self.counters: Counter[str] = Counter()
        self.events = EventHub(ports.wall_clock)
        self.pump = Pump(clock, self.counters)
        #: RTT and loss per link, from the MN's signalling (vmip.node.quality).
        self.link_quality = LinkQuality()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.bus = SadbBus()
        self.sad = SAD(self.bus)
        self.spd = SPD()
        now = clock()
        self.keys = static_keys(config)   # IKE mode: protect policies are negotiated
        # Opened now, before privileges are dropped, and kept open: static keys
        # resume their sequence numbers (RFC 4303 §3.3.3, RFC 4106 §3.1).
        self.seq_state = static.open_state(config)
        static.install(self.keys, self.sad, self.spd, now, state=self.seq_state)
        #: Packets this node makes while one inbound packet is handled (see send_inner).
        self._held: list[tuple[bytes, Any]] | None = None
        # While the held answers leave: (on-wire source, endpoint, link) of the
        # packet they answer; what goes to that address goes back there.
        self._reply_at: tuple[bytes, tuple[str, int], str] | None = None
        # ESP inside the HA's tunnel meets the IRO inbound rules before it is
        # decrypted in turn (MN-MN, draft §5.2.2 examples 3/4).
        self.engine = IpsecEngine(self.spd, self.sad, now, bus=self.bus,
                                  reentry=self._remap_reentered)
        self.locators = LocatorTable.from_peers(config.peers,
                                                max_learned_for(len(self.keys.sas)))
        self.links: dict[str, LinkDriver] = {}
        self.tun: TunPort | None = None
        self.control: ControlServer | None = None
        self.control_path = control_socket or (config.control.socket or default_socket_path())
        self.pcap_wire = PcapWriter(pcap_wire) if pcap_wire else None
        self.pcap_inner = PcapWriter(pcap_inner) if pcap_inner else None
        self._stopped = asyncio.Event()
        #: What helpers say to their peers before the node goes (see on_stop).
        self._stop_steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._serving = False
        self._local: set[bytes] = set()
        self.link_mtu: dict[str, int] = {}
        # Fragments around ESP and IRO (vmip.wire.fragment): the host's,
        # put together before ESP; the wire's, before the IRO inbound rules.
        self.tun_reassembly = Reassembler()
        self.wire_reassembly = Reassembler()
        self._fragment_id = int.from_bytes(os.urandom(4), "big")
        # Routers' ICMPv6 errors about our on-wire packets (raw links): path MTUs.
        self.onwire_icmp = OnWireIcmp(
            is_own_address=lambda address: address in self._local,
            is_outbound_spi=lambda spi: self.sad.get(spi, Direction.OUT) is not None)
        self._framing_links: dict[str, list[LinkDriver]] = {}
        # Which link carries our packets: an MN sends on its current access
        # link only (the one whose CoA it registered), others on any.
        self.active_link: str | None = None
        self._link_of_coa: dict[bytes, str] = {}
        self._index_coas()
        self.services = NodeServices(self)
        self.mobility = MobilityAgent(self.services, now)
        self.pump.add("sad", self.sad)
        self.pump.add("mobility", self.mobility)
        # Which bound path(s) each flow takes when a peer has several (flows.py).
        self.flows = FlowSender(FlowPolicy.from_config(config.flows), self.mobility.paths_to,
                                self.link_quality.best, self.counters,
                                self.mobility.paths.spare)
        # The SAD's deadlines only move when an SA does, and every such change
        # is an SADB event: re-arm then, never per packet.
        self.bus.subscribe(self._on_sadb_event)
        self.is_mobile = self.mobility.mn is not None
        self.movement: MovementPort | None = None   # on an MN, once started
        self.forwarding = self.mobility.ha is not None
        self.keying = IkeManager(self.services) if str(config.keys.mode) == "ike" else None
        if self.keying is not None and self.keying.admission is not None \
                and self.mobility.ha is not None:
            # MNs admitted by certificate register only at certified CoAs (admission.py).
            self.mobility.ha.care_of_check = self.keying.admission.care_of_refusal
        self.control_handlers = NodeControl(self)
        self.quality_feed, self.link_prober = install_link_quality(self.services, self.mobility)
        # A hedged link that still answers signalling is not dead (paths.py).
        self.mobility.paths.last_answer = self.link_quality.last_answer
        if self.link_prober is not None:
            self.mobility.paths.check_link = self.link_prober.soon

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            self.tun = self.ports.open_tun(cfg.tun.name, [str(a) for a in cfg.tun.addresses],
                                           cfg.tun.mtu, [str(r) for r in cfg.tun.routes])
            self._local = {a.ip.packed for a in cfg.tun.addresses}
            # An MN's care-of addresses are ours on the wire too (tunnel from the HA).
            self._local |= {link.coa.packed for link in cfg.links if link.coa is not None}
            for link_cfg in sorted(cfg.links, key=lambda link: link.priority):
                driver = self.ports.make_link(link_cfg)
                batch_hooks = getattr(self.tun, "begin_batch", None), \
                    getattr(self.tun, "end_batch", None)
                if hasattr(driver, "batch_hooks") and None not in batch_hooks:
                    # A read burst's TUN writes leave at its end, not a loop round later.
                    driver.batch_hooks = batch_hooks
                if self.keying is not None and isinstance(driver, Rfc3948Driver):
                    # IKE on port 4500 (non-ESP marker) and 500 go to the IKE manager.
                    await driver.start(self.loop, self._on_link_packet,
                                       on_ike=self.keying.rfc3948_handler(link_cfg, driver))
                else:
                    await driver.start(self.loop, self._on_link_packet)
                self.links[link_cfg.name] = driver
                # Its own on-wire addresses (raw: the interface's; rfc3948: bind).
                self._local |= driver.own_addresses()
                self._framing_links.setdefault(str(link_cfg.driver), []).append(driver)
                self.link_mtu[link_cfg.name] = self._underlay_payload_mtu(link_cfg)
                self._add_keepalive_targets(driver)
            if self.ports.control:
                self.control = ControlServer(self.control_path, self.control_handlers.handlers())
                await self.control.start()
        except BaseException:
            await self.close()
            raise
        self.tun.attach(self._on_tun_packets, loop=self.loop, batch=self.batch)
        self.pump.attach(self.loop)
        if self.links:
            self.active_link = next(iter(self.links))   # sorted by priority
        self.mobility.start(self.link_coa(self.active_link), self.clock())
        if self.keying is not None:
            self.keying.start(self.loop)
        if self.is_mobile:
            self.movement = self.ports.movement(self.services)
            self.movement.start(self.loop)
        for sig, handler in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                             (signal.SIGHUP, self.reload)):
            if not self.ports.signals:
                break
            try:
                self.loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):
                pass  # not the main thread (tests): signals stay with the caller
        self._serving = True
        log.info("node started", name=cfg.node.name, roles=",".join(map(str, cfg.node.roles)),
                 tun=self.tun.name, links=",".join(self.links), control=str(self.control_path),
                 sas=len(self.keys.sas), policies=len(self.keys.policies))

    def request_stop(self) -> None:
        log.info("stop requested", name=self.config.node.name)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def on_stop(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run *step* when a started node stops cleanly, links and timers still up.

        Every step runs at once and all of them get :data:`STOP_GRACE`
        seconds together; one still running then is cancelled (counted
        ``stop_step_timeout``), one that fails is logged.
        """
        self._stop_steps.append((name, step))

    async def _run_stop_steps(self) -> None:
        if not self._stop_steps:
            return
        tasks = {asyncio.ensure_future(step()): name for name, step in self._stop_steps}
        done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
            self.counters["stop_step_timeout"] += 1
            log.warning("stop step unfinished; going on", step=tasks[task])
        for task in done:
            error = task.exception()
            if error is not None:
                self.counters["stop_step_failed"] += 1
                log.error("stop step failed; going on", step=tasks[task],
                          error=f"{type(error).__name__}: {error}")

    async def close(self) -> None:
        """Release everything; every step runs even if an earlier one failed (logged).

        A node that was serving first runs the helpers' stop steps (on_stop).
        """
        if self._serving:
            self._serving = False
            await self._run_stop_steps()
        if self.loop is not None and self.ports.signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                try:
                    self.loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        if self.keying is not None:
            # DELETE our IKE SAs while the links still carry them (bounded
            # wait for the answers), after the on_stop steps: their last
            # messages (an MN's deregistration) travel on these SAs.
            await self._close_step_async("IKE deletes", self.keying.stop)
        self.pump.close()
        # After the privilege drop some steps may fail (EPERM): one failure
        # must not leave the TUN, the links or a capture open.
        if self.movement is not None:
            self._close_step("movement watcher", self.movement.close)
            self.movement = None
        if self.keying is not None:
            self._close_step("IKE", self.keying.close)
        if self.control is not None:
            await self._close_step_async("control socket", self.control.close)
            self.control = None
        for name, driver in list(self.links.items()):
            await self._close_step_async(f"link {name}", driver.close)
        self.links.clear()
        if self.tun is not None:
            self._close_step("TUN", self.tun.close)
            self.tun = None
        for what, writer in (("wire capture", self.pcap_wire),
                             ("inner capture", self.pcap_inner)):
            if writer is not None:
                self._close_step(what, writer.close)
        if self.seq_state is not None:
            # The inbound marks on disk and the lock released: the same
            # process may start this node again (the simulator does).
            self._close_step("sequence-number state", self.seq_state.close)
        log.info("node stopped", name=self.config.node.name)

    def _close_step(self, what: str, close: Callable[[], Any]) -> None:
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - one step must not skip the rest
            log.error("close step failed; going on", step=what,
                      error=f"{type(exc).__name__}: {exc}")

    async def _close_step_async(self, what: str, close: Callable[[], Any]) -> None:
        try:
            await close()
        except Exception as exc:  # noqa: BLE001 - one step must not skip the rest
            log.error("close step failed; going on", step=what,
                      error=f"{type(exc).__name__}: {exc}")

    def reload(self) -> str | None:
        """SIGHUP: re-read the config; change only the SAs, policies and peers that changed.

        Returns None when reloaded, else why not (also logged and counted):
        the running config stays.  After the privilege drop a file the node
        can no longer read is refused here with the file and the fix.
        """
        if self.config_path is None:
            log.warning("reload ignored: the node was not started from a config file")
            return "the node was not started from a config file"
        try:
            new_config = load_config(self.config_path)
            new_keys = static_keys(new_config)
        except VmipError as exc:
            log.error("reload refused; keeping the running config", error=str(exc))
            self.counters["reload_failed"] += 1
            return str(exc)
        except Exception as exc:   # a bug, not bad input: keep running, keep the traceback
            log.exception("reload failed; keeping the running config",
                          error=f"{type(exc).__name__}: {exc}")
            self.counters["reload_failed"] += 1
            return f"{type(exc).__name__}: {exc}"
        plan = static.reload_diff(self.keys, new_keys)
        static.apply_reload(plan, self.sad, self.spd, self.clock(), state=self.seq_state)
        self.keys = plan.result
        self.locators.max_learned = max(self.locators.max_learned,
                                        max_learned_for(len(self.keys.sas)))
        self.locators.replace_static(new_config.peers)
        self.config = new_config
        self._index_coas()
        self.flows.policy = FlowPolicy.from_config(new_config.flows)
        self.counters["reloads"] += 1
        self.pump.arm()
        log.info("config reloaded", added_sas=len(plan.add_sas), removed_sas=len(plan.remove_sas),
                 kept_sas=len(plan.keep_sas), added_policies=len(plan.add_policies),
                 removed_policies=len(plan.remove_policies))
        return None

    def _add_keepalive_targets(self, driver: LinkDriver) -> None:
        """NAT keepalives (RFC 3948 §4) towards every static peer this link can reach."""
        add = getattr(driver, "add_keepalive_target", None)
        if add is None or not getattr(driver, "keepalive_interval", 0):
            return
        for peer in self.config.peers:
            if peer.endpoint is not None and str(peer.framing) == driver.kind:
                add((str(peer.endpoint.address), peer.endpoint.port))

    # -- what the helpers' events ask of the node ------------------------------

    def _on_sadb_event(self, event) -> None:
        self.pump.arm_soon()

    # -- outbound: TUN → wire ------------------------------------------------

    def _on_tun_packets(self, packets: list[bytes]) -> None:
        now = self.clock()
        pcap_inner = self.pcap_inner
        sends: dict[LinkDriver, list[tuple[bytes, tuple[str, int]]]] = {}
        for inner in packets:
            if pcap_inner is not None:
                pcap_inner.write(inner)
            self._send(inner, None, now, sends)
        self._flush(sends)

    def _send(self, inner: bytes, ancillary, now: float, sends: dict) -> None:
        """SPD and ESP, then IRO (the outbound order of docs/architecture.md), then route."""
        fragmented = len(inner) > 40 and inner[6] in _MAY_BE_FRAGMENT \
            and fragment_header_at(inner) is not None
        if fragmented:
            # ESP protects whole datagrams only (RFC 4303 §3.1.1).
            whole = self.tun_reassembly.add(inner, now)
            if whole is None:
                return
            inner = whole
        result = self.engine.outbound(inner, now)
        wire = result.packet
        if wire is None:
            return
        if ancillary is None:
            # Several bound paths to the peer: the flow's policy picks one, or
            # all of them for the same ESP bytes (duplicate mode, flows.py).
            copies = self.flows.copies(inner, wire, now)
            if copies is not None:
                for chosen in copies:
                    out = self.mobility.outbound(wire, chosen, now)
                    if out is not None:
                        self._route(inner, out, sends, fragmented)
                return
        wire = self.mobility.outbound(wire, ancillary, now)
        if wire is None:
            return
        self._route(inner, wire, sends, fragmented)

    def _flush(self, sends: dict) -> None:
        for driver, items in sends.items():
            driver.send_many(items)

    def send_inner(self, inner: bytes, ancillary, now: float) -> None:
        """Send a packet this node made itself (MH from the mobility cores)."""
        held = self._held
        if held is not None:
            # Made while an inbound packet is handled: it leaves once that
            # packet's locator decision is taken (a BA or AOTC to a new CoA).
            held.append((inner, ancillary))
            return
        sends: dict = {}
        self._send(inner, ancillary, now, sends)
        self._flush(sends)

    def send_onwire(self, wire: bytes, endpoint: tuple[str, int], link: str) -> None:
        """An on-wire packet a helper addressed itself (IKE on an rfc3948 link):
        the link's MTU, the capture and the counters still apply."""
        driver = self.links.get(link)
        if driver is None:
            self.counters["tx_drop_no_link"] += 1
            return
        if len(wire) > self.link_mtu.get(link, DEFAULT_UNDERLAY_MTU):
            self.counters["tx_drop_too_big"] += 1
            return
        self.capture_wire(wire)
        driver.send(wire, endpoint)
        self.counters["tx_packets"] += 1

    def capture_wire(self, packet: bytes) -> None:
        if self.pcap_wire is not None:
            self.pcap_wire.write(packet)

    def _route(self, inner: bytes, wire: bytes, sends: dict, fragmented: bool = False) -> None:
        """Pick the link and underlay endpoint for an on-wire packet."""
        if wire[0] >> 4 != 6:
            self.counters["tx_drop_not_ipv6"] += 1
            return
        locator = self.locators.lookup(wire[24:40])
        reply_at = self._reply_at
        if reply_at is not None and wire[24:40] == reply_at[0] and reply_at[2] in self.links \
                and (locator is None or locator.endpoint != reply_at[1]):
            self.counters["tx_reply_at_arrival"] += 1
            locator = Locator(ipaddress.IPv6Network((int.from_bytes(reply_at[0], "big"), 128)),
                              reply_at[1], reply_at[2], self.links[reply_at[2]].kind,
                              LEARNED, None)
        if locator is None:
            self.counters["tx_drop_no_locator"] += 1
            self._unreachable(inner)
            return
        driver = self._driver_for(locator, wire[8:24])
        if driver is None or locator.endpoint is None and driver.kind != "raw":
            self.counters["tx_drop_no_link"] += 1
            self._unreachable(inner)
            return
        mtu = self.link_mtu.get(driver.name, DEFAULT_UNDERLAY_MTU)
        if self.onwire_icmp:
            # A router said the path to this on-wire destination is narrower.
            path_mtu = self.onwire_icmp.path_mtu(wire[24:40], self.clock())
            if path_mtu is not None and path_mtu < mtu:
                mtu = path_mtu
        if len(wire) > mtu and fragmented:
            # The host fragmented this datagram: so is the packet that carries
            # it, after ESP and IRO (each fragment with the on-wire addresses).
            self._fragment_id = (self._fragment_id + 1) & 0xFFFFFFFF
            pieces = fragment(wire, mtu, self._fragment_id)
            if not pieces:
                self.counters["tx_drop_too_big"] += 1
                return
            self.counters["tx_fragmented"] += 1
            for piece in pieces:
                self._route(inner, piece, sends)
            return
        if len(wire) > mtu:
            # RFC 4443 §3.2 / RFC 8201: tell the sender how much less to send;
            # the overhead is what ESP and the tunnel added to this packet.
            self.counters["tx_drop_too_big"] += 1
            if self.tun is not None:
                self.tun.send_packet_too_big(inner, max(1280, mtu - (len(wire) - len(inner))))
            return
        if self.pcap_wire is not None:
            self.pcap_wire.write(wire)
        endpoint = locator.endpoint if locator.endpoint is not None else (
            str(_ipv6_text(wire[24:40])), 0)
        sends.setdefault(driver, []).append((wire, endpoint))
        self.counters["tx_packets"] += 1

    def _driver_for(self, locator, source: bytes = b"") -> LinkDriver | None:
        if self.is_mobile and self.active_link is not None:
            # An MN sends from the CoA it registered, so on that link only;
            # a packet from another link's CoA (an early test of that CoA,
            # draft §4.5.2) leaves on that link.
            link = self._link_of_coa.get(bytes(source), self.active_link)
            return self.links.get(link)
        if self.active_link is not None and str(locator.framing) == "rfc3948":
            # A gateway's ESP leaves on the active rfc3948 link, where its IKE SA
            # runs from (``vmip move``, MOBIKE).
            active = self.links.get(self.active_link)
            if active is not None and active.kind == "rfc3948":
                return active
        if locator.link is not None:
            driver = self.links.get(locator.link)
            if driver is not None:
                return driver
        candidates = self._framing_links.get(str(locator.framing))
        return candidates[0] if candidates else None

    def _unreachable(self, inner: bytes) -> None:
        """ICMPv6 destination unreachable, code 0 (no route), back into the TUN (RFC 4443 §3.1)."""
        tun = self.tun
        if tun is None or not may_send_error(inner, _ICMP_DEST_UNREACH):
            return
        if not tun.icmp_rate_limiter.allow(self.clock()):
            tun.counters.icmp_errors_suppressed += 1
            return
        source = next((a.ip for a in tun.addresses if a.version == 6), None)
        if source is None:
            return
        error = build_icmpv6_packet(DestinationUnreachable(0, inner), source, inner[8:24])
        if tun.write(error):
            tun.counters.icmp_errors_sent += 1

    # -- inbound: wire → TUN -------------------------------------------------

    def _on_link_packet(self, wire: bytes, endpoint: tuple[str, int], link: LinkDriver) -> None:
        now = self.clock()
        if self.pcap_wire is not None:
            self.pcap_wire.write(wire)
        if link.kind == "raw" and len(wire) > 40 and wire[6] == proto.ICMPV6:
            # A router's error about a packet we sent (the raw driver passes
            # ICMPv6 errors only); the kernel got its own copy.
            event = self.onwire_icmp.receive(wire, now)
            if event is not None:
                self.events.publish(event)
            return
        if len(wire) > 40 and wire[6] in _MAY_BE_FRAGMENT \
                and fragment_header_at(wire) is not None:
            # Reassembly before IPsec (RFC 4301 §5.2), so before the IRO rules too.
            whole = self.wire_reassembly.add(bytes(wire), now)
            if whole is None:
                return
            wire = whole
        # IRO inbound rules come before ESP (draft §5.1.2, docs/architecture.md).
        remapped = self.mobility.inbound(wire)
        if remapped is None:
            return
        packet, onwire = remapped
        if packet[24:40] not in self._local:
            # Not addressed to us and not decapsulated by us: the inbound SPD
            # judges it before anything is forwarded (RFC 4301 §5.2).
            if self.forwarding and self._may_forward_transit(packet):
                self._forward(packet, now)
            elif not self.forwarding:
                self.counters["rx_drop_not_for_us"] += 1
            return
        result = self.engine.inbound(packet, now)
        inner = result.packet
        if inner is None:
            return
        if result.reentry:
            onwire = result.reentry   # the on-wire addresses inside the tunnel (§5.1.1)
        source = wire[8:24]
        # Authenticated (ICV and anti-replay passed): the sender's locator may
        # move, but only for what the SA vouches for (docs/security.md), and
        # only once the MH it carries is processed: a BU is what binds a CoA.
        relocate = bool(result.sas) and not self.locators.refresh(source, endpoint, now,
                                                                  link.name)
        if relocate:
            self._held = []
        try:
            self._deliver(inner, result, onwire, wire, endpoint, link, now)
        finally:
            if relocate:
                held, self._held = self._held, None
                self._relocate(source, result.sas[0], endpoint, link.name, now)
                # An answer (a BA, refusal or not; an AOTC) goes back to where
                # the authenticated packet came from, whether or not that
                # address's locator may point there (docs/security.md).
                self._reply_at = (source, endpoint, link.name)
                try:
                    for made, ancillary in held or ():
                        self.send_inner(made, ancillary, now)
                finally:
                    self._reply_at = None

    def _deliver(self, inner: bytes, result, onwire, wire: bytes, endpoint: tuple[str, int],
                 link: LinkDriver, now: float) -> None:
        """An inbound packet that passed IPsec: forward, IKE, MH or the TUN."""
        if inner[24:40] not in self._local:
            # The HA after its tunnel: the MN's packet goes on to its destination.
            if self.forwarding and self._may_forward_decapsulated(inner, result.sas):
                self._forward(inner, now)
            elif not self.forwarding:
                self.counters["rx_drop_not_for_us"] += 1
            return
        if self.pcap_inner is not None:
            self.pcap_inner.write(inner)
        if self.keying is not None and self.keying.intercept(inner, wire[8:24], endpoint,
                                                             link.name, now):
            return   # IKE (UDP 500/4500) for one of our addresses
        # TCP, UDP and ICMPv6 right after the IPv6 header cannot be MH: skip
        # the header walk receive_mh would do for every data packet.
        if result.sas and len(inner) > 40 and inner[6] not in _NOT_MH:
            # An MH only from the transport SA its policy names (RFC 3776, RFC 4877).
            refused = mh_protection.refusal(self.spd, inner, result.sas)
            if refused is not None:
                self.counters["rx_drop_" + refused] += 1
                return
            if self.mobility.receive_mh(inner, onwire, now):
                return
        if result.sas and self.mobility.paths.active:
            # Authenticated (ICV, anti-replay) data: with several bindings the
            # CN's best path follows the MN's, and a path's silence is timed
            # (docs/multi-coa.md).
            self.mobility.data_arrived(inner[8:24], wire[8:24], link.name, now)
        if self.tun is not None:
            # Queued: the TUN writes once per loop round, coalescing TCP (GRO).
            self.tun.write_soon(inner)
        self.counters["rx_delivered"] += 1

    def _relocate(self, source: bytes, sa, endpoint: tuple[str, int], link: str,
                  now: float) -> None:
        """Move *source*'s locator to *endpoint* if the SA that authenticated
        the packet vouches for that address: it is the SA's own peer (a
        tunnel SA's outer source, a transport SA's remote address), or the
        care-of address the binding of that peer names.  An ICV covers
        neither the on-wire addresses nor the underlay endpoint (RFC 4303
        §2), so any other address in a held-back and re-sent datagram is the
        attacker's choice."""
        peer = sa.params.src
        owner: ipaddress.IPv6Address | None = peer
        if source == peer.packed:
            vouched_by = PEER
            # A HA's tunnel SA: its outer source is the CoA a binding names,
            # so it vouches as that binding does (owner rules included).
            owner = self.mobility.holder_of(source)
        elif self.mobility.binds(peer, source):
            vouched_by = BINDING
        elif self.mobility.proposes(peer, source) \
                and getattr(self.locators.lookup(source), "source", None) != LEARNED:
            vouched_by = BINDING      # an unproven CoA: a new locator only
        else:
            # Nothing else vouches: an early test's AOTO or a refused BU names
            # no address of its sender's; the answer goes back to the arrival
            # endpoint without an entry (send_inner, _route).
            self.counters["locator_not_vouched"] += 1
            return
        if source in self._local or self.mobility.is_home_address(source):
            self.counters["locator_not_vouched"] += 1
            return
        refused = self.locators.refusal(source, vouched_by)
        if refused is not None:
            self.counters["locator_" + refused] += 1
            return
        driver = self.links.get(link)
        if (vouched_by == BINDING or owner is not None) and self.locators.taken(source, owner):
            # Another MN's CoA or a peer's address (docs/security.md).
            self.counters["locator_refused_owned"] += 1
            return
        self.locators.confirm(source, endpoint, now, link=link, vouched_by=vouched_by,
                              framing=driver.kind if driver is not None else None,
                              home_address=owner)

    def _may_forward_transit(self, packet: bytes) -> bool:
        """A packet that reached us on the wire for another node, without an
        SA of ours around it (a CN's ESP to a HoA): the HA forwards it only
        if an inbound BYPASS policy lets it through (RFC 4301 §5.2), and never
        when its source is a home address: those come only out of the MN's
        tunnel SA (RFC 6275 §10.4.5)."""
        if self.mobility.is_home_address(packet[8:24]):
            self.counters["fwd_drop_home_source"] += 1
            return False
        try:
            key = flow_key(packet)
        except WireError:
            self.counters["fwd_drop_malformed"] += 1
            return False
        policy = self.spd.lookup(Direction.IN, key)
        if policy is None or policy.action is not Action.BYPASS:
            self.counters["fwd_drop_policy"] += 1
            return False
        return True

    def _may_forward_decapsulated(self, inner: bytes, sas: tuple) -> bool:
        """What came out of a tunnel SA (the engine checked it against that
        SA's selectors).  A home address as source must have come out of that
        MN's own tunnel: the SA whose outer source is the CoA its binding
        names (RFC 6275 §10.4.5), whatever the policies' granularity."""
        source = inner[8:24]
        if not self.mobility.is_home_address(source):
            return True
        outer = sas[0] if sas else None
        if outer is None or outer.params.mode is not Mode.TUNNEL \
                or not self.mobility.binds(ipaddress.IPv6Address(source), outer.params.src.packed,
                                           home_only=True):
            self.counters["fwd_drop_home_source"] += 1
            return False
        return True

    def _remap_reentered(self, inner: bytes) -> tuple[bytes, Any] | None:
        """ESP that came out of a tunnel SA meets the IRO inbound rules as if it
        had arrived on the wire (draft §5.1.2: rules run before ESP); its
        on-wire addresses replace the outer packet's for the MIPv6 code (§5.1.1)."""
        return self.mobility.inbound(inner)

    def _forward(self, packet: bytes, now: float) -> None:
        """Route a packet that is not ours (the HA for its mobile nodes)."""
        hop_limit = packet[7]
        if hop_limit <= 1:
            self.counters["fwd_drop_hop_limit"] += 1
            return
        packet = packet[:7] + bytes((hop_limit - 1,)) + packet[8:]
        sends: dict = {}
        self._send(packet, None, now, sends)
        self._flush(sends)
        self.counters["forwarded"] += 1

    # -- mobility ------------------------------------------------------------------

    def link_coa(self, link_name: str | None):
        for link in self.config.links:
            if link.name == link_name:
                return link.coa
        return None

    def _index_coas(self) -> None:
        self._link_of_coa = {link.coa.packed: link.name for link in self.config.links
                             if link.coa is not None}

    def early_test(self, link_name: str, peer=None) -> int:
        """Offer the CNs an early test of *link_name*'s CoA (draft §4.5.2), over that link."""
        coa = self.link_coa(link_name)
        if not self.is_mobile or coa is None or link_name not in self.links:
            return 0
        return self.mobility.offer_early_tests(coa, self.clock(), peer)

    def link_names(self) -> list[str]:
        return list(self.links)

    def move(self, link_name: str) -> dict:
        """Make *link_name* the MN's access link: new CoA, rules, BUs (draft §6.1)."""
        if link_name not in self.links:
            raise NodeError(f"no link {link_name!r}; links: {', '.join(self.links)}")
        if not self.is_mobile:
            return self._move_underlay(link_name)
        coa = self.link_coa(link_name)
        if coa is None:
            raise NodeError(f"link {link_name} has no care-of address (coa) in the config")
        old = self.active_link
        self.active_link = link_name
        self.mobility.move(coa, self.clock())
        log.info("moved", old_link=old or "-", new_link=link_name, coa=str(coa))
        return {"link": link_name, "coa": str(coa), "previous": old}

    def set_care_of_links(self, links: list[str], primary: str | None) -> dict:
        """An MN with ``multiple_care_of``: one binding per link of *links*, the
        primary on *primary*, which becomes the access link (RFC 5648)."""
        if not self.is_mobile or not self.mobility.multiple_care_of:
            raise NodeError("set_care_of_links needs a mobile node with "
                            "[mobility] multiple_care_of = true")
        unknown = [link for link in links if link not in self.links]
        if unknown:
            raise NodeError(f"no link {unknown[0]!r}; links: {', '.join(self.links)}")
        old = self.active_link
        self.mobility.set_care_of_links(links, primary, self.clock())
        if primary is not None:
            self.active_link = primary
        return {"links": links, "link": primary, "previous": old}

    def _move_underlay(self, link_name: str) -> dict:
        """A node that is no MN but has several rfc3948 links (an IPsec client of a
        gateway): make *link_name* active; its IKE SAs follow with MOBIKE."""
        if self.keying is None or self.links[link_name].kind != "rfc3948":
            raise NodeError("this node is not a mobile node (roles has no 'mn'); without it "
                            "only IKE SAs on rfc3948 links can move: keys.mode = \"ike\" and "
                            "an rfc3948 link to move to")
        old = self.active_link
        moved = self.keying.underlay_moved(old, link_name)
        self.active_link = link_name
        log.info("moved", old_link=old or "-", new_link=link_name, ike_sas=moved)
        return {"link": link_name, "previous": old, "ike_sas": moved}

    # -- MTU -------------------------------------------------------------------

    def _underlay_payload_mtu(self, link_cfg) -> int:
        """Largest on-wire packet the link carries without IP fragmentation."""
        mtu = DEFAULT_UNDERLAY_MTU
        if link_cfg.interface:
            try:
                mtu = int(Path(f"/sys/class/net/{link_cfg.interface}/mtu").read_text())
            except (OSError, ValueError):
                pass
        driver = str(link_cfg.driver)
        if driver == "raw":
            return mtu
        family = 6 if link_cfg.bind is not None and link_cfg.bind.version == 6 else 4
        # An unbound socket may reach IPv6 peers: assume the larger overhead
        # unless every static peer endpoint is IPv4.
        if link_cfg.bind is None and any(
                p.endpoint is not None and p.endpoint.address.version == 6
                for p in self.config.peers):
            family = 6
        return mtu - _UDP_OVERHEAD[family]


def _ipv6_text(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))
