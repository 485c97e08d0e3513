"""Learning block: KD losses, teacher filter, resampling, detector, a real quick training run
(real teacher, real recordings, group split), INT8 vs float, the Edge Impulse entry point as the
platform runs it, and bad inputs.

Runtime budget ≈ 1.5–3 min on 2 cores (one shared training run of 80 clips + one EI subprocess).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cryblock.errors import CryblockError, DataError
from cryblock.params import DetectorParams, LearnParams, Params

from conftest import QUICK  # noqa: E402  (the quick run's recipe)


# ----------------------------------------------------------------------------- losses (no data needed)
def test_binary_kd_alpha_one_is_pure_hard_label_loss():
    import tensorflow as tf

    from cryblock.blocks.learn.distill import binary_kd_loss

    y = np.array([1, 0, 1, 0], np.float32)
    zs = np.array([2.0, -1.0, -0.5, 0.3], np.float32)
    expected = float(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=zs)))
    for zt in (np.zeros(4, np.float32), np.array([9, -9, 9, -9], np.float32), np.array([-5, 5, -5, 5], np.float32)):
        assert float(binary_kd_loss(y, zs, zt, 4.0, 1.0)) == pytest.approx(expected, abs=1e-6)
    # α < 1: the teacher does change the loss
    assert float(binary_kd_loss(y, zs, np.array([-5, 5, -5, 5], np.float32), 4.0, 0.5)) > expected + 0.1


def test_softmax_kd_alpha_one_is_pure_cross_entropy():
    from cryblock.blocks.learn.distill import softmax_kd_loss

    y = np.eye(3, dtype=np.float32)[[0, 2, 1]]
    zs = np.array([[2, 0, -1], [0, 0, 1], [0.5, 0.2, 0.1]], np.float32)
    ls = zs - np.log(np.exp(zs).sum(1, keepdims=True))
    expected = -np.mean(np.sum(y * ls, axis=1))
    for zt in (np.zeros((3, 3), np.float32), 10 * np.eye(3, dtype=np.float32)):
        assert float(softmax_kd_loss(y, zs, zt, 3.0, 1.0)) == pytest.approx(expected, abs=1e-5)


def test_binary_kd_temperature_known_values():
    from cryblock.blocks.learn.distill import binary_kd_loss

    y = np.array([1.0], np.float32)
    zs = np.array([0.0], np.float32)
    zt = np.array([math.log(9.0)], np.float32)  # teacher p = 0.9
    # T = 2: teacher soft p = σ(ln9 / 2) = 0.75, student 0.5;
    # KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812; × T² = 0.523248
    assert float(binary_kd_loss(y, zs, zt, 2.0, 0.0)) == pytest.approx(4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
                                                                     abs=1e-5)
    # T → ∞: T²·KL → (z_t − z_s)² / 8
    assert float(binary_kd_loss(y, zs, zt, 200.0, 0.0)) == pytest.approx(math.log(9.0) ** 2 / 8, rel=1e-3)
    # soft term vanishes when the student matches the teacher, at any T
    for t in (1.0, 2.0, 5.0):
        assert float(binary_kd_loss(y, zt, zt, t, 0.0)) == pytest.approx(0.0, abs=1e-6)
    # mixing: α·hard + (1−α)·T²·soft
    hard = math.log(2.0)
    soft = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert float(binary_kd_loss(y, zs, zt, 2.0, 0.3)) == pytest.approx(0.3 * hard + 0.7 * soft, abs=1e-5)


def test_softmax_kd_temperature_known_value():
    from cryblock.blocks.learn.distill import softmax_kd_loss

    zt = np.array([[2.0, 0.0]], np.float32)
    zs = np.array([[0.0, 0.0]], np.float32)
    y = np.array([[1.0, 0.0]], np.float32)
    t = 2.0
    p = np.exp(zt[0] / t) / np.exp(zt[0] / t).sum()
    kl = float(np.sum(p * np.log(p / 0.5)))
    assert float(softmax_kd_loss(y, zs, zt, t, 0.0)) == pytest.approx(t * t * kl, abs=1e-5)


# ----------------------------------------------------------------------------- filter, resampling, detector
def test_teacher_filter_thresholds():
    from cryblock.blocks.learn.distill import teacher_filter

    y = np.array([1, 1, 1, 0, 0, 0], bool)
    p = np.array([0.9, 0.30, 0.1, 0.01, 0.05, 0.6], np.float32)
    assert teacher_filter(y, p, 0.30, 0.05).tolist() == [True, False, False, True, False, False]


def test_resample_ratio():
    from cryblock.blocks.learn.distill import resample_epoch

    rng = np.random.default_rng(0)
    pos, neg = np.arange(10), np.arange(10, 110)
    a = resample_epoch(pos, neg, 3.0, rng)
    b = resample_epoch(pos, neg, 3.0, rng)
    assert len(a) == 40 and len(set(a.tolist())) == 40
    assert np.sum(a < 10) == 10 and np.sum(a >= 10) == 30
    assert set(a[a >= 10].tolist()) != set(b[b >= 10].tolist())  # fresh negatives each epoch
    c = resample_epoch(pos, np.arange(10, 25), 3.0, rng)  # fewer negatives than wanted → all of them
    assert sorted(c.tolist()) == list(range(25))


def test_detector_votes_and_hold():
    from cryblock.blocks.learn.evaluate import count_alerts, false_alerts_per_hour, run_detector

    det = DetectorParams(threshold=0.5, vote_n=2, vote_m=3, hold_seconds=0.96)
    s = np.array([0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9])
    st = run_detector(s, det, 0.48)
    # votes satisfied at t=6 (4,6 in window 4..6) and t=13 (12,13); the firmware's hold keeps
    # the alert on while t − t_ok < 960 ms, i.e. one more window (480 ms) but not the second (960 ms)
    assert st.tolist() == [False] * 6 + [True, True] + [False] * 5 + [True]
    assert count_alerts(st) == 2
    fa = false_alerts_per_hour(s, np.zeros(len(s), int), np.array([True]), det, 0.48)
    assert fa["false_alerts"] == 2 and fa["per_hour"] == pytest.approx(2 / (14 * 0.48 / 3600))


def test_count_macs_by_hand():
    from cryblock.blocks.learn.student import build_student, count_macs

    m = build_student(LearnParams(width=8, depth=2, stem_channels=0, blocks="")).model
    # conv0 48·32·9·1·8; ds0 dw 48·32·9·8 + pw 48·32·8·8; ds1 dw 24·16·9·8 + pw 24·16·8·16; dense 16·1
    want = 48 * 32 * 9 * 8 + 48 * 32 * 9 * 8 + 48 * 32 * 64 + 24 * 16 * 9 * 8 + 24 * 16 * 128 + 16
    assert count_macs(m) == want


def test_width_and_depth_flags_select_the_width_depth_plan():
    """The default student is a block list; --width/--depth alone used to be ignored silently."""
    from cryblock.blocks.learn.flags import overrides
    from cryblock.blocks.learn.student import architecture

    p = Params().replace(**overrides({"learn__width": 16, "learn__depth": 2}))
    assert architecture(p.learn).describe() == architecture(LearnParams(width=16, depth=2, stem_channels=0,
                                                                        blocks="")).describe()
    assert "stem 16/2" in architecture(p.learn).describe()
    kept = overrides({"learn__width": 16, "learn__blocks": "8/1", "learn__stem_channels": 4})["learn"]
    assert kept["blocks"] == "8/1" and kept["stem_channels"] == 4


def test_default_student_fits_64k_int8(tmp_path):
    from cryblock.blocks.learn.export import export_all
    from cryblock.blocks.learn.student import build_student

    m = build_student(LearnParams()).model
    x = np.random.default_rng(0).normal(-4, 2, (20, 96, 64)).astype(np.float32)
    e = export_all(m, x, tmp_path)
    assert len(e.int8_tflite) <= 64 * 1024


# ----------------------------------------------------------------------------- real quick run
# quick_run (conftest.py): one 80-clip training run with QUICK, shared by the session


def test_quick_run_files_and_metrics(quick_run):
    res, lines = quick_run
    out = res.out_dir
    for f in ("model.tflite", "model_quantized_int8_io.tflite", "saved_model.zip", "metrics.json", "report.md",
              "report.html", "params.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging left behind"
    m = json.loads((out / "metrics.json").read_text())
    for model in ("teacher", "float", "int8"):
        for level in ("window", "clip"):
            assert set(m[model][level]) >= {"auc", "best_f1", "threshold", "fpr"}
        assert set(m[model]["detector"]) >= {"false_alerts", "hours", "per_hour"}
    assert m["cost"]["int8_bytes"] == (out / "model_quantized_int8_io.tflite").stat().st_size
    assert m["cost"]["macs"] > 0 and m["cost"]["params"] > 0 and m["cost"]["arena_bytes"] > 0
    # the teacher on real cries is strong; the split is by group
    assert m["teacher"]["clip"]["auc"] > 0.9
    assert m["float"]["window"]["auc"] > 0.65  # 3 short epochs already learn something
    assert len([ln for ln in lines if ln.startswith("epoch")]) == QUICK["epochs"]
    assert Params.load(out / "params.json").learn.blocks == QUICK["blocks"]
    html = (out / "report.html").read_text()
    # DET, ROC, night, clip timelines; the parent's summary first
    assert html.count("data:image/png;base64,") == 4 and "Nursery night" in html and "DET curves" in html
    assert html.index("What the baby monitor will do at night") < html.index("Training")
    for model in ("teacher", "float", "int8"):
        night = m[model]["night"]
        assert {k.split()[-1] for k in night["singles"]} == {"0", "10", "20"}
        assert {k.split()[0] for k in night["singles"]} == {"household", "nursery"} and night["episodes"]
        fa = night["false_alerts"]["household"]
        assert fa["hours"] > 0 and fa["count"] >= 0 and fa["per_8h_ci"][0] <= fa["per_8h"] <= fa["per_8h_ci"][1]
        assert m[model]["det"] and all(0 <= d["miss_rate"] <= 1 for d in m[model]["det"])
        lo, hi = m[model]["auc_ci"]["window"]
        assert lo <= m[model]["window"]["auc"] <= hi
        assert m[model]["categories"]  # which negative sounds alert, per category
    assert m["night"]["hours"]["household"] > 0 and m["calibration"]["int8"]["pareto"]
    assert m["calibration"]["int8"]["promised"]["fa_per_8h_upper"] > m["calibration"]["int8"]["promised"]["fa_per_8h"]
    assert m["data"]["validation_cries"]  # what cryblock calibrate lays into a parent's recording
    with zipfile.ZipFile(out / "saved_model.zip") as z:
        names = z.namelist()
    assert "saved_model/saved_model.pb" in names and all(n.startswith("saved_model/") for n in names)


@pytest.fixture(scope="module")
def quick_split(quick_run):
    """The quick run's clips recomputed from scratch: same 80-clip subset, same group split
    (PatchSet, train clip indices, validation clip indices)."""
    from cryblock.blocks.learn.train import sample_clips
    from cryblock.data import compute_patches, load_manifest, split_by_group

    lp = Params().replace(learn=QUICK).learn
    manifest = Path(quick_run[0].metrics["data"]["manifest"])
    ps = compute_patches(sample_clips(load_manifest(manifest), 80, lp.seed), workers=1)
    tr, va, _ = split_by_group(ps.clips, lp.test_fraction, lp.validation_fraction, lp.seed)
    return ps, tr, va


def test_detector_calibrated_on_the_validation_night_and_deployed(quick_run, quick_split, data_dir):
    """params.json carries the INT8 model's calibrated setting: rebuilt from scratch (the same
    validation clips, the night, TFLM scores, the calibration), the same setting comes out, and it
    is the best one whose false-alert limit meets the budget (or the fewest-alerts one)."""
    from cryblock.blocks.learn.evaluate import TflmRunner
    from cryblock.blocks.learn.night import build_night, calibrate, score_night

    res = quick_run[0]
    m = res.metrics
    saved = Params.load(res.out_dir / "params.json")
    cal = m["calibration"]["int8"]
    assert cal["setting"] == m["int8"]["detector_setting"] == {
        k: getattr(saved.detector, k) for k in ("threshold", "vote_n", "vote_m", "hold_seconds")}
    ps, _, va = quick_split
    sub = ps.subset_clips(va)
    runner = TflmRunner((res.out_dir / "model_quantized_int8_io.tflite").read_bytes())
    night = build_night([c for c in sub.clips if c.label != "cry"], [c for c in sub.clips if c.label == "cry"],
                        saved.dsp, saved.night, [saved.learn.seed, 1], singles=False)
    scores = score_night(night, {"int8": lambda x: runner.predict(x).reshape(-1)})["int8"]
    again = calibrate([(night, scores)], Params().detector, saved.night.fa_budget_per_8h)
    assert again.setting == saved.detector
    assert again.within_budget == cal["within_budget"]
    if again.within_budget:
        best = max(c[1] for c in again.candidates if c[3] <= saved.night.fa_budget_per_8h and c[1] == c[1])
        assert again.verdict.headline_recall() == best


def test_quick_run_filter_counts_match_teacher(quick_run, quick_split, teacher):
    m = quick_run[0].metrics
    f = m["filter"]
    assert 0 < f["positive_kept"] <= f["positive_windows"]
    assert 0 < f["negative_kept"] <= f["negative_windows"]
    assert m["training"]["windows_kept"] == f["positive_kept"] + f["negative_kept"]
    # recount from scratch: same subset, same group split, real teacher cry probability
    from cryblock.blocks.learn.teacher import cry_probability

    ps, tr, _ = quick_split
    sub = ps.subset_clips(tr)
    p = cry_probability(teacher.predict(sub.patches)[0])
    pos = sub.labels() == "cry"
    assert f["positive_windows"] == int(pos.sum()) and f["negative_windows"] == int((~pos).sum())
    assert f["positive_kept"] == int(np.sum(pos & (p > 0.30)))
    assert f["negative_kept"] == int(np.sum(~pos & (p < 0.05)))
    # epoch size = kept positives + min(kept negatives, 3 × kept positives)
    want = f["positive_kept"] + min(f["negative_kept"], round(3 * f["positive_kept"]))
    assert all(h["windows"] == want for h in m["training"]["history"])


def test_int8_matches_float_in_tflm(quick_run, clips):
    """The INT8 model in TFLite Micro agrees with the float model on real test patches."""
    from cryblock.blocks.deploy.model import inspect_model
    from cryblock.blocks.learn.evaluate import TflmRunner
    from cryblock.blocks.learn.tflite import tflite_interpreter
    from cryblock.data import compute_patches

    out = quick_run[0].out_dir
    x = compute_patches(clips[:6], workers=1).patches[:30]
    r = TflmRunner((out / "model_quantized_int8_io.tflite").read_bytes())
    p8 = r.predict(x).reshape(-1)
    interp = tflite_interpreter(out / "model.tflite")
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    pf = []
    for k in range(len(x)):
        interp.set_tensor(i["index"], x[k][None, ..., None])
        interp.invoke()
        pf.append(float(interp.get_tensor(o["index"]).reshape(-1)[0]))
    pf = np.array(pf)
    assert np.max(np.abs(p8 - pf)) < 0.08, (p8, pf)
    # the firmware's INT8 model outputs logits (a quantised sigmoid ties every score < 1/256 at 0)
    assert inspect_model((out / "model_quantized_int8_io.tflite").read_bytes()).output_activation == "none"
    assert inspect_model((out / "model.tflite").read_bytes()).output_activation == "sigmoid"
    m = quick_run[0].metrics
    assert abs(m["int8"]["window"]["auc"] - m["float"]["window"]["auc"]) < 0.02
    assert m["int8_vs_float"]["decision_agreement"] > 0.9


def test_evaluate_on_other_recordings(quick_run, quick_split, clips, teacher_path, tmp_path):
    """cryblock evaluate: a trained run on a manifest of clips it never saw (cats, speech, cries
    of other groups), teacher/float/INT8 at the deployed detector, with the night; a one-label
    manifest gets what is defined; unknown labels and --out = the run are refused."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    run = quick_run[0].out_dir
    seen = {str(c.path) for c in quick_split[0].clips}  # the run's 80 clips
    rng = np.random.default_rng(3)
    fresh = [c for c in clips if str(c.path) not in seen]
    pick = [fresh[i] for i in rng.choice(len(fresh), 400, replace=False)]
    rows = [c for c in pick if c.label == "cry"][:8] + [c for c in pick if c.label != "cry"][:24]
    man = _manifest(tmp_path / "mine.csv", [(c, c.label) for c in rows])
    runner = CliRunner()
    base = ["evaluate", "--run", str(run), "--teacher", str(teacher_path), "--workers", "1"]
    r = runner.invoke(cli, [*base, "--data", str(man), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["kind"] == "evaluation" and m["data"]["clips"] == len(rows) and m["undefined"] == []
    assert m["data"]["positive_clips"] == 8 and m["detector"] == Params.load(run / "params.json").to_dict()["detector"]
    for model in ("teacher", "float", "int8"):
        lo, hi = m[model]["auc_ci"]["window"]
        assert 0 <= lo <= m[model]["window"]["auc"] <= hi <= 1
        assert {k.split()[-1] for k in m[model]["night"]["singles"]} == {"0", "10", "20"} and m[model]["categories"]
    assert m["teacher"]["clip"]["auc"] > 0.85  # YAMNet on cries it has never been tuned on
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "| Student INT8 (TFLM) |" in md and "night" in md.lower()
    assert (tmp_path / "ev" / "report.html").read_text().count("data:image/png;base64,") >= 2
    # negatives only: false alerts are defined, AUC and recall are not
    neg = _manifest(tmp_path / "neg.csv", [(c, c.label) for c in rows if c.label != "cry"])
    r = runner.invoke(cli, [*base, "--data", str(neg), "--out", str(tmp_path / "ev_neg")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev_neg" / "metrics.json").read_text())
    assert any("AUC" in u for u in m["undefined"]) and any("recall" in u for u in m["undefined"])
    assert m["int8"]["night"]["false_alerts"]["household"]["count"] >= 0
    odd = _manifest(tmp_path / "odd.csv", [(c, "Cry" if c.label == "cry" else c.label) for c in rows])
    r = runner.invoke(cli, [*base, "--data", str(odd)])
    assert r.exit_code == 2 and "['Cry']" in r.output and "--map-label" in r.output
    before = sorted(p.name for p in run.iterdir())
    r = runner.invoke(cli, [*base, "--data", str(man), "--out", str(run)])
    assert r.exit_code == 2 and "also an input" in r.output
    assert sorted(p.name for p in run.iterdir()) == before


def test_detect_alerts_on_a_cry_and_checks_its_inputs(quick_run, clips, tmp_path):
    """cryblock detect: the deployed detector over real recordings (a cry, a long ambience
    recording): the real duration, one score per patch, alerts inside the recording, JSON and
    PNG written; an unreadable file → exit 2, nothing written; a params.json whose patch shape the
    model cannot take → one line."""
    import shutil

    import soundfile as sf
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    run = quick_run[0].out_dir
    cry = next(c.path for c in clips if c.label == "cry" and c.source.startswith("donateacry"))
    long_neg = max((c for c in clips if c.label != "cry"), key=lambda c: sf.info(str(c.path)).duration).path
    runner = CliRunner()
    out_json, out_png = tmp_path / "d.json", tmp_path / "d.png"
    r = runner.invoke(cli, ["detect", str(cry), str(long_neg), "--run", str(run), "--json", str(out_json),
                            "--plot", str(out_png)])
    assert r.exit_code == 0, r.output
    d = json.loads(out_json.read_text())
    assert d["detector"] == Params.load(run / "params.json").to_dict()["detector"]
    for f, path in zip(d["files"], (cry, long_neg)):
        dur = sf.info(str(path)).duration
        assert f["seconds"] == pytest.approx(dur) and len(f["scores"]) == f["patches"] >= 1
        assert all(0 <= a["start_s"] < a["end_s"] <= dur + 1 for a in f["alerts"])
        assert all(0 <= v <= 1 for v in f["scores"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio")
    r = runner.invoke(cli, ["detect", str(cry), str(bad), "--run", str(run), "--json", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and str(bad) in r.output and not (tmp_path / "x.json").exists()
    r = runner.invoke(cli, ["detect", str(cry), "--run", str(run), "--json", str(cry)])
    assert r.exit_code == 2 and "also an input" in r.output
    other = tmp_path / "other_run"
    shutil.copytree(run, other)
    Params.load(run / "params.json").replace(dsp={"patch_window_seconds": 0.5}).save(other / "params.json")
    r = runner.invoke(cli, ["detect", str(cry), "--run", str(other)])
    assert r.exit_code == 2 and "does not hold one" in r.output and "Traceback" not in r.output, r.output


def test_tune_measures_candidates_and_retrains_the_best_within_budget(quick_split, teacher, tmp_path):
    """cryblock tune on two tiny candidates (one epoch each): each row's cost is what the INT8
    file and TFLM measure, the budget marks only the candidate that fits, the best within budget
    is retrained into best/; a budget nothing meets retrains nothing and says so."""
    from cryblock.blocks.deploy.arena import plan_arena
    from cryblock.blocks.deploy.model import inspect_model
    from cryblock.blocks.learn.tune import Budget, estimate_cost, tune

    ps = quick_split[0]
    man = _manifest(tmp_path / "m.csv", [(c, c.label) for c in ps.clips])
    cands = {"tiny": {"stem_channels": 4, "pool": "max", "blocks": "8/2"},
             "wider": {"stem_channels": 8, "pool": "none", "blocks": "16/1,32/2"}}
    p = Params().replace(learn={**QUICK, "patience": 1})
    lines = []
    doc = tune(man, tmp_path / "t", p, budget=Budget(max_arena=None, max_macs=2e5), candidates=cands, epochs=1,
               final_epochs=1, teacher=teacher, workers=1, log=lines.append)
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == {"tiny", "wider"}
    for name, r in rows.items():
        model = (tmp_path / "t" / "candidates" / name / "model_quantized_int8_io.tflite").read_bytes()
        assert r["int8_bytes"] == len(model) and r["macs"] == inspect_model(model).macs
        assert r["arena_host"] == plan_arena(model).measured_bytes and r["arena_device"] >= r["arena_host"]
        assert 0 <= r["val_auc"] <= 1 and r["test_auc"] is not None
    assert rows["tiny"]["macs"] < 2e5 < rows["wider"]["macs"]
    # the cost of an untrained candidate (bench/size.py) is the trained one's
    est = estimate_cost({**QUICK, **cands["wider"]})
    assert {k: est[k] for k in ("macs", "int8_bytes", "arena_host")} == {
        k: rows["wider"][k] for k in ("macs", "int8_bytes", "arena_host")}
    assert doc["best"] == "tiny" and (tmp_path / "t" / "best" / "model_quantized_int8_io.tflite").is_file()
    md = (tmp_path / "t" / "tune.md").read_text()
    assert "| tiny |" in md and "Best within budget: **tiny**" in md
    assert [ln for ln in md.splitlines() if ln.startswith("| tiny")][0].count("✓") == 1
    assert "✓" not in [ln for ln in md.splitlines() if ln.startswith("| wider")][0]
    assert json.loads((tmp_path / "t" / "tune.json").read_text())["best"] == "tiny"
    none = tune(man, tmp_path / "t2", p, budget=Budget(max_arena=10), candidates={"tiny": cands["tiny"]}, epochs=1,
                teacher=teacher, workers=1, log=lines.append)
    assert none["best"] is None and not (tmp_path / "t2" / "best").exists()
    assert "No candidate within the budget" in (tmp_path / "t2" / "tune.md").read_text()


def test_teacher_cache_reused(teacher, tmp_path):
    from cryblock.blocks.learn.distill import teacher_outputs

    x = np.random.default_rng(1).normal(-4, 2, (5, 96, 64)).astype(np.float32)
    msgs = []
    s1, e1 = teacher_outputs(teacher, x, tmp_path, log=msgs.append)
    s2, e2 = teacher_outputs(teacher, x, tmp_path, log=msgs.append)
    assert "cached" in msgs[-1] and len(list(tmp_path.glob("teacher-*.npz"))) == 1
    # the same outputs from a cold cache, a warm one and none: a first run equals every later one
    s0, e0 = teacher_outputs(teacher, x, None)
    assert np.array_equal(s1, s2) and np.array_equal(e1, e2) and np.array_equal(s0, s1) and np.array_equal(e0, e1)


# ----------------------------------------------------------------------------- Edge Impulse entry point
@pytest.fixture(scope="module")
def ei_data(data_dir, tmp_path_factory):
    """EI-format .npy files from a small real subset (cry and not_cry clips, flat rows, one-hot Y)."""
    from cryblock.blocks.learn.train import sample_clips
    from cryblock.data import compute_patches, load_manifest

    clips = sample_clips(load_manifest(data_dir / "manifest.csv"), 50, seed=3)
    ps = compute_patches(clips, workers=1)
    y = np.array([0 if ps.clips[i].label == "cry" else 1 for i in ps.clip_index])  # EI sorts labels: cry, not_cry
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=len(idx) // 4, replace=False)] = True
    d = tmp_path_factory.mktemp("ei") / "data"
    d.mkdir()
    x = ps.patches.reshape(len(y), -1)
    np.save(d / "X_split_train.npy", x[~test])
    np.save(d / "Y_split_train.npy", np.eye(2, dtype=np.float32)[y[~test]])
    np.save(d / "X_split_test.npy", x[test])
    np.save(d / "Y_split_test.npy", np.eye(2, dtype=np.float32)[y[test]])
    return d


def test_ei_entry_point_as_platform_runs_it(ei_data, tmp_path):
    from cryblock.blocks.learn.evaluate import TflmRunner

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cryblock.blocks.learn.ei_train", "--data-directory", str(ei_data),
           "--out-directory", str(out), "--epochs", "2", "--learning-rate", "0.003", "--width", "8", "--depth", "2",
           "--temperature", "3", "--alpha", "0.5", "--neg-per-pos", "3", "--filter-pos", "0.3", "--filter-neg",
           "0.05", "--embedding-weight", "0.1", "--some-future-flag", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for f in ("model.tflite", "model_quantized_int8_io.tflite", "saved_model.zip"):
        assert (out / f).is_file(), f
    with zipfile.ZipFile(out / "saved_model.zip") as z:
        assert "saved_model/saved_model.pb" in z.namelist()
    runner = TflmRunner((out / "model_quantized_int8_io.tflite").read_bytes())
    x = np.load(ei_data / "X_split_test.npy")[:8]
    p = runner.predict(x)
    assert p.shape == (8, 2) and np.allclose(p.sum(axis=1), 1.0, atol=0.05)
    assert tuple(runner.inp["shape"]) == (1, 96 * 64)
    m = json.loads((out / "metrics.json").read_text())
    assert m["preset"] == "general" and m["data"]["source"] == "edge-impulse"
    assert Params.load(out / "params.json").learn.temperature == 3.0


def test_ei_labels_one_hot_and_legacy(tmp_path):
    from cryblock.blocks.learn.ei_train import load_labels

    np.save(tmp_path / "a.npy", np.eye(3, dtype=np.float32)[[2, 0, 1]])
    y, k = load_labels(tmp_path / "a.npy")
    assert y.tolist() == [2, 0, 1] and k == 3
    np.save(tmp_path / "b.npy", np.array([[2, 7], [1, 9], [3, 4]]))  # legacy: 1-based in column 0
    y, k = load_labels(tmp_path / "b.npy")
    assert y.tolist() == [1, 0, 2] and k is None
    np.save(tmp_path / "c.npy", np.array([0, 1, 2]))  # 0 is not a 1-based label
    with pytest.raises(DataError, match="1-based"):
        load_labels(tmp_path / "c.npy")


# ----------------------------------------------------------------------------- bad inputs
def _ei_write(d: Path, xtr, ytr, xte, yte):
    d.mkdir(parents=True, exist_ok=True)
    for name, a in (("X_split_train", xtr), ("Y_split_train", ytr), ("X_split_test", xte), ("Y_split_test", yte)):
        np.save(d / f"{name}.npy", a)


def test_ei_bad_inputs(tmp_path):
    from cryblock.blocks.learn.ei_train import load_split

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        load_split(empty)
    x = np.zeros((10, 6144), np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1] * 5]
    _ei_write(tmp_path / "mismatch", x, y[:9], x, y)
    with pytest.raises(DataError, match="10 rows but .* has 9"):
        load_split(tmp_path / "mismatch")
    _ei_write(tmp_path / "len", np.zeros((10, 6000), np.float32), y, x, y)
    with pytest.raises(DataError, match="6144"):
        load_split(tmp_path / "len")
    _ei_write(tmp_path / "oneclass", x, np.eye(2, dtype=np.float32)[[0] * 10], x, y)
    with pytest.raises(DataError, match="only one class"):
        load_split(tmp_path / "oneclass")
    _ei_write(tmp_path / "notest", x, y, x, np.eye(2, dtype=np.float32)[[0] * 10])
    with pytest.raises(DataError, match="missing from the test split"):
        load_split(tmp_path / "notest")
    _ei_write(tmp_path / "corrupt", x, y, x, y)
    (tmp_path / "corrupt" / "X_split_test.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="X_split_test.npy"):
        load_split(tmp_path / "corrupt")
    for name, labels, msg in (("strings", np.array(["cry", "noise"] * 5), "must be numbers"),
                              ("digit_strings", np.array(["1", "2"] * 5), "must be numbers"),
                              ("huge", np.array([1, 1e9] * 5), "beyond 1024 classes"),
                              ("many_missing", np.array([1, 2000] * 5), "beyond 1024 classes")):
        _ei_write(tmp_path / name, x, labels, x, labels)
        with pytest.raises(DataError, match=msg) as e:
            load_split(tmp_path / name)
        assert len(str(e.value)) < 300


def test_ei_empty_dir_exits_2_with_one_line(tmp_path):
    from cryblock.blocks.learn.ei_train import main

    (tmp_path / "d").mkdir()
    assert main(["--data-directory", str(tmp_path / "d"), "--out-directory", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def _manifest(path: Path, rows):
    lines = ["path,label,group"] + [f"{r.path},{lab},{r.group}" for r, lab in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_one_class_manifest_is_rejected(clips, tmp_path, teacher):
    from cryblock.blocks.learn.train import train_from_manifest

    neg = [c for c in clips if c.label == "not_cry"][:12]
    man = _manifest(tmp_path / "m.csv", [(c, c.label) for c in neg])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="positive label"):
        train_from_manifest(man, out, Params().replace(learn=QUICK), teacher=teacher)
    assert not out.exists() or not any(out.iterdir())


def test_label_missing_from_test_split_is_rejected(tmp_path, teacher):
    from cryblock.blocks.learn.train import Split, train_arrays

    rng = np.random.default_rng(0)
    x = rng.normal(-4, 2, (12, 96, 64)).astype(np.float32)
    y = np.array([0, 1] * 6)
    ok = Split(x, y, np.arange(12), y.copy())
    bad = Split(x[:4], np.zeros(4, int), np.arange(4), np.zeros(4, int))
    with pytest.raises(DataError, match="test split has only one class"):
        train_arrays(ok, ok, bad, tmp_path / "o", Params().replace(learn=QUICK), teacher=teacher)
    g = Params().replace(learn={**QUICK, "preset": "general", "labels": ["a", "b", "c"],
                                "positive_label": "a"})
    y3 = np.array([0, 1, 2] * 4)
    s3 = Split(x, y3, np.arange(12), y3.copy())
    t3 = Split(x[:4], np.array([0, 1, 0, 1]), np.arange(4), np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"\['c'\] missing from the test split"):
        train_arrays(s3, s3, t3, tmp_path / "o", g, teacher=teacher)
    assert not (tmp_path / "o").exists()


def test_missing_or_corrupt_teacher(data_dir, tmp_path):
    from cryblock.blocks.learn.train import train_from_manifest

    man = data_dir / "manifest.csv"
    with pytest.raises(CryblockError):
        train_from_manifest(man, tmp_path / "a", Params().replace(learn=QUICK), teacher=tmp_path / "nope.tflite",
                            max_clips=40)
    bad = tmp_path / "yamnet.tflite"
    bad.write_bytes(b"\x00\x00\x00\x00TFL3garbage" * 10)
    with pytest.raises(CryblockError):
        train_from_manifest(man, tmp_path / "b", Params().replace(learn=QUICK), teacher=bad, max_clips=40)
    for d in ("a", "b"):
        assert not (tmp_path / d).exists() or not any((tmp_path / d).iterdir())


def test_cli_train_bad_input_prints_error(tmp_path):
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    r = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "error:" in r.output and "manifest not found" in r.output
    r = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o"),
                                 "--alpha", "1.5"])
    assert r.exit_code == 2 and "alpha" in r.output


def test_cli_train_quick_run(data_dir, teacher_path, tmp_path):
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--data", str(data_dir / "manifest.csv"), "--out", str(out),
                                 "--teacher", str(teacher_path), "--max-clips", "60", "--epochs", "1", "--width", "8",
                                 "--depth", "1", "--temperature", "4", "--alpha", "1.0"])
    assert r.exit_code == 0, r.output[-3000:]
    assert "epoch   1/1" in r.output and "| Student INT8 (TFLM) |" in r.output and "INT8 cost:" in r.output
    p = Params.load(out / "params.json").learn
    assert (p.temperature, p.alpha, p.depth) == (4.0, 1.0, 1)
    assert (out / "model_quantized_int8_io.tflite").is_file()


def test_cli_demo_runs_all_stages(data_dir, teacher_path, tmp_path, monkeypatch):
    """`cryblock demo` (quick): train → export → evaluate → ESP32-S3 project with the tuned threshold;
    `cryblock build` then picks up the params.json beside the model."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    monkeypatch.setenv("CRYBLOCK_DATA", str(data_dir))
    monkeypatch.setenv("CRYBLOCK_TEACHER", str(teacher_path))
    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), "--max-clips", "60", "--epochs", "1",
                                 "--width", "8", "--depth", "1"])
    assert r.exit_code == 0, r.output[-3000:]
    # the host TFLM time per window is the cross-validation's (the deployed model is not re-scored)
    assert json.loads((out / "metrics.json").read_text())["cost"]["tflm_ms_per_window_host"] > 0
    thr = Params.load(out / "params.json").detector.threshold
    kconfig = (out / "fw" / "main" / "Kconfig.projbuild").read_text()
    assert f"default {round(thr * 1000)}\n" in kconfig.split("CRY_THRESHOLD_X1000", 1)[1]
    assert (out / "fw" / "main" / "model_data.cc").read_bytes().count(b"0x") > 1000
    r = CliRunner().invoke(cli, ["build", "--model", str(out / "model_quantized_int8_io.tflite"),
                                 "--out", str(tmp_path / "fw2"), "--no-idf"])
    assert r.exit_code == 0, r.output[-3000:]
    assert "beside the model" in r.output
    assert (tmp_path / "fw2" / "main" / "Kconfig.projbuild").read_text() == kconfig


def test_ei_parameters_json_params_are_real_flags():
    """Every custom parameter Edge Impulse passes (`--<param>`) is a flag the entry point knows
    (parse_known_args would otherwise drop a misspelt one silently), and its value in
    parameters.json is the Params default."""
    from cryblock.blocks.learn import ei_train
    from cryblock.blocks.learn.flags import LEARN_FLAGS

    spec = json.loads((Path(ei_train.__file__).parent / "parameters.json").read_text())
    base = ["--data-directory", "d", "--out-directory", "o"]
    dest = {f[2:]: path for f, path, *_ in LEARN_FLAGS}
    defaults = Params().to_dict()
    assert {p["param"] for p in spec["parameters"]} == {f[2:] for f, *_, ei in LEARN_FLAGS if ei} | {"positive-class"}
    for p in spec["parameters"]:
        ns = vars(ei_train.parse_args(base + ["--" + p["param"], str(p["value"])]))
        if p["param"] == "positive-class":
            assert ns["positive_class"] == p["value"]
            continue
        section, field = dest[p["param"]].split(".")
        assert ns[f"{section}__{field}"] == p["value"] == defaults[section][field], p["param"]
        if p["type"] == "select":
            assert p["value"] in p["valid"]


def test_general_preset_on_real_multi_label_data(clips, teacher, tmp_path):
    """Any label set: four ESC-10 categories (groups = ESC folds), softmax student distilled from a
    teacher head on YAMNet embeddings, detector on the chosen label, firmware built for it."""
    from cryblock.blocks.deploy import model as tfl
    from cryblock.blocks.deploy import project as gen
    from cryblock.blocks.learn.train import train_from_manifest

    cats = {"dog bark": "dog", "rain": "rain", "rooster": "rooster", "baby cry": "baby"}
    rows = [(c, cats[c.category]) for c in clips if c.source == "ESC-10" and c.category in cats]
    man = _manifest(tmp_path / "m.csv", rows)
    p = Params().replace(learn={**QUICK, "preset": "general", "labels": ["baby", "dog", "rain", "rooster"],
                                "positive_label": "dog", "test_fraction": 0.2, "validation_fraction": 0.25})
    with pytest.raises(DataError, match="positive-label"):
        train_from_manifest(man, tmp_path / "bad", p.replace(learn={"labels": ["dog", "x"], "positive_label": "x"}),
                            teacher=teacher)
    res = train_from_manifest(man, tmp_path / "run", p, teacher=teacher)
    m = res.metrics
    assert m["preset"] == "general" and m["labels"] == ["baby", "dog", "rain", "rooster"] and m["positive_index"] == 1
    assert m["teacher"]["accuracy"] > 0.8 and m["teacher"]["macro_auc"] > 0.95  # YAMNet knows these sounds
    assert m["int8"]["accuracy"] > 0.4  # 3 short epochs at width 8: well above chance (0.25)
    model = (res.out_dir / "model_quantized_int8_io.tflite").read_bytes()
    info = tfl.inspect_model(model)
    # logits out: the firmware applies the softmax in float (CRY_OUTPUT_ACTIVATION 2)
    assert info.output.size == 4 and "SOFTMAX" not in info.ops and info.output_activation == "none"
    saved = Params.load(res.out_dir / "params.json")
    assert tfl.positive_output_index(info, saved) == 1
    fw = gen.generate_project(res.out_dir / "model_quantized_int8_io.tflite", tmp_path / "fw", saved,
                                 gen.BuildOptions())
    settings = (fw.project / "main" / "model_settings.h").read_text()
    assert 'element 1 ("dog")' in settings and "#define CRY_OUTPUT_ACTIVATION 2" in settings


# ----------------------------------------------------------------------------- hostile training input
def _rows(clips, source, n, label=None, group=None):
    picked = [c for c in clips if c.source == source][:n]
    return [(c if group is None else dataclasses.replace(c, group=group), label or c.label) for c in picked]


def test_cry_preset_refuses_unexpected_labels_unless_mapped(clips, tmp_path):
    from click.testing import CliRunner

    from cryblock.blocks.learn.train import prepare_clips
    from cryblock.cli.main import cli

    rows = (_rows(clips, "ESC-10", 6) + _rows(clips, "donateacry-corpus", 3, "Cry")
            + _rows(clips, "theunissenlab/BabyCriesDiscomfortPain", 3, "crying"))
    man = _manifest(tmp_path / "m.csv", rows)
    with pytest.raises(DataError, match=r"unexpected label\(s\) \['Cry', 'crying'\]"):
        prepare_clips(man, Params())
    _, got, _ = prepare_clips(man, Params(), label_map={"Cry": "cry", "crying": "cry"})
    assert {c.label for c in got} == {"cry", "not_cry"} and sum(c.label == "cry" for c in got) >= 6
    r = CliRunner().invoke(cli, ["train", "--data", str(man), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "unexpected label(s) ['Cry', 'crying']" in r.stderr and "--map-label" in r.stderr
    assert not (tmp_path / "run").exists()


def test_general_preset_takes_labels_from_the_manifest(clips, tmp_path):
    """README: `cryblock train --preset general --positive-label dog` (the manifest's labels, not
    not_cry/cry). A file given as --out then fails fast, after the parameters were accepted."""
    from click.testing import CliRunner

    from cryblock.cli.learn_cmds import learn_params
    from cryblock.cli.main import cli

    cats = {"dog bark": "dog", "rain": "rain", "rooster": "rooster"}
    rows = [(c, cats[c.category]) for c in clips if c.source == "ESC-10" and c.category in cats]
    man = _manifest(tmp_path / "m.csv", rows)
    p = learn_params(str(man), None, {"learn__preset": "general", "learn__positive_label": "dog"}, {})
    assert p.learn.labels == ("dog", "rain", "rooster") and p.learn.positive_label == "dog"
    taken = tmp_path / "taken"
    taken.write_text("a file")
    r = CliRunner().invoke(cli, ["train", "--data", str(man), "--out", str(taken), "--preset", "general",
                                 "--positive-label", "dog"])
    assert r.exit_code == 2 and "exists and is not a folder" in r.stderr, r.output
    r = CliRunner().invoke(cli, ["train", "--data", str(man), "--out", str(tmp_path / "o"), "--preset", "general",
                                 "--positive-label", "cat"])
    assert r.exit_code == 2 and "['dog', 'rain', 'rooster']" in r.stderr


def test_same_recording_twice_is_found(clips, tmp_path):
    import shutil

    from cryblock.blocks.learn.train import prepare_clips

    base = _rows(clips, "ESC-10", 4) + _rows(clips, "donateacry-corpus", 4)
    c0 = base[0][0]
    cross = _manifest(tmp_path / "cross.csv", base + [(dataclasses.replace(c0, group="elsewhere"), c0.label)])
    with pytest.raises(DataError, match=r"listed twice but in group 'elsewhere'"):
        prepare_clips(cross, Params())
    copy = tmp_path / "copy.ogg"
    shutil.copy(c0.path, copy)
    same_bytes = _manifest(tmp_path / "bytes.csv", base + [(dataclasses.replace(c0, path=copy, group="g9"), c0.label)])
    with pytest.raises(DataError, match="has the same bytes as"):
        prepare_clips(same_bytes, Params())
    logged = []
    _, got, _ = prepare_clips(_manifest(tmp_path / "twice.csv", base + [base[1]]), Params(), log=logged.append)
    assert len(got) == len(base) and len(logged) == 1 and "repeat is ignored" in logged[0]


@pytest.mark.parametrize("flag,value", [("--temperature", "1e30"), ("--temperature", "inf"), ("--alpha", "nan"),
                                        ("--neg-per-pos", "1e9"), ("--epochs", "0"), ("--seed", "-3")])
def test_absurd_numeric_flags_fail_before_any_work(data_dir, tmp_path, flag, value):
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    r = CliRunner().invoke(cli, ["train", "--data", str(data_dir / "manifest.csv"), "--out", str(tmp_path / "o"),
                                 flag, value])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.startswith(f"error: parameter '{flag[2:].replace('-', '_')}'"), r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("out", ["file", "under_file", "proc"])
def test_train_out_is_checked_before_training(data_dir, tmp_path, out):
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    f = tmp_path / "f"
    f.write_text("x")
    path = {"file": f, "under_file": f / "run", "proc": Path("/proc/cryblock-run")}[out]
    r = CliRunner().invoke(cli, ["train", "--data", str(data_dir / "manifest.csv"), "--out", str(path)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "features:" not in r.output, r.output


def test_ei_features_of_another_layout_or_scale_are_refused(ei_data, tmp_path):
    from cryblock.blocks.learn.ei_train import load_features, main

    x = np.load(ei_data / "X_split_train.npy")
    np.save(tmp_path / "t.npy", x.reshape(-1, 96, 64).transpose(0, 2, 1))
    with pytest.raises(DataError, match=r"\[64, 96\].*transposed"):
        load_features(tmp_path / "t.npy")
    np.save(tmp_path / "s.npy", x * 1000)
    with pytest.raises(DataError, match="outside the"):
        load_features(tmp_path / "s.npy")
    assert load_features(ei_data / "X_split_train.npy").shape == (len(x), 96, 64)
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["--data-directory", str(ei_data), "--out-directory", str(f / "o")]) == 2


# ----------------------------------------------------------------------------- outputs never replace a run
def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def test_commands_never_replace_a_run_they_did_not_create(quick_run, clips, tmp_path):
    """evaluate --out into another run, train/demo into an existing run, detect --plot/--json onto a
    run's files, train --params DIR/params.json --out DIR, an `evaluation` symlink: each is one
    error line before any work, and the run is unchanged (they used to replace it)."""
    import shutil

    from click.testing import CliRunner

    from cryblock.cli.main import cli

    run = tmp_path / "run"
    shutil.copytree(quick_run[0].out_dir, run)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    cry = next(c for c in clips if c.label == "cry")
    man = _manifest(tmp_path / "m.csv", [(cry, "cry")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = _tree(tmp_path)
    cases = [
        (["evaluate", "--run", str(run), "--data", str(man), "--out", str(other)], "holds a run"),
        (["evaluate", "--run", str(run), "--data", str(man), "--out", str(other), "--force"], "not an evaluation"),
        (["train", "--data", str(man), "--out", str(run)], "holds a run"),
        (["train", "--data", str(man), "--out", str(run), "--params", str(run / "params.json"), "--force"],
         "inside --out"),
        (["demo", "--data", str(man), "--out", str(run)], "holds a run"),
        (["tune", "--data", str(man), "--out", str(run)], "holds a run"),
        (["detect", str(cry.path), "--run", str(run), "--plot", str(run / "model.tflite")],
         "would replace a file of the run"),
        (["detect", str(cry.path), "--run", str(run), "--json", str(run / "metrics.json")],
         "would replace a file of the run"),
    ]
    for args, msg in cases:
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (args, r.output)
        assert msg in r.stderr and r.stdout == "", (args, r.output)
    (run / "evaluation").symlink_to(elsewhere)
    r = CliRunner().invoke(cli, ["evaluate", "--run", str(run), "--data", str(man)])
    assert r.exit_code == 2 and "symlink inside the run folder" in r.stderr, r.output
    (run / "evaluation").unlink()
    assert _tree(tmp_path) == before


def test_text_from_data_is_drawn_and_written_literally(quick_run, clips, tmp_path):
    """A `$…$` in a file name used to crash matplotlib's mathtext in the report drawing (detect
    --plot after scoring, evaluate and train after all their work); a U+2028 in a category split
    the HTML table row."""
    import shutil

    from click.testing import CliRunner

    from cryblock.blocks.learn import report
    from cryblock.cli.main import cli

    cry = next(c.path for c in clips if c.label == "cry")
    odd = tmp_path / f"baby$_$cry $\\foo$ {cry.name}"
    shutil.copy(cry, odd)
    r = CliRunner().invoke(cli, ["detect", str(odd), "--run", str(quick_run[0].out_dir), "--plot",
                                 str(tmp_path / "d.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    tl = {"name": str(odd), "hop_seconds": 0.48, "label": 1, **{k: np.array([0.1, 0.8]) for k in ("teacher", "float", "int8")}}
    assert report.timeline_figure([tl], 0.5)
    cat = "cat\u2028meow<b>|x\u2029"
    md = report.category_tables({"int8": {"categories": {cat: {"clips": 3, "alerting": 1}}}})
    page = report._md_to_html(md)
    rows = [ln for ln in page.split("\n") if ln.startswith("<tr>")]
    assert len(rows) == 2 and rows[1].startswith("<tr><td>cat meow&lt;b&gt;|x</td><td>3</td>"), rows
    assert "\u2028" not in page and "\u2029" not in page


@pytest.fixture
def full_disk(tmp_path):
    """A 100 KiB tmpfs (root only): the outputs do not fit."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'not root'})")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_a_full_disk_is_one_error_line_and_leaves_nothing(quick_run, clips, full_disk, tmp_path):
    """train (the export), build and features on a full disk used to end in a traceback (nothing
    half-written, but no one line)."""
    from click.testing import CliRunner

    from cryblock.blocks.learn.export import export_all
    from cryblock.blocks.learn.student import build_student
    from cryblock.cli.main import cli

    run = quick_run[0].out_dir
    r = CliRunner().invoke(cli, ["build", "--model", str(run / "model_quantized_int8_io.tflite"), "--out",
                                 str(full_disk / "fw"), "--no-idf"])
    last = r.stderr.strip().splitlines()[-1]
    assert r.exit_code == 2 and last.startswith("error: ") and "No space left on device" in last, r.output
    assert "Traceback" not in r.output
    long = max((c for c in clips if c.source == "ESC-10"), key=lambda c: c.path.stat().st_size).path
    r = CliRunner().invoke(cli, ["features", str(long), "--out", str(full_disk / "p.npz"), "-q", "--no-cache"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "No space left on device" in r.stderr, r.output
    m = build_student(Params().learn, Params().dsp)
    with pytest.raises(CryblockError, match=r"cannot write the exported models \(No space left on device"):
        export_all(m.model, np.zeros((4, 96, 64), np.float32), full_disk / "run")
    assert not [p for p in full_disk.rglob("*") if p.is_file()]


@pytest.mark.parametrize("tamper,msg", [
    ("float_model_swapped", "not this run's float model"),
    ("metrics_a_list", "not a run's metrics"),
    ("setting_malformed", "float's detector setting is malformed"),
    ("metrics_fifo", "is a FIFO, not a regular file"),
    ("params_fifo", "is a FIFO, not a regular file"),
    ("int8_dev_zero", "is a character device, not a regular file"),
])
def test_a_tampered_run_is_refused_before_any_work(quick_run, clips, tmp_path, tamper, msg):
    """evaluate used to end in a traceback after minutes of work on a run whose float model was
    swapped or whose metrics.json was malformed, and hung on a FIFO or /dev/zero in the run."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quick_run[0].out_dir, run)
    if tamper == "float_model_swapped":
        shutil.copy(run / "model_quantized_int8_io.tflite", run / "model.tflite")
    elif tamper == "metrics_a_list":
        (run / "metrics.json").write_text("[1, 2]")
    elif tamper == "setting_malformed":
        m = json.loads((run / "metrics.json").read_text())
        m["float"]["detector_setting"] = {"threshold": "high"}
        (run / "metrics.json").write_text(json.dumps(m))
    elif tamper in ("metrics_fifo", "params_fifo"):
        f = run / ("metrics.json" if tamper == "metrics_fifo" else "params.json")
        f.unlink()
        os.mkfifo(f)
    else:
        (run / "model_quantized_int8_io.tflite").unlink()
        (run / "model_quantized_int8_io.tflite").symlink_to("/dev/zero")
    cry = next(c for c in clips if c.label == "cry")
    man = _manifest(tmp_path / "m.csv", [(cry, "cry")])
    r = subprocess.run([sys.executable, "-m", "cryblock.cli", "evaluate", "--run", str(run), "--data", str(man),
                        "--out", str(tmp_path / "ev")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr[-3000:]
    assert msg in r.stderr and "Traceback" not in r.stderr and "features" not in r.stdout, r.stderr[-3000:]
    assert not (tmp_path / "ev").exists()


def test_shift_with_a_one_frame_hop_is_refused_before_any_work(data_dir, tmp_path):
    """`train --shift` with a 1-frame patch hop used to end in a traceback inside the first epoch
    (no shift of 1 … hop/2 frames exists)."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    pfile = tmp_path / "p.json"
    Params().replace(dsp={"patch_hop_seconds": 0.01}).save(pfile)
    r = CliRunner().invoke(cli, ["train", "--data", str(data_dir / "manifest.csv"), "--out", str(tmp_path / "o"),
                                 "--params", str(pfile), "--shift", "0.5"])
    assert r.exit_code == 2 and r.stderr.startswith("error: parameter 'p_shift': a time shift needs a patch hop "
                                                    "of at least 2 frames"), r.output
    assert r.stderr.count("\n") == 1 and not (tmp_path / "o").exists()
    with pytest.raises(CryblockError, match="p_shift"):
        Params().replace(dsp={"patch_hop_seconds": 0.01}, augment={"p_shift": 0.1})
