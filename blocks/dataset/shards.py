"""The sharded dataset format, its checksums and its reader.

A dataset is a folder::

    DATASET/
      dataset.json                 what made it and what it holds (see below)
      patches/part-00000.parquet   one row per patch: who, where, when, and the patch itself
      teacher/part-00000.parquet   the same rows, in the same order: the teacher's outputs

Patches and teacher outputs live in separate files so that a change of teacher invalidates the
teacher files only: the patches stay valid (their key holds the DSP parameters, the patch
format and the clips; the teacher's key holds the teacher's sha256, the stored classes and the
patch file's sha256, so new patches always mean new teacher outputs).

**Patch shard** columns (Parquet, zstd, row groups of :data:`ROW_GROUP_ROWS` rows):

* ``clip_id`` int32 — index of the clip in the input list (manifest row order after reading);
* ``path`` string — the audio file, relative to the input's folder (``dataset.json`` →
  ``input.root``); ``sha1`` string — hex sha1 of the file's bytes (training finds repeated
  recordings by it, as ``cryblock.data.deduplicate`` does);
* ``group``, ``label``, ``category``, ``source`` strings — from the manifest (or AudioSet);
* ``offset_s`` float64 — start of the patch in the recording, seconds (k · patch hop);
* ``patch`` — the ``[frames, mel_bands]`` log-mel patch (YAMNet: 96 × 64), C order, as
  ``fixed_size_list`` of: float16 (``patch_format`` "float16", the default); or int8 with
  ``x = offset + (q + 128) · scale``, where "int8-patch" stores ``patch_offset``/``patch_scale``
  float32 columns (the patch's own min and range / 255) and "int8-global" one offset/scale for
  the whole dataset in ``dataset.json`` (the log-mel's bounds, :func:`int8_global_range`).

**Teacher shard** columns: ``clip_id`` int32 (alignment check), ``scores`` fixed_size_list of
float32 (the classes listed in ``dataset.json`` → ``teacher.classes``, YAMNet sigmoid scores),
and with ``teacher.embedding`` an ``embedding`` fixed_size_list of 1024 float16.

``dataset.json`` holds the format version, ``complete``, the input, the DSP parameters, the
patch format, the teacher (sha256, classes, embedding), and per shard its clip range, key, row
count, audio seconds, skipped clips and, per file, sha256 and size. Readers refuse an
incomplete dataset, other DSP parameters or teacher than the run's, and a shard whose size or
sha256 differs from the recorded one (:class:`~cryblock.errors.DataError` naming the file).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cryblock.blocks.learn.yamnet import EMBEDDING_SIZE
from cryblock.errors import DataError
from cryblock.params import CRY_CLASSES, DspParams

#: ``dataset.json`` → ``format`` / ``version`` of this layout.
FORMAT = "cryblock-dataset"
VERSION = 1
META_NAME = "dataset.json"
PATCH_DIR, TEACHER_DIR = "patches", "teacher"
#: Rows per Parquet row group (≈ 6 MB of float16 YAMNet patches): the unit of a read.
ROW_GROUP_ROWS = 512
#: Patches per teacher forward pass while preparing (fixed, so outputs never depend on how the
#: work was split).
TEACHER_BATCH = 256
#: How patches are stored (see the module docstring).
PATCH_FORMATS = ("float16", "int8-patch", "int8-global")
#: Columns of a patch shard other than the patch (and its int8 scale columns).
INFO_COLUMNS = ("clip_id", "path", "sha1", "group", "label", "category", "source", "offset_s")
_STRING_COLUMNS = ("path", "sha1", "group", "label", "category", "source")


# ------------------------------------------------------------------------------ files
def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a regular file (:func:`cryblock.inputs.regular_digest`). Raises DataError
    naming the file."""
    from cryblock.inputs import regular_digest

    try:
        return regular_digest(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def json_key(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys): the key of a shard's inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------ patch codecs
def int8_global_range(dsp: DspParams) -> tuple[float, float]:
    """(offset, scale) of the "int8-global" patch format: ``x = offset + (q + 128) · scale``.

    The offset is the log-mel floor ``log(log_offset)`` (mel energies are ≥ 0); the top is the
    largest value any accepted recording can reach: ``log(MAX_PEAK · Σ window · max_b Σ_k
    M[k, b] + log_offset)`` (a bin's magnitude is at most the window's sum times the peak,
    :data:`cryblock.audio.MAX_PEAK`; M the mel matrix). YAMNet's front-end: −6.908 … 8.182, a step
    of 0.059 log units. No value is ever clipped.
    """
    from cryblock.blocks.dsp.features import mel_matrix, periodic_hann
    from cryblock.audio import MAX_PEAK

    lo = float(np.log(dsp.log_offset))
    top = MAX_PEAK * float(periodic_hann(dsp.window_length_samples).sum()) * float(mel_matrix(dsp).sum(axis=0).max())
    hi = float(np.log(top + dsp.log_offset))
    return lo, (hi - lo) / 255.0


def _quantise(x: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    q = np.rint((x.astype(np.float64) - lo) / scale) - 128.0
    return np.clip(q, -128, 127).astype(np.int8)


def encode_patches(x: np.ndarray, fmt: str, dsp: DspParams) -> dict[str, Any]:
    """Arrow columns of patches in patch format ``fmt``.

    Args:
        x: float32 ``[n, frames, bands]`` log-mel patches.
        fmt: one of :data:`PATCH_FORMATS`.
    Returns:
        ``{"patch": FixedSizeListArray, ...}`` (plus ``patch_offset``/``patch_scale`` float32
        for "int8-patch").
    """
    import pyarrow as pa

    n, size = len(x), int(np.prod(x.shape[1:]))
    cols: dict[str, Any] = {}
    if fmt == "float16":
        flat = x.astype(np.float16).reshape(-1)
    elif fmt == "int8-patch":
        lo = x.reshape(n, -1).min(axis=1).astype(np.float32)
        hi = x.reshape(n, -1).max(axis=1).astype(np.float32)
        scale = np.where(hi > lo, (hi.astype(np.float64) - lo) / 255.0, 1.0).astype(np.float32)
        flat = _quantise(x.reshape(n, -1), lo[:, None].astype(np.float64), scale[:, None].astype(np.float64)).reshape(-1)
        cols["patch_offset"], cols["patch_scale"] = pa.array(lo), pa.array(scale)
    elif fmt == "int8-global":
        lo, scale = int8_global_range(dsp)
        flat = _quantise(x.reshape(-1), np.float64(lo), np.float64(scale))
    else:
        raise DataError(f"patch format {fmt!r} is not one of {', '.join(PATCH_FORMATS)}")
    cols["patch"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), size)
    return cols


def decode_patches(batch, fmt: str, shape: tuple[int, int], global_range: tuple[float, float] | None = None) -> np.ndarray:
    """float32 ``[n, *shape]`` patches of a Parquet record batch / table of patch columns."""
    def flat(name: str) -> np.ndarray:
        col = batch.column(name)
        if hasattr(col, "combine_chunks"):
            col = col.combine_chunks()
        return col.to_numpy(zero_copy_only=False)

    vals = batch.column("patch")
    if hasattr(vals, "combine_chunks"):
        vals = vals.combine_chunks()
    # FixedSizeListArray.values ignores a slice's offset: flatten() honours it
    q = vals.flatten().to_numpy(zero_copy_only=False).reshape(-1, *shape)
    if fmt == "float16":
        return q.astype(np.float32)
    if fmt == "int8-patch":
        lo, scale = flat("patch_offset"), flat("patch_scale")
        return (lo[:, None, None] + (q.astype(np.float32) + 128.0) * scale[:, None, None]).astype(np.float32)
    lo, scale = global_range
    return (np.float32(lo) + (q.astype(np.float32) + 128.0) * np.float32(scale)).astype(np.float32)


def patch_schema(fmt: str, shape: tuple[int, int]):
    """Arrow schema of a patch shard in format ``fmt``."""
    import pyarrow as pa

    fields = [pa.field("clip_id", pa.int32()), *[pa.field(c, pa.string()) for c in _STRING_COLUMNS],
              pa.field("offset_s", pa.float64())]
    if fmt == "int8-patch":
        fields += [pa.field("patch_offset", pa.float32()), pa.field("patch_scale", pa.float32())]
    elem = pa.float16() if fmt == "float16" else pa.int8()
    fields.append(pa.field("patch", pa.list_(elem, int(np.prod(shape)))))
    return pa.schema(fields)


def teacher_schema(n_classes: int, embedding: bool):
    """Arrow schema of a teacher shard."""
    import pyarrow as pa

    fields = [pa.field("clip_id", pa.int32()), pa.field("scores", pa.list_(pa.float32(), n_classes))]
    if embedding:
        fields.append(pa.field("embedding", pa.list_(pa.float16(), EMBEDDING_SIZE)))
    return pa.schema(fields)


class ShardWriter:
    """Write one Parquet shard atomically in fixed row groups of :data:`ROW_GROUP_ROWS` rows::

        with ShardWriter(path, schema) as w:
            w.write({"clip_id": ..., "patch": ...})     # any number of rows per call
        w.rows, w.sha256, w.bytes

    The file is written under a staging name in the destination folder
    (:func:`cryblock.output.atomic_open`) and renamed into place only when the block ends without
    an exception; row groups do not depend on how rows were handed in, so the same rows give
    the same bytes. Memory is bounded by two row groups.
    """

    def __init__(self, path: str | os.PathLike, schema) -> None:
        self.path, self.schema = Path(path), schema
        self.rows, self.sha256, self.bytes = 0, None, 0
        self._pending: list = []
        self._pending_rows = 0

    def __enter__(self) -> "ShardWriter":
        import pyarrow.parquet as pq

        from cryblock.output import atomic_open

        self._ctx = atomic_open(self.path, "wb")
        f = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(
            f, self.schema, compression="zstd",
            use_dictionary=[c for c in _STRING_COLUMNS if c in self.schema.names], write_statistics=False)
        return self

    def write(self, columns: dict[str, Any]) -> None:
        """Append rows: ``{column: array}`` with every column of the schema, equal lengths."""
        import pyarrow as pa

        t = pa.Table.from_pydict({name: columns[name] for name in self.schema.names}, schema=self.schema)
        self._pending.append(t)
        self._pending_rows += t.num_rows
        self.rows += t.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        t = pa.concat_tables(self._pending)
        full = t.num_rows if final else t.num_rows - t.num_rows % ROW_GROUP_ROWS
        for a in range(0, full, ROW_GROUP_ROWS):
            part = t.slice(a, min(ROW_GROUP_ROWS, full - a)).combine_chunks()
            self._writer.write_table(part, row_group_size=ROW_GROUP_ROWS)
        rest = t.slice(full)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc is None:
                self._flush(final=True)
            self._writer.close()
        except BaseException as e:  # a failed write fails the shard, never leaves half of it
            if exc is None:
                exc_type, exc, tb = type(e), e, e.__traceback__
        done = bool(self._ctx.__exit__(exc_type, exc, tb))
        if exc is not None and not done:
            raise exc
        self.sha256 = file_sha256(self.path)
        self.bytes = self.path.stat().st_size
        return done


# ------------------------------------------------------------------------------ dataset.json
def read_meta(folder: str | os.PathLike) -> dict | None:
    """``dataset.json`` of ``folder`` as a dict, or None when there is none.

    Raises:
        DataError: the file exists but is not a cryblock dataset description (names it).
    """
    p = Path(folder) / META_NAME
    if not p.exists():
        return None
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{p}: not a readable dataset description ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{p}: not a cryblock dataset (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise DataError(f"{p}: dataset format version {meta.get('version')!r}, this cryblock reads {VERSION}; "
                        "run cryblock prepare again")
    return meta


def write_meta(folder: str | os.PathLike, meta: dict) -> None:
    """Write ``dataset.json`` atomically."""
    from cryblock.output import atomic_write_text

    atomic_write_text(Path(folder) / META_NAME, json.dumps(meta, indent=1, sort_keys=True) + "\n")


def dsp_differences(recorded: dict, dsp: DspParams) -> list[str]:
    """``["stft_hop_seconds 0.01 (dataset) vs 0.02"]`` for each DSP field that differs."""
    want = dataclasses.asdict(dsp)
    return [f"{k} {recorded.get(k)!r} (dataset) vs {v!r}" for k, v in want.items() if recorded.get(k) != v]


# ------------------------------------------------------------------------------ reader
def _codes(column, vocab: dict[str, int]) -> np.ndarray:
    """int32 codes of a string column in ``vocab`` (words added in first-seen order)."""
    d = column.combine_chunks().dictionary_encode()
    local = np.array([vocab.setdefault(w, len(vocab)) for w in d.dictionary.to_pylist()], np.int32)
    return local[d.indices.to_numpy()] if len(d.indices) else np.zeros(0, np.int32)


@dataclass
class RowBatch:
    """Rows read from a dataset.

    Attributes:
        rows: int64 ``[n]`` row ids (ascending).
        patches: float32 ``[n, frames, bands]`` log-mel patches (decoded from the stored format).
        scores: float32 ``[n, C]`` teacher scores of the dataset's classes.
        embedding: float32 ``[n, 1024]`` teacher embeddings (stored as float16), or None.
        clip_id: int32 ``[n]``.
    """

    rows: np.ndarray
    patches: np.ndarray
    scores: np.ndarray
    embedding: np.ndarray | None
    clip_id: np.ndarray


@dataclass
class DatasetIndex:
    """One entry per patch row, no patches: what selection, folds and sampling need.

    Attributes (all ``[N]``, N = rows of the dataset, row id = position):
        shard: int32 shard number; clip_id: int32; offset_s: float32 seconds;
        group, label, category, source: int32 codes into :attr:`groups`, :attr:`labels`,
        :attr:`categories`, :attr:`sources` (sorted vocabularies);
        teacher_score: float32 — the teacher's positive score, the max of the scores of
        ``positive_classes`` (YAMNet's cry probability with the default
        :data:`cryblock.params.CRY_CLASSES`); NaN when the dataset lacks those classes.
        clips: ``{clip_id: (path relative to the input root, sha1)}`` of every clip with rows.
    """

    shard: np.ndarray
    clip_id: np.ndarray
    offset_s: np.ndarray
    group: np.ndarray
    label: np.ndarray
    category: np.ndarray
    source: np.ndarray
    teacher_score: np.ndarray
    groups: list[str]
    labels: list[str]
    categories: list[str]
    sources: list[str]
    clip_files: dict[int, tuple[str, str]]
    root: Path

    def __len__(self) -> int:
        return len(self.clip_id)

    def rows_of_groups(self, groups: Sequence[str]) -> np.ndarray:
        """int64 row ids of the patches whose group is in ``groups`` (ascending)."""
        wanted = set(groups)
        codes = [i for i, g in enumerate(self.groups) if g in wanted]
        return np.flatnonzero(np.isin(self.group, codes)).astype(np.int64)

    def rows_of_clips(self, clip_ids: Sequence[int]) -> np.ndarray:
        """int64 row ids of the patches of the given clip ids (ascending)."""
        return np.flatnonzero(np.isin(self.clip_id, np.asarray(clip_ids, dtype=np.int32))).astype(np.int64)

    @property
    def clip_ids(self) -> np.ndarray:
        """int32 ids of the clips with rows, ascending: the order of :meth:`clips`."""
        return np.unique(self.clip_id)

    def clips(self) -> list:
        """One :class:`cryblock.data.Clip` per clip with rows, in :attr:`clip_ids` order: what
        ``cryblock.data.split_by_group`` and the training's label checks take, so a split of the
        index equals the split of the same manifest read directly (``rows_of_clips(clip_ids[idx])``
        turns its clip indices into rows)."""
        from cryblock.data import Clip

        ids, first = np.unique(self.clip_id, return_index=True)
        return [Clip(path=Path(os.path.normpath(self.root / self.clip_files[int(c)][0])), label=self.labels[self.label[i]],
                     group=self.groups[self.group[i]], category=self.categories[self.category[i]],
                     source=self.sources[self.source[i]]) for c, i in zip(ids, first)]

    def group_kfold(self, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """K folds by group, stratified by label and source like ``cryblock.data.split_by_group``
        (scikit-learn ``StratifiedGroupKFold`` on the clips).

        Returns:
            ``k`` pairs (rest_rows, fold_rows) of int64 row ids; every group is in exactly one fold.

        Raises:
            DataError: fewer groups than folds.
        """
        import warnings

        from sklearn.model_selection import StratifiedGroupKFold

        ids, first = np.unique(self.clip_id, return_index=True)
        groups = self.group[first]
        if len(np.unique(groups)) < k:
            raise DataError(f"{k} folds by group need ≥ {k} groups, the dataset has {len(np.unique(groups))}")
        strata = self.label[first].astype(np.int64) * (len(self.sources) + 1) + self.source[first]
        if np.unique(strata, return_counts=True)[1].max() < k:
            strata = self.label[first]
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for rest, held in cv.split(np.zeros(len(ids)), strata, groups):
                out.append((self.rows_of_clips(ids[rest]), self.rows_of_clips(ids[held])))
        return out


class _Shard:
    """A Parquet shard read by row group; a damaged file raises DataError naming it."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self._pf = self._guard(lambda: pq.ParquetFile(path))

    def _guard(self, fn):
        import pyarrow as pa

        try:
            return fn()
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{self.path}: damaged shard ({str(e).splitlines()[0][:120]}); run cryblock prepare "
                            "again") from None

    def read(self, columns: Sequence[str], row_group: int | None = None):
        """The given columns of the whole file, or of one row group (a ``pyarrow.Table``)."""
        if row_group is None:
            return self._guard(lambda: self._pf.read(columns=list(columns)))
        return self._guard(lambda: self._pf.read_row_group(row_group, columns=list(columns)))


class Dataset:
    """An opened, verified dataset (use :func:`open_dataset`).

    Attributes:
        path: the folder; meta: ``dataset.json``; dsp: its :class:`~cryblock.params.DspParams`;
        classes: int tuple of the stored YAMNet class indices; embedding: stored or not;
        rows: total rows; offsets: int64 ``[shards + 1]`` first row id of each shard.
    """

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.meta = path, meta
        self.dsp = DspParams(**meta["dsp"])
        self.patch_format = meta["patch_format"]
        self.patch_shape = tuple(meta["patch_shape"])
        self.global_range = tuple(meta["int8_global"]) if self.patch_format == "int8-global" else None
        self.classes = tuple(int(c) for c in meta["teacher"]["classes"])
        self.embedding = bool(meta["teacher"]["embedding"])
        self.shards = meta["shards"]
        self.row_group_rows = int(meta["row_group_rows"])
        counts = np.array([s["rows"] for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.rows = int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, {self.rows} rows, {len(self.shards)} shards)"

    def _file(self, shard: int, part: str) -> Path:
        return self.path / self.shards[shard][part]["file"]

    def _parquet(self, shard: int, part: str):
        """The shard file opened for reading (``_Shard``: errors name the file)."""
        return _Shard(self._file(shard, part))

    def index(self, positive_classes: Sequence[int] = CRY_CLASSES) -> DatasetIndex:
        """The in-memory index (:class:`DatasetIndex`), read shard by shard from the small
        columns only (no patches)."""
        pos = [self.classes.index(c) for c in positive_classes if c in self.classes]
        pos = pos if len(pos) == len(tuple(positive_classes)) else []
        vocab: dict[str, dict[str, int]] = {c: {} for c in ("group", "label", "category", "source")}
        parts: dict[str, list[np.ndarray]] = {c: [] for c in ("shard", "clip_id", "offset_s", "teacher_score",
                                                              *vocab)}
        clip_files: dict[int, tuple[str, str]] = {}
        for s in range(len(self.shards)):
            t = self._parquet(s, "patches").read(("clip_id", "offset_s", "path", "sha1", *vocab))
            n = t.num_rows
            cid = t.column("clip_id").to_numpy().astype(np.int32)
            parts["clip_id"].append(cid)
            parts["shard"].append(np.full(n, s, np.int32))
            parts["offset_s"].append(t.column("offset_s").to_numpy().astype(np.float32))
            for col, v in vocab.items():
                parts[col].append(_codes(t.column(col), v))
            _, first = np.unique(cid, return_index=True)
            paths, sha1 = t.column("path").take(first).to_pylist(), t.column("sha1").take(first).to_pylist()
            clip_files.update({int(cid[i]): (p, h) for i, p, h in zip(first, paths, sha1)})
            if pos:
                sc = self._parquet(s, "teacher").read(("scores",)).column("scores").combine_chunks()
                sc = sc.flatten().to_numpy().reshape(n, -1)
                parts["teacher_score"].append(sc[:, pos].max(axis=1).astype(np.float32))
            else:
                parts["teacher_score"].append(np.full(n, np.nan, np.float32))
        cat = {k: (np.concatenate(v) if v else np.zeros(0, np.int32)) for k, v in parts.items()}
        names = {}
        for col, v in vocab.items():  # codes in first-seen order → sorted vocabulary
            words = sorted(v)
            rank = {w: i for i, w in enumerate(words)}
            remap = np.array([rank[w] for w in v], np.int32)  # dicts keep insertion (= code) order
            cat[col] = remap[cat[col]] if len(cat[col]) else cat[col]
            names[col] = words
        return DatasetIndex(shard=cat["shard"], clip_id=cat["clip_id"], offset_s=cat["offset_s"], group=cat["group"],
                            label=cat["label"], category=cat["category"], source=cat["source"],
                            teacher_score=cat["teacher_score"], groups=names["group"], labels=names["label"],
                            categories=names["category"], sources=names["source"], clip_files=clip_files,
                            root=Path(self.meta["input"]["root"]))

    def read_rows(self, rows: Sequence[int] | np.ndarray | None = None, *, embedding: bool = False) -> Iterator[RowBatch]:
        """Patches and targets of the given row ids, in shard order, one row group at a time
        (memory: one row group, whatever the number of rows).

        Args:
            rows: row ids (any order, repeats ignored); None = every row.
            embedding: also read the embeddings (the dataset must hold them).
        Yields:
            :class:`RowBatch` es, ascending row ids.
        Raises:
            DataError: a row id outside the dataset, embeddings asked of a dataset without them,
                a damaged shard (named).
        """
        if embedding and not self.embedding:
            raise DataError(f"{self.path}: prepared without teacher embeddings; run cryblock prepare --embedding")
        want = np.arange(self.rows, dtype=np.int64) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if len(want) and (want[0] < 0 or want[-1] >= self.rows):
            raise DataError(f"{self.path}: row ids must be in [0, {self.rows}), got {want[0]}…{want[-1]}")
        shard_of = np.searchsorted(self.offsets, want, side="right") - 1
        pcols = ["clip_id", "patch"] + (["patch_offset", "patch_scale"] if self.patch_format == "int8-patch" else [])
        tcols = ["clip_id", "scores"] + (["embedding"] if embedding else [])
        for s in np.unique(shard_of):
            local = want[shard_of == s] - self.offsets[s]
            groups = local // self.row_group_rows
            pshard, tshard = self._parquet(int(s), "patches"), self._parquet(int(s), "teacher")
            for g in np.unique(groups):
                sel = local[groups == g] - g * self.row_group_rows
                pt = pshard.read(pcols, int(g)).take(sel)
                tt = tshard.read(tcols, int(g)).take(sel)
                cid = pt.column("clip_id").to_numpy().astype(np.int32)
                if not np.array_equal(cid, tt.column("clip_id").to_numpy()):
                    raise DataError(f"{self._file(int(s), 'teacher')}: rows do not match "
                                    f"{self._file(int(s), 'patches')}; run cryblock prepare again")
                sc = tt.column("scores").combine_chunks().flatten().to_numpy().reshape(len(sel), -1)
                emb = (tt.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                       .reshape(len(sel), -1).astype(np.float32) if embedding else None)
                yield RowBatch(rows=local[groups == g] + self.offsets[s], clip_id=cid, scores=sc.astype(np.float32),
                               embedding=emb, patches=decode_patches(pt, self.patch_format, self.patch_shape,
                                                                     self.global_range))

    def read(self, rows: Sequence[int] | np.ndarray | None = None, *, embedding: bool = False) -> RowBatch:
        """:meth:`read_rows` concatenated into one :class:`RowBatch` (memory: all those rows)."""
        batches = list(self.read_rows(rows, embedding=embedding))
        if not batches:
            c = len(self.classes)
            return RowBatch(np.zeros(0, np.int64), np.zeros((0, *self.patch_shape), np.float32),
                            np.zeros((0, c), np.float32), np.zeros((0, EMBEDDING_SIZE), np.float32) if embedding else None,
                            np.zeros(0, np.int32))
        return RowBatch(*(np.concatenate([getattr(b, f) for b in batches]) if getattr(batches[0], f) is not None
                          else None for f in ("rows", "patches", "scores", "embedding", "clip_id")))

    def tf_dataset(self, rows: Sequence[int] | np.ndarray | None = None, *, shuffle_buffer: int = 4096,
                   seed: int | None = 0, cycle_length: int = 4, embedding: bool = False):
        """A ``tf.data.Dataset`` streaming the chosen rows, one element per row:
        ``{"patch": float32 [frames, bands], "scores": float32 [C], "row": int64}`` (plus
        ``"embedding"`` float32 [1024]).

        Shards are read ``cycle_length`` at a time, interleaved row group by row group, then
        shuffled in a buffer of ``shuffle_buffer`` rows (0 = no shuffle; reshuffled each
        iteration, seeded), so memory is ``cycle_length`` row groups plus the buffer, whatever
        the size of the dataset. Batch, repeat and map on the result as usual; per-row targets
        of the index (labels, weights) are gathered by ``row``.
        """
        import tensorflow as tf

        want = np.arange(self.rows, dtype=np.int64) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        shard_of = np.searchsorted(self.offsets, want, side="right") - 1
        per_shard = {int(s): want[shard_of == s] for s in np.unique(shard_of)}
        c = len(self.classes)

        def gen(shard):
            for b in self.read_rows(per_shard[int(shard)], embedding=embedding):
                out = {"patch": b.patches, "scores": b.scores, "row": b.rows}
                if embedding:
                    out["embedding"] = b.embedding
                yield out

        sig = {"patch": tf.TensorSpec((None, *self.patch_shape), tf.float32),
               "scores": tf.TensorSpec((None, c), tf.float32), "row": tf.TensorSpec((None,), tf.int64)}
        if embedding:
            sig["embedding"] = tf.TensorSpec((None, EMBEDDING_SIZE), tf.float32)
        shards = tf.data.Dataset.from_tensor_slices(np.array(sorted(per_shard), dtype=np.int64))
        ds = shards.interleave(lambda s: tf.data.Dataset.from_generator(gen, output_signature=sig, args=(s,)),
                               cycle_length=max(1, int(cycle_length)), block_length=1)
        ds = ds.unbatch()
        if shuffle_buffer:
            ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
        return ds


def open_dataset(path: str | os.PathLike, *, dsp: DspParams | None = None, teacher_sha256: str | None = None,
                 verify: bool = True) -> Dataset:
    """Open a dataset written by ``cryblock prepare`` and check it.

    Args:
        path: the dataset folder.
        dsp: the run's front-end parameters; the dataset must have been made with them.
        teacher_sha256: the run's teacher file digest; the dataset's teacher outputs must come
            from it.
        verify: check every shard file's sha256 (reads all files once); False checks sizes only.

    Returns:
        :class:`Dataset`.

    Raises:
        DataError: no dataset there, an unfinished one, other DSP parameters or teacher, a
            missing, truncated or modified shard (the message names the file and what to do).
    """
    p = Path(path)
    meta = read_meta(p)
    if meta is None:
        raise DataError(f"{p}: no {META_NAME} (not a dataset made by cryblock prepare)")
    shards = meta.get("shards") or []
    if not meta.get("complete"):
        done = sum(1 for s in shards if s.get("teacher"))
        raise DataError(f"{p}: unfinished dataset ({done} of {len(shards)} shards complete); run the same "
                        "cryblock prepare again to finish it")
    if dsp is not None:
        diff = dsp_differences(meta.get("dsp") or {}, dsp)
        if diff:
            raise DataError(f"{p / META_NAME}: made with other DSP parameters ({'; '.join(diff)}); prepare it "
                            "again with this run's parameters")
    if teacher_sha256 is not None and meta["teacher"].get("sha256") != teacher_sha256:
        raise DataError(f"{p / META_NAME}: teacher outputs from another teacher (sha256 {meta['teacher'].get('sha256')}, "
                        f"this run's teacher {teacher_sha256}); prepare it again with --teacher")
    for s in shards:
        for part in ("patches", "teacher"):
            rec = s[part]
            f = p / rec["file"]
            try:
                size = f.stat().st_size
            except OSError as e:
                raise DataError(f"{f}: shard missing ({e.strerror or e}); run cryblock prepare again") from None
            if size != rec["bytes"]:
                raise DataError(f"{f}: {size:,} bytes, {rec['bytes']:,} recorded (truncated or replaced); run "
                                "cryblock prepare again to rebuild it")
            if verify and file_sha256(f) != rec["sha256"]:
                raise DataError(f"{f}: sha256 differs from the recorded one (modified or damaged); run cryblock "
                                "prepare again to rebuild it")
    return Dataset(p, meta)
