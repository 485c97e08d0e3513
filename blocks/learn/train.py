"""The learning stage end to end: manifest → patches → group split → teacher → distil → export →
evaluate → report.

:func:`train_from_manifest` is what ``cryblock train`` / ``cryblock demo`` run;
:func:`train_arrays` is the shared core (also used by the Edge Impulse entry point
:mod:`cryblock.blocks.learn.ei_train`, which has no clips or groups).

Run folder contents (all written into a hidden staging folder inside ``out_dir`` and moved into
place only when everything succeeded, so a failed run leaves no half-written outputs)::

    model.tflite                     float32 student
    model_quantized_int8_io.tflite   INT8 student (int8 in/out), the one deployed
    saved_model.zip                  saved_model/ (Edge Impulse layout)
    hub_model.npz                    the hub's second-opinion classifier on teacher embeddings
    metrics.json, report.md, report.html, params.json
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cryblock.errors import CryblockError, DataError
from cryblock.params import Params

Log = Callable[[str], None]


#: The teacher head of a general-preset run (logistic regression on YAMNet embeddings), saved in the
#: run folder so `cryblock evaluate` can score the teacher again.
TEACHER_HEAD_NAME = "teacher_head.npz"


@dataclass
class Split:
    """Window arrays of one split. ``clip_index`` numbers the split's clips 0..C-1 (windows of a
    clip contiguous, in time order); ``clip_y`` their label indices; ``clips`` the
    :class:`~cryblock.data.Clip` s (None for rows without recordings, as in Edge Impulse data)."""

    x: np.ndarray
    y: np.ndarray
    clip_index: np.ndarray
    clip_y: np.ndarray
    clips: list | None = None

    @property
    def clip_names(self) -> list[str]:
        """Clip paths (or "clip k" without clips)."""
        return [str(c.path) for c in self.clips] if self.clips else [f"clip {k}" for k in range(len(self.clip_y))]


@dataclass
class RunResult:
    """What a training run produced."""

    out_dir: Path
    metrics: dict
    table: str


def subset(ps, clip_ids: np.ndarray, label_index: dict[str, int]) -> Split:
    """The :class:`Split` of a :class:`~cryblock.data.PatchSet`'s clips ``clip_ids`` (labels by
    ``label_index``)."""
    sub = ps.subset_clips(clip_ids)
    y_clip = np.array([label_index[c.label] for c in sub.clips], dtype=np.int64)
    return Split(sub.patches, y_clip[sub.clip_index], sub.clip_index.astype(np.int64), y_clip, list(sub.clips))


def positive_score(probs: np.ndarray, pos_index: int) -> np.ndarray:
    """Positive-class score per window ``[N]``: the sigmoid output of ``[N]``/``[N, 1]``
    probabilities, or column ``pos_index`` of softmax ones ``[N, K]``."""
    return probs.reshape(-1) if probs.ndim == 1 or probs.shape[1] == 1 else probs[:, pos_index]


def sample_clips(clips, max_clips: int, seed: int = 0):
    """At most ``max_clips`` clips for a quick run (``--max-clips``), stratified by label and group.

    Each label gets an equal share of ``max_clips`` (a share a label cannot fill goes to the
    others), so a negative-heavy manifest still yields a learnable subset. Within a label, clips
    are drawn round-robin over its sources (the manifest's ``source`` column) and, within a
    source, over its groups, in a seeded random order: the subset spans as many groups, and as
    many kinds of recording, as its size allows, so the group split of the subset finds every
    label in train, validation and test wherever the full manifest could.

    Returns:
        the chosen clips, in manifest order.

    Raises:
        CryblockError: ``max_clips`` < 3 per label.
    """
    if max_clips is None or max_clips >= len(clips):
        return list(clips)
    labels = sorted({c.label for c in clips})
    if max_clips < 3 * len(labels):
        raise CryblockError(f"--max-clips must be ≥ {3 * len(labels)} (3 per label: train, validation and test "
                            f"each need every label), got {max_clips}")
    rng = np.random.default_rng(seed)
    # label -> source -> group -> clip indices, each level in a seeded random order
    tree: dict[str, dict[str, dict[str, list[int]]]] = {}
    for i, c in enumerate(clips):
        tree.setdefault(c.label, {}).setdefault(c.source, {}).setdefault(c.group, []).append(i)

    def shuffled(items):
        items = list(items)
        return [items[k] for k in rng.permutation(len(items))]

    def round_robin(label: str):
        """The label's clip indices in draw order: one clip per group per round, groups taken
        round-robin over the sources."""
        per_source = []
        for src in sorted(tree[label]):
            groups = [shuffled(tree[label][src][g]) for g in sorted(tree[label][src])]
            groups = shuffled(groups)
            order, depth = [], 0
            while any(depth < len(g) for g in groups):
                order += [g[depth] for g in groups if depth < len(g)]
                depth += 1
            per_source.append(order)
        per_source = shuffled(per_source)
        out, depth = [], 0
        while any(depth < len(s) for s in per_source):
            out += [s[depth] for s in per_source if depth < len(s)]
            depth += 1
        return out

    orders = {lab: round_robin(lab) for lab in labels}
    share = {lab: 0 for lab in labels}
    left = max_clips
    while left > 0:  # equal shares; what a small label cannot take goes to the others
        open_ = [lab for lab in labels if share[lab] < len(orders[lab])]
        if not open_:
            break
        each = max(1, left // len(open_))
        for lab in open_:
            take = min(each, len(orders[lab]) - share[lab], left)
            share[lab] += take
            left -= take
            if left == 0:
                break
    keep = [i for lab in labels for i in orders[lab][:share[lab]]]
    return [clips[i] for i in sorted(keep)]


def manifest_labels(manifest: str | os.PathLike, label_map: dict[str, str] | None = None) -> list[str]:
    """The sorted labels of a manifest (CSV or folder holding manifest.csv) after ``label_map``."""
    from cryblock.data import load_manifest

    mp = Path(manifest)
    clips = load_manifest(mp / "manifest.csv" if mp.is_dir() else mp)
    return sorted({(label_map or {}).get(c.label, c.label) for c in clips})


def prepare_clips(manifest: str | os.PathLike, params: Params, *, label_map: dict[str, str] | None = None,
                  max_clips: int | None = None, log: Log = print) -> tuple[Path, list, Params]:
    """Read a manifest for training or evaluation: map labels, check them against the preset,
    drop repeated recordings (refusing the same audio in two groups), optionally subsample.

    Args:
        manifest: manifest CSV or a folder holding ``manifest.csv``.
        params: the run's parameters. Preset "cry": every label must be the positive label or
            one of the other ``learn.labels`` (negatives); preset "general": the labels are the
            manifest's (sorted), and the returned params carry them.
        label_map: ``{manifest label: label}`` applied first (``--map-label Cry=cry``).
        max_clips: keep a label-stratified random subset of this many clips.

    Returns:
        (manifest path, clips, params).

    Raises:
        DataError: unexpected labels (listed), a positive label no clip has, one label only,
            the same recording in two groups or under two labels.
    """
    from cryblock.data import load_manifest

    mp = Path(manifest)
    if mp.is_dir():
        mp = mp / "manifest.csv"
    clips, params = select_clips(load_manifest(mp), params, mp, label_map=label_map, max_clips=max_clips, log=log)
    return mp, clips, params


def select_clips(clips: list, params: Params, where: str | os.PathLike, *, label_map: dict[str, str] | None = None,
                 max_clips: int | None = None, log: Log = print, content_key=None) -> tuple[list, Params]:
    """The clips a run trains on (:func:`prepare_clips` for a manifest, ``train --dataset`` for
    a dataset's index): labels mapped and checked against the preset, repeated recordings
    dropped, optionally a label-stratified subset.

    Args:
        clips: :class:`~cryblock.data.Clip` s in manifest order.
        where: the manifest or dataset named in errors.
        content_key: ``Clip -> str`` identity of a recording for the repeat check (default: the
            sha1 of the file, read now).

    Returns:
        (clips, params; for preset "general" params carry the labels found).

    Raises:
        DataError: as :func:`prepare_clips`.
    """
    from cryblock.data import deduplicate

    mp = where
    if label_map:
        clips = [dataclasses.replace(c, label=label_map.get(c.label, c.label)) for c in clips]
    learn = params.learn
    found = sorted({c.label for c in clips})
    if learn.preset == "cry":
        unexpected = [lab for lab in found if lab not in learn.labels]
        if unexpected:
            negatives = [lab for lab in learn.labels if lab != learn.positive_label]
            raise DataError(f"{mp}: unexpected label(s) {unexpected}: the cry preset trains {learn.positive_label!r} "
                            f"against {negatives}; map them with --map-label LABEL={learn.positive_label} (or ="
                            f"{negatives[0]}), or train --preset general")
        if learn.positive_label not in found:
            raise DataError(f"{mp}: no clip has the positive label {learn.positive_label!r} (labels: {found})")
        if len(found) < 2:
            raise DataError(f"{mp}: only one label {found}; need positive and negative clips")
    else:
        if learn.positive_label not in found:
            raise DataError(f"{mp}: preset 'general' needs the label the detector fires on: "
                            f"--positive-label must be one of {found} (got {learn.positive_label!r})")
        if tuple(found) != learn.labels:
            params = params.replace(learn={"labels": found})
    clips, repeats = deduplicate(clips, mp, key=content_key)
    for w in repeats:
        log(f"warning: {w}")
    if max_clips:
        clips = sample_clips(clips, max_clips, params.learn.seed)
    return clips, params


def load_patches(manifest, params: Params, *, max_clips: int | None = None, cache_dir=None, workers: int | None = None,
                 label_map: dict[str, str] | None = None, log: Log = print):
    """Manifest → (manifest path, :class:`~cryblock.data.PatchSet`, params, label index, data info)
    for training: :func:`prepare_clips`, then every clip's patches (cached)."""
    from cryblock.data import compute_patches, default_cache_dir
    from cryblock.progress import Progress

    mp, clips, params = prepare_clips(manifest, params, label_map=label_map, max_clips=max_clips, log=log)
    learn = params.learn
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    with Progress(len(clips), f"features of {len(clips)} clips", log) as prog:
        ps = compute_patches(clips, params.dsp, workers=workers, cache_dir=cache, progress=prog.update)
    t_feat = time.perf_counter() - t0
    log(f"features: {len(ps.patches)} patches of {len(ps.clips)} clips in {t_feat:.1f} s"
        + (f" ({len(ps.skipped)} clip(s) skipped, first: {ps.skipped[0][1]})" if ps.skipped else ""))
    found = sorted({c.label for c in ps.clips})
    label_index = ({lab: int(lab == learn.positive_label) for lab in found} if learn.preset == "cry"
                   else {lab: i for i, lab in enumerate(learn.labels)})
    info = {"manifest": str(mp), "clips": len(ps.clips), "patches": int(len(ps.patches)),
            "skipped": [list(s) for s in ps.skipped], "features_seconds": t_feat}
    return mp, ps, params, label_index, info


def train_from_manifest(manifest: str | os.PathLike, out_dir: str | os.PathLike, params: Params = Params(), *,
                        teacher=None, max_clips: int | None = None, cache_dir: str | os.PathLike | None = None,
                        workers: int | None = None, label_map: dict[str, str] | None = None,
                        log: Log = print, force: bool = False) -> RunResult:
    """Train, export, evaluate and report one run from a manifest CSV (one group split: train /
    validation / test).

    Args:
        manifest: manifest CSV (``path,label,group`` …) or a folder holding ``manifest.csv``.
        out_dir: run folder (created). An existing non-empty one is refused unless ``force``
            (:func:`cryblock.output.check_run_output`).
        params: all parameters; ``learn`` drives the split and training, ``night`` the nursery
            nights and the calibration. For preset "general" the labels are the manifest's.
        teacher: a loaded teacher, a path to one, or None (``$CRYBLOCK_TEACHER``/cache/download).
        max_clips: use a subset stratified by label and group of this many clips (quick runs).
        cache_dir: feature, teacher-output and decoded-audio cache (default ``$CRYBLOCK_CACHE``
            or ``~/.cache/cryblock``).
        workers: feature-extraction processes.
        label_map: manifest label → training label (see :func:`prepare_clips`).
        log: progress lines.
        force: replace an earlier run in ``out_dir``.

    Returns:
        :class:`RunResult`.

    Raises:
        CryblockError: bad manifest or labels, ``out_dir`` not writable or holding another run, too few groups, one class
            only, a label missing from a split, missing/corrupt teacher, … (checked before the long
            work where possible; nothing is written to ``out_dir`` then).
    """
    from cryblock.data import default_cache_dir, split_by_group
    from cryblock.output import check_run_output

    t_start = time.perf_counter()
    check_run_output(out_dir, "run", force=force,
                     inputs=(manifest, teacher if isinstance(teacher, (str, os.PathLike)) else None))
    prepare_clips(manifest, params, label_map=label_map, max_clips=max_clips, log=lambda s: None)  # fail fast
    teacher = _teacher(teacher)  # fail fast on a missing/corrupt teacher, before feature extraction
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    mp, ps, params, label_index, info = load_patches(manifest, params, max_clips=max_clips, cache_dir=cache,
                                                     workers=workers, label_map=label_map, log=log)
    learn = params.learn
    tr, va, te = split_by_group(ps.clips, learn.test_fraction, learn.validation_fraction, learn.seed)
    splits = {name: subset(ps, ids, label_index) for name, ids in (("train", tr), ("val", va), ("test", te))}
    log("split by group: " + ", ".join(f"{k} {len(s.clip_y)} clips / {len(s.x)} windows" for k, s in splits.items()))
    info["split"] = {k: {"clips": int(len(s.clip_y)), "windows": int(len(s.x)),
                         "positive_clips": int(np.sum(s.clip_y == 1)) if learn.preset == "cry" else None}
                     for k, s in splits.items()}
    return train_arrays(splits["train"], splits["val"], splits["test"], out_dir, params, teacher=teacher,
                        cache_dir=cache, log=log, data_info=info, t_start=t_start)


def _teacher(teacher):
    if teacher is None or isinstance(teacher, (str, os.PathLike)):
        from cryblock.blocks.learn.teacher import load_teacher

        return load_teacher(teacher)
    return teacher


@dataclass
class Fitted:
    """A trained student and what went into it.

    Attributes:
        models: :class:`~cryblock.blocks.learn.student.StudentModels` (best weights restored).
        fit: per-epoch history and the chosen epoch.
        filt: teacher-filter counts (windows kept per class).
        keep: bool ``[n_train]`` windows the filter kept.
        head: the general preset's teacher head (logistic regression on embeddings), else None.
        pos_index: index of the positive label in the model output.
    """

    models: object
    fit: object
    filt: dict
    keep: np.ndarray
    head: object | None
    pos_index: int


def cry_targets(y: np.ndarray, p_teacher: np.ndarray, learn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher-as-filter and soft targets of the cry preset.

    Args:
        y: int ``[N]`` window labels (1 = cry).
        p_teacher: float32 ``[N]`` YAMNet's cry probability of each window
            (:func:`cryblock.blocks.learn.teacher.cry_probability`).
        learn: ``filter_pos``, ``filter_neg``, ``neg_filter``.

    Returns:
        (keep bool ``[N]``, teacher logits float32 ``[N, 1]``, positive mask bool ``[N]``).
    """
    from cryblock.blocks.learn import distill

    pos_mask = np.asarray(y) == 1
    keep = distill.teacher_filter(pos_mask, p_teacher, learn.filter_pos, learn.filter_neg)
    if learn.neg_filter == "clip":  # keep the negatives the teacher finds cry-like, target clipped
        p_teacher = np.where(pos_mask, p_teacher, np.minimum(p_teacher, learn.filter_neg))
        keep = keep | ~pos_mask
    return keep, distill.logit(p_teacher)[:, None], pos_mask


def filter_counts(keep: np.ndarray, pos_mask: np.ndarray, learn, log: Log = print) -> dict:
    """Windows the teacher filter kept per class (logged; metrics.json's ``filter``).

    Raises:
        DataError: no positive or no negative window kept.
    """
    cry = learn.preset == "cry"
    filt = {"positive_windows": int(np.sum(pos_mask)), "positive_kept": int(np.sum(pos_mask & keep)),
            "negative_windows": int(np.sum(~pos_mask)), "negative_kept": int(np.sum(~pos_mask & keep))}
    log(f"teacher filter: kept {filt['positive_kept']}/{filt['positive_windows']} positive windows "
        f"(p > {learn.filter_pos}), {filt['negative_kept']}/{filt['negative_windows']} negative"
        + ((" (p < {0})" if learn.neg_filter == "drop" else " (all; p clipped to {0})").format(learn.filter_neg)
           if cry else f" (own-label p > {learn.filter_pos})"))
    if filt["positive_kept"] == 0 or filt["negative_kept"] == 0:
        raise DataError(f"the teacher filter left {filt['positive_kept']} positive / {filt['negative_kept']} "
                        f"negative training windows; loosen filter_pos/filter_neg")
    return filt


def fit_split(train: Split, val: Split, params: Params, teacher, t_scores: np.ndarray, emb: np.ndarray, *,
              flat_input: bool = False, log: Log = print) -> Fitted:
    """Distil the student on one training split.

    Args:
        train: training windows (x float32 ``[N, 96, 64]``, labels 0/1 or label indices).
        val: validation windows (early stopping on their AUC).
        params: recipe (``learn``, ``augment``, ``dsp``).
        teacher: the loaded teacher (re-scores augmented windows).
        t_scores, emb: the teacher's scores ``[N, 521]`` and embeddings ``[N, 1024]`` of ``train``.
        flat_input: student takes flat ``[6144]`` input (Edge Impulse).

    Raises:
        DataError: the teacher filter leaves no positive or no negative window.
    """
    from cryblock.blocks.learn import augment, distill
    from cryblock.blocks.learn.student import build_student
    from cryblock.blocks.learn.teacher import cry_probability

    learn = params.learn
    cry = learn.preset == "cry"
    n_labels = 2 if cry else len(learn.labels)
    aux = list(learn.aux_classes) if learn.aux_weight > 0 else None
    head = None
    y_tr = np.asarray(train.y)
    if cry:
        pos_index = 1
        keep, zt, pos_mask = cry_targets(y_tr, cry_probability(t_scores), learn)
    else:
        pos_index = learn.labels.index(learn.positive_label)
        head = distill.fit_teacher_head(emb, train.y, learn.labels, learn.seed)
        zt = head.logits(emb)
        # general: keep windows whose teacher-head probability of their own label > filter_pos
        keep = head.proba(emb)[np.arange(len(y_tr)), y_tr] > learn.filter_pos
        pos_mask = y_tr == pos_index
    filt = filter_counts(keep, pos_mask, learn, log)
    kept = np.flatnonzero(keep)
    weight = None
    if learn.negative_balance > 0 and train.clips is not None:
        cats = np.array([c.category or c.label for c in train.clips], dtype=object)[train.clip_index]
        weight = distill.category_weights(cats[kept], learn.negative_balance)
    data = distill.DistillData(train.x[keep], y_tr[keep], zt[keep], emb[keep] if learn.embedding_weight > 0 else None,
                               pos_mask[keep], aux_targets=t_scores[keep][:, aux] if aux else None,
                               source_index=kept, neg_weight=weight)
    augmenter = None
    if params.augment.active:
        augmenter = augment.Augmenter(params.augment, params.dsp, train.x,
                                      None if train.clips is None else train.clip_index, np.flatnonzero(~pos_mask),
                                      seed=learn.seed)

    def rescore(patches: np.ndarray):
        """Teacher targets of augmented windows (not cached: they are new every epoch)."""
        sc, em = teacher.predict(patches, batch_size=256)
        z = distill.logit(cry_probability(sc))[:, None] if cry else head.logits(em)
        return z, (em if learn.embedding_weight > 0 else None), (sc[:, aux] if aux else None)

    models = build_student(learn, params.dsp, n_out=1 if cry else n_labels,
                           embedding_projection=learn.embedding_weight > 0, aux_outputs=len(aux) if aux else 0,
                           flat_input=flat_input)
    fit = distill.fit_student(models, data, val.x, val.y, learn, augmenter=augmenter, rescore=rescore, log=log)
    return Fitted(models, fit, filt, keep, head, pos_index)


def teacher_scorer(teacher, params: Params, head, cache_dir: str | os.PathLike | None, hub=None) -> dict:
    """The teacher's positive score of any patches ``[n, 96, 64]`` → ``[n]`` (cry preset: the
    max of YAMNet's two cry classes; general: the teacher head), cached by the patches' bytes:
    ``{"teacher": scorer}``. With a hub model (:class:`cryblock.blocks.hub.opinion.HubModel`) also
    ``"hub"``: its score of the teacher's embeddings, from the same teacher pass (not cached)."""
    from cryblock.blocks.learn import distill
    from cryblock.blocks.learn.night import teacher_score_cache
    from cryblock.blocks.learn.teacher import cry_probability

    learn = params.learn
    pos = 1 if learn.preset == "cry" else learn.labels.index(learn.positive_label)

    def positive(sc, em):
        return cry_probability(sc) if learn.preset == "cry" else head.proba(em)[:, pos]

    if hub is not None:
        last: dict = {}

        def outputs(x):
            if last.get("x") is not x:  # the night scorer hands every model the same batch
                sc, em = teacher.predict(np.asarray(x, np.float32), batch_size=256)
                last.update(x=x, teacher=positive(sc, em), hub=hub.proba(em))
            return last
        return {"teacher": lambda x: outputs(x)["teacher"], "hub": lambda x: outputs(x)["hub"]}

    def score(x):
        return positive(*distill.teacher_outputs(teacher, np.asarray(x, np.float32), None))
    ident = f"{getattr(teacher, 'sha256', None) or getattr(teacher, 'path', '')}|{learn.preset}|" + (
        "" if head is None else hashlib.sha1(np.asarray(head.clf.coef_).tobytes()).hexdigest())
    return {"teacher": teacher_score_cache(score, None if cache_dir is None else Path(cache_dir) / "teacher-night",
                                           ident)}


def model_scorers(fitted: Fitted, int8: bytes | None, teacher_score, *, workers: int | None = None):
    """``({"teacher", "float", "int8"} → patches → positive score [n], INT8 runner)``: the three
    models as scorers; the INT8 one runs in TFLite Micro (:class:`~.evaluate.TflmPool`, one invoke
    per patch as on the device). Close the runner when done. Without ``int8`` bytes there is no
    INT8 scorer and the runner is None."""
    from cryblock.blocks.learn import distill
    from cryblock.blocks.learn.evaluate import TflmPool

    pos = fitted.pos_index
    scorers = {"teacher": teacher_score,
               "float": lambda x: positive_score(distill.predict_batches(fitted.models.model, x), pos)}
    runner = None
    if int8 is not None:
        runner = TflmPool(int8, workers)
        scorers["int8"] = lambda x: positive_score(runner.predict(x), pos)
    return scorers, runner


def train_arrays(train: Split, val: Split, test: Split | None, out_dir: str | os.PathLike, params: Params = Params(), *,
                 teacher=None, cache_dir: str | os.PathLike | None = None, log: Log = print,
                 data_info: dict | None = None, flat_input: bool = False, t_start: float | None = None,
                 write_report: bool = True, cv: dict | None = None) -> RunResult:
    """Distil, export, calibrate, evaluate and report from split window arrays.

    Args:
        train, val, test: :class:`Split` (x float32 ``[N, 96, 64]``). Labels are 0/1 with
            1 = positive (preset "cry") or indices into ``params.learn.labels`` ("general").
            Splits that carry their ``clips`` get the nursery nights (the detector is calibrated
            on the validation night); without clips (Edge Impulse rows) the detector threshold is
            the validation best clip-F1 one. ``test`` None: no test evaluation here — the run's
            figures come from ``cv`` (``cryblock demo`` deploys a model of the recipe it
            cross-validated, with the cross-validated detector setting in ``params.detector``).
        out_dir: run folder.
        params: parameters.
        teacher: loaded teacher / path / None.
        cache_dir: cache folder (teacher outputs under ``teacher/``, decoded audio under
            ``waves/``); None = no cache.
        log: progress lines.
        data_info: dataset description stored in metrics.json.
        flat_input: student takes flat ``[6144]`` input (Edge Impulse).
        write_report: also write report.md/report.html (metrics.json and params.json always).
        cv: the :class:`~cryblock.blocks.learn.cv.CrossValidation` of this recipe: its calibrated
            detector setting is deployed and its pooled figures are the run's metrics and report.

    Returns:
        :class:`RunResult`.
    """
    from cryblock.blocks.learn import distill, export

    t_start = t_start or time.perf_counter()
    learn = params.learn
    check_split_labels([("train", train.y), ("validation", val.y)] + ([("test", test.y)] if test is not None else []),
                       learn)
    teacher = _teacher(teacher)
    cache = Path(cache_dir) if cache_dir else None
    timing = {}

    # --- teacher outputs (cached) of the training windows, then the student
    t0 = time.perf_counter()
    t_scores, emb = distill.teacher_outputs(teacher, train.x, None if cache is None else cache / "teacher", log=log)
    timing["teacher_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = fit_split(train, val, params, teacher, t_scores, emb, flat_input=flat_input, log=log)
    timing["train_seconds"] = time.perf_counter() - t0
    del t_scores
    rep = export.representative_patches(train.x[fitted.keep], 300, learn.seed)
    hub_train = (emb[fitted.keep], (np.asarray(train.y) == fitted.pos_index)[fitted.keep])
    del emb
    return finish_run(fitted, rep, hub_train, val, test, out_dir, params, teacher=teacher, cache_dir=cache, log=log,
                      data_info=data_info, flat_input=flat_input, t_start=t_start, write_report=write_report, cv=cv,
                      timing=timing)


def check_split_labels(named: list[tuple[str, np.ndarray]], learn) -> None:
    """Refuse splits a run cannot learn or be judged on.

    Args:
        named: ``(split name, window labels int [N])`` pairs; "validation" may lack a label
            but not a class.
        learn: the run's :class:`~cryblock.params.LearnParams` (preset, labels).

    Raises:
        DataError: a split without windows, with one class only, or (train/test) missing a label.
    """
    cry = learn.preset == "cry"
    n_labels = 2 if cry else len(learn.labels)
    for name, y in named:
        if len(y) == 0:
            raise DataError(f"the {name} split has no windows")
        present = set(np.unique(y).tolist())
        if len(present) < 2:
            raise DataError(f"the {name} split has only one class ({sorted(present)}); need positive and negative windows")
        if name != "validation" and len(present) < n_labels:
            names = ["negative", "positive"] if cry else list(learn.labels)
            miss = [names[i] for i in range(n_labels) if i not in present]
            raise DataError(f"label(s) {miss} missing from the {name} split")


def finish_run(fitted: Fitted, rep: np.ndarray, hub_train: tuple[np.ndarray, np.ndarray], val: Split,
               test: Split | None, out_dir: str | os.PathLike, params: Params, *, teacher, cache_dir=None,
               log: Log = print, data_info: dict | None = None, flat_input: bool = False,
               t_start: float | None = None, write_report: bool = True, cv=None, timing: dict | None = None) -> RunResult:
    """Export, calibrate, evaluate and report a trained student (the part of :func:`train_arrays`
    after the fit, shared with ``train --dataset``, :mod:`cryblock.blocks.learn.stream`).

    Args:
        fitted: the trained student (:func:`fit_split` or the streamed fit).
        rep: float32 ``[≤300, 96, 64]`` kept training windows for INT8 calibration
            (:func:`cryblock.blocks.learn.export.representative_patches`).
        hub_train: (teacher embeddings float32 ``[M, 1024]``, is-positive bool ``[M]``) of kept
            training windows: the hub model's training data.
        val, test: in-memory splits (see :func:`train_arrays`).
        timing: seconds already spent (teacher, training), completed here.

    Other arguments as :func:`train_arrays`. Everything is written to a staging folder and moved
    into ``out_dir`` only when all of it succeeded.
    """
    from cryblock.blocks.learn import distill, evaluate, export, report
    from cryblock.blocks.deploy.model import inspect_model
    from cryblock.blocks.learn.student import architecture, count_params
    from cryblock.output import staging_dir

    t_start = t_start or time.perf_counter()
    learn = params.learn
    cry = learn.preset == "cry"
    out = Path(out_dir)
    teacher = _teacher(teacher)
    cache = Path(cache_dir) if cache_dir else None
    timing = dict(timing or {})
    models, pos_index = fitted.models, fitted.pos_index

    staging = staging_dir(out)
    runner = None
    try:
        t0 = time.perf_counter()
        log("exporting float, INT8 and SavedModel …")
        # the firmware's INT8 model outputs logits; Edge Impulse's (flat input) probabilities
        exp = export.export_all(models.model, rep, staging, logits_model=None if flat_input else models.logits_model)
        timing["export_seconds"] = time.perf_counter() - t0
        if fitted.head is not None:
            fitted.head.save(staging / TEACHER_HEAD_NAME)
        # --- the hub's second-opinion model on the embeddings of the kept training windows (hub.opinion)
        from cryblock.blocks.hub.opinion import HUB_MODEL_NAME, fit_hub_model

        _, emb_val = distill.teacher_outputs(teacher, val.x, None if cache is None else cache / "teacher")
        hub = fit_hub_model(hub_train[0], hub_train[1], emb_val,
                            np.asarray(val.y) == pos_index, val.clip_index, label=learn.positive_label, seed=learn.seed)
        hub.save(staging / HUB_MODEL_NAME)
        log(f"hub model: {hub.kind} (validation AUC " + ", ".join(f"{k} {v:.3f}" for k, v in hub.val_auc.items())
            + f"), threshold {hub.threshold:.3f}")
        del hub_train, emb_val
        t_scorers = teacher_scorer(teacher, params, fitted.head, cache, hub)
        scorers, runner = model_scorers(fitted, exp.int8_tflite, t_scorers["teacher"])

        t0 = time.perf_counter()
        if cv is not None:  # the cross-validated recipe's setting, calibrated on its pooled validation nights
            settings, results, calibration, folds = cv.settings, cv.models, None, cv.folds
        else:
            fold = evaluate.evaluate_fold(scorers, val, test, params, pos_index, cache=cache, log=log,
                                          test_extra={"hub": t_scorers["hub"]})
            fold.hub_threshold = hub.threshold
            settings, calibration = evaluate.choose_settings([fold], params, log=log)
            results = evaluate.summarise([fold], params, pos_index, settings, calibration) if test is not None else {}
            folds = [fold]
        timing["evaluation_seconds"] = time.perf_counter() - t0
        params = dataclasses.replace(params, detector=settings["int8"])
        if val.clips is not None:  # the cries `cryblock calibrate` lays into a parent's recording
            data_info = {**(data_info or {}), "validation_cries": [
                {"path": str(c.path), "group": c.group} for c, y in zip(val.clips, val.clip_y) if y == pos_index]}
        cost = {"int8_bytes": len(exp.int8_tflite), "float_bytes": len(exp.float_tflite),
                # MACs of the INT8 graph the device runs (convolutions, depthwise, dense, plus one
                # per element read by pools and means): the figure cryblock build and tune report
                "params": count_params(models.model), "macs": inspect_model(exp.int8_tflite).macs,
                "arena_bytes": runner.min_arena_bytes, "architecture": architecture(learn).describe(),
                # host time of one TFLM invoke: with ``cv`` this model is not scored here, so the
                # folds' figure (models of the same architecture)
                "tflm_ms_per_window_host": runner.ms_per_invoke if cv is None else
                cv.cost.get("tflm_ms_per_window_host")}
        timing["total_seconds"] = time.perf_counter() - t_start
        metrics = {
            "preset": learn.preset, "labels": list(learn.labels), "positive_index": pos_index,
            "data": data_info or {}, "filter": fitted.filt,
            "training": {"history": fitted.fit.history, "best_epoch": fitted.fit.best_epoch,
                         "best_val_auc": fitted.fit.best_val_auc, "windows_kept": int(np.sum(fitted.keep)),
                         "augmentation": params.augment.active, "aux_head": learn.aux_weight > 0},
            **{k: results.get(k) for k in ("teacher", "float", "int8")},
            "int8_vs_float": results.get("int8_vs_float"), "cost": cost,
            "detector": {**params.to_dict()["detector"],
                         "tuned_on": evaluate.tuned_on(params, calibration, cv and cv.summary)},
            "calibration": calibration, "night": results.get("night"), "cv": cv and cv.summary,
            "timing": timing,
        }
        if not cry and test is not None:
            for k, f in (("teacher", None), ("float", None), ("int8", None)):
                probs = (fitted.head.proba(distill.teacher_outputs(teacher, test.x, None if cache is None else
                                                                   cache / "teacher")[1]) if k == "teacher" else
                         distill.predict_batches(models.model, test.x) if k == "float" else runner.predict(test.x))
                metrics[k]["accuracy"] = float(np.mean(np.argmax(probs, axis=1) == test.y))
                metrics[k]["macro_auc"] = distill.val_auc(test.y, probs)
        params.save(staging / "params.json")
        table = report.results_table(metrics)
        if write_report:
            report.write_reports(staging, metrics, params, folds)
        report.write_metrics(staging, metrics)
        # --- move everything into place
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)
    finally:
        if runner is not None:
            runner.close()
        shutil.rmtree(staging, ignore_errors=True)
    log(table)
    return RunResult(out, metrics, table)
