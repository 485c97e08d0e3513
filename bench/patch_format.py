"""What the dataset's patch formats cost: teacher and student AUC on decoded patches.

    CRYBLOCK_TEACHER=../shared/models/yamnet.tflite CRYBLOCK_DATA=../shared/data \\
        nice -n 10 .venv/bin/python bench/patch_format.py --out /tmp/patch-format [--run RUN]

Every patch of the manifest is computed (float32, the DSP block), then stored and read back in
each format of ``cryblock prepare --patch-format`` (float16, int8-patch, int8-global; the
dataset's own encoder and decoder, :mod:`cryblock.blocks.dataset.shards`). On each version:

* the teacher's cry probability (max of YAMNet classes 19, 20) → window AUC (cry vs not_cry),
  and its largest / mean change against the float32 patches;
* a student's INT8 model in TFLite Micro (as on the device) → window AUC and its largest change.
  The student is ``--run`` (a ``cryblock train`` run folder) or, without it, a quick run trained
  here (``cryblock train --max-clips 80 --epochs 2``: a weak student, but a real one) — a student
  that sees int8-stored patches as its input.

Also printed: each format's largest rounding error in log-mel units, its bytes per patch as the
shards store it (zstd Parquet, the patches in manifest order, so a clip's overlapping patches sit
side by side), and the student's own int8 input step (its model's input scale), which every patch
passes through on the device anyway. ``--sizes-only`` prints the first two columns only (no teacher,
no student).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def _round_trip(patches: np.ndarray, fmt: str, dsp) -> tuple[np.ndarray, int]:
    """Patches encoded in ``fmt`` and decoded (the shards' codec), and the bytes they take as
    zstd Parquet in 512-row row groups (written in blocks of 4,096 patches)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cryblock.blocks.dataset import shards as S

    parts, size = [], 0
    for i in range(0, len(patches), 4096):
        t = pa.table(S.encode_patches(patches[i:i + 4096], fmt, dsp))
        buf = io.BytesIO()
        pq.write_table(t, buf, compression="zstd", row_group_size=S.ROW_GROUP_ROWS, use_dictionary=False)
        size += len(buf.getvalue())
        parts.append(S.decode_patches(t, fmt, dsp.patch_shape, S.int8_global_range(dsp)))
    return np.concatenate(parts), size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("CRYBLOCK_DATA"), help="folder with manifest.csv")
    ap.add_argument("--out", required=True, help="work folder (the quick student's run)")
    ap.add_argument("--run", default=None, help="a cryblock train run folder (default: train a quick one)")
    ap.add_argument("--sizes-only", action="store_true", help="rounding errors and bytes only")
    a = ap.parse_args(argv)
    if not a.data:
        ap.error("set CRYBLOCK_DATA or pass --data")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from sklearn.metrics import roc_auc_score

    from cryblock.blocks.dataset import shards as S
    from cryblock.blocks.learn.evaluate import TflmRunner, load_run
    from cryblock.blocks.learn.teacher import cry_probability, load_teacher
    from cryblock.data import compute_patches, load_manifest

    manifest = Path(a.data) / "manifest.csv"
    run = a.run
    if a.sizes_only:
        from cryblock.params import DspParams

        ps = compute_patches(load_manifest(manifest), DspParams())
        print(f"{len(ps.patches):,} patches\n| patches | largest rounding error | bytes per patch (zstd Parquet) |\n|---|---|---|")
        for fmt in S.PATCH_FORMATS:
            x, size = _round_trip(ps.patches, fmt, DspParams())
            print(f"| {fmt} | {float(np.abs(x - ps.patches).max()):.4f} | {size / len(x):,.0f} |", flush=True)
        return 0
    if run is None:
        run = str(Path(a.out) / "quick-student")
        subprocess.run([sys.executable, "-m", "cryblock.cli", "train", "--data", str(manifest), "--out", run,
                        "--max-clips", "80", "--epochs", "2"], check=True, stdout=subprocess.DEVNULL)
    r = load_run(run)
    dsp = r.params.dsp
    clips = load_manifest(manifest)
    ps = compute_patches(clips, dsp)
    y = np.array([c.label == "cry" for c in ps.clips])[ps.clip_index].astype(int)
    teacher = load_teacher(None)
    runner = TflmRunner(r.int8)
    print(f"{len(ps.patches):,} patches of {len(ps.clips):,} clips; student {run} "
          f"(INT8 input step {runner.in_scale:.4f} log-mel units)")
    print("| patches | largest rounding error | teacher window AUC | teacher max / mean |Δp| | "
          "student INT8 window AUC | student max |Δp| |\n|---|---|---|---|---|---|---|")
    ref_t = ref_s = None
    for fmt in ("float32", *S.PATCH_FORMATS):
        x = ps.patches if fmt == "float32" else _round_trip(ps.patches, fmt, dsp)[0]
        err = float(np.abs(x - ps.patches).max())
        pt = cry_probability(teacher.scores(x))
        out = runner.predict(x)
        pst = out[:, 0] if out.shape[1] == 1 else out[:, r.pos_index]  # sigmoid head: one output
        if ref_t is None:
            ref_t, ref_s = pt, pst
        dt, ds = np.abs(pt - ref_t), np.abs(pst - ref_s)
        print(f"| {fmt} | {err:.4f} | {roc_auc_score(y, pt):.4f} | {dt.max():.4f} / {dt.mean():.5f} | "
              f"{roc_auc_score(y, pst):.4f} | {ds.max():.4f} |", flush=True)
        del x
    return 0


if __name__ == "__main__":
    sys.exit(main())
