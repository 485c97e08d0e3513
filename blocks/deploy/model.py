"""The INT8 model as the firmware sees it: flatbuffer inspection, op resolver, C array, input rule.

* :func:`inspect_model` reads a ``.tflite`` flatbuffer (the schema bindings shipped with the
  tflite-micro wheel, :func:`tflite_schema`): its operators, the single input/output tensor with
  its quantisation, and a MAC count.
* :func:`resolver_calls` maps the operators to ``tflite::MicroMutableOpResolver`` methods.
* :func:`model_c_source` / :func:`parse_c_array` write and read the ``alignas(16)`` C array.
* :func:`quantize_input` is the Python reference of the firmware's int8 input quantisation.
* :func:`positive_output_index` picks the output the detector thresholds.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryblock.errors import CryblockError
from cryblock.params import Params


#: BuiltinOperator name → ``tflite::MicroMutableOpResolver`` method
#: (tensorflow/lite/micro/micro_mutable_op_resolver.h). Ops missing here raise a clear error.
OP_RESOLVER_METHODS: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd", "CAST": "AddCast", "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D", "COS": "AddCos",
    "DEPTH_TO_SPACE": "AddDepthToSpace", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize", "ELU": "AddElu", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor",
    "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather", "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual", "HARD_SWISH": "AddHardSwish",
    "L2_NORMALIZATION": "AddL2Normalization", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess",
    "LOG": "AddLog", "LOGISTIC": "AddLogistic", "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D", "MEAN": "AddMean", "MINIMUM": "AddMinimum", "MUL": "AddMul",
    "NEG": "AddNeg", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2", "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize", "REDUCE_MAX": "AddReduceMax", "RELU": "AddRelu",
    "RELU6": "AddRelu6", "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "ROUND": "AddRound",
    "RSQRT": "AddRsqrt", "SHAPE": "AddShape", "SIN": "AddSin", "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQRT": "AddSqrt", "SQUARE": "AddSquare",
    "SQUEEZE": "AddSqueeze", "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum",
    "TANH": "AddTanh", "TRANSPOSE": "AddTranspose", "TRANSPOSE_CONV": "AddTransposeConv",
    "UNPACK": "AddUnpack",
}


_TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool",
                 7: "int16", 9: "int8"}


def tflite_schema():
    """The TFLite flatbuffer schema bindings (module) shipped with the tflite-micro wheel: the same
    schema as ``tensorflow.lite.python.schema_py_generated``, without importing TensorFlow. Used by
    :func:`inspect_model` and the teacher's structural file check."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    return fb


@dataclass(frozen=True)
class TensorInfo:
    """A model input/output: ``shape``, ``dtype`` name, per-tensor ``scale``/``zero_point``
    (0.0/0 when the tensor is not quantised)."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class ModelInfo:
    """What the generator needs to know about a ``.tflite`` file.

    Attributes:
        size_bytes: flatbuffer length.
        ops: distinct builtin operator names, in operator-code order (e.g. ``CONV_2D``).
        input / output: the single input and output tensor.
        macs: multiply-accumulates of one inference (conv, depthwise, fully connected; pools,
            means and element-wise ops are counted as one MAC per input element they read).
        macs_by_op: MACs per operator name.
        output_activation: what the output holds — "sigmoid" / "softmax" (the model ends in
            LOGISTIC / SOFTMAX: probabilities) or "none" (logits: the firmware applies the sigmoid,
            or the softmax for several outputs, in float; :func:`output_scores`).
        input_readers: names of the operators that read the input tensor directly.
    """

    size_bytes: int
    ops: tuple[str, ...]
    input: TensorInfo
    output: TensorInfo
    macs: int
    macs_by_op: dict[str, int] = field(default_factory=dict)
    output_activation: str = "none"
    input_readers: tuple[str, ...] = ()


def read_model(path: str | os.PathLike) -> bytes:
    """Read a ``.tflite`` file. Raises CryblockError naming the file when it is missing, is not a
    TFLite flatbuffer (file identifier ``TFL3`` at byte 4), or is truncated or damaged
    (:func:`check_tflite_bytes`)."""
    from cryblock.inputs import read_regular_bytes

    p = Path(path)
    try:
        data = read_regular_bytes(p)  # a FIFO or /dev/zero is refused, not read forever
    except FileNotFoundError:
        raise CryblockError(f"{p}: model file not found") from None
    except OSError as e:
        raise CryblockError(f"{p}: cannot read model ({e.strerror})") from None
    check_tflite_bytes(data, p)
    return data


def check_tflite_bytes(buf: bytes, path) -> None:
    """Structural check of a TFLite flatbuffer before the C++ interpreter sees it.

    The interpreter does not bounds-check a truncated or damaged file and may crash the whole
    process (observed: a truncated yamnet.tflite segfaults ``tf.lite.Interpreter``). The
    flatbuffer is therefore unpacked completely in Python (``schema_py_generated.ModelT`` of the
    schema bindings :func:`inspect_model` reads models with, bounds-checked, ~10 ms for YAMNet)
    and tensor/buffer/operator indices are checked.

    Raises:
        CryblockError: not a TFLite flatbuffer, truncated or inconsistent (names the file).
    """
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise CryblockError(f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier)")
    try:
        model = tflite_schema().ModelT.InitFromPackedBuf(bytearray(buf), 0)
        n_buffers = len(model.buffers or [])
        for b in model.buffers or []:
            off, size = int(getattr(b, "offset", 0) or 0), int(getattr(b, "size", 0) or 0)
            if off > 1 and off + size > len(buf):
                raise ValueError("a weight buffer lies beyond the end of the file")
        n_opcodes = len(model.operatorCodes or [])
        for g in model.subgraphs or []:
            tensors = g.tensors or []
            if any(not 0 <= t.buffer < max(n_buffers, 1) for t in tensors):
                raise ValueError("a tensor refers to a missing buffer")
            for op in g.operators or []:
                if not 0 <= op.opcodeIndex < n_opcodes:
                    raise ValueError("an operator refers to a missing op code")
                for i in list(op.inputs if op.inputs is not None else []) + list(op.outputs if op.outputs is not None else []):
                    if not -1 <= int(i) < len(tensors):
                        raise ValueError("an operator refers to a missing tensor")
    except CryblockError:
        raise
    except Exception as e:  # struct.error, IndexError, ValueError … from a damaged flatbuffer
        raise CryblockError(f"{path}: corrupt or truncated TFLite model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _op_names(fb, m) -> list[str]:
    """Builtin operator name of each operator code of the flatbuffer model ``m`` (``CONV_2D``, …;
    ``BUILTIN_<n>`` for a code the schema does not name)."""
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        out.append(names.get(code, f"BUILTIN_{code}"))
    return out


def _tensor_info(fb, sub, idx: int) -> TensorInfo:
    t = sub.Tensors(idx)
    shape = _shape(sub, idx)
    q = t.Quantization()
    scale, zp = 0.0, 0
    if q is not None and q.ScaleLength():
        if q.ScaleLength() != 1:
            raise CryblockError("model input/output must be per-tensor quantised "
                                f"(found {q.ScaleLength()} scales)")
        scale, zp = float(q.Scale(0)), int(q.ZeroPoint(0))
    return TensorInfo(shape, _TENSOR_TYPES.get(t.Type(), f"type{t.Type()}"), scale, zp)


def inspect_model(model: bytes, name: str = "model") -> ModelInfo:
    """Parse a TFLite flatbuffer: ops, input/output quantisation, MAC count.

    Args:
        model: the ``.tflite`` bytes.
        name: used in error messages (the file name).

    Raises:
        CryblockError: unparsable flatbuffer, more than one subgraph/input/output, a custom op,
            or an operator the TFLM op resolver cannot register (message names the op).
    """
    fb = tflite_schema()
    try:
        m = fb.Model.GetRootAs(model, 0)
        n_sub = m.SubgraphsLength()
    except Exception as e:  # flatbuffers raises assorted errors on garbage
        raise CryblockError(f"{name}: cannot parse TFLite flatbuffer ({e})") from None
    if n_sub != 1:
        raise CryblockError(f"{name}: expected 1 subgraph, found {n_sub}")
    codes = _op_names(fb, m)
    if "CUSTOM" in codes:
        oc = m.OperatorCodes(codes.index("CUSTOM"))
        cname = json.dumps(oc.CustomCode().decode("utf-8", errors="replace"))[:60] if oc.CustomCode() else "?"
        raise CryblockError(f"{name}: custom operator {cname} is not supported by TFLite Micro's op resolver "
                            "or the generator")
    sub = m.Subgraphs(0)
    if sub.InputsLength() != 1 or sub.OutputsLength() != 1:
        raise CryblockError(f"{name}: expected 1 input and 1 output tensor, found "
                            f"{sub.InputsLength()} and {sub.OutputsLength()}")
    used: list[str] = []
    macs_by_op: dict[str, int] = {}
    activation = "none"
    readers: list[str] = []
    for j in range(sub.OperatorsLength()):
        o = sub.Operators(j)
        op = codes[o.OpcodeIndex()]
        if op not in used:
            used.append(op)
        if sub.Inputs(0) in [o.Inputs(k) for k in range(o.InputsLength())]:
            readers.append(op)
        macs_by_op[op] = macs_by_op.get(op, 0) + _op_macs(fb, sub, o, op)
        if o.OutputsLength() and o.Outputs(0) == sub.Outputs(0):
            activation = {"LOGISTIC": "sigmoid", "SOFTMAX": "softmax"}.get(op, "none")
    unknown = [op for op in used if op not in OP_RESOLVER_METHODS]
    if unknown:
        raise CryblockError(f"{name}: operator(s) {unknown} have no MicroMutableOpResolver "
                            "mapping in cryblock.blocks.deploy.model.OP_RESOLVER_METHODS")
    ordered = tuple(op for op in codes if op in used)
    try:
        tin, tout = _tensor_info(fb, sub, sub.Inputs(0)), _tensor_info(fb, sub, sub.Outputs(0))
    except CryblockError as e:
        raise CryblockError(f"{name}: {e}") from None
    return ModelInfo(len(model), ordered, tin, tout, int(sum(macs_by_op.values())), macs_by_op, activation,
                     tuple(readers))


def _shape(sub, idx: int) -> tuple[int, ...]:
    if idx < 0:
        return ()
    t = sub.Tensors(idx)
    return tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()


def _op_macs(fb, sub, o, op: str) -> int:
    ins = [o.Inputs(k) for k in range(o.InputsLength())]
    outs = [o.Outputs(k) for k in range(o.OutputsLength())]
    out = _shape(sub, outs[0]) if outs else ()
    n_out = int(np.prod(out)) if out else 0
    if op == "CONV_2D":  # filter [Cout, kh, kw, Cin]
        f = _shape(sub, ins[1])
        return n_out * f[1] * f[2] * f[3]
    if op == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, Cout]
        f = _shape(sub, ins[1])
        return n_out * f[1] * f[2]
    if op == "FULLY_CONNECTED":  # weights [units, in]
        f = _shape(sub, ins[1])
        return n_out * f[1]
    if ins and op in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "SUM", "REDUCE_MAX"):
        s = _shape(sub, ins[0])
        return int(np.prod(s)) if s else 0
    return n_out


@dataclass(frozen=True)
class Layer:
    """One CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED operator as its kernels see it.

    Attributes:
        op: operator name.
        input / filter / output: tensor shapes (NHWC; filter ``[Cout, kh, kw, Cin]``, depthwise
            ``[1, kh, kw, Cout]``, fully connected ``[units, in]``).
        stride: (height, width); (1, 1) for FULLY_CONNECTED.
        pad: SAME padding (top, bottom, left, right) by TFLite's rule (the extra row/column of an
            odd total goes to the bottom/right); zeros for VALID and FULLY_CONNECTED.
        per_channel: the weights carry one scale per output channel.
    """

    op: str
    input: tuple[int, ...]
    filter: tuple[int, ...]
    output: tuple[int, ...]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    per_channel: bool = False


def layers(model: bytes) -> list[Layer]:
    """The conv, depthwise and fully connected operators of ``model`` (in graph order), for the
    arena plan and the known-defect checks of esp-nn's kernels."""
    fb = tflite_schema()
    m = fb.Model.GetRootAs(model, 0)
    codes = _op_names(fb, m)
    sub = m.Subgraphs(0)
    out = []
    for j in range(sub.OperatorsLength()):
        o = sub.Operators(j)
        op = codes[o.OpcodeIndex()]
        if op not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or o.InputsLength() < 2:
            continue
        x, f, y = _shape(sub, o.Inputs(0)), _shape(sub, o.Inputs(1)), _shape(sub, o.Outputs(0))
        q = sub.Tensors(o.Inputs(1)).Quantization()
        per_channel = q is not None and q.ScaleLength() > 1
        if op == "FULLY_CONNECTED" or len(x) != 4 or len(f) != 4 or len(y) != 4:
            out.append(Layer(op, x, f, y, per_channel=per_channel))
            continue
        tab = o.BuiltinOptions()
        opt = fb.Conv2DOptions() if op == "CONV_2D" else fb.DepthwiseConv2DOptions()
        opt.Init(tab.Bytes, tab.Pos)
        stride = (opt.StrideH(), opt.StrideW())
        pad = (0, 0, 0, 0)
        if opt.Padding() == fb.Padding.SAME:  # TFLM ComputePaddingHeightWidth (dilation 1)
            th = max(0, (y[1] - 1) * stride[0] + f[1] - x[1])
            tw = max(0, (y[2] - 1) * stride[1] + f[2] - x[2])
            pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        out.append(Layer(op, x, f, y, stride, pad, per_channel))
    return out


def resolver_calls(ops) -> list[str]:
    """``MicroMutableOpResolver`` method names for ``ops`` (same order). Raises CryblockError
    for an op without mapping."""
    bad = [op for op in ops if op not in OP_RESOLVER_METHODS]
    if bad:
        raise CryblockError(f"operator(s) {bad} cannot be registered with MicroMutableOpResolver")
    return [OP_RESOLVER_METHODS[op] for op in ops]


def model_c_source(model: bytes, name: str = "g_model") -> str:
    """C++ source defining ``alignas(16) const unsigned char g_model[]`` and ``g_model_len``
    (12 bytes per line, like ``xxd -i``)."""
    hexes = [f"0x{b:02x}" for b in model]
    rows = ",\n  ".join(", ".join(hexes[i:i + 12]) for i in range(0, len(hexes), 12))
    return ("// Generated by cryblock: the INT8 TFLite model as a C array. Do not edit.\n"
            '#include "model_data.h"\n\n'
            f"alignas(16) const unsigned char {name}[] = {{\n  {rows}\n}};\n"
            f"const unsigned int {name}_len = {len(model)};\n")


_C_ARRAY_RE = re.compile(r"\{([^}]*)\}", re.S)


def parse_c_array(source: str) -> bytes:
    """Inverse of :func:`model_c_source`: the bytes of the first ``{...}`` initialiser."""
    m = _C_ARRAY_RE.search(source)
    if not m:
        raise CryblockError("no array initialiser found in C source")
    vals = [v.strip() for v in m.group(1).split(",") if v.strip()]
    try:
        return bytes(int(v, 0) for v in vals)
    except ValueError:
        bad = next((v for v in vals if not re.fullmatch(r"0[xX][0-9a-fA-F]{1,2}|\d{1,3}", v) or int(v, 0) > 255), "?")
        raise CryblockError(f"array value {bad[:20]!r} is not a byte") from None


def output_scores(values: np.ndarray, activation: str) -> np.ndarray:
    """Model outputs (dequantised, ``[N, K]``) → scores in [0, 1], by the firmware's rule
    (``cry_app_score`` in cry_app.c): probabilities pass through; logits get a sigmoid (K = 1)
    or a softmax over the K outputs."""
    v = np.asarray(values, dtype=np.float64)
    if activation != "none":
        return v.astype(np.float32)
    if v.shape[-1] == 1:
        return (1.0 / (1.0 + np.exp(-v))).astype(np.float32)
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Python reference of the firmware's int8 input quantisation (``cry_quantize_int8``):
    ``clip(round_half_even(float32(x) / float32(scale)) + zero_point, -128, 127)`` → int8.
    Use the *model's own* input scale/zero-point (:class:`ModelInfo` ``.input``)."""
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


#: Operators whose input must be a 4-D ``[batch, height, width, channels]`` tensor: fed a flat patch
#: directly, TFLite Micro's kernels divide by a missing dimension (observed: SIGFPE in ``detect``).
FOUR_D_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "TRANSPOSE_CONV",
                        "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"})


def input_layouts(frames: int, mels: int) -> tuple[tuple[int, ...], ...]:
    """The input shapes that hold one ``frames × mels`` patch the way the firmware and Python feed it
    (one row-major patch, batch 1): ``[1, frames, mels, 1]`` (cryblock's students), ``[1, frames,
    mels]`` and ``[1, frames·mels]`` (Edge Impulse's learning block: a flat row reshaped inside)."""
    return (1, frames, mels, 1), (1, frames, mels), (1, frames * mels)


def check_model_for_params(info: ModelInfo, params: Params, name: str = "model") -> int:
    """Check that a model can run on the patches and labels of ``params`` — the one check that
    ``build``, ``detect``, ``evaluate`` and ``emulate`` share, before TFLite Micro sees the model:

    * int8 input and output (the full-integer export), each with a finite scale > 0 and a zero
      point in the int8 range [−128, 127];
    * an input of exactly one :func:`input_layouts` shape, 4-D when an operator of
      :data:`FOUR_D_OPS` reads it;
    * an output ``[1, K]`` (or ``[K]``) of one unit or one per label.

    Returns :func:`positive_output_index`.

    Raises:
        CryblockError: naming ``name`` and what does not match.
    """
    for what, t in (("input", info.input), ("output", info.output)):
        if t.dtype != "int8":
            raise CryblockError(f"{name}: model {what} must be quantised int8 (got {t.dtype}); use the "
                                "full-integer export model_quantized_int8_io.tflite")
        if not (math.isfinite(t.scale) and t.scale > 0):
            raise CryblockError(f"{name}: model {what} scale is {t.scale!r}, not a finite number > 0; the model "
                                "is damaged (re-export it with cryblock train)")
        if not -128 <= t.zero_point <= 127:
            raise CryblockError(f"{name}: model {what} zero point {t.zero_point} is outside the int8 range "
                                "[-128, 127]; the model is damaged (re-export it with cryblock train)")
    frames, mels = params.dsp.patch_shape
    layouts = input_layouts(frames, mels)
    if info.input.shape not in layouts:
        expected = ", ".join(str(list(s)) for s in layouts)
        raise CryblockError(f"{name}: model input shape {list(info.input.shape)} does not hold one {frames}×{mels} "
                            f"log-mel patch of the DSP parameters as the firmware feeds it (expected one of {expected})")
    four_d = sorted(set(info.input_readers) & FOUR_D_OPS)
    if four_d and len(info.input.shape) != 4:
        raise CryblockError(f"{name}: model input shape {list(info.input.shape)} is fed straight to {four_d[0]}, "
                            f"which needs [1, {frames}, {mels}, 1]; the model is damaged")
    if len(info.output.shape) > 1 and any(d != 1 for d in info.output.shape[:-1]):
        raise CryblockError(f"{name}: model output shape {list(info.output.shape)} is not one row of scores [1, K]")
    try:
        return positive_output_index(info, params)
    except CryblockError as e:
        raise CryblockError(f"{name}: {e}") from None


def positive_output_index(info: ModelInfo, params: Params) -> int:
    """Index of the score the detector thresholds in the model output.

    One output unit (sigmoid) → 0. Otherwise the output must have one unit per label of
    ``params.learn.labels`` and the index is that of ``positive_label``.
    """
    n = info.output.size
    if n == 1:
        return 0
    labels = list(params.learn.labels)
    if n != len(labels):
        raise CryblockError(f"model output has {n} values but params.learn.labels has {len(labels)} "
                            f"labels {labels}; pass the params.json of the run that trained the model")
    return labels.index(params.learn.positive_label)
