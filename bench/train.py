"""Cost of the learning stage's parts on the full shared manifest (for sizing ``cryblock demo``).

Usage::

    CRYBLOCK_TEACHER=/work/shared/models/yamnet.tflite CRYBLOCK_DATA=/work/shared/data \\
    CRYBLOCK_CACHE=/tmp/cbcache .venv/bin/python bench/train.py [--blocks 24/2,48/2,96/2,96/1] [--epochs 1]

Prints: feature time (with the feature cache), teacher inference on **all** patches without the
teacher-output cache (patches/s), seconds per training epoch of the student (teacher-filtered,
resampled windows of the group-split training set), and TFLite Micro ms per INT8 window. The
numbers depend on what else runs on the machine; the 2 cores here are shared, so they are
pessimistic.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("CRYBLOCK_DATA"), help="folder with manifest.csv")
    ap.add_argument("--teacher", default=None, help="teacher file (default $CRYBLOCK_TEACHER)")
    ap.add_argument("--blocks", default=None, help="student DS blocks (default: the LearnParams default)")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()

    from cryblock.blocks.learn import distill, evaluate, export
    from cryblock.blocks.learn.student import build_student
    from cryblock.blocks.learn.teacher import cry_probability, load_teacher
    from cryblock.data import compute_patches, default_cache_dir, load_manifest, split_by_group
    from cryblock.params import LearnParams

    t0 = time.perf_counter()
    ps = compute_patches(load_manifest(os.path.join(args.data, "manifest.csv")), cache_dir=default_cache_dir())
    print(f"features: {len(ps.patches)} patches in {time.perf_counter() - t0:.1f} s (feature cache on)")
    teacher = load_teacher(args.teacher)
    t0 = time.perf_counter()
    scores, _emb = distill.teacher_outputs(teacher, ps.patches, cache_dir=None)
    dt = time.perf_counter() - t0
    print(f"teacher: {len(ps.patches)} patches in {dt:.1f} s ({len(ps.patches) / dt:.0f} patches/s, no cache)")

    learn = LearnParams(epochs=args.epochs, **({"blocks": args.blocks} if args.blocks else {}))
    tr, va, _ = split_by_group(ps.clips, learn.test_fraction, learn.validation_fraction, learn.seed)
    sub_tr, sub_va = ps.subset_clips(tr), ps.subset_clips(va)
    p = cry_probability(scores[np.isin(ps.clip_index, tr)])  # subset_clips keeps the patch order
    y = (sub_tr.labels() == "cry")
    keep = distill.teacher_filter(y, p, learn.filter_pos, learn.filter_neg)
    data = distill.DistillData(sub_tr.patches[keep], y[keep].astype(int), distill.logit(p[keep])[:, None], None,
                               y[keep])
    models = build_student(learn)
    t0 = time.perf_counter()
    fit = distill.fit_student(models, data, sub_va.patches, (sub_va.labels() == "cry").astype(int), learn, log=print)
    dt = time.perf_counter() - t0
    from cryblock.blocks.learn.student import architecture

    print(f"training: {dt / len(fit.history):.1f} s per epoch ({architecture(learn).describe()})")

    import tempfile

    with tempfile.TemporaryDirectory() as td:
        exp = export.export_all(models.model, export.representative_patches(data.x, 300), td)
    runner = evaluate.TflmRunner(exp.int8_tflite)
    x = sub_va.patches[:200]
    t0 = time.perf_counter()
    runner.predict(x)
    print(f"TFLite Micro (host, reference kernels): {1000 * (time.perf_counter() - t0) / len(x):.2f} ms per window, "
          f"INT8 {len(exp.int8_tflite):,} B, arena {runner.min_arena_bytes:,} B")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
