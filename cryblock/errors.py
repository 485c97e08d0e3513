"""User-facing errors.

Every mistake a user can make (a bad file, a bad parameter, a missing teacher) raises
:class:`CryblockError` with a one-line message that names the file or parameter and the
problem. The CLI prints that line and exits with status 2; it never shows a traceback for them.
"""
from __future__ import annotations

import os
import stat


class CryblockError(Exception):
    """A user-correctable problem: bad input file, bad parameter, missing resource."""


class AudioError(CryblockError):
    """An audio file cannot be read or holds unusable samples (names the file)."""


class ParameterError(CryblockError, ValueError):
    """A parameter is out of range or inconsistent (names the parameter)."""


class DataError(CryblockError):
    """A dataset (manifest, Edge Impulse .npy split) is malformed (names the file)."""


def one_line(exc: BaseException) -> str:
    """An exception message squeezed onto one line (e.g. esptool's FatalErrors span several);
    esptool's ``Hint:`` / ``For troubleshooting`` lines are dropped."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Hint:", "For troubleshooting"))]
    return " ".join(lines) or type(exc).__name__


def short_path(p: str | os.PathLike, n: int = 120) -> str:
    """A path for a message, shortened in the middle when longer than ``n`` characters."""
    s = str(p)
    return s if len(s) <= n else s[: n // 2] + "…" + s[-n // 2:]


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, for a message ("a folder", "a FIFO", …)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISFIFO, "a FIFO")):
        if test(mode):
            return name
    return "not a regular file"
