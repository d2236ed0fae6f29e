"""The collector in a long-running node (vmip/node/gcstats.py, launch.py)."""

from __future__ import annotations

import gc

import pytest

from vmip.node import gcstats, launch


def test_pauses_are_counted_per_generation_with_the_longest_kept() -> None:
    ticks = iter([1.0, 1.002, 5.0, 5.0005, 9.0, 9.010, 10.0, 10.001, 11.0, 11.5])
    pauses = gcstats.GcPauses(clock=lambda: next(ticks))
    for generation in (0, 0, 2, 2):
        pauses("start", {"generation": generation})
        pauses("stop", {"generation": generation})
    assert pauses.collections == [2, 0, 2]
    assert pauses.longest_ms == pytest.approx([2.0, 0.0, 10.0])
    assert pauses.total_ms == pytest.approx(13.5)
    pauses("stop", {"generation": 1})          # a stop without its start: ignored
    pauses("start", {"generation": 7})
    pauses("stop", {"generation": 7})          # no such generation: ignored
    assert pauses.collections == [2, 0, 2]


@pytest.fixture
def restore_gc():
    yield
    gcstats.PAUSES.remove()
    gc.unfreeze()


def test_run_freezes_start_up_objects_and_times_real_collections(restore_gc, monkeypatch):
    monkeypatch.delenv(launch.GC_FREEZE_ENV, raising=False)
    launch._settle_the_heap()
    status = gcstats.status()
    assert status["frozen_objects"] > 1000 and status["timed"] is True
    before = status["collections"][2]
    gc.collect()
    status = gcstats.status()
    assert status["collections"][2] == before + 1 and status["longest_pause_ms"][2] > 0


def test_the_freeze_can_be_left_out_to_measure_it(restore_gc, monkeypatch):
    monkeypatch.setenv(launch.GC_FREEZE_ENV, "0")
    launch._settle_the_heap()
    assert gc.get_freeze_count() == 0 and gcstats.status()["timed"] is True
