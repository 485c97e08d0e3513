#!/usr/bin/env python
"""Time the feature step two ways on the same clips, each from an empty cache: inside train/demo
(:func:`cryblock.data.compute_patches`) and ``cryblock features --manifest`` (the same per-clip
workers, then the patches written as one .npz); and the .npz write alone at zlib level 1 (what
cryblock writes) and 6 (``np.savez_compressed``'s default).

    CRYBLOCK_DATA=../shared/data .venv/bin/python bench/features.py [--clips 1000] [--workers N]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1000, help="first N clips of the manifest (0 = all)")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    from cryblock.data import compute_patches, load_manifest

    data = Path(os.environ.get("CRYBLOCK_DATA", "../shared/data"))
    clips = load_manifest(data / "manifest.csv")
    clips = clips[: args.clips] if args.clips else clips
    with tempfile.TemporaryDirectory(prefix="bench-features-") as td:
        td = Path(td)
        man = td / "manifest.csv"
        man.write_text("path,label,group\n" + "".join(f"{c.path},{c.label},{c.group}\n" for c in clips))
        t0 = time.perf_counter()
        ps = compute_patches(clips, workers=args.workers, cache_dir=td / "cache-train")
        t_train = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "cryblock.cli", "features", "--manifest", str(man), "--out", str(td / "f.npz"),
               "--cache-dir", str(td / "cache-features"), "-q"] + (["--workers", str(args.workers)] if args.workers else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        t_cli = time.perf_counter() - t0
        print(f"{len(clips)} clips → {len(ps.patches)} patches ({ps.patches.nbytes / 1e6:.0f} MB)")
        print(f"  train/demo feature step (compute_patches):   {t_train:6.1f} s")
        print(f"  cryblock features --manifest (incl. start-up): {t_cli:6.1f} s")
        raw = ps.patches.tobytes()
        for level in (1, 6):
            t0 = time.perf_counter()
            with zipfile.ZipFile(td / "z.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z:
                with z.open("patches.npy", "w", force_zip64=True) as m:
                    for i in range(0, len(raw), 1 << 24):
                        m.write(raw[i:i + (1 << 24)])
            size = (td / "z.npz").stat().st_size
            print(f"  .npz of the patches at zlib level {level}: {time.perf_counter() - t0:5.1f} s, "
                  f"{size / len(raw):.3f} of the raw size")


if __name__ == "__main__":
    main()
