"""MOBIKE in the node runtime (docs/ike.md "MOBIKE").

The IKE core reports :class:`~vmip.ike.events.IkeSaAddressesUpdated` when an
IKE SA moved (RFC 4555 §3.5: the responder on UPDATE_SA_ADDRESSES, the
initiator when its update was answered).  Here the SAD follows: every
tunnel-mode CHILD_SA of that IKE SA still at the old IKE addresses MIGRATEs
to the new ones (sequence numbers and replay windows kept).  Transport SAs
carry SA-level addresses (a HoA) and stay; a tunnel SA the mobility agent
already moved with the CoA is no longer at the old addresses and stays too.
The core reports a responder's move only after the new address passed a
return routability check (:mod:`vmip.ike.mobike`).

On a home agent the tunnel CHILD_SAs of a mobile node (remote traffic
selector: one address, the HoA) never follow MOBIKE: their outer address is
the binding's care-of address, set by a Binding Update the HA accepted after
its CoA checks (:mod:`vmip.node.mobility`).
MOBIKE moves the IKE SA only; a move the binding would not accept moves no
ESP (docs/security.md).

:func:`underlay_moved` is the move of a node that is not a mobile node but
has several ``rfc3948`` links (a multihomed IPsec client of a gateway):
``vmip move LINK`` makes another link active, and the IKE SAs that ran from
the old link's ``bind`` move to the new one, announced with MOBIKE.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from vmip.config.model import Role as ConfigRole
from vmip.ike.events import IkeSaAddressesUpdated
from vmip.ike.payloads import TrafficSelector
from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.sad import SadError
from vmip.log import get_logger
from vmip.node.errors import NodeError
from vmip.node.ike_underlay import sad_address

if TYPE_CHECKING:
    from vmip.ike.ikesa import IkeSa

log = get_logger(__name__)


class IkeManager(Protocol):
    """What this module uses of :class:`vmip.node.keying.IkeManager` (which imports it)."""

    services: Any
    children: dict[int, Any]
    counters: Counter[str]

    def move_local_address(self, old: str, new: Any) -> int: ...


def addresses_updated(manager: IkeManager, sa: IkeSa, event: IkeSaAddressesUpdated,
                      now: float) -> int:
    """MIGRATE the IKE SA's tunnel CHILD_SAs from the old to the new addresses."""
    old_local, old_remote = sad_address(event.old_local[0]), sad_address(event.old_remote[0])
    new_local, new_remote = sad_address(event.local_addr[0]), sad_address(event.remote_addr[0])
    sad = manager.services.sad
    by_spi = {(info.spi, info.direction): info for info in sad.dump(publish=False)}
    moved = 0
    home_agent = manager.services.config.has_role(ConfigRole.HA)
    for record in list(manager.children.values()):
        if record.ike_sa is not sa or record.event.mode is not Mode.TUNNEL:
            continue
        if home_agent and _mn_tunnel(record.event.remote_ts):
            manager.counters["mobike_left_to_binding"] += 1
            continue
        for spi, direction in ((record.event.spi_in, Direction.IN),
                               (record.event.spi_out, Direction.OUT)):
            info = by_spi.get((spi, direction))
            if info is None or info.mode is not Mode.TUNNEL:
                continue
            if direction is Direction.IN:
                at_old = (info.src, info.dst) == (old_remote, old_local)
                target = (new_remote, new_local)
            else:
                at_old = (info.src, info.dst) == (old_local, old_remote)
                target = (new_local, new_remote)
            if not at_old or (info.src, info.dst) == target:
                continue
            try:
                sad.migrate(spi, direction, target[0], target[1], now, dst=info.dst)
            except SadError as exc:
                manager.counters["mobike_migrate_failed"] += 1
                log.warning("ike child sa not moved", child=record.event.name,
                            spi=f"{spi:#010x}", error=str(exc))
                continue
            moved += 1
            if direction is Direction.IN:
                record.sa_dst_in = target[1]
            else:
                record.sa_dst_out = target[1]
    manager.counters["mobike_sa_addresses_updated"] += 1
    log.info("ike child sas follow the ike sa", peer=event.name, local=event.local_addr[0],
             remote=event.remote_addr[0], migrated=moved)
    return moved


def _mn_tunnel(remote_ts: tuple[TrafficSelector, ...]) -> bool:
    """An MN's tunnel at its HA: the remote side is one address (the HoA)."""
    return bool(remote_ts) and all(ts.start == ts.end for ts in remote_ts)


def underlay_moved(manager: IkeManager, old_link: str | None, new_link: str) -> int:
    """The active rfc3948 link changed: move the IKE SAs from the old link's
    ``bind`` to the new one's (MOBIKE announces it).  Returns how many moved."""
    links = {link.name: link for link in manager.services.config.links}
    new = links.get(new_link)
    old = links.get(old_link) if old_link is not None else None
    for link, what in ((new, "new"), (old, "old")):
        if link is None or str(link.driver) != "rfc3948" or link.bind is None:
            raise NodeError(f"the {what} link {getattr(link, 'name', old_link)!r} is not an "
                              "rfc3948 link with 'bind': IKE SAs follow only such moves")
    assert old is not None and new is not None
    if old.bind.version != new.bind.version:
        raise NodeError(f"link {old.name} binds IPv{old.bind.version} and {new.name} "
                          f"IPv{new.bind.version}: an IKE SA keeps its peer's IP version")
    return manager.move_local_address(str(old.bind), new.bind)
