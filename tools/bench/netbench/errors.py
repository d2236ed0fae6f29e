"""Errors of the benchmark harness, rooted in vmip's own error tree."""

from __future__ import annotations

from vmip.errors import VmipError


class BenchError(VmipError):
    """Base of every error the harness raises on purpose."""


class ParseError(BenchError):
    """Output of iperf3 or ping that the harness cannot understand."""


class SetupError(BenchError):
    """A system under test could not be brought up (its message says why)."""


class MeasureError(BenchError):
    """One measurement failed (a tool exited non-zero, timed out, or printed nothing usable)."""


class LabError(BenchError):
    """The namespaces could not be built, or exist already."""
