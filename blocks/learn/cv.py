"""Cross-validated nights: a training recipe judged on every negative second and every cry once.

One train / validation / test split holds a few minutes of test-night negatives — far too little to
measure a false-alert budget of one per night. Here the manifest's clips are cut into K folds
**by group** (stratified by label and source, :func:`cryblock.data.group_folds`). For each fold:

* a student is trained with the recipe (``params``) on the other folds, with its own inner
  validation groups (``learn.validation_fraction`` of them) for early stopping;
* its inner validation night (episodes laid into those groups' negatives and the nursery beds) is
  scored for calibration, its test night (this fold's negatives, single cries and episodes) for the
  verdict.

The detector setting of each model (teacher, float, INT8) is then chosen **once**, on the pooled
validation nights of all folds (hours of audio; the false-alert budget spent on the upper end of
the rate's Poisson interval, :func:`cryblock.blocks.learn.night.calibrate`), and judged on the
pooled test nights: every negative second and every cry of the manifest counts once. What the
validation nights promised stands next to what the held-out nights measured.

Patches and teacher outputs are computed once for the whole manifest (cached) and shared by the
folds; each fold's night is seeded by ``[learn.seed, fold]``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cryblock.errors import DataError
from cryblock.params import Params

Log = Callable[[str], None]


@dataclass
class CrossValidation:
    """:func:`cross_validate`'s result.

    Attributes:
        summary: JSON: folds, per-fold split sizes, epochs and validation AUC, timing.
        models: per model (teacher/float/int8) the pooled metrics
            (:func:`cryblock.blocks.learn.evaluate.summarise`), plus ``int8_vs_float`` and ``night``.
        settings: per model the calibrated detector setting.
        folds: the folds' :class:`~cryblock.blocks.learn.evaluate.Fold` s (test windows' scores
            and nights, for the report's plots; patches dropped).
        cost: the INT8 cost of the first fold's model (size, MACs, arena).
    """

    summary: dict
    models: dict
    settings: dict
    folds: list = field(default_factory=list)
    cost: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """``{"summary", "models"}`` for metrics.json."""
        return {"summary": self.summary, "models": self.models}


def fold_clips(clips, k: int, seed: int) -> list[np.ndarray]:
    """Clip indices of each of ``k`` folds by group (:func:`cryblock.data.group_folds`).

    Raises:
        DataError: a label has fewer groups than folds (the message says how many each has).
    """
    from cryblock.data import group_folds, groups_per_label

    labels = sorted({c.label for c in clips})
    short = [lab for lab in labels if len({c.group for c in clips if c.label == lab}) < k]
    if short:
        raise DataError(f"{k}-fold cross-validation needs at least {k} groups of every label; {short} have fewer "
                        f"(groups per label: {groups_per_label(clips)}); use --cv with fewer folds")
    folds = group_folds(clips, np.arange(len(clips)), k, seed)
    for f, idx in enumerate(folds):
        missing = set(labels) - {clips[i].label for i in idx}
        if missing:
            raise DataError(f"fold {f + 1} of {k} has no clip of label(s) {sorted(missing)} (groups per label: "
                            f"{groups_per_label(clips)}); use fewer folds")
    return folds


def cross_validate(ps, params: Params, teacher, label_index: dict[str, int], *, k: int | None = None, cache=None,
                   train_filter: Callable | None = None, models: tuple[str, ...] = ("teacher", "float", "int8"),
                   hub: bool = True, log: Log = print) -> CrossValidation:
    """K-fold cross-validation of the recipe ``params`` on the clips of ``ps`` (see the module
    docstring).

    Args:
        ps: :class:`~cryblock.data.PatchSet` of the whole manifest.
        params: the recipe; ``learn.cv_folds`` folds unless ``k`` is given.
        teacher: the loaded teacher.
        label_index: manifest label → model output index.
        cache: cache folder (teacher outputs, decoded audio) or None.
        train_filter: ``clip → bool``; clips for which it is False are not trained on (they are
            still validated and tested) — for ablations such as "without the new negatives".
        models: which of teacher / float / int8 to judge (ablations compare recipes on the float
            student; without int8 no INT8 model is exported).
        hub: also fit each fold's hub model (:func:`cryblock.blocks.hub.opinion.fit_hub_model`, on
            the teacher embeddings of its training windows) and judge the INT8 device with the hub's
            confirmation on the test nights (the cascade).
        log: progress lines.

    Raises:
        DataError: too few groups for the folds, a fold or inner split without a label.
    """
    from pathlib import Path

    from cryblock.blocks.learn import distill, evaluate, export
    from cryblock.blocks.learn.teacher import cry_probability
    from cryblock.blocks.learn.train import fit_split, model_scorers, subset, teacher_scorer
    from cryblock.data import hold_out_groups

    learn = params.learn
    k = k or learn.cv_folds
    cache = Path(cache) if cache is not None else None
    clips = ps.clips
    folds_idx = fold_clips(clips, k, learn.seed)
    t_all = time.perf_counter()
    t_scores, emb = distill.teacher_outputs(teacher, ps.patches, None if cache is None else cache / "teacher", log=log)
    cry = learn.preset == "cry"
    pos_index = evaluate.params_pos(params)
    folds, per_fold, cost = [], [], {}
    for f, test_idx in enumerate(folds_idx):
        t0 = time.perf_counter()
        rest = np.setdiff1d(np.arange(len(clips)), test_idx)
        tr_idx, va_idx = hold_out_groups(clips, rest, learn.validation_fraction, learn.seed + 1 + f)
        if train_filter is not None:
            tr_idx = np.array([i for i in tr_idx if train_filter(clips[i])], dtype=np.int64)
        for name, part in (("training", tr_idx), ("validation", va_idx)):
            missing = set(label_index) - {clips[i].label for i in part}
            if missing:
                raise DataError(f"fold {f + 1}: label(s) {sorted(missing)} missing from its inner {name} split; "
                                "use fewer folds")
        train, val, test = (subset(ps, idx, label_index) for idx in (tr_idx, va_idx, test_idx))
        log(f"fold {f + 1}/{k}: train {len(train.clip_y)} clips / {len(train.x)} windows, validation "
            f"{len(val.clip_y)} / {len(val.x)}, test {len(test.clip_y)} / {len(test.x)}")
        tr_mask = np.isin(ps.clip_index, tr_idx)
        fitted = fit_split(train, val, params, teacher, t_scores[tr_mask], emb[tr_mask], log=log)
        int8 = None
        if "int8" in models:
            rep = export.representative_patches(train.x[fitted.keep], 300, learn.seed)
            int8 = export.int8_only(fitted.models.model, rep, fitted.models.logits_model)
        hub_model = None
        if hub and int8 is not None:
            from cryblock.blocks.hub.opinion import fit_hub_model

            va_mask = np.isin(ps.clip_index, va_idx)
            hub_model = fit_hub_model(emb[tr_mask][fitted.keep], (np.asarray(train.y) == pos_index)[fitted.keep],
                                      emb[va_mask], np.asarray(val.y) == pos_index, val.clip_index,
                                      label=learn.positive_label, seed=learn.seed)
        del train
        t_scorers = teacher_scorer(teacher, params, fitted.head, cache, hub_model)
        scorers, runner = model_scorers(fitted, int8, t_scorers["teacher"])
        scorers = {m: scorers[m] for m in models}
        try:
            te_mask = np.isin(ps.clip_index, test_idx)
            window = {m: (np.asarray(scorers[m](test.x), np.float64).reshape(-1) if m != "teacher" else
                          (cry_probability(t_scores[te_mask]) if cry
                           else fitted.head.proba(emb[te_mask])[:, pos_index]).astype(np.float64)) for m in models}
            fold = evaluate.evaluate_fold(scorers, val, test, params, pos_index, cache=cache, seed=[learn.seed, f],
                                          test_window=window, log=log,
                                          test_extra={"hub": t_scorers["hub"]} if hub_model is not None else None)
            fold.hub_threshold = hub_model.threshold if hub_model is not None else None
            if not cost and int8 is not None:
                from cryblock.blocks.deploy.model import inspect_model
                from cryblock.blocks.learn.student import architecture, count_params

                cost = {"int8_bytes": len(int8), "params": count_params(fitted.models.model),
                        "macs": inspect_model(int8).macs, "arena_bytes": runner.min_arena_bytes,
                        "architecture": architecture(learn).describe()}
                cost["tflm_ms_per_window_host"] = runner.ms_per_invoke
        finally:
            if runner is not None:
                runner.close()
        fold.test.x = fold.val.x = None  # keep scores and clips only
        folds.append(fold)
        per_fold.append({"fold": f + 1, "train_clips": int(len(tr_idx)), "validation_clips": int(len(va_idx)),
                         "test_clips": int(len(test_idx)), "best_epoch": fitted.fit.best_epoch,
                         "best_val_auc": fitted.fit.best_val_auc, "epochs": len(fitted.fit.history),
                         "filter": fitted.filt, "seconds": time.perf_counter() - t0})
        log(f"fold {f + 1}/{k} done in {per_fold[-1]['seconds']:.0f} s (best epoch {fitted.fit.best_epoch}, "
            f"validation AUC {fitted.fit.best_val_auc:.4f})")
    settings, calibration = evaluate.choose_settings(folds, params, log=log)
    models = evaluate.summarise(folds, params, pos_index, settings, calibration)
    summary = {"folds": k, "per_fold": per_fold, "seconds": time.perf_counter() - t_all,
               "clips": len(clips), "patches": int(len(ps.patches)),
               "positive_clips": int(sum(label_index[c.label] == pos_index for c in clips))}
    return CrossValidation(summary, models, settings, folds, cost)


def train_cross_validated(manifest, out_dir, params: Params = Params(), *, k: int | None = None, teacher=None,
                          max_clips: int | None = None, cache_dir=None, workers: int | None = None,
                          label_map: dict[str, str] | None = None, log: Log = print, force: bool = False):
    """``cryblock train --cv K`` / ``cryblock demo``: cross-validate the recipe (:func:`cross_validate`),
    then train the model to deploy on all groups (``learn.validation_fraction`` of them held out
    for early stopping) and write the run: its detector setting is the cross-validated one, its
    metrics and report are the cross-validated (pooled held-out) figures.

    Returns:
        :class:`~cryblock.blocks.learn.train.RunResult`.

    Raises:
        CryblockError: as :func:`~cryblock.blocks.learn.train.train_from_manifest`, and too few
            groups for ``k`` folds (checked before any training).
    """
    from pathlib import Path

    from cryblock.blocks.learn.train import _teacher, load_patches, prepare_clips, subset, train_arrays
    from cryblock.data import default_cache_dir, hold_out_groups
    from cryblock.output import check_run_output

    t_start = time.perf_counter()
    k = k or params.learn.cv_folds
    check_run_output(out_dir, "run", force=force, inputs=(manifest, teacher if isinstance(teacher, (str, Path)) else None))
    _, clips, params = prepare_clips(manifest, params, label_map=label_map, max_clips=max_clips, log=lambda s: None)
    fold_clips(clips, k, params.learn.seed)  # enough groups? before any work
    teacher = _teacher(teacher)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    mp, ps, params, label_index, info = load_patches(manifest, params, max_clips=max_clips, cache_dir=cache,
                                                     workers=workers, label_map=label_map, log=log)
    cv = cross_validate(ps, params, teacher, label_index, k=k, cache=cache, log=log)
    log(f"cross-validation done in {cv.summary['seconds']:.0f} s; training the model to deploy on all groups")
    tr, va = hold_out_groups(ps.clips, np.arange(len(ps.clips)), params.learn.validation_fraction, params.learn.seed)
    train, val = subset(ps, tr, label_index), subset(ps, va, label_index)
    del ps
    info["split"] = {name: {"clips": int(len(s.clip_y)), "windows": int(len(s.x))}
                     for name, s in (("train", train), ("val", val))}
    return train_arrays(train, val, None, out_dir, params, teacher=teacher, cache_dir=cache, log=log,
                        data_info=info, t_start=t_start, cv=cv)


def evaluate_cross_validated(run_dir, manifest, out_dir, *, k: int | None = None, teacher=None,
                             label_map: dict[str, str] | None = None, workers: int | None = None, cache_dir=None,
                             log: Log = print, force: bool = False) -> dict:
    """``cryblock evaluate --cv K``: cross-validate the recipe of a run (its params.json) on a
    manifest and write metrics.json, report.md and report.html into ``out_dir``.

    Raises:
        CryblockError: the run folder or manifest is unreadable, ``out_dir`` not writable or holding
            another output (unless ``force`` for an earlier evaluation), labels
            the run does not know, fewer groups than folds for a label (says how many each has).
    """
    from pathlib import Path

    from cryblock.blocks.learn import report
    from cryblock.blocks.learn.evaluate import load_run, tuned_on
    from cryblock.blocks.learn.train import _teacher, load_patches, prepare_clips
    from cryblock.data import default_cache_dir
    from cryblock.output import check_run_output

    t_start = time.perf_counter()
    check_run_output(out_dir, "evaluation", force=force, inputs=(run_dir, manifest, teacher))
    run = load_run(run_dir)
    params = run.params
    k = k or params.learn.cv_folds
    _, clips, params = prepare_clips(manifest, params, label_map=label_map, log=lambda s: None)
    fold_clips(clips, k, params.learn.seed)
    teacher = _teacher(teacher)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    mp, ps, params, label_index, info = load_patches(manifest, params, cache_dir=cache, workers=workers,
                                                     label_map=label_map, log=log)
    cv = cross_validate(ps, params, teacher, label_index, k=k, cache=cache, log=log)
    params = params.replace(detector=cv.models["int8"]["detector_setting"])
    metrics = {"kind": "cross-validation", "run": str(run.folder), "manifest": str(mp), "preset": params.learn.preset,
               "labels": list(params.learn.labels), "positive_index": run.pos_index, "data": info, "cost": cv.cost,
               **cv.models, "cv": cv.summary,
               "detector": {**params.to_dict()["detector"], "tuned_on": tuned_on(params, None, cv.summary)},
               "timing": {"total_seconds": time.perf_counter() - t_start}}
    report.publish(out_dir, metrics, params, cv.folds)
    log(report.results_table(metrics))
    return metrics
