"""Evaluation of teacher, float student and INT8 student on the group-held-out test set.

* :func:`binary_metrics` — ROC AUC, best F1 over thresholds and its threshold, precision,
  recall and false-positive rate at that threshold (scikit-learn ``roc_auc_score``,
  ``precision_recall_curve``, ``roc_curve``).
* Per-window metrics use every test patch with its clip's label; per-clip metrics pool a clip's
  windows by their **max** (a short cry in a long clip is not diluted, unlike a mean).
* :func:`run_detector` — the on-device decision rule (:mod:`cryblock.detector`, identical to the
  firmware's postproc.c): a window is positive when score ≥ threshold; the alert is on while
  ≥ ``vote_n`` of the last ``vote_m`` windows are positive and for ``hold_seconds`` after the
  last satisfied vote.
  :func:`false_alerts_per_hour` counts off→on transitions over the negative test audio
  (duration = windows × patch hop, 0.48 s).
* :class:`TflmRunner` — runs the INT8 model in the TensorFlow Lite **Micro** interpreter
  (``tflite_micro`` Python package), one patch per invoke as on the device, quantising the input
  with the model's own input scale/zero-point by the firmware's rule
  (:func:`cryblock.blocks.deploy.model.quantize_input`); its arena comes from
  :func:`cryblock.blocks.deploy.arena.measure_arena`.
"""
from __future__ import annotations


import numpy as np

from cryblock.errors import CryblockError
from cryblock.params import DetectorParams, DspParams


# ----------------------------------------------------------------------------- metrics
def binary_metrics(y: np.ndarray, score: np.ndarray) -> dict:
    """Threshold-free and best-F1 metrics of a binary score.

    Args:
        y: ``[N]`` 0/1 (or bool) labels, both classes present.
        score: float ``[N]``, higher = more positive.

    Returns:
        dict: ``auc``, ``best_f1``, ``threshold`` (score at best F1), ``precision``, ``recall``,
        ``fpr`` (false-positive rate at that threshold), ``n``, ``n_pos``.

    Raises:
        CryblockError: only one class present in ``y`` (AUC undefined).
    """
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    y = np.asarray(y).astype(int).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if len(np.unique(y)) < 2:
        raise CryblockError(f"test set has only one class ({np.unique(y).tolist()}); AUC is undefined")
    auc = float(roc_auc_score(y, s))
    prec, rec, thr = precision_recall_curve(y, s)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
    k = int(np.argmax(f1))
    t = float(thr[k])
    pred = s >= t
    neg = y == 0
    fpr = float(np.count_nonzero(pred & neg) / max(1, np.count_nonzero(neg)))
    return {"auc": auc, "best_f1": float(f1[k]), "threshold": t, "precision": float(prec[k]),
            "recall": float(rec[k]), "fpr": fpr, "n": int(len(y)), "n_pos": int(y.sum())}


def clip_max(scores: np.ndarray, clip_index: np.ndarray, n_clips: int) -> np.ndarray:
    """Max window score per clip: float ``[n_clips]`` (−inf for a clip without windows)."""
    out = np.full(n_clips, -np.inf)
    np.maximum.at(out, np.asarray(clip_index, dtype=np.int64), np.asarray(scores, dtype=np.float64))
    return out


def run_detector(scores: np.ndarray, det: DetectorParams, hop_seconds: float = 0.48) -> np.ndarray:
    """Alert state after each window of one continuous recording, by the firmware's own rule
    (:func:`cryblock.detector.run_detector`, the Python twin of postproc.c).

    Args:
        scores: float ``[T]`` window scores in time order (one per ``hop_seconds``).
        det: threshold, vote_n of vote_m, hold_seconds.
        hop_seconds: time between windows (DspParams.patch_hop_seconds, 0.48 s).

    Returns:
        bool ``[T]``: alert on after window t.
    """
    from cryblock.detector import run_detector as device_rule

    return device_rule(scores, det, hop_ms=int(round(hop_seconds * 1000))).det.astype(bool)


def count_alerts(state: np.ndarray) -> int:
    """Number of off→on transitions (the first window counts if it is on)."""
    s = np.asarray(state, dtype=bool)
    if len(s) == 0:
        return 0
    return int(s[0]) + int(np.count_nonzero(s[1:] & ~s[:-1]))


def false_alerts_per_hour(scores: np.ndarray, clip_index: np.ndarray, clip_is_neg: np.ndarray,
                          det: DetectorParams, hop_seconds: float = 0.48) -> dict:
    """N-of-M voted alerts on negative clips, per hour of negative audio.

    Each negative clip is run through :func:`run_detector` separately (windows in time order).

    Returns:
        dict: ``false_alerts`` (count), ``hours`` (negative audio, windows × hop), ``per_hour``,
        ``clips_alerting`` (negative clips with ≥ 1 alert), ``pos_clips_detected`` (fraction of
        positive clips with ≥ 1 alert).
    """
    ci = np.asarray(clip_index, dtype=np.int64)
    neg = np.asarray(clip_is_neg, dtype=bool)
    alerts = windows = alerting = detected = n_pos = 0
    for c in range(len(neg)):
        s = scores[ci == c]
        if len(s) == 0:
            continue
        a = count_alerts(run_detector(s, det, hop_seconds))
        if neg[c]:
            alerts += a
            windows += len(s)
            alerting += a > 0
        else:
            n_pos += 1
            detected += a > 0
    hours = windows * hop_seconds / 3600.0
    return {"false_alerts": int(alerts), "hours": hours, "per_hour": alerts / hours if hours else float("nan"),
            "clips_alerting": int(alerting), "pos_clips_detected": detected / n_pos if n_pos else float("nan")}


def evaluate_scores(scores: np.ndarray, y_window: np.ndarray, clip_index: np.ndarray, clip_y: np.ndarray,
                    det: DetectorParams, dsp: DspParams = DspParams()) -> dict:
    """All metrics of one model's window scores.

    Args:
        scores: float ``[N]`` positive-class score per test window.
        y_window: 0/1 ``[N]`` window labels (the clip's label).
        clip_index: ``[N]`` clip of each window (0..C-1, windows of a clip in time order).
        clip_y: 0/1 ``[C]`` clip labels.

    Returns:
        dict with ``window`` and ``clip`` (:func:`binary_metrics`) and ``detector``
        (:func:`false_alerts_per_hour` at ``det``).
    """
    cm = clip_max(scores, clip_index, len(clip_y))
    ok = np.isfinite(cm)
    return {"window": binary_metrics(y_window, scores),
            "clip": binary_metrics(np.asarray(clip_y)[ok], cm[ok]),
            "detector": false_alerts_per_hour(scores, clip_index, np.asarray(clip_y) == 0, det,
                                              dsp.patch_hop_seconds)}


# ----------------------------------------------------------------------------- TFLite Micro
class TflmRunner:
    """Run an INT8 (int8-in/int8-out) TFLite model in the TFLite Micro interpreter.

    Args:
        model_bytes: the ``model_quantized_int8_io.tflite`` flatbuffer.
        arena_size: tensor arena bytes (default: the measured arena
            (:func:`cryblock.blocks.deploy.arena.measure_arena`) + 1 KiB).

    Attributes:
        min_arena_bytes: the arena TFLM's recording allocator reports for the model (the
            smallest that allocates on the host), or None when ``arena_size`` was given.

    Raises:
        CryblockError: the model cannot be loaded or allocated, or its input/output is not int8.
    """

    def __init__(self, model_bytes: bytes, arena_size: int | None = None):
        from tflite_micro import runtime

        self.model_bytes = bytes(model_bytes)
        self.min_arena_bytes = None
        if arena_size is None:
            from cryblock.blocks.deploy.arena import measure_arena

            self.min_arena_bytes = measure_arena(self.model_bytes)
            arena_size = self.min_arena_bytes + 1024
        self.arena_size = int(arena_size)
        try:
            self.interp = runtime.Interpreter.from_bytes(self.model_bytes, arena_size=self.arena_size)
        except Exception as e:  # tflite_micro raises RuntimeError/ValueError on bad models
            raise CryblockError(f"TFLite Micro cannot load the INT8 model ({str(e).splitlines()[0]})") from None
        self.inp = self.interp.get_input_details(0)
        self.out = self.interp.get_output_details(0)
        if self.inp["dtype"] != np.int8 or self.out["dtype"] != np.int8:
            raise CryblockError(f"INT8 model must have int8 input/output, got {self.inp['dtype']}/{self.out['dtype']}")
        self.in_scale, self.in_zp = _qparams(self.inp)
        self.out_scale, self.out_zp = _qparams(self.out)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float probabilities ``[N, n_out]`` of float32 patches ``x`` (``[N, 96, 64]`` or any
        shape that reshapes to the model input), one invoke per patch."""
        from cryblock.blocks.deploy.model import quantize_input

        shape = tuple(int(d) for d in self.inp["shape"])
        x = np.asarray(x, dtype=np.float32)
        outs = []
        for i in range(len(x)):
            self.interp.set_input(quantize_input(x[i], self.in_scale, self.in_zp).reshape(shape), 0)
            self.interp.invoke()
            o = self.interp.get_output(0).astype(np.float32)
            outs.append((o.reshape(-1) - self.out_zp) * self.out_scale)
            self.interp.reset()
        return np.stack(outs) if outs else np.zeros((0, int(np.prod(self.out["shape"][1:]))), np.float32)


def _qparams(det: dict) -> tuple[float, int]:
    """(scale, zero point) of a TFLite Micro tensor detail (``quantization_parameters``, the only
    form ``tflite_micro.runtime`` reports). Raises CryblockError for an int8 tensor without a
    scale (it would otherwise quantise with scale 0)."""
    qp = det.get("quantization_parameters") or {}
    scales, zps = qp.get("scales"), qp.get("zero_points")
    if scales is None or not len(scales):
        raise CryblockError("INT8 model input/output has no quantisation scale")
    return float(scales[0]), int(zps[0])
