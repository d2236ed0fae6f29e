"""Numbers as people read them: durations, ages, event fields.

Shared by the command line's tables (:mod:`vmip.cli.render`), the live
dashboard and the reports; it imports nothing of vmip's, so any layer may
use it.
"""

from __future__ import annotations

import math
from typing import Any, Final

#: What a table shows for a missing or null value.
MISSING: Final = "-"


def format_duration(seconds: float) -> str:
    """Durations the way people read them: ``250 µs``, ``35 ms``, ``4.2 s``, ``5m 03s``, ``2h 05m``, ``3d 04h``."""
    value = float(seconds)
    if math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "forever" if value > 0 else "-forever"
    if value < 0:
        return "-" + format_duration(-value)
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.0f} ms"
    if value < 10:
        return f"{value:.1f} s"
    whole = int(value)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def format_ago(seconds: float) -> str:
    """How long ago something happened: ``350 ms ago``, ``2.3 s ago``, ``5m 03s ago``."""
    return f"{format_duration(seconds)} ago"


def event_value(key: str, value: Any) -> str:
    """A field of an event as people read it: ``rtt=12.3ms``, not 18 digits of seconds."""
    if isinstance(value, float):
        if key == "rtt" or key.endswith(("_s", "time", "elapsed")):
            if value < 1:
                return f"{value * 1000:.1f}ms"
            return f"{value:.2f}s"
        return f"{value:.4g}"
    return str(value)
