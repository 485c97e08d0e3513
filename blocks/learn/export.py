"""Export the trained student: SavedModel zip, float TFLite, full-integer INT8 TFLite.

File names and layout follow Edge Impulse's custom learning blocks
(example-custom-ml-block-keras ``conversion.py``; see docs/edge-impulse-block-conventions.md):

* ``saved_model.zip`` — a zip holding a top-level ``saved_model/`` folder (Keras 3
  ``model.export(dir)`` SavedModel with a ``serving_default`` signature).
* ``model.tflite`` — float32.
* ``model_quantized_int8_io.tflite`` — full-integer INT8: int8 input and output tensors,
  per-channel weight quantisation, activations calibrated on a representative set of training
  patches (``TFLITE_BUILTINS_INT8`` only, so every op runs in TFLite Micro / ESP-NN). For the
  cryblock firmware it outputs the **logits** (no final LOGISTIC/SOFTMAX; the firmware and
  :class:`~cryblock.blocks.learn.evaluate.TflmRunner` apply the activation in float): a sigmoid
  quantised to int8 has steps of 1/256, so every score below 0.004 ties at 0 and the ranking of
  the negatives is lost; int8 logits keep it. The Edge Impulse block exports probabilities
  (``logits_model=None``), as Edge Impulse deployments expect.

Every file is written atomically (temp file + rename, :mod:`cryblock.output`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryblock.tflogs import native_log_filter
from cryblock.errors import CryblockError
from cryblock.output import atomic_write_bytes

FLOAT_NAME = "model.tflite"
INT8_NAME = "model_quantized_int8_io.tflite"
SAVED_MODEL_ZIP = "saved_model.zip"


@dataclass
class ExportedModels:
    """Bytes of the exported models and where they were written."""

    float_tflite: bytes
    int8_tflite: bytes
    saved_model_zip: Path
    float_path: Path
    int8_path: Path


def representative_indices(count: int, n: int = 300, seed: int = 0) -> np.ndarray:
    """int64 ``[min(n, count)]`` ascending indices of the windows :func:`representative_patches`
    draws from ``count`` windows (a streamed run reads just those)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(count, size=min(n, count), replace=False) if count > n else np.arange(count)
    return np.sort(idx).astype(np.int64)


def representative_patches(x: np.ndarray, n: int = 300, seed: int = 0) -> np.ndarray:
    """Up to ``n`` patches drawn at random (fixed seed) from ``x`` for INT8 calibration."""
    return np.asarray(x[representative_indices(len(x), n, seed)], dtype=np.float32)


def _input_shape(model) -> tuple[int, ...]:
    return tuple(int(d) for d in model.inputs[0].shape[1:])


def export_saved_model(model, work_dir: Path) -> Path:
    """``model.export(work_dir/saved_model)``; returns the SavedModel folder."""
    sm = Path(work_dir) / "saved_model"
    if sm.exists():
        shutil.rmtree(sm)
    model.export(str(sm), verbose=False)
    return sm


def zip_saved_model(saved_model_dir: Path, dest: Path) -> Path:
    """Zip ``saved_model_dir`` as a top-level ``saved_model/`` folder into ``dest`` (atomic)."""
    saved_model_dir = Path(saved_model_dir)
    with tempfile.TemporaryDirectory(dir=Path(dest).parent) as td:
        base = shutil.make_archive(str(Path(td) / "sm"), "zip", root_dir=saved_model_dir.parent,
                                   base_dir=saved_model_dir.name)
        os.replace(base, dest)
    return Path(dest)


def convert_float(saved_model_dir: Path) -> bytes:
    """Float32 TFLite flatbuffer from a SavedModel."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    with native_log_filter():
        return conv.convert()


def convert_int8(saved_model_dir: Path, rep_patches: np.ndarray, input_shape: tuple[int, ...]) -> bytes:
    """Full-integer INT8 TFLite (int8 in/out, per-channel) calibrated on ``rep_patches``.

    Args:
        saved_model_dir: SavedModel of the inference model.
        rep_patches: float32 patches ``[n, 96, 64]`` (any shape reshaping to ``input_shape``).
        input_shape: the model's input shape without the batch axis.
    """
    import tensorflow as tf

    if len(rep_patches) == 0:
        raise CryblockError("INT8 export needs at least one representative patch")
    rep = np.asarray(rep_patches, dtype=np.float32).reshape((-1,) + tuple(input_shape))

    def gen():
        for i in range(len(rep)):
            yield [rep[i:i + 1]]

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with native_log_filter():  # the converter prints its quantiser parameters natively
        return conv.convert()


def export_all(model, rep_patches: np.ndarray, out_dir: str | os.PathLike, logits_model=None) -> ExportedModels:
    """Write saved_model.zip, model.tflite and model_quantized_int8_io.tflite into ``out_dir``.

    The SavedModel is built in a temporary folder inside ``out_dir`` (removed afterwards);
    each output file appears atomically.

    Args:
        model: Keras inference model (probabilities out): the SavedModel and the float TFLite.
        rep_patches: training patches for INT8 calibration (:func:`representative_patches`).
        out_dir: destination folder (created).
        logits_model: when given, the INT8 model is this one (logits out, same weights).

    Returns:
        :class:`ExportedModels`.

    Raises:
        CryblockError: ``out_dir`` cannot be written (a full disk, permissions); nothing of the
            export is left behind.
    """
    import tensorflow as tf

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as td:
            sm = export_saved_model(model, Path(td))
            f32 = convert_float(sm)
            sm8 = sm if logits_model is None else export_saved_model(logits_model, Path(td) / "logits")
            i8 = convert_int8(sm8, rep_patches, _input_shape(model))
            zip_path = zip_saved_model(sm, out / SAVED_MODEL_ZIP)
    except (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as e:
        # TensorFlow's own file writer reports a full disk as ResourceExhaustedError
        why = getattr(e, "strerror", None) or str(getattr(e, "message", e)).rsplit(";", 1)[-1].strip()
        raise CryblockError(f"{out}: cannot write the exported models ({why})") from None
    fp = atomic_write_bytes(out / FLOAT_NAME, f32)
    ip = atomic_write_bytes(out / INT8_NAME, i8)
    return ExportedModels(f32, i8, zip_path, fp, ip)


def int8_only(model, rep_patches: np.ndarray, logits_model=None) -> bytes:
    """The INT8 flatbuffer alone (as :func:`export_all` makes it, nothing written): for the
    cross-validation folds, whose models are scored and dropped."""
    with tempfile.TemporaryDirectory(prefix="cryblock-int8-") as td:
        sm = export_saved_model(logits_model if logits_model is not None else model, Path(td))
        return convert_int8(sm, rep_patches, _input_shape(model))
