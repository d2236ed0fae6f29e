"""Several bindings per HoA around the cores: the path table, locators, the watcher.

Running nodes are in tests/sim/test_sim_mcoa.py; these pin the sans-IO parts.
"""

from __future__ import annotations

from ipaddress import IPv6Address
from types import SimpleNamespace

from vmip.links.locators import BINDING, LocatorTable
from vmip.mobility.ancillary import UNSPECIFIED, Ancillary
from vmip.mobility.events import RegistrationTimeout
from vmip.node.events import TimedEvent
from vmip.node.movement import MovementWatcher
from vmip.node.paths import (
    HEDGE_AFTER_MIN,
    HEDGE_PROBE_TRUST,
    HEDGE_SPAN,
    BoundPath,
    PathTable,
)

HOA = IPv6Address("2001:db8:100::10")
OTHER_HOA = IPv6Address("2001:db8:100::20")
CN = IPv6Address("2001:db8:20::2")
HA = IPv6Address("2001:db8:100::1")
WIFI, LTE, SAT = (IPv6Address(f"2001:db8:3{i}::2") for i in (1, 2, 3))


def remotes(table: PathTable, peer: IPv6Address) -> list[IPv6Address | None]:
    return [path.remote for path in table.paths_to(peer.packed)]


def test_a_path_hands_its_addresses_to_the_remap_engine() -> None:
    mn_side = BoundPath(2, "lte0", LTE, None)
    assert mn_side.ancillary() == Ancillary(LTE.packed, UNSPECIFIED)
    assert BoundPath(1, None, None, WIFI).ancillary() == Ancillary(UNSPECIFIED, WIFI.packed)


def test_the_mn_side_lists_its_links_primary_first() -> None:
    table = PathTable({1: "wifi0", 2: "lte0"}.get)
    assert table.paths_to(CN.packed) == []
    table.mn_paths(CN, ((2, LTE), (1, WIFI)))
    assert table.paths_to(CN.packed) == [BoundPath(2, "lte0", LTE, None),
                                         BoundPath(1, "wifi0", WIFI, None)]
    table.mn_paths(CN, ())
    assert table.paths_to(CN.packed) == []


def test_the_cn_side_mirrors_the_mn_then_its_primary_then_the_bids() -> None:
    table = PathTable()
    pairs = ((1, WIFI), (2, LTE), (3, SAT))
    table.peer_paths(HOA, pairs, pairs)
    assert remotes(table, HOA) == [WIFI, LTE, SAT]          # lowest BID first
    table.primary(HOA, LTE)
    assert remotes(table, HOA) == [LTE, WIFI, SAT]          # the MN's primary
    table.arrived(HOA.packed, SAT.packed, 1.0)
    assert remotes(table, HOA) == [SAT, LTE, WIFI]          # where its data came from
    assert table.mirror(HOA) == SAT and table.counters["mirror_moved"] == 1
    table.arrived(HOA.packed, SAT.packed, 1.0)
    assert table.counters["mirror_moved"] == 1
    # Only a bound CoA of that HoA is mirrored; other HoAs' data changes nothing.
    table.arrived(HOA.packed, IPv6Address("2001:db8:666::1").packed, 1.0)
    table.arrived(OTHER_HOA.packed, WIFI.packed, 1.0)
    assert table.mirror(HOA) == SAT and table.counters["mirror_moved"] == 1
    # A CoA accepted but not proven yet (draft §4.5.1) is no path to send on.
    removed = table.peer_paths(HOA, pairs, ((1, WIFI), (2, LTE)))
    assert removed == () and remotes(table, HOA) == [LTE, WIFI]
    # The mirrored binding goes: so does the mirror.
    removed = table.peer_paths(HOA, ((1, WIFI), (2, LTE)), ((1, WIFI), (2, LTE)))
    assert removed == (SAT,) and table.mirror(HOA) is None
    assert table.peer_paths(HOA, (), ()) == (WIFI, LTE)
    assert table.paths_to(HOA.packed) == []


def _steady(table: PathTable, peer: bytes, source: bytes, link: str | None,
            start: float, gap: float, count: int) -> float:
    """*count* arrivals *gap* apart from *start*; returns the last one's time."""
    now = start
    for i in range(count):
        now = start + i * gap
        table.arrived(peer, source, now, link)
    return now


def test_a_cn_hedges_once_the_mns_path_falls_silent_for_its_rhythm() -> None:
    table = PathTable()
    pairs = ((1, WIFI), (2, LTE))
    table.peer_paths(HOA, pairs, pairs)
    paths = table.paths_to(HOA.packed)
    # The MN's data every 4 ms on wifi: the CN's best path mirrors it.
    last = _steady(table, HOA.packed, WIFI.packed, None, 1.0, 0.004, 50)
    chosen, other = table.paths_to(HOA.packed)
    assert chosen.remote == WIFI and other.remote == LTE
    # On time: nothing extra.  One and a half gaps late: not yet; silent
    # for longer than 1.5 x its longest recent gap: hedge on the other path.
    assert table.spare(HOA.packed, chosen, paths, last + 0.004) is None
    assert table.spare(HOA.packed, chosen, paths, last + 0.0059) is None
    assert table.spare(HOA.packed, chosen, paths, last + 0.0065) == other
    # The MN stopped talking altogether: the hedge ends HEDGE_SPAN after its last packet.
    assert table.spare(HOA.packed, chosen, paths, last + HEDGE_SPAN) == other
    assert table.spare(HOA.packed, chosen, paths, last + HEDGE_SPAN + 0.001) is None
    # Its data arrives on lte: the mirror moves there and that path is fresh.
    table.arrived(HOA.packed, LTE.packed, last + 0.03)
    chosen = table.paths_to(HOA.packed)[0]
    assert chosen.remote == LTE
    assert table.spare(HOA.packed, chosen, table.paths_to(HOA.packed), last + 0.031) is None


def test_a_slow_rhythm_or_one_arrival_never_hedges_and_a_pause_is_forgotten() -> None:
    table = PathTable()
    pairs = ((1, WIFI), (2, LTE))
    table.peer_paths(HOA, pairs, pairs)
    chosen = table.paths_to(HOA.packed)[0]
    paths = table.paths_to(HOA.packed)
    table.arrived(HOA.packed, WIFI.packed, 1.0)
    assert table.spare(HOA.packed, chosen, paths, 1.2) is None     # no rhythm yet
    # One arrival every 400 ms: silent 1.5 x 400 ms is past HEDGE_SPAN, never.
    last = _steady(table, HOA.packed, WIFI.packed, None, 1.4, 0.4, 5)
    assert all(table.spare(HOA.packed, chosen, paths, last + dt) is None
               for dt in (0.1, 0.45, 0.61, 0.9))
    # Back to a packet every 2 ms: the long gaps fade within some 60 arrivals.
    last = _steady(table, HOA.packed, WIFI.packed, None, last + 0.4, 0.002, 120)
    assert table.spare(HOA.packed, chosen, paths, last + HEDGE_AFTER_MIN / 2) is None
    assert table.spare(HOA.packed, chosen, paths, last + HEDGE_AFTER_MIN * 1.1) is not None


def test_an_mn_hedges_while_its_link_is_silent_and_the_peer_talks_on_another() -> None:
    table = PathTable({1: "wifi0", 2: "lte0"}.get)
    table.mn_paths(CN, ((1, WIFI), (2, LTE)))
    wifi, lte = table.paths_to(CN.packed)
    last = _steady(table, CN.packed, CN.packed, "wifi0", 1.0, 0.01, 20)
    assert table.spare(CN.packed, wifi, [wifi, lte], last + 0.01) is None
    assert table.spare(CN.packed, wifi, [wifi, lte], last + 0.016) == lte
    # The CN answers on lte while wifi stays silent (it stopped carrying and
    # nobody said so): the hedge goes on past HEDGE_SPAN.
    talk = _steady(table, CN.packed, CN.packed, "lte0", last + 0.05, 0.01, 100)
    assert talk - last > HEDGE_SPAN
    assert table.spare(CN.packed, wifi, [wifi, lte], talk + 0.001) == lte
    # A path that goes away takes its history along; the table stays bounded.
    table.mn_paths(CN, ((2, LTE),))
    assert set(table._heard[CN.packed]) == {"lte0"}
    table.mn_paths(CN, ())
    assert CN.packed not in table._heard and not table.active


def test_an_mn_asks_for_a_probe_of_a_silent_link_and_trusts_an_answer_for_a_while() -> None:
    """The peer may only have followed our hedge copies over a link that is
    faster one way: a request answered over the silent link since its
    silence began stops the hedge for HEDGE_PROBE_TRUST, time for the peer
    to come back; still silent after that, the hedge resumes and asks again."""
    table = PathTable({1: "wifi0", 2: "lte0"}.get)
    table.mn_paths(CN, ((1, WIFI), (2, LTE)))
    wifi, lte = table.paths_to(CN.packed)
    answered: dict[str, float] = {}
    asked: list[tuple[str, float]] = []
    table.last_answer = answered.get
    table.check_link = lambda link, since: asked.append((link, since))
    last = _steady(table, CN.packed, CN.packed, "wifi0", 1.0, 0.01, 20)
    talk = _steady(table, CN.packed, CN.packed, "lte0", last + 0.01, 0.01, 10)
    answered["wifi0"] = last - 0.5          # an answer from before the silence
    assert table.spare(CN.packed, wifi, [wifi, lte], talk) == lte
    assert asked == [("wifi0", last)]
    answer = answered["wifi0"] = talk + 0.02          # the probe over wifi0 came back
    assert table.spare(CN.packed, wifi, [wifi, lte], answer + 0.001) is None
    assert table.spare(CN.packed, wifi, [wifi, lte], answer + HEDGE_PROBE_TRUST) is None
    assert len(asked) == 1
    # Still nothing on wifi0 (the peer's way there alone is broken): hedge again.
    assert table.spare(CN.packed, wifi, [wifi, lte], answer + HEDGE_PROBE_TRUST + 0.01) == lte
    assert asked[1:] == [("wifi0", answer)]
    # Heard on wifi0 again: the usual rhythm rule, no probe.
    back = _steady(table, CN.packed, CN.packed, "wifi0", answer + 0.3, 0.01, 5)
    assert table.spare(CN.packed, wifi, [wifi, lte], back + 0.001) is None
    assert len(asked) == 2


def test_data_from_an_unbound_address_or_an_unknown_peer_is_not_timed() -> None:
    table = PathTable()
    table.peer_paths(HOA, ((1, WIFI), (2, LTE)), ((1, WIFI), (2, LTE)))
    for i in range(20):
        table.arrived(HOA.packed, IPv6Address("2001:db8:666::1").packed, 1.0 + i * 0.001)
        table.arrived(OTHER_HOA.packed, WIFI.packed, 1.0 + i * 0.001)
    assert table._heard == {}


def test_the_ha_side_names_holders_and_sends_nothing_direct() -> None:
    table = PathTable()
    table.peer_paths(HOA, ((1, WIFI), (2, LTE)), ((1, WIFI), (2, LTE)), home_agent=True)
    assert table.holder_of(WIFI.packed) == HOA and table.holder_of(LTE.packed) == HOA
    assert table.bound(HOA, LTE.packed, home_only=True)
    assert table.paths_to(HOA.packed) == []     # the tunnel goes to the primary CoA
    assert table.peer_paths(HOA, ((2, LTE),), ((2, LTE),), home_agent=True) == (WIFI,)
    assert table.holder_of(WIFI.packed) is None
    assert not table.bound(HOA, WIFI.packed)


def test_mn_to_mn_combines_our_links_with_the_other_mns_best_coa() -> None:
    table = PathTable({1: "wifi0", 2: "lte0"}.get)
    table.mn_paths(OTHER_HOA, ((1, WIFI), (2, LTE)))
    far = IPv6Address("2001:db8:41::2")
    table.peer_paths(OTHER_HOA, ((1, far),), ((1, far),))
    assert table.paths_to(OTHER_HOA.packed) == [BoundPath(1, "wifi0", WIFI, far),
                                                BoundPath(2, "lte0", LTE, far)]


def test_a_hoa_with_several_bindings_owns_all_their_locators() -> None:
    table = LocatorTable()
    table.set_bound(HOA, [WIFI, LTE])
    assert table.confirm(WIFI, ("192.0.2.34", 6275), 1.0, "eth0", vouched_by=BINDING,
                         home_address=HOA)
    assert table.confirm(LTE, ("203.0.113.1", 40000), 2.0, "eth0", vouched_by=BINDING,
                         home_address=HOA)
    # Confirming lte left wifi's entry its own: another MN's binding cannot take it.
    assert table.counters["left_behind"] == 0
    assert table.taken(WIFI, OTHER_HOA) and table.taken(LTE, OTHER_HOA)
    assert not table.confirm(WIFI, ("198.51.100.9", 6275), 3.0, "eth0", vouched_by=BINDING,
                             home_address=OTHER_HOA)
    assert table.lookup(WIFI).endpoint == ("192.0.2.34", 6275)
    # Wifi's binding goes: its entry goes too; lte's stays.
    assert table.set_bound(HOA, [LTE]) == 1
    assert table.lookup(WIFI) is None and table.lookup(LTE) is not None
    # An entry another HoA owns is never forgotten on this HoA's account.
    table.confirm(SAT, ("198.51.100.7", 6275), 4.0, "eth0", vouched_by=BINDING,
                  home_address=OTHER_HOA)
    assert table.set_bound(HOA, []) == 1          # lte, not sat
    assert table.lookup(SAT) is not None


class _Services:
    """What the movement watcher uses of the node, with multiple_care_of."""

    def __init__(self) -> None:
        links = [SimpleNamespace(name="wifi0", interface="wifi0", priority=10, bind=None),
                 SimpleNamespace(name="lte0", interface="lte0", priority=20, bind=None)]
        self.config = SimpleNamespace(links=links,
                                      mobility=SimpleNamespace(multiple_care_of=True,
                                                               home_agent=HA))
        self.active_link: str | None = "wifi0"
        self.now = 0.0
        self.calls: list[tuple[list[str], str | None]] = []
        self.moves: list[str] = []
        self.early: list[str] = []
        self.events = SimpleNamespace(subscribe=lambda f: None, unsubscribe=lambda f: None)
        self.pump = SimpleNamespace(add=lambda *a: None, remove=lambda *a: None,
                                    arm=lambda: None)

    def clock(self) -> float:
        return self.now

    def wall_clock(self) -> float:
        return self.now

    def link_names(self) -> list[str]:
        return ["wifi0", "lte0"]

    def link_coa(self, link: str | None) -> IPv6Address | None:
        return {"wifi0": WIFI, "lte0": LTE}.get(link or "")

    def set_care_of_links(self, links: list[str], primary: str | None) -> dict:
        self.calls.append((list(links), primary))
        self.active_link = primary
        return {}

    def move(self, link: str) -> dict:
        self.moves.append(link)
        return {}

    def early_test(self, link: str, peer=None) -> int:
        self.early.append(link)
        return 1


def test_the_watcher_binds_every_usable_link_and_keeps_the_hold_down_for_the_primary() -> None:
    services = _Services()
    watcher = MovementWatcher(services, dump=lambda: ([], []))
    watcher._loop = SimpleNamespace(call_soon=lambda f, *a: f(*a))   # type: ignore[assignment]
    watcher._apply({"wifi0": True, "lte0": True})
    assert services.calls == [(["wifi0", "lte0"], "wifi0")]
    watcher._apply({"wifi0": True, "lte0": True})
    assert len(services.calls) == 1                  # nothing changed, nothing sent
    services.now = 1.0
    watcher._apply({"wifi0": False, "lte0": True})   # wifi dies: removed at once
    assert services.calls[-1] == (["lte0"], "lte0")
    services.now = 2.0
    watcher._apply({"wifi0": True, "lte0": True})    # back: bound at once, not primary
    assert services.calls[-1] == (["wifi0", "lte0"], "lte0")
    services.now = 2.0 + watcher.policy.hold_down
    watcher.handle_timer(services.now)
    assert services.calls[-1] == (["wifi0", "lte0"], "wifi0")
    # No early tests and no single-CoA moves with a binding per link.
    assert services.early == [] and services.moves == []


def test_a_link_whose_home_registration_went_unanswered_leaves_the_set_for_a_while() -> None:
    services = _Services()
    watcher = MovementWatcher(services, dump=lambda: ([], []))
    watcher._loop = SimpleNamespace(call_soon=lambda f, *a: f(*a))   # type: ignore[assignment]
    watcher._apply({"wifi0": True, "lte0": True})
    timeout = RegistrationTimeout(peer=HA, hoa=HOA, coa=LTE, stage="bu", bid=2)
    watcher._on_mobility_event(TimedEvent(0.0, timeout))
    assert services.calls[-1] == (["wifi0"], "wifi0")     # the secondary went, primary stays
    services.now = watcher.policy.unreachable_penalty
    watcher._apply({"wifi0": True, "lte0": True})
    assert services.calls[-1] == (["wifi0", "lte0"], "wifi0")


def test_a_flapping_link_is_bound_again_only_after_the_rebind_window() -> None:
    services = _Services()
    watcher = MovementWatcher(services, dump=lambda: ([], []))
    watcher._loop = SimpleNamespace(call_soon=lambda f, *a: f(*a))   # type: ignore[assignment]
    watcher._apply({"wifi0": True, "lte0": True})                   # t=0: both bound
    services.now = 0.1
    watcher._apply({"wifi0": True, "lte0": False})                  # lte goes: at once
    assert services.calls[-1] == (["wifi0"], "wifi0")
    services.now = 0.2
    watcher._apply({"wifi0": True, "lte0": True})                   # back too soon: held
    assert services.calls[-1] == (["wifi0"], "wifi0")
    assert watcher.get_timer() == 1.0 and watcher.rebinds_held == 1
    services.now = 1.0
    watcher.handle_timer(1.0)
    assert services.calls[-1] == (["wifi0", "lte0"], "wifi0")
    assert watcher.get_timer() is None
