"""Peak memory of ``cryblock features`` (and ``cryblock emulate``) on long recordings (1 min, 30 min, 3 h).

    CRYBLOCK_DATA=../shared/data .venv/bin/python bench/long_audio.py [--minutes 1 30 180] \
        [--model runs/demo/model_quantized_int8_io.tflite]

Each long file is real audio: the shared recordings (16 kHz mono after loading) laid end to end
until the duration is reached, written as 16 kHz FLAC into a temporary folder. ``cryblock
features FILE --out X.npz --no-cache`` then runs in a child process; its peak resident memory
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a fresh parent per measurement) and wall time are printed.
The 1-minute file's patches are also compared with the in-memory front-end
(:func:`cryblock.blocks.dsp.features.waveform_to_patches`). Target: ≤ 300 MB for 3 h.

With ``--model`` (an INT8 model), ``cryblock emulate`` is measured the same way on each file: a
``--audio replay`` project of the model is generated and its firmware core (front-end, detector,
log, replay protocol) compiled with host gcc around ``tests/c/app_harness.c``'s stand-in model (no
ESP-IDF needed), which emulate drives while it runs the Python INT8 reference (TFLite Micro) of
the same audio; both sides stream. The stand-in's scores differ from the model's, so emulate
exits 1 (DIFFERS); the figure is memory and time.
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


def host_firmware(model: str, folder: Path) -> tuple[Path, Path]:
    """A ``--audio replay`` project of ``model`` and a program playing its firmware (host gcc)."""
    from cryblock.blocks.deploy.model import inspect_model
    from cryblock.blocks.deploy.project import BuildOptions, generate_project

    fw = generate_project(model, folder / "fw", options=BuildOptions(audio="replay")).project
    main = fw / "main"
    twin = folder / "twin"
    harness = Path(__file__).resolve().parents[1] / "tests" / "c" / "app_harness.c"
    subprocess.run(["gcc", "-std=c99", "-O2", f"-I{main}", str(harness),
                    *(str(main / f) for f in ("cry_app.c", "frontend.c", "frontend_tables.c", "postproc.c",
                                               "cry_log.c", "replay.c")), "-lm", "-o", str(twin)], check=True)
    info = inspect_model(Path(model).read_bytes())
    program = folder / "firmware.sh"
    program.write_text(f"#!/bin/sh\nexec {twin} 0.5 2 3 1000 {info.input.scale!r} {info.input.zero_point}\n")
    program.chmod(0o755)
    return fw, program


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("CRYBLOCK_DATA"), help="folder with manifest.csv")
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 30, 180])
    ap.add_argument("--workdir", default=None, help="where the long files go (default: a temp folder)")
    ap.add_argument("--model", default=None, help="INT8 model: also measure cryblock emulate (needs host gcc)")
    a = ap.parse_args(argv)
    if not a.data:
        ap.error("set CRYBLOCK_DATA or pass --data")
    from cryblock.data import load_manifest

    clips = load_manifest(Path(a.data) / "manifest.csv")
    cryblock = [sys.executable, "-m", "cryblock.cli"]
    with tempfile.TemporaryDirectory(dir=a.workdir) as td:
        base_mb, _, _ = run_child([*cryblock, "--version"])
        print(f"python + cryblock CLI start-up: peak RSS {base_mb:.0f} MB")
        fw = program = None
        if a.model:
            fw, program = host_firmware(a.model, Path(td))
        print("| recording | file | patches | peak RSS | wall |" + (" emulate peak RSS | emulate wall |" if fw else "")
              + "\n|---|---|---|---|---|" + ("---|---|" if fw else ""))
        for minutes in sorted(a.minutes):
            src = Path(td) / f"long-{minutes:g}min.flac"
            make_long_file(src, clips, minutes * 60)
            out = Path(td) / f"long-{minutes:g}min.npz"
            mb, wall, code = run_child([*cryblock, "features", str(src), "--out", str(out), "--no-cache", "-q"])
            if code != 0:
                print(f"| {minutes:g} min | features failed (exit {code}) | | | |")
                continue
            n = len(np.load(out)["clip_index"])
            row = f"| {minutes:g} min | {src.stat().st_size / 1e6:.0f} MB FLAC | {n:,} | {mb:.0f} MB | {wall:.0f} s |"
            if fw:
                emb, ewall, ecode = run_child([*cryblock, "emulate", "--project", str(fw), "--binary", str(program),
                                               "--audio", str(src)])
                row += f" {emb:.0f} MB | {ewall:.0f} s |" if ecode in (0, 1) else f" emulate failed (exit {ecode}) | |"
            print(row)
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
