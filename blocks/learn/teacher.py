"""The teacher: YAMNet scoring log-mel **patches** ``[N, 96, 64]``, batched, on CPU or GPU.

:func:`load_teacher` finds the file (:mod:`~cryblock.blocks.learn.teacher_files`: argument,
``$CRYBLOCK_TEACHER``, cache, checksum-verified download), reads its weights into YAMNet rebuilt in
Keras (:mod:`~cryblock.blocks.learn.yamnet`: TFLite, ``yamnet.h5`` or SavedModel) and returns a
:class:`Teacher`.

Agreement with the shared TFLite (tests/test_teacher.py, 626 windows of 30 real clips; the
reference is :class:`cryblock.blocks.learn.tflite.TfliteWaveformYamnet`):

* fed the TFLite's own log-mel (``Identity_1``), every layer equals the TFLite reference
  kernels to float rounding (rel. error < 1e-6, once the hybrid kernels' int8 rounding of
  their input activations is emulated); the final scores differ by mean 9e-5, max 0.04 —
  that activation rounding is the only difference;
* on the float NumPy patches vs. the TFLite on waveforms: cry-probability correlation 0.983,
  mean |Δ| over all 521 classes 5e-4. The residual comes from the TFLite's int8 DFT front-end
  (largest on the 8 kHz-sourced donateacry clips, whose empty upper band it fills with
  quantisation noise), not from the teacher.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cryblock.blocks.learn.teacher_files import (KNOWN_SHA256, OFFICIAL_SOURCES, TeacherSource,
                                                 resolve_teacher_path, sha256_file)
from cryblock.blocks.learn.yamnet import (EMBEDDING_SIZE, NUM_CLASSES, PATCH_SHAPE, build_yamnet_patch_model,
                                          set_weights, weights_from_h5, weights_from_saved_model,
                                          weights_from_tflite)
from cryblock.errors import CryblockError
from cryblock.params import CRY_CLASSES

#: Class map file name (index, mid, display_name), as in tensorflow/models yamnet.
CLASS_MAP_NAME = "yamnet_class_map.csv"


def load_class_names(model_path: str | os.PathLike | None = None) -> list[str]:
    """The 521 display names: ``yamnet_class_map.csv`` next to the model if present, else the
    copy shipped with cryblock (blocks/learn/yamnet_class_map.csv, from tensorflow/models yamnet).

    Raises:
        CryblockError: the CSV is malformed or has not 521 rows (names the file).
    """
    candidates = []
    if model_path is not None:
        mp = Path(model_path)
        candidates.append((mp if mp.is_dir() else mp.parent) / CLASS_MAP_NAME)
        candidates.append(mp / "assets" / CLASS_MAP_NAME)
    candidates.append(Path(__file__).with_name(CLASS_MAP_NAME))
    for c in candidates:
        if c.is_file():
            try:
                with c.open(newline="", encoding="utf-8") as f:
                    names = [row["display_name"] for row in csv.DictReader(f)]
            except (KeyError, UnicodeDecodeError, csv.Error) as e:
                raise CryblockError(f"{c}: malformed class map ({e})") from None
            if len(names) != NUM_CLASSES:
                raise CryblockError(f"{c}: class map has {len(names)} rows, expected {NUM_CLASSES}")
            return names
    raise CryblockError(f"{CLASS_MAP_NAME} not found (looked in {', '.join(str(c) for c in candidates)})")


def cry_probability(scores: np.ndarray) -> np.ndarray:
    """YAMNet's cry probability per patch: ``max(scores[:, 19], scores[:, 20])``.

    Classes (yamnet_class_map.csv, :data:`cryblock.params.CRY_CLASSES`): 19 "Crying, sobbing",
    20 "Baby cry, infant cry".

    Why the max and not the sum: YAMNet's outputs are independent per-class sigmoids of a
    multi-label model, not a distribution. The two classes are parent/child in the AudioSet
    ontology and fire together on the same evidence (a baby cry is also "crying"), so a sum
    counts that evidence twice and leaves [0, 1] (up to 2); the max stays a probability, is the
    exact lower bound of P(19 or 20) under any dependence, and is the rule behind the figure in
    shared/models/README.md (median 0.97 on the ESC-10 baby cries).

    Args:
        scores: float ``[N, 521]`` (or ``[521]``) teacher scores.
    Returns:
        float32 ``[N]`` (or a 0-d array for one patch) in [0, 1].
    Raises:
        CryblockError: last axis is not 521 classes.
    """
    s = np.asarray(scores)
    if s.ndim not in (1, 2) or s.shape[-1] != NUM_CLASSES:
        raise CryblockError(f"cry_probability: scores must be [N, {NUM_CLASSES}], got shape {s.shape}")
    return np.max(s[..., list(CRY_CLASSES)], axis=-1).astype(np.float32)


class Teacher:
    """YAMNet on log-mel patches (see the module docstring).

    Attributes:
        keras_model: ``tf.keras.Model`` ``[None, 96, 64]`` float32 → ``[scores [None, 521],
            embeddings [None, 1024]]``; callable inside a ``tf.function`` and on GPU.
        class_names: the 521 display names.
        path: the file the weights came from.
        sha256: its digest (None for a SavedModel folder).
        known_release: True when that digest is one of :data:`KNOWN_SHA256` (a known official /
            shared release); False for other files, which load if they are structurally YAMNet.
    """

    def __init__(self, keras_model, class_names: list[str], path: Path, sha256: str | None = None):
        import tensorflow as tf

        self.keras_model = keras_model
        self.class_names = class_names
        self.path = Path(path)
        self.sha256 = sha256
        self.known_release = sha256 is not None and any(sha256 in v for v in KNOWN_SHA256.values())
        self._fn = tf.function(lambda x: keras_model(x, training=False),
                               input_signature=[tf.TensorSpec([None, *PATCH_SHAPE], tf.float32)],
                               reduce_retracing=True)

    def __repr__(self) -> str:
        return f"Teacher({str(self.path)!r})"

    @staticmethod
    def _check(patches) -> np.ndarray:
        x = np.asarray(patches)
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 3 or tuple(x.shape[1:]) != PATCH_SHAPE:
            raise CryblockError(f"teacher input must be log-mel patches [N, 96, 64], got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise CryblockError(f"teacher input must be float log-mel patches, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise CryblockError("teacher input holds NaN or infinite values")
        return x

    def predict(self, patches: np.ndarray, batch_size: int = 256,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Score log-mel patches in batches.

        Args:
            patches: float ``[N, 96, 64]`` (also ``[96, 64]`` or ``[N, 96, 64, 1]``) from
                :func:`cryblock.blocks.dsp.features.waveform_to_patches`.
            batch_size: patches per forward pass (≥ 1).
            progress: called with the number of patches of each finished batch.

        Returns:
            ``(scores float32 [N, 521], embeddings float32 [N, 1024])``; N may be 0.

        Raises:
            CryblockError: wrong shape/dtype, non-finite values, batch_size < 1.
        """
        if int(batch_size) < 1:
            raise CryblockError(f"teacher batch_size must be ≥ 1, got {batch_size}")
        x = self._check(patches)
        n = x.shape[0]
        scores = np.empty((n, NUM_CLASSES), np.float32)
        emb = np.empty((n, EMBEDDING_SIZE), np.float32)
        for i in range(0, n, int(batch_size)):
            s, e = self._fn(x[i:i + int(batch_size)])
            scores[i:i + len(s)] = s.numpy()
            emb[i:i + len(e)] = e.numpy()
            if progress:
                progress(len(s))
        return scores, emb

    def scores(self, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Per-class sigmoid scores float32 ``[N, 521]`` (like YAMNet's ``scores`` output)."""
        return self.predict(patches, batch_size)[0]

    def embeddings(self, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """YAMNet embeddings float32 ``[N, 1024]`` (global average pool of layer14)."""
        return self.predict(patches, batch_size)[1]

    def logits_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Pre-sigmoid class logits float32 ``[N, 521]`` = ``embeddings @ W + b`` with YAMNet's
        dense head. Exact where ``logit(scores)`` is not (float32 sigmoid saturates: scores
        round to 0 or 1 beyond |logit| ≈ 17), so use these for temperature-scaled distillation.

        Raises:
            CryblockError: embeddings not ``[N, 1024]``.
        """
        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != EMBEDDING_SIZE:
            raise CryblockError(f"embeddings must be [N, {EMBEDDING_SIZE}], got shape {e.shape}")
        w, b = self.keras_model.get_layer("dense").get_weights()
        return (e.astype(np.float64) @ w.astype(np.float64) + b).astype(np.float32)

    def logits(self, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Pre-sigmoid class logits float32 ``[N, 521]`` (see :meth:`logits_from_embeddings`)."""
        return self.logits_from_embeddings(self.embeddings(patches, batch_size))

    def cry_probability(self, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """:func:`cry_probability` of the patches' scores, float32 ``[N]``."""
        return cry_probability(self.scores(patches, batch_size))


def load_teacher(path: str | os.PathLike | None = None, *, download: bool = True,
                 sources: Sequence[TeacherSource] = OFFICIAL_SOURCES) -> Teacher:
    """Load YAMNet as a patch teacher.

    Args:
        path: a .tflite file, a .h5 weights file, a SavedModel folder or a folder holding one
            of them; None → ``$CRYBLOCK_TEACHER``, the cache, the download
            (:func:`resolve_teacher_path`).
        download: allow downloading the official release when nothing is found locally.
        sources: releases to download from.

    Returns:
        :class:`Teacher`.

    Raises:
        CryblockError: not found / download failed / corrupt or wrong file (names the file).
    """
    p = resolve_teacher_path(path, download=download, sources=sources)
    digest = None
    if p.is_dir():
        weights = weights_from_saved_model(p)
    else:
        digest = sha256_file(p)
        with open(p, "rb") as f:
            head = f.read(8)
        if head[:4] == b"\x89HDF" or p.suffix.lower() in (".h5", ".hdf5"):
            weights = weights_from_h5(p)
        elif head[4:8] == b"TFL3" or p.suffix.lower() == ".tflite":
            weights = weights_from_tflite(p)
        else:
            raise CryblockError(f"{p}: unknown teacher format (expected a .tflite, .h5 or SavedModel folder)")
    model = build_yamnet_patch_model()
    set_weights(model, weights, p)
    return Teacher(model, load_class_names(p), p, digest)
