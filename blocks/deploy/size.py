"""Flash / RAM / latency report of a generated firmware (:func:`size_report`, :func:`format_report`).

Estimates before a build; the constants name their sources. ``idf.py size`` gives the real
flash and static RAM figures after one.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from cryblock.params import DspParams

from .arena import ArenaPlan
from .model import ModelInfo


#: Effective int8 throughput of TFLM + ESP-NN on an ESP32-S3 @240 MHz, MAC/s: person detection
#: (7.16 M MACs) runs in 47 ms with the arena in internal RAM and 54 ms in PSRAM
#: (esp-nn README) → ≈0.15 / 0.13 GMAC/s. Estimates from it are good to about ±2×.
EFFECTIVE_MACS_PER_S = {"internal": 0.15e9, "psram": 0.13e9}


#: Flash used by everything except the model (bytes): an estimate, not a measurement — ESP-IDF
#: base app with FreeRTOS, newlib, I2S/GPIO drivers and console ≈ 200 KB, the TFLM runtime with a
#: handful of kernels ≈ 150 KB, ESP-NN ≈ 40 KB, esp-dsp FFT ≈ 10 KB. ``idf.py size`` gives the
#: real figure after a build.
CODE_FLASH_ESTIMATE = 400 * 1024


#: Default app partition of CONFIG_PARTITION_TABLE_SINGLE_APP_LARGE (1.5 MB, ESP-IDF
#: components/partition_table/partitions_singleapp_large.csv).
DEFAULT_APP_PARTITION = 0x180000


#: Audio ring between the capture and inference tasks: int16 samples, 1 s (a patch every 0.48 s;
#: inference of a small DS-CNN takes tens of ms, so this absorbs > 10 inference times).
AUDIO_RING_SECONDS = 1.0


#: I2S DMA: 8 descriptors × 240 frames × 4 bytes (micro_speech's setup, notes §3).
I2S_DMA_BYTES = 8 * 240 * 4


#: Stacks of the capture (4 KB), inference (8 KB) and command (4 KB) tasks.
TASK_STACK_BYTES = (4 + 8 + 4) * 1024


def size_report(info: ModelInfo, arena: ArenaPlan, dsp: DspParams) -> dict[str, Any]:
    """Flash / RAM / latency estimate of the generated firmware (plain JSON-able dict).

    Flash = model bytes + :data:`CODE_FLASH_ESTIMATE`. RAM = arena + front-end state
    (``cry_fe_t``) + audio ring + I2S DMA + task stacks. Latency = MACs /
    :data:`EFFECTIVE_MACS_PER_S` for the arena's region, with a ×0.5–×2 range.
    """
    fe_bytes = 4 * (dsp.window_length_samples + dsp.fft_length + dsp.patch_frames * dsp.mel_bands) + 16
    fe_bytes += 4 * dsp.num_spectrogram_bins  # magnitude on the inference task's stack
    ring = int(AUDIO_RING_SECONDS * dsp.sample_rate) * 2
    internal_other = fe_bytes + ring + I2S_DMA_BYTES + TASK_STACK_BYTES
    internal = internal_other + (arena.arena_bytes if arena.region == "internal" else 0)
    psram = arena.arena_bytes if arena.region == "psram" else 0
    flash_total = info.size_bytes + CODE_FLASH_ESTIMATE
    rate = EFFECTIVE_MACS_PER_S[arena.region]
    est_ms = info.macs / rate * 1000.0
    return {
        "model": {"bytes": info.size_bytes, "ops": list(info.ops), "macs": info.macs,
                  "input": asdict(info.input), "output": asdict(info.output)},
        "flash": {"model_bytes": info.size_bytes, "code_estimate_bytes": CODE_FLASH_ESTIMATE,
                  "total_estimate_bytes": flash_total,
                  "app_partition_bytes": app_partition_size(flash_total),
                  "basis": "model flatbuffer size (exact) + ≈400 KB for IDF base app, TFLM runtime, "
                           "ESP-NN and esp-dsp (estimate; run `idf.py size` for the real number)"},
        "ram": {"arena_bytes": arena.arena_bytes, "arena_region": arena.region,
                "arena_measured_host_bytes": arena.measured_bytes,
                "esp_nn_scratch_bound_bytes": arena.esp_nn_scratch_bytes,
                "arena_margin_fraction": arena.margin_fraction, "arena_budget_bytes": arena.budget_bytes,
                "frontend_bytes": fe_bytes, "audio_ring_bytes": ring, "i2s_dma_bytes": I2S_DMA_BYTES,
                "task_stacks_bytes": TASK_STACK_BYTES, "internal_total_bytes": internal,
                "psram_total_bytes": psram, "basis": arena.basis},
        "latency": {"macs": info.macs, "estimate_ms": round(est_ms, 2),
                    "range_ms": [round(est_ms / 2, 2), round(est_ms * 2, 2)],
                    "basis": f"MACs / {rate / 1e9:.2f} GMAC/s effective (esp-nn person-detection: "
                             "7.16 M MACs in 47 ms internal / 54 ms PSRAM at 240 MHz), ±2×"},
    }


def app_partition_size(app_bytes: int) -> int:
    """App partition size: the 1.5 MB default when ``app_bytes`` uses ≤ 85 % of it, otherwise
    1.25 × app rounded up to 64 KiB (app partitions must be 64 KiB aligned)."""
    if app_bytes <= 0.85 * DEFAULT_APP_PARTITION:
        return DEFAULT_APP_PARTITION
    return int(math.ceil(app_bytes * 1.25 / 0x10000) * 0x10000)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`size_report` (a few lines)."""
    f, r, lat, m = report["flash"], report["ram"], report["latency"], report["model"]
    kb = lambda b: f"{b / 1024:.1f} KiB"  # noqa: E731
    lines = [
        f"model   : {m['bytes']} B, {len(m['ops'])} ops ({', '.join(m['ops'])}), {m['macs'] / 1e6:.2f} M MACs",
        f"flash   : {kb(f['total_estimate_bytes'])} estimated = model {kb(f['model_bytes'])} + code ≈{kb(f['code_estimate_bytes'])}"
        f"; app partition {kb(f['app_partition_bytes'])}",
        f"arena   : {r['arena_bytes']} B in {r['arena_region']} RAM (host measured {r['arena_measured_host_bytes']} B"
        f" + ESP-NN scratch ≤{r['esp_nn_scratch_bound_bytes']} B + {r['arena_margin_fraction']:.0%}; budget {r['arena_budget_bytes']} B)",
        f"RAM     : internal ≈{kb(r['internal_total_bytes'])} (front-end {kb(r['frontend_bytes'])}, audio ring "
        f"{kb(r['audio_ring_bytes'])}, I2S DMA {kb(r['i2s_dma_bytes'])}, stacks {kb(r['task_stacks_bytes'])})"
        + (f", PSRAM {kb(r['psram_total_bytes'])}" if r["psram_total_bytes"] else ""),
        f"latency : ≈{lat['estimate_ms']} ms per patch (range {lat['range_ms'][0]}–{lat['range_ms'][1]} ms; {lat['basis']})",
    ]
    if "esp_nn" in report:  # added by the project generator (:mod:`.esp_nn`)
        lines.append(f"esp-nn  : {report['esp_nn']['statement']}")
        lines += [f"{d['level']:8s}: {d['text']}" for d in report["esp_nn"]["known_defects"]]
    return "\n".join(lines)


def write_measured_sizes(project, sizes: dict) -> dict:
    """Put the measured sizes of a build (:func:`cryblock.blocks.deploy.idf.idf_size`) into the
    project's ``size_report.json`` under ``measured`` (the estimates stay beside them, labelled).
    Returns the updated report."""
    import json
    from pathlib import Path

    from cryblock.output import atomic_write_text

    f = Path(project) / "size_report.json"
    rep = json.loads(f.read_text())
    rep["measured"] = dict(sizes)
    atomic_write_text(f, json.dumps(rep, indent=2, ensure_ascii=False) + "\n")
    return rep
