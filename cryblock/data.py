"""Datasets: the manifest CSV, per-clip log-mel patches, and group-wise splits.

A manifest is a CSV with at least ``path,label,group`` columns (``category, source, license``
optional), paths relative to the CSV's folder — the format of ``shared/data/manifest.csv``.
Train/validation/test splits are always made **by group** (baby, speaker, ESC fold), never by
clip, so no recording source appears on both sides.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import AudioError, DataError
from .inputs import open_regular
from .output import npy_shape, write_npy_blocks
from .params import DspParams

REQUIRED_COLUMNS = ("path", "label", "group")
#: Columns cryblock reads when present (the shared manifest also has licence and others).
OPTIONAL_COLUMNS = ("category", "source")


@dataclass(frozen=True)
class Clip:
    """One recording of the manifest. ``path`` is absolute."""

    path: Path
    label: str
    group: str
    category: str = ""
    source: str = ""


def load_manifest(path: str | os.PathLike) -> list[Clip]:
    """Read a manifest CSV.

    Returns:
        list of :class:`Clip`, in file order, with paths resolved against the CSV's folder.

    Raises:
        DataError: file missing/unreadable, required columns absent, empty, or a row with an
            empty path/label/group (the message names the CSV and the line). A UTF-8 byte-order
            mark (Excel's "CSV UTF-8") is accepted.
    """
    p = Path(path)
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark
        with open_regular(p) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            twice = sorted({c for c in cols if cols.count(c) > 1 and c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)})
            if twice:  # DictReader would keep the last one silently
                raise DataError(f"{p}: column(s) {twice} appear more than once in the header")
            missing = [c for c in REQUIRED_COLUMNS if c not in cols]
            if missing:
                raise DataError(f"{p}: manifest lacks column(s) {missing} (has {cols})")
            clips = []
            for lineno, row in enumerate(reader, start=2):
                vals = {c: (row.get(c) or "").strip() for c in REQUIRED_COLUMNS}
                empty = [c for c, v in vals.items() if not v]
                if empty:
                    raise DataError(f"{p}:{lineno}: empty {empty}")
                clips.append(Clip(path=(p.parent / vals["path"]).resolve(), label=vals["label"],
                                  group=vals["group"], category=(row.get("category") or "").strip(),
                                  source=(row.get("source") or "").strip()))
    except FileNotFoundError:
        raise DataError(f"{p}: manifest not found") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read the manifest ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 CSV ({e})") from None
    except csv.Error as e:
        raise DataError(f"{p}: malformed CSV ({e})") from None
    if not clips:
        raise DataError(f"{p}: manifest has no rows")
    return clips


def _content_key(path: str | os.PathLike) -> str:
    """sha1 of a regular file's bytes, read in 1 MiB chunks; for anything else (missing,
    unreadable, a FIFO, a device such as /dev/zero, a folder) a key unique to the path: such a
    clip is skipped and listed when its features are computed, where the audio rules say why
    (:func:`cryblock.inputs.open_regular`: a FIFO without a writer cannot hang the check)."""
    try:
        with open_regular(path) as f:
            return hashlib.file_digest(f, "sha1").hexdigest()
    except OSError:
        return f"unreadable:{path}"


def deduplicate(clips: Sequence[Clip], source: str | os.PathLike = "manifest",
                key=None) -> tuple[list[Clip], list[str]]:
    """Find clips that are the same recording: the same file twice, or two files with the same
    bytes (sha1).

    The same audio in two groups would sit on both sides of a group split (test clips leaking
    into training), and the same audio under two labels is a contradiction: both are refused.
    A repeat inside one group with one label changes no split; it is dropped with a warning.

    Args:
        key: ``Clip -> str`` content key (default: the sha1 of the file's bytes, read now; a
            dataset passes the sha1 it recorded).

    Returns:
        (clips without repeats, in order; one warning line per dropped repeat).

    Raises:
        DataError: naming both files, for the same audio in two groups or under two labels.
    """
    seen: dict[str, Clip] = {}
    out, warnings = [], []
    for c in clips:
        key_ = key(c) if key else _content_key(c.path)
        first = seen.get(key_)
        if first is None:
            seen[key_] = c
            out.append(c)
            continue
        same = "is listed twice" if Path(first.path) == Path(c.path) else f"has the same bytes as {first.path}"
        if first.group != c.group:
            raise DataError(f"{source}: {c.path} {same} but in group {c.group!r} vs {first.group!r}: the same "
                            "recording on both sides of a group split leaks test audio into training; keep one")
        if first.label != c.label:
            raise DataError(f"{source}: {c.path} {same} but labelled {c.label!r} vs {first.label!r}; keep one")
        warnings.append(f"{c.path} {same} (group {c.group!r}); the repeat is ignored")
    return out, warnings


@dataclass
class PatchSet:
    """Log-mel patches of many clips.

    Attributes:
        patches: float32 ``[N, 96, 64]``.
        clip_index: int32 ``[N]``, index into ``clips`` of each patch's clip.
        clips: the clips that yielded patches.
        skipped: ``(path, reason)`` for each clip that could not be read.
    """

    patches: np.ndarray
    clip_index: np.ndarray
    clips: list[Clip]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        """Label string of every patch, object ``[N]``."""
        return np.array([self.clips[i].label for i in self.clip_index], dtype=object)

    def groups(self) -> np.ndarray:
        """Group string of every patch, object ``[N]``."""
        return np.array([self.clips[i].group for i in self.clip_index], dtype=object)

    def subset_clips(self, keep: Iterable[int]) -> "PatchSet":
        """The patches of the clips whose indices are in ``keep`` (clip indices renumbered)."""
        keep = sorted(set(int(k) for k in keep))
        remap = -np.ones(len(self.clips), dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        mask = remap[self.clip_index] >= 0
        return PatchSet(self.patches[mask], remap[self.clip_index[mask]].astype(np.int32),
                        [self.clips[k] for k in keep], list(self.skipped))


def _params_key(params: DspParams) -> str:
    from dataclasses import asdict

    return hashlib.sha1(json.dumps(asdict(params), sort_keys=True).encode()).hexdigest()[:12]


def _clip_patch_file(args: tuple[str, DspParams, str, bool]) -> tuple[str | None, int, str | None]:
    """Worker: the patches of one clip as an .npy file in ``folder`` (streamed, so memory stays
    flat for long recordings). With ``cached`` the file name is keyed by path, size, mtime and
    parameters and an existing complete file is reused. Returns (file, patches, error)."""
    from cryblock.blocks.dsp.features import file_patch_blocks

    path, params, folder, cached = args
    try:
        st = os.stat(path)
        ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{_params_key(params)}" if cached else path
    except OSError:
        ident = path
    target = Path(folder) / f"{hashlib.sha1(ident.encode()).hexdigest()}.npy"
    if cached:
        shape = npy_shape(target)
        if shape is not None and shape[1:] == params.patch_shape:
            return str(target), shape[0], None
    try:
        n = write_npy_blocks(target, file_patch_blocks(path, params), params.patch_shape, np.float32)
    except AudioError as e:
        return None, 0, str(e)
    return str(target), n, None


def default_cache_dir() -> Path:
    """``$CRYBLOCK_CACHE`` or ``~/.cache/cryblock`` (features and teacher scores)."""
    return Path(os.environ.get("CRYBLOCK_CACHE") or Path.home() / ".cache" / "cryblock")


def pool_size(workers: int | None, n_jobs: int, chunk: int = 4) -> int:
    """Worker processes for ``n_jobs`` jobs handed out ``chunk`` at a time: the requested number
    (default: the CPU count), but never more than the CPUs or the chunks of work (``--workers
    256`` on 2 cores would fork 256 processes)."""
    cpus = os.cpu_count() or 1
    return max(1, min(workers or cpus, cpus, -(-n_jobs // chunk)))


def patch_files(clips: Sequence[Clip], params: DspParams, folder: str | os.PathLike, *, cached: bool,
                workers: int | None = None,
                progress: Callable[[int], None] | None = None) -> list[tuple[str | None, int, str | None]]:
    """Compute each clip's patches into an ``.npy`` file in ``folder`` (see :func:`compute_patches`).

    Returns:
        one ``(file or None, number of patches, error or None)`` per clip, in order.
    """
    jobs = [(str(c.path), params, str(folder), cached) for c in clips]
    workers = pool_size(workers, len(jobs))
    results = []
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            done = ex.map(_clip_patch_file, jobs, chunksize=4)
            for r in done:
                results.append(r)
                if progress:
                    progress(1)
    else:
        for j in jobs:
            results.append(_clip_patch_file(j))
            if progress:
                progress(1)
    return results


def compute_patches(clips: Sequence[Clip], params: DspParams = DspParams(), *, workers: int | None = None,
                    cache_dir: str | os.PathLike | None = None,
                    progress: Callable[[int], None] | None = None) -> PatchSet:
    """Log-mel patches of every clip; unreadable clips are skipped and listed, not fatal.

    Args:
        clips: clips to process.
        params: front-end parameters.
        workers: processes (default: ``os.cpu_count()``, 1 = in-process).
        cache_dir: if given, per-clip patches are cached there (keyed by path, size, mtime
            and parameters); else they pass through a temporary folder.
        progress: called with the number of clips finished since the last call.

    Returns:
        :class:`PatchSet`.

    Raises:
        DataError: no clip yielded any patch.
    """
    with contextlib.ExitStack() as stack:
        if cache_dir is not None:
            folder = Path(cache_dir)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cryblock-patches-")))
        results = patch_files(clips, params, folder, cached=cache_dir is not None, workers=workers,
                              progress=progress)
        kept, skipped = [], []
        for clip, (_, n, err) in zip(clips, results):
            if err is not None:
                skipped.append((str(clip.path), err))
            elif n:
                kept.append(clip)
        if not kept:
            raise DataError(f"none of {len(clips)} clip(s) could be read; first error: "
                            f"{skipped[0][1] if skipped else 'no clips'}")
        total = sum(n for _, n, err in results if err is None)
        patches = np.empty((total, *params.patch_shape), np.float32)
        index = np.empty(total, np.int32)
        at = 0
        for k, (f, n) in enumerate((f, n) for f, n, err in results if err is None and n):
            patches[at:at + n] = np.load(f, mmap_mode="r")
            index[at:at + n] = k
            at += n
    return PatchSet(patches, index, kept, skipped)


def group_folds(clips: Sequence[Clip], idx: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Split the clips ``idx`` into ``n_folds`` folds **by group**, stratified by ``label|source``
    (scikit-learn ``StratifiedGroupKFold``, shuffled with ``seed``), so each kind of recording —
    the cats, the speakers, the ESC folds — is spread over the folds as far as its groups allow.
    Falls back to label strata, then none, where every stratum is smaller than the folds.

    Returns:
        ``n_folds`` sorted int arrays of clip indices (no group in two).
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    idx = np.asarray(idx)
    labels = np.array([clips[i].label for i in idx])
    strata = np.array([f"{clips[i].label}|{clips[i].source}" for i in idx])
    groups = np.array([clips[i].group for i in idx])
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    s = strata if np.unique(strata, return_counts=True)[1].max() >= n_folds else labels
    if np.unique(s, return_counts=True)[1].max() < n_folds:
        s = np.zeros(len(idx), dtype=int)
    with warnings.catch_warnings():  # strata with fewer groups than folds are spread as far as they go
        warnings.simplefilter("ignore", UserWarning)
        return [np.sort(idx[held]) for _, held in cv.split(np.zeros(len(idx)), s, groups)]


def hold_out_groups(clips: Sequence[Clip], idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held out): one fold of ``round(1/fraction)`` (:func:`group_folds`) of the clips ``idx``."""
    idx = np.asarray(idx)
    k = min(max(2, int(round(1 / fraction))), len({clips[i].group for i in idx}))
    held = group_folds(clips, idx, k, seed)[0]
    return np.setdiff1d(idx, held), held


def groups_per_label(clips: Sequence[Clip]) -> str:
    """``'cry' 242, 'not_cry' 412``: how many groups each label has (for error messages)."""
    labels = sorted({c.label for c in clips})
    return ", ".join(f"{lab!r} {len({c.group for c in clips if c.label == lab})}" for lab in labels)


def split_by_group(clips: Sequence[Clip], test_fraction: float = 0.25, validation_fraction: float = 0.2,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split clip indices into train / validation / test **by group**, stratified by label and
    source: the test split is one fold of ``round(1/test_fraction)``, validation one fold of
    ``round(1/validation_fraction)`` of the rest (:func:`hold_out_groups`). No group appears in
    two splits; a validation split without any cat would calibrate the detector blind to the
    hardest sound.

    Returns:
        (train_idx, val_idx, test_idx): int arrays of clip indices.

    Raises:
        DataError: fewer than 3 groups, or a label that ends up missing from a split (the message
            says how many groups each label has).
    """
    labels = np.array([c.label for c in clips])
    if len({c.group for c in clips}) < 3:
        raise DataError(f"need ≥ 3 groups to split train/validation/test by group, got {len({c.group for c in clips})}")
    if len(set(labels)) < 2:
        raise DataError(f"need ≥ 2 labels, got only {sorted(set(labels))}")
    rest, test = hold_out_groups(clips, np.arange(len(clips)), test_fraction, seed)
    train, val = hold_out_groups(clips, rest, validation_fraction, seed + 1)
    for name, part in (("test", test), ("validation", val), ("train", train)):
        missing = set(labels) - set(labels[part])
        if missing:
            raise DataError(f"label(s) {sorted(str(m) for m in missing)} have too few groups to appear in the {name} "
                            f"split (groups per label: {groups_per_label(clips)}; each label needs groups in train, "
                            "validation and test)")
    return np.sort(train), np.sort(val), np.sort(test)
