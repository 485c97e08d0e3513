"""Run reports: metrics.json, report.md (tables) and report.html (tables and plots).

The HTML is self-contained: matplotlib PNGs are embedded as base64 data URIs — ROC curves of
teacher / float / INT8 per window and per clip, the nursery-night score timeline with the
inserted cries and the false alerts marked, and score timelines of the longest positive and
negative test clip. User text (labels, categories) is escaped for Markdown
(:func:`cryblock.escape.md_cell`) and HTML.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from cryblock.escape import md_cell
from cryblock.output import atomic_write_text, json_safe

MODELS = (("teacher", "Teacher (YAMNet)"), ("float", "Student float32"), ("int8", "Student INT8 (TFLM)"))


def write_metrics(out_dir: str | Path, metrics: dict) -> Path:
    """``metrics.json`` (NaN/inf → null), atomically."""
    return atomic_write_text(Path(out_dir) / "metrics.json",
                             json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")


def _f(v, fmt="{:.3f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _ci(m: dict | None, key: str) -> str:
    ci = ((m or {}).get("auc_ci") or {}).get(key)
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def setting_text(det) -> str:
    """``thr 0.441, 2/3, hold 2 s`` for a DetectorParams or its JSON dict."""
    d = det if isinstance(det, dict) else {"threshold": det.threshold, "vote_n": det.vote_n,
                                           "vote_m": det.vote_m, "hold_seconds": det.hold_seconds}
    return f"thr {d['threshold']:.3g}, {d['vote_n']}/{d['vote_m']}, hold {d['hold_seconds']:g} s"


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f} %"


def _ci_pct(ci) -> str:
    return f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci and ci[0] == ci[0] else ""


def _fa(night: dict | None, background: str = "household") -> str:
    fa = ((night or {}).get("false_alerts") or {}).get(background)
    if not fa:
        return "–"
    lo, hi = fa["per_8h_ci"]
    return f"{fa['per_8h']:.1f} [{lo:.1f}, {hi:.1f}] ({fa['count']} in {fa['hours']:.1f} h)"


def _snrs(metrics: dict) -> list[str]:
    for key, _ in MODELS:
        night = (metrics.get(key) or {}).get("night") or {}
        keys = list(night.get("episodes") or {}) + list(night.get("singles") or {})
        if keys:
            return sorted({k.split()[-1] for k in keys}, key=float)
    return []


def results_table(metrics: dict) -> str:
    """Markdown table: teacher / float / INT8 — window AUC with its 95 % group-bootstrap interval,
    crying episodes alerted within 10 s per SNR (household sounds / nursery noise), single cries
    detected per SNR (household), false alerts per 8 h over the household recordings (exact
    Poisson interval) and over the nursery beds, at each model's detector setting; size and arena."""
    cost = metrics.get("cost", {})
    snrs = _snrs(metrics)
    head = ["model", "window AUC"]
    head += [f"episodes ≤ 10 s at {s} dB (household / nursery)" for s in snrs]
    head += [f"single cries at {s} dB" for s in snrs]
    head += ["false alerts / 8 h (household)", "nursery beds" if snrs else "false alerts / h (clips)",
             "detector", "size", "arena"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name in MODELS:
        m = metrics.get(key)
        if not m:
            continue
        w, night = m.get("window"), m.get("night") or {}
        cells = [name, _f(w and w["auc"]) + _ci(m, "window")]
        eps, sing = night.get("episodes") or {}, night.get("singles") or {}
        for s in snrs:
            cells.append(" / ".join(_pct((eps.get(f"{b} {s}") or {}).get("within_10s")) for b in ("household", "nursery")))
        for s in snrs:
            cells.append(_pct((sing.get(f"household {s}") or {}).get("recall")))
        if snrs:
            cells += [_fa(night), _fa(night, "nursery")]
        else:
            cells += ["–", _f(m["detector"]["per_hour"], "{:.1f}")]
        cells.append(setting_text(m["detector_setting"]) if m.get("detector_setting") else "–")
        cells.append({"teacher": "–", "float": f"{cost.get('float_bytes', 0):,} B" if cost.get("float_bytes") else "–",
                      "int8": f"{cost.get('int8_bytes', 0):,} B"}[key])
        cells.append(f"{cost.get('arena_bytes', 0):,} B" if key == "int8" and cost.get("arena_bytes") else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def episode_table(metrics: dict, key: str = "int8") -> str:
    """Markdown: per (background, SNR) the crying episodes' time to alert (median, 90th
    percentile) and the share alerted within 5, 10 (95 % Wilson interval) and 30 s."""
    eps = (((metrics.get(key) or {}).get("night")) or {}).get("episodes") or {}
    if not eps:
        return ""
    rows = ["| background | SNR | episodes | median time to alert | 90th percentile | ≤ 5 s | ≤ 10 s | ≤ 30 s |",
            "|---|---|---|---|---|---|---|---|"]
    for cond, e in eps.items():
        b, snr = cond.rsplit(" ", 1)
        sec = lambda v: "never" if v is None or v == float("inf") or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f} s"
        rows.append(f"| {b} | {snr} dB | {e['n']} | {sec(e['median_s'])} | {sec(e['p90_s'])} | {_pct(e['within_5s'])} | "
                    f"{_pct(e['within_10s'])}{_ci_pct(e.get('within_10s_ci'))} | {_pct(e['within_30s'])} |")
    return "\n".join(rows)


def single_table(metrics: dict) -> str:
    """Markdown: single cries (one clip, ≤ 10 s) detected, per background and SNR, each model."""
    conds = []
    for key, _ in MODELS:
        conds += [c for c in ((((metrics.get(key) or {}).get("night")) or {}).get("singles") or {}) if c not in conds]
    if not conds:
        return ""
    rows = ["| background | SNR | cries | " + " | ".join(n for _, n in MODELS) + " |", "|---|---|---|---|---|---|"]
    for cond in conds:
        b, snr = cond.rsplit(" ", 1)
        cells = []
        n = 0
        for key, _ in MODELS:
            x = ((((metrics.get(key) or {}).get("night")) or {}).get("singles") or {}).get(cond)
            n = n or (x or {}).get("n", 0)
            cells.append(_pct((x or {}).get("recall")) + _ci_pct((x or {}).get("ci")))
        rows.append(f"| {b} | {snr} dB | {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def det_table(metrics: dict, points: int = 8) -> str:
    """Markdown DET table: per model, miss rate of crying episodes (not alerted within 10 s)
    against false alerts per hour over its thresholds (at its votes and hold), the deployed
    threshold marked."""
    rows = ["| model | threshold | false alerts / h (household) | false alerts / 8 h | episodes missed (> 10 s) | "
            "single cries missed | |", "|---|---|---|---|---|---|---|"]
    any_ = False
    for key, name in MODELS:
        m = metrics.get(key) or {}
        det = m.get("det") or []
        if not det:
            continue
        any_ = True
        chosen = (m.get("detector_setting") or {}).get("threshold")
        keep = set(np.linspace(0, len(det) - 1, min(points, len(det))).round().astype(int))
        for i, d in enumerate(det):
            mark = d["threshold"] == chosen
            if i not in keep and not mark:
                continue
            rows.append(f"| {name} | {d['threshold']:.3g} | {_f(d['fa_per_hour'], '{:.2f}')} | "
                        f"{_f(d['fa_per_hour'] * 8 if d['fa_per_hour'] == d['fa_per_hour'] else None, '{:.1f}')} | "
                        f"{_pct(d['miss_rate'])} | {_pct(d['single_miss_rate'])} | {'**deployed**' if mark else ''} |")
    return "\n".join(rows) if any_ else ""


def window_table(metrics: dict) -> str:
    """Markdown table of the per-window metrics (every test window labelled with its clip's label)."""
    rows = ["| model (per window) | AUC | best-F1 | threshold | precision | recall | FPR |", "|---|---|---|---|---|---|---|"]
    for key, name in MODELS:
        w = (metrics.get(key) or {}).get("window")
        if w:
            rows.append(f"| {name} | {_f(w['auc'])} | {_f(w['best_f1'])} | {_f(w['threshold'], '{:.4g}')} | "
                        f"{_f(w['precision'])} | {_f(w['recall'])} | {_f(w['fpr'])} |")
    return "\n".join(rows)


def category_tables(metrics: dict) -> str:
    """Markdown: per category of negative test clips, how many alert (each model, its setting),
    and the categories of the nights' false alerts."""
    cats: dict[str, dict] = {}
    for key, _ in MODELS:
        for cat, row in ((metrics.get(key) or {}).get("categories") or {}).items():
            cats.setdefault(cat, {"clips": row["clips"]})[key] = row["alerting"]
    lines = []
    if cats:
        lines = ["| category (negative test clips, each alone) | clips | teacher alerting | float alerting | "
                 "INT8 alerting |", "|---|---|---|---|---|"]
        for cat, row in sorted(cats.items(), key=lambda kv: (-kv[1].get("int8", 0), -kv[1].get("teacher", 0), kv[0])):
            if row.get("int8", 0) or row.get("teacher", 0) or row.get("float", 0) or len(cats) <= 25:
                lines.append(f"| {md_cell(cat)} | {row['clips']} | {row.get('teacher', 0)} | {row.get('float', 0)} | "
                             f"{row.get('int8', 0)} |")
    fa = {}
    for key, _ in MODELS:
        for cat, n in ((((metrics.get(key) or {}).get("night") or {}).get("fa_categories")) or {}).items():
            fa.setdefault(cat, {})[key] = n
    if fa:
        lines += ["", "| night false alerts caused by | teacher | float | INT8 |", "|---|---|---|---|"]
        for cat, row in sorted(fa.items(), key=lambda kv: (-kv[1].get("int8", 0), kv[0])):
            lines.append(f"| {md_cell(cat)} | {row.get('teacher', 0)} | {row.get('float', 0)} | {row.get('int8', 0)} |")
    groups = ((((metrics.get("int8") or {}).get("night")) or {}).get("fa_groups")) or {}
    if groups:
        top = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        lines += ["", "| INT8 night false alerts by recording group (a cat, a speaker, a source) | alerts |", "|---|---|"]
        lines += [f"| {md_cell(g)} | {n} |" for g, n in top]
    return "\n".join(lines)


def group_table(metrics: dict, key: str = "int8", limit: int = 12) -> str:
    """Markdown: the cry groups (babies, recording sources) whose cries the model catches least
    (single cries detected, episodes alerted within 10 s)."""
    groups = ((((metrics.get(key) or {}).get("night")) or {}).get("groups")) or {}
    if not groups:
        return ""

    def rate(g):
        n = g["singles"] + g["episodes"]
        return (g["detected"] + g["within_10s"]) / n if n else 1.0

    worst = sorted(groups.items(), key=lambda kv: (rate(kv[1]), kv[0]))[:limit]
    rows = [f"| cry group (worst {len(worst)} of {len(groups)}) | single cries detected | episodes ≤ 10 s |",
            "|---|---|---|"]
    for g, r in worst:
        rows.append(f"| {md_cell(g)} | {r['detected']}/{r['singles']} | {r['within_10s']}/{r['episodes']} |")
    return "\n".join(rows)


def cascade_table(metrics: dict) -> str:
    """Markdown: the INT8 device alone vs the device with the hub's confirmation (YAMNet and the
    hub model on the snippet around each alert): false alerts per 8 h and crying episodes alerted
    within 10 s (for the hub, its 2 s wait for audio after the onset included)."""
    m = metrics.get("int8") or {}
    cas = m.get("cascade")
    if not cas or not m.get("night"):
        return ""
    rows = ["| | false alerts / 8 h (household) | nursery beds | episodes alerted within 10 s (mean) | single cries |",
            "|---|---|---|---|---|"]
    for name, v in (("INT8 device alone", m["night"]), ("device + hub confirmation", cas)):
        rows.append(f"| {name} | {_fa(v)} | {_fa(v, 'nursery')} | {_pct(v['headline_recall'])} | "
                    f"{_pct(v['single_recall'])} |")
    return "\n".join(rows)


def pareto_table(calibration: dict | None, key: str = "int8", limit: int = 15) -> str:
    """Markdown Pareto front (false alerts per 8 h vs episodes alerted within 10 s) of the
    detector candidates tried on the validation nights, the chosen one marked."""
    cal = (calibration or {}).get(key)
    if not cal:
        return ""
    chosen = cal["setting"]
    rows = ["| threshold | votes | hold | episodes ≤ 10 s | false alerts / 8 h | upper 95 % limit | |",
            "|---|---|---|---|---|---|---|"]
    front = cal["pareto"]
    if len(front) > limit:  # keep the chosen one and an even spread
        keep = set(np.linspace(0, len(front) - 1, limit).round().astype(int))
        front = [p for i, p in enumerate(front) if i in keep or all(p[k] == chosen[k] for k in chosen)]
    for p in front:
        mark = "**deployed**" if all(p[k] == chosen[k] for k in chosen) else ""
        rows.append(f"| {p['threshold']:.3f} | {p['vote_n']}/{p['vote_m']} | {p['hold_seconds']:g} s | "
                    f"{_pct(p['within_10s'])} | {p['fa_per_8h']:.1f} | {p['fa_per_8h_upper']:.1f} | {mark} |")
    return "\n".join(rows)


def _pyplot():
    """``matplotlib.pyplot`` for the report's figures: the Agg backend, and every text literal —
    mathtext off (``text.parse_math``), so a ``$`` in a file, label or category name is drawn as
    it is instead of being parsed as TeX (``baby$_$cry.wav`` used to abort the report)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def roc_figure(curves: dict) -> str:
    """Base64 PNG of ROC curves; ``curves[name] = (y_window, s_window, y_clip, s_clip)``."""
    plt = _pyplot()
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, (title, iy, isc) in zip(axes, (("per window", 0, 1), ("per clip (max over windows)", 2, 3))):
        for key, name in MODELS:
            if key not in curves:
                continue
            y, s = np.asarray(curves[key][iy]), np.asarray(curves[key][isc], dtype=float)
            ok = np.isfinite(s)
            fpr, tpr, _ = roc_curve(y[ok], s[ok])
            ax.plot(fpr, tpr, label=f"{name} AUC {roc_auc_score(y[ok], s[ok]):.3f}")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(title=f"ROC, {title}", xlabel="false-positive rate", ylabel="true-positive rate")
        ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def timeline_figure(timelines: list[dict], threshold: float) -> str:
    """Base64 PNG: scores of the three models over each given clip (one panel per clip; x in
    seconds) with the detector threshold. Each dict: name, hop_seconds, label, teacher, float, int8."""
    plt = _pyplot()

    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 3.0 * len(timelines)), squeeze=False)
    for ax, tl in zip(axes[:, 0], timelines):
        t = np.arange(len(tl["teacher"])) * tl["hop_seconds"]
        for key, name in MODELS:
            ax.plot(t, tl[key], label=name, drawstyle="steps-post")
        ax.axhline(threshold, color="red", ls="--", lw=0.8, label=f"INT8 detector threshold {threshold}")
        ax.set(ylim=(-0.02, 1.02), xlabel="time (s)", ylabel="positive score",
               title=f"{Path(tl['name']).name} (label: {'positive' if tl['label'] else 'negative'})")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def night_figure(night, night_scores: dict, settings: dict, snr: float | None = None) -> str:
    """Base64 PNG of a night's household stream at one SNR (default: the middle one): each
    model's score over time (minutes), the laid-in cries shaded (green: the INT8 detector caught
    it — an episode within 10 s —, red: missed), the INT8 false alerts marked, the INT8 threshold
    dashed; legend below the plot."""
    plt = _pyplot()

    from cryblock.blocks.learn.night import HEADLINE_WITHIN_S, judge

    streams = [(i, s) for i, s in enumerate(night.streams) if s.background == "household" and s.insertions]
    if not streams:
        streams = [(i, s) for i, s in enumerate(night.streams) if s.insertions]
    snrs = sorted({s.snr_db for _, s in streams})
    snr = snrs[len(snrs) // 2] if snr is None else snr
    si, stream = next((i, s) for i, s in streams if s.snr_db == snr)
    fig, ax = plt.subplots(figsize=(14, 4.6))
    t = np.arange(len(night_scores[next(iter(night_scores))].streams[si])) * night.hop_s / 60.0
    for key, name in MODELS:
        if key in night_scores:
            ax.plot(t, night_scores[key].streams[si], lw=0.6, label=name, alpha=0.85)
    v = judge(night, night_scores["int8"], settings["int8"]) if "int8" in night_scores else None
    recs = [r for r in (v.records if v else []) if r["background"] == stream.background and r["snr"] == snr]
    for ins, r in zip(stream.insertions, recs or [None] * len(stream.insertions)):
        ok = True if r is None else (r["detected"] if ins.kind == "single" else r["time_to_alert"] <= HEADLINE_WITHIN_S)
        ax.axvspan(ins.start / night.sample_rate / 60, ins.end / night.sample_rate / 60,
                   color="tab:green" if ok else "tab:red", alpha=0.25 if ins.kind == "single" else 0.15, lw=0)
    if v:
        for a in v.alerts:
            if a["background"] == stream.background:
                ax.axvline(a["time_s"] / 60, color="black", lw=0.8, ls=":")
        ax.axhline(settings["int8"].threshold, color="red", ls="--", lw=0.8, label="INT8 threshold")
    ax.set(ylim=(-0.02, 1.02), xlim=(0, t[-1] if len(t) else 1), xlabel="night time (min)", ylabel="cry score",
           title=f"{stream.background.capitalize()} night, cries at {snr:g} dB SNR (shaded: green caught / red missed "
                 "by the INT8 detector; dotted: its false alerts on the background alone)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    return _png(fig)


def det_figure(metrics: dict) -> str:
    """Base64 PNG: DET curves (miss rate of crying episodes within 10 s against false alerts per
    hour of household audio, log axes) of teacher / float / INT8, each at its votes and hold, the
    deployed points marked, the one-per-night line (0.125 / h) dotted."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 5))
    for key, name in MODELS:
        m = metrics.get(key) or {}
        det = m.get("det") or []
        pts = [(d["fa_per_hour"], d["miss_rate"]) for d in det if d["fa_per_hour"] == d["fa_per_hour"]
               and d["miss_rate"] == d["miss_rate"]]
        if not pts:
            continue
        fa, miss = np.array(pts).T
        floor = 0.5 / max(1e-9, ((m.get("night") or {}).get("false_alerts") or {}).get("household", {}).get("hours", 1))
        line, = ax.plot(np.maximum(fa, floor), np.maximum(miss, 1e-3), label=name, drawstyle="steps-post")
        chosen = (m.get("detector_setting") or {}).get("threshold")
        for d in det:
            if d["threshold"] == chosen and d["fa_per_hour"] == d["fa_per_hour"] and d["miss_rate"] == d["miss_rate"]:
                ax.plot(max(d["fa_per_hour"], floor), max(d["miss_rate"], 1e-3), "o", color=line.get_color())
    ax.axvline(1 / 8, color="grey", ls=":", lw=1, label="one false alert per 8 h")
    ax.set(xscale="log", yscale="log", xlabel="false alerts per hour (household recordings; 0 plotted at ½ alert)",
           ylabel="crying episodes not alerted within 10 s", title="DET curves (dots: deployed settings)")
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def detect_figure(results: list[dict], threshold: float) -> bytes:
    """PNG bytes for ``cryblock detect``: per recording, the INT8 score over time, the threshold
    and the alerts the firmware would raise (shaded)."""
    plt = _pyplot()

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.6 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        t = np.arange(r["patches"]) * r["hop_seconds"]
        ax.plot(t, r["scores"], drawstyle="steps-post", lw=0.8, label="INT8 score")
        ax.axhline(threshold, color="red", ls="--", lw=0.8, label=f"threshold {threshold:g}")
        for a in r["alerts"]:
            ax.axvspan(a["start_s"], a["end_s"], color="tab:orange", alpha=0.3, lw=0)
        ax.set(ylim=(-0.02, 1.02), xlim=(0, max(t[-1] if len(t) else 0, r["hop_seconds"])), ylabel="score",
               title=f"{Path(r['file']).name}: {len(r['alerts'])} alert(s)")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def parent_summary(metrics: dict, params) -> list[str]:
    """The report's first lines, for a parent: how soon the monitor alerts when a baby cries over
    nursery noise and household sounds, how many false alerts a night brings (with the interval
    and what the validation nights had promised), the single-cry recall to read it against, the
    device figures, version and date."""
    import datetime

    from cryblock import __version__

    m = metrics.get("int8") or {}
    night = m.get("night") or {}
    eps = night.get("episodes") or {}
    fa = (night.get("false_alerts") or {}).get("household")
    lines = ["# What the baby monitor will do at night", ""]
    if not eps and not fa:
        lines += ["No night could be built from these data (no recordings): see the tables below.", ""]
    else:
        mid = _snrs(metrics)
        mid = mid[len(mid) // 2] if mid else "10"
        e_n, e_h = eps.get(f"nursery {mid}") or {}, eps.get(f"household {mid}") or {}
        parts = []
        if e_n:
            parts.append(f"**alerts within 10 s in {_pct(e_n['within_10s'])}{_ci_pct(e_n.get('within_10s_ci'))} of "
                         f"crying episodes over nursery noise** (white/pink/brown noise machines, fans, air purifiers, "
                         f"rain, lullabies, a TV through the wall) at {mid} dB SNR")
        if e_h:
            parts.append(f"{_pct(e_h['within_10s'])}{_ci_pct(e_h.get('within_10s_ci'))} over household sounds")
        head = "The deployed INT8 detector " + ", and ".join(parts) if parts else "The deployed INT8 detector"
        if fa:
            lo, hi = fa["per_8h_ci"]
            head += (f"; **{fa['per_8h']:.1f} false alerts per night** (8 h; 95 % interval {lo:.1f}–{hi:.1f}; "
                     f"{fa['count']} in {fa['hours']:.1f} h of household recordings it never trained on)")
        lines += [head + ".", ""]
        cv = metrics.get("cv")
        where = (f"{cv['folds']}-fold cross-validation by group: every negative second and every cry of the data counts "
                 "once, judged by a model that never heard its recording group") if cv else "the held-out test split"
        lines += [f"Measured on {where}, with the firmware's own decision rule ({setting_text(metrics['detector'])}; "
                  "a crying episode is 20–90 s of one baby's cries; SNR = cry power over the background's).", ""]
        cal = (m.get("calibration") or (metrics.get("calibration") or {}).get("int8")) or {}
        prom = cal.get("promised")
        if prom and fa:
            lines += [f"- Promised by the validation nights ({cal['hours']:.1f} h): {prom['fa_per_8h']:.1f} false alerts "
                      f"per 8 h (upper 95 % limit {prom['fa_per_8h_upper']:.1f}; budget {cal['budget_per_8h']:g}"
                      + ("" if cal["within_budget"] else ", **not met** — no setting's limit was within it") + "); "
                      f"measured on held-out nights: **{fa['per_8h']:.1f}** [{fa['per_8h_ci'][0]:.1f}, "
                      f"{fa['per_8h_ci'][1]:.1f}]."]
        sing = night.get("singles") or {}
        s_h = sing.get(f"household {mid}")
        if s_h:
            lines += [f"- A single short cry (one clip, ≤ {params.night.max_cry_seconds:g} s) at {mid} dB is caught in "
                      f"{_pct(s_h['recall'])}{_ci_pct(s_h.get('ci'))}: read the episode figures against it — the detector "
                      "waits for sustained crying, which is what a parent needs to hear."]
        cas = m.get("cascade")
        cfa = ((cas or {}).get("false_alerts") or {}).get("household")
        if cfa:
            lines += ["- With a home hub confirming each alert (YAMNet and the run's hub model on the 4 s around it, "
                      f"`cryblock collect --confirm`): **{cfa['per_8h']:.1f} false alerts per night** "
                      f"[{cfa['per_8h_ci'][0]:.1f}, {cfa['per_8h_ci'][1]:.1f}], with {_pct(cas['headline_recall'])} of crying "
                      "episodes still alerted within 10 s (the hub's 2 s wait for audio after the onset included; "
                      f"device alone: {_pct(night.get('headline_recall'))}, both the mean over SNRs and backgrounds)."]
        fn = (night.get("false_alerts") or {}).get("nursery")
        if fn:
            lines += [f"- Over {fn['hours']:.1f} h of nursery noise beds alone: {fn['count']} false alert(s)."]
        w = m.get("window")
        if w:
            lines += [f"- Window AUC {_f(w['auc'])}{_ci(m, 'window')} (teacher "
                      f"{_f(((metrics.get('teacher') or {}).get('window') or {}).get('auc'))})."]
    cost = metrics.get("cost") or {}
    if cost.get("int8_bytes"):
        lines += [f"- On the device: INT8 model {cost['int8_bytes']:,} B, {cost.get('macs', 0) / 1e6:.2f} M MACs per "
                  f"0.96 s patch, TFLite Micro arena {cost.get('arena_bytes') or 0:,} B on the host (`cryblock build` "
                  "adds the ESP-NN scratch and prints the device plan and latency)."]
    lines += [f"- cryblock {__version__}, {datetime.date.today().isoformat()}.", ""]
    return lines


def _training_md(metrics: dict, params) -> list[str]:
    cost, tr, filt = metrics["cost"], metrics.get("training") or {}, metrics.get("filter") or {}
    d = metrics.get("data", {})
    aug = params.augment
    augs = [n for n, p in (("mix", aug.p_mix), ("gain", aug.p_gain), ("shift", aug.p_shift),
                           ("SpecAugment", aug.p_specaugment), ("band-limit", aug.p_bandlimit),
                           ("nursery beds", aug.p_nursery)) if p > 0]
    lp = params.learn
    lines = ["## Training", "",
             f"Preset **{metrics['preset']}**, labels {', '.join(md_cell(x) for x in metrics['labels'])}. "
             f"Temperature {lp.temperature}, α {lp.alpha}, student {cost.get('architecture', '')}, "
             f"neg_per_pos {lp.neg_per_pos}, negatives failing the teacher filter: {lp.neg_filter}, category balance "
             f"{lp.negative_balance:g}, hard-negative weight {lp.hard_negative_weight:g}, aux_weight {lp.aux_weight}; "
             f"augmentation: {', '.join(augs) if augs else 'none'}"
             + (f" (teacher targets: {aug.teacher_target})" if augs else "") + ".", ""]
    if d.get("split"):
        lines += ["Data (split by group): " + ", ".join(
            f"{k} {v['clips']} clips / {v['windows']} windows" for k, v in d["split"].items()) + ".", ""]
    if filt:
        lines += [f"Teacher filter: kept {filt['positive_kept']}/{filt['positive_windows']} positive and "
                  f"{filt['negative_kept']}/{filt['negative_windows']} negative training windows. "
                  f"Best epoch {tr.get('best_epoch')} (validation AUC {_f(tr.get('best_val_auc'))}).", ""]
    cv = metrics.get("cv")
    if cv:
        lines += [f"Cross-validation: {cv['folds']} folds by group; per fold: " + "; ".join(
            f"{p['fold']}: {p['train_clips']}/{p['validation_clips']}/{p['test_clips']} clips, best epoch "
            f"{p['best_epoch']}, val AUC {_f(p['best_val_auc'])}" for p in cv["per_fold"]) + ".", ""]
    return lines


def _results_md(metrics: dict, params, title: str) -> list[str]:
    lines = [f"## {title}", "", results_table(metrics), "",
             "AUC intervals: 95 % bootstrap over groups (recording sources); false alerts: exact Poisson 95 %; shares: "
             f"Wilson 95 %. Each model at its own detector setting, {metrics['detector'].get('tuned_on', 'as given')}; "
             "the INT8 one is deployed. The teacher's score is YAMNet's own probability of its cry classes ("
             "'Baby cry, infant cry', 'Crying, sobbing'), on another scale than the student's: its threshold is not "
             "comparable with the student's.", ""]
    nights = metrics.get("night") or {}
    if nights.get("hours"):
        h = nights["hours"]
        lines += [f"Nights: {h.get('household', 0):.1f} h of household recordings ({nights.get('negative_clips', 0)} "
                  f"negative clips, longest first) and {h.get('nursery', 0):.1f} h of nursery noise beds, with single "
                  "cries and 20–90 s crying episodes laid in at each SNR; false alerts counted on the backgrounds "
                  "alone." + (f" {nights['dropped']} insertions found no room." if nights.get("dropped") else ""), ""]
    for title2, text in (("Crying episodes: time to alert (INT8)", episode_table(metrics)),
                         ("Single cries detected", single_table(metrics)),
                         ("DET: missed episodes against false alerts", det_table(metrics)),
                         ("Second opinion: a home hub confirms each alert", cascade_table(metrics)),
                         ("Which sounds alert", category_tables(metrics)),
                         ("Cry groups caught least (INT8)", group_table(metrics))):
        if text:
            lines += [f"## {title2}", "", text, ""]
    lines += ["## Per window", "", window_table(metrics), ""]
    return lines


def _summary_md(metrics: dict, params) -> str:
    cost = metrics["cost"]
    lines = parent_summary(metrics, params)
    title = ("Cross-validated results (pooled held-out folds)" if metrics.get("cv") else "Results on the test split")
    if any(metrics.get(k) for k, _ in MODELS):
        lines += _results_md(metrics, params, title)
    cal = metrics.get("calibration") or {k: (metrics.get(k) or {}).get("calibration") for k, _ in MODELS}
    par = pareto_table(cal)
    if par:
        c = cal["int8"]
        lines += ["## Detector calibration (INT8, validation nights)", "",
                  f"{c['candidates']} candidate settings on {c['hours']:.1f} h of validation nights; the deployed one "
                  "has the most episodes alerted within 10 s whose false-alert rate's upper 95 % limit is within "
                  f"{c['budget_per_8h']:g} per 8 h" + ("" if c["within_budget"] else " — **no candidate met it**: the "
                                                        "one with the fewest false alerts is deployed") + ". Pareto front:",
                  "", par, ""]
    lines += _training_md(metrics, params)
    lines += ["## INT8 cost", "",
              f"- size {cost['int8_bytes']:,} B" + (f" (float {cost['float_bytes']:,} B)" if cost.get("float_bytes") else ""),
              f"- parameters {cost['params']:,}, MACs {cost['macs']:,} per 0.96 s patch",
              f"- TFLite Micro arena {cost['arena_bytes']:,} B (host interpreter)"]
    agree = metrics.get("int8_vs_float") or {}
    if agree.get("max_abs_diff") is not None:
        lines.append(f"- INT8 vs float: max |Δp| {_f(agree['max_abs_diff'], '{:.4f}')}, decision agreement "
                     f"{_f(agree['decision_agreement'], '{:.4f}')}")
    lines += ["", "## Timing", "",
              ", ".join(f"{k.replace('_seconds', '')} {v:.1f} s" for k, v in metrics["timing"].items()), ""]
    return "\n".join(lines)


def _evaluation_md(metrics: dict, params) -> str:
    d = metrics["data"]
    lines = parent_summary(metrics, params)
    lines += [
        f"Run `{md_cell(metrics['run'])}` on `{md_cell(metrics['manifest'])}`: {d['clips']} clips "
        f"({d['positive_clips']} positive, {d['negative_clips']} negative), {d['patches']} windows, all evaluated "
        f"(no split). Preset {metrics['preset']}, labels {', '.join(md_cell(x) for x in metrics['labels'])}; each model "
        f"at the run's detector setting (INT8: {setting_text(metrics['detector'])}).", ""]
    if metrics.get("undefined"):
        lines += ["Not defined for these recordings: " + "; ".join(metrics["undefined"]) + ".", ""]
    pos = {k: ((metrics.get(k) or {}).get("detector") or {}).get("pos_clips_detected") for k, _ in MODELS}
    if any(v is not None and v == v for v in pos.values()):
        lines += ["Positive clips alerted (detector over each clip alone): " + ", ".join(
            f"{name} {_f(pos[k])}" for k, name in MODELS) + ".", ""]
    lines += _results_md(metrics, params, "Results")
    return "\n".join(lines)


def publish(out_dir: str | Path, metrics: dict, params, folds: list | None = None) -> None:
    """metrics.json, report.md and report.html written into a staging folder inside ``out_dir``
    and moved into place together (an evaluation never leaves half a report)."""
    import os
    import shutil

    from cryblock.output import staging_dir

    out = Path(out_dir)
    staging = staging_dir(out)
    try:
        write_metrics(staging, metrics)
        write_reports(staging, metrics, params, folds)
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_reports(out_dir: str | Path, metrics: dict, params, folds: list | None = None) -> None:
    """Write ``report.md`` and ``report.html`` (plots embedded) into ``out_dir``, atomically — of a
    training run, a cross-validation, or ``cryblock evaluate`` (``metrics["kind"] == "evaluation"``).

    Args:
        folds: the evaluated :class:`~cryblock.blocks.learn.evaluate.Fold` s (window scores, test
            splits' clips, nights) for the plots; None: tables only.
    """
    from cryblock.blocks.learn.evaluate import clip_max, setting_from_dict

    out = Path(out_dir)
    evaluation = metrics.get("kind") == "evaluation"
    md = _evaluation_md(metrics, params) if evaluation else _summary_md(metrics, params)
    atomic_write_text(out / "report.md", md)
    imgs = []
    if any((metrics.get(k) or {}).get("det") for k, _ in MODELS):
        imgs.append(("DET curves", det_figure(metrics)))
    tests = [f for f in (folds or []) if f.test is not None and f.window]
    pos = metrics.get("positive_index", 1)
    if tests:
        y = np.concatenate([(np.asarray(f.test.y) == pos).astype(int) for f in tests])
        cy = np.concatenate([(np.asarray(f.test.clip_y) == pos).astype(int) for f in tests])
        if len(np.unique(cy)) == 2:
            curves = {}
            for k in tests[0].window:
                s = np.concatenate([f.window[k] for f in tests])
                cm = np.concatenate([clip_max(f.window[k], f.test.clip_index, len(f.test.clip_y)) for f in tests])
                curves[k] = (y, s, cy, cm)
            imgs.append(("ROC curves (pooled held-out windows)", roc_figure(curves)))
    settings = {k: setting_from_dict(m["detector_setting"]) for k in ("teacher", "float", "int8")
                if (m := metrics.get(k)) and m.get("detector_setting")}
    night_fold = next((f for f in tests if f.test_night is not None and f.test_scores
                       and any(st.insertions for st in f.test_night.streams)), None)
    if night_fold is not None and "int8" in settings:
        imgs.append(("Nursery night (first fold)", night_figure(night_fold.test_night, night_fold.test_scores, settings)))
    if tests:
        f = tests[0]
        cb = (np.asarray(f.test.clip_y) == pos).astype(int)
        counts = np.bincount(f.test.clip_index, minlength=len(cb))
        timeline = []
        for lab in (1, 0):  # longest positive and longest negative clip
            cand = np.flatnonzero(cb == lab)
            if len(cand):
                c = int(cand[np.argmax(counts[cand])])
                msk = np.asarray(f.test.clip_index) == c
                timeline.append({"name": f.test.clip_names[c], "hop_seconds": params.dsp.patch_hop_seconds,
                                 "label": lab, **{k: sc[msk] for k, sc in f.window.items()}})
        if timeline:
            imgs.append(("Score timelines of the longest positive and negative clips",
                         timeline_figure(timeline, params.detector.threshold)))
    body = _md_to_html(md)
    for title, b64 in imgs:
        body += f"<h2>{html.escape(title)}</h2>\n<img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{b64}\">\n"
    title = "cryblock evaluation" if evaluation else "cryblock learning run"
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + title + "</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}</style></head><body>\n" + body
            + "</body></html>\n")
    atomic_write_text(out / "report.html", page)


def _md_cells(line: str) -> list[str]:
    """Cells of a Markdown table row, honouring ``\\|`` escapes."""
    cells, cur, esc = [], "", False
    for ch in line.strip().strip("|"):
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return cells


def _md_text(s: str) -> str:
    """Markdown inline text → escaped HTML text (bold markers dropped, md_cell escapes undone)."""
    s = re.sub(r"\\(.)", r"\1", s.replace("**", "")).replace("&lt;", "<")
    return html.escape(s)


def _md_to_html(md: str) -> str:
    """Tiny converter for the report's own Markdown (headings, tables, bullet lists, paragraphs)."""
    out, in_table, in_list = [], False, False
    for line in md.split("\n"):  # our own line breaks only: str.splitlines() also splits at U+2028, U+0085, …
        if line.startswith("|"):
            cells = _md_cells(line)
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c.replace('**', '').replace('&lt;', '<'))}</{tag}>"
                                        for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_md_text(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("## "):
            out.append(f"<h2>{_md_text(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{_md_text(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{_md_text(line)}</p>")
    if in_table:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    return "\n".join(out) + "\n"
