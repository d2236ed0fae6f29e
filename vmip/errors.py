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


class LocatedError(VmipError):
    """An error about one entry of a file, explained in one line; exit status 2.

    ``file`` is the file at fault as the user named it, ``key`` the dotted
    path inside it (``link[1].coa``, ``keys.sa[NAME]``; ``None`` when the
    whole file is at fault), ``problem`` what is wrong and ``hint`` what to
    write instead.  The text never contains key material: callers pass
    descriptions, not values, for anything read from a key file.
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
