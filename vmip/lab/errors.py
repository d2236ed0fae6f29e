"""Errors of the network-namespace lab.

Every failure the lab reports on purpose is a :class:`LabError`, so the CLI
prints one clear line instead of a traceback (``vmip.cli.main``).
"""

from __future__ import annotations

from vmip.errors import UsageError, VmipError


class LabError(VmipError):
    """Building, inspecting or removing the lab failed; exit status 1."""

    exit_status = 1


class LabPrerequisiteError(LabError):
    """Not root, or a tool or kernel feature the lab needs is missing; exit 2.

    The message always ends with a hint: what to install or how to run.
    """

    exit_status = 2


class LabNotUpError(LabError):
    """A command needs the lab, and the lab (or part of it) is not there."""


class LabUsageError(LabError, UsageError):
    """An unknown node, interface or option value; exit status 2."""

    exit_status = 2
