"""Exception roots shared by every layer.

Each layer raises its own subclass so callers can catch exactly what a
parser or a validator may throw and nothing else (the hypothesis tests rely
on that: malformed input gives one typed error, never a crash).
"""


class VmipError(Exception):
    """Base of every error vmip raises on purpose."""


class UsageError(VmipError):
    """A command was called with arguments that cannot work; exit status 2."""

    exit_status = 2
