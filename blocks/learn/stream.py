"""``cryblock train --dataset``: the learning stage on a sharded dataset (``cryblock prepare``),
with the training split streamed.

Memory does not grow with the corpus's training split: the dataset's index (a few bytes per patch:
clip, group, label, the teacher's cry score) chooses everything — the clips (labels, repeats,
``--max-clips``), the split by group (:func:`cryblock.data.split_by_group` on the index's clips, so
the split equals the one of ``train --data`` on the same manifest), the teacher-as-filter and the
soft targets (from the stored teacher scores) and each epoch's resampled windows
(:func:`cryblock.blocks.learn.distill.resample_epoch`, hard-negative mining included). Only the
patches of the epoch's windows are read, through :meth:`Dataset.tf_dataset
<cryblock.blocks.dataset.shards.Dataset.tf_dataset>` (shards interleaved, a shuffle buffer of
``shuffle_buffer`` rows), batched, into the same training loop as ``train --data``
(:func:`~cryblock.blocks.learn.distill.fit_student` with :class:`~cryblock.blocks.learn.distill.StreamData`).

Early stopping streams the validation split too (its AUC each epoch, read a row group at a
time); after training the validation and test splits are read into memory (calibration, the
nights, the test figures: that part of the run grows with them);
the hub model is fitted on the teacher embeddings of at most :data:`HUB_SAMPLE` kept training
windows (the dataset's stored embeddings, or the teacher run on those patches). The run folder is
the one ``train --data`` writes (:func:`cryblock.blocks.learn.train.finish_run`).

Not on a stream (refused with one error line): preset "general" (its teacher head is fitted on
every training embedding) and augmentation other than the default (it mixes arbitrary training
windows); the default recipe's noise-robust mixing is switched off, with a log line.

Why the model is not bit-identical to ``train --data``'s: the dataset stores float16 patches
(its teacher scores are of those patches), and a stream's batches follow the shuffle buffer, not
the in-memory path's permutation; the split, the filter's choices (up to windows whose teacher
score sits at a threshold) and the number of windows per epoch are the same. An epoch that fits in
the shuffle buffer is read whole and batched in exactly the in-memory path's order (a buffer that
holds everything is a full shuffle: that one), so on a small corpus the two paths differ only by
the float16 patches.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryblock.blocks.learn.yamnet import EMBEDDING_SIZE
from cryblock.errors import DataError
from cryblock.params import CRY_CLASSES, AugmentParams, Params

from .train import Log, RunResult, Split

#: At most this many kept training windows train the hub model (bounded memory: 80 MB of embeddings).
HUB_SAMPLE = 20_000
#: Rows in the stream's shuffle buffer (≈ 110 MB of float32 patches and scores).
SHUFFLE_BUFFER = 4096


def _teacher_digest(teacher) -> str:
    from cryblock.blocks.dataset.prepare import teacher_digest

    return getattr(teacher, "sha256", None) or teacher_digest(Path(teacher.path))


def rebatch(batches, size: int):
    """Patches of :class:`~cryblock.blocks.dataset.shards.RowBatch` es (any sizes) in batches of
    exactly ``size`` rows (the last one smaller): float32 ``[size, frames, bands]``, in order.
    Models then see at most two batch shapes, so TensorFlow/oneDNN cache two sets of kernels
    instead of one per row-group selection size (which grows with the corpus)."""
    buf, n = [], 0
    for b in batches:
        x = b.patches
        while len(x):
            take = min(size - n, len(x))
            buf.append(x[:take])
            n += take
            x = x[take:]
            if n == size:
                yield np.concatenate(buf)
                buf, n = [], 0
    if n:
        yield np.concatenate(buf)


def _split(ds, ix, rows: np.ndarray, clips: list, clip_ids: np.ndarray, y_of_clip: dict[int, int]) -> Split:
    """The in-memory :class:`Split` of the given clips (ascending ``clip_ids``, their ``clips``)."""
    x = np.empty((len(rows), *ds.patch_shape), np.float32)  # filled row group by row group: no second copy
    at = 0
    for b in ds.read_rows(rows):
        x[at:at + len(b.rows)] = b.patches
        at += len(b.rows)
    cid = ix.clip_id[rows]
    clip_y = np.array([y_of_clip[int(c)] for c in clip_ids], np.int64)
    clip_index = np.searchsorted(clip_ids, cid).astype(np.int64)
    return Split(x, clip_y[clip_index], clip_index, clip_y, clips)


@dataclass
class StreamedRun:
    """A dataset opened for training, everything chosen from its index (no patch read yet).

    Attributes:
        ds: the :class:`~cryblock.blocks.dataset.shards.Dataset`; ix: its index.
        params: the run's parameters (labels as trained).
        parts: ``{"train"|"val"|"test": (ascending clip ids int64 [C], their Clips)}``.
        rows: ``{split: ascending row ids int64 [n]}``; y: ``{split: labels int64 [n]}`` (1 = cry).
        y_of_clip: ``{clip id: label}``.
        keep, zt, pos_mask: teacher-filter mask bool, teacher logits float32 ``[n, 1]``, positive
            mask bool, over the training rows (:func:`~cryblock.blocks.learn.train.cry_targets`).
        filt: the filter's counts; weight: category-balance draw weights of the kept rows or None.
        aux_cols: dataset columns of ``learn.aux_classes`` (aux_weight > 0) or None.
        info: the data description for metrics.json.
    """

    ds: object
    ix: object
    params: Params
    parts: dict
    rows: dict
    y: dict
    y_of_clip: dict
    keep: np.ndarray
    zt: np.ndarray
    pos_mask: np.ndarray
    filt: dict
    weight: np.ndarray | None
    aux_cols: list | None
    info: dict

    @property
    def kept_rows(self) -> np.ndarray:
        """int64 ascending row ids of the training windows the filter kept."""
        return self.rows["train"][self.keep]

    def split(self, name: str) -> Split:
        """The in-memory :class:`Split` of ``"val"`` or ``"test"`` (its patches read now)."""
        ids, clips = self.parts[name]
        return _split(self.ds, self.ix, self.rows[name], clips, ids, self.y_of_clip)


def open_for_training(dataset: str | os.PathLike, params: Params, teacher, *, max_clips: int | None = None,
                      label_map: dict[str, str] | None = None, log: Log = print) -> StreamedRun:
    """Open and check a dataset for ``params`` and the loaded ``teacher``, choose the clips, split
    them by group and apply the teacher filter, all from the index.

    Raises:
        DataError: see :func:`train_from_dataset`.
    """
    from cryblock.blocks.dataset.shards import open_dataset
    from cryblock.blocks.learn import distill
    from cryblock.blocks.learn.train import check_split_labels, cry_targets, filter_counts, select_clips
    from cryblock.data import split_by_group

    learn = params.learn
    if learn.preset != "cry":
        raise DataError(f"{dataset}: train --dataset trains the cry preset only (preset 'general' fits its teacher "
                        "head on every training embedding in memory); use train --data")
    default_mixing = params.augment.active and params.augment == AugmentParams()
    if params.augment.active and not default_mixing:
        raise DataError(f"{dataset}: augmentation mixes arbitrary training windows and does not work on a stream; "
                        "train --dataset without the augmentation flags, or train --data")
    if default_mixing:  # the default recipe's noise-robust mixing: off on a stream (said below, after the checks)
        params = params.replace(augment=AugmentParams.OFF)
    ds = open_dataset(dataset, dsp=params.dsp, teacher_sha256=_teacher_digest(teacher))
    meta_file = ds.path / "dataset.json"
    missing = [c for c in CRY_CLASSES if c not in ds.classes]
    if missing:
        raise DataError(f"{meta_file}: the teacher scores of the cry classes {list(CRY_CLASSES)} are not stored "
                        f"(classes {list(ds.classes)[:8]}…); prepare it with --classes including 19,20")
    if learn.embedding_weight > 0 and not ds.embedding:
        raise DataError(f"{meta_file}: embedding_weight > 0 needs the teacher embeddings; prepare it with --embedding")
    aux_cols = None
    if learn.aux_weight > 0:
        gone = [c for c in learn.aux_classes if c not in ds.classes]
        if gone:
            raise DataError(f"{meta_file}: aux_weight > 0 needs the scores of classes {gone}, not stored; prepare it "
                            "with --classes including them")
        aux_cols = [ds.classes.index(c) for c in learn.aux_classes]

    t0 = time.perf_counter()
    ix = ds.index()
    all_clips, all_ids = ix.clips(), ix.clip_ids
    # a clip is (path, group): the copies of a replicated corpus share paths, not groups
    first: dict[tuple[str, str], int] = {}
    for c, cid in zip(all_clips, all_ids):
        first.setdefault((str(c.path), c.group), int(cid))
    sha1 = {(str(c.path), c.group): ix.clip_files[int(cid)][1] for c, cid in zip(all_clips, all_ids)}
    clips, params = select_clips(all_clips, params, meta_file, label_map=label_map, max_clips=max_clips, log=log,
                                 content_key=lambda c: sha1[(str(c.path), c.group)])
    learn = params.learn
    ids = np.array([first[(str(c.path), c.group)] for c in clips], np.int64)
    y_of_clip = {int(i): int(c.label == learn.positive_label) for i, c in zip(ids, clips)}
    tr, va, te = split_by_group(clips, learn.test_fraction, learn.validation_fraction, learn.seed)
    parts = {}
    for name, sel in (("train", tr), ("val", va), ("test", te)):
        order = np.argsort(ids[sel])
        parts[name] = (ids[sel][order], [clips[k] for k in np.asarray(sel)[order]])
    rows = {name: ix.rows_of_clips(cids) for name, (cids, _) in parts.items()}
    y_rows = {name: np.array([y_of_clip[int(c)] for c in ix.clip_id[r]], np.int64) for name, r in rows.items()}
    info = {"dataset": str(ds.path), "clips": len(clips), "patches": int(sum(len(r) for r in rows.values())),
            "skipped": [], "index_seconds": time.perf_counter() - t0,
            "split": {k: {"clips": len(parts[k][0]), "windows": int(len(rows[k])),
                          "positive_clips": int(sum(y_of_clip[int(c)] for c in parts[k][0]))}
                      for k in ("train", "val", "test")}}
    if default_mixing:
        log("augmentation: off (the default noise-robust mixing needs --data: a stream cannot mix arbitrary "
            "training windows)")
    log("split by group: " + ", ".join(f"{k} {v['clips']} clips / {v['windows']} windows"
                                       for k, v in info["split"].items()))
    check_split_labels([("train", y_rows["train"]), ("validation", y_rows["val"]), ("test", y_rows["test"])], learn)
    keep, zt, pos_mask = cry_targets(y_rows["train"], ix.teacher_score[rows["train"]], learn)
    filt = filter_counts(keep, pos_mask, learn, log)
    weight = None
    if learn.negative_balance > 0:
        kept_rows = rows["train"][keep]
        # a window's category, or its (mapped) label without one: as train --data
        cat = np.array(ix.categories, dtype=object)[ix.category[kept_rows]]
        lab = np.array([(label_map or {}).get(v, v) for v in ix.labels], dtype=object)[ix.label[kept_rows]]
        weight = distill.category_weights(np.where(cat == "", lab, cat), learn.negative_balance)
    return StreamedRun(ds, ix, params, parts, rows, y_rows, y_of_clip, keep, zt, pos_mask, filt, weight, aux_cols, info)


def fit_streamed(run: StreamedRun, *, shuffle_buffer: int = SHUFFLE_BUFFER, log: Log = print):
    """Train the student on the run's kept training windows, streamed; early stopping on the
    validation split's AUC, its windows read one row group at a time each epoch.

    Each epoch's windows (:func:`~cryblock.blocks.learn.distill.resample_epoch` on the index) are
    read through :meth:`Dataset.tf_dataset <cryblock.blocks.dataset.shards.Dataset.tf_dataset>`
    (shards interleaved, a ``shuffle_buffer``-row shuffle, seeded per epoch) and batched; an epoch
    of at most ``shuffle_buffer`` windows is read whole and batched in the in-memory path's order.
    Memory: ``shuffle_buffer`` rows plus a few row groups, whatever the corpus.

    Returns:
        :class:`~cryblock.blocks.learn.train.Fitted` (``keep`` over the training rows).
    """
    from cryblock.blocks.learn import distill
    from cryblock.blocks.learn.student import build_student
    from cryblock.blocks.learn.train import Fitted

    ds, learn = run.ds, run.params.learn
    use_emb, use_aux, aux_cols = learn.embedding_weight > 0, learn.aux_weight > 0, run.aux_cols
    kept = np.flatnonzero(run.keep)
    kept_rows = run.rows["train"][kept]
    zt_kept = run.zt[kept].astype(np.float32)

    def batches(idx: np.ndarray, epoch: int):
        if len(idx) <= shuffle_buffer:  # the buffer holds the whole epoch: the in-memory path's exact order
            rows_e = np.sort(kept_rows[idx])
            x = ds.read(rows_e, embedding=use_emb)
            at_row = np.searchsorted(rows_e, kept_rows[idx])  # idx order → position in x
            for i in range(0, len(idx), learn.batch_size):
                sl = idx[i:i + learn.batch_size]
                o = np.argsort(sl, kind="stable")
                src = at_row[i:i + learn.batch_size][o]
                yield (sl[o], x.patches[src], zt_kept[sl[o]], x.embedding[src] if use_emb else None,
                       x.scores[src][:, aux_cols] if use_aux else None)
            return
        stream = ds.tf_dataset(np.sort(kept_rows[idx]), shuffle_buffer=shuffle_buffer,
                               seed=int(learn.seed) * 100_003 + epoch, embedding=use_emb).batch(learn.batch_size)
        for b in stream.as_numpy_iterator():
            at = np.searchsorted(kept_rows, b["row"])
            yield (at, b["patch"], zt_kept[at], b["embedding"] if use_emb else None,
                   b["scores"][:, aux_cols] if use_aux else None)

    data = distill.StreamData(y=run.y["train"][kept], pos_mask=run.pos_mask[kept], batches=batches,
                              neg_weight=run.weight, with_embedding=use_emb, with_aux=use_aux)
    models = build_student(learn, run.params.dsp, n_out=1, embedding_projection=use_emb,
                           aux_outputs=len(aux_cols) if use_aux else 0)

    def val_scores(model) -> np.ndarray:
        out = [distill.predict_batches(model, x) for x in rebatch(ds.read_rows(run.rows["val"]), 512)]
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    fit = distill.fit_student(models, data, val_scores, run.y["val"], learn, log=log)
    return Fitted(models, fit, run.filt, run.keep, None, 1)


def train_from_dataset(dataset: str | os.PathLike, out_dir: str | os.PathLike, params: Params = Params(), *,
                       teacher=None, max_clips: int | None = None, cache_dir: str | os.PathLike | None = None,
                       label_map: dict[str, str] | None = None, shuffle_buffer: int = SHUFFLE_BUFFER,
                       log: Log = print, force: bool = False) -> RunResult:
    """Train, export, evaluate and report one run from a dataset, streaming the training split.

    Args:
        dataset: folder written by ``cryblock prepare`` (:func:`~cryblock.blocks.dataset.shards.open_dataset`).
        out_dir: run folder (same contents as :func:`~cryblock.blocks.learn.train.train_from_manifest`).
        params: all parameters; the dataset must have been made with ``params.dsp``.
        teacher: loaded teacher, path, or None (``$CRYBLOCK_TEACHER``/cache/download); the dataset's
            teacher outputs must come from it (sha256).
        max_clips: a label- and group-stratified subset of this many clips (the same clips
            ``train --data --max-clips`` takes from the same manifest).
        cache_dir: cache for the teacher outputs of validation/test windows and decoded audio.
        label_map: dataset label → training label.
        shuffle_buffer: rows in the stream's shuffle buffer.
        log: progress lines.
        force: replace an earlier run in ``out_dir``.

    Returns:
        :class:`~cryblock.blocks.learn.train.RunResult`.

    Raises:
        DataError: not a dataset, unfinished, other DSP parameters or teacher, a missing, truncated or
            modified shard (named), labels, too few groups, preset "general", augmentation,
            ``embedding_weight`` without stored embeddings, aux classes not stored. Checked before
            any training; nothing is written to ``out_dir`` then.
    """
    from cryblock.blocks.learn import export
    from cryblock.blocks.learn.train import _teacher, finish_run
    from cryblock.data import default_cache_dir
    from cryblock.output import check_run_output

    t_start = time.perf_counter()
    check_run_output(out_dir, "run", force=force,
                     inputs=(dataset, teacher if isinstance(teacher, (str, os.PathLike)) else None))
    teacher = _teacher(teacher)
    run = open_for_training(dataset, params, teacher, max_clips=max_clips, label_map=label_map, log=log)
    ds, params, learn = run.ds, run.params, run.params.learn
    cache = Path(cache_dir) if cache_dir else default_cache_dir()

    t0 = time.perf_counter()
    fitted = fit_streamed(run, shuffle_buffer=shuffle_buffer, log=log)
    timing = {"train_seconds": time.perf_counter() - t0}

    # --- what the export and the hub model need from the training split, read back by row
    kept_rows, pos_kept = run.kept_rows, run.pos_mask[run.keep]
    rep = ds.read(kept_rows[export.representative_indices(len(kept_rows), 300, learn.seed)]).patches
    hub_n = min(HUB_SAMPLE, len(kept_rows))
    sample = np.sort(np.random.default_rng([learn.seed, 2]).choice(len(kept_rows), hub_n, replace=False)
                     if hub_n < len(kept_rows) else np.arange(len(kept_rows)))
    log(f"hub model data: embeddings of {hub_n} kept training windows "
        + ("(stored) …" if ds.embedding else "(teacher) …"))
    t0 = time.perf_counter()
    embs = np.empty((hub_n, EMBEDDING_SIZE), np.float32)
    at = 0
    if ds.embedding:
        for b in ds.read_rows(kept_rows[sample], embedding=True):
            embs[at:at + len(b.rows)] = b.embedding
            at += len(b.rows)
    else:
        for x in rebatch(ds.read_rows(kept_rows[sample]), 256):
            embs[at:at + len(x)] = teacher.predict(x, batch_size=64)[1]
            at += len(x)
    hub_train = (embs, pos_kept[sample])
    timing["teacher_seconds"] = time.perf_counter() - t0
    val, test = run.split("val"), run.split("test")  # in memory: calibration, the nights, the test figures
    return finish_run(fitted, rep, hub_train, val, test, out_dir, params, teacher=teacher, cache_dir=cache, log=log,
                      data_info=run.info, t_start=t_start, timing=timing)
