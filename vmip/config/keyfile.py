"""Key files: one secret per file, never inside the main config.

Format (docs/configuration.md, "Key files"): the key as hexadecimal digits,
optionally ``0x``-prefixed, with any whitespace or colons ignored
(``0011:2233 4455``), or as base64 after a ``base64:`` prefix.  The whole
file is one key; AEAD keys include their 4-byte salt (RFC 4106 §8.1,
RFC 7634 §2).

A key file readable or writable by group or others is refused, as ssh does
with private keys: a key others can read is no longer a secret, and one
others can write lets them choose our keys.  For the same reason the file
must belong to root or to the user the node runs as (see
:func:`trust_key_file_owner`): a file another user owns is theirs to rewrite.
It is opened without following a symbolic link and without blocking (a FIFO
would otherwise hang the loader until someone writes to it).

Errors never quote the file's content, only its path and what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import pwd
import re
import stat
from pathlib import Path

from vmip.config.errors import ConfigError

#: Far above any ESP key (64 bytes) or sane PSK; a bigger file is a mistake.
MAX_KEY_FILE_SIZE = 4096

BASE64_PREFIX = "base64:"
_IGNORED_IN_HEX = re.compile(r"[\s:]+")


#: Owners accepted besides root and the effective uid: the node's user
#: (``node.user``), registered before the config is loaded as root, so the
#: key files the node can still read after it switched user pass at start too.
_trusted_owners: set[int] = set()


def trust_key_file_owner(uid: int) -> None:
    """Accept key files owned by *uid* (the node's ``node.user``) as well as root's."""
    _trusted_owners.add(uid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _chmod_hint(path: str) -> str:
    return f"run chmod 600 {path}"


def _unreadable_hint(path: str) -> str:
    euid = os.geteuid()
    if euid != 0:
        # After the node switched to node.user: only that user's files stay readable.
        name = _user_name(euid)
        return (f"the node runs as user {name}: run chown {name} {path} "
                f"(keeping mode 600), or run vmip as the file's owner")
    return ("the node holds no CAP_DAC_OVERRIDE after start-up: run chown root "
            f"{path} (mode 600), or run vmip as the file's owner")


def parse_key_text(text: str, file: str) -> bytes:
    """Decode the text of a key file; ``file`` only names it in errors."""
    stripped = text.strip()
    if not stripped:
        raise ConfigError(file, None, "key file is empty",
                          "write the key as hex digits (or base64:...) on one line")
    if stripped.startswith(BASE64_PREFIX):
        encoded = re.sub(r"\s+", "", stripped[len(BASE64_PREFIX):])
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(file, None, "key file is not valid base64 after 'base64:'",
                              "write standard base64 (A-Z a-z 0-9 + / =) or plain hex digits"
                              ) from None
    else:
        digits = _IGNORED_IN_HEX.sub("", stripped)
        if digits[:2] in ("0x", "0X"):
            digits = digits[2:]
        if len(digits) % 2:
            raise ConfigError(file, None, "key file holds an odd number of hex digits",
                              "write two hex digits per byte")
        try:
            if not digits.isascii():
                raise ValueError
            key = bytes.fromhex(digits)
        except ValueError:
            raise ConfigError(file, None, "key file is neither hex nor base64",
                              "write the key as hex digits (0-9 a-f), or base64 after 'base64:'"
                              ) from None
    if not key:
        raise ConfigError(file, None, "key file holds no key bytes",
                          "write the key as hex digits (or base64:...) on one line")
    return key


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read one key, refusing files that others could read or write.

    Raises :class:`ConfigError` (``file`` = the key file, ``key`` = None) for
    a missing, unreadable, empty, malformed, oversized or too-open file.
    """
    shown = os.fspath(path)
    if "\0" in shown:
        raise ConfigError(shown, None, "key file path contains a NUL byte", "fix the path")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the
        # file we check is the file named, not wherever a link points.
        fd = os.open(shown, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(shown, None, "key file does not exist",
                          "create it (hex key, mode 600) or fix the path") from None
    except PermissionError:
        raise ConfigError(shown, None, "key file cannot be read (permission denied)",
                          _unreadable_hint(shown)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(shown, None, "key file is a symbolic link",
                              f"point key_file at the file itself ({shown} resolves to "
                              f"{os.path.realpath(shown)})") from None
        raise ConfigError(shown, None, f"key file cannot be opened ({exc.strerror})",
                          "fix the path") from None
    except ValueError:
        raise ConfigError(shown, None, "key file cannot be opened (invalid path)",
                          "fix the path") from None
    try:
        # fstat on the open descriptor: the mode we check is the file we read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(shown, None, "key file is not a regular file",
                              "point to a file holding the key")
        owners = {0, os.geteuid()} | _trusted_owners
        if info.st_uid not in owners:
            allowed = " or ".join(sorted({_user_name(uid) for uid in owners}))
            raise ConfigError(shown, None,
                              f"key file is owned by {_user_name(info.st_uid)}, who could "
                              f"change the key",
                              # max(): the node's user if it has one, else root.
                              f"run chown {_user_name(max(owners))} {shown} "
                              f"(allowed owners: {allowed})")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(shown, None,
                              f"key file is readable or writable by group or others "
                              f"(mode {mode:04o})", _chmod_hint(shown))
        if info.st_size > MAX_KEY_FILE_SIZE:
            raise ConfigError(shown, None,
                              f"key file is {info.st_size} bytes, too big for a key",
                              f"keep one key per file (at most {MAX_KEY_FILE_SIZE} bytes)")
        raw = os.read(fd, MAX_KEY_FILE_SIZE + 1)
        if len(raw) > MAX_KEY_FILE_SIZE:   # grew after the fstat
            raise ConfigError(shown, None, "key file is too big for a key",
                              f"keep one key per file (at most {MAX_KEY_FILE_SIZE} bytes)")
    except OSError as exc:
        raise ConfigError(shown, None, f"key file cannot be read ({exc.strerror})",
                          "fix the file") from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(shown, None, "key file is not text",
                          "write the key as hex digits (or base64:...); binary keys are "
                          "not accepted") from None
    return parse_key_text(text, shown)


def write_key_file(path: str | os.PathLike[str], key: bytes) -> None:
    """Write *key* as hex to *path*, mode 0600, atomically.

    The key goes to a temporary file in the same directory (created 0600,
    so it is never readable by others, not even briefly), is flushed to
    disk, then renamed over *path*: readers see the old key or the new one,
    never half a file.
    """
    shown = os.fspath(path)
    if not key:
        raise ConfigError(shown, None, "refusing to write an empty key",
                          "pass the key bytes to write")
    target = Path(shown)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot create key file ({exc.strerror})",
                          "check that the directory exists and is writable") from None
    try:
        with os.fdopen(fd, "wb") as out:
            # The umask may only remove bits, but be explicit about the result.
            os.fchmod(out.fileno(), 0o600)
            out.write(key.hex().encode("ascii") + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise ConfigError(shown, None, f"cannot write key file ({exc.strerror})",
                          "check free space and permissions") from None
