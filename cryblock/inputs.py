"""Reading input files that are not audio (manifests, params.json, metrics.json, models, the
teacher): regular files only.

A FIFO without a writer blocks ``open()`` forever and ``/dev/zero`` never ends, so a plain
``Path.read_bytes()`` of a mistaken path hangs or grows memory until a MemoryError. Here the file
is opened non-blocking and its type checked on the open descriptor (no race with a rename); a
FIFO, device, socket or folder raises :class:`OSError` whose ``strerror`` says what it is, so the
callers' usual ``except OSError`` turns it into their one-line error. (Audio files have their own
checks in :mod:`cryblock.audio`.)
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from typing import BinaryIO, Iterator

from .errors import file_kind


@contextlib.contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading if it is a regular file (symlinks followed).

    Raises:
        FileNotFoundError, PermissionError, …: as ``open()``.
        IsADirectoryError: a folder.
        OSError: (``errno.EINVAL``) a FIFO, character/block device or socket; ``strerror`` is
            e.g. "is a FIFO, not a regular file".
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"is {file_kind(mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (:func:`open_regular`'s checks and errors)."""
    with open_regular(path) as f:
        return f.read()


def read_regular_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of a regular file (:func:`open_regular`'s checks and errors; UnicodeDecodeError
    for text that is not ``encoding``)."""
    return read_regular_bytes(path).decode(encoding)


def regular_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest (``hashlib`` algorithm name) of a regular file's bytes, read in 1 MiB chunks
    (:func:`open_regular`'s checks and errors: a FIFO in a list of files never hangs)."""
    h = hashlib.new(algorithm)
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
