"""Throughput of the patch teacher: Keras YAMNet on log-mel patches (batched) vs the YAMNet
TFLite interpreter on one 15600-sample waveform window at a time.

Usage::

    CRYBLOCK_TEACHER=/work/shared/models/yamnet.tflite CRYBLOCK_DATA=/work/shared/data \\
        .venv/bin/python bench/teacher.py [--patches 512] [--repeats 3]

Prints patches/s for the Keras teacher at batch 64 and 256 (CPU unless TensorFlow sees a GPU)
and windows/s for the TFLite interpreter (XNNPACK, its own quantised front-end included).
Real patches of ESC-10/donateacry clips from the shared manifest are used.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=os.environ.get("CRYBLOCK_TEACHER"), help="teacher file (default $CRYBLOCK_TEACHER)")
    ap.add_argument("--data", default=os.environ.get("CRYBLOCK_DATA"), help="folder with manifest.csv (default $CRYBLOCK_DATA)")
    ap.add_argument("--patches", type=int, default=512, help="patches per timed pass")
    ap.add_argument("--tflite-windows", type=int, default=100, help="windows for the TFLite timing")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes (best is reported)")
    args = ap.parse_args()
    if not args.data:
        raise SystemExit("error: set $CRYBLOCK_DATA or pass --data")

    import tensorflow as tf

    from cryblock.blocks.dsp.features import pad_waveform
    from cryblock.blocks.learn.teacher import load_teacher
    from cryblock.blocks.learn.tflite import TfliteWaveformYamnet
    from cryblock.data import compute_patches, default_cache_dir, load_manifest
    from cryblock.audio import load_audio
    from cryblock.params import DspParams

    dsp = DspParams()
    clips = [c for c in load_manifest(Path(args.data) / "manifest.csv")
             if c.source in ("ESC-10", "donateacry-corpus")][::4]
    ps = compute_patches(clips, dsp, cache_dir=default_cache_dir())  # the feature cache train and features use
    x = ps.patches
    while len(x) < args.patches:
        x = np.concatenate([x, x])
    x = np.ascontiguousarray(x[:args.patches])

    t0 = time.perf_counter()
    teacher = load_teacher(args.teacher)
    print(f"teacher {teacher.path} loaded in {time.perf_counter() - t0:.1f} s; "
          f"devices: {[d.device_type for d in tf.config.list_logical_devices()]}; "
          f"CPU threads: intra {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'} "
          f"(os.cpu_count {os.cpu_count()})")
    for bs in (64, 256):
        teacher.predict(x[:bs], batch_size=bs)  # trace + warm up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            teacher.predict(x, batch_size=bs)
            best = min(best, time.perf_counter() - t0)
        print(f"Keras teacher, batch {bs:3d}: {len(x) / best:8.1f} patches/s ({len(x)} patches in {best:.2f} s)")

    if teacher.path.suffix != ".tflite":
        print("TFLite interpreter: skipped (the teacher is not a .tflite file)")
        return
    ref = TfliteWaveformYamnet(teacher.path)
    wave = pad_waveform(load_audio(clips[0].path, dsp.sample_rate), dsp)
    windows = [wave[k * dsp.patch_hop_samples:k * dsp.patch_hop_samples + dsp.patch_samples]
               for k in range((len(wave) - dsp.patch_samples) // dsp.patch_hop_samples + 1)]
    windows = (windows * (args.tflite_windows // len(windows) + 1))[:args.tflite_windows]
    ref.run(windows[0])
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for w in windows:
            ref.run(w)
        best = min(best, time.perf_counter() - t0)
    print(f"TFLite interpreter, 1 window/call: {len(windows) / best:8.1f} windows/s "
          f"({1000 * best / len(windows):.2f} ms per window, front-end included)")


if __name__ == "__main__":
    main()
