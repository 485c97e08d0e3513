"""``cryblock prepare``: audio → patch shards → teacher shards (the format of :mod:`.shards`).

The clips are cut into shards of ``shard_clips`` consecutive clips. Two phases, each a list of
independent shard jobs handed to a runner (a local process pool, or Ray: :mod:`.ray_runner`):

1. **features** — each clip's audio is streamed through :mod:`cryblock.blocks.dsp.features`
   (``stream_patches`` of ``cryblock.audio.audio_blocks``) and its patches are written in the
   dataset's patch format; a clip that cannot be read is skipped and listed (never half of it:
   a clip's rows are kept aside until its last block has been checked);
2. **teacher** — each patch shard is read back row group by row group, decoded and scored by
   the teacher (``load_teacher(...).predict``) in fixed batches of
   :data:`~.shards.TEACHER_BATCH` patches: the teacher sees exactly what training will read.

Every shard is written under a staging name and renamed into place, then recorded (key, rows,
sha256, size) in ``dataset.json``, which the driver rewrites after each finished shard. A run
that was killed is resumed by running the same command: a shard whose key matches and whose
file still has the recorded sha256 is kept, anything else is computed again — with the same
bytes, since features are float64 NumPy and the teacher runs in the same fixed batches. Keys: a
patch shard's holds the DSP parameters, the patch format and its clips (relative path, size,
mtime, labels); a teacher shard's holds its patch file's sha256, the teacher's sha256, the
classes and the embedding flag. So a new teacher recomputes the teacher shards only; new DSP
parameters recompute everything; one changed clip recomputes its shard.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from cryblock.errors import AudioError, CryblockError, DataError
from cryblock.params import DspParams

from . import shards as S

Log = Callable[[str], None]

#: Default clips per shard: ≈ 3,000–10,000 patches (35–120 MB of float16) for clips of 3–10 s.
DEFAULT_SHARD_CLIPS = 512
#: Rows of one clip kept in memory before they spill to a temporary file (≈ 50 MB of float16):
#: a clip's rows are written only once the whole clip has been read.
CLIP_SPOOL_ROWS = 4096
#: Seconds between rewrites of ``dataset.json`` while shards finish.
RECORD_SECONDS = 5.0


@dataclass
class Source:
    """What ``prepare`` reads: the clips and where they come from.

    Attributes:
        kind: "manifest" or "audioset"; file: the manifest / segments CSV; root: folder the
        stored paths are relative to; clips: :class:`cryblock.data.Clip` list (clip id = position);
        report: counts to record and print (e.g. AudioSet's missing files).
    """

    kind: str
    file: Path
    root: Path
    clips: list
    report: dict = field(default_factory=dict)


def manifest_source(path: str | os.PathLike) -> Source:
    """The clips of a manifest CSV (or a folder holding ``manifest.csv``), every row as it is
    (training applies its label map and repeat rules to the index later).

    Raises:
        DataError: the manifest's errors (:func:`cryblock.data.load_manifest`), or listed audio
            files that do not exist (audio moved?): one line naming the first and the count.
    """
    from cryblock.data import load_manifest

    mp = Path(path)
    if mp.is_dir():
        mp = mp / "manifest.csv"
    clips = load_manifest(mp)
    missing = [c for c in clips if not os.path.exists(c.path)]
    if missing:
        raise DataError(f"{mp}: {len(missing)} of {len(clips)} audio file(s) it lists do not exist (first: "
                        f"{missing[0].path}); paths are relative to the manifest's folder — was the audio moved?")
    return Source("manifest", mp.resolve(), mp.resolve().parent, clips)


def teacher_digest(path: Path) -> str:
    """sha256 of a teacher file, or of a SavedModel folder's files (names and digests)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return S.json_key({str(p.relative_to(path)): S.file_sha256(p) for p in files})
    return S.file_sha256(path)


def parse_classes(spec: str | None, names: Sequence[str]) -> tuple[int, ...]:
    """``None``/"all" → all classes; ``"19,20,Speech"`` → class indices (by index or display name).

    Raises:
        CryblockError: an unknown class (names it).
    """
    if spec is None or str(spec).strip().lower() == "all":
        return tuple(range(len(names)))
    out = set()
    lookup = {n.lower(): i for i, n in enumerate(names)}
    for item in str(spec).split(","):
        item = item.strip()
        if item.isdigit() and int(item) < len(names):
            out.add(int(item))
        elif item.lower() in lookup:
            out.add(lookup[item.lower()])
        else:
            raise CryblockError(f"--classes: {item!r} is neither a class index 0–{len(names) - 1} nor a YAMNet class name")
    if not out:
        raise CryblockError("--classes: no class given")
    return tuple(sorted(out))


# ------------------------------------------------------------------------------ jobs
def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def plan_shards(source: Source, dsp: DspParams, patch_format: str, shard_clips: int, out: Path) -> list[dict]:
    """The features jobs: one per ``shard_clips`` consecutive clips, with their keys."""
    jobs = []
    for k, a in enumerate(range(0, len(source.clips), shard_clips)):
        clips = []
        for cid in range(a, min(a + shard_clips, len(source.clips))):
            c = source.clips[cid]
            try:
                st = os.stat(c.path)
                stamp = [st.st_size, st.st_mtime_ns]
            except OSError:
                stamp = None  # reported as skipped by the worker
            clips.append([cid, str(c.path), _rel(Path(c.path), source.root), c.label, c.group, c.category, c.source, stamp])
        name = f"part-{k:05d}"
        key = S.json_key({"v": S.VERSION, "dsp": dataclasses.asdict(dsp), "format": patch_format,
                          "clips": [[x for i, x in enumerate(c) if i != 1] for c in clips]})
        jobs.append({"name": name, "clip_start": a, "clip_end": a + len(clips), "key": key, "clips": clips,
                     "out": str(out / S.PATCH_DIR / f"{name}.parquet"), "dsp": dataclasses.asdict(dsp),
                     "format": patch_format})
    return jobs


class _ClipSpool:
    """The encoded rows of one clip, held until the clip has been read to its end; beyond
    :data:`CLIP_SPOOL_ROWS` rows they go to an anonymous temporary file (Arrow IPC)."""

    def __init__(self, schema) -> None:
        self.schema, self.tables, self.rows = schema, [], 0
        self._file = self._writer = None

    def add(self, table) -> None:
        import pyarrow as pa

        self.rows += table.num_rows
        if self._writer is None and self.rows > CLIP_SPOOL_ROWS:
            self._file = tempfile.TemporaryFile()
            self._writer = pa.ipc.new_stream(self._file, self.schema)
            for t in self.tables:
                self._writer.write_table(t)
            self.tables = []
        if self._writer is not None:
            self._writer.write_table(table)
        else:
            self.tables.append(table)

    def replay(self) -> Iterator:
        import pyarrow as pa

        if self._writer is None:
            yield from self.tables
            return
        self._writer.close()
        self._file.seek(0)
        for batch in pa.ipc.open_stream(self._file):
            yield pa.Table.from_batches([batch])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def make_patch_shard(job: dict) -> dict:
    """Worker: write the patch shard of one features job (see :func:`plan_shards`).

    Returns:
        ``{"name", "rows", "sha256", "bytes", "audio_seconds", "skipped": [[clip_id, path, reason]],
        "seconds"}``.
    """
    import pyarrow as pa

    from cryblock.audio import audio_blocks
    from cryblock.blocks.dsp.features import stream_patches
    from cryblock.inputs import regular_digest

    t0 = time.perf_counter()
    dsp = DspParams(**job["dsp"])
    fmt = job["format"]
    schema = S.patch_schema(fmt, dsp.patch_shape)
    hop_s = dsp.patch_hop_samples / dsp.sample_rate
    skipped, seconds = [], 0.0
    with S.ShardWriter(job["out"], schema) as w:
        for cid, path, rel, label, group, category, source, _stamp in job["clips"]:
            spool = _ClipSpool(schema)
            samples = [0]

            def counted(blocks):
                for b in blocks:
                    samples[0] += len(b)
                    yield b
            try:
                sha1 = regular_digest(path, "sha1")
                k = 0
                for block in stream_patches(counted(audio_blocks(path, dsp.sample_rate)), dsp):
                    n = len(block)
                    cols = {"clip_id": np.full(n, cid, np.int32), "path": [rel] * n, "sha1": [sha1] * n,
                            "group": [group] * n, "label": [label] * n, "category": [category] * n,
                            "source": [source] * n, "offset_s": (k + np.arange(n)) * hop_s,
                            **S.encode_patches(block, fmt, dsp)}
                    spool.add(pa.Table.from_pydict(cols, schema=schema))
                    k += n
            except (AudioError, OSError) as e:
                reason = str(e) if isinstance(e, AudioError) else f"{path}: cannot read ({e.strerror or e})"
                skipped.append([cid, rel, reason])
                spool.close()
                continue
            for t in spool.replay():
                w.write({name: t.column(name) for name in schema.names})
            spool.close()
            seconds += samples[0] / dsp.sample_rate
    return {"name": job["name"], "rows": w.rows, "sha256": w.sha256, "bytes": w.bytes, "audio_seconds": seconds,
            "skipped": skipped, "seconds": time.perf_counter() - t0}


_TEACHERS: dict[tuple[str, str], object] = {}


def _worker_teacher(path: str, digest: str):
    """The teacher of this worker process, loaded once (checked against the run's digest)."""
    if (path, digest) not in _TEACHERS:
        from cryblock.blocks.learn.teacher import load_teacher
        from cryblock.tflogs import import_tensorflow

        import_tensorflow()  # without its start-up banner, in every worker

        got = teacher_digest(Path(path))
        if got != digest:
            raise CryblockError(f"{path}: the teacher file changed while preparing (sha256 {got}, expected {digest})")
        _TEACHERS[(path, digest)] = load_teacher(path)
    return _TEACHERS[(path, digest)]


def make_teacher_shard(job: dict) -> dict:
    """Worker: score one patch shard with the teacher and write its teacher shard.

    Returns:
        ``{"name", "rows", "sha256", "bytes", "seconds"}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    teacher = _worker_teacher(job["teacher"], job["teacher_sha256"])
    src = Path(job["patches"])
    if S.file_sha256(src) != job["patches_sha256"]:
        raise DataError(f"{src}: changed while preparing (sha256 differs from the recorded one); run cryblock prepare again")
    classes = list(job["classes"])
    schema = S.teacher_schema(len(classes), job["embedding"])
    shape = tuple(job["patch_shape"])
    cols = ["clip_id", "patch"] + (["patch_offset", "patch_scale"] if job["format"] == "int8-patch" else [])
    with S.ShardWriter(job["out"], schema) as w:
        for batch in pq.ParquetFile(src).iter_batches(batch_size=S.TEACHER_BATCH, columns=cols):
            x = S.decode_patches(batch, job["format"], shape, job.get("int8_global"))
            scores, emb = teacher.predict(x, batch_size=S.TEACHER_BATCH)
            out = {"clip_id": batch.column("clip_id"),
                   "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores[:, classes].reshape(-1)), len(classes))}
            if job["embedding"]:
                out["embedding"] = pa.FixedSizeListArray.from_arrays(
                    pa.array(emb.astype(np.float16).reshape(-1)), S.EMBEDDING_SIZE)
            w.write(out)
    return {"name": job["name"], "rows": w.rows, "sha256": w.sha256, "bytes": w.bytes,
            "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------ runners
class LocalRunner:
    """Runs shard jobs in this process (``workers`` = 1) or in a pool of ``workers`` spawned
    processes (spawned, not forked: a forked TensorFlow deadlocks); each process loads the
    teacher once. ``run(fn, jobs, done)`` calls ``done(result)`` as each job finishes."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, min(int(workers or os.cpu_count() or 1), os.cpu_count() or 1))
        self._pool = None

    def run(self, fn: Callable[[dict], dict], jobs: Sequence[dict], done: Callable[[dict], None]) -> None:
        if not jobs:
            return
        if self.workers == 1 or len(jobs) == 1:
            for j in jobs:
                done(fn(j))
            return
        import concurrent.futures as cf
        import multiprocessing as mp

        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        futures = [self._pool.submit(fn, j) for j in jobs]
        try:
            for f in cf.as_completed(futures):
                done(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def features(self, jobs, done) -> None:
        self.run(make_patch_shard, jobs, done)

    def teacher(self, jobs, done) -> None:
        self.run(make_teacher_shard, jobs, done)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        return f"local, {self.workers} worker(s)"


# ------------------------------------------------------------------------------ driver
@dataclass
class PrepareResult:
    """What a prepare run did: the dataset description and per-phase work.

    ``features``/``teacher``: ``{"shards": computed, "reused": kept, "rows": rows computed,
    "seconds": wall time}``.
    """

    meta: dict
    features: dict
    teacher: dict


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.prepare.lock`` (two prepares into one dataset would overwrite each other)."""
    fd = os.open(folder / ".prepare.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CryblockError(f"{folder}: another cryblock prepare is writing this dataset") from None
        yield
    finally:
        os.close(fd)


def _check_folder(out: Path) -> None:
    """An existing --out must be empty or a dataset (never someone's other files)."""
    if not out.is_dir() or (out / S.META_NAME).exists():
        return
    own = {".prepare.lock", S.PATCH_DIR, S.TEACHER_DIR}
    other = [p.name for p in out.iterdir() if p.name not in own and not p.name.startswith(".cryblock-")]
    if other:
        raise CryblockError(f"{out}: --out exists and is not a dataset (holds {other[0]!r}…); choose a new or empty folder")


def _reusable(old: dict | None, out: Path, part: str, key: str) -> dict | None:
    """The old record of a shard file when its key matches and the file still has its sha256."""
    if not old or not old.get(part) or old[part].get("key") != key:
        return None
    rec = old[part]
    f = out / rec["file"]
    try:
        if f.stat().st_size != rec["bytes"] or S.file_sha256(f) != rec["sha256"]:
            return None
    except OSError:
        return None
    return old


def prepare_dataset(source: Source, out: str | os.PathLike, *, dsp: DspParams = DspParams(),
                    teacher: str | os.PathLike | None = None, patch_format: str = "float16",
                    classes: str | None = None, embedding: bool = False, shard_clips: int = DEFAULT_SHARD_CLIPS,
                    runner=None, log: Log = print) -> PrepareResult:
    """Write (or finish, or update) the dataset of ``source`` in ``out``.

    Args:
        source: :func:`manifest_source` or :func:`cryblock.blocks.dataset.audioset.audioset_source`.
        out: dataset folder (created; an existing one is resumed/updated).
        dsp: front-end parameters.
        teacher: YAMNet file (``cryblock.blocks.learn.teacher.resolve_teacher_path`` order).
        patch_format: one of :data:`~.shards.PATCH_FORMATS`.
        classes: YAMNet classes to store: "all" / None, or "19,20,Speech" (indices or names).
        embedding: also store the 1024-d embeddings (float16).
        shard_clips: clips per shard (≥ 1).
        runner: :class:`LocalRunner` (default, all CPUs) or :class:`~.ray_runner.RayRunner`.
        log: progress lines.

    Returns:
        :class:`PrepareResult`.

    Raises:
        CryblockError: bad options, teacher not found, ``out`` not a dataset folder or locked,
            no clip readable; a failed shard job's error. Finished shards stay recorded.
    """
    from cryblock.blocks.learn.teacher import load_class_names
    from cryblock.blocks.learn.teacher_files import resolve_teacher_path
    from cryblock.output import check_output, remove_stale_staging

    if patch_format not in S.PATCH_FORMATS:
        raise CryblockError(f"--patch-format: {patch_format!r} is not one of {', '.join(S.PATCH_FORMATS)}")
    if int(shard_clips) < 1:
        raise CryblockError(f"--shard-clips must be ≥ 1, got {shard_clips}")
    out = Path(out)
    check_output(out, folder=True, inputs=(source.file,))
    _check_folder(out)
    tpath = resolve_teacher_path(teacher)
    tdigest = teacher_digest(tpath)
    names = load_class_names(tpath)
    cls = parse_classes(classes, names)
    runner = runner or LocalRunner()
    for d in (out / S.PATCH_DIR, out / S.TEACHER_DIR):
        d.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        for d in (out, out / S.PATCH_DIR, out / S.TEACHER_DIR):
            remove_stale_staging(d)
        old_meta = S.read_meta(out)
        old = {s["name"]: s for s in (old_meta or {}).get("shards", [])}
        jobs = plan_shards(source, dsp, patch_format, int(shard_clips), out)
        meta = {"format": S.FORMAT, "version": S.VERSION, "complete": False,
                "input": {"kind": source.kind, "file": str(source.file), "root": str(source.root),
                          "clips": len(source.clips), **source.report},
                "dsp": dataclasses.asdict(dsp), "patch_format": patch_format, "patch_shape": list(dsp.patch_shape),
                "teacher": {"file": tpath.name, "sha256": tdigest, "classes": list(cls),
                            "class_names": [names[c] for c in cls], "embedding": bool(embedding)},
                "shard_clips": int(shard_clips), "row_group_rows": S.ROW_GROUP_ROWS,
                "shards": [{"name": j["name"], "clip_start": j["clip_start"], "clip_end": j["clip_end"],
                            "rows": None, "audio_seconds": None, "skipped": [], "patches": None, "teacher": None}
                           for j in jobs]}
        if patch_format == "int8-global":
            meta["int8_global"] = list(S.int8_global_range(dsp))
        entry = {s["name"]: s for s in meta["shards"]}
        log(f"prepare: {len(source.clips):,} clips in {len(jobs)} shard(s) of ≤ {shard_clips} clips → {out} "
            f"({runner.describe()})")

        # --- phase 1: patches
        todo = []
        for j in jobs:
            prev = _reusable(old.get(j["name"]), out, "patches", j["key"])
            if prev:
                for k in ("rows", "audio_seconds", "skipped", "patches"):
                    entry[j["name"]][k] = prev[k]
            else:
                todo.append(j)
        record = _Recorder(out, meta)
        record.now()
        pkeys = {j["name"]: j["key"] for j in jobs}

        def features_done(r: dict) -> None:
            entry[r["name"]].update(rows=r["rows"], audio_seconds=r["audio_seconds"], skipped=r["skipped"],
                                    patches={"file": f"{S.PATCH_DIR}/{r['name']}.parquet", "key": pkeys[r["name"]],
                                             "sha256": r["sha256"], "bytes": r["bytes"]})
            record.soon()

        try:
            features = _phase(runner.features, todo, len(jobs), "features", log, features_done)
        finally:
            record.now()  # what finished is kept, whatever stopped the phase
        rows = sum(entry[j["name"]]["rows"] for j in jobs)
        if rows == 0:
            skipped = [s for j in jobs for s in entry[j["name"]]["skipped"]]
            raise DataError(f"none of {len(source.clips)} clip(s) could be read; first error: "
                            f"{skipped[0][2] if skipped else 'no clips'}")

        # --- phase 2: teacher outputs
        tjobs = []
        for j in jobs:
            e = entry[j["name"]]
            key = S.json_key({"v": S.VERSION, "patches": e["patches"]["sha256"], "teacher": tdigest,
                              "classes": list(cls), "embedding": bool(embedding)})
            prev = _reusable(old.get(j["name"]), out, "teacher", key)
            if prev and prev["teacher"]["rows"] == e["rows"]:
                e["teacher"] = prev["teacher"]
                continue
            tjobs.append({"name": j["name"], "key": key, "patches": str(out / e["patches"]["file"]),
                          "patches_sha256": e["patches"]["sha256"], "out": str(out / S.TEACHER_DIR / f"{j['name']}.parquet"),
                          "teacher": str(tpath), "teacher_sha256": tdigest, "classes": list(cls),
                          "embedding": bool(embedding), "format": patch_format, "patch_shape": list(dsp.patch_shape),
                          "int8_global": meta.get("int8_global")})
        record.now()
        tkeys = {t["name"]: t["key"] for t in tjobs}

        def teacher_done(r: dict) -> None:
            if r["rows"] != entry[r["name"]]["rows"]:
                raise DataError(f"{out / S.TEACHER_DIR / r['name']}.parquet: {r['rows']} rows for "
                                f"{entry[r['name']]['rows']} patches")
            entry[r["name"]]["teacher"] = {"file": f"{S.TEACHER_DIR}/{r['name']}.parquet", "key": tkeys[r["name"]],
                                           "rows": r["rows"], "sha256": r["sha256"], "bytes": r["bytes"]}
            record.soon()

        try:
            teacher_phase = _phase(runner.teacher, tjobs, len(jobs), "teacher", log, teacher_done)
        finally:
            record.now()

        # --- done: drop shard files of earlier plans and staging files of killed workers
        keep = {f"{j['name']}.parquet" for j in jobs}
        for d in (out / S.PATCH_DIR, out / S.TEACHER_DIR):
            for f in d.iterdir():
                if (f.name.startswith("part-") and f.name not in keep) or f.name.startswith(".cryblock-"):
                    f.unlink()
        skipped = [s for j in jobs for s in entry[j["name"]]["skipped"]]
        meta.update(complete=True, rows=rows, skipped=len(skipped),
                    audio_seconds=sum(entry[j["name"]]["audio_seconds"] for j in jobs))
        S.write_meta(out, meta)
    for cid, path, reason in skipped[:5]:
        log(f"skipped clip {cid} ({path}): {reason}")
    if len(skipped) > 5:
        log(f"… {len(skipped) - 5} more skipped clip(s), listed in {out / S.META_NAME}")
    return PrepareResult(meta, features, teacher_phase)


class _Recorder:
    """Writes ``dataset.json`` now, or soon: at most every :data:`RECORD_SECONDS` while shards
    finish (rewriting it after each of thousands of shards would write gigabytes); a shard that
    finished but was not recorded when a run is killed is computed again, to the same bytes."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out, self.meta, self.last = out, meta, 0.0

    def now(self) -> None:
        S.write_meta(self.out, self.meta)
        self.last = time.monotonic()

    def soon(self) -> None:
        if time.monotonic() - self.last >= RECORD_SECONDS:
            self.now()


def _phase(run: Callable, todo: Sequence[dict], total: int, what: str, log: Log,
           record: Callable[[dict], None]) -> dict:
    """Run one phase's jobs, recording each result (progress lines: :class:`cryblock.progress.Progress`)."""
    from cryblock.progress import Progress

    t0 = time.perf_counter()
    stats = {"shards": len(todo), "reused": total - len(todo), "rows": 0, "seconds": 0.0}
    with Progress(len(todo), f"{what} ({len(todo)} shards)", log if todo else None) as progress:
        def done(r: dict) -> None:
            record(r)
            stats["rows"] += r["rows"]
            progress.update(1)

        run(todo, done)
    stats["seconds"] = time.perf_counter() - t0
    rate = f" ({stats['rows'] / stats['seconds']:,.0f} patches/s)" if stats["rows"] and stats["seconds"] > 0 else ""
    log(f"{what}: {stats['rows']:,} patches in {stats['seconds']:.1f} s{rate}; {stats['shards']} shard(s) computed, "
        f"{stats['reused']} kept")
    return stats
