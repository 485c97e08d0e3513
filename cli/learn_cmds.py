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

import json
import os
import re
import time
from pathlib import Path

import click

from cryblock.errors import CryblockError

from .options import FiniteFloat, field_options, params_with, split_overrides

#: Epochs of ``cryblock demo`` (validation AUC plateaus after ≈ 10 epochs on the shared data).
DEMO_EPOCHS = 15
#: Cross-validation folds of ``cryblock demo`` (``cryblock evaluate --cv`` defaults to 5): 3 folds
#: and the deployed model keep the main job within its time on 2 CPU cores.
DEMO_FOLDS = 3

def _click_rows():
    """blocks/learn/flags.py's table as field_options rows (choices become click.Choice)."""
    from cryblock.blocks.learn.flags import LEARN_FLAGS

    return [(flag, path, click.Choice(list(choices)) if choices else typ, help_)
            for flag, path, typ, choices, help_, _ in LEARN_FLAGS]


_LEARN_FLAGS = _click_rows()
#: Architecture flags: the candidates of `cryblock tune` set these, so tune does not offer them.
_ARCH_FLAGS = {"--width", "--depth", "--stem-channels", "--stem-stride", "--pool", "--kernel", "--blocks", "--head",
               "--epochs"}


def _quiet_tf(load: bool = True) -> None:
    """TensorFlow without its log spam: Python warnings off, and (``load``) imported now with its
    native start-up banner filtered (:func:`cryblock.tflogs.import_tensorflow`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore", module="tensorflow")
    if load:
        from cryblock.tflogs import import_tensorflow

        import_tensorflow()


#: ``--force`` of the commands that write a run folder.
_FORCE_HELP = "replace an earlier output of this command in --out (else a folder that is not empty is refused)"


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
    overrides = split_overrides(overrides)
    learn = overrides.get("learn", {})
    if (learn.get("preset") or base.learn.preset) == "general":
        labels = manifest_labels(data, label_map)
        positive = learn.get("positive_label") or base.learn.positive_label
        if positive not in labels:
            raise CryblockError(f"{data}: --preset general needs --positive-label, one of the manifest's labels "
                                f"{labels} (got {positive!r})")
        overrides["learn"] = {**learn, "labels": labels}
    return params_with(params_file, overrides)


def _run(data: str | None, out: str, teacher: str | None, params_file: str | None, max_clips: int | None,
         workers: int | None, overrides: dict, label_map: dict[str, str] | None = None, cv: int | None = None,
         force: bool = False, dataset: str | None = None):
    from cryblock.output import check_run_output

    check_run_output(out, "run", force=force, inputs=(data or dataset, params_file, teacher))
    _quiet_tf()
    from cryblock.blocks.learn.cv import train_cross_validated
    from cryblock.blocks.learn.train import train_from_manifest

    t0 = time.perf_counter()
    if dataset is not None:
        from cryblock.blocks.learn.stream import train_from_dataset

        params = params_with(params_file, split_overrides(overrides))
        res = train_from_dataset(dataset, out, params, teacher=teacher, max_clips=max_clips, label_map=label_map,
                                 log=lambda s: click.echo(s), force=force)
    elif cv:
        params = learn_params(data, params_file, overrides, label_map or {})
        res = train_cross_validated(data, out, params, k=cv, teacher=teacher, max_clips=max_clips, workers=workers,
                                    label_map=label_map, log=lambda s: click.echo(s), force=force)
    else:
        params = learn_params(data, params_file, overrides, label_map or {})
        res = train_from_manifest(data, out, params, teacher=teacher, max_clips=max_clips, workers=workers,
                                  label_map=label_map, log=lambda s: click.echo(s), force=force)
    m = res.metrics
    click.echo(f"\nINT8 cost: {m['cost']['int8_bytes']:,} B, {m['cost']['params']:,} params, "
               f"{m['cost']['macs']:,} MACs/patch, arena {m['cost']['arena_bytes']:,} B")
    click.echo(f"wrote {res.out_dir}/ (model_quantized_int8_io.tflite, model.tflite, saved_model.zip, "
               f"metrics.json, report.md, report.html, params.json) in {time.perf_counter() - t0:.0f} s")
    return res


def evaluate_cmd_impl(run: str, data: str, out: str | None, teacher: str | None, map_label, workers,
                      cv: int | None = None, force: bool = False) -> None:
    _quiet_tf()
    from cryblock.blocks.learn.cv import evaluate_cross_validated
    from cryblock.blocks.learn.evaluate import evaluate_run

    if cv:
        out = out or str(Path(run) / f"evaluation-cv{cv}")
        evaluate_cross_validated(run, data, out, k=cv, teacher=teacher, label_map=parse_label_map(map_label),
                                 workers=workers, log=lambda s: click.echo(s), force=force)
    else:
        out = out or str(Path(run) / "evaluation")
        evaluate_run(run, data, out, teacher=teacher, label_map=parse_label_map(map_label), workers=workers,
                     log=lambda s: click.echo(s), force=force)
    click.echo(f"wrote {out}/ (metrics.json, report.md, report.html)")


def calibrate_cmd_impl(run: str, ambient, budget: float, port: str | None, workers: int | None) -> None:
    _quiet_tf()
    from cryblock.blocks.learn.calibrate import calibrate_home

    calibrate_home(run, list(ambient), budget_per_8h=budget, port=port, workers=workers, log=lambda s: click.echo(s))


def detect_cmd_impl(files, run: str, plot: str | None, as_json: str | None) -> None:
    """Score each file, print its alerts; outputs only when every file was read (else exit 2)."""
    _quiet_tf(load=False)  # TensorFlow Lite Micro only
    from cryblock.blocks.learn.evaluate import TflmRunner, detect_file, load_run
    from cryblock.errors import AudioError
    from cryblock.output import atomic_write_bytes, atomic_write_text, check_output, json_safe

    reads = (*files, run, *(Path(run) / n for n in ("params.json", "model_quantized_int8_io.tflite")))
    if plot is not None:
        check_output(plot, folder=False, what="--plot", inputs=reads)
    if as_json is not None:
        check_output(as_json, folder=False, what="--json", inputs=(*reads, plot))
    r = load_run(run)
    runner = TflmRunner(r.int8)
    d = r.params.detector
    click.echo(f"detector: threshold {d.threshold:g}, {d.vote_n} of {d.vote_m} patches, hold {d.hold_seconds:g} s "
               f"(from {Path(run) / 'params.json'})")
    results, errors = [], []
    for f in files:
        try:
            res = detect_file(f, r, runner)
        except AudioError as e:
            errors.append(str(e))
            continue
        results.append(res)
        click.echo(f"{f}: {res['seconds']:.1f} s, {res['patches']} patches, {len(res['alerts'])} alert(s)")
        for k, a in enumerate(res["alerts"], 1):
            click.echo(f"  alert {k}: {a['start_s']:.2f}–{a['end_s']:.2f} s (peak score {a['peak']:.3f})")
    if errors:
        for e in errors:
            click.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    if as_json:
        atomic_write_text(as_json, json.dumps(json_safe({"detector": r.params.to_dict()["detector"], "files": [
            {k: v for k, v in res.items() if k != "states"} for res in results]}), indent=1, allow_nan=False) + "\n")
        click.echo(f"wrote {as_json}")
    if plot:
        from cryblock.blocks.learn.report import detect_figure

        atomic_write_bytes(plot, detect_figure(results, d.threshold))
        click.echo(f"wrote {plot}")


def tune_cmd_impl(data, out, teacher, params_file, max_arena, max_macs, max_flash, epochs, final_epochs, minutes,
                  workers, map_label, overrides, force: bool = False, runner: str = "local", ray_address=None):
    from cryblock.output import check_run_output

    check_run_output(out, "tune", force=force, inputs=(data, params_file, teacher))
    if ray_address and runner != "ray":
        raise click.UsageError("--ray-address needs --runner ray")
    _quiet_tf()
    from cryblock.blocks.learn.tune import Budget, parse_amount, tune

    budget = Budget(parse_amount(max_arena, "max_arena"), parse_amount(max_macs, "max_macs"),
                    parse_amount(max_flash, "max_flash"))
    params = learn_params(data, params_file, overrides, parse_label_map(map_label))
    doc = tune(data, out, params, budget=budget, epochs=epochs, final_epochs=final_epochs, minutes=minutes,
               teacher=teacher, workers=workers, log=lambda s: click.echo(s), force=force, runner=runner,
               ray_address=ray_address)
    click.echo(f"wrote {out}/ (tune.md, tune.json, candidates/" + (", best/)" if doc["best_run"] else ")")
               + f" in {doc['minutes']:.0f} min")


def register(group: click.Group) -> None:
    """Add ``train``, ``demo``, ``tune``, ``evaluate`` and ``detect`` to the ``cryblock`` group."""

    @group.command("tune")
    @click.option("--data", required=True, type=click.Path(), help="manifest CSV (or folder holding manifest.csv)")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="tune folder to write")
    @click.option("--teacher", type=click.Path(), default=None,
                  help="YAMNet file; default $CRYBLOCK_TEACHER, cache or download")
    @click.option("--params", "params_file", type=click.Path(), default=None,
                  help="params.json of the recipe shared by the candidates")
    @click.option("--max-arena", default="40k", show_default=True,
                  help="budget: host-measured TFLM arena bytes (k = 1000)")
    @click.option("--max-macs", default="1.2M", show_default=True, help="budget: MACs per patch")
    @click.option("--max-flash", default="64k", show_default=True, help="budget: INT8 model bytes")
    @click.option("--epochs", "cand_epochs", type=click.IntRange(1, 1000), default=6, show_default=True,
                  help="epochs per candidate (short: for ranking)")
    @click.option("--final-epochs", type=click.IntRange(1, 10000), default=DEMO_EPOCHS, show_default=True,
                  help="epochs of the winner's retraining")
    @click.option("--minutes", type=FiniteFloat(1, 100000), default=30.0, show_default=True,
                  help="time box for the candidates")
    @click.option("--workers", type=click.IntRange(1, 256), default=None,
                  help="feature-extraction processes; with --runner ray and no cluster: parallel trials")
    @click.option("--map-label", "map_label", multiple=True, metavar="FROM=TO", help="rename a manifest label")
    @click.option("--runner", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                  help="ray: the candidates as Ray Tune trials (pip install 'cryblock[ray]')")
    @click.option("--ray-address", default=None,
                  help="Ray cluster HOST:PORT for --runner ray (default $RAY_ADDRESS, else a private local instance)")
    @click.option("--force", is_flag=True, help=_FORCE_HELP)
    @field_options([r for r in _LEARN_FLAGS if r[0] not in _ARCH_FLAGS])
    def tune_cmd(data, out, teacher, params_file, max_arena, max_macs, max_flash, cand_epochs, final_epochs, minutes,
                 workers, map_label, runner, ray_address, force, **overrides):
        """Train the candidate student architectures with one recipe, measure cost (INT8 size, MACs,
        host and device arena, latency) and quality, print the front, retrain the best within budget."""
        tune_cmd_impl(data, out, teacher, params_file, max_arena, max_macs, max_flash, cand_epochs, final_epochs,
                      minutes, workers, map_label, overrides, force, runner, ray_address)

    @group.command("evaluate")
    @click.option("--run", "run", required=True, type=click.Path(file_okay=False),
                  help="run folder of cryblock train / demo")
    @click.option("--data", required=True, type=click.Path(), help="manifest CSV (or folder holding manifest.csv)")
    @click.option("--out", default=None, type=click.Path(file_okay=False), help="report folder [RUN/evaluation]")
    @click.option("--teacher", type=click.Path(), default=None,
                  help="YAMNet file; default $CRYBLOCK_TEACHER, cache or download")
    @click.option("--map-label", "map_label", multiple=True, metavar="FROM=TO", help="rename a manifest label")
    @click.option("--workers", type=click.IntRange(1, 256), default=None, help="feature-extraction processes")
    @click.option("--cv", "cv", type=click.IntRange(2, 20), is_flag=False, flag_value=5, default=None,
                  help="cross-validate the run's recipe on the manifest with K folds by group (--cv alone: 5) "
                       "instead of scoring the run's own model")
    @click.option("--force", is_flag=True, help="replace an earlier evaluation in --out (never a training run)")
    def evaluate_cmd(run, data, out, teacher, map_label, workers, cv, force):
        """Evaluate a trained run on any manifest (e.g. your own recordings): teacher, float and
        INT8 — AUCs with confidence intervals, the sounds that alert, the nursery nights. With
        --cv K the run's recipe is cross-validated on the manifest: every negative second and
        every cry counts once, judged by a model that never heard its group."""
        evaluate_cmd_impl(run, data, out, teacher, map_label, workers, cv, force)

    @group.command("calibrate")
    @click.option("--run", "run", required=True, type=click.Path(file_okay=False),
                  help="run folder of cryblock train / demo (its params.json is updated)")
    @click.option("--ambient", multiple=True, required=True, type=click.Path(dir_okay=False),
                  help="a recording of the nursery without crying, ≥ 10 min in all (repeatable)")
    @click.option("--budget-per-8h", "budget", type=FiniteFloat(0, 10000), default=1.0, show_default=True,
                  help="false alerts per 8 h allowed on your recording")
    @click.option("--port", default=None, help="serial port of the running firmware: send the new setting to it")
    @click.option("--workers", type=click.IntRange(1, 256), default=None, help="processes")
    def calibrate_cmd(run, ambient, budget, port, workers):
        """Fit the detector to your nursery: score your recording with the INT8 model, lay the run's
        validation cries into it at 10 dB, pick threshold / votes / hold for the budget without
        going below the run's recall, update params.json (the old one is kept) and optionally
        send the setting to the device."""
        calibrate_cmd_impl(run, ambient, budget, port, workers)

    @group.command("detect")
    @click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
    @click.option("--run", "run", required=True, type=click.Path(file_okay=False),
                  help="run folder of cryblock train / demo")
    @click.option("--plot", default=None, type=click.Path(dir_okay=False), help="write the score timelines as PNG")
    @click.option("--json", "as_json", default=None, type=click.Path(dir_okay=False),
                  help="write scores and alerts as JSON")
    def detect_cmd(files, run, plot, as_json):
        """Run the INT8 model and the firmware's detector over recordings: score timeline and the
        alerts (start/end) the device would raise."""
        detect_cmd_impl(files, run, plot, as_json)

    @group.command("train")
    @click.option("--data", default=None, type=click.Path(), help="manifest CSV (or folder holding manifest.csv)")
    @click.option("--dataset", default=None, type=click.Path(file_okay=False),
                  help="instead of --data: a dataset of cryblock prepare; the training split is streamed")
    @click.option("--out", required=True, type=click.Path(), help="run folder to write")
    @click.option("--teacher", type=click.Path(), default=None,
                  help="YAMNet file (.tflite/.h5/SavedModel); default $CRYBLOCK_TEACHER, cache or download")
    @click.option("--params", "params_file", type=click.Path(), default=None, help="params.json to start from")
    @click.option("--max-clips", type=click.IntRange(6, None), default=None,
                  help="use a random label-stratified subset (quick run)")
    @click.option("--workers", type=click.IntRange(1, 256), default=None, help="feature-extraction processes")
    @click.option("--map-label", "map_label", multiple=True, metavar="FROM=TO",
                  help="rename a manifest label before training, e.g. Cry=cry (repeatable)")
    @click.option("--cv", "cv", type=click.IntRange(2, 20), default=None,
                  help="cross-validate the recipe with K folds by group first; the model trained on all groups "
                       "is deployed with the cross-validated detector setting and figures")
    @click.option("--force", is_flag=True, help=_FORCE_HELP)
    @field_options(_LEARN_FLAGS)
    def train_cmd(data, dataset, out, teacher, params_file, max_clips, workers, map_label, cv, force, **overrides):
        """Distil YAMNet into the INT8 student; export, evaluate and report. From a manifest
        (--data) or, streaming the training split, from a prepared dataset (--dataset)."""
        if (data is None) == (dataset is None):
            raise click.UsageError("give either --data MANIFEST or --dataset DATASET")
        if dataset is not None and (cv or workers):
            raise click.UsageError("--cv and --workers belong to --data (a dataset holds its features already)")
        _run(data, out, teacher, params_file, max_clips, workers, overrides, parse_label_map(map_label), cv, force,
             dataset=dataset)

    @group.command("demo")
    @click.option("--data", type=click.Path(), default=None,
                  help="manifest CSV or folder; default $CRYBLOCK_DATA/manifest.csv")
    @click.option("--out", type=click.Path(), default="runs/demo", show_default=True, help="run folder")
    @click.option("--teacher", type=click.Path(), default=None, help="YAMNet file; default $CRYBLOCK_TEACHER/cache/download")
    @click.option("--max-clips", type=click.IntRange(6, None), default=None, help="use a subset (quick check)")
    @click.option("--cv", "cv", type=click.IntRange(2, 20), default=DEMO_FOLDS, show_default=True,
                  help="cross-validation folds by group")
    @click.option("--force", is_flag=True, help=_FORCE_HELP + "; the firmware project in OUT/fw is regenerated")
    @field_options(_LEARN_FLAGS)
    def demo_cmd(data, out, teacher, max_clips, cv, force, **overrides):
        """The main job on the full shared manifest: cross-validated nursery nights (--cv folds by
        group: the parent's summary, every negative second and every cry once), then the model to
        deploy trained on all groups with the cross-validated detector setting, the results table,
        and the ESP32-S3 project for the INT8 student in OUT/fw.

        Defaults to 15 epochs (not LearnParams' 30) and 3 folds so the whole job stays within
        15 minutes on 2 CPU cores; pass --epochs / --cv to change them."""
        if overrides.get("learn__epochs") is None:
            overrides["learn__epochs"] = DEMO_EPOCHS
        if data is None:
            env = os.environ.get("CRYBLOCK_DATA")
            if not env:
                raise CryblockError("no data: pass --data or set CRYBLOCK_DATA to the folder holding manifest.csv")
            data = str(Path(env) / "manifest.csv")
        fw_dir = Path(out).resolve() / "fw"
        if re.search(r"\s", str(fw_dir)):  # generate_project's rule, checked before the training
            raise CryblockError(f"{str(fw_dir)!r}: --out contains a space or line break; the ESP-IDF build system "
                                "does not support spaces in project paths — choose a path without them")
        res = _run(data, out, teacher, None, max_clips, None, overrides, cv=cv, force=force)
        # deploy stage: the ESP32-S3 project for the INT8 student, with the tuned detector
        from cryblock.blocks.deploy.project import BuildOptions, generate_project
        from cryblock.blocks.deploy.size import format_report
        from cryblock.params import Params

        fw = generate_project(res.out_dir / "model_quantized_int8_io.tflite", res.out_dir / "fw",
                              Params.load(res.out_dir / "params.json"), BuildOptions(), force=force)
        click.echo("\n" + format_report(fw.report))
        import resource

        gb = 1024 ** 2  # ru_maxrss is in KiB on Linux
        click.echo(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gb:.1f} GB (this process), "
                   f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / gb:.1f} GB (its largest worker)")
        click.echo(f"ESP-IDF project: {fw.project}  (build: cryblock build --model "
                   f"{res.out_dir / 'model_quantized_int8_io.tflite'} --out {fw.project}, or idf.py build there)")
