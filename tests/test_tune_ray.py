"""``cryblock tune --runner ray``: the candidates run as Ray Tune trials on a real private Ray
instance (loopback, 2 CPUs, started and stopped by the run; skipped with the reason when Ray is
not installed), on real recordings with the real teacher; each trial's run equals the one the
local runner trains (the training is deterministic)."""
from __future__ import annotations

import csv
import json

import pytest

from cryblock.params import AugmentParams, Params

from conftest import QUICK  # the quick run's recipe

#: Two tiny candidates (seconds each).
TINY = {"t8": {"stem_channels": 8, "pool": "max", "blocks": "8/1,16/2"},
        "t4": {"stem_channels": 4, "pool": "max", "blocks": "8/2"}}


@pytest.fixture(scope="module")
def small_manifest(data_dir, tmp_path_factory):
    """40 clips of the shared manifest, stratified by label and group."""
    from cryblock.blocks.learn.train import prepare_clips

    _, clips, _ = prepare_clips(data_dir / "manifest.csv", Params(), max_clips=40, log=lambda s: None)
    man = tmp_path_factory.mktemp("tune-ray") / "manifest.csv"
    with man.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "category", "source"])
        w.writerows([str(c.path), c.label, c.group, c.category, c.source] for c in clips)
    return man


def test_tune_runs_the_candidates_as_ray_tune_trials(small_manifest, teacher_path, tmp_path, monkeypatch):
    pytest.importorskip("ray.tune", reason="Ray Tune is not installed (pip install 'cryblock[ray]'); not tested")
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    from cryblock.blocks.learn.tune import Budget, tune

    recipe = {k: v for k, v in QUICK.items() if k not in ("stem_channels", "pool", "blocks")}
    params = Params().replace(learn=recipe, augment=AugmentParams.OFF)  # the runner is under test, not the recipe
    lines = []
    out = tmp_path / "tune"
    doc = tune(small_manifest, out, params, budget=Budget(max_flash=1), candidates=TINY, epochs=2, minutes=10,
               teacher=teacher_path, runner="ray", workers=2, log=lines.append)
    assert any("as Ray Tune trials on the ray local instance: 2 CPU(s)" in ln for ln in lines), lines
    assert sorted(r["name"] for r in doc["rows"]) == ["t4", "t8"] and doc["runner"] == "ray"
    assert doc["best"] is None and "no candidate within the budget" in lines[-1]  # max_flash 1 B: no retraining
    for name in TINY:
        m = json.loads((out / "candidates" / name / "metrics.json").read_text())
        assert (out / "candidates" / name / "model_quantized_int8_io.tflite").is_file()
        assert len(m["training"]["history"]) == 2
    assert not (out / ".ray-tune").exists() and not ray.is_initialized()
    assert json.loads((out / "tune.json").read_text())["rows"] == json.loads(json.dumps(doc["rows"]))
    # a trial trains the model the local runner trains
    local = tune(small_manifest, tmp_path / "local", params, budget=Budget(max_flash=1), candidates={"t4": TINY["t4"]},
                 epochs=2, minutes=10, teacher=teacher_path, log=lambda s: None)
    ray_row = next(r for r in doc["rows"] if r["name"] == "t4")
    for key in ("val_auc", "test_auc", "macs", "int8_bytes", "params"):
        assert local["rows"][0][key] == ray_row[key], key
