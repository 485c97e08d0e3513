"""The teacher: YAMNet scoring log-mel **patches** ``[N, 96, 64]``, batched, on CPU or GPU.

An Edge Impulse learning block only receives DSP features, so the teacher must start after
the front-end: it is YAMNet's MobileNet-v1 body (tensorflow/models research/audioset/yamnet,
``yamnet.py``) rebuilt in Keras, fed with the float log-mel patches of
:mod:`cryblock.blocks.dsp.features`::

    patch [96, 64] → reshape [96, 64, 1]
      → conv 3×3 /2, 32                      (layer1)
      → 13 depthwise-separable blocks        (layer2 … layer14; 3×3 depthwise + 1×1 pointwise)
        channels 64,128,128,256,256,512×6,1024,1024; stride 2 at layers 3, 5, 7, 13
      → global average pooling → embedding [1024]
      → dense 521 → sigmoid → scores [521]

every conv followed by batch norm (ε = 1e-4, center=True, scale=False — YAMNet ``params.py``)
and ReLU; all convs 'same' padded. Batch norm is folded into a conv bias here (inference only):
``w' = w / sqrt(var + ε)``, ``b' = β − mean / sqrt(var + ε)``; this is what the TFLite converter
does as well.

Weights come from any of:

* a YAMNet **TFLite** file (e.g. the TF-Hub release; the shared ``yamnet.tflite`` is
  dynamic-range quantised: int8 weights with per-channel scales, batch norm folded into the
  conv biases). The constant tensors are read with ``tf.lite.Interpreter`` and dequantised
  (``w = q · scale[channel]``, zero point 0); convs are matched to layers in graph order and
  checked against the architecture's shapes. The TFLite's own waveform front-end is *not*
  used (it runs on int8-quantised DFT matrices, see ``shared/models/README.md``).
* the official Keras weights **yamnet.h5** (https://storage.googleapis.com/audioset/yamnet.h5,
  layout of ``yamnet.py``'s ``yamnet_frames_model``: layers ``layerK/conv``,
  ``layerK/{depthwise,pointwise}_conv`` with their ``…/bn`` batch norms, ``dense``).
* a TF **SavedModel** directory of YAMNet (TF-Hub ``google/yamnet``), whose variables carry the
  same names as the Keras layers.

Resolution order of the teacher file (:func:`resolve_teacher_path`): the ``path`` argument, the
environment variable ``$CRYBLOCK_TEACHER``, the user cache ``default_cache_dir()/models/``,
else a download of the official release into that cache (sha256-checked).

Agreement with the shared TFLite (tests/test_teacher.py, 626 windows of 30 real clips):

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
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cryblock.errors import CryblockError
from cryblock.params import CRY_CLASSES

#: Number of AudioSet classes of YAMNet's head (yamnet_class_map.csv).
NUM_CLASSES = 521
#: Size of YAMNet's embedding (global average pool of layer14).
EMBEDDING_SIZE = 1024
#: Patch shape the teacher consumes: (frames, mel bands) — YAMNet params.py (0.96 s, 64 bands).
PATCH_SHAPE = (96, 64)
#: Batch-norm epsilon of YAMNet params.py (``batchnorm_epsilon = 1e-4``).
BN_EPSILON = 1e-4
#: Class map file name (index, mid, display_name), as in tensorflow/models yamnet.
CLASS_MAP_NAME = "yamnet_class_map.csv"

#: YAMNet's layer table (yamnet.py ``_YAMNET_LAYER_DEFS``): (kind, kernel, stride, filters).
YAMNET_LAYER_DEFS: tuple[tuple[str, int, int, int], ...] = (
    ("conv", 3, 2, 32),
    ("separable", 3, 1, 64),
    ("separable", 3, 2, 128),
    ("separable", 3, 1, 128),
    ("separable", 3, 2, 256),
    ("separable", 3, 1, 256),
    ("separable", 3, 2, 512),
    ("separable", 3, 1, 512),
    ("separable", 3, 1, 512),
    ("separable", 3, 1, 512),
    ("separable", 3, 1, 512),
    ("separable", 3, 1, 512),
    ("separable", 3, 2, 1024),
    ("separable", 3, 1, 1024),
)


@dataclass(frozen=True)
class TeacherSource:
    """An official YAMNet release the teacher can be downloaded from.

    Attributes:
        filename: name of the file in the cache (``default_cache_dir()/models/<filename>``).
        url: download address.
        sha256: expected hex digest of the downloaded file.
        description: where the URL and the checksum come from.
    """

    filename: str
    url: str
    sha256: str
    description: str = ""


#: Official releases, tried in order by :func:`download_teacher`.
#: * yamnet.h5: the float Keras weights linked from the YAMNet README (tensorflow/models
#:   research/audioset/yamnet); 15,296,092 bytes, sha256 as recorded by independent users of
#:   that URL.
#: * yamnet.tflite: the TF-Hub TFLite release (google/lite-model/yamnet/tflite/1, now served
#:   by Kaggle Models); sha256 as recorded by independent users of that URL.
OFFICIAL_SOURCES: tuple[TeacherSource, ...] = (
    TeacherSource("yamnet.h5", "https://storage.googleapis.com/audioset/yamnet.h5",
                  "13c3308955bbfaef262f175ac9c40e47b134573a93984f009220dd7cc12a1744",
                  "YAMNet Keras weights (tensorflow/models research/audioset/yamnet README)"),
    TeacherSource("yamnet.tflite", "https://tfhub.dev/google/lite-model/yamnet/tflite/1?lite-format=tflite",
                  "141fba1cdaae842c816f28edc4937e8b4f0af4c8df21862ccc6b52dc567993c3",
                  "YAMNet TFLite (TF Hub google/lite-model/yamnet/tflite/1)"),
)

#: sha256 digests of teacher files known to load correctly, by file name. Files in the user
#: cache must match one of these (a mismatch means a corrupt or interrupted download).
#: 469be6a3… is the dynamic-range-quantised YAMNet TFLite of shared/models (its README).
KNOWN_SHA256: dict[str, frozenset[str]] = {
    "yamnet.tflite": frozenset({
        "469be6a3421cbc52cf97e9f2f966cba984198e8e7af9854d68b3e3ebb1e04194",
        "141fba1cdaae842c816f28edc4937e8b4f0af4c8df21862ccc6b52dc567993c3",
    }),
    "yamnet.h5": frozenset({"13c3308955bbfaef262f175ac9c40e47b134573a93984f009220dd7cc12a1744"}),
}

_TEACHER_FILES = ("yamnet.tflite", "yamnet.h5", "saved_model.pb")


# --------------------------------------------------------------------------------------------
# Files: checksum, resolution, download
# --------------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks). Raises CryblockError if unreadable."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise CryblockError(f"{path}: cannot read teacher file ({e.strerror or e})") from None
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str | Sequence[str]) -> str:
    """Check a file's sha256 against one or several accepted hex digests.

    Returns:
        the file's digest.

    Raises:
        CryblockError: digest not accepted (names the file, the digest and the expected one).
    """
    accepted = {expected.lower()} if isinstance(expected, str) else {e.lower() for e in expected}
    digest = sha256_file(path)
    if digest not in accepted:
        raise CryblockError(f"{path}: sha256 {digest} does not match the expected "
                            f"{' or '.join(sorted(accepted))} (corrupt or incomplete file; delete it "
                            "and download it again)")
    return digest


def teacher_cache_dir() -> Path:
    """Folder of downloaded teachers: ``cryblock.data.default_cache_dir() / 'models'``."""
    from cryblock.data import default_cache_dir

    return default_cache_dir() / "models"


def _find_in_dir(d: Path) -> Path | None:
    """A teacher inside folder ``d``: the folder itself if it is a SavedModel, else
    yamnet.tflite / yamnet.h5 in it."""
    if (d / "saved_model.pb").is_file():
        return d
    for name in ("yamnet.tflite", "yamnet.h5"):
        if (d / name).is_file():
            return d / name
    return None


def download_teacher(dest_dir: str | os.PathLike | None = None,
                     sources: Sequence[TeacherSource] = OFFICIAL_SOURCES, *, timeout: float = 60.0) -> Path:
    """Download the first reachable official YAMNet release into ``dest_dir``.

    The file is written to a temporary name, its sha256 checked against
    :attr:`TeacherSource.sha256`, then renamed into place — never half a file.

    Args:
        dest_dir: target folder (default :func:`teacher_cache_dir`).
        sources: releases to try, in order.
        timeout: seconds per connection attempt.

    Returns:
        path of the downloaded file.

    Raises:
        CryblockError: no source could be downloaded (no network, HTTP error) or a download
            failed its checksum; the message lists each URL and its problem and how to point
            cryblock at a local file instead.
    """
    dest = Path(dest_dir) if dest_dir is not None else teacher_cache_dir()
    problems = []
    for src in sources:
        target = dest / src.filename
        try:
            dest.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{src.filename}.", suffix=".part", dir=dest)
        except OSError as e:
            raise CryblockError(f"{dest}: cannot write the teacher cache ({e.strerror or e})") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(src.url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
            verify_sha256(tmp, src.sha256)
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            problems.append(f"{src.url}: {reason}")
        except CryblockError as e:
            problems.append(f"{src.url}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise CryblockError("no YAMNet teacher found and the download failed (" + "; ".join(problems)
                        + "); pass the teacher file (yamnet.tflite / yamnet.h5 / SavedModel folder) "
                        "explicitly or set $CRYBLOCK_TEACHER")


def resolve_teacher_path(path: str | os.PathLike | None = None, *, download: bool = True,
                         sources: Sequence[TeacherSource] = OFFICIAL_SOURCES) -> Path:
    """Find the teacher model file.

    Order: ``path`` argument; ``$CRYBLOCK_TEACHER``; the user cache
    (``default_cache_dir()/models/yamnet.tflite``, ``yamnet.h5``, ``saved_model/``), whose files
    must match a known sha256 (:data:`KNOWN_SHA256`); else, if ``download``, the official
    release is downloaded into the cache (:func:`download_teacher`).

    A folder given as ``path``/``$CRYBLOCK_TEACHER`` may be a SavedModel or contain
    ``yamnet.tflite``/``yamnet.h5``.

    Returns:
        path of a .tflite file, a .h5 file or a SavedModel folder.

    Raises:
        CryblockError: the given path (or $CRYBLOCK_TEACHER) does not exist / holds no teacher;
            a cached file fails its checksum; nothing found and the download failed or is off.
    """
    for given, what in ((path, "teacher"), (os.environ.get("CRYBLOCK_TEACHER") or None, "$CRYBLOCK_TEACHER")):
        if given is None:
            continue
        p = Path(given).expanduser()
        if p.is_dir():
            found = _find_in_dir(p)
            if found is None:
                raise CryblockError(f"{p}: {what} folder holds no yamnet.tflite, yamnet.h5 or saved_model.pb")
            return found
        if not p.is_file():
            raise CryblockError(f"{p}: {what} file not found")
        return p
    cache = teacher_cache_dir()
    for name in ("yamnet.tflite", "yamnet.h5"):
        f = cache / name
        if f.is_file():
            verify_sha256(f, KNOWN_SHA256[name])
            return f
    if (cache / "saved_model" / "saved_model.pb").is_file():
        return cache / "saved_model"
    if not download:
        raise CryblockError(f"no YAMNet teacher: pass its file, set $CRYBLOCK_TEACHER, or put yamnet.tflite / "
                            f"yamnet.h5 in {cache}")
    return download_teacher(cache, sources)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def _layer_names() -> list[tuple[str, str, int, int, int]]:
    """Per conv of the body: (keras name, kind 'conv'|'depthwise'|'pointwise', kernel, stride, filters)."""
    out = []
    for i, (kind, k, s, f) in enumerate(YAMNET_LAYER_DEFS, start=1):
        if kind == "conv":
            out.append((f"layer{i}/conv", "conv", k, s, f))
        else:
            out.append((f"layer{i}/depthwise_conv", "depthwise", k, s, 0))
            out.append((f"layer{i}/pointwise_conv", "pointwise", 1, 1, f))
    return out


def build_yamnet_patch_model():
    """YAMNet's body as an (untrained) ``tf.keras`` Model, batch norm folded into conv biases.

    Input float32 ``[None, 96, 64]`` log-mel patches; outputs ``[scores [None, 521] (sigmoid),
    embeddings [None, 1024]]``. Layer names follow yamnet.py (``layer1/conv``,
    ``layerK/depthwise_conv``, ``layerK/pointwise_conv``, ``dense``) with '/' replaced by '_'.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    inp = tf.keras.Input(shape=PATCH_SHAPE, dtype="float32", name="log_mel_patches")
    x = layers.Reshape((*PATCH_SHAPE, 1), name="reshape")(inp)
    for name, kind, k, stride, f in _layer_names():
        kname = name.replace("/", "_")
        if kind == "depthwise":
            x = layers.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=True, name=kname)(x)
        else:
            x = layers.Conv2D(f, k, strides=stride, padding="same", use_bias=True, name=kname)(x)
        x = layers.ReLU(name=kname + "_relu")(x)
    emb = layers.GlobalAveragePooling2D(name="embeddings")(x)
    logits = layers.Dense(NUM_CLASSES, use_bias=True, name="dense")(emb)
    scores = layers.Activation("sigmoid", name="scores")(logits)
    return tf.keras.Model(inp, [scores, emb], name="yamnet_patches")


def _expected_shapes() -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Keras kernel/bias shapes of every weighted layer, keyed by yamnet.py layer name."""
    shapes = {}
    ch = 1
    for name, kind, k, _s, f in _layer_names():
        if kind == "depthwise":
            shapes[name] = ((k, k, ch, 1), (ch,))
        else:
            shapes[name] = ((k, k, ch, f), (f,))
            ch = f
    shapes["dense"] = ((EMBEDDING_SIZE, NUM_CLASSES), (NUM_CLASSES,))
    return shapes


def _set_weights(model, weights: dict[str, tuple[np.ndarray, np.ndarray]], source: Path) -> None:
    """Put folded (kernel, bias) arrays (Keras layouts) into ``model``; checks every shape."""
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(weights), key=lambda n: (len(n), n))
    if missing:
        raise CryblockError(f"{source}: not a YAMNet model (no weights for {', '.join(missing[:4])}…)")
    for name, (kshape, bshape) in expected.items():
        kernel, bias = weights[name]
        if tuple(kernel.shape) != kshape or tuple(bias.shape) != bshape:
            raise CryblockError(f"{source}: not a YAMNet model (layer {name} has kernel {tuple(kernel.shape)} "
                                f"bias {tuple(bias.shape)}, expected {kshape} {bshape})")
        if not (np.all(np.isfinite(kernel)) and np.all(np.isfinite(bias))):
            raise CryblockError(f"{source}: layer {name} holds non-finite weights (corrupt file)")
        model.get_layer(name.replace("/", "_")).set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


# --- TFLite ---------------------------------------------------------------------------------

def tflite_interpreter(path: str | os.PathLike, *, use_delegates: bool = True, num_threads: int | None = None):
    """``tf.lite.Interpreter`` for the TFLite file ``path``, after a structural check of the
    file (:func:`cryblock.blocks.deploy.model.check_tflite_bytes`); its deprecation warning is silenced (the replacement
    ``ai_edge_litert`` is not a dependency). ``use_delegates=False`` → builtin kernels only
    (no XNNPACK).

    Raises:
        CryblockError: unreadable, truncated or not a TFLite model (names the file).
    """
    import warnings

    import tensorflow as tf

    try:
        buf = Path(path).read_bytes()
    except OSError as e:
        raise CryblockError(f"{path}: cannot read TFLite model ({e.strerror or e})") from None
    from cryblock.blocks.deploy.model import check_tflite_bytes

    check_tflite_bytes(buf, path)
    kw = {} if use_delegates else {
        "experimental_op_resolver_type": tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            it = tf.lite.Interpreter(model_content=buf, num_threads=num_threads, **kw)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CryblockError(f"{path}: not a usable TFLite model ({msg})") from None
    return it


def _dequantize(detail: dict, values: np.ndarray) -> np.ndarray:
    """int8/uint8 constant → float32 with its (per-channel) scales and zero points."""
    if values.dtype == np.float32:
        return values
    q = detail["quantization_parameters"]
    scales, zps, axis = q["scales"], q["zero_points"], int(q["quantized_dimension"])
    if scales.size == 0:
        raise ValueError(f"tensor {detail['name']} is {values.dtype} without quantisation scales")
    shape = [1] * values.ndim
    if scales.size > 1:
        shape[axis] = scales.size
    return ((values.astype(np.float32) - zps.reshape(shape).astype(np.float32)) * scales.reshape(shape)).astype(np.float32)


def weights_from_tflite(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read YAMNet's (folded) weights from a TFLite file.

    The body's CONV_2D / DEPTHWISE_CONV_2D ops are taken in graph order (27 = 1 + 13·2) and the
    last FULLY_CONNECTED op with 521 outputs is the classifier. Quantised constants (int8 with
    per-channel or per-tensor scales) are dequantised; DEQUANTIZE ops in front of weights are
    followed back to their constant. TFLite layouts (conv OHWI, depthwise 1HWC, dense [out, in])
    are transposed to Keras layouts (HWIO, HWC1, [in, out]).

    Returns:
        ``{yamnet layer name: (kernel, bias)}`` float32, Keras layouts.

    Raises:
        CryblockError: the file is not a readable TFLite model or not YAMNet (names the file).
    """
    p = Path(path)
    it = tflite_interpreter(p, use_delegates=False)
    try:
        details = {d["index"]: d for d in it.get_tensor_details()}
        ops = it._get_ops_details()  # no public API lists the graph's ops
    except (ValueError, RuntimeError, UnicodeDecodeError) as e:  # damaged names/metadata
        raise CryblockError(f"{p}: corrupt TFLite model ({type(e).__name__}: {str(e)[:80]})") from None

    producer = {int(o): op for op in ops for o in op["outputs"]}

    def const(idx: int) -> np.ndarray:
        idx = int(idx)
        op = producer.get(idx)
        if op is not None and op["op_name"] == "DEQUANTIZE":
            idx = int(op["inputs"][0])
        d = details[idx]
        return _dequantize(d, np.array(it.get_tensor(idx)))

    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    fcs = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"
           and tuple(details[int(op["outputs"][0])]["shape"])[-1:] == (NUM_CLASSES,)]
    names = _layer_names()
    if len(convs) != len(names) or not fcs:
        raise CryblockError(f"{p}: not a YAMNet TFLite model ({len(convs)} conv ops, expected {len(names)}; "
                            f"{len(fcs)} dense layer(s) with {NUM_CLASSES} outputs)")
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        for (name, kind, _k, _s, _f), op in zip(names, convs):
            want = "DEPTHWISE_CONV_2D" if kind == "depthwise" else "CONV_2D"
            if op["op_name"] != want:
                raise CryblockError(f"{p}: not a YAMNet TFLite model (op for {name} is {op['op_name']}, expected {want})")
            w = const(op["inputs"][1])
            b = const(op["inputs"][2]) if int(op["inputs"][2]) >= 0 else np.zeros(w.shape[0 if kind != "depthwise" else 3], np.float32)
            # one permutation for both: depthwise [1, kh, kw, C] → [kh, kw, C, 1],
            # conv [O, kh, kw, I] → [kh, kw, I, O]
            weights[name] = (np.ascontiguousarray(np.transpose(w, (1, 2, 3, 0))), b.reshape(-1))
        fc = fcs[-1]
        w = const(fc["inputs"][1])
        b = const(fc["inputs"][2]) if int(fc["inputs"][2]) >= 0 else np.zeros(NUM_CLASSES, np.float32)
        weights["dense"] = (np.ascontiguousarray(w.T), b.reshape(-1))
    except (ValueError, KeyError) as e:
        raise CryblockError(f"{p}: cannot read the TFLite weights ({e})") from None
    return weights


# --- Keras .h5 (official yamnet.h5) and SavedModel ---------------------------------------

# yamnet.py leaves the classifier unnamed, so Keras may have called it dense_1, dense_2 …
_VAR_RE = re.compile(r"(layer\d+/(?:conv|depthwise_conv|pointwise_conv)(?:/bn)?|dense(?:_\d+)?)/"
                     r"(kernel|depthwise_kernel|bias|beta|gamma|moving_mean|moving_variance)(?::\d+)?$")


def _canonical(layer: str) -> str:
    return "dense" if re.fullmatch(r"dense(?:_\d+)?", layer) else layer


def fold_batch_norm(kernel: np.ndarray, beta: np.ndarray | None, mean: np.ndarray, var: np.ndarray,
                    gamma: np.ndarray | None = None, *, depthwise: bool = False,
                    epsilon: float = BN_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference batch norm into the conv before it.

    ``y = γ·(conv(x) − mean)/sqrt(var + ε) + β`` ⇒ ``kernel' = kernel·γ/sqrt(var+ε)`` per output
    channel, ``bias' = β − mean·γ/sqrt(var+ε)``. YAMNet (params.py) uses ε = 1e-4, center=True
    (β), scale=False (γ = 1).

    Args:
        kernel: Keras layout, HWIO (conv) or HWC1 (depthwise; output channel = axis 2).
    Returns:
        (kernel', bias') float32.
    """
    inv = 1.0 / np.sqrt(var.astype(np.float64) + epsilon)
    if gamma is not None:
        inv = inv * gamma
    k = kernel.astype(np.float64)
    k = k * (inv[None, None, :, None] if depthwise else inv[None, None, None, :])
    b = (beta.astype(np.float64) if beta is not None else 0.0) - mean.astype(np.float64) * inv
    return k.astype(np.float32), np.asarray(b, dtype=np.float32)


def _fold_named(named: dict[str, np.ndarray], source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{'layer1/conv/kernel': …, 'layer1/conv/bn/moving_mean': …, 'dense/kernel': …}`` → folded."""
    weights = {}
    for name, kind, _k, _s, _f in _layer_names():
        kkey = f"{name}/depthwise_kernel" if kind == "depthwise" else f"{name}/kernel"
        try:
            kernel = named[kkey]
            mean, var = named[f"{name}/bn/moving_mean"], named[f"{name}/bn/moving_variance"]
        except KeyError as e:
            raise CryblockError(f"{source}: not YAMNet weights (missing {e.args[0]})") from None
        weights[name] = fold_batch_norm(kernel, named.get(f"{name}/bn/beta"), mean, var,
                                        named.get(f"{name}/bn/gamma"), depthwise=kind == "depthwise")
    try:
        weights["dense"] = (named["dense/kernel"].astype(np.float32), named["dense/bias"].astype(np.float32))
    except KeyError as e:
        raise CryblockError(f"{source}: not YAMNet weights (missing {e.args[0]})") from None
    return weights


def weights_from_h5(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the official Keras weights file ``yamnet.h5`` (``model.save_weights`` of yamnet.py's
    ``yamnet_frames_model``; also a full-model .h5) and fold its batch norms.

    Datasets are matched by the tail of their HDF5 path, e.g.
    ``layer2/depthwise_conv/layer2/depthwise_conv/depthwise_kernel:0``,
    ``layer2/depthwise_conv/bn/…/moving_variance:0``, ``dense/dense/kernel:0``.

    Returns:
        ``{yamnet layer name: (kernel, bias)}`` float32, Keras layouts.

    Raises:
        CryblockError: unreadable HDF5 or not YAMNet's weights (names the file).
    """
    import h5py

    p = Path(path)
    named: dict[str, np.ndarray] = {}
    try:
        with h5py.File(p, "r") as f:
            def visit(key, obj):
                if isinstance(obj, h5py.Dataset):
                    m = _VAR_RE.search(key)
                    if m:
                        named[f"{_canonical(m.group(1))}/{m.group(2)}"] = np.array(obj)
            f.visititems(visit)
    except OSError as e:
        raise CryblockError(f"{p}: not a readable HDF5 weights file ({e})") from None
    return _fold_named(named, p)


def weights_from_saved_model(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read YAMNet's variables from a TF SavedModel folder (TF-Hub ``google/yamnet``) by name
    (``…/layer1/conv/kernel:0`` etc.) and fold the batch norms.

    Raises:
        CryblockError: the folder is not a loadable SavedModel or lacks YAMNet's variables.
    """
    import tensorflow as tf

    p = Path(path)
    try:
        obj = tf.saved_model.load(str(p))
    except (OSError, ValueError, RuntimeError, tf.errors.OpError) as e:
        raise CryblockError(f"{p}: not a loadable SavedModel ({str(e).splitlines()[0] if str(e) else e})") from None
    variables = list(getattr(obj, "variables", None) or [])
    if not variables:  # not a "reusable" SavedModel: walk its object graph
        variables = [v for v in tf.train.TrackableView(obj).descendants() if isinstance(v, tf.Variable)]
    named: dict[str, np.ndarray] = {}
    for v in variables:
        m = _VAR_RE.search(v.name)
        if m:
            named[f"{_canonical(m.group(1))}/{m.group(2)}"] = v.numpy()
    return _fold_named(named, p)


# --------------------------------------------------------------------------------------------
# Teacher
# --------------------------------------------------------------------------------------------

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

    def predict(self, patches: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Score log-mel patches in batches.

        Args:
            patches: float ``[N, 96, 64]`` (also ``[96, 64]`` or ``[N, 96, 64, 1]``) from
                :func:`cryblock.blocks.dsp.features.waveform_to_patches`.
            batch_size: patches per forward pass (≥ 1).

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
    _set_weights(model, weights, p)
    return Teacher(model, load_class_names(p), p, digest)


# --------------------------------------------------------------------------------------------
# Reference: the TFLite file run on waveforms (its own quantised front-end)
# --------------------------------------------------------------------------------------------

class TfliteWaveformYamnet:
    """The YAMNet TFLite interpreter on 15600-sample waveform windows — the reference the Keras
    teacher is checked against (tests/test_teacher.py, bench/teacher.py).

    ``run(window)`` returns ``(scores float32 [521], log_mel float32 [96, 64])`` (outputs
    ``Identity`` and ``Identity_1`` of the shared file; a file without the log-mel output
    returns None for it).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = Path(path)
        self.interpreter = tflite_interpreter(self.path, num_threads=num_threads)
        inp = self.interpreter.get_input_details()[0]
        self._in = inp["index"]
        self.window_samples = int(inp["shape"][-1])
        self._scores = self._logmel = None
        for d in self.interpreter.get_output_details():
            shape = tuple(d["shape"])
            if shape[-1] == NUM_CLASSES and self._scores is None:
                self._scores = d["index"]
            elif shape[-2:] == PATCH_SHAPE:
                self._logmel = d["index"]
        if self._scores is None:
            raise CryblockError(f"{self.path}: TFLite model has no [*, {NUM_CLASSES}] scores output")

    def run(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One float32 waveform window ``[15600]`` (16 kHz, [-1, 1]) → (scores [521], log-mel [96, 64])."""
        x = np.asarray(window, dtype=np.float32).reshape(1, self.window_samples)
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()
        scores = np.array(self.interpreter.get_tensor(self._scores)).reshape(NUM_CLASSES)
        logmel = None if self._logmel is None else np.array(self.interpreter.get_tensor(self._logmel)).reshape(PATCH_SHAPE)
        return scores, logmel
