"""Peak memory of ``cryblock features`` on long recordings (1 min, 30 min, 3 h).

    CRYBLOCK_DATA=../shared/data .venv/bin/python bench/long_audio.py [--minutes 1 30 180]

Each long file is real audio: the shared recordings (16 kHz mono after loading) laid end to end
until the duration is reached, written as 16 kHz FLAC into a temporary folder. ``cryblock
features FILE --out X.npz --no-cache`` then runs in a child process; its peak resident memory
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a fresh parent per measurement) and wall time are printed.
The 1-minute file's patches are also compared with the in-memory front-end
(:func:`cryblock.blocks.dsp.features.waveform_to_patches`). Target: ≤ 300 MB for 3 h.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_long_file(path: Path, clips, seconds: float, sr: int = 16000) -> None:
    """Write ``seconds`` of real audio (clips end to end, repeated as needed) as 16 kHz FLAC."""
    import soundfile as sf

    from cryblock.audio import load_audio

    need = int(seconds * sr)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        k = 0
        while need > 0:
            x = load_audio(clips[k % len(clips)].path, sr)[:need]
            f.write(x)
            need -= len(x)
            k += 1


_MEASURE = ("import resource, subprocess, sys; "
            "c = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, c)")


def run_child(args: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit code) of one command, measured by a fresh parent
    process (``ru_maxrss`` of its only child)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    peak_kb, code = (int(v) for v in out.split())
    return peak_kb / 1024.0, wall, code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("CRYBLOCK_DATA"), help="folder with manifest.csv")
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 30, 180])
    ap.add_argument("--workdir", default=None, help="where the long files go (default: a temp folder)")
    a = ap.parse_args(argv)
    if not a.data:
        ap.error("set CRYBLOCK_DATA or pass --data")
    from cryblock.data import load_manifest

    clips = load_manifest(Path(a.data) / "manifest.csv")
    cryblock = [sys.executable, "-m", "cryblock.cli"]
    with tempfile.TemporaryDirectory(dir=a.workdir) as td:
        base_mb, _, _ = run_child([*cryblock, "--version"])
        print(f"python + cryblock CLI start-up: peak RSS {base_mb:.0f} MB")
        print("| recording | file | patches | peak RSS | wall |\n|---|---|---|---|---|")
        for minutes in sorted(a.minutes):
            src = Path(td) / f"long-{minutes:g}min.flac"
            make_long_file(src, clips, minutes * 60)
            out = Path(td) / f"long-{minutes:g}min.npz"
            mb, wall, code = run_child([*cryblock, "features", str(src), "--out", str(out), "--no-cache", "-q"])
            if code != 0:
                print(f"| {minutes:g} min | features failed (exit {code}) | | | |")
                continue
            n = len(np.load(out)["clip_index"])
            print(f"| {minutes:g} min | {src.stat().st_size / 1e6:.0f} MB FLAC | {n:,} | {mb:.0f} MB | {wall:.0f} s |")
            if minutes == min(a.minutes):
                from cryblock.blocks.dsp.features import waveform_to_patches
                from cryblock.audio import load_audio

                ref = waveform_to_patches(load_audio(src))
                got = np.load(out)["patches"]
                print(f"  streamed vs in-memory patches ({minutes:g} min): max |Δ| {np.abs(got - ref).max():.3g}")
            src.unlink()
            out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
