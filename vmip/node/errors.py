"""Errors of the node layer."""

from __future__ import annotations

from vmip.errors import VmipError


class NodeError(VmipError):
    """The node could not start or was asked something it cannot do."""
