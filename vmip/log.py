"""Structured logging for vmip.

Every record carries an event name and key/value fields
(``log.info("binding accepted", hoa=..., coa=...)``).  Two renderings:
``text`` for people (``2026-11-26T14:50:00Z INFO mobility binding accepted hoa=... coa=...``)
and ``json`` (one object per line) for machines.

Secrets never reach a log: any field whose name names key material (a word
of it, between underscores or dashes, is ``key``, ``secret``, ``psk``,
``password``, ... or ends in ``key``: ``enc_key_in``, ``nonce_key``,
``privkey``) is replaced by ``<redacted>``, and values of type
:class:`Secret` print as ``<redacted>`` wherever they end up.  Words that
only contain those letters (``rekey``, ``rekey_of``, ``keys_mode``'s
``keys``) are not secrets and stay.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")

#: Parts of a word that mark key material wherever they appear in it
#: ("keys", "esp_keys", "keying", "sharedsecret", "pskhex", "passwords").
_SECRET_PARTS = ("key", "secret", "psk", "passw", "passphrase", "keymat", "token",
                 "credential")
#: Words that contain a secret part but name no key material.
_NOT_KEYS = frozenset(("rekey", "rekeys", "rekeyed", "rekeying"))
#: Whole field names that contain a secret part but carry no key material.
_NOT_SECRET_NAMES = frozenset(("keys_mode",))


class Secret(bytes):
    """Key material: behaves as bytes, never prints its value."""

    def __repr__(self) -> str:  # pragma: no cover - trivial
        return "<redacted>"

    __str__ = __repr__


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    if lowered.endswith(("_file", "_path", "_len", "_length", "_bits", "_id")):
        return False
    if lowered in _NOT_SECRET_NAMES:
        return False
    for word in re.split(r"[_\-.\s]+", lowered):
        if word in _NOT_KEYS:
            continue
        if any(part in word for part in _SECRET_PARTS):
            return True
        if word == "sk" or (word.startswith("sk") and word[2:] in ("d", "ai", "ar", "ei", "er",
                                                                   "pi", "pr")):
            return True   # SK_d, SK_ai, ... (RFC 7296 §2.14) written as one word
    return False


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """Return *fields* with every secret-looking value replaced."""
    clean = {}
    for name, value in fields.items():
        if isinstance(value, Secret) or _is_secret_name(name):
            clean[name] = "<redacted>"
        else:
            clean[name] = value
    return clean


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in " \t\"="):
        return json.dumps(text)
    return text


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        fields = getattr(record, "vmip_fields", {})
        parts = [stamp, record.levelname, record.name.removeprefix("vmip."), record.getMessage()]
        parts += [f"{k}={_format_value(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for k, v in getattr(record, "vmip_fields", {}).items():
            obj[k] = v if isinstance(v, (int, float, bool, type(None))) else str(v)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj)


class Logger:
    """A thin wrapper that turns keyword arguments into redacted fields."""

    def __init__(self, name: str):
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info,
                             extra={"vmip_fields": redact(fields)})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, True, fields)

    def is_enabled(self, level: str) -> bool:
        return self._logger.isEnabledFor(getattr(logging, level.upper()))


class LineBudget:
    """At most *per_second* info lines a second (a burst of as many), by the
    caller's clock: a home agent registering thousands of MNs logs a sample
    and says how many lines it left out, instead of one line per BU.
    """

    __slots__ = ("_last", "_per_second", "_tokens", "suppressed")

    def __init__(self, per_second: float = 10.0) -> None:
        self._per_second = per_second
        self._tokens = per_second
        self._last: float | None = None
        #: Lines left out since the last one logged.
        self.suppressed = 0

    def take(self, now: float) -> int | None:
        """``None``: leave this line out; else log it, with the count left out before it."""
        if self._last is not None:
            self._tokens = min(self._per_second,
                               self._tokens + (now - self._last) * self._per_second)
        self._last = now
        if self._tokens < 1:
            self.suppressed += 1
            return None
        self._tokens -= 1
        left_out, self.suppressed = self.suppressed, 0
        return left_out


def get_logger(name: str) -> Logger:
    """``get_logger(__name__)`` in every module."""
    return Logger(name)


def setup(level: str = "info", fmt: str = "text", stream=None, file: str | None = None) -> None:
    """Configure the ``vmip`` logger tree once, at program start."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    handler: logging.Handler
    if file:
        handler = logging.FileHandler(file)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger("vmip")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False
