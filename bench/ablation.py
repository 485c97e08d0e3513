"""Augmentation and auxiliary-head ablation: the same seed, split and recipe, one change at a time.

    CRYBLOCK_TEACHER=../shared/models/yamnet.tflite .venv/bin/python bench/ablation.py \
        --data ../shared/data/manifest.csv --out runs/ablation [--epochs 15] [--only none,mix] [--seed 0]

Each configuration is a full ``cryblock train`` run (``<out>/<name>/``; a finished run is reused,
so an interrupted ablation resumes) of the current default student. Rows: everything off
(today's default recipe), each augmentation alone at the probability the ``all`` row uses, all
augmentations together, and the auxiliary head on the teacher's confusable classes. The table
(also written to ``<out>/ablation.md``) gives the INT8 model's test window AUC with its
group-bootstrap 95 % interval, the nursery-night recall per SNR and the false alerts per 8 h at
the detector each run calibrated on its validation night, and the training time per epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cryblock.params import Params  # noqa: E402

#: name → Params overrides. Probabilities of the single rows equal the ``all`` row's.
CONFIGS: dict[str, dict] = {
    "none": {},
    "mix": {"augment": {"p_mix": 0.5}},
    "gain": {"augment": {"p_gain": 0.3}},
    "shift": {"augment": {"p_shift": 0.3}},
    "specaugment": {"augment": {"p_specaugment": 0.3}},
    "bandlimit": {"augment": {"p_bandlimit": 0.2}},
    "all": {"augment": {"p_mix": 0.5, "p_gain": 0.3, "p_shift": 0.3, "p_specaugment": 0.3, "p_bandlimit": 0.2}},
    "aux head": {"learn": {"aux_weight": 0.5}},
}


def _run(data: str, out: Path, overrides: dict, epochs: int, seed: int, teacher) -> dict:
    from cryblock.blocks.learn.train import train_from_manifest

    metrics = out / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    p = Params().replace(learn={"epochs": epochs, "seed": seed, **overrides.get("learn", {})})
    if "augment" in overrides:
        p = p.replace(augment=overrides["augment"])
    t0 = time.perf_counter()
    res = train_from_manifest(data, out, p, teacher=teacher, log=lambda s: None)
    print(f"  {out.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return res.metrics


def row(name: str, m: dict) -> str:
    i8 = m["int8"]
    lo, hi = i8["auc_ci"]["window"]
    night = i8["night"]
    rec = " | ".join(f"{v:.2f}" for v in night["recall"].values())
    hist = m["training"]["history"]
    per_epoch = sum(h["seconds"] for h in hist) / max(1, len(hist))
    return (f"| {name} | {i8['window']['auc']:.3f} [{lo:.3f}, {hi:.3f}] | {rec} | {night['fa_per_8h']:.1f} "
            f"({night['false_alerts']} in {night['hours']:.2f} h) | {m['training']['best_epoch']} / {len(hist)} | "
            f"{per_epoch:.0f} s |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--only", default=None, help="comma-separated configuration names")
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--seed", type=int, default=Params().learn.seed,
                    help="split, sampling, initialisation, augmentation and night seed")
    args = ap.parse_args(argv)
    from cryblock.blocks.learn.teacher import load_teacher

    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"error: unknown configuration(s) {unknown}; known: {list(CONFIGS)}", file=sys.stderr)
        return 2
    teacher = load_teacher(args.teacher)
    out = Path(args.out)
    snrs = [f"{s:g} dB" for s in Params().night.snrs_db]
    lines = [f"| configuration | INT8 window AUC [95 % CI] | {' | '.join(f'night recall {s}' for s in snrs)} | "
             "false alerts / 8 h | best / run epochs | s / epoch |", "|" + "---|" * (5 + len(snrs))]
    for name in names:
        m = _run(args.data, out / name.replace(" ", "_"), CONFIGS[name], args.epochs, args.seed, teacher)
        lines.append(row(name, m))
    table = "\n".join(lines)
    print(table)
    (out / "ablation.md").write_text(f"# Ablation ({args.epochs} epochs, seed {args.seed})\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
