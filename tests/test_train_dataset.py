"""``cryblock train --dataset``: the student trained from a prepared dataset (training split
streamed) is the one ``train --data`` trains on the same clips with the same seed, its run folder is
a run folder, and bad datasets give one ``error:`` line naming the file, exit 2, nothing written.
Real recordings, the real teacher.

Why "the same model" is a tolerance and not bit-identity: the dataset stores float16 patches (its
teacher scores are of those patches), ``train --data`` trains on float32 ones. Everything else is
the same — the clips, the split, the filter's windows, each epoch's windows, the batches and their
order (an epoch that fits in the shuffle buffer is batched in the in-memory order) — so the
difference is the float16 rounding of the inputs (≈ 5e-4 relative) carried through 3 epochs.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cryblock.cli.main import cli
from cryblock.params import Params

from conftest import QUICK  # the quick run's recipe

#: ``QUICK`` as command-line flags.
QUICK_FLAGS = ["--epochs", "3", "--stem-channels", "8", "--pool", "max", "--blocks", "8/1,16/2", "--batch-size", "16",
               "--patience", "3"]


@pytest.fixture(scope="module")
def quick_dataset(data_dir, teacher_path, tmp_path_factory):
    """A dataset of exactly the 80 clips the session's ``quick_run`` trained on (the stratified
    subset of the shared manifest, in manifest order), prepared with one worker."""
    from cryblock.blocks.dataset.prepare import LocalRunner, manifest_source, prepare_dataset
    from cryblock.blocks.learn.train import prepare_clips

    _, clips, _ = prepare_clips(data_dir / "manifest.csv", Params(), max_clips=80, log=lambda s: None)
    root = tmp_path_factory.mktemp("quickds")
    man = root / "manifest.csv"
    with man.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "category", "source"])
        w.writerows([str(c.path), c.label, c.group, c.category, c.source] for c in clips)
    prepare_dataset(manifest_source(man), root / "ds", teacher=teacher_path, runner=LocalRunner(1), log=lambda s: None)
    return root / "ds", man


def test_dataset_path_trains_the_data_paths_model(quick_run, quick_dataset, teacher_path, tmp_path):
    res, _ = quick_run
    ds, man = quick_dataset
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "cryblock.cli", "train", "--dataset", str(ds), "--out", str(out),
                        "--teacher", str(teacher_path), *QUICK_FLAGS], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "augmentation: off" in p.stdout  # the default mixing needs --data: switched off, said so
    a, b = res.metrics, json.loads((out / "metrics.json").read_text())
    # the same clips, split, filter and epochs
    assert a["data"]["split"] == b["data"]["split"] and a["data"]["clips"] == b["data"]["clips"] == 80
    assert a["filter"] == b["filter"]
    ha, hb = a["training"]["history"], b["training"]["history"]
    assert [h["windows"] for h in ha] == [h["windows"] for h in hb]
    # the same model up to the float16 patches: losses, validation and test AUCs
    for x, y in zip(ha, hb):
        assert abs(x["loss"] - y["loss"]) < 0.01 * x["loss"], (ha, hb)
        assert abs(x["val_auc"] - y["val_auc"]) < 0.02, (ha, hb)
    for model in ("float", "int8"):
        wa, wb = a[model]["window"], b[model]["window"]
        assert wa["n"] == wb["n"] and wa["n_pos"] == wb["n_pos"]
        assert abs(wa["auc"] - wb["auc"]) < 0.02, (model, wa["auc"], wb["auc"])
    assert abs(a["teacher"]["window"]["auc"] - b["teacher"]["window"]["auc"]) < 1e-3
    # the run folder is a run folder: the same files, a deployable INT8 model the other commands load
    assert sorted(f.name for f in res.out_dir.iterdir()) == sorted(f.name for f in out.iterdir())
    assert b["cost"]["int8_bytes"] == a["cost"]["int8_bytes"] and b["data"]["dataset"] == str(ds)
    clip = next(row["path"] for row in csv.DictReader(man.open()) if row["label"] == "cry")
    r = CliRunner().invoke(cli, ["detect", clip, "--run", str(out)])
    assert r.exit_code == 0 and "patches" in r.output, r.output


def test_streamed_epochs_larger_than_the_buffer_still_learn(quick_run, quick_dataset, teacher):
    """A shuffle buffer smaller than an epoch: the tf.data stream (shards interleaved, buffer
    shuffle) feeds the same loop; the same windows per epoch, another batch order, and the model
    learns as the in-memory one does (test window AUC)."""
    from sklearn.metrics import roc_auc_score

    from cryblock.blocks.learn.distill import predict_batches
    from cryblock.blocks.learn.stream import fit_streamed, open_for_training

    res, _ = quick_run
    ds, _ = quick_dataset
    run = open_for_training(ds, Params().replace(learn=QUICK), teacher, log=lambda s: None)
    fitted = fit_streamed(run, shuffle_buffer=64, log=lambda s: None)
    a, hb = res.metrics, fitted.fit.history
    assert [h["windows"] for h in a["training"]["history"]] == [h["windows"] for h in hb]
    assert fitted.filt == a["filter"]
    # another batch order than the in-memory path: the same data, not the same trajectory
    assert hb[0]["loss"] != a["training"]["history"][0]["loss"]
    test = run.split("test")
    auc = roc_auc_score(test.y, predict_batches(fitted.models.model, test.x).reshape(-1))
    assert auc > 0.75 and abs(auc - a["float"]["window"]["auc"]) < 0.1, (auc, a["float"]["window"]["auc"])


def test_bad_dataset_one_error_line_naming_the_file_nothing_written(quick_dataset, teacher_path, tmp_path):
    ds, _ = quick_dataset

    def train(d, *extra):
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        r = CliRunner().invoke(cli, ["train", "--dataset", str(d), "--out", str(out), "--teacher", str(teacher_path),
                                     *map(str, extra)])
        return r, out

    # a tampered shard, a truncated one, another teacher's outputs, other DSP parameters
    for damage in ("tamper", "truncate", "teacher", "dsp"):
        d = tmp_path / damage
        shutil.copytree(ds, d)
        shard = d / "patches" / "part-00000.parquet"
        extra = []
        if damage == "tamper":
            data = bytearray(shard.read_bytes())
            data[len(data) // 2] ^= 1
            shard.write_bytes(bytes(data))
        elif damage == "truncate":
            shard.write_bytes(shard.read_bytes()[:-100])
        elif damage == "teacher":
            meta = json.loads((d / "dataset.json").read_text())
            meta["teacher"]["sha256"] = "0" * 64
            (d / "dataset.json").write_text(json.dumps(meta))
        else:
            Params().replace(dsp={"stft_hop_seconds": 0.02}).save(tmp_path / "other.json")
            extra = ["--params", tmp_path / "other.json"]
        r, out = train(d, *extra)
        assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: "), (damage, r.output)
        want = {"tamper": f"{shard}: sha256 differs", "truncate": f"{shard}: ",
                "teacher": f"{d / 'dataset.json'}: teacher outputs from another teacher",
                "dsp": f"{d / 'dataset.json'}: made with other DSP parameters (stft_hop_seconds 0.01 (dataset) vs 0.02)"}
        assert want[damage] in r.output, (damage, r.output)
        assert not out.exists()
    # not a dataset; both inputs; options that belong to --data; what a stream cannot train
    r, out = train(tmp_path / "nothing")
    assert r.exit_code == 2 and "no dataset.json (not a dataset made by cryblock prepare)" in r.output
    assert not out.exists()
    r = CliRunner().invoke(cli, ["train", "--dataset", str(ds), "--data", "m.csv", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "give either --data MANIFEST or --dataset DATASET" in r.output
    r, out = train(ds, "--cv", "3")
    assert r.exit_code == 2 and "--cv and --workers belong to --data" in r.output
    r, out = train(ds, "--preset", "general", "--positive-label", "cry")
    assert r.exit_code == 2 and "train --dataset trains the cry preset only" in r.output and not out.exists()
    r, out = train(ds, "--gain", "0.5")
    assert r.exit_code == 2 and "augmentation" in r.output and not out.exists()
