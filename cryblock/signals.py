"""Every way a long command can be ended, handled like Ctrl-C: SIGINT, SIGTERM, SIGHUP.

A capture (``monitor``, ``bench``) saves what it read when the user presses Ctrl-C, which Python
delivers as :class:`KeyboardInterrupt`. SIGTERM (``timeout 8h cryblock monitor …``, ``kill``,
systemd, a container stop) and SIGHUP (a closed terminal, a dropped SSH session) would kill the
process instead and lose everything; :func:`interruptible` turns them into the same exception.
:func:`deferred` holds all three back while a group of files is replaced, so an install is never
left half done; the signal takes effect right after.

:func:`interruptible` leaves a signal alone whose handler is not the default one (``nohup`` ignores
SIGHUP; an embedding program may have its own); :func:`deferred` leaves ignored signals ignored.
Handlers can only be changed in the main thread; elsewhere both context managers do nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: The signals that end a command when nobody handles them (POSIX; SIGHUP is absent on Windows).
ENDING = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt. ``signame``: e.g. ``SIGTERM``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signame = signal.Signals(signum).name


def _ours(signum: int) -> bool:
    """True when ``signum`` still has its default handling (Python's Ctrl-C handler for SIGINT)."""
    h = signal.getsignal(signum)
    return h is signal.SIG_DFL or (signum == signal.SIGINT and h is signal.default_int_handler)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted` (a KeyboardInterrupt) in the
    main thread, so the ``except KeyboardInterrupt`` path that keeps the work runs for them too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Interrupted(signum)

    saved = {s: signal.getsignal(s) for s in ENDING if s != signal.SIGINT and _ours(s)}
    for s in saved:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP are recorded instead of acted on; on leaving it
    the handlers are restored and the first recorded signal is raised again (``signal.raise_signal``),
    so it takes effect — KeyboardInterrupt, :class:`Interrupted` or the end of the process — only
    once the block has finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {s: h for s in ENDING if (h := signal.getsignal(s)) not in (signal.SIG_IGN, None)}
    for s in saved:
        signal.signal(s, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        if pending:
            signal.raise_signal(pending[0])
