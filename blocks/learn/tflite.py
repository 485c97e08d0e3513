"""Running TFLite files in Python: the interpreter for a file, and the YAMNet TFLite on waveforms
(its own quantised front-end) — the reference the Keras teacher is checked against."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryblock.blocks.learn.yamnet import NUM_CLASSES, PATCH_SHAPE
from cryblock.tflogs import native_log_filter
from cryblock.errors import CryblockError
from cryblock.inputs import read_regular_bytes


def tflite_interpreter(path: str | os.PathLike, *, use_delegates: bool = True, num_threads: int | None = None):
    """LiteRT's interpreter (``ai_edge_litert.interpreter.Interpreter``, the successor of the
    deprecated ``tf.lite.Interpreter``, same API) for the TFLite file ``path``, tensors
    allocated, after a structural check of the file
    (:func:`cryblock.blocks.deploy.model.check_tflite_bytes`). ``use_delegates=False`` → builtin
    kernels only (no XNNPACK). The file must be a regular file (a FIFO or /dev/zero is refused,
    not read forever).

    Raises:
        CryblockError: unreadable, truncated or not a TFLite model (names the file).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from cryblock.blocks.deploy.model import check_tflite_bytes

    try:
        buf = read_regular_bytes(path)
    except OSError as e:
        raise CryblockError(f"{path}: cannot read TFLite model ({e.strerror or e})") from None
    check_tflite_bytes(buf, path)
    kw = {} if use_delegates else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    try:
        with native_log_filter():  # LiteRT announces its XNNPACK delegate natively
            it = Interpreter(model_content=buf, num_threads=num_threads, **kw)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CryblockError(f"{path}: not a usable TFLite model ({msg})") from None
    return it


class TfliteWaveformYamnet:
    """The YAMNet TFLite interpreter on 15600-sample waveform windows — the reference the Keras
    teacher is checked against (tests/test_teacher.py, bench/teacher.py).

    ``run(window)`` returns ``(scores float32 [521], log_mel float32 [96, 64])`` (outputs
    ``Identity`` and ``Identity_1`` of the shared file; a file without the log-mel output
    returns None for it).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = Path(path)
        self.interpreter = tflite_interpreter(self.path, num_threads=num_threads)
        inp = self.interpreter.get_input_details()[0]
        self._in = inp["index"]
        self.window_samples = int(inp["shape"][-1])
        self._scores = self._logmel = None
        for d in self.interpreter.get_output_details():
            shape = tuple(d["shape"])
            if shape[-1] == NUM_CLASSES and self._scores is None:
                self._scores = d["index"]
            elif shape[-2:] == PATCH_SHAPE:
                self._logmel = d["index"]
        if self._scores is None:
            raise CryblockError(f"{self.path}: TFLite model has no [*, {NUM_CLASSES}] scores output")

    def run(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One float32 waveform window ``[15600]`` (16 kHz, [-1, 1]) → (scores [521], log-mel [96, 64])."""
        x = np.asarray(window, dtype=np.float32).reshape(1, self.window_samples)
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()
        scores = np.array(self.interpreter.get_tensor(self._scores)).reshape(NUM_CLASSES)
        logmel = None if self._logmel is None else np.array(self.interpreter.get_tensor(self._logmel)).reshape(PATCH_SHAPE)
        return scores, logmel
