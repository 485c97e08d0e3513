"""TensorFlow's native log lines kept off the terminal (progress lines are :mod:`cryblock.progress`'s).

* :func:`native_log_filter` keeps TensorFlow's C++ start-up and converter lines off the terminal:
  they are written straight to file descriptor 2, past Python's ``sys.stderr``, so the descriptor
  itself is pointed at a temporary file for the duration, and every line that is not one of the
  known harmless ones (:data:`NATIVE_NOISE`) is copied back afterwards.
* :func:`import_tensorflow` imports TensorFlow once inside that filter, with
  ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's own switch for its info and warning logs) unless the
  user set it, and its Python logger at ERROR.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

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
    """``import tensorflow`` (once) without its start-up banner on the terminal, its Python logger
    at ERROR (its retracing notices between cross-validation folds say nothing to a user); returns
    the module."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with native_log_filter():
            import tensorflow  # noqa: F401
    tf = sys.modules["tensorflow"]
    tf.get_logger().setLevel("ERROR")
    return tf
