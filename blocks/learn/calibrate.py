"""Per-home calibration: fit the deployed detector to one nursery's own night.

A parent records a night (or at least :data:`MIN_AMBIENT_MINUTES` minutes) of their nursery
without crying — the fan, the noise machine, the street. :func:`calibrate_home` scores it with
the run's INT8 model (TFLite Micro, one invoke per patch) through the firmware's decision rule,
lays the run's *validation* cries into it at 10 dB SNR (single cries and crying episodes, as in
the nursery night, :mod:`.night`), tries the same detector candidates as the training-time
calibration, and picks the one with the most episodes alerted within 10 s whose false alerts on
this recording stay within the budget — never one that catches fewer episodes than the run's
validation nights did at 10 dB (the **recall floor**). On the parent's own recording the
false-alert rate is taken as measured (its exact Poisson interval is printed): a longer recording
narrows it.

The run's ``params.json`` is replaced atomically; the previous one is kept as
``params.before-calibration.json``. With a serial port the new setting is sent to the running
firmware first (``cryblock config``), and nothing is written if the device does not take it.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cryblock.errors import CryblockError, ParameterError

#: Shortest ambient recording accepted, minutes (shorter ones cannot show a rate of alerts).
MIN_AMBIENT_MINUTES = 10.0
#: SNR of the validation cries laid into the ambient recording, dB (the recall floor's SNR).
FLOOR_SNR_DB = 10.0
BEFORE_NAME = "params.before-calibration.json"


def recall_floor(metrics: dict) -> float | None:
    """The share of crying episodes the run's INT8 detector alerted within 10 s at 10 dB on its
    validation nights (mean over backgrounds), or None when the run did not record it."""
    cal = (metrics.get("int8") or {}).get("calibration") or ((metrics.get("calibration") or {}).get("int8")) or {}
    eps = ((cal.get("validation") or {}).get("episodes")) or {}
    vals = [e["within_10s"] for k, e in eps.items() if k.endswith(f" {FLOOR_SNR_DB:g}") and e.get("n")]
    return float(np.mean(vals)) if vals else None


def _validation_cries(run) -> list:
    from cryblock.data import Clip

    rows = ((run.metrics.get("data") or {}).get("validation_cries")) or []
    if not rows:
        raise CryblockError(f"{run.folder / 'metrics.json'}: lists no validation cries (a run of cryblock 0.1 or an "
                            "Edge Impulse run); retrain it with this version to calibrate it")
    return [Clip(Path(r["path"]), "cry", r.get("group") or Path(r["path"]).stem) for r in rows]


def calibrate_home(run_dir, ambient: Sequence[str], *, budget_per_8h: float = 1.0, port: str | None = None,
                   cache_dir=None, workers: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Calibrate a run's detector on a parent's ambient recordings (see the module docstring).

    Args:
        run_dir: a ``cryblock train``/``demo`` run folder (INT8 model, params.json, metrics.json).
        ambient: recordings of the nursery without crying (any format soundfile reads).
        budget_per_8h: false alerts per 8 h allowed on them (finite, ≥ 0).
        port: serial port of the running firmware to send the new setting to, or None.
        cache_dir: decoded-audio cache (default ``$CRYBLOCK_CACHE``/``~/.cache/cryblock``).

    Returns:
        ``{"before", "after"}`` (setting, false alerts on the ambient audio, episode and single
        recall at 10 dB), ``"floor"``, ``"changed"``, ``"hours"``, ``"within_budget"``.

    Raises:
        CryblockError: a run without an INT8 model or validation cries, an ambient file that cannot
            be read, is digitally silent or shorter than :data:`MIN_AMBIENT_MINUTES` in all, a
            budget that is negative or not finite, a port that does not answer; params.json is
            untouched then.
    """
    from cryblock.blocks.learn.evaluate import TflmPool, load_run, waves_for
    from cryblock.blocks.learn.night import build_night, candidate_settings, judge, poisson_interval, score_night
    from cryblock.blocks.learn.report import setting_text
    from cryblock.data import Clip, default_cache_dir
    from cryblock.audio import load_audio
    from cryblock.output import atomic_write_bytes
    from cryblock.progress import Progress

    if not isinstance(budget_per_8h, (int, float)) or not math.isfinite(budget_per_8h) or budget_per_8h < 0:
        raise ParameterError(f"--budget-per-8h must be a finite number ≥ 0, got {budget_per_8h!r}")
    if not ambient:
        raise CryblockError("give at least one --ambient recording of the nursery without crying")
    run = load_run(run_dir)
    params = run.params
    cries = _validation_cries(run)
    if port:  # a typo in the port fails now, not after minutes of scoring
        from cryblock.blocks.deploy.capture import open_serial

        open_serial(port).close()
    waves = waves_for(params, cache_dir or default_cache_dir())
    lengths = waves.lengths([str(p) for p in ambient], workers)
    for p in ambient:
        if str(p) not in lengths:
            load_audio(p, params.dsp.sample_rate)  # raises AudioError naming the file and the reason
            raise CryblockError(f"{p}: cannot be read")
    hours = sum(lengths[str(p)] for p in ambient) / params.dsp.sample_rate / 3600.0
    if hours * 60 < MIN_AMBIENT_MINUTES:
        raise CryblockError(f"{', '.join(str(p) for p in ambient)}: {hours * 60:.1f} min of ambient audio; record at "
                            f"least {MIN_AMBIENT_MINUTES:g} min of the nursery (a whole night is best)")
    missing = [c.path for c in cries if not Path(c.path).is_file()]
    if len(missing) == len(cries):
        raise CryblockError(f"{missing[0]}: the run's validation cries are not where it was trained (moved data?)")
    negatives = [Clip(Path(p), "ambient", "your recording", "your recording") for p in ambient]
    night_params = dataclasses.replace(params.night, snrs_db=(FLOOR_SNR_DB,))
    night = build_night(negatives, [c for c in cries if Path(c.path).is_file()], params.dsp, night_params,
                        params.learn.seed, waves=waves, nursery=False, workers=workers)
    from cryblock.blocks.learn.night import patches_to_score

    with TflmPool(run.int8, workers) as runner:
        pos = run.pos_index

        def score(x):
            p = runner.predict(x)
            return p.reshape(-1) if p.shape[1] == 1 else p[:, pos]

        with Progress(patches_to_score(night), f"scoring {hours * 60:.0f} min of your recording with the validation "
                      "cries laid in", log) as prog:
            scores = score_night(night, {"int8": score}, progress=prog.update)["int8"]

    def measure(d):
        v = judge(night, scores, d, details=False)
        k = v.false_alerts("household")
        return {"setting": dataclasses.asdict(d), "false_alerts": k, "fa_per_8h": k / hours * 8,
                "fa_per_8h_ci": [x / hours * 8 for x in poisson_interval(k)],
                "episodes_within_10s": v.within(10.0), "single_recall": v.recall(), "_d": d}

    current = params.detector
    before = measure(current)
    floor = recall_floor(run.metrics)
    floor_from = "the run's validation nights"
    if floor is None or before["episodes_within_10s"] != before["episodes_within_10s"]:
        floor, floor_from = before["episodes_within_10s"], "the deployed setting on your recording"
    cands = [measure(d) for d in candidate_settings([scores], current)] + [before]

    def rec(x):
        return x if x == x else -1.0

    # never below the floor (a night where no episode fitted has no floor to keep)
    eligible = [c for c in cands if rec(c["episodes_within_10s"]) >= floor - 1e-9] if floor == floor else cands
    within = [c for c in eligible if c["fa_per_8h"] <= budget_per_8h + 1e-12]
    if within:
        best = max(within, key=lambda c: (rec(c["episodes_within_10s"]), rec(c["single_recall"]), -c["false_alerts"],
                                          c["_d"] == current, c["_d"].threshold))
    elif eligible:
        best = max(eligible, key=lambda c: (-c["false_alerts"], rec(c["episodes_within_10s"]),
                                            rec(c["single_recall"]), c["_d"] == current))
    else:
        best = before
    new = best["_d"]
    changed = new != current
    log(f"your recording: {hours * 60:.0f} min; validation cries laid in at {FLOOR_SNR_DB:g} dB: "
        f"{len(night.streams[0].insertions)} ({night.dropped} did not fit)")
    log(f"recall floor: {100 * floor:.0f} % of crying episodes alerted within 10 s at {FLOOR_SNR_DB:g} dB ({floor_from})")
    for name, c in (("before", before), ("after", best)):
        lo, hi = c["fa_per_8h_ci"]
        log(f"{name}: {setting_text(c['_d'])}: {c['false_alerts']} false alert(s) in your recording = "
            f"{c['fa_per_8h']:.1f} per 8 h [{lo:.1f}, {hi:.1f}]; episodes within 10 s "
            f"{100 * rec(c['episodes_within_10s']):.0f} %, "
            f"single cries {100 * rec(c['single_recall']):.0f} %")
    if not within:
        log(f"warning: no setting keeps the recall floor with at most {budget_per_8h:g} false alerts per 8 h on your "
            "recording; " + ("the one with the fewest is chosen" if eligible else "the setting is left as it was"))
    if port:
        from cryblock.blocks.deploy.config import configure

        cfg = configure(port, threshold=new.threshold, vote=(new.vote_n, new.vote_m),
                        hold_ms=int(round(new.hold_seconds * 1000)))
        log(f"sent to {port}: {cfg}")
    if changed:
        folder = Path(run.folder)
        atomic_write_bytes(folder / BEFORE_NAME, (folder / "params.json").read_bytes())
        dataclasses.replace(params, detector=new).save(folder / "params.json")
        log(f"updated {folder / 'params.json'} (previous setting kept in {folder / BEFORE_NAME}); rebuild the firmware "
            "(cryblock build) or send it with --port")
    else:
        log("no change: the deployed setting is already the best one for your recording")
    strip = lambda c: {k: v for k, v in c.items() if k != "_d"}  # noqa: E731
    return {"before": strip(before), "after": strip(best), "floor": floor, "changed": changed, "hours": hours,
            "within_budget": bool(within)}
