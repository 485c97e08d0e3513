#!/usr/bin/env python
"""Benchmark the DSP block's log-mel patches on one core, side by side with tf.signal and librosa.

    CRYBLOCK_DATA=/work/shared/data .venv/bin/python bench/dsp.py            # ~200 clips
    CRYBLOCK_DATA=/work/shared/data .venv/bin/python bench/dsp.py --all      # whole manifest

One core: OMP/MKL/OpenBLAS/TF thread counts are set to 1 before NumPy/TF are imported.
Audio decoding + resampling to 16 kHz (soundfile + soxr) is timed separately and excluded
from the front-end timings; every method gets the same decoded 16 kHz waveforms.

Methods (each yields float32 [n, 96, 64] patches after YAMNet padding):

* ``numpy``   — cryblock.blocks.dsp.features.waveform_to_patches (the block).
* ``tf.signal`` — blocks/dsp/tf_reference.tf_log_mel_patches (YAMNet's own ops, eager).
* ``librosa`` — librosa.feature.melspectrogram as close to YAMNet as it goes (n_fft=512,
  win_length=400, hop 160, periodic Hann, center=False, power=1, 64 HTK mels 125–7500 Hz,
  norm=None) on the YAMNet-padded waveform with (512 − 400) / 2 zeros added on each side (librosa
  frames are n_fft long with the window centred), then log(mel + 0.001), then the same patching. librosa's HTK filters are
  triangles in Hz between mel-spaced edges (TF's are triangles in mel), so its values differ;
  the table shows by how much.

Reported: wall seconds, patches/s, × real time (audio seconds / compute seconds) and the speed
ratio of the NumPy block to each other method.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def _numpy_method(params):
    from cryblock.blocks.dsp.features import waveform_to_patches

    return lambda x: waveform_to_patches(x, params)


def _tf_method(params):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from cryblock.blocks.dsp.tf_reference import tf_log_mel_patches

    return lambda x: tf_log_mel_patches(x, params)


def _librosa_method(params):
    import librosa
    import scipy.signal

    from cryblock.blocks.dsp.features import frames_to_patches, pad_waveform

    window = scipy.signal.get_window("hann", params.window_length_samples, fftbins=True)  # periodic
    # librosa frames are n_fft (512) long with the 400-sample window centred in them; 56 zeros on
    # each side make frame j cover YAMNet's samples [160j, 160j + 400) (same |FFT|, same count).
    side = (params.fft_length - params.window_length_samples) // 2

    def run(x):
        mel = librosa.feature.melspectrogram(
            y=np.pad(pad_waveform(x, params), side), sr=int(params.sample_rate), n_fft=params.fft_length,
            hop_length=params.hop_length_samples, win_length=params.window_length_samples, window=window,
            center=False, power=1.0, n_mels=params.mel_bands, fmin=params.mel_min_hz, fmax=params.mel_max_hz,
            htk=True, norm=None)
        return frames_to_patches(np.log(mel.T + params.log_offset).astype(np.float32), params)

    return run


METHODS = {"numpy": _numpy_method, "tf.signal": _tf_method, "librosa": _librosa_method}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path,
                    default=Path(os.environ.get("CRYBLOCK_DATA", "../shared/data")) / "manifest.csv")
    ap.add_argument("--clips", type=int, default=200, help="random clips from the manifest [200]")
    ap.add_argument("--all", action="store_true", help="use every clip of the manifest")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed passes per method, interleaved; the fastest is reported [3]")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    args = ap.parse_args(argv)

    from cryblock.data import load_manifest
    from cryblock.errors import CryblockError
    from cryblock.audio import load_audio
    from cryblock.params import DspParams

    params = DspParams()
    try:
        clips = load_manifest(args.manifest)
    except CryblockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.all and args.clips < len(clips):
        idx = np.sort(np.random.default_rng(args.seed).choice(len(clips), args.clips, replace=False))
        clips = [clips[i] for i in idx]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"error: unknown method(s) {bad}; choose from {list(METHODS)}", file=sys.stderr)
        return 2

    # --- decode (excluded from the front-end timings)
    t0 = time.perf_counter()
    waves, skipped = [], 0
    for c in clips:
        try:
            waves.append(load_audio(c.path, params.sample_rate))
        except CryblockError as e:
            skipped += 1
            print(f"skipped: {e}", file=sys.stderr)
    t_decode = time.perf_counter() - t0
    audio_s = sum(len(w) for w in waves) / params.sample_rate
    print(f"{len(waves)} clips ({skipped} skipped), {audio_s:.1f} s of audio, from {args.manifest}")
    print(f"host: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}, "
          f"numpy {np.__version__}, 1 thread")
    print(f"decode + resample to 16 kHz (soundfile + soxr HQ): {t_decode:.2f} s "
          f"({audio_s / t_decode:.0f}x real time) -- not included below\n")

    fns = {name: METHODS[name](params) for name in methods}
    outputs = {}
    for name, fn in fns.items():  # warm-up (imports, TF kernels, caches) and the outputs compared below
        outputs[name] = [fn(w) for w in waves]
    best: dict[str, tuple[float, float]] = {}
    for _ in range(max(1, args.repeat)):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for w in waves:
                fn(w)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            prev = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(prev[0], wall), min(prev[1], cpu))
    results = {name: (best[name][0], sum(len(p) for p in outputs[name])) for name in methods}

    ref = outputs.get("numpy")
    print(f"fastest of {max(1, args.repeat)} interleaved passes (wall clock); CPU seconds in brackets\n")
    print(f"{'method':<10} {'seconds':>8} {'(cpu)':>7} {'patches':>8} {'patches/s':>10} {'x real time':>12} "
          f"{'numpy speed-up':>15} {'max|d| vs numpy':>16} {'mean|d|':>9}")
    for name in methods:
        dt, n = results[name]
        speed = results["numpy"][0] / dt if "numpy" in results else float("nan")
        if ref is not None and name != "numpy":
            diffs = [np.abs(a - b) for a, b in zip(outputs[name], ref)]
            dmax = max(float(d.max()) for d in diffs)
            dmean = float(np.mean([d.mean() for d in diffs]))
            dtxt = f"{dmax:>16.2e} {dmean:>9.2e}"
        else:
            dtxt = f"{'-':>16} {'-':>9}"
        print(f"{name:<10} {dt:>8.2f} {'(%.2f)' % best[name][1]:>7} {n:>8d} {n / dt:>10.0f} {audio_s / dt:>11.0f}x "
              f"{(1 / speed if name != 'numpy' else 1.0):>14.2f}x {dtxt}")
    if "numpy" in results:
        for name in methods:
            if name != "numpy":
                print(f"numpy block is {results[name][0] / results['numpy'][0]:.2f}x the speed of {name}")
        rt = audio_s / results["numpy"][0]
        print(f"numpy block: {rt:.0f}x real time on one core (target >= 50x): {'OK' if rt >= 50 else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
