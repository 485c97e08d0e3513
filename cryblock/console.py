"""What a command shows on the terminal while it works: progress, and no TensorFlow log spam.

* :func:`progress` reports a long step (features, teacher scores, evaluation): a tqdm bar when
  stderr is a terminal, else plain lines (one per tenth of the work) that a log file or CI keeps
  readable.
* :func:`native_log_filter` keeps TensorFlow's C++ start-up and converter lines off the terminal:
  they are written straight to file descriptor 2, past Python's ``sys.stderr``, so the descriptor
  itself is pointed at a temporary file for the duration, and every line that is not one of the
  known harmless ones (:data:`NATIVE_NOISE`) is copied back afterwards.
* :func:`import_tensorflow` imports TensorFlow once inside that filter, with
  ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's own switch for its info and warning logs) unless the
  user set it.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator, TextIO

#: Lines TensorFlow / LiteRT print natively on every run that tell the user nothing: absl's
#: notice before its logging is set up, info-level (``I``) absl lines such as the oneDNN banner
#: and the CPU-feature note with its continuation line, the INT8 converter's ``fully_quantize``
#: parameter dump, and LiteRT's XNNPACK delegate notice. Warnings and errors pass.
NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ \S+:\d+\] .*"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\."
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)\s*$")

_lock = threading.RLock()
_depth = 0


@contextlib.contextmanager
def native_log_filter() -> Iterator[None]:
    """Within the block, what is written to file descriptor 2 (by C++ code or Python) is held
    back; on exit the lines that do not match :data:`NATIVE_NOISE` are written to stderr, in
    order. Re-entrant (an inner use joins the outer one). Keep the block short: Python messages
    inside it appear only at its end."""
    global _depth
    with _lock:
        _depth += 1
        if _depth > 1:
            try:
                yield
            finally:
                _depth -= 1
            return
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 (a daemon): nothing to filter
            saved = None
        held = tempfile.TemporaryFile()
        if saved is not None:
            os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            held.close()
            _depth -= 1
            kept = [ln for ln in text.splitlines(keepends=True) if not NATIVE_NOISE.match(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow():
    """``import tensorflow`` (once) without its start-up banner on the terminal; returns the module."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with native_log_filter():
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]


#: Least seconds between two progress lines (a log keeps a line per tenth of a long step only).
LINE_SECONDS = 3.0


class _Lines:
    """tqdm's ``update``/``close`` for a file that is not a terminal: a line at every tenth of the
    work (at most one per :data:`LINE_SECONDS`) and one when it is done."""

    def __init__(self, total: int, desc: str, unit: str, file: TextIO) -> None:
        self.total, self.desc, self.unit, self.file = int(total), desc, unit, file
        self.n, self.shown, self.t0 = 0, 0, time.perf_counter()
        self.last = self.t0

    def _line(self) -> None:
        self.last = time.perf_counter()
        print(f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}s ({100 * self.n // self.total} %), "
              f"{time.perf_counter() - self.t0:.0f} s", file=self.file, flush=True)

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        tenth = 10 * self.n // self.total
        if tenth > self.shown and self.n < self.total and time.perf_counter() - self.last >= LINE_SECONDS:
            self.shown = tenth
            self._line()

    def close(self) -> None:
        if self.n:
            self._line()


@contextlib.contextmanager
def progress(desc: str, total: int, unit: str = "item", *, enabled: bool = True,
             file: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """Show the progress of a step of ``total`` units; yields ``update(k)``, to call as ``k`` more
    units are done.

    Args:
        desc: the step's name, e.g. ``"features"``.
        total: units of work (clips, patches, batches).
        unit: the unit's name (singular), e.g. ``"clip"``.
        enabled: False → nothing is shown (quiet runs, library use).
        file: where to show it (default ``sys.stderr``): a tqdm bar that disappears when the step
            ends if it is a terminal, else a line at every tenth of the work (no carriage returns).
    """
    out = file if file is not None else sys.stderr
    if not enabled or total <= 0:
        yield lambda k=1: None
        return
    if out.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, file=out, leave=False, dynamic_ncols=True)
    else:
        bar = _Lines(total, desc, unit, out)
    try:
        yield bar.update
    finally:
        bar.close()
