"""Edge Impulse custom learning block entry point.

Invoked by the platform (see blocks/learn/parameters.json and the Dockerfile) as::

    python -m cryblock.blocks.learn.ei_train --data-directory D --out-directory O \\
        --epochs E --learning-rate LR [--temperature T --alpha A --neg-per-pos R \\
        --filter-pos P --filter-neg Q --width W --depth K --embedding-weight λ] [--teacher PATH]

Unknown flags are ignored (``parse_known_args``), as in Edge Impulse's example blocks.

Input (``D``), the files Edge Impulse writes for a learning block:

* ``X_split_train.npy``, ``X_split_test.npy`` — features, float. Each row is one YAMNet log-mel
  patch: either flat ``[N, 6144]`` (96 frames × 64 mel bands, frame-major, as the cryblock DSP
  block emits them) or ``[N, 96, 64]`` / ``[N, 96, 64, 1]``.
* ``Y_split_train.npy``, ``Y_split_test.npy`` — labels, either **one-hot** ``[N, K]`` (current
  Edge Impulse layout; the class order is the project's label order) or the **legacy** layout:
  1-based integer class in column 0 (``[N]`` or ``[N, ≥1]``; other columns ignored). An array
  whose rows are all 0/1 with exactly one 1 and ≥ 2 columns is read as one-hot, anything else
  as legacy.

Because Edge Impulse gives no class names, the block trains the **general** preset: a softmax
over the K classes, distilled from a teacher head (logistic regression on YAMNet's 1024-d
embeddings, fitted on the training rows), with the teacher-as-filter on the head's own-label
probability. Edge Impulse data carry no clips or groups: **each row is treated as one window
and one clip, and the validation set (for early stopping) is a random, class-stratified 20 % of
the training rows** — unlike ``cryblock train``, which splits by group. Per-clip metrics and
voted false alerts in ``metrics.json`` are therefore per-row figures.

Output (``O``, each file appears atomically): ``model.tflite`` (float32),
``model_quantized_int8_io.tflite`` (int8 in/out), ``saved_model.zip`` (top-level
``saved_model/``), plus ``metrics.json`` and ``params.json``. The student's input is the flat
``[6144]`` feature vector (reshaped inside the model), matching the rows Edge Impulse feeds.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

from cryblock.errors import CryblockError, DataError
from cryblock.params import DspParams, Params

FILES = ("X_split_train.npy", "Y_split_train.npy", "X_split_test.npy", "Y_split_test.npy")
#: Most classes a label file may name (the student's softmax head and the firmware hold one score
#: per class; YAMNet itself has 521).
MAX_CLASSES = 1024


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: not found (an Edge Impulse learning block needs {', '.join(FILES)})")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None


def load_features(path: Path, dsp: DspParams = DspParams()) -> np.ndarray:
    """Read an X file as float32 ``[N, 96, 64]`` and check it is this DSP block's output.

    The layout must be one patch per row, frame-major (``[N, 6144]``, ``[N, 96, 64]`` or
    ``[N, 96, 64, 1]``); every value must lie in the range a ``log(mel + log_offset)`` patch
    can take (:func:`log_mel_range`), which catches features of another DSP block, rescaled
    features and the like before hours of training on garbage.

    Raises:
        DataError: missing/corrupt file, no rows, wrong feature length or layout (e.g. a
            transposed ``[N, 64, 96]``), non-finite values, values outside the log-mel range.
    """
    x = _load(path)
    frames, bands = dsp.patch_shape
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{path}: expected features [N, {frames * bands}], got shape {x.shape}")
    if int(np.prod(x.shape[1:])) != frames * bands:
        raise DataError(f"{path}: each row must hold {frames}×{bands} = {frames * bands} log-mel values "
                        f"(one YAMNet patch), got {int(np.prod(x.shape[1:]))} (shape {x.shape})")
    if x.ndim >= 3 and tuple(x.shape[1:3]) != (frames, bands):
        raise DataError(f"{path}: rows are shaped {list(x.shape[1:])}, expected [{frames}, {bands}] "
                        "(frames × mel bands, as the cryblock DSP block emits them; transposed?)")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: features must be numeric, got dtype {x.dtype}")
    out = np.asarray(x, dtype=np.float32).reshape(len(x), frames, bands)
    if not np.all(np.isfinite(out)):
        raise DataError(f"{path}: features hold NaN or infinite values")
    lo, hi = log_mel_range(dsp)
    vmin, vmax = float(out.min()), float(out.max())
    if vmin < lo or vmax > hi:
        raise DataError(f"{path}: values span [{vmin:.3g}, {vmax:.3g}], outside the [{lo:.2f}, {hi:.2f}] a "
                        "log-mel patch of the cryblock DSP block can take (other DSP block, or scaled features?)")
    return out


def log_mel_range(dsp: DspParams = DspParams()) -> tuple[float, float]:
    """Bounds of any value ``log(mel + log_offset)`` of the DSP block for audio in [-1, 1].

    Lower: ``log(log_offset)`` (a silent band), less 1e-3 for float32 rounding. Upper: the mel
    band with the largest total weight ``W`` at a full-scale input, ``|X[k]| ≤ Σ hann = win/2``
    for every bin, so ``mel ≤ W · win / 2`` (×2 for the ``MAX_PEAK`` headroom of float audio).
    """
    from cryblock.blocks.dsp.features import mel_matrix
    from cryblock.audio import MAX_PEAK

    w = float(mel_matrix(dsp).sum(axis=0).max())
    hi = math.log(w * dsp.window_length_samples / 2 * MAX_PEAK + dsp.log_offset)
    return math.log(dsp.log_offset) - 1e-3, hi


def load_labels(path: Path) -> tuple[np.ndarray, int | None]:
    """Read a Y file.

    Returns:
        (0-based int64 class indices ``[N]``, number of classes K if one-hot else None).

    Raises:
        DataError: missing/corrupt file, no rows, labels that are not numbers, labels < 1 or
            beyond :data:`MAX_CLASSES` in the legacy layout.
    """
    y = np.asarray(_load(path))
    if y.ndim == 0 or y.shape[0] == 0:
        raise DataError(f"{path}: no labels")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or np.issubdtype(y.dtype, np.complexfloating):
        raise DataError(f"{path}: labels must be numbers (one-hot or 1-based class indices), got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] >= 2 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
        if y.shape[1] > MAX_CLASSES:
            raise DataError(f"{path}: {y.shape[1]} one-hot classes; at most {MAX_CLASSES}")
        return np.argmax(y, axis=1).astype(np.int64), int(y.shape[1])
    col = (y if y.ndim == 1 else y.reshape(len(y), -1)[:, 0]).astype(np.float64)
    if not np.all(np.isfinite(col)) or not np.all(col == np.round(col)) or np.min(col) < 1:
        raise DataError(f"{path}: labels must be one-hot [N, K] or 1-based integers in column 0")
    if np.max(col) > MAX_CLASSES:
        raise DataError(f"{path}: label {np.max(col):.0f} is beyond {MAX_CLASSES} classes (1-based class indices "
                        "expected)")
    return col.astype(np.int64) - 1, None


def load_split(data_dir: str | os.PathLike, dsp: DspParams = DspParams()):
    """Read the four Edge Impulse files.

    Returns:
        (x_train, y_train, x_test, y_test, n_classes): float32 ``[N, 96, 64]``, int64 ``[N]``.

    Raises:
        DataError: empty/missing folder, mismatched X/Y lengths, bad shapes, a class absent from
            the test split, only one class.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: data directory not found")
    if not any(d.iterdir()):
        raise DataError(f"{d}: data directory is empty (expected {', '.join(FILES)})")
    xtr, xte = load_features(d / FILES[0], dsp), load_features(d / FILES[2], dsp)
    (ytr, ktr), (yte, kte) = load_labels(d / FILES[1]), load_labels(d / FILES[3])
    for xf, yf, x, y in ((FILES[0], FILES[1], xtr, ytr), (FILES[2], FILES[3], xte, yte)):
        if len(x) != len(y):
            raise DataError(f"{d / xf} has {len(x)} rows but {d / yf} has {len(y)}")
    k = ktr or kte or int(max(ytr.max(), yte.max()) + 1)
    if (ktr and kte and ktr != kte) or ytr.max() >= k or yte.max() >= k:
        raise DataError(f"{d}: train and test labels disagree on the number of classes")
    if len(np.unique(ytr)) < 2:
        raise DataError(f"{d / FILES[1]}: only one class in the training data; need ≥ 2")
    missing = sorted(set(range(k)) - set(np.unique(ytr).tolist()))
    if missing:
        raise DataError(f"{d / FILES[1]}: class(es) {_few(missing)} have no training rows")
    missing = sorted(set(range(k)) - set(np.unique(yte).tolist()))
    if missing:
        raise DataError(f"{d / FILES[3]}: class(es) {_few(missing)} are missing from the test split")
    return xtr, ytr, xte, yte, k


def _few(items: list, n: int = 10) -> str:
    """A list for a message: the first ``n`` items and how many more."""
    return str(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _val_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random class-stratified split of row indices (no groups exist in Edge Impulse data)."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_va = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        va.extend(idx[:n_va])
        tr.extend(idx[n_va:])
    return np.sort(np.array(tr, dtype=np.int64)), np.sort(np.array(va, dtype=np.int64))


def parse_args(argv=None) -> argparse.Namespace:
    """Edge Impulse flags (+ the block's custom parameters, :data:`~cryblock.blocks.learn.flags.LEARN_FLAGS`
    rows marked for Edge Impulse); unknown flags are ignored. A flag not given keeps the
    :class:`~cryblock.params.Params` default."""
    from cryblock.blocks.learn.flags import LEARN_FLAGS

    ap = argparse.ArgumentParser(description="cryblock learning block (YAMNet → DS-CNN distillation)")
    ap.add_argument("--data-directory", required=True)
    ap.add_argument("--out-directory", required=True)
    for flag, path, typ, choices, help_, ei in LEARN_FLAGS:
        if ei:
            ap.add_argument(flag, dest=path.replace(".", "__"), type=typ, choices=choices, default=None, help=help_)
    ap.add_argument("--positive-class", type=int, default=0,
                    help="0-based index (Edge Impulse's label order) of the class whose score the detector "
                         "metrics threshold; e.g. 0 for labels [cry, noise]")
    ap.add_argument("--teacher", default=None, help="YAMNet file; default $CRYBLOCK_TEACHER, cache or download")
    args, _unknown = ap.parse_known_args(argv)
    return args


def run(args: argparse.Namespace, log=print):
    """Train from the Edge Impulse files in ``args.data_directory`` into ``args.out_directory``.

    Returns:
        :class:`cryblock.blocks.learn.train.RunResult`.
    """
    from cryblock.blocks.learn.train import Split, train_arrays
    from cryblock.data import default_cache_dir

    from cryblock.output import check_output

    dsp = DspParams()
    check_output(args.out_directory, folder=True, what="--out-directory")
    xtr, ytr, xte, yte, k = load_split(args.data_directory, dsp)
    labels = tuple(f"class_{i}" for i in range(k))
    if not 0 <= args.positive_class < k:
        raise DataError(f"--positive-class must be in [0, {k - 1}] for {k} classes, got {args.positive_class}")
    from cryblock.blocks.learn.flags import overrides

    given = overrides(vars(args))
    given["learn"] = {**given.get("learn", {}), "preset": "general", "labels": list(labels),
                      "positive_label": labels[args.positive_class]}
    params = Params().replace(**given)
    tr, va = _val_split(ytr, params.learn.validation_fraction, params.learn.seed)

    def split(x, y):
        n = len(x)
        return Split(x, y, np.arange(n, dtype=np.int64), y.copy(), None)

    log(f"Edge Impulse data: {len(xtr)} training rows ({len(tr)} train / {len(va)} validation, random split), "
        f"{len(xte)} test rows, {k} classes")
    return train_arrays(split(xtr[tr], ytr[tr]), split(xtr[va], ytr[va]), split(xte, yte), args.out_directory, params,
                        teacher=args.teacher, cache_dir=default_cache_dir() / "teacher", log=log,
                        data_info={"source": "edge-impulse", "data_directory": str(args.data_directory)},
                        flat_input=True, write_report=False)


def main(argv=None) -> int:
    """Console entry: returns 0 on success, 2 on a user error (one ``error: …`` line on stderr)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    try:
        run(args, log=lambda s: print(s, flush=True))
    except CryblockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
