"""The one error the config loader and the key-file reader raise."""

from __future__ import annotations

from vmip.errors import LocatedError


class ConfigError(LocatedError):
    """A config (or key file) that cannot work, explained in one line
    (:class:`vmip.errors.LocatedError`: file, dotted key, problem, hint)."""
