"""``cryblock tune``: pick the student architecture from a measured cost/quality front (the role
Edge Impulse's EON Tuner plays).

Every candidate (:data:`CANDIDATES`, or the user's) is trained with the same split, teacher
targets and distillation recipe (short epochs), exported to INT8 and measured:

* **cost** — INT8 bytes, parameters, MACs per patch, the TFLite Micro arena measured on the host,
  the planned device arena (ESP-NN scratch + margin, :func:`cryblock.blocks.deploy.arena.plan_arena`)
  and the estimated ESP32-S3 latency (:func:`cryblock.blocks.deploy.size.size_report`);
* **quality** — validation AUC (the ranking signal: the test split never chooses), and the test
  split's window AUC with its group-bootstrap interval, night recall per SNR and false alerts
  per 8 h at the candidate's own calibrated detector.

Candidates within the budget (``--max-arena``, ``--max-macs``, ``--max-flash``) are marked; the
best of them by validation quality (mean night recall on the validation night within the
false-alert budget, then validation AUC) is retrained with the full epoch count. The run is
time-boxed: a candidate is not started when its expected time would overrun ``minutes``.

With ``runner="ray"`` (``cryblock tune --runner ray``, the ``cryblock[ray]`` extra) the candidates
are Ray Tune trials (:func:`ray_trials`), one CPU each, run in parallel on a private local Ray
instance or the cluster at ``ray_address``/``$RAY_ADDRESS`` (the manifest, the audio, the teacher
and ``out_dir`` at the same paths on every node); the time box is Ray Tune's ``time_budget_s``.
Each trial writes its candidate's run folder; the table, the ranking and the winner's retraining
(in this process) are the local runner's.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cryblock.errors import ParameterError
from cryblock.params import Params

#: The search space tried by default: name → LearnParams architecture fields. "cryblock-0.1" is
#: the first default (width 32, depth 4); "prior" the published prior system's trunk (stem 3×3/2
#: with 8 channels, DS blocks 16/1, 32/2, 64/2, 128/2, global average pooling) with our one-unit head.
CANDIDATES: dict[str, dict] = {
    "cryblock-0.1": {"width": 32, "depth": 4, "stem_channels": 0, "blocks": "", "pool": "none", "kernel": "3x3"},
    "prior": {"stem_channels": 8, "blocks": "16/1,32/2,64/2,128/2"},
    "s8-16s2": {"stem_channels": 8, "blocks": "16/2,32/2,64/2,128/1"},
    "s8-pool": {"stem_channels": 8, "pool": "max", "blocks": "16/1,32/2,64/2,128/1"},
    "s8-pool-k5x3": {"stem_channels": 8, "pool": "max", "blocks": "16/1,32/2,64/2,128/1", "kernel": "5x3"},
    "s8-wide": {"stem_channels": 8, "blocks": "24/2,48/2,96/2,96/1"},
    "s8-late": {"stem_channels": 8, "blocks": "16/2,32/1,64/2,128/2"},
    "s16-pool": {"stem_channels": 16, "pool": "max", "blocks": "32/1,64/2,128/2"},
}

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*[bB]?\s*$")


def parse_amount(text: str | None, what: str) -> float | None:
    """``"40k"`` → 40000, ``"1.2M"`` → 1.2e6, ``"64k"`` → 64000 (k = 1000, not 1024); None stays None."""
    if text is None:
        return None
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ParameterError(f"parameter '{what}': expected a number with optional k/M, e.g. 40k or 1.2M, got {text!r}")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]


@dataclass
class Budget:
    """Cost limits of ``cryblock tune`` (None = no limit): host-measured arena bytes, MACs per
    patch, INT8 file bytes."""

    max_arena: float | None = None
    max_macs: float | None = None
    max_flash: float | None = None

    def fits(self, row: dict) -> bool:
        """True when a candidate's measured cost is within every given limit."""
        return all(lim is None or row[key] <= lim for lim, key in ((self.max_arena, "arena_host"),
                                                                  (self.max_macs, "macs"),
                                                                  (self.max_flash, "int8_bytes")))


def _row(name: str, metrics: dict, params: Params, model: bytes, seconds: float) -> dict:
    from cryblock.blocks.deploy.arena import plan_arena
    from cryblock.blocks.deploy.model import inspect_model
    from cryblock.blocks.deploy.size import size_report

    info = inspect_model(model)
    plan = plan_arena(model, "auto", measured=metrics["cost"]["arena_bytes"])
    lat = size_report(info, plan, params.dsp)["latency"]["estimate_ms"]
    i8 = metrics["int8"]
    cal = (metrics.get("calibration") or {}).get("int8") or {}
    night = i8.get("night") or {}
    return {"name": name, "architecture": metrics["cost"]["architecture"], "params": metrics["cost"]["params"],
            "macs": metrics["cost"]["macs"], "int8_bytes": metrics["cost"]["int8_bytes"],
            "arena_host": metrics["cost"]["arena_bytes"], "arena_device": plan.arena_bytes, "latency_ms": lat,
            "val_auc": metrics["training"]["best_val_auc"],
            "val_recall": (cal.get("validation") or {}).get("mean_recall"),
            "val_within_budget": cal.get("within_budget"),
            "test_auc": (i8.get("window") or {}).get("auc"), "test_auc_ci": (i8.get("auc_ci") or {}).get("window"),
            "test_recall": night.get("recall"), "test_fa_per_8h": night.get("fa_per_8h"),
            "seconds": seconds, "learn": {k: getattr(params.learn, k) for k in
                                          ("width", "depth", "stem_channels", "stem_stride", "pool", "kernel",
                                           "blocks", "head")}}


def rank_key(row: dict) -> tuple:
    """Validation quality, best first: calibrated within the false-alert budget, then mean night
    recall on the validation night, then validation AUC."""
    return (bool(row["val_within_budget"]), row["val_recall"] or 0.0, row["val_auc"] or 0.0)


def table(rows: list[dict], budget: Budget) -> str:
    """Markdown table of the candidates (cost, quality, within budget, Pareto-optimal in
    (device arena, MACs) vs validation quality)."""
    def dominated(r):
        return any(o is not r and o["arena_host"] <= r["arena_host"] and o["macs"] <= r["macs"]
                   and rank_key(o) >= rank_key(r) and (o["arena_host"], o["macs"], rank_key(o))
                   != (r["arena_host"], r["macs"], rank_key(r)) for o in rows)

    lines = ["| candidate | architecture | params | MACs | INT8 | arena host / device | est. latency | val AUC | "
             "val night recall | test AUC [95 % CI] | test night recall (0/10/20 dB) | test FA / 8 h | budget | front |",
             "|" + "---|" * 14]
    def num(v, fmt="{:.3f}"):
        return "–" if v is None else fmt.format(v)

    for r in sorted(rows, key=lambda r: r["macs"]):
        ci = r["test_auc_ci"]
        rec = "/".join(f"{v:.2f}" for v in (r["test_recall"] or {}).values()) or "–"
        auc = num(r["test_auc"]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        lines.append(
            f"| {r['name']} | {r['architecture']} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {r['int8_bytes']:,} B | "
            f"{r['arena_host']:,} / {r['arena_device']:,} B | {r['latency_ms']:.1f} ms | {num(r['val_auc'])} | "
            f"{num(r['val_recall'])} | {auc} | {rec} | {num(r['test_fa_per_8h'], '{:.1f}')} | "
            f"{'✓' if budget.fits(r) else ''} | {'' if dominated(r) else '●'} |")
    return "\n".join(lines)


def _candidate_params(params: Params, arch: dict, epochs: int) -> Params:
    """The shared recipe with a candidate's architecture fields and ``epochs``."""
    return params.replace(learn={**{k: v for k, v in dataclasses.asdict(Params().learn).items()
                                    if k in ("width", "depth", "stem_channels", "stem_stride", "pool", "kernel",
                                             "blocks", "head")}, **arch, "epochs": epochs})


def ray_trials(manifest, out_dir, jobs: dict[str, Params], *, teacher_path: str, minutes: float,
               ray_address: str | None = None, workers: int | None = None,
               log: Callable[[str], None] = print) -> dict[str, float]:
    """Train the candidates as Ray Tune trials (one CPU each), each into
    ``<out_dir>/candidates/<name>/`` (:func:`~cryblock.blocks.learn.train.train_from_manifest`).

    Args:
        jobs: candidate name → its parameters.
        teacher_path: the teacher file (every trial loads it).
        minutes: Ray Tune's time budget (trials not started by then are skipped).
        ray_address, workers: as ``cryblock prepare --runner ray``
            (:class:`~cryblock.blocks.dataset.ray_runner.RayRunner`: a private local instance
            with ``workers`` CPUs when there is no address).

    Returns:
        ``{name: seconds}`` of the trials that finished.

    Raises:
        CryblockError: Ray not installed or the cluster does not answer; a trial's own error
            (bad manifest, …) as the local runner raises it.
    """
    import shutil

    from cryblock.blocks.dataset.ray_runner import RayRunner, _cause

    out = Path(out_dir).resolve()
    runner = RayRunner(ray_address, workers)
    storage = out / ".ray-tune"
    try:
        from ray import tune as rt

        log(f"tune: {len(jobs)} candidates as Ray Tune trials on the {runner.describe()}")
        specs = {name: {"params": p.to_dict(), "out": str(out / "candidates" / name)} for name, p in jobs.items()}
        manifest_s = str(Path(manifest).resolve())

        def trial(config):
            import os

            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            from ray import tune as rt_

            from cryblock.blocks.learn.train import train_from_manifest
            from cryblock.params import Params as P

            spec = specs[config["name"]]
            t0 = time.perf_counter()
            res = train_from_manifest(manifest_s, spec["out"], P.from_dict(spec["params"]), teacher=teacher_path,
                                      workers=1, log=lambda s: None, force=True)
            rt_.report({"val_auc": float(res.metrics["training"]["best_val_auc"]), "seconds": time.perf_counter() - t0})

        tuner = rt.Tuner(rt.with_resources(trial, {"cpu": 1}),
                         param_space={"name": rt.grid_search(list(jobs))},
                         tune_config=rt.TuneConfig(time_budget_s=minutes * 60.0, max_concurrent_trials=runner.workers),
                         run_config=rt.RunConfig(storage_path=str(storage), name="candidates", verbose=0))
        results = tuner.fit()
        done = {}
        for r in results:
            name = r.config["name"]
            if r.error is not None:
                inner = _cause(r.error)
                if inner is not None:
                    raise inner
                raise r.error
            if r.metrics and "seconds" in r.metrics:
                done[name] = float(r.metrics["seconds"])
        return done
    finally:
        runner.close()
        shutil.rmtree(storage, ignore_errors=True)


def tune(manifest, out_dir, params: Params = Params(), *, budget: Budget = Budget(), candidates: dict | None = None,
         epochs: int = 6, final_epochs: int = 15, minutes: float = 30.0, teacher=None, workers: int | None = None,
         log: Callable[[str], None] = print, force: bool = False, runner: str = "local",
         ray_address: str | None = None) -> dict:
    """Train and measure every candidate, print the table, retrain the best within budget.

    Args:
        manifest: manifest CSV (or folder); out_dir: ``<out>/candidates/<name>/`` (each a full run),
            ``<out>/best/`` (the winner, ``final_epochs``), ``<out>/tune.md``, ``<out>/tune.json``.
        params: the recipe shared by all candidates (their architecture fields are replaced).
        budget: cost limits; candidates: name → architecture fields (default :data:`CANDIDATES`).
        epochs: epochs per candidate (short: for ranking); minutes: time box for the candidates.
        force: replace an earlier tune in ``out_dir`` (else an existing non-empty folder is refused).
        runner: "local" (one candidate after the other, in this process) or "ray" (Ray Tune
            trials, :func:`ray_trials`; ``workers`` = parallel trials of a local instance);
            ray_address: the cluster for "ray".

    Returns:
        ``{"rows": [...], "best": name or None, "best_run": path or None}``.
    """
    from cryblock.blocks.learn.teacher import load_teacher
    from cryblock.blocks.learn.train import train_from_manifest
    from cryblock.output import atomic_write_text, check_run_output, json_safe

    out = Path(out_dir)
    check_run_output(out, "tune", force=force, inputs=(manifest, teacher if isinstance(teacher, (str, Path)) else None))
    if runner not in ("local", "ray"):
        raise ParameterError(f"--runner must be local or ray, got {runner!r}")
    teacher_path = None
    if runner == "ray":
        from cryblock.blocks.learn.teacher_files import resolve_teacher_path

        teacher_path = str(resolve_teacher_path(teacher if isinstance(teacher, (str, Path)) else
                                                getattr(teacher, "path", None)))
    teacher = load_teacher(teacher) if teacher is None or isinstance(teacher, (str, Path)) else teacher
    cands = candidates or CANDIDATES
    t_start = time.perf_counter()
    rows, per = [], None
    if runner == "ray":
        jobs = {name: _candidate_params(params, arch, epochs) for name, arch in cands.items()}
        secs = ray_trials(manifest, out, jobs, teacher_path=teacher_path, minutes=minutes, ray_address=ray_address,
                          workers=workers, log=log)
        for name in cands:
            if name not in secs:
                log(f"tune: candidate {name} not run within the time box of {minutes:g} min")
                continue
            run_dir = out / "candidates" / name
            metrics = json.loads((run_dir / "metrics.json").read_text())
            rows.append(_row(name, metrics, jobs[name],
                             (run_dir / "model_quantized_int8_io.tflite").read_bytes(), secs[name]))
            r = rows[-1]
            log(f"  {name}: {r['architecture']}: {r['macs'] / 1e6:.2f} M MACs, arena {r['arena_host']:,} B, val AUC "
                f"{r['val_auc']:.3f}, val night recall {r['val_recall']}, {secs[name]:.0f} s")
    for name, arch in (cands.items() if runner == "local" else ()):
        elapsed = (time.perf_counter() - t_start) / 60.0
        if per is not None and elapsed + per > minutes:
            log(f"tune: time box of {minutes:g} min reached after {len(rows)} candidates; skipping the rest")
            break
        p = _candidate_params(params, arch, epochs)
        t0 = time.perf_counter()
        log(f"tune: candidate {name} ({len(rows) + 1}/{len(cands)})")
        res = train_from_manifest(manifest, out / "candidates" / name, p, teacher=teacher, workers=workers,
                                  log=lambda s: None, force=True)  # inside the tune folder checked above
        secs = time.perf_counter() - t0
        per = max(per or 0.0, secs / 60.0)
        rows.append(_row(name, res.metrics, p, (res.out_dir / "model_quantized_int8_io.tflite").read_bytes(), secs))
        r = rows[-1]
        log(f"  {r['architecture']}: {r['macs'] / 1e6:.2f} M MACs, arena {r['arena_host']:,} B, val AUC "
            f"{r['val_auc']:.3f}, val night recall {r['val_recall']}, {secs:.0f} s")
    ok = [r for r in rows if budget.fits(r)]
    best = max(ok, key=rank_key) if ok else None
    text = table(rows, budget)
    log(text)
    best_run = None
    if best is not None:
        log(f"tune: best within budget: {best['name']} ({best['architecture']}); retraining {final_epochs} epochs")
        p = params.replace(learn={**best["learn"], "epochs": final_epochs})
        res = train_from_manifest(manifest, out / "best", p, teacher=teacher, workers=workers, log=log, force=True)
        best_run = str(res.out_dir)
    else:
        log("tune: no candidate within the budget")
    doc = {"budget": dataclasses.asdict(budget), "epochs": epochs, "rows": rows, "runner": runner,
           "best": best["name"] if best else None, "best_run": best_run,
           "minutes": (time.perf_counter() - t_start) / 60.0}
    atomic_write_text(out / "tune.json", json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "tune.md", "# cryblock tune\n\n" + text + "\n\n"
                      + (f"Best within budget: **{best['name']}**, retrained in `best/`.\n" if best else
                         "No candidate within the budget.\n"))
    return doc


def estimate_cost(learn_fields: dict, params: Params = Params()) -> dict:
    """Cost of an architecture without training: random weights (so that no two constant buffers
    are equal — the converter stores equal ones once, which makes untrained models look smaller),
    the firmware's logits export, INT8-converted with random log-mel-like calibration patches.
    Returns ``{"macs", "params", "int8_bytes", "arena_host", "arena_device"}``."""
    import tempfile

    from cryblock.blocks.deploy.arena import plan_arena
    from cryblock.blocks.deploy.model import inspect_model
    from cryblock.blocks.learn.export import export_all
    from cryblock.blocks.learn.student import build_student, count_params

    p = params.replace(learn=learn_fields)
    sm = build_student(p.learn, p.dsp)
    rng = np.random.default_rng(0)
    for w in sm.model.weights:
        v = rng.normal(0.0, 0.1, tuple(w.shape)).astype(np.float32)
        w.assign(np.abs(v) + 0.5 if "variance" in w.name or "gamma" in w.name else v)
    rep = rng.normal(-4, 2, (20, *p.dsp.patch_shape)).astype(np.float32)
    with tempfile.TemporaryDirectory() as td:
        ex = export_all(sm.model, rep, td, logits_model=sm.logits_model)
    plan = plan_arena(ex.int8_tflite)
    return {"macs": inspect_model(ex.int8_tflite).macs, "params": count_params(sm.model),
            "int8_bytes": len(ex.int8_tflite), "arena_host": plan.measured_bytes, "arena_device": plan.arena_bytes}
