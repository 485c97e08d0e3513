"""Run reports: metrics.json, report.md (results table) and report.html (with plots).

The HTML is self-contained: matplotlib PNGs (ROC curves of teacher / float / INT8 per window and
per clip; a score timeline of the longest test clip) are embedded as base64 data URIs.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from cryblock.io import atomic_write_text, json_safe

MODELS = (("teacher", "Teacher (YAMNet)"), ("float", "Student float32"), ("int8", "Student INT8 (TFLM)"))


def write_metrics(out_dir: str | Path, metrics: dict) -> Path:
    """``metrics.json`` (NaN/inf → null), atomically."""
    return atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")


def _f(v, fmt="{:.3f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def results_table(metrics: dict) -> str:
    """Plain-text/Markdown table: teacher / float / INT8 — clip & window AUC, best-F1 (clip) and
    its threshold, FPR at that threshold, voted false alerts per hour on negative clips, fraction of
    positive clips with ≥ 1 voted alert, size, arena."""
    cost = metrics.get("cost", {})
    rows = ["| model | clip AUC | window AUC | clip best-F1 | threshold | clip FPR | false alerts/h | pos. clips alerted | size | arena |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for key, name in MODELS:
        m = metrics.get(key)
        if not m:
            continue
        c, w, d = m["clip"], m["window"], m["detector"]
        size = {"teacher": "–", "float": f"{cost.get('float_bytes', 0):,} B",
                "int8": f"{cost.get('int8_bytes', 0):,} B"}[key]
        arena = f"{cost.get('arena_bytes', 0):,} B" if key == "int8" else "–"
        rows.append(f"| {name} | {_f(c['auc'])} | {_f(w['auc'])} | {_f(c['best_f1'])} | {_f(c['threshold'])} | "
                    f"{_f(c['fpr'])} | {_f(d['per_hour'], '{:.1f}')} | {_f(d.get('pos_clips_detected'))} | {size} | {arena} |")
    return "\n".join(rows)


def window_table(metrics: dict) -> str:
    """Markdown table of the per-window metrics (every test window labelled with its clip's label)."""
    rows = ["| model (per window) | AUC | best-F1 | threshold | precision | recall | FPR |", "|---|---|---|---|---|---|---|"]
    for key, name in MODELS:
        if metrics.get(key):
            w = metrics[key]["window"]
            rows.append(f"| {name} | {_f(w['auc'])} | {_f(w['best_f1'])} | {_f(w['threshold'], '{:.4g}')} | "
                        f"{_f(w['precision'])} | {_f(w['recall'])} | {_f(w['fpr'])} |")
    return "\n".join(rows)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def roc_figure(curves: dict) -> str:
    """Base64 PNG of ROC curves; ``curves[name] = (y_window, s_window, y_clip, s_clip)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 3.0 * len(timelines)), squeeze=False)
    for ax, tl in zip(axes[:, 0], timelines):
        t = np.arange(len(tl["teacher"])) * tl["hop_seconds"]
        for key, name in MODELS:
            ax.plot(t, tl[key], label=name, drawstyle="steps-post")
        ax.axhline(threshold, color="red", ls="--", lw=0.8, label=f"detector threshold {threshold}")
        ax.set(ylim=(-0.02, 1.02), xlabel="time (s)", ylabel="positive score",
               title=f"{Path(tl['name']).name} (label: {'positive' if tl['label'] else 'negative'})")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def _summary_md(metrics: dict, params) -> str:
    cost, tr, filt = metrics["cost"], metrics["training"], metrics["filter"]
    d = metrics.get("data", {})
    lines = [
        "# cryblock learning run",
        "",
        f"Preset **{metrics['preset']}**, labels {metrics['labels']}. "
        f"Temperature {params.learn.temperature}, α {params.learn.alpha}, width {params.learn.width}, "
        f"depth {params.learn.depth}, neg_per_pos {params.learn.neg_per_pos}, "
        f"embedding_weight {params.learn.embedding_weight}.",
        "",
    ]
    if d.get("split"):
        lines.append("Data (split by group): " + ", ".join(
            f"{k} {v['clips']} clips / {v['windows']} windows" for k, v in d["split"].items()) + ".")
        lines.append("")
    lines += [
        f"Teacher filter: kept {filt['positive_kept']}/{filt['positive_windows']} positive and "
        f"{filt['negative_kept']}/{filt['negative_windows']} negative training windows. "
        f"Best epoch {tr['best_epoch']} (validation AUC {_f(tr['best_val_auc'])}).",
        "",
        "## Results on the test split",
        "",
        results_table(metrics),
        "",
        window_table(metrics),
        "",
        f"False alerts: N-of-M voting ({params.detector.vote_n} of {params.detector.vote_m}), hold "
        f"{params.detector.hold_seconds} s, at each model's detector threshold ("
        + ", ".join(f"{k} {metrics[k].get('detector_threshold', params.detector.threshold):.4g}"
                    for k in ("teacher", "float", "int8"))
        + f"; the INT8 one, {params.detector.threshold}, is deployed), over the negative test audio "
        f"({metrics['float']['detector']['hours'] * 60:.1f} min); \"pos. clips alerted\" = fraction of positive "
        f"test clips with at least one alert.",
        "",
        "## INT8 cost",
        "",
        f"- size {cost['int8_bytes']:,} B (float {cost['float_bytes']:,} B)",
        f"- parameters {cost['params']:,}, MACs {cost['macs']:,} per 0.96 s patch",
        f"- TFLite Micro arena {cost['arena_bytes']:,} B (host interpreter)",
        f"- INT8 vs float: max |Δp| {_f(metrics['int8_vs_float']['max_abs_diff'], '{:.4f}')}, "
        f"decision agreement {_f(metrics['int8_vs_float']['decision_agreement'], '{:.4f}')}",
        "",
        "## Timing",
        "",
        ", ".join(f"{k.replace('_seconds', '')} {v:.1f} s" for k, v in metrics["timing"].items()),
        "",
    ]
    return "\n".join(lines)


def write_reports(out_dir: str | Path, metrics: dict, params, curves: dict, timeline: list[dict] | None) -> None:
    """Write ``report.md`` and ``report.html`` (plots embedded) into ``out_dir``, atomically."""
    out = Path(out_dir)
    md = _summary_md(metrics, params)
    atomic_write_text(out / "report.md", md)
    imgs = [("ROC curves", roc_figure(curves))]
    if timeline:
        imgs.append(("Score timelines of the longest positive and negative test clips",
                     timeline_figure(timeline, params.detector.threshold)))
    body = _md_to_html(md)
    for title, b64 in imgs:
        body += f"<h2>{html.escape(title)}</h2>\n<img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{b64}\">\n"
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>cryblock learning run</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>\n" + body + "</body></html>\n")
    atomic_write_text(out / "report.html", page)


def _md_to_html(md: str) -> str:
    """Tiny converter for the report's own Markdown (headings, tables, bullet lists, paragraphs)."""
    out, in_table, in_list = [], False, False
    for line in md.splitlines():
        esc = html.escape(line)
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{esc.replace('**', '')}</p>")
    if in_table:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    return "\n".join(out) + "\n"
