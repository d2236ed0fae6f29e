"""What vmip takes from Python 3.11+ standard library, also on 3.10.

vmip supports Python 3.10 to 3.13 (Ubuntu 22.04 ships 3.10).  Each name
here is the standard library's own on 3.11 and later; on 3.10 it is the
closest equivalent:

- ``tomllib``: the ``tomli`` package (a conditional dependency in
  pyproject.toml), the parser tomllib was taken from.
- ``StrEnum``: a ``str`` mix-in Enum whose ``str()`` and ``format()`` give
  the value, as :class:`enum.StrEnum` does.
- ``TIMEOUT_ERRORS``: what a timed-out ``asyncio.wait_for`` raises.  On 3.10
  that is ``asyncio.TimeoutError``, a class of its own; from 3.11 it is the
  builtin ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import enum
import sys

__all__ = ["TIMEOUT_ERRORS", "StrEnum", "tomllib"]

if sys.version_info >= (3, 11):
    from enum import StrEnum

    import tomllib
else:  # pragma: no cover - exercised by the 3.10 CI run
    import tomli as tomllib

    class StrEnum(str, enum.Enum):
        """:class:`enum.StrEnum` of Python 3.11: members are strings, ``str()`` is the value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str.__format__(str(self.value), spec)

TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)
