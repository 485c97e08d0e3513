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

Also printed: each format's largest rounding error in log-mel units and the student's own int8
input step (its model's input scale), which every patch passes through on the device anyway.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("CRYBLOCK_DATA"), help="folder with manifest.csv")
    ap.add_argument("--out", required=True, help="work folder (the quick student's run)")
    ap.add_argument("--run", default=None, help="a cryblock train run folder (default: train a quick one)")
    a = ap.parse_args(argv)
    if not a.data:
        ap.error("set CRYBLOCK_DATA or pass --data")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import pyarrow as pa
    from sklearn.metrics import roc_auc_score

    from cryblock.blocks.dataset import shards as S
    from cryblock.blocks.learn.evaluate import TflmRunner, load_run
    from cryblock.blocks.learn.teacher import cry_probability, load_teacher
    from cryblock.data import compute_patches, load_manifest

    manifest = Path(a.data) / "manifest.csv"
    run = a.run
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
        if fmt == "float32":
            x = ps.patches
        else:
            parts = []
            for i in range(0, len(ps.patches), 4096):  # encode/decode in blocks, as the shards do
                chunk = ps.patches[i:i + 4096]
                parts.append(S.decode_patches(pa.table(S.encode_patches(chunk, fmt, dsp)), fmt, dsp.patch_shape,
                                              S.int8_global_range(dsp)))
            x = np.concatenate(parts)
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
