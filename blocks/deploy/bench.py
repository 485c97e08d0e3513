"""Benchmark figures of a captured ``CRYB/1`` log: latency percentiles, arena, rates, resets.

:func:`summarize` turns the records of a :class:`~cryblock.blocks.deploy.capture.LogCapture` into a JSON-ready
dict; :func:`format_summary` renders it for the terminal.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cryblock.escape import printable
from cryblock.logformat import KINDS, MAGIC, field_value


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])  # numpy default: linear interpolation
    return {"n": int(a.size), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(a.max()), "mean": float(a.mean())}


def summarize(log, capture_s: float | None = None) -> dict:
    """Summary of a :class:`~cryblock.blocks.deploy.capture.LogCapture` (JSON-ready dict).

    Keys: ``format`` (``CRYB/1``), ``capture_s`` (host wall time), ``device_s`` (sum over
    sessions of the INF ``t_ms`` span, s), ``lines``, ``records`` (count per kind),
    ``garbage_lines``, ``corrupt_lines``, ``other_version_lines``, ``boots``, ``resets``,
    ``resets_inferred``, ``concatenated_lines`` (lines holding several records, split),
    ``duplicate_records`` (repeated INF lines, counted once), ``boot`` (fields of the last BOOT, numbers converted) and
    ``model_bytes``/``arena_bytes``/``arena_used_bytes``, ``inferences`` (INF received),
    ``lost_inferences`` (INF ``seq`` gaps), ``inference_hz`` (seq advance / device_s),
    ``latency_us`` (``fe``, ``inv``, ``total`` = fe+inv → n/p50/p90/p99/max/mean, µs;
    numpy linear-interpolation percentiles), ``positives``, ``positive_fraction``,
    ``detections`` (EVT ON count), ``detections_per_hour`` (detections / device_s · 3600,
    falling back to capture_s), ``config`` (last CFG), ``errors`` (ERR records).
    Values that cannot be computed are None.
    """
    counts = {k: 0 for k in KINDS}
    for r in log.records:
        counts[r.kind] += 1
    infs = [r for r in log.records if r.kind == "INF"]
    fe = [r.num("fe_us") for r in infs]
    inv = [r.num("inv_us") for r in infs]
    fe_ok = [v for v in fe if v is not None]
    inv_ok = [v for v in inv if v is not None]
    total = [a + b for a, b in zip(fe, inv) if a is not None and b is not None]

    # Per-session device time span and seq advance.
    device_ms = 0.0
    seq_advance = 0
    lost = 0
    by_session: dict[int, list] = {}
    for r in infs:
        by_session.setdefault(r.session, []).append(r)
    for recs in by_session.values():
        ts = [r.num("t_ms") for r in recs if r.num("t_ms") is not None]
        if len(ts) >= 2:
            device_ms += max(ts) - min(ts)
        # the firmware's seq is a uint32 patch counter; anything else is a damaged value
        seqs = sorted({int(s) for s in (r.num("seq") for r in recs)
                       if s is not None and s == int(s) and 0 <= s < 2 ** 32})
        if len(seqs) >= 2:
            seq_advance += seqs[-1] - seqs[0]
            lost += (seqs[-1] - seqs[0] + 1) - len(seqs)
    device_s = device_ms / 1000.0 if device_ms > 0 else None

    pos = [r.num("pos") for r in infs]
    positives = int(sum(1 for p in pos if p is not None and p >= 1))
    detections = sum(1 for r in log.records if r.kind == "EVT" and r.fields.get("state") == "ON")
    span = device_s if device_s else (capture_s if capture_s else None)

    boots = [r for r in log.records if r.kind == "BOOT"]
    boot = {k: field_value(v) for k, v in boots[-1].fields.items()} if boots else None
    cfgs = [r for r in log.records if r.kind == "CFG"]

    def ib(key: str) -> int | None:
        v = boot.get(key) if boot else None
        return int(v) if isinstance(v, (int, float)) else None

    return {
        "format": MAGIC,
        "capture_s": None if capture_s is None else round(float(capture_s), 3),
        "device_s": device_s,
        "lines": log.lines,
        "records": counts,
        "garbage_lines": log.garbage,
        "corrupt_lines": log.corrupt,
        "other_version_lines": log.other_version,
        "boots": len(boots),
        "resets": log.resets,
        "resets_inferred": log.resets_inferred,
        "concatenated_lines": log.concatenated,
        "duplicate_records": log.duplicates,
        "boot": boot,
        "model_bytes": ib("model_bytes"),
        "arena_bytes": ib("arena_bytes"),
        "arena_used_bytes": ib("arena_used"),
        "inferences": len(infs),
        "lost_inferences": lost,
        "inference_hz": (seq_advance / device_s) if device_s else None,
        "latency_us": {"fe": _percentiles(fe_ok), "inv": _percentiles(inv_ok),
                       "total": _percentiles(total)},
        "positives": positives,
        "positive_fraction": (positives / len(infs)) if infs else None,
        "detections": detections,
        "detections_per_hour": (detections / span * 3600.0) if span else None,
        "config": {k: field_value(v) for k, v in cfgs[-1].fields.items()} if cfgs else None,
        "errors": [dict(r.fields) for r in log.records if r.kind == "ERR"],
    }


def format_summary(s: dict) -> str:
    """Multi-line human-readable rendering of :meth:`LogCapture.summary` output, terminal-safe."""
    def num(v, fmt="{:.1f}"):
        return "n/a" if v is None else fmt.format(v)

    lines = [f"format {s['format']}: {s['lines']} lines, {sum(s['records'].values())} records "
             f"({', '.join(f'{k} {v}' for k, v in s['records'].items() if v)}), "
             f"{s['garbage_lines']} garbage ({s['corrupt_lines']} corrupt CRYB/1, "
             f"{s['other_version_lines']} other version)"]
    dur = f"capture {num(s.get('capture_s'))} s, device time {num(s.get('device_s'))} s"
    if s.get("stop_reason"):
        dur += f", stopped: {s['stop_reason']}"
    lines.append(dur)
    lines.append(f"boots {s['boots']}, resets {s['resets']}"
                 + (f" ({s['resets_inferred']} inferred from t_ms)" if s.get("resets_inferred") else ""))
    if s["boot"]:
        lines.append(f"model {num(s['model_bytes'], '{:d}')} B, arena {num(s['arena_bytes'], '{:d}')} B "
                     f"(used {num(s['arena_used_bytes'], '{:d}')} B), fw {s['boot'].get('fw', '?')}")
    else:
        lines.append("no BOOT line seen (arena unknown; use --reset or press RESET while capturing)")
    lines.append(f"inferences {s['inferences']} ({s['lost_inferences']} lost), "
                 f"rate {num(s['inference_hz'], '{:.3f}')} /s")
    for key, name in (("fe", "front-end"), ("inv", "invoke"), ("total", "total")):
        p = s["latency_us"][key]
        if p:
            lines.append(f"{name:9s} µs: p50 {p['p50']:.0f}  p90 {p['p90']:.0f}  p99 {p['p99']:.0f}  "
                         f"max {p['max']:.0f}")
    lines.append(f"positives {s['positives']} ({num(s['positive_fraction'], '{:.1%}')}), "
                 f"detections {s['detections']} ({num(s['detections_per_hour'])} /h)")
    if s.get("config"):
        lines.append("config " + " ".join(f"{k}={v}" for k, v in s["config"].items()))
    for e in s.get("errors") or []:
        lines.append("device error " + " ".join(f"{k}={v}" for k, v in e.items()))
    for n in s.get("notes") or []:
        lines.append(f"note: {n}")
    return printable("\n".join(lines))  # device-supplied values (fw, config, errors) are shown, not obeyed
