"""Counting the work a call does, for scaling tests that must not time anything."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def line_events(call: Callable[[], Any]) -> int:
    """How many Python lines *call* executes (every frame it enters)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count
