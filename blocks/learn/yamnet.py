"""YAMNet rebuilt in Keras on log-mel **patches** ``[N, 96, 64]``, with its weights read from any of
three formats.

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
  conv biases). The constant tensors are read with LiteRT's interpreter and dequantised
  (``w = q · scale[channel]``, zero point 0); convs are matched to layers in graph order and
  checked against the architecture's shapes. The TFLite's own waveform front-end is *not*
  used (it runs on int8-quantised DFT matrices, see ``shared/models/README.md``).
* the official Keras weights **yamnet.h5** (https://storage.googleapis.com/audioset/yamnet.h5,
  layout of ``yamnet.py``'s ``yamnet_frames_model``: layers ``layerK/conv``,
  ``layerK/{depthwise,pointwise}_conv`` with their ``…/bn`` batch norms, ``dense``).
* a TF **SavedModel** directory of YAMNet (TF-Hub ``google/yamnet``), whose variables carry the
  same names as the Keras layers.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from cryblock.errors import CryblockError

#: Number of AudioSet classes of YAMNet's head (yamnet_class_map.csv).
NUM_CLASSES = 521
#: Size of YAMNet's embedding (global average pool of layer14).
EMBEDDING_SIZE = 1024
#: Patch shape the teacher consumes: (frames, mel bands) — YAMNet params.py (0.96 s, 64 bands).
PATCH_SHAPE = (96, 64)
#: Batch-norm epsilon of YAMNet params.py (``batchnorm_epsilon = 1e-4``).
BN_EPSILON = 1e-4

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


def set_weights(model, weights: dict[str, tuple[np.ndarray, np.ndarray]], source: Path) -> None:
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
    from cryblock.blocks.learn.tflite import tflite_interpreter

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
