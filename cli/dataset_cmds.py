"""``cryblock prepare``: a corpus → sharded dataset of patches and teacher outputs.

* ``cryblock prepare --data manifest.csv --out DATASET [--runner local|ray] [--workers N]``
* ``cryblock prepare --segments balanced_train_segments.csv --audio audioset/ --out DATASET``
  (AudioSet; cry preset, or ``--preset general --map-id /m/0bt9lr=dog …``)

Running the same command again finishes a killed run, or updates the dataset after a change
(new teacher, other DSP parameters, edited clips), recomputing only what changed.
"""
from __future__ import annotations

import os

import click


def prepare_cmd_impl(data, segments, audio, out, runner, workers, ray_address, teacher, params_file, patch_format,
                     classes, embedding, shard_clips, preset, map_id, other_label) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cryblock.blocks.dataset import prepare as P
    from cryblock.params import Params

    if (data is None) == (segments is None):
        raise click.UsageError("give either --data MANIFEST or --segments CSV --audio FOLDER")
    if segments is not None and audio is None:
        raise click.UsageError("--segments needs --audio FOLDER (where the segment files are)")
    if segments is None and (audio or map_id or other_label or preset != "cry"):
        raise click.UsageError("--audio, --preset, --map-id and --other-label belong to --segments (AudioSet input)")
    dsp = Params.load(params_file).dsp if params_file else Params().dsp
    if segments is not None:
        from cryblock.blocks.dataset.audioset import audioset_source, parse_mapping

        source = audioset_source(segments, audio, preset=preset, mapping=parse_mapping(map_id),
                                 other_label=other_label)
        r = source.report
        click.echo(f"AudioSet: {r['segments']:,} segment(s), {r['with_audio']:,} with audio, {r['missing']:,} missing"
                   + (f" (first: {', '.join(r['missing_examples'])})" if r["missing"] else "")
                   + (f", {r['unmapped']:,} matching no --map-id" if r["unmapped"] else "")
                   + "; labels: " + ", ".join(f"{k} {v:,}" for k, v in r["labels"].items()))
    else:
        source = P.manifest_source(data)
    if runner == "ray":
        from cryblock.blocks.dataset.ray_runner import RayRunner

        run = RayRunner(ray_address, workers)
    else:
        if ray_address:
            raise click.UsageError("--ray-address needs --runner ray")
        run = P.LocalRunner(workers)
    from cryblock.signals import interruptible

    try:
        with interruptible():  # SIGTERM/SIGHUP like Ctrl-C: finished shards are recorded, the rerun resumes
            res = P.prepare_dataset(source, out, dsp=dsp, teacher=teacher, patch_format=patch_format,
                                    classes=classes, embedding=embedding, shard_clips=shard_clips, runner=run,
                                    log=click.echo)
    finally:
        run.close()
    m = res.meta
    size = sum(s[p]["bytes"] for s in m["shards"] for p in ("patches", "teacher"))
    hours = m["audio_seconds"] / 3600
    click.echo(f"wrote {out}: {m['rows']:,} patches of {m['input']['clips'] - m['skipped']:,} clip(s) "
               f"({hours:.2f} h of audio, {m['skipped']} skipped) in {len(m['shards'])} shard(s), "
               f"{size / 1e6:,.1f} MB" + (f" ({size / 1e6 / hours:,.0f} MB per hour of audio)" if hours > 0 else ""))


def dataset_cmd_impl(path, params_file, teacher) -> None:
    import numpy as np

    from cryblock.blocks.dataset.prepare import teacher_digest
    from cryblock.blocks.dataset.shards import open_dataset
    from cryblock.params import Params

    digest = None
    if teacher is not None:
        from cryblock.blocks.learn.teacher_files import resolve_teacher_path

        digest = teacher_digest(resolve_teacher_path(teacher))
    ds = open_dataset(path, dsp=Params.load(params_file).dsp if params_file else None, teacher_sha256=digest)
    m, ix = ds.meta, ds.index()
    size = sum(s[p]["bytes"] for s in m["shards"] for p in ("patches", "teacher"))
    t = m["teacher"]
    click.echo(f"{path}: {ds.rows:,} patches of {len(ix.clip_files):,} clip(s), {m['audio_seconds'] / 3600:.2f} h of audio, "
               f"{len(ds.shards)} shard(s), {size / 1e6:,.1f} MB; patches {ds.patch_format} {list(ds.patch_shape)}; "
               f"teacher {t['file']} (sha256 {t['sha256'][:12]}…), {len(ds.classes)} class(es)"
               + (", embeddings" if ds.embedding else ""))
    ids, first = np.unique(ix.clip_id, return_index=True)
    for code, label in enumerate(ix.labels):
        click.echo(f"  {label}: {int(np.sum(ix.label[first] == code)):,} clip(s), {int(np.sum(ix.label == code)):,} patches")
    click.echo(f"  {len(ix.groups):,} group(s), {len(ix.sources):,} source(s); {m['skipped']} clip(s) skipped while preparing")
    click.echo("checked: every shard's size and sha256" + (", the DSP parameters" if params_file else "")
               + (", the teacher" if teacher else ""))


def register(group: click.Group) -> None:
    """Add ``prepare`` and ``dataset`` to the ``cryblock`` group."""

    @group.command("dataset")
    @click.argument("path", type=click.Path(file_okay=False))
    @click.option("--params", "params_file", type=click.Path(), default=None,
                  help="params.json the dataset must have been made with (its dsp section)")
    @click.option("--teacher", type=click.Path(), default=None, help="teacher file the dataset's outputs must come from")
    def dataset_cmd(path, params_file, teacher):
        """Check a prepared dataset (every shard's checksum; optionally the DSP parameters and
        the teacher) and print what it holds."""
        dataset_cmd_impl(path, params_file, teacher)
    from cryblock.blocks.dataset.prepare import DEFAULT_SHARD_CLIPS
    from cryblock.blocks.dataset.shards import PATCH_FORMATS

    @group.command("prepare")
    @click.option("--data", type=click.Path(), default=None, help="manifest CSV (or folder holding manifest.csv)")
    @click.option("--segments", type=click.Path(dir_okay=False), default=None,
                  help="AudioSet segments CSV (YTID, start_seconds, end_seconds, positive_labels)")
    @click.option("--audio", type=click.Path(file_okay=False), default=None, help="folder of the AudioSet segment files")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="dataset folder to write or resume")
    @click.option("--runner", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                  help="local process pool, or Ray (pip install 'cryblock[ray]')")
    @click.option("--workers", type=click.IntRange(1, 4096), default=None,
                  help="parallel jobs [local: CPUs; ray: the cluster's CPUs]")
    @click.option("--ray-address", default=None,
                  help="Ray cluster HOST:PORT [$RAY_ADDRESS; else a private local instance]")
    @click.option("--teacher", type=click.Path(), default=None, help="YAMNet file; default $CRYBLOCK_TEACHER, cache or download")
    @click.option("--params", "params_file", type=click.Path(), default=None, help="params.json whose dsp section to use")
    @click.option("--patch-format", type=click.Choice(list(PATCH_FORMATS)), default="float16", show_default=True,
                  help="how patches are stored")
    @click.option("--classes", default="all", show_default=True,
                  help="teacher classes to store: all, or indices/names, e.g. 19,20,Speech")
    @click.option("--embedding", is_flag=True, help="also store the teacher's 1024-d embeddings (float16)")
    @click.option("--shard-clips", type=click.IntRange(1, 1_000_000), default=DEFAULT_SHARD_CLIPS, show_default=True,
                  help="clips per shard")
    @click.option("--preset", type=click.Choice(["cry", "general"]), default="cry", show_default=True,
                  help="AudioSet labels: cry/not_cry by the cry ontology ids, or your --map-id mapping")
    @click.option("--map-id", "map_id", multiple=True, metavar="ID=LABEL",
                  help="AudioSet ontology id → label for --preset general (repeatable; first match wins)")
    @click.option("--other-label", default=None, help="label of AudioSet segments matching no --map-id [left out]")
    def prepare_cmd(**kw):
        """Compute the log-mel patches and teacher outputs of a whole corpus into a sharded,
        checksummed dataset (Parquet). Rerun to resume or update it."""
        prepare_cmd_impl(**kw)

