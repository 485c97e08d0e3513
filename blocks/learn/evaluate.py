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


_POOL_RUNNER: "TflmRunner | None" = None


def _pool_init(model_bytes: bytes, arena_size: int) -> None:
    global _POOL_RUNNER
    _POOL_RUNNER = TflmRunner(model_bytes, arena_size)


def _pool_predict(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    r = _POOL_RUNNER
    t, n = r.seconds, r.invokes
    q = r.predict_raw(x)
    return q, r.seconds - t, r.invokes - n


class TflmPool:
    """:class:`TflmRunner` over several processes (each its own TFLite Micro interpreter on the
    same model and arena): the same int8 outputs, patch by patch, in less wall time. ``workers``
    defaults to the CPU count; 1 runs in this process. Use as a context manager or :meth:`close`.

    Attributes:
        min_arena_bytes: the arena TFLM's recording allocator reports for the model.
        ms_per_invoke: mean host time of one invoke, ms (summed over the workers' invokes).
    """

    #: patches per task handed to a worker
    CHUNK = 256

    def __init__(self, model_bytes: bytes, workers: int | None = None) -> None:
        self.local = TflmRunner(model_bytes)
        self.min_arena_bytes = self.local.min_arena_bytes
        self.scores = self.local.scores
        self.workers = max(1, min(workers or os.cpu_count() or 1, os.cpu_count() or 1))
        self._ex = None
        self._seconds, self._invokes = 0.0, 0

    def _executor(self):
        if self._ex is None and self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork (where there is one): the workers use only NumPy and TFLite Micro, never the
            # parent's TensorFlow; spawn would re-run an unguarded user script in every worker
            ctx = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._ex = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(ctx),
                                           initializer=_pool_init, initargs=(self.local.model_bytes,
                                                                             self.local.arena_size))
        return self._ex

    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        """int8 outputs ``[N, n_out]`` of float32 patches, as :meth:`TflmRunner.predict_raw`."""
        x = np.asarray(x, dtype=np.float32)
        if self.workers == 1 or len(x) < 2 * self.CHUNK:
            t, n = self.local.seconds, self.local.invokes
            q = self.local.predict_raw(x)
            self._seconds += self.local.seconds - t
            self._invokes += self.local.invokes - n
            return q
        parts = list(self._executor().map(_pool_predict, [x[i:i + self.CHUNK] for i in range(0, len(x), self.CHUNK)]))
        for _, sec, n in parts:
            self._seconds += sec
            self._invokes += n
        return np.concatenate([q for q, _, _ in parts])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores ``[N, n_out]`` in [0, 1] (:meth:`TflmRunner.predict`)."""
        return self.scores(self.predict_raw(x))

    @property
    def ms_per_invoke(self) -> float:
        return 1000.0 * self._seconds / max(1, self._invokes)

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(cancel_futures=True)
            self._ex = None

    def __enter__(self) -> "TflmPool":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


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


def setting_dict(det: DetectorParams) -> dict:
    """Threshold / votes / hold of a detector setting as JSON."""
    return {"threshold": det.threshold, "vote_n": det.vote_n, "vote_m": det.vote_m, "hold_seconds": det.hold_seconds}


def setting_from_dict(d: dict) -> DetectorParams:
    """Inverse of :func:`setting_dict`."""
    return DetectorParams(threshold=d["threshold"], vote_n=d["vote_n"], vote_m=d["vote_m"],
                          hold_seconds=d["hold_seconds"])


# ----------------------------------------------------------------------------- one fold, pooled folds
@dataclass
class Fold:
    """What one model (or one cross-validation fold's models) produced for evaluation.

    Attributes:
        test: the evaluated split (its ``x`` may be None when ``window`` was scored elsewhere).
        window: model name → positive score of each test window, float ``[N]``.
        test_night, test_scores: the test split's night and each model's scores of it (or None).
        val, val_window: the validation split and its window scores (for the best-F1 fallback
            when there is no night), or None.
        val_night, val_scores: the validation night (episodes only) and its scores, or None.
        hub_threshold: the verdict threshold of the hub model whose scores ``test_scores["hub"]``
            hold (the cascade), or None.
    """

    test: object | None
    window: dict
    test_night: object | None = None
    test_scores: dict | None = None
    val: object | None = None
    val_window: dict | None = None
    val_night: object | None = None
    val_scores: dict | None = None
    hub_threshold: float | None = None


def waves_for(params, cache) -> "object":
    """The decoded-audio cache of the nights (``<cache>/waves``, or a temporary one)."""
    from cryblock.blocks.learn.night import WaveCache

    return WaveCache(params.dsp.sample_rate, None if cache is None else Path(cache) / "waves")


def split_night(split, pos_index: int, params, seed, waves, *, singles: bool):
    """The night (:func:`cryblock.blocks.learn.night.build_night`) of a split that carries its
    clips: its negative clips as household background, its positive clips laid in; None without
    clips or without any audio to build one from."""
    from cryblock.blocks.learn.night import build_night

    if split is None or split.clips is None:
        return None
    neg = [c for c, y in zip(split.clips, split.clip_y) if y != pos_index]
    pos = [c for c, y in zip(split.clips, split.clip_y) if y == pos_index]
    return build_night(neg, pos, params.dsp, params.night, seed, waves=waves, singles=singles)


def _score_night(night, scorers: dict, what: str, log):
    from cryblock.blocks.learn.night import patches_to_score, score_night
    from cryblock.progress import Progress

    n = patches_to_score(night)
    with Progress(n, f"scoring the {what} ({night.hours('household') * 60:.0f} min household, "
                     f"{night.hours('nursery') * 60:.0f} min nursery beds, {n:,} patches × {len(scorers)} models)",
                  log) as prog:
        return score_night(night, scorers, progress=prog.update)


def evaluate_fold(scorers: dict, val, test, params, pos_index: int, *, cache=None, seed: int | None = None,
                  test_window: dict | None = None, test_extra: dict | None = None, log=print) -> Fold:
    """Score one fold: the test windows, the validation night (episodes only; when the
    validation split carries clips) and the test night (single cries and episodes), each patch
    once for all ``scorers``.

    Args:
        scorers: model name → patches ``[n, 96, 64]`` → positive score ``[n]``.
        val, test: :class:`~cryblock.blocks.learn.train.Split` (either may be None).
        params: DSP, night and seed.
        cache: cache folder (decoded audio for the nights) or None.
        seed: night seed, an int or a list of ints (default ``params.learn.seed``).
        test_window: the test windows' scores when already computed (then ``test.x`` is unused).
        test_extra: scorers of the test night only (``hub``: the second opinion, for the cascade).
    """
    seed = [int(v) for v in np.atleast_1d(params.learn.seed if seed is None else seed)]
    waves = waves_for(params, cache)
    if test_window is None and test is not None:
        test_window = {k: np.asarray(f(test.x), dtype=np.float64).reshape(-1) for k, f in scorers.items()}
    fold = Fold(test, test_window or {}, val=val)
    if val is not None and val.clips is not None and params.learn.tune_threshold:
        fold.val_night = split_night(val, pos_index, params, [*seed, 1], waves, singles=False)
        fold.val_scores = _score_night(fold.val_night, scorers, "validation night", log)
    elif val is not None and params.learn.tune_threshold:
        fold.val_window = {k: np.asarray(f(val.x), dtype=np.float64).reshape(-1) for k, f in scorers.items()}
    if test is not None and test.clips is not None:
        fold.test_night = split_night(test, pos_index, params, [*seed, 2], waves, singles=True)
        fold.test_scores = _score_night(fold.test_night, {**scorers, **(test_extra or {})}, "test night", log)
    return fold


def calibration_dict(cal, snrs) -> dict:
    """A :class:`cryblock.blocks.learn.night.Calibration` as JSON: the chosen setting, whether its
    false-alert limit met the budget, what the validation nights promise (point estimate and
    upper 95 % limit per 8 h, episodes alerted within 10 s), its validation verdict and the
    Pareto front of the candidates."""
    from cryblock.blocks.learn.night import fa_upper_per_8h, pareto, verdict_summary

    v = cal.verdict
    k = len(v.alerts)
    return {"setting": setting_dict(cal.setting), "within_budget": cal.within_budget,
            "budget_per_8h": cal.budget_per_8h, "hours": cal.hours, "candidates": len(cal.candidates),
            "promised": {"false_alerts": k, "fa_per_8h": k / cal.hours * 8 if cal.hours else None,
                         "fa_per_8h_upper": fa_upper_per_8h(k, cal.hours), "within_10s": v.headline_recall(),
                         "single_recall": v.single_recall()},
            "validation": verdict_summary(v, snrs),
            "pareto": [{**setting_dict(c[0]), "within_10s": c[1], "fa_per_8h": c[2], "fa_per_8h_upper": c[3]}
                       for c in pareto(cal.candidates)]}


#: Validation nights shorter than this give a warning: no false-alert budget can be checked on them.
MIN_VALIDATION_HOURS = 1.0


def choose_settings(folds: list[Fold], params, *, log=print) -> tuple[dict, dict | None]:
    """Each model's detector setting: calibrated on the (pooled) validation nights of ``folds``
    (:func:`cryblock.blocks.learn.night.calibrate`), else the best clip-F1 threshold of the
    validation windows (Edge Impulse rows), else ``params.detector``.

    Returns:
        (model name → :class:`DetectorParams`, model name → :func:`calibration_dict` or None).
    """
    from cryblock.blocks.learn.night import calibrate

    with_night = [f for f in folds if f.val_night is not None]
    models = [k for k in (with_night[0].val_scores if with_night else folds[0].window or {})] or ["teacher", "float",
                                                                                                  "int8"]
    settings = {k: params.detector for k in models}
    if with_night:
        calibration = {}
        for k in models:
            cal = calibrate([(f.val_night, f.val_scores[k]) for f in with_night], params.detector,
                            params.night.fa_budget_per_8h)
            settings[k] = cal.setting
            calibration[k] = calibration_dict(cal, params.night.snrs_db)
        from cryblock.blocks.learn.report import setting_text

        c8 = calibration.get("int8") or next(iter(calibration.values()))
        log(f"detector calibrated on {c8['hours']:.1f} h of validation nights (" + ", ".join(
            f"{k}: {setting_text(settings[k])}" for k in settings) + "; INT8 deployed)")
        if c8["hours"] < MIN_VALIDATION_HOURS:
            log(f"warning: the validation nights hold only {c8['hours'] * 60:.0f} min of background: a false-alert "
                f"budget of {params.night.fa_budget_per_8h:g} per 8 h cannot be checked on them (its upper limit "
                f"with no alert at all is {c8['promised']['fa_per_8h_upper']:.0f} per 8 h); record more negatives")
        elif not c8["within_budget"]:
            log(f"warning: no detector setting's false-alert rate has an upper 95 % limit within the budget of "
                f"{params.night.fa_budget_per_8h:g} per 8 h on {c8['hours']:.1f} h of validation nights (with no "
                f"alert at all it is {c8['promised']['fa_per_8h_upper']:.1f}); deployed the one with the fewest "
                f"({c8['promised']['false_alerts']})")
        return settings, calibration
    vals = [f for f in folds if f.val_window]
    if vals and params.learn.tune_threshold:
        y = np.concatenate([(np.asarray(f.val.clip_y) == params_pos(params)).astype(int) for f in vals])
        for k in models:
            cm = np.concatenate([clip_max(f.val_window[k], f.val.clip_index, len(f.val.clip_y)) for f in vals])
            best = binary_metrics(y, cm)["threshold"]
            # floored to 1e-3 (the firmware Kconfig holds it ×1000), never above the best-F1 point
            settings[k] = dataclasses.replace(params.detector, threshold=float(np.clip(np.floor(best * 1000) / 1000,
                                                                                      0.0, 1.0)))
        log("detector thresholds tuned on validation clips (best clip F1): "
            + ", ".join(f"{k} {settings[k].threshold}" for k in settings) + " (INT8 one deployed)")
    return settings, None


def params_pos(params) -> int:
    """Index of the positive label in the model output (1 for the cry preset)."""
    learn = params.learn
    return 1 if learn.preset == "cry" else learn.labels.index(learn.positive_label)


def tuned_on(params, calibration: dict | None, cv_summary: dict | None) -> str:
    """Where the deployed detector setting came from, in words."""
    budget = f"{params.night.fa_budget_per_8h:g} false alerts per 8 h"
    if cv_summary is not None:
        return (f"pooled validation nights of {cv_summary['folds']}-fold cross-validation (most episodes alerted "
                f"within 10 s with the false-alert rate's upper 95 % limit within {budget})")
    if calibration:
        return f"validation night (most episodes alerted within 10 s with the false-alert rate's upper 95 % limit within {budget})"
    return "best clip F1 on the validation split" if params.learn.tune_threshold else "given"


def summarise(folds: list[Fold], params, pos_index: int, settings: dict, calibration: dict | None) -> dict:
    """Every metric of each model over the (pooled) test folds at its detector setting.

    Returns:
        model name → dict: ``window``/``clip`` (:func:`binary_metrics`, None without both
        classes), ``auc_ci`` (group bootstrap), ``detector`` (:func:`false_alerts_per_hour` over
        the test clips one by one), ``categories`` (negative clips alerting, per category),
        ``night`` (:func:`cryblock.blocks.learn.night.verdict_summary` of the pooled test nights,
        or None), ``det`` (:func:`cryblock.blocks.learn.night.det_curve`), ``detector_setting``,
        ``calibration`` (when calibrated); plus ``int8_vs_float`` and ``night`` (the nights'
        hours and insertions).
    """
    from cryblock.blocks.learn.night import det_curve, judge, pool, verdict_summary

    tests = [f for f in folds if f.test is not None]
    hop = params.dsp.patch_hop_seconds
    y_win, clip_idx, clip_y, clips, off = [], [], [], [], 0
    for f in tests:
        y_win.append((np.asarray(f.test.y) == pos_index).astype(int))
        clip_idx.append(np.asarray(f.test.clip_index) + off)
        clip_y.append((np.asarray(f.test.clip_y) == pos_index).astype(int))
        clips += list(f.test.clips) if f.test.clips is not None else [None] * len(f.test.clip_y)
        off += len(f.test.clip_y)
    y_win, clip_idx, clip_y = (np.concatenate(a) if a else np.zeros(0, int) for a in (y_win, clip_idx, clip_y))
    both = len(np.unique(clip_y)) == 2
    with_clips = all(c is not None for c in clips) and len(clips) > 0
    groups = np.array([c.group for c in clips]) if with_clips else None
    nights = [f for f in tests if f.test_night is not None]
    out = {}
    for k in settings:
        if not tests or k not in tests[0].window:
            continue
        s = np.concatenate([f.window[k] for f in tests])
        det = settings[k]
        res = {"detector_setting": setting_dict(det), "detector_threshold": det.threshold}
        if both:
            res.update(evaluate_scores(s, y_win, clip_idx, clip_y, det, params.dsp))
        else:
            res.update({"window": None, "clip": None,
                        "detector": false_alerts_per_hour(s, clip_idx, clip_y == 0, det, hop)})
        res["auc_ci"] = None
        if both and with_clips:
            cm = clip_max(s, clip_idx, len(clip_y))
            res["auc_ci"] = {"window": bootstrap_auc(y_win, s, groups[clip_idx], params.night.bootstrap,
                                                     params.learn.seed),
                             "clip": bootstrap_auc(clip_y, cm, groups, params.night.bootstrap, params.learn.seed)}
        res["categories"] = category_table(s, clip_idx, [c.category or c.label for c in clips], clip_y == 0, det,
                                           hop) if with_clips else None
        res["night"], res["det"] = None, None
        if nights:
            pairs = [(f.test_night, f.test_scores[k]) for f in nights]
            res["night"] = verdict_summary(pool([judge(n, sc, det) for n, sc in pairs]), params.night.snrs_db)
            res["det"] = det_curve(pairs, det)
        if calibration and k in calibration:
            res["calibration"] = calibration[k]
        if k == "int8" and nights and all("hub" in f.test_scores and f.hub_threshold is not None for f in nights):
            from cryblock.blocks.hub.opinion import CONFIRM_DELAY_S, confirmer

            v = pool([judge(f.test_night, f.test_scores[k], det, confirm_delay_s=CONFIRM_DELAY_S,
                            confirm=confirmer(f.test_night, f.test_scores["hub"], f.hub_threshold)) for f in nights])
            res["cascade"] = verdict_summary(v, params.night.snrs_db)
            res["cascade"]["hub_thresholds"] = [f.hub_threshold for f in nights]
        out[k] = res
    if "int8" in out and "float" in out and tests:
        a = np.concatenate([f.window["int8"] for f in tests])
        b = np.concatenate([f.window["float"] for f in tests])
        thr = settings["int8"].threshold
        d = np.abs(a - b)
        out["int8_vs_float"] = {"max_abs_diff": float(d.max()) if len(d) else None,
                                "mean_abs_diff": float(d.mean()) if len(d) else None,
                                "decision_agreement": float(np.mean((a >= thr) == (b >= thr))) if len(d) else None}
    if nights:
        summ = [f.test_night.summary() for f in nights]
        out["night"] = {"hours": {b: sum(x["hours"].get(b, 0.0) for x in summ) for b in summ[0]["hours"]},
                        "negative_clips": sum(x["negative_clips"] for x in summ),
                        "dropped": sum(x["dropped"] for x in summ), "folds": len(nights)}
    return out


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

    def check(self, patch_shape: tuple[int, ...]) -> None:
        """Raise CryblockError (naming the file) unless the model takes float32 patches of
        ``patch_shape`` (or their flat form) and gives float32 scores."""
        shape = tuple(int(v) for v in self.inp["shape"][1:])
        flat = int(np.prod(patch_shape))
        if (self.inp["dtype"] != np.float32 or self.out["dtype"] != np.float32
                or int(np.prod(shape)) != flat or shape not in (tuple(patch_shape), (*patch_shape, 1), (flat,))):
            raise CryblockError(f"{self.path}: not this run's float model (input {self.inp['dtype'].__name__} "
                                f"{list(shape)}, output {self.out['dtype'].__name__}; expected float32 patches "
                                f"{list(patch_shape)})")

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
    from cryblock.inputs import read_regular_text
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
    if (d / "metrics.json").exists():
        try:
            metrics = json.loads(read_regular_text(d / "metrics.json"))
        except (OSError, ValueError) as e:
            raise CryblockError(f"{d / 'metrics.json'}: not readable JSON ({getattr(e, 'strerror', None) or e})") from None
        if not isinstance(metrics, dict) or not isinstance(metrics.get("cost", {}), dict):
            raise CryblockError(f"{d / 'metrics.json'}: not a run's metrics (expected a JSON object with a "
                                "'cost' object)")
    FloatRunner(d / FLOAT_NAME).check(params.dsp.patch_shape)  # a swapped model fails now, not after the features
    head = None
    if params.learn.preset == "general":
        from cryblock.blocks.learn.train import TEACHER_HEAD_NAME

        if not (d / TEACHER_HEAD_NAME).is_file():
            raise CryblockError(f"{d / TEACHER_HEAD_NAME}: not found (needed to score the teacher of a "
                                "general-preset run)")
        head = TeacherHead.load(d / TEACHER_HEAD_NAME)
    run = Run(d, params, metrics, int8, d / FLOAT_NAME, head)
    for model in ("teacher", "float", "int8"):  # the detector settings evaluate uses, checked now
        try:
            run.setting(model)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CryblockError(f"{d / 'metrics.json'}: {model}'s detector setting is malformed "
                                f"({type(e).__name__}: {e})") from None
    return run


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
                 workers: int | None = None, cache_dir=None, log=print, force: bool = False) -> dict:
    """``cryblock evaluate``: a trained run on any manifest (all its clips, no split) — teacher,
    float and INT8 at the run's detector settings: window/clip AUC with group-bootstrap intervals,
    per-category alerting clips, and the nursery nights built from the manifest's clips. Writes
    metrics.json, report.md and report.html into ``out_dir``.

    Memory stays flat in the length of the recordings: each clip's patches are computed into the
    cache and scored one clip at a time; the nights are rendered block by block.

    A manifest with one label gets what is defined: negatives only → false alerts (per clip and
    over the nights' backgrounds), positives only → the fraction of clips alerted; the metrics
    that need both are listed as undefined.

    Raises:
        CryblockError: run folder or files missing, labels the run does not know (listed),
            unreadable manifest, ``out_dir`` not writable or holding another output (unless ``force`` for an
            earlier evaluation), no readable clip.
    """
    from cryblock.blocks.learn import distill, report
    from cryblock.blocks.learn.teacher import cry_probability, load_teacher
    from cryblock.blocks.learn.train import Split
    from cryblock.data import deduplicate, default_cache_dir, load_manifest, patch_files
    from cryblock.errors import DataError
    from cryblock.output import check_run_output
    from cryblock.progress import Progress

    check_run_output(out_dir, "evaluation", force=force, inputs=(run_dir, manifest, teacher))
    run = load_run(run_dir)
    params = run.params
    learn = params.learn
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
    pos = run.pos_index
    cry = learn.preset == "cry"
    label_index = {lab: (int(lab == learn.positive_label) if cry else learn.labels.index(lab)) for lab in learn.labels}
    with Progress(len(clips), f"features of {len(clips)} clips", log) as prog:
        files = patch_files(clips, params.dsp, cache, cached=True, workers=workers, progress=prog.update)
    runner, floatr = TflmPool(run.int8, workers), FloatRunner(run.float_path)
    try:
        def teacher_score(x):
            sc, em = distill.teacher_outputs(teacher, x, None)
            return cry_probability(sc) if cry else run.head.proba(em)[:, pos]

        def pick(p):
            return p.reshape(-1) if p.shape[1] == 1 else p[:, pos]

        scorers = {"teacher": teacher_score, "float": lambda x: pick(floatr.predict(x)),
                   "int8": lambda x: pick(runner.predict(x))}
        kept, skipped, window = [], [], {k: [] for k in scorers}
        clip_index = []
        with Progress(sum(n for _, n, e in files if e is None), "scoring the clips' windows", log) as prog:
            for clip, (f, n, err) in zip(clips, files):
                if err is not None:
                    skipped.append((str(clip.path), err))
                    continue
                if not n:
                    continue
                x = np.load(f, mmap_mode="r")
                for k, fn in scorers.items():
                    window[k].append(np.asarray(fn(np.asarray(x)), np.float64).reshape(-1))
                clip_index.append(np.full(n, len(kept)))
                kept.append(clip)
                prog.update(n)
        if not kept:
            raise DataError(f"none of {len(clips)} clip(s) could be read; first error: "
                            f"{skipped[0][1] if skipped else 'no clips'}")
        log(f"features: {sum(len(c) for c in clip_index)} patches of {len(kept)} clips"
            + (f" ({len(skipped)} skipped, first: {skipped[0][1]})" if skipped else ""))
        y_clip = np.array([label_index[c.label] for c in kept], dtype=np.int64)
        ci = np.concatenate(clip_index)
        split = Split(None, y_clip[ci], ci, y_clip, kept)
        window = {k: np.concatenate(v) for k, v in window.items()}
        fold = evaluate_fold(scorers, None, split, params, pos, cache=cache, test_window=window, log=log)
    finally:
        runner.close()
    settings = {k: run.setting(k) for k in scorers}
    results = summarise([fold], params, pos, settings, None)
    n_pos, n_neg = int(np.sum(y_clip == pos)), int(np.sum(y_clip != pos))
    undefined = []
    if not (n_pos and n_neg):
        undefined += ["window and clip AUC (need both labels)", "best-F1 thresholds"]
    if not n_pos:
        undefined.append("cry recall and time to alert (no positive clip)")
    if not n_neg:
        undefined += ["false alerts over household recordings (no negative clip)"]
    metrics = {"kind": "evaluation", "run": str(run.folder), "manifest": str(mp), "preset": learn.preset,
               "labels": list(learn.labels), "positive_index": pos,
               "data": {"clips": len(kept), "patches": int(len(ci)), "positive_clips": n_pos,
                        "negative_clips": n_neg, "skipped": [list(s) for s in skipped]},
               **{k: results.get(k) for k in scorers}, "int8_vs_float": results.get("int8_vs_float"),
               "cost": run.metrics.get("cost", {}), "detector": params.to_dict()["detector"],
               "night": results.get("night") or {}, "undefined": undefined}
    report.publish(out_dir, metrics, params, [fold])
    log(report.results_table(metrics))
    return metrics
