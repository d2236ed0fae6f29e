"""The one error the config loader and the key-file reader raise."""

from __future__ import annotations

from vmip.errors import VmipError


class ConfigError(VmipError):
    """A config (or key file) that cannot work, explained in one line.

    ``file`` is the file at fault as the user named it, ``key`` the dotted
    path inside it (``link[1].coa``; ``None`` when the whole file is at fault),
    ``problem`` what is wrong and ``hint`` what to write instead.  The text
    never contains key material: callers pass descriptions, not values, for
    anything read from a key file.
    """

    exit_status = 2

    def __init__(self, file: str, key: str | None, problem: str, hint: str):
        super().__init__(file, key, problem, hint)
        self.file = file
        self.key = key
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        parts = [self.file]
        if self.key:
            parts.append(self.key)
        parts.append(f"{self.problem}; {self.hint}" if self.hint else self.problem)
        # One line whatever the input held (keys and values come from the file).
        return ": ".join(parts).replace("\r", "\\r").replace("\n", "\\n")
