"""Medians, ranges, ratios and the order of repetitions: pure functions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Summary:
    median: float
    minimum: float
    maximum: float
    count: int


def summarize(samples: Sequence[float]) -> Summary | None:
    """Median and min–max of the repetitions; None when there are none."""
    if not samples:
        return None
    return Summary(median=statistics.median(samples), minimum=min(samples),
                   maximum=max(samples), count=len(samples))


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def paired_ratios(values: Sequence[float], references: Sequence[float]) -> Summary | None:
    """Median and min–max of value / reference taken round by round (the i-th
    sample of each): what two systems measured in the same round shares that
    round's load.  None unless both have the same, non-zero number of
    samples (a failed repetition would shift the pairs)."""
    if not values or len(values) != len(references) or any(r == 0 for r in references):
        return None
    return summarize([value / reference for value, reference in zip(values, references)])


def difference(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None:
        return None
    return value - reference


def round_order(systems: Sequence[T], round_index: int) -> list[T]:
    """The systems of one round, rotated by the round number.

    Each system leads one round in turn, so slow drift of the machine (other
    jobs, thermal state) and any after-effect of the previous test hit every
    system alike instead of always the same one.
    """
    if not systems:
        return []
    shift = round_index % len(systems)
    return list(systems[shift:]) + list(systems[:shift])
