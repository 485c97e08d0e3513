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


def results_table(metrics: dict) -> str:
    """Markdown table of the test split: teacher / float / INT8 — window and clip AUC with 95 %
    group-bootstrap intervals, night recall per SNR and false alerts per 8 h (exact Poisson
    interval) at each model's own calibrated detector, the setting, size and arena."""
    cost = metrics.get("cost", {})
    snrs = []
    for key, _ in MODELS:
        night = (metrics.get(key) or {}).get("night")
        if night:
            snrs = list(night["recall"])
            break
    head = ["model", "window AUC", "clip AUC"] + [f"night recall {s} dB" for s in snrs]
    head += ["false alerts / 8 h"] if snrs else ["false alerts / h (clips)"]
    head += ["detector", "size", "arena"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name in MODELS:
        m = metrics.get(key)
        if not m:
            continue
        w, c, night = m.get("window"), m.get("clip"), m.get("night")
        cells = [name, _f(w and w["auc"]) + _ci(m, "window"), _f(c and c["auc"]) + _ci(m, "clip")]
        if snrs:
            cells += [_f(night["recall"].get(s)) if night else "–" for s in snrs]
            cells.append(f"{night['fa_per_8h']:.1f} [{night['fa_per_8h_ci'][0]:.1f}, {night['fa_per_8h_ci'][1]:.1f}] "
                         f"({night['false_alerts']} in {night['hours']:.2f} h)" if night else "–")
        else:
            cells.append(_f(m["detector"]["per_hour"], "{:.1f}"))
        cells.append(setting_text(m["detector_setting"]) if m.get("detector_setting") else "–")
        cells.append({"teacher": "–", "float": f"{cost.get('float_bytes', 0):,} B",
                      "int8": f"{cost.get('int8_bytes', 0):,} B"}[key])
        cells.append(f"{cost.get('arena_bytes', 0):,} B" if key == "int8" else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


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
    and the categories of the night's false alerts."""
    cats: dict[str, dict] = {}
    for key, _ in MODELS:
        for cat, row in ((metrics.get(key) or {}).get("categories") or {}).items():
            cats.setdefault(cat, {"clips": row["clips"]})[key] = row["alerting"]
    if not cats:
        return ""
    lines = ["| category (negative test clips) | clips | teacher alerting | float alerting | INT8 alerting |",
             "|---|---|---|---|---|"]
    for cat, row in sorted(cats.items(), key=lambda kv: (-kv[1].get("int8", 0), -kv[1].get("teacher", 0), kv[0])):
        lines.append(f"| {md_cell(cat)} | {row['clips']} | {row.get('teacher', 0)} | {row.get('float', 0)} | "
                     f"{row.get('int8', 0)} |")
    fa = {}
    for key, _ in MODELS:
        for cat, n in (((metrics.get(key) or {}).get("night") or {}).get("fa_categories") or {}).items():
            fa.setdefault(cat, {})[key] = n
    if fa:
        lines += ["", "| night false alerts caused by | teacher | float | INT8 |", "|---|---|---|---|"]
        for cat, row in sorted(fa.items(), key=lambda kv: (-kv[1].get("int8", 0), kv[0])):
            lines.append(f"| {md_cell(cat)} | {row.get('teacher', 0)} | {row.get('float', 0)} | {row.get('int8', 0)} |")
    return "\n".join(lines)


def pareto_table(calibration: dict | None, key: str = "int8", limit: int = 15) -> str:
    """Markdown Pareto front (false alerts per 8 h vs mean cry-episode recall) of the detector
    candidates tried on the validation night, the chosen one marked."""
    cal = (calibration or {}).get(key)
    if not cal:
        return ""
    chosen = cal["setting"]
    rows = ["| threshold | votes | hold | mean recall | false alerts / 8 h | |", "|---|---|---|---|---|---|"]
    front = cal["pareto"]
    if len(front) > limit:  # keep the chosen one and an even spread
        keep = set(np.linspace(0, len(front) - 1, limit).round().astype(int))
        front = [p for i, p in enumerate(front) if i in keep or all(p[k] == chosen[k] for k in chosen)]
    for p in front:
        mark = "**deployed**" if all(p[k] == chosen[k] for k in chosen) else ""
        rows.append(f"| {p['threshold']:.3f} | {p['vote_n']}/{p['vote_m']} | {p['hold_seconds']:g} s | "
                    f"{p['mean_recall']:.3f} | {p['fa_per_8h']:.1f} | {mark} |")
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
        ax.axhline(threshold, color="red", ls="--", lw=0.8, label=f"INT8 detector threshold {threshold}")
        ax.set(ylim=(-0.02, 1.02), xlabel="time (s)", ylabel="positive score",
               title=f"{Path(tl['name']).name} (label: {'positive' if tl['label'] else 'negative'})")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def night_figure(night, night_scores: dict, settings: dict, snr: float | None = None) -> str:
    """Base64 PNG of the night stream at one SNR (default: the middle one): each model's score
    over time (minutes), the inserted cries shaded (green: the INT8 detector caught it, red:
    missed), the INT8 false alerts marked, the INT8 threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryblock.blocks.learn.night import judge

    snrs = sorted(night.episodes)
    snr = snrs[len(snrs) // 2] if snr is None else snr
    fig, ax = plt.subplots(figsize=(14, 4.2))
    t = np.arange(len(night.background)) * night.hop_s / 60.0
    for key, name in MODELS:
        if key in night_scores:
            ax.plot(t, night_scores[key].streams[snr], lw=0.6, label=name, alpha=0.85)
    v = judge(night, night_scores["int8"], settings["int8"]) if "int8" in night_scores else None
    for i, ep in enumerate(night.episodes[snr]):
        hit = v.detected[snr][i] if v else True
        ax.axvspan(ep.start_s / 60, ep.end_s / 60, color="tab:green" if hit else "tab:red", alpha=0.25, lw=0)
    if v:
        for ts in v.fa_times_s:
            ax.axvline(ts / 60, color="black", lw=0.8, ls=":")
        ax.axhline(settings["int8"].threshold, color="red", ls="--", lw=0.8)
    ax.set(ylim=(-0.02, 1.02), xlim=(0, t[-1] if len(t) else 1), xlabel="night time (min)", ylabel="positive score",
           title=f"Night stream, cries at {snr:g} dB SNR (shaded: green detected / red missed by INT8; "
                 "dotted: INT8 false alerts on the background)")
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def detect_figure(results: list[dict], threshold: float) -> bytes:
    """PNG bytes for ``cryblock detect``: per recording, the INT8 score over time, the threshold
    and the alerts the firmware would raise (shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _summary_md(metrics: dict, params) -> str:
    cost, tr, filt = metrics["cost"], metrics["training"], metrics["filter"]
    d = metrics.get("data", {})
    aug = params.augment
    augs = [n for n, p in (("mix", aug.p_mix), ("gain", aug.p_gain), ("shift", aug.p_shift),
                           ("SpecAugment", aug.p_specaugment), ("band-limit", aug.p_bandlimit)) if p > 0]
    lines = [
        "# cryblock learning run",
        "",
        f"Preset **{metrics['preset']}**, labels {', '.join(md_cell(x) for x in metrics['labels'])}. "
        f"Temperature {params.learn.temperature}, α {params.learn.alpha}, student {cost.get('architecture', '')}, "
        f"neg_per_pos {params.learn.neg_per_pos}, embedding_weight {params.learn.embedding_weight}, "
        f"aux_weight {params.learn.aux_weight}; augmentation: {', '.join(augs) if augs else 'none'}.",
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
        "AUC intervals: 95 % bootstrap over groups (recording sources). Each model uses its own "
        f"detector, {metrics['detector']['tuned_on']}; the INT8 one is deployed "
        f"({setting_text(metrics['detector'])}).",
    ]
    nights = metrics.get("night") or {}
    if "test" in nights:
        n = nights["test"]
        lines += ["", f"Test night: {n['hours'] * 60:.1f} min of negative audio ({n['negative_clips']} clips, longest "
                  f"first) with {', '.join(f'{v} cries at {k} dB' for k, v in n['episodes'].items())} "
                  f"(one per {params.night.gap_seconds:g} s slot); false alerts counted on the negative audio "
                  "alone, rate interval exact Poisson 95 %."]
    else:
        lines += ["", "No night stream: these data carry no recordings (false alerts per hour are over the "
                  "negative test clips run one by one)."]
    lines += ["", window_table(metrics), ""]
    cat = category_tables(metrics)
    if cat:
        lines += ["## Which sounds alert", "", cat, ""]
    par = pareto_table(metrics.get("calibration"))
    if par:
        cal = metrics["calibration"]["int8"]
        lines += ["## Detector calibration (INT8, validation night)", "",
                  f"{cal['candidates']} candidate settings; the deployed one has the highest mean cry-episode "
                  f"recall with at most {cal['budget_per_8h']:g} false alerts per 8 h"
                  + ("" if cal["within_budget"] else " — **none met the budget**: the one with the fewest false "
                     "alerts is deployed") + ". Pareto front:", "", par, ""]
    lines += [
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


def _evaluation_md(metrics: dict, params) -> str:
    d = metrics["data"]
    lines = [
        "# cryblock evaluation",
        "",
        f"Run `{md_cell(metrics['run'])}` on `{md_cell(metrics['manifest'])}`: {d['clips']} clips "
        f"({d['positive_clips']} positive, {d['negative_clips']} negative), {d['patches']} windows, all evaluated "
        f"(no split). Preset {metrics['preset']}, labels {', '.join(md_cell(x) for x in metrics['labels'])}; each model "
        f"at the run's detector setting (INT8: {setting_text(metrics['detector'])}).",
        "",
        results_table(metrics),
        "",
    ]
    if metrics.get("undefined"):
        lines += ["Not defined for these recordings: " + "; ".join(metrics["undefined"]) + ".", ""]
    pos = {k: (metrics.get(k) or {}).get("detector", {}).get("pos_clips_detected") for k, _ in MODELS}
    if any(v is not None and v == v for v in pos.values()):
        lines += ["Positive clips alerted (detector over each clip alone): " + ", ".join(
            f"{name} {_f(pos[k])}" for k, name in MODELS) + ".", ""]
    n = (metrics.get("night") or {}).get("evaluation")
    if n:
        lines += [f"Night: {n['hours'] * 60:.1f} min of negative audio ({n['negative_clips']} clips) with "
                  f"{', '.join(f'{v} cries at {k} dB' for k, v in n['episodes'].items()) or 'no cries'}.", ""]
    if metrics["teacher"].get("window"):
        lines += [window_table(metrics), ""]
    cat = category_tables(metrics)
    if cat:
        lines += ["## Which sounds alert", "", cat, ""]
    return "\n".join(lines)


def write_reports(out_dir: str | Path, metrics: dict, params, split, scores: dict, pos_index: int,
                  night=None, night_scores: dict | None = None, settings: dict | None = None) -> None:
    """Write ``report.md`` and ``report.html`` (plots embedded) into ``out_dir``, atomically — of a
    training run, or of ``cryblock evaluate`` when ``metrics["kind"] == "evaluation"``.

    Args:
        split: the evaluated split (:class:`cryblock.blocks.learn.train.Split`); ``scores`` its
            per-window positive scores by model.
        night, night_scores, settings: the split's night stream, each model's scores of it and
            detector setting (the night timeline is plotted when given).
    """
    from cryblock.blocks.learn.evaluate import clip_max

    out = Path(out_dir)
    evaluation = metrics.get("kind") == "evaluation"
    md = _evaluation_md(metrics, params) if evaluation else _summary_md(metrics, params)
    atomic_write_text(out / "report.md", md)
    y_bin = (np.asarray(split.y) == pos_index).astype(int)
    clip_bin = (np.asarray(split.clip_y) == pos_index).astype(int)
    imgs = []
    if len(np.unique(clip_bin)) == 2:
        curves = {k: (y_bin, s, clip_bin, clip_max(s, split.clip_index, len(clip_bin))) for k, s in scores.items()}
        imgs.append(("ROC curves", roc_figure(curves)))
    if night is not None and night_scores and night.episodes and any(night.episodes.values()):
        imgs.append(("Nursery night", night_figure(night, night_scores, settings)))
    counts = np.bincount(split.clip_index, minlength=len(split.clip_y))
    timeline = []
    for lab in (1, 0):  # longest positive and longest negative clip
        cand = np.flatnonzero(clip_bin == lab)
        if len(cand):
            c = int(cand[np.argmax(counts[cand])])
            m = split.clip_index == c
            timeline.append({"name": split.clip_names[c], "hop_seconds": params.dsp.patch_hop_seconds, "label": lab,
                             **{k: s[m] for k, s in scores.items()}})
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
    for line in md.splitlines():
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
