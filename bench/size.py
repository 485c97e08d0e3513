"""Cost of student architectures on the ESP32-S3, side by side, and host timings of a model.

    .venv/bin/python bench/size.py                              # cost of the reference architectures
    .venv/bin/python bench/size.py --tune runs/tune/tune.json   # + quality of a `cryblock tune` run
    .venv/bin/python bench/size.py --model runs/demo/model_quantized_int8_io.tflite [--params P]

Architectures: the first cryblock default (width 32, depth 4), the published prior system's
trunk (stem 3×3/2 with 8 channels, DS 16/1 32/2 64/2 128/2, one-unit head) and the current
default (cryblock.params.LearnParams). Their cost needs no training: a model with random weights
is converted to INT8 (MACs and arena do not depend on the weights' values; random values keep the
converter from storing equal buffers once, so the size is a trained model's) —
parameters, MACs per patch, INT8 bytes, the TFLite Micro arena measured on the host, the planned
device arena (ESP-NN S3 scratch + 10 %) and the MAC-based latency estimate (±2×). With
``--tune`` the quality columns come from the tune run (validation AUC, test window AUC, test
night recall per SNR, test false alerts per 8 h). With ``--model``: the generator's report of
that model and, for orientation only, the host time of one TFLM invoke (x86 reference kernels)
and of the C front-end per second of audio (host gcc -O2). Device numbers come from the
firmware's INF lines (`cryblock bench`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cryblock.blocks.deploy.arena import plan_arena  # noqa: E402
from cryblock.blocks.deploy.model import inspect_model, read_model  # noqa: E402
from cryblock.blocks.deploy.project import write_host_sources  # noqa: E402
from cryblock.blocks.deploy.size import format_report, size_report  # noqa: E402
from cryblock.params import Params  # noqa: E402

ARCH_FIELDS = ("width", "depth", "stem_channels", "stem_stride", "pool", "kernel", "blocks", "head")


def architectures() -> dict[str, dict]:
    from cryblock.blocks.learn.tune import CANDIDATES

    default = {k: getattr(Params().learn, k) for k in ARCH_FIELDS}
    return {"cryblock 0.1 default": CANDIDATES["cryblock-0.1"], "prior system": CANDIDATES["prior"],
            "current default": default}


def cost_table() -> str:
    from cryblock.blocks.deploy.size import EFFECTIVE_MACS_PER_S
    from cryblock.blocks.learn.student import architecture
    from cryblock.blocks.learn.tune import estimate_cost

    rows = ["| architecture | | params | MACs / patch | INT8 | arena host | arena device (plan) | est. latency |",
            "|---|---|---|---|---|---|---|---|"]
    for name, fields in architectures().items():
        c = estimate_cost(fields)
        learn = Params().replace(learn=fields).learn
        lat = c["macs"] / EFFECTIVE_MACS_PER_S["internal"] * 1000
        rows.append(f"| {name} | {architecture(learn).describe()} | {c['params']:,} | {c['macs'] / 1e6:.2f} M | "
                    f"{c['int8_bytes']:,} B | {c['arena_host']:,} B | {c['arena_device']:,} B | ≈{lat:.1f} ms |")
    return "\n".join(rows)


def tune_table(path: str) -> str:
    doc = json.loads(Path(path).read_text())
    rows = ["| candidate | params | MACs | INT8 | arena host / device | val AUC | test AUC | "
            "test night recall 0/10/20 dB | test FA / 8 h |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(doc["rows"], key=lambda r: r["macs"]):
        rec = "/".join(f"{v:.2f}" for v in (r.get("test_recall") or {}).values())
        best = " **(chosen)**" if r["name"] == doc.get("best") else ""
        rows.append(f"| {r['name']}{best} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {r['int8_bytes']:,} B | "
                    f"{r['arena_host']:,} / {r['arena_device']:,} B | {r['val_auc']:.3f} | {r['test_auc']:.3f} | "
                    f"{rec} | {r['test_fa_per_8h']:.1f} |")
    return "\n".join(rows)


def model_report(model_path: str, params_path: str | None, ram: str) -> None:
    params = Params.load(params_path) if params_path else Params()
    model = read_model(model_path)
    info = inspect_model(model, Path(model_path).name)
    plan = plan_arena(model, ram)
    rep = size_report(info, plan, params.dsp)
    from tflite_micro import runtime

    ip = runtime.Interpreter.from_bytes(model, arena_size=plan.arena_bytes)
    ip.set_input(np.zeros(info.input.shape, np.int8), 0)
    ip.invoke()
    t = time.perf_counter()
    for _ in range(20):
        ip.invoke()
    tflm_ms = (time.perf_counter() - t) / 20 * 1000
    with tempfile.TemporaryDirectory() as td:
        src = write_host_sources(Path(td) / "src", params.dsp)
        exe = Path(td) / "fe"
        harness = Path(__file__).resolve().parents[1] / "tests" / "c" / "fe_harness.c"
        subprocess.run(["gcc", "-O2", f"-I{src}", str(harness), str(src / "frontend.c"),
                        str(src / "frontend_tables.c"), "-lm", "-o", str(exe)], check=True)
        sr = int(params.dsp.sample_rate)
        (0.1 * np.random.default_rng(0).standard_normal(60 * sr)).astype(np.float32).tofile(Path(td) / "in.f32")
        t = time.perf_counter()
        subprocess.run([str(exe), "patches", str(Path(td) / "in.f32"), str(Path(td) / "o.f32"), "480"],
                       check=True, capture_output=True)
        fe_ms = (time.perf_counter() - t) / 60 * 1000
    print(format_report(rep))
    print(f"host    : TFLM invoke {tflm_ms:.3f} ms (x86 reference kernels), C front-end {fe_ms:.3f} ms per s of audio")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--params", default=None)
    ap.add_argument("--ram", default="auto", choices=["auto", "internal", "psram"])
    ap.add_argument("--tune", default=None, help="tune.json of a cryblock tune run")
    a = ap.parse_args(argv)
    if a.model:
        model_report(a.model, a.params, a.ram)
        return 0
    print(cost_table())
    if a.tune:
        print()
        print(tune_table(a.tune))
    return 0


if __name__ == "__main__":
    sys.exit(main())
