"""Anti-replay window and ESN inference (RFC 4303 §3.4.3 and appendix A).

The oracle is the RFC's definition written the slow obvious way: a set of
received numbers and the highest one; the bitmap must decide the same.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.ipsec.replay import DUPLICATE, MAX_WINDOW, REPLAY_OLD, ReplayWindow


class SetModel:
    """RFC 4303 §3.4.3 with a set: accept new numbers right of, or inside, the window."""

    def __init__(self, size: int) -> None:
        self.size, self.received, self.top = size, set(), 0

    def check(self, seq: int) -> str | None:
        if seq <= 0:
            return REPLAY_OLD
        if seq > self.top or self.size == 0:
            return None
        if self.top - seq >= self.size:
            return REPLAY_OLD
        return DUPLICATE if seq in self.received else None

    def accept(self, seq: int) -> None:
        self.received.add(seq)
        self.top = max(self.top, seq)


@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([0, 1, 2, 32, 64, 1024]),
       arrivals=st.lists(st.integers(min_value=0, max_value=3000), max_size=300))
def test_bitmap_window_decides_like_the_rfc_definition(size: int, arrivals: list[int]) -> None:
    window, model = ReplayWindow(size), SetModel(size)
    for seq in arrivals:
        verdict = window.check(seq)
        assert verdict == model.check(seq)
        if verdict is None:
            window.accept(seq)
            model.accept(seq)
        assert window.top == model.top


@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([32, 64, 1024, 1 << 20]),
       top=st.integers(min_value=0, max_value=(1 << 64) - 1),
       offset=st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_esn_inference_recovers_every_number_the_appendix_covers(size: int, top: int,
                                                                 offset: int) -> None:
    # Appendix A2: from the low 32 bits the receiver recovers any number in
    # [top - W + 1, top - W + 2^32], i.e. inside the window or up to 2^32 - W
    # ahead of it.
    seq = top - size + 1 + offset
    window = ReplayWindow(size, esn=True)
    window.top = top
    inferred = window.infer(seq & 0xFFFFFFFF)
    if 0 <= seq <= (1 << 64) - 1:
        assert inferred == seq
    else:
        assert inferred == -1  # before the first number or past 2^64-1: impossible


def test_esn_inference_case_b_at_the_start_of_a_subspace() -> None:
    window = ReplayWindow(64, esn=True)
    window.accept((5 << 32) + 10)  # top low half 10 < W - 1: case B
    assert window.infer(0xFFFFFFF0) == (4 << 32) + 0xFFFFFFF0  # just behind, previous subspace
    assert window.infer(3) == (5 << 32) + 3
    assert window.infer(100) == (5 << 32) + 100


def test_esn_inference_before_the_first_packet() -> None:
    window = ReplayWindow(1024, esn=True)
    assert window.infer(1) == 1
    assert window.infer(0xFFFFFFFF) == -1  # "before seq 0": nothing was ever sent there
    assert window.check(-1) == REPLAY_OLD


def test_without_esn_the_number_is_taken_as_is() -> None:
    window = ReplayWindow(64)
    window.accept(0xFFFFFFF0)
    assert window.infer(5) == 5
    assert window.check(5) == REPLAY_OLD


def test_sequence_number_zero_is_never_accepted() -> None:
    assert ReplayWindow(64).check(0) == REPLAY_OLD
    assert ReplayWindow(0).check(0) == REPLAY_OLD


def test_slide_by_more_than_the_window_clears_it() -> None:
    window = ReplayWindow(8)
    for seq in (1, 2, 3):
        window.accept(seq)
    window.accept(100)
    assert window.bitmap == 1 and window.seen(100) and not window.seen(3)
    assert window.check(93) is None  # 7 behind, inside, never seen
    assert window.check(92) == REPLAY_OLD


def test_disabled_window_accepts_duplicates_and_still_tracks_top() -> None:
    window = ReplayWindow(0)
    window.accept(5)
    assert window.check(5) is None and window.check(1) is None
    assert window.top == 5 and not window.seen(5)


def test_window_size_is_bounded() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(MAX_WINDOW + 1)
    with pytest.raises(ValueError):
        ReplayWindow(-1)
