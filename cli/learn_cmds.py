"""``cryblock train`` and ``cryblock demo``: the learning stage from the command line.

* ``cryblock train --data manifest.csv --out runs/NAME [--teacher PATH] [--epochs N]
  [--temperature T --alpha A ...] [--max-clips N]`` — distil YAMNet into the DS-CNN student,
  export float/INT8/SavedModel, evaluate teacher/float/INT8 on the group-held-out test split and
  write metrics.json, report.md, report.html, params.json into ``--out``.
* ``cryblock demo`` — the main job: the same on the whole shared manifest found through
  ``$CRYBLOCK_DATA`` (or ``--data``), 15 epochs by default, printing the results table.

One progress line per epoch is printed. Errors in the user's input print ``error: …`` (exit 2).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from cryblock.errors import CryblockError

from .options import field_options, params_with

#: Epochs of ``cryblock demo`` (measured: ≈ 25–45 s per epoch on the full shared manifest on 2
#: shared CPU cores; validation AUC plateaus after ≈ 10 epochs).
DEMO_EPOCHS = 15

#: LearnParams fields settable from the command line: (flag, field, type, help).
_LEARN_FLAGS = [
    ("--epochs", "epochs", int, "training epochs (early stopping may end sooner)"),
    ("--temperature", "temperature", float, "KD temperature T"),
    ("--alpha", "alpha", float, "weight of the hard-label loss (1 = hard labels only)"),
    ("--neg-per-pos", "neg_per_pos", float, "negatives per positive window drawn each epoch"),
    ("--filter-pos", "filter_pos", float, "keep positive windows with teacher p > this"),
    ("--filter-neg", "filter_neg", float, "keep negative windows with teacher p < this"),
    ("--width", "width", int, "student channels of the first block"),
    ("--depth", "depth", int, "student depthwise-separable blocks"),
    ("--embedding-weight", "embedding_weight", float, "weight of the embedding-approximation loss"),
    ("--learning-rate", "learning_rate", float, "Adam learning rate (cosine-decayed)"),
    ("--batch-size", "batch_size", int, "batch size"),
    ("--patience", "patience", int, "early-stopping patience (epochs) on validation AUC"),
    ("--seed", "seed", int, "random seed (split, sampling, initialisation)"),
    ("--positive-label", "positive_label", str, "label the detector fires on (default cry; required for "
                                                   "--preset general unless a label is named cry)"),
    ("--preset", "preset", click.Choice(["cry", "general"]), "cry (sigmoid, teacher cry classes) or general "
                                                              "(softmax over the manifest's labels)"),
]


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore", module="tensorflow")


def parse_label_map(items) -> dict[str, str]:
    """``("Cry=cry", "crying=cry")`` → ``{"Cry": "cry", "crying": "cry"}`` (``--map-label``)."""
    out = {}
    for item in items or ():
        src, eq, dst = str(item).partition("=")
        if not eq or not src.strip() or not dst.strip():
            raise click.BadParameter(f"expected FROM=TO, got {item!r}", param_hint="--map-label")
        out[src.strip()] = dst.strip()
    return out


def learn_params(data: str, params_file: str | None, overrides: dict, label_map: dict[str, str]):
    """Params for a run on manifest ``data``: ``params_file`` (or defaults) with the flags applied;
    for preset general the labels are the manifest's (mapped), so ``--positive-label dog`` works."""
    from cryblock.blocks.learn.train import manifest_labels
    from cryblock.params import Params

    base = Params.load(params_file) if params_file else Params()
    if (overrides.get("preset") or base.learn.preset) == "general":
        labels = manifest_labels(data, label_map)
        positive = overrides.get("positive_label") or base.learn.positive_label
        if positive not in labels:
            raise CryblockError(f"{data}: --preset general needs --positive-label, one of the manifest's labels "
                                f"{labels} (got {positive!r})")
        overrides = {**overrides, "labels": labels}
    return params_with(params_file, "learn", overrides)


def _run(data: str, out: str, teacher: str | None, params_file: str | None, max_clips: int | None,
         workers: int | None, overrides: dict, label_map: dict[str, str] | None = None):
    _quiet_tf()
    from cryblock.blocks.learn.train import train_from_manifest

    params = learn_params(data, params_file, overrides, label_map or {})
    t0 = time.perf_counter()
    res = train_from_manifest(data, out, params, teacher=teacher, max_clips=max_clips, workers=workers,
                              label_map=label_map, log=lambda s: click.echo(s))
    m = res.metrics
    click.echo(f"\nINT8 cost: {m['cost']['int8_bytes']:,} B, {m['cost']['params']:,} params, "
               f"{m['cost']['macs']:,} MACs/patch, arena {m['cost']['arena_bytes']:,} B")
    click.echo(f"wrote {res.out_dir}/ (model_quantized_int8_io.tflite, model.tflite, saved_model.zip, "
               f"metrics.json, report.md, report.html, params.json) in {time.perf_counter() - t0:.0f} s")
    return res


def register(group: click.Group) -> None:
    """Add ``train`` and ``demo`` to the ``cryblock`` group."""

    @group.command("train")
    @click.option("--data", required=True, type=click.Path(), help="manifest CSV (or folder holding manifest.csv)")
    @click.option("--out", required=True, type=click.Path(), help="run folder to write")
    @click.option("--teacher", type=click.Path(), default=None,
                  help="YAMNet file (.tflite/.h5/SavedModel); default $CRYBLOCK_TEACHER, cache or download")
    @click.option("--params", "params_file", type=click.Path(), default=None, help="params.json to start from")
    @click.option("--max-clips", type=click.IntRange(6, None), default=None,
                  help="use a random label-stratified subset (quick run)")
    @click.option("--workers", type=click.IntRange(1, 256), default=None, help="feature-extraction processes")
    @click.option("--map-label", "map_label", multiple=True, metavar="FROM=TO",
                  help="rename a manifest label before training, e.g. Cry=cry (repeatable)")
    @field_options(_LEARN_FLAGS)
    def train_cmd(data, out, teacher, params_file, max_clips, workers, map_label, **overrides):
        """Distil YAMNet into the INT8 student; export, evaluate and report."""
        _run(data, out, teacher, params_file, max_clips, workers, overrides, parse_label_map(map_label))

    @group.command("demo")
    @click.option("--data", type=click.Path(), default=None,
                  help="manifest CSV or folder; default $CRYBLOCK_DATA/manifest.csv")
    @click.option("--out", type=click.Path(), default="runs/demo", show_default=True, help="run folder")
    @click.option("--teacher", type=click.Path(), default=None, help="YAMNet file; default $CRYBLOCK_TEACHER/cache/download")
    @click.option("--max-clips", type=click.IntRange(6, None), default=None, help="use a subset (quick check)")
    @field_options(_LEARN_FLAGS)
    def demo_cmd(data, out, teacher, max_clips, **overrides):
        """The main job: train on the full shared manifest, print the results table and write
        the ESP32-S3 project for the INT8 student into OUT/fw.

        Defaults to 15 epochs (not LearnParams' 30) so the whole job stays well under 30 minutes
        on 2 CPU cores; pass --epochs to change it."""
        if overrides.get("epochs") is None:
            overrides["epochs"] = DEMO_EPOCHS
        if data is None:
            env = os.environ.get("CRYBLOCK_DATA")
            if not env:
                raise CryblockError("no data: pass --data or set CRYBLOCK_DATA to the folder holding manifest.csv")
            data = str(Path(env) / "manifest.csv")
        res = _run(data, out, teacher, None, max_clips, None, overrides)
        # deploy stage: the ESP32-S3 project for the INT8 student, with the tuned detector
        from cryblock.blocks.deploy.project import BuildOptions, generate_project
        from cryblock.blocks.deploy.size import format_report
        from cryblock.params import Params

        fw = generate_project(res.out_dir / "model_quantized_int8_io.tflite", res.out_dir / "fw",
                              Params.load(res.out_dir / "params.json"), BuildOptions())
        click.echo("\n" + format_report(fw.report))
        click.echo(f"ESP-IDF project: {fw.project}  (build: cryblock build --model "
                   f"{res.out_dir / 'model_quantized_int8_io.tflite'} --out {fw.project}, or idf.py build there)")
