"""Size / arena / latency report of a model for the ESP32-S3 firmware, plus host timings.

    .venv/bin/python bench/size.py --model out/model_quantized_int8_io.tflite [--params params.json]

Prints the generator's report (cryblock.blocks.deploy.size.size_report: flash, RAM, arena, MAC-based latency
estimate) and, for orientation only, the host time of one TFLM invoke (reference kernels, x86)
and of the C front-end per second of audio (host gcc -O2, double-precision FFT). Device numbers
come from the firmware's INF lines (`cryblock bench`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cryblock.blocks.deploy.arena import plan_arena
from cryblock.blocks.deploy.model import inspect_model, read_model
from cryblock.blocks.deploy.project import write_host_sources
from cryblock.blocks.deploy.size import format_report, size_report
from cryblock.params import Params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--params", default=None)
    ap.add_argument("--ram", default="auto", choices=["auto", "internal", "psram"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    params = Params.load(a.params) if a.params else Params()
    model = read_model(a.model)
    info = inspect_model(model, Path(a.model).name)
    plan = plan_arena(model, a.ram)
    rep = size_report(info, plan, params.dsp)

    from tflite_micro import runtime

    ip = runtime.Interpreter.from_bytes(model, arena_size=plan.arena_bytes)
    x = np.zeros(info.input.shape, np.int8)
    ip.set_input(x, 0)
    ip.invoke()
    t = time.perf_counter()
    for _ in range(20):
        ip.invoke()
    rep["host"] = {"tflm_invoke_ms": round((time.perf_counter() - t) / 20 * 1000, 3)}

    with tempfile.TemporaryDirectory() as td:
        src = write_host_sources(Path(td) / "src", params.dsp)
        exe = Path(td) / "fe"
        harness = Path(__file__).resolve().parents[1] / "tests" / "c" / "fe_harness.c"
        subprocess.run(["gcc", "-O2", f"-I{src}", str(harness), str(src / "frontend.c"),
                        str(src / "frontend_tables.c"), "-lm", "-o", str(exe)], check=True)
        sr = int(params.dsp.sample_rate)
        rng = np.random.default_rng(0)
        (0.1 * rng.standard_normal(60 * sr)).astype(np.float32).tofile(Path(td) / "in.f32")
        t = time.perf_counter()
        subprocess.run([str(exe), "patches", str(Path(td) / "in.f32"), str(Path(td) / "o.f32"), "480"],
                       check=True, capture_output=True)
        rep["host"]["frontend_ms_per_audio_s"] = round((time.perf_counter() - t) / 60 * 1000, 3)

    if a.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print(format_report(rep))
        print(f"host    : TFLM invoke {rep['host']['tflm_invoke_ms']} ms (x86 reference kernels), "
              f"C front-end {rep['host']['frontend_ms_per_audio_s']} ms per s of audio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
