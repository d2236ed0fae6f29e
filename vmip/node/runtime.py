"""The node runtime: one asyncio loop around the sans-IO cores.

Like wireguard-go's device/conn/tun split, the runtime owns three kinds of
I/O and nothing else: the TUN (:mod:`vmip.node.tun`), the link drivers
(:mod:`vmip.links`) and the control socket (:mod:`vmip.control`).  Every
decision is taken by a sans-IO core: the IPsec engine (SPD, SAD, ESP), the
locator table and, in later layers, mobility and IKE.  Timers are the SAD's
``get_timer()`` deadline, re-armed after every call into it.

Packet paths (DESIGN-BRIEF §4):

- outbound: TUN batch → ``engine.outbound`` (SPD, ESP) → on-wire packet →
  too big for the link? ICMPv6 Packet Too Big to the sender → locator
  lookup → link driver.  No locator: ICMPv6 destination unreachable.
- inbound: link driver → ``engine.inbound`` (SAD, ESP, anti-replay, the
  RFC 4301 §5.2 selector check) → locator learning, only for packets an SA
  authenticated → TUN.

Nothing a peer sends can raise out of these paths: drops are counted by
reason and shown by ``vmip counters``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from vmip import __version__
from vmip.config import load_config
from vmip.control.paths import default_socket_path
from vmip.control.server import ControlServer
from vmip.errors import VmipError
from vmip.ipsec import static
from vmip.ipsec import esp as esp_mod
from vmip.ipsec.engine import IpsecEngine
from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.sad import SAD
from vmip.ipsec.sadb import SadbBus
from vmip.ipsec.spd import SPD, Action
from vmip.ipsec.wireshark import wireshark_rows
from vmip.links.base import LinkDriver
from vmip.links.locators import BINDING, PEER, LocatorTable
from vmip.log import get_logger
from vmip.node.keying import IkeManager, static_keys
from vmip.node.mobility import MobilityAgent
from vmip.node.pcap import PcapWriter
from vmip.node.ports import REAL_PORTS, NodePorts, TunPort
from vmip.wire.errors import WireError
from vmip.wire.flow import flow_key
from vmip.wire.icmpv6 import DestinationUnreachable, build_icmpv6_packet, may_send_error

log = get_logger(__name__)
_IPPROTO_ESP = 50

#: Bytes a link driver adds around the on-wire packet, by driver and
#: underlay family: IPv4/IPv6 header plus UDP header.
_UDP_OVERHEAD = {4: 20 + 8, 6: 40 + 8}

#: The underlay MTU assumed when the link's interface cannot be read.
DEFAULT_UNDERLAY_MTU = 1500

#: ICMPv6 destination unreachable, code 0 "no route to destination" (RFC 4443 §3.1).
_ICMP_DEST_UNREACH = 1
#: Upper-layer protocols: a packet whose first next header is one of them
#: carries no Mobility Header (RFC 8200 §4: the header chain ends there).
_NOT_MH = frozenset({6, 17, 58})


class NodeError(VmipError):
    """The node could not start or was asked something it cannot do."""


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
        self.bus = SadbBus()
        self.sad = SAD(self.bus)
        self.spd = SPD()
        now = clock()
        self.keys = static_keys(config)   # IKE mode: protect policies are negotiated
        # Opened now, before privileges are dropped, and kept open: static keys
        # resume their sequence numbers (RFC 4303 §3.3.3, RFC 4106 §3.1).
        self.seq_state = static.open_state(config)
        static.install(self.keys, self.sad, self.spd, now, state=self.seq_state)
        # Tunnel decap goes through _decap_then_remap, so IRO rules also see ESP
        # that arrives inside the HA tunnel (MN-MN, draft §5.2.2 examples 3/4).
        self._tunnelled_onwire = None
        #: Packets this node makes while one inbound packet is handled (see send_inner).
        self._held: list[tuple[bytes, Any]] | None = None
        self.engine = IpsecEngine(self.spd, self.sad, now, bus=self.bus, esp=types.SimpleNamespace(
            transport_encap=esp_mod.transport_encap, tunnel_encap=esp_mod.tunnel_encap,
            esp_spi=esp_mod.esp_spi, decap=self._decap_then_remap))
        self.locators = LocatorTable.from_peers(config.peers)
        self.links: dict[str, LinkDriver] = {}
        self.tun: TunPort | None = None
        self.control: ControlServer | None = None
        self.control_path = control_socket or (config.control.socket or default_socket_path())
        self.counters: Counter[str] = Counter()
        self._pcap_wire = PcapWriter(pcap_wire) if pcap_wire else None
        self._pcap_inner = PcapWriter(pcap_inner) if pcap_inner else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._stopped = asyncio.Event()
        self._local: set[bytes] = set()
        self._link_mtu: dict[str, int] = {}
        self._framing_links: dict[str, list[LinkDriver]] = {}
        self._mobility_timer: asyncio.TimerHandle | None = None
        self._mobility_deadline: float | None = None
        self._event_listeners: list[Callable[[dict], None]] = []
        self._reverse_tunnel_sa = None
        self._reverse_tunnel_valid = False
        self.mobility = MobilityAgent(self, now)
        # The SAD's deadlines only move when an SA does, and every such change
        # is an SADB event: re-arm then, never per packet.
        self._rearm_pending = False
        self.bus.subscribe(self._on_sadb_event)
        # Which link carries our packets: an MN sends on its current access
        # link only (the one whose CoA it registered), others on any.
        self.active_link: str | None = None
        self.is_mobile = self.mobility.mn is not None
        self.movement = None   # vmip.node.movement.MovementWatcher on an MN
        self.forwarding = self.mobility.ha is not None
        self.keying = IkeManager(self) if str(config.keys.mode) == "ike" else None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            self.tun = self.ports.open_tun(cfg.tun.name, [str(a) for a in cfg.tun.addresses],
                                           cfg.tun.mtu, [str(r) for r in cfg.tun.routes])
            self._local = {a.ip.packed for a in cfg.tun.addresses}
            # An MN's care-of addresses are ours on the wire too (tunnel from the HA).
            self._local |= {link.coa.packed for link in cfg.links if link.coa is not None}
            # On an rfc3948 link the on-wire addresses are the underlay ones (ESP to us).
            self._local |= {link.bind.packed for link in cfg.links if str(link.driver) == "rfc3948"
                            and link.bind is not None and link.bind.version == 6}
            for link_cfg in sorted(cfg.links, key=lambda link: link.priority):
                driver = self.ports.make_link(link_cfg)
                if self.keying is not None and str(link_cfg.driver) == "rfc3948":
                    # IKE on port 4500 (non-ESP marker) and 500 go to the IKE manager.
                    await driver.start(self._loop, self._on_link_packet,
                                       on_ike=self.keying.rfc3948_handler(link_cfg, driver))
                else:
                    await driver.start(self._loop, self._on_link_packet)
                self.links[link_cfg.name] = driver
                self._framing_links.setdefault(str(link_cfg.driver), []).append(driver)
                self._link_mtu[link_cfg.name] = self._underlay_payload_mtu(link_cfg)
                self._add_keepalive_targets(driver)
            if self.ports.control:
                self.control = ControlServer(self.control_path, self._handlers())
                await self.control.start()
        except BaseException:
            await self.close()
            raise
        self.tun.attach(self._on_tun_packets, loop=self._loop, batch=self.batch)
        self._arm_timer()
        if self.links:
            self.active_link = next(iter(self.links))   # sorted by priority
        self.mobility.start(self._link_coa(self.active_link), self.clock())
        if self.keying is not None:
            self.keying.start(self._loop)
        if self.is_mobile:
            self.movement = self.ports.movement(self)
            self.movement.start(self._loop)
        for sig, handler in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                             (signal.SIGHUP, self.reload)):
            if not self.ports.signals:
                break
            try:
                self._loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):
                pass  # not the main thread (tests): signals stay with the caller
        log.info("node started", name=cfg.node.name, roles=",".join(map(str, cfg.node.roles)),
                 tun=self.tun.name, links=",".join(self.links), control=str(self.control_path),
                 sas=len(self.keys.sas), policies=len(self.keys.policies))

    def request_stop(self) -> None:
        log.info("stop requested", name=self.config.node.name)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        """Release everything; every step runs even if an earlier one failed (logged)."""
        if self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                try:
                    self._loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._mobility_timer is not None:
            self._mobility_timer.cancel()
            self._mobility_timer = None
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
        for what, writer in (("wire capture", self._pcap_wire),
                             ("inner capture", self._pcap_inner)):
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
        except Exception as exc:
            log.error("close step failed; going on", step=what,
                      error=f"{type(exc).__name__}: {exc}")

    async def _close_step_async(self, what: str, close: Callable[[], Any]) -> None:
        try:
            await close()
        except Exception as exc:
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
        self.locators.replace_static(new_config.peers)
        self.config = new_config
        self.counters["reloads"] += 1
        self._arm_timer()
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

    # -- timers --------------------------------------------------------------

    def _arm_timer(self) -> None:
        """Follow the SAD's next deadline (lifetimes, larval SPIs)."""
        if self._loop is None:
            return
        deadline = self.sad.get_timer()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_sadb_event(self, event) -> None:
        self.tunnel_changed()
        if self._loop is not None and not self._rearm_pending:
            self._rearm_pending = True
            self._loop.call_soon(self._rearm_after_event)

    def _rearm_after_event(self) -> None:
        self._rearm_pending = False
        self._arm_timer()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self.sad.handle_timer(self.clock())
        self._arm_timer()

    # -- outbound: TUN → wire ------------------------------------------------

    def _on_tun_packets(self, packets: list[bytes]) -> None:
        now = self.clock()
        pcap_inner = self._pcap_inner
        sends: dict[LinkDriver, list[tuple[bytes, tuple[str, int]]]] = {}
        for inner in packets:
            if pcap_inner is not None:
                pcap_inner.write(inner)
            self._send(inner, None, now, sends)
        self._flush(sends)

    def _send(self, inner: bytes, ancillary, now: float, sends: dict) -> None:
        """SPD and ESP, then IRO (DESIGN-BRIEF §4 outbound order), then route."""
        result = self.engine.outbound(inner, now)
        wire = result.packet
        if wire is None:
            return
        wire = self.mobility.outbound(wire, ancillary, now)
        if wire is None:
            return
        self._route(inner, wire, sends)

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

    def reverse_tunnel(self, packet: bytes, now: float) -> bytes | None:
        """An MN's packet that still carries the HoA as source: into the tunnel to the HA."""
        sa = self._tunnel_sa()
        if sa is None:
            self.counters["tx_drop_no_tunnel"] += 1
            return None
        wrapped = esp_mod.tunnel_encap(packet, sa, now)
        if wrapped is None:
            self.counters["tx_drop_tunnel_sa"] += 1
        return wrapped

    def tunnel_changed(self) -> None:
        self._reverse_tunnel_valid = False

    def _tunnel_sa(self):
        if not self._reverse_tunnel_valid:
            self._reverse_tunnel_sa = None
            home_agent = self.mobility.home_agent
            for info in self.sad.dump(publish=False):
                if info.mode is Mode.TUNNEL and info.direction is Direction.OUT \
                        and info.dst == home_agent and info.state != "larval":
                    self._reverse_tunnel_sa = self.sad.esp(info.spi, Direction.OUT, info.dst)
                    break
            self._reverse_tunnel_valid = True
        return self._reverse_tunnel_sa

    def _route(self, inner: bytes, wire: bytes, sends: dict) -> None:
        """Pick the link and underlay endpoint for an on-wire packet."""
        if wire[0] >> 4 != 6:
            self.counters["tx_drop_not_ipv6"] += 1
            return
        locator = self.locators.lookup(wire[24:40])
        if locator is None:
            self.counters["tx_drop_no_locator"] += 1
            self._unreachable(inner)
            return
        driver = self._driver_for(locator)
        if driver is None or locator.endpoint is None and driver.kind != "raw":
            self.counters["tx_drop_no_link"] += 1
            self._unreachable(inner)
            return
        mtu = self._link_mtu.get(driver.name, DEFAULT_UNDERLAY_MTU)
        if len(wire) > mtu:
            # RFC 4443 §3.2 / RFC 8201: tell the sender how much less to send;
            # the overhead is what ESP and the tunnel added to this packet.
            self.counters["tx_drop_too_big"] += 1
            if self.tun is not None:
                self.tun.send_packet_too_big(inner, max(1280, mtu - (len(wire) - len(inner))))
            return
        if self._pcap_wire is not None:
            self._pcap_wire.write(wire)
        endpoint = locator.endpoint if locator.endpoint is not None else (
            str(_ipv6_text(wire[24:40])), 0)
        sends.setdefault(driver, []).append((wire, endpoint))
        self.counters["tx_packets"] += 1

    def _driver_for(self, locator) -> LinkDriver | None:
        if self.is_mobile and self.active_link is not None:
            # An MN sends from the CoA it registered, so on that link only.
            return self.links.get(self.active_link)
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
        if self._pcap_wire is not None:
            self._pcap_wire.write(wire)
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
        self._tunnelled_onwire = None
        result = self.engine.inbound(packet, now)
        inner = result.packet
        if inner is None:
            return
        if self._tunnelled_onwire is not None:
            onwire = self._tunnelled_onwire
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
                for made, ancillary in held or ():
                    self.send_inner(made, ancillary, now)

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
        if self._pcap_inner is not None:
            self._pcap_inner.write(inner)
        if self.keying is not None and self.keying.intercept(inner, wire[8:24], endpoint,
                                                             link.name, now):
            return   # IKE (UDP 500/4500) for one of our addresses
        # TCP, UDP and ICMPv6 right after the IPv6 header cannot be MH: skip
        # the header walk receive_mh would do for every data packet.
        if result.sas and len(inner) > 40 and inner[6] not in _NOT_MH \
                and self.mobility.receive_mh(inner, onwire, now):
            return
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
        if source == peer.packed:
            vouched_by = PEER
        elif self.mobility.binds(peer, source):
            vouched_by = BINDING
        else:
            self.counters["locator_not_vouched"] += 1
            return
        if source in self._local or self.mobility.is_home_address(source):
            self.counters["locator_not_vouched"] += 1
            return
        refused = self.locators.refusal(source, vouched_by)
        if refused is not None:
            self.counters["locator_" + refused] += 1
            return
        self.locators.confirm(source, endpoint, now, link=link, vouched_by=vouched_by)

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

    def _decap_then_remap(self, packet, esp_offset: int, sa, now: float) -> bytes | None:
        """ESP decap; an ESP packet that comes out of a tunnel SA meets the IRO
        inbound rules as if it had arrived on the wire (a kernel re-injects the
        decapsulated packet: draft §5.1.2 rules run before ESP).  Its on-wire
        addresses replace the outer packet's for the MIPv6 code (§5.1.1)."""
        inner = esp_mod.decap(packet, esp_offset, sa, now)
        if inner is None or sa.params.mode is not Mode.TUNNEL or len(inner) < 40 \
                or inner[0] >> 4 != 6 or inner[6] != _IPPROTO_ESP:
            return inner
        remapped = self.mobility.inbound(inner)
        if remapped is None:
            return None
        inner, onwire = remapped
        if onwire:
            self._tunnelled_onwire = onwire
        return inner

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

    def _link_coa(self, link_name: str | None):
        for link in self.config.links:
            if link.name == link_name:
                return link.coa
        return None

    def move(self, link_name: str) -> dict:
        """Make *link_name* the MN's access link: new CoA, rules, BUs (draft §6.1)."""
        if not self.is_mobile:
            raise NodeError("this node is not a mobile node (roles has no 'mn')")
        if link_name not in self.links:
            raise NodeError(f"no link {link_name!r}; links: {', '.join(self.links)}")
        coa = self._link_coa(link_name)
        if coa is None:
            raise NodeError(f"link {link_name} has no care-of address (coa) in the config")
        old = self.active_link
        self.active_link = link_name
        self.mobility.move(coa, self.clock())
        log.info("moved", old_link=old or "-", new_link=link_name, coa=str(coa))
        return {"link": link_name, "coa": str(coa), "previous": old}

    def arm_mobility_timer(self) -> None:
        if self._loop is None:
            return
        deadline = self.mobility.get_timer()
        if deadline == self._mobility_deadline:
            return
        if self._mobility_timer is not None:
            self._mobility_timer.cancel()
            self._mobility_timer = None
        self._mobility_deadline = deadline
        if deadline is not None:
            self._mobility_timer = self._loop.call_later(max(0.0, deadline - self.clock()),
                                                         self._on_mobility_timer)

    def _on_mobility_timer(self) -> None:
        self._mobility_timer = None
        self._mobility_deadline = None
        self.mobility.handle_timer(self.clock())
        self.arm_mobility_timer()

    def publish_event(self, record: dict) -> None:
        for listener in list(self._event_listeners):
            try:
                listener(record)
            except Exception:  # a broken listener must not break the node
                log.exception("event listener failed")

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

    # -- control socket --------------------------------------------------------

    def _handlers(self) -> dict[str, Callable[[dict], Any]]:
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
            "mobility": lambda args: {**self.mobility.status(), "movement": (
                self.movement.status() if self.movement is not None else None)},
            "events": self._events,
            **(self._ike_handlers() if self.keying is not None else {}),
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

        return {cmd: refusing(handler) for cmd, handler in self.keying.handlers().items()}

    def _reload_command(self, args: dict) -> dict:
        error = self.reload()
        return {"reloaded": error is None, "error": error, "reloads": self.counters["reloads"]}

    def _mn_move(self, args: dict) -> dict:
        from vmip.control.errors import BadArgs

        try:
            return self.move(args["link"])
        except NodeError as exc:   # not an MN, no such link, a link without a CoA
            raise BadArgs(str(exc)) from None

    def _remap_list(self, args: dict) -> dict:
        return {"rules": self.mobility.remap.format_rules(),
                "counters": dict(self.mobility.remap.counters)}

    def _events(self, args: dict) -> list:
        since = args.get("since") or 0   # type-checked by vmip/control/commands.py
        return [e for e in self.mobility.timeline if e["t"] > since]

    def _status(self, args: dict) -> dict:
        from vmip.node.privileges import privilege_summary

        cfg = self.config
        now = self.clock()
        return {
            "name": cfg.node.name,
            "version": __version__,
            "roles": [str(r) for r in cfg.node.roles],
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_at, 3),
            "tun": self.tun.status() if self.tun is not None else None,
            "links": [
                {"name": name, "driver": driver.kind, "counters": dict(driver.counters),
                 "mtu": self._link_mtu.get(name)}
                for name, driver in self.links.items()
            ],
            "sas": len(self.sad.dump(publish=False)),
            "policies": len(self.spd.list()),
            "locators": len(self.locators),
            "control": str(self.control_path),
            "active_link": self.active_link,
            "capture": {
                "wire": str(self._pcap_wire.path) if self._pcap_wire else None,
                "inner": str(self._pcap_inner.path) if self._pcap_inner else None,
            },
            "privileges": privilege_summary(),
        }

    def _sa_list(self, args: dict) -> list[dict]:
        rows = []
        for info in self.sad.dump(publish=False):
            esp = self.sad.esp(info.spi, info.direction, info.dst)
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
        for policy in self.spd.list():
            rows.append({
                "name": policy.name,
                "direction": policy.direction.value,
                "selector": str(policy.selector),
                "action": policy.action.value,
                "sa": [str(t) for t in policy.sa_bundle],
                "priority": policy.priority,
            })
        return rows

    def _locators(self, args: dict) -> list[dict]:
        return self.locators.rows(self.clock())

    def _counters(self, args: dict) -> dict:
        esp_drops: Counter[str] = Counter()
        for info in self.sad.dump(publish=False):
            esp = self.sad.esp(info.spi, info.direction, info.dst)
            if esp is not None:
                esp_drops.update(esp.drops)
        return {
            "node": dict(self.counters),
            "ipsec": dict(self.engine.drops),
            "esp": dict(esp_drops),
            "links": {name: dict(d.counters) for name, d in self.links.items()},
            "mobility": dict(self.mobility.counters),
            "remap": dict(self.mobility.remap.counters),
            "tun": self.tun.status() if self.tun is not None else {},
        }

    def _keys_wireshark(self, args: dict) -> dict:
        params = []
        for info in self.sad.dump(publish=False):
            esp = self.sad.esp(info.spi, info.direction, info.dst)
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
        self._pcap_wire, self._pcap_inner = opened
        log.info("capture started", wire=wire or "-", inner=inner or "-")
        return {"wire": wire, "inner": inner}

    def _pcap_stop(self, args: dict) -> dict:
        stopped = {}
        for attr in ("_pcap_wire", "_pcap_inner"):
            writer = getattr(self, attr)
            if writer is not None:
                writer.close()
                stopped[attr[6:]] = {"file": str(writer.path), "packets": writer.packets}
                setattr(self, attr, None)
        return stopped


def _ipv6_text(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))
