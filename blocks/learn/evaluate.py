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
  :func:`cryblock.blocks.deploy.arena.measure_arena`. A logits model gets the sigmoid/softmax
  in float afterwards, as in the firmware.
* :func:`bootstrap_auc` — 95 % intervals of window and clip AUC, resampling *groups* (a baby,
  a cat, a speaker), not windows; :func:`category_table` — which negative sounds alert.
* :func:`evaluate_split` — all of the above plus the nursery night (:mod:`.night`) for one
  model at its detector setting; :func:`calibrate_on` picks that setting on the validation night.
* :func:`evaluate_run` (``cryblock evaluate``) — a trained run (:func:`load_run`) on any
  manifest; :func:`detect_file` (``cryblock detect``) — one recording's scores and alerts.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

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
        self.invokes, self.seconds = 0, 0.0  # host time spent in invoke (for the cost report)
        from cryblock.blocks.deploy.model import inspect_model

        self.activation = inspect_model(self.model_bytes).output_activation

    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        """The int8 outputs ``[N, n_out]`` of float32 patches ``x`` (``[N, 96, 64]`` or any shape
        that reshapes to the model input), one invoke per patch, as on the device."""
        import time

        from cryblock.blocks.deploy.model import quantize_input

        shape = tuple(int(d) for d in self.inp["shape"])
        x = np.asarray(x, dtype=np.float32)
        outs = []
        for i in range(len(x)):
            self.interp.set_input(quantize_input(x[i], self.in_scale, self.in_zp).reshape(shape), 0)
            t0 = time.perf_counter()
            self.interp.invoke()
            self.seconds += time.perf_counter() - t0
            self.invokes += 1
            outs.append(self.interp.get_output(0).reshape(-1).copy())
            self.interp.reset()
        return np.stack(outs) if outs else np.zeros((0, int(np.prod(self.out["shape"][1:]))), np.int8)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores ``[N, n_out]`` in [0, 1] of float32 patches, by the firmware's rule: the int8
        output dequantised (``(q − zero_point) · scale``), then the sigmoid/softmax when the model
        outputs logits (:func:`cryblock.blocks.deploy.model.output_scores`)."""
        return self.scores(self.predict_raw(x))

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Scores ``[N, n_out]`` in [0, 1] of raw int8 outputs ``q`` (:meth:`predict_raw`)."""
        from cryblock.blocks.deploy.model import output_scores

        return output_scores((q.astype(np.float32) - self.out_zp) * self.out_scale, self.activation)


def _qparams(det: dict) -> tuple[float, int]:
    """(scale, zero point) of a TFLite Micro tensor detail (``quantization_parameters``, the only
    form ``tflite_micro.runtime`` reports). Raises CryblockError for an int8 tensor without a
    scale (it would otherwise quantise with scale 0)."""
    qp = det.get("quantization_parameters") or {}
    scales, zps = qp.get("scales"), qp.get("zero_points")
    if scales is None or not len(scales):
        raise CryblockError("INT8 model input/output has no quantisation scale")
    return float(scales[0]), int(zps[0])


# ----------------------------------------------------------------------------- confidence, categories, night
def bootstrap_auc(y: np.ndarray, score: np.ndarray, groups: np.ndarray, n: int = 500,
                  seed: int = 0) -> list[float] | None:
    """95 % percentile-bootstrap interval of the ROC AUC, resampling **groups** (recording
    sources) with replacement, since windows and clips of one group are not independent.

    Args:
        y: 0/1 ``[N]``; score: float ``[N]``; groups: group of each item ``[N]``.
        n: resamples (those missing a class are redrawn at most ``n`` extra times).

    Returns:
        ``[low, high]``, or None when ``n`` is 0 or fewer than two groups exist.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    s = np.asarray(score, dtype=np.float64)
    g = np.asarray(groups)
    names, inv = np.unique(g, return_inverse=True)
    if n <= 0 or len(names) < 2 or len(np.unique(y)) < 2:
        return None
    members = [np.flatnonzero(inv == k) for k in range(len(names))]
    rng = np.random.default_rng([seed, 11])
    aucs, tries = [], 0
    while len(aucs) < n and tries < 2 * n:
        tries += 1
        pick = np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))])
        if len(np.unique(y[pick])) < 2:
            continue
        aucs.append(roc_auc_score(y[pick], s[pick]))
    if not aucs:
        return None
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return [float(lo), float(hi)]


def category_table(scores: np.ndarray, clip_index: np.ndarray, categories: list[str], clip_is_neg: np.ndarray,
                   det: DetectorParams, hop_seconds: float = 0.48) -> dict[str, dict[str, int]]:
    """Per category of negative clips: how many clips, and how many raise ≥ 1 alert when run
    through the detector alone (the firmware rule, :func:`run_detector`)."""
    ci = np.asarray(clip_index, dtype=np.int64)
    out: dict[str, dict[str, int]] = {}
    for c in np.flatnonzero(np.asarray(clip_is_neg, dtype=bool)):
        s = np.asarray(scores)[ci == c]
        if len(s) == 0:
            continue
        row = out.setdefault(categories[c] or "(none)", {"clips": 0, "alerting": 0})
        row["clips"] += 1
        row["alerting"] += int(count_alerts(run_detector(s, det, hop_seconds)) > 0)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["alerting"], kv[0])))


def verdict_dict(v) -> dict:
    """A :class:`cryblock.blocks.learn.night.Verdict` as plain JSON (SNR keys as strings)."""
    return {"recall": {f"{k:g}": r for k, r in v.recall.items()}, "mean_recall": v.mean_recall,
            "episodes": {f"{k:g}": len(d) for k, d in v.detected.items()},
            "false_alerts": v.false_alerts, "hours": v.hours, "fa_per_8h": v.fa_per_8h,
            "fa_per_8h_ci": list(v.fa_per_8h_ci), "fa_categories": v.fa_categories,
            "fa_times_s": v.fa_times_s}


def night_of(split, pos_index: int, params, seed: int = 0):
    """The night stream (:func:`cryblock.blocks.learn.night.build_night`) of a split that carries
    its clips: its negative clips as background, its positive clips inserted."""
    from cryblock.blocks.learn.night import build_night

    neg = [c for c, y in zip(split.clips, split.clip_y) if y != pos_index]
    pos = [c for c, y in zip(split.clips, split.clip_y) if y == pos_index]
    return build_night(neg, pos, params.dsp, params.night, seed)


def calibrate_on(night, scorer, params):
    """Calibrate the detector of one model (its ``scorer``) on a night stream
    (:func:`cryblock.blocks.learn.night.calibrate` with the run's budget)."""
    from cryblock.blocks.learn.night import calibrate, score_night

    return calibrate(night, score_night(night, scorer), params.detector, params.night.fa_budget_per_8h)


def setting_dict(det: DetectorParams) -> dict:
    """Threshold / votes / hold of a detector setting as JSON."""
    return {"threshold": det.threshold, "vote_n": det.vote_n, "vote_m": det.vote_m, "hold_seconds": det.hold_seconds}


def calibration_dict(cal) -> dict:
    """A :class:`cryblock.blocks.learn.night.Calibration` as JSON: the chosen setting, whether it
    met the budget, its validation verdict and the Pareto front of the candidates."""
    from cryblock.blocks.learn.night import pareto

    return {"setting": setting_dict(cal.setting), "within_budget": cal.within_budget,
            "budget_per_8h": cal.budget_per_8h, "validation": verdict_dict(cal.verdict),
            "candidates": len(cal.candidates),
            "pareto": [{**setting_dict(d), "mean_recall": r, "fa_per_8h": fa} for d, r, fa in pareto(cal.candidates)]}


def night_summary(night) -> dict:
    """Length and content of a night stream (JSON)."""
    return {"hours": night.duration_s / 3600.0, "negative_clips": len(night.segments),
            "episodes": {f"{k:g}": len(v) for k, v in night.episodes.items()}}


def evaluate_split(scores: np.ndarray, split, pos_index: int, det: DetectorParams, params, *,
                   night=None, night_scores=None) -> dict:
    """Every metric of one model on one split at its detector setting ``det``.

    Args:
        scores: float ``[N]`` positive score per window of ``split``.
        split: :class:`cryblock.blocks.learn.train.Split`.
        pos_index: label index of the positive class.
        det: the model's detector setting.
        params: run parameters (DSP hop, bootstrap count, seed).
        night: the split's night stream and the model's ``night_scores``
            (:func:`cryblock.blocks.learn.night.score_night`), or None.

    Returns:
        :func:`evaluate_scores`'s dict plus ``auc_ci`` (window/clip, groups resampled),
        ``categories`` (negative clips alerting, per category), ``night``
        (:func:`verdict_dict`, or None) and ``detector_setting``. Metrics that need both classes
        are None when the split has only one (a user's all-negative recordings).
    """
    y_win = (np.asarray(split.y) == pos_index).astype(int)
    y_clip = (np.asarray(split.clip_y) == pos_index).astype(int)
    both = len(np.unique(y_clip)) == 2
    hop = params.dsp.patch_hop_seconds
    if both:
        res = evaluate_scores(scores, y_win, split.clip_index, y_clip, det, params.dsp)
    else:
        res = {"window": None, "clip": None,
               "detector": false_alerts_per_hour(scores, split.clip_index, y_clip == 0, det, hop)}
    res["auc_ci"] = None
    if both and split.clips is not None:
        groups = np.array([c.group for c in split.clips])
        cm = clip_max(scores, split.clip_index, len(y_clip))
        res["auc_ci"] = {"window": bootstrap_auc(y_win, scores, groups[split.clip_index], params.night.bootstrap,
                                                 params.learn.seed),
                         "clip": bootstrap_auc(y_clip, cm, groups, params.night.bootstrap, params.learn.seed)}
    res["categories"] = None
    if split.clips is not None:
        res["categories"] = category_table(scores, split.clip_index, [c.category or c.label for c in split.clips],
                                           y_clip == 0, det, hop)
    res["night"] = None
    if night is not None and night_scores is not None:
        from cryblock.blocks.learn.night import judge

        res["night"] = verdict_dict(judge(night, night_scores, det))
    res["detector_setting"] = setting_dict(det)
    res["detector_threshold"] = det.threshold
    return res


# ----------------------------------------------------------------------------- a trained run, reused
class FloatRunner:
    """Run the float ``model.tflite`` of a run (TensorFlow Lite, batched): :meth:`predict` gives
    probabilities ``[N, n_out]`` of float32 patches."""

    def __init__(self, path) -> None:
        from cryblock.blocks.learn.tflite import tflite_interpreter

        self.path = path
        self.interp = tflite_interpreter(path)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self._batch = None

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        shape = tuple(int(d) for d in self.inp["shape"][1:])
        outs = []
        for i in range(0, len(x), batch_size):
            b = x[i:i + batch_size].reshape((-1,) + shape)
            if self._batch != len(b):
                self.interp.resize_tensor_input(self.inp["index"], (len(b),) + shape)
                self.interp.allocate_tensors()
                self._batch = len(b)
            self.interp.set_tensor(self.inp["index"], b)
            self.interp.invoke()
            outs.append(self.interp.get_tensor(self.out["index"]).reshape(len(b), -1).copy())
        return np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)


@dataclass
class Run:
    """What :func:`load_run` reads from a run folder."""

    folder: Path
    params: object
    metrics: dict
    int8: bytes
    float_path: Path
    head: object | None

    @property
    def pos_index(self) -> int:
        """Index of the positive label in the model output (1 for the cry preset's [not, cry])."""
        learn = self.params.learn
        return 1 if learn.preset == "cry" else learn.labels.index(learn.positive_label)

    def setting(self, model: str) -> DetectorParams:
        """The detector setting of ``model`` (teacher/float/int8): its own calibrated one from the
        run's metrics, the deployed (params.json) one for int8 or when absent."""
        d = ((self.metrics.get(model) or {}).get("detector_setting")) if model != "int8" else None
        if not d:
            return self.params.detector
        return DetectorParams(threshold=d["threshold"], vote_n=d["vote_n"], vote_m=d["vote_m"],
                              hold_seconds=d["hold_seconds"])


def load_run(folder) -> Run:
    """Read a ``cryblock train`` run folder: params.json, the INT8 and float models, metrics.json
    (optional), the teacher head (general preset).

    Raises:
        CryblockError: the folder or one of its files is missing or unreadable, or the INT8 model
            does not fit params.json's patch shape and labels (names the file).
    """
    import json

    from cryblock.blocks.deploy.model import check_model_for_params, inspect_model, read_model
    from cryblock.blocks.learn.distill import TeacherHead
    from cryblock.blocks.learn.export import FLOAT_NAME, INT8_NAME
    from cryblock.params import Params

    d = Path(folder)
    if not d.is_dir():
        raise CryblockError(f"{d}: run folder not found")
    params = Params.load(d / "params.json")
    int8 = read_model(d / INT8_NAME)
    check_model_for_params(inspect_model(int8, str(d / INT8_NAME)), params, str(d / INT8_NAME))
    if not (d / FLOAT_NAME).is_file():
        raise CryblockError(f"{d / FLOAT_NAME}: not found (a cryblock train run folder holds it)")
    metrics = {}
    if (d / "metrics.json").is_file():
        try:
            metrics = json.loads((d / "metrics.json").read_text())
        except (OSError, ValueError) as e:
            raise CryblockError(f"{d / 'metrics.json'}: not readable JSON ({e})") from None
    head = None
    if params.learn.preset == "general":
        from cryblock.blocks.learn.train import TEACHER_HEAD_NAME

        if not (d / TEACHER_HEAD_NAME).is_file():
            raise CryblockError(f"{d / TEACHER_HEAD_NAME}: not found (needed to score the teacher of a "
                                "general-preset run)")
        head = TeacherHead.load(d / TEACHER_HEAD_NAME)
    return Run(d, params, metrics, int8, d / FLOAT_NAME, head)


def detect_file(path, run: Run, runner: "TflmRunner | None" = None) -> dict:
    """Score one recording with the run's INT8 model (TFLite Micro, streamed patch blocks) and
    apply the deployed detector.

    Returns:
        ``{"file", "seconds" (duration of the recording), "patches", "hop_seconds", "scores" [T],
        "states" [T] (0/1),
        "alerts": [{"start_s", "end_s", "peak"}]}``; an alert runs from the first patch the
        detector is on to the patch it turns off again (or the end of the recording).

    Raises:
        AudioError: the file cannot be read (names it).
    """
    from cryblock.blocks.dsp.features import file_patch_blocks
    from cryblock.detector import detector_states

    params = run.params
    runner = runner or TflmRunner(run.int8)
    pos = run.pos_index
    scores = []
    for block in file_patch_blocks(path, params.dsp):
        p = runner.predict(block)
        scores.append(p.reshape(-1) if p.shape[1] == 1 else p[:, pos])
    s = np.concatenate(scores)
    hop = params.dsp.patch_hop_seconds
    states = detector_states(s, params.detector, int(round(hop * 1000)))
    alerts = []
    on = np.flatnonzero(np.diff(np.r_[0, states, 0]) != 0).reshape(-1, 2)
    for a, b in on:
        alerts.append({"start_s": float(a * hop), "end_s": float(b * hop), "peak": float(s[a:b].max())})
    import soundfile as sf

    seconds = float(sf.info(str(path)).duration)  # the recording's length (patches × hop is not)
    return {"file": str(path), "seconds": seconds, "patches": int(len(s)), "hop_seconds": hop,
            "scores": s, "states": states, "alerts": alerts}


def evaluate_run(run_dir, manifest, out_dir, *, teacher=None, label_map: dict | None = None,
                 workers: int | None = None, cache_dir=None, log=print) -> dict:
    """``cryblock evaluate``: a trained run on any manifest (all its clips, no split) — teacher,
    float and INT8 at the run's detector settings: window/clip AUC with group-bootstrap intervals,
    per-category alerting clips, and the nursery night built from the manifest's clips. Writes
    metrics.json, report.md and report.html into ``out_dir``.

    A manifest with one label gets what is defined: negatives only → false alerts (per clip and
    over the night's background), positives only → the fraction of clips alerted; the metrics
    that need both are listed as undefined.

    Raises:
        CryblockError: run folder or files missing, labels the run does not know (listed),
            unreadable manifest, ``out_dir`` not writable, no readable clip.
    """
    from cryblock.blocks.learn import distill, report
    from cryblock.blocks.learn.night import build_night, score_night
    from cryblock.blocks.learn.teacher import cry_probability, load_teacher
    from cryblock.blocks.learn.train import Split
    from cryblock.data import compute_patches, deduplicate, default_cache_dir, load_manifest
    from cryblock.errors import DataError
    from cryblock.output import check_output, staging_dir

    run = load_run(run_dir)
    params = run.params
    learn = params.learn
    check_output(out_dir, folder=True, inputs=(run_dir, manifest))
    mp = Path(manifest)
    mp = mp / "manifest.csv" if mp.is_dir() else mp
    clips = load_manifest(mp)
    if label_map:
        clips = [dataclasses.replace(c, label=label_map.get(c.label, c.label)) for c in clips]
    unknown = sorted({c.label for c in clips} - set(learn.labels))
    if unknown:
        raise DataError(f"{mp}: label(s) {unknown} are unknown to the run (it knows {list(learn.labels)}); map them "
                        "with --map-label LABEL=KNOWN")
    clips, repeats = deduplicate(clips, mp)
    for w in repeats:
        log(f"warning: {w}")
    teacher = load_teacher(teacher)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    ps = compute_patches(clips, params.dsp, workers=workers, cache_dir=cache)
    log(f"features: {len(ps.patches)} patches of {len(ps.clips)} clips"
        + (f" ({len(ps.skipped)} skipped, first: {ps.skipped[0][1]})" if ps.skipped else ""))
    pos = run.pos_index
    cry = learn.preset == "cry"
    label_index = {lab: (int(lab == learn.positive_label) if cry else learn.labels.index(lab)) for lab in learn.labels}
    y_clip = np.array([label_index[c.label] for c in ps.clips], dtype=np.int64)
    split = Split(ps.patches, y_clip[ps.clip_index], ps.clip_index.astype(np.int64), y_clip, list(ps.clips))
    runner, floatr = TflmRunner(run.int8), FloatRunner(run.float_path)

    def teacher_score(x):
        sc, em = distill.teacher_outputs(teacher, x, cache / "teacher")
        return cry_probability(sc) if cry else run.head.proba(em)[:, pos]

    def pick(p):
        return p.reshape(-1) if p.shape[1] == 1 else p[:, pos]

    scorers = {"teacher": teacher_score, "float": lambda x: pick(floatr.predict(x)),
               "int8": lambda x: pick(runner.predict(x))}
    scores = {k: f(split.x) for k, f in scorers.items()}
    n_pos, n_neg = int(np.sum(y_clip == pos)), int(np.sum(y_clip != pos))
    night = build_night([c for c, y in zip(ps.clips, y_clip) if y != pos], [c for c, y in zip(ps.clips, y_clip) if y == pos],
                        params.dsp, params.night, learn.seed) if n_neg else None
    results, night_scores, settings = {}, {}, {k: run.setting(k) for k in scorers}
    for k, f in scorers.items():
        if night is not None:
            night_scores[k] = score_night(night, f)
        results[k] = evaluate_split(scores[k], split, pos, settings[k], params, night=night,
                                    night_scores=night_scores.get(k))
    undefined = []
    if not (n_pos and n_neg):
        undefined += ["window and clip AUC (need both labels)", "best-F1 thresholds"]
    if not n_pos:
        undefined.append("night cry-episode recall (no positive clip)")
    if not n_neg:
        undefined += ["false alerts (no negative clip)", "night stream (no negative audio)"]
    metrics = {"kind": "evaluation", "run": str(run.folder), "manifest": str(mp), "preset": learn.preset,
               "labels": list(learn.labels), "positive_index": pos,
               "data": {"clips": len(ps.clips), "patches": int(len(ps.patches)), "positive_clips": n_pos,
                        "negative_clips": n_neg, "skipped": [list(s) for s in ps.skipped]},
               "teacher": results["teacher"], "float": results["float"], "int8": results["int8"],
               "cost": run.metrics.get("cost", {}), "detector": params.to_dict()["detector"],
               "night": {"evaluation": night_summary(night)} if night is not None else {},
               "undefined": undefined}
    out = Path(out_dir)
    staging = staging_dir(out)
    try:
        report.write_metrics(staging, metrics)
        report.write_reports(staging, metrics, params, split, scores, pos, night, night_scores, settings)
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(report.results_table(metrics))
    return metrics
