"""Deployment generator: INT8 ``.tflite`` + :class:`~cryblock.params.Params` → ESP-IDF project.

:func:`generate_project` writes a complete ESP-IDF (≥ 5.1) project for the ESP32-S3 from the
jinja2 templates in ``templates/esp32s3/``:

* the model as an ``alignas(16)`` C array and a ``MicroMutableOpResolver<N>`` holding exactly the
  model's ops (read from the flatbuffer's operator codes, :func:`inspect_model`);
* a tensor arena sized from a measurement (:func:`measure_arena`, the TFLM Python interpreter's
  recording allocator) plus an ESP-NN scratch bound and a margin (:func:`plan_arena`);
* the C twin of the DSP block (``frontend.c`` + generated tables), the detector (``postproc.c``),
  the ``CRYB/1`` log formatter (``cry_log.c``), I2S capture (``audio_i2s.c``) and ``main.cc``;
* ``sdkconfig.defaults``, ``Kconfig.projbuild`` (detector and pin defaults),
  ``idf_component.yml``, ``partitions.csv`` when the app outgrows the 1.5 MB default partition,
  and a README.

It also returns (and ``cryblock build`` prints) a size / latency report (:func:`size_report`).
Everything is written into a temporary folder next to ``out`` and renamed into place, so a
failure never leaves half a project. Sources of constants are given where they are defined;
the ESP-IDF facts come from shared/docs/espidf-tflm-esptool-notes.md.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import CryblockError, ParameterError
from .params import DspParams, Params

# ---------------------------------------------------------------------------------------------
# Model inspection
# ---------------------------------------------------------------------------------------------

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
    """

    size_bytes: int
    ops: tuple[str, ...]
    input: TensorInfo
    output: TensorInfo
    macs: int
    macs_by_op: dict[str, int] = field(default_factory=dict)


def read_model(path: str | os.PathLike) -> bytes:
    """Read a ``.tflite`` file. Raises CryblockError naming the file when it is missing or is
    not a TFLite flatbuffer (file identifier ``TFL3`` at byte 4)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CryblockError(f"{p}: model file not found") from None
    except OSError as e:
        raise CryblockError(f"{p}: cannot read model ({e.strerror})") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise CryblockError(f"{p}: not a TFLite model (no 'TFL3' flatbuffer identifier)")
    return data


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
        cname = oc.CustomCode().decode() if oc.CustomCode() else "?"
        raise CryblockError(f"{name}: custom operator '{cname}' is not supported by the generator")
    sub = m.Subgraphs(0)
    if sub.InputsLength() != 1 or sub.OutputsLength() != 1:
        raise CryblockError(f"{name}: expected 1 input and 1 output tensor, found "
                            f"{sub.InputsLength()} and {sub.OutputsLength()}")
    used: list[str] = []
    macs_by_op: dict[str, int] = {}
    for j in range(sub.OperatorsLength()):
        o = sub.Operators(j)
        op = codes[o.OpcodeIndex()]
        if op not in used:
            used.append(op)
        macs_by_op[op] = macs_by_op.get(op, 0) + _op_macs(fb, sub, o, op)
    unknown = [op for op in used if op not in OP_RESOLVER_METHODS]
    if unknown:
        raise CryblockError(f"{name}: operator(s) {unknown} have no MicroMutableOpResolver "
                            "mapping in cryblock.deploy.OP_RESOLVER_METHODS")
    ordered = tuple(op for op in codes if op in used)
    return ModelInfo(len(model), ordered, _tensor_info(fb, sub, sub.Inputs(0)),
                     _tensor_info(fb, sub, sub.Outputs(0)), int(sum(macs_by_op.values())), macs_by_op)


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


def resolver_calls(ops) -> list[str]:
    """``MicroMutableOpResolver`` method names for ``ops`` (same order). Raises CryblockError
    for an op without mapping."""
    bad = [op for op in ops if op not in OP_RESOLVER_METHODS]
    if bad:
        raise CryblockError(f"operator(s) {bad} cannot be registered with MicroMutableOpResolver")
    return [OP_RESOLVER_METHODS[op] for op in ops]


# ---------------------------------------------------------------------------------------------
# Arena
# ---------------------------------------------------------------------------------------------

_ARENA_RE = re.compile(r"Arena allocation total (\d+) bytes")


def _tflm_interpreter(model: bytes, arena_size: int):
    from tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=int(arena_size))


def measure_arena(model: bytes, probe_size: int = 8 << 20) -> int:
    """Arena bytes the TFLM interpreter needs for ``model`` on the host.

    Builds a ``tflite_micro`` interpreter with a generous arena, redirects C-level stderr (fd 2)
    around ``print_allocations()`` and parses ``Arena allocation total N bytes`` of TFLM's
    RecordingMicroAllocator. The host uses TFLM's reference kernels; ESP-NN's optimised kernels
    additionally request scratch buffers (see :func:`esp_nn_scratch_bound`).

    Raises:
        CryblockError: the model does not allocate even in ``probe_size`` bytes, or the
            allocation report cannot be parsed.
    """
    try:
        ip = _tflm_interpreter(model, probe_size)
    except RuntimeError as e:
        raise CryblockError(f"TFLM cannot allocate the model in {probe_size} bytes ({e})") from None
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            ip.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode("utf-8", errors="replace")
    m = _ARENA_RE.search(text)
    if not m:
        raise CryblockError("could not parse TFLM's allocation report (no 'Arena allocation total')")
    return int(m.group(1))


def _same_pad(size: int, out: int, k: int, stride: int) -> int:
    # TFLM ComputePaddingHeightWidth for SAME padding (dilation 1): floor(total / 2)
    return max(0, (out - 1) * stride + k - size) // 2


def _conv_scratch_s3(h, w, cin, kh, kw, cout, ph, pw, sh, sw) -> int:
    # esp-nn esp_nn_get_conv_scratch_size_esp32s3 (esp-nn v1.x, esp_nn_conv_esp32s3.c)
    if kh == 1 and kw == 1 and ph == 0 and pw == 0 and sh == 1 and sw == 1:
        nc = (cin + 7) & ~7
        transpose = 0 if w * h < 8 else 2 * 8 * nc
        inp = w * h * nc if cin % 8 else 0
        return inp + nc * cout + transpose + 32
    nc = (cin + 15) & ~15
    inp = (w + 2 * pw) * (h + 2 * ph) * cin if (ph or pw) else 0
    return inp + kh * kw * nc * cout + 32 + 4 * cout


def _dwconv_scratch_s3(h, w, c, kh, kw, mult, oh, ow, ph, pw, sh, sw) -> int:
    # esp-nn esp_nn_get_depthwise_conv_scratch_size_esp32s3 (esp_nn_depthwise_conv_s8_esp32s3.c)
    filt = kh * kw * c * mult
    if mult == 1 and c % 8 == 0 and kh == 3 and kw == 3:
        if c % 16 == 0:
            if ph or pw:
                pad_w, pad_h = 2 * pw, 2 * ph
            else:
                pad_w, pad_h = ow * sw + kw - 1 - w, oh * sh + kh - 1 - h
            if pad_w or pad_h:
                return (w + pad_w) * (h + pad_h) * c + filt + 16
            return filt + 16
        return 2 * (filt + h * w * c) + 16
    if mult % 4 == 0:
        return 2 * (filt + h * w * c) + 16
    return 32


def esp_nn_scratch_bound(model: bytes) -> int:
    """Largest ESP-NN scratch buffer (bytes) any conv / depthwise op of ``model`` requests on the
    ESP32-S3.

    Mirrors esp-nn's ``esp_nn_get_conv_scratch_size_esp32s3`` and
    ``esp_nn_get_depthwise_conv_scratch_size_esp32s3`` (esp-nn v1.x: aligned/padded int8 copies
    of filter and input, int16 copies for some depthwise shapes), with TFLM's SAME-padding rule.
    The host TFLM interpreter uses reference kernels that request none of this; TFLM plans
    scratch buffers like tensors living for one op, so the device arena grows by at most the
    largest one (plus alignment, covered by the margin of :func:`plan_arena`).
    """
    fb = tflite_schema()
    m = fb.Model.GetRootAs(model, 0)
    codes = _op_names(fb, m)
    sub = m.Subgraphs(0)
    best = 0
    for j in range(sub.OperatorsLength()):
        o = sub.Operators(j)
        op = codes[o.OpcodeIndex()]
        if op not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        x, f, y = _shape(sub, o.Inputs(0)), _shape(sub, o.Inputs(1)), _shape(sub, o.Outputs(0))
        if len(x) != 4 or len(f) != 4 or len(y) != 4:
            continue
        tab = o.BuiltinOptions()
        opt = fb.Conv2DOptions() if op == "CONV_2D" else fb.DepthwiseConv2DOptions()
        opt.Init(tab.Bytes, tab.Pos)
        sh, sw = opt.StrideH(), opt.StrideW()
        _, h, w, cin = x
        _, oh, ow, cout = y
        kh, kw = f[1], f[2]
        same = opt.Padding() == fb.Padding.SAME
        ph = _same_pad(h, oh, kh, sh) if same else 0
        pw = _same_pad(w, ow, kw, sw) if same else 0
        if op == "CONV_2D":
            need = _conv_scratch_s3(h, w, cin, kh, kw, cout, ph, pw, sh, sw)
        else:
            need = _dwconv_scratch_s3(h, w, cin, kh, kw, max(1, cout // max(cin, 1)), oh, ow, ph, pw, sh, sw)
        best = max(best, need)
    return best


#: RAM budgets for the arena on the ESP32-S3 (bytes).
#: Internal: the S3 has 512 KB SRAM; an IDF app without Wi-Fi typically starts with ≈320–350 KB
#: free heap. We allow the arena at most 240 KiB so the audio ring, front-end, task stacks and
#: I2S DMA (≈70 KB, see size_report) still fit.
#: PSRAM: 2 MiB, the smallest PSRAM on common S3 modules (N8R2; N8R8/N16R8 have 8 MiB), less
#: 256 KiB left for other allocations that may land in PSRAM (CONFIG_SPIRAM_USE_MALLOC).
RAM_BUDGETS = {"internal": 240 * 1024, "psram": 2 * 1024 * 1024 - 256 * 1024}


@dataclass(frozen=True)
class ArenaPlan:
    """Arena sizing: ``arena_bytes = round_up_16(measured + esp_nn_scratch + margin·measured)``."""

    measured_bytes: int
    esp_nn_scratch_bytes: int
    margin_fraction: float
    arena_bytes: int
    region: str  #: "internal" | "psram"
    budget_bytes: int
    basis: str


def plan_arena(model: bytes, ram: str = "auto", margin: float = 0.10,
               measured: int | None = None) -> ArenaPlan:
    """Size the tensor arena and choose its RAM region.

    Args:
        model: ``.tflite`` bytes.
        ram: "internal", "psram" or "auto" (internal when it fits, else PSRAM).
        margin: extra fraction of the measured arena (default 10 %), on top of the ESP-NN
            scratch bound, for kernel/allocator differences between host and device.
        measured: host measurement (bytes) if already known, else :func:`measure_arena`.

    Raises:
        ParameterError: bad ``ram`` / ``margin``.
        CryblockError: the arena does not fit the chosen region's budget (:data:`RAM_BUDGETS`).
    """
    if ram not in ("auto", "internal", "psram"):
        raise ParameterError(f"parameter 'ram': must be auto, internal or psram, got {ram!r}")
    if not (0 <= margin <= 4):
        raise ParameterError(f"parameter 'arena_margin': must be in [0, 4], got {margin}")
    meas = measure_arena(model) if measured is None else int(measured)
    scratch = esp_nn_scratch_bound(model)
    arena = int(math.ceil((meas + scratch + margin * meas) / 16.0) * 16)
    basis = ("host TFLM RecordingMicroAllocator total + largest ESP-NN S3 scratch buffer (esp-nn "
             f"esp_nn_get_*conv_scratch_size_esp32s3) + {margin:.0%} margin, "
             "rounded up to 16 B; the device's interpreter->arena_used_bytes() (BOOT line) is ground truth")
    if ram == "auto":
        region = "internal" if arena <= RAM_BUDGETS["internal"] else "psram"
    else:
        region = ram
    budget = RAM_BUDGETS[region]
    if arena > budget:
        hint = " (use --ram psram)" if region == "internal" else ""
        raise CryblockError(f"tensor arena needs {arena} bytes, more than the {region} RAM budget of "
                            f"{budget} bytes{hint}")
    return ArenaPlan(meas, scratch, float(margin), arena, region, budget, basis)


# ---------------------------------------------------------------------------------------------
# C sources
# ---------------------------------------------------------------------------------------------


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
    return bytes(int(v, 0) for v in vals)


def _cfloat(x: float) -> str:
    s = repr(float(np.float32(x)))
    if "e" not in s and "." not in s and "inf" not in s and "nan" not in s:
        s += ".0"
    return s + "f"


def frontend_tables(dsp: DspParams) -> dict[str, Any]:
    """Constants and tables for ``frontend_tables.h/.c`` from the DSP parameters.

    Returns a dict with ints (win, hop, nfft, nbins, nmel, patch_frames, patch_hop,
    sample_rate, patch_hop_ms), the log offset, the periodic Hann window (float32 [win]) and
    the sparse mel matrix: per band ``start`` bin, ``len`` and an ``offset`` into the
    concatenated non-zero ``weights`` (from :func:`cryblock.blocks.dsp.features.mel_matrix`).

    Raises:
        ParameterError: FFT length whose half is not a power of 4 (esp-dsp's radix-4 FFT).
    """
    from cryblock.blocks.dsp.features import mel_matrix, periodic_hann

    n = dsp.fft_length // 2
    if n < 4 or 4 ** round(math.log(n, 4)) != n:
        raise ParameterError(f"parameter 'stft_window_seconds': FFT length {dsp.fft_length} is not "
                             "supported on device (fft_length/2 must be a power of 4, e.g. 512)")
    if dsp.hop_length_samples > dsp.window_length_samples:
        raise ParameterError("parameter 'stft_hop_seconds': hop longer than the window")
    mm = mel_matrix(dsp)  # [bins, mel]
    starts, lens, offs, weights = [], [], [], []
    for b in range(mm.shape[1]):
        nz = np.nonzero(mm[:, b])[0]
        if nz.size == 0:
            s, ln = 0, 0
        else:
            s, ln = int(nz[0]), int(nz[-1] - nz[0] + 1)
        starts.append(s)
        lens.append(ln)
        offs.append(len(weights))
        weights.extend(float(w) for w in mm[s:s + ln, b])
    return {
        "sample_rate": int(round(dsp.sample_rate)),
        "win": dsp.window_length_samples,
        "hop": dsp.hop_length_samples,
        "nfft": dsp.fft_length,
        "nbins": dsp.num_spectrogram_bins,
        "nmel": dsp.mel_bands,
        "patch_frames": dsp.patch_frames,
        "patch_hop": dsp.patch_hop_frames,
        "patch_hop_ms": int(round(dsp.patch_hop_samples * 1000.0 / dsp.sample_rate)),
        "log_offset": float(dsp.log_offset),
        "hann": np.asarray(periodic_hann(dsp.window_length_samples), dtype=np.float32),
        "mel_start": starts, "mel_len": lens, "mel_offset": offs,
        "mel_weights": np.asarray(weights, dtype=np.float32),
    }


def _c_list(values, per_line: int = 8, fmt=str) -> str:
    items = [fmt(v) for v in values]
    return ",\n    ".join(", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Python reference of the firmware's int8 input quantisation (``cry_quantize_int8``):
    ``clip(round_half_even(float32(x) / float32(scale)) + zero_point, -128, 127)`` → int8.
    Use the *model's own* input scale/zero-point (:class:`ModelInfo` ``.input``)."""
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


# ---------------------------------------------------------------------------------------------
# Size / latency report
# ---------------------------------------------------------------------------------------------

#: Effective int8 throughput of TFLM + ESP-NN on an ESP32-S3 @240 MHz, MAC/s: person detection
#: (7.16 M MACs) runs in 47 ms with the arena in internal RAM and 54 ms in PSRAM
#: (esp-nn README) → ≈0.15 / 0.13 GMAC/s. Estimates from it are good to about ±2×.
EFFECTIVE_MACS_PER_S = {"internal": 0.15e9, "psram": 0.13e9}

#: Flash used by everything except the model (bytes): an estimate, not a measurement — ESP-IDF
#: base app with FreeRTOS, newlib, I2S/GPIO drivers and console ≈ 200 KB, the TFLM runtime with a
#: handful of kernels ≈ 150 KB, ESP-NN ≈ 40 KB, esp-dsp FFT ≈ 10 KB. ``idf.py size`` gives the
#: real figure after a build.
CODE_FLASH_ESTIMATE = 400 * 1024

#: Default app partition of CONFIG_PARTITION_TABLE_SINGLE_APP_LARGE (1.5 MB, ESP-IDF
#: components/partition_table/partitions_singleapp_large.csv).
DEFAULT_APP_PARTITION = 0x180000

#: Audio ring between the capture and inference tasks: int16 samples, 1 s (a patch every 0.48 s;
#: inference of a small DS-CNN takes tens of ms, so this absorbs > 10 inference times).
AUDIO_RING_SECONDS = 1.0
#: I2S DMA: 8 descriptors × 240 frames × 4 bytes (micro_speech's setup, notes §3).
I2S_DMA_BYTES = 8 * 240 * 4
#: Stacks of the capture (4 KB), inference (8 KB) and command (4 KB) tasks.
TASK_STACK_BYTES = (4 + 8 + 4) * 1024


def size_report(info: ModelInfo, arena: ArenaPlan, dsp: DspParams) -> dict[str, Any]:
    """Flash / RAM / latency estimate of the generated firmware (plain JSON-able dict).

    Flash = model bytes + :data:`CODE_FLASH_ESTIMATE`. RAM = arena + front-end state
    (``cry_fe_t``) + audio ring + I2S DMA + task stacks. Latency = MACs /
    :data:`EFFECTIVE_MACS_PER_S` for the arena's region, with a ×0.5–×2 range.
    """
    fe_bytes = 4 * (dsp.window_length_samples + dsp.fft_length + dsp.patch_frames * dsp.mel_bands) + 16
    fe_bytes += 4 * dsp.num_spectrogram_bins  # magnitude on the inference task's stack
    ring = int(AUDIO_RING_SECONDS * dsp.sample_rate) * 2
    internal_other = fe_bytes + ring + I2S_DMA_BYTES + TASK_STACK_BYTES
    internal = internal_other + (arena.arena_bytes if arena.region == "internal" else 0)
    psram = arena.arena_bytes if arena.region == "psram" else 0
    flash_total = info.size_bytes + CODE_FLASH_ESTIMATE
    rate = EFFECTIVE_MACS_PER_S[arena.region]
    est_ms = info.macs / rate * 1000.0
    return {
        "model": {"bytes": info.size_bytes, "ops": list(info.ops), "macs": info.macs,
                  "input": asdict(info.input), "output": asdict(info.output)},
        "flash": {"model_bytes": info.size_bytes, "code_estimate_bytes": CODE_FLASH_ESTIMATE,
                  "total_estimate_bytes": flash_total,
                  "app_partition_bytes": app_partition_size(flash_total),
                  "basis": "model flatbuffer size (exact) + ≈400 KB for IDF base app, TFLM runtime, "
                           "ESP-NN and esp-dsp (estimate; run `idf.py size` for the real number)"},
        "ram": {"arena_bytes": arena.arena_bytes, "arena_region": arena.region,
                "arena_measured_host_bytes": arena.measured_bytes,
                "esp_nn_scratch_bound_bytes": arena.esp_nn_scratch_bytes,
                "arena_margin_fraction": arena.margin_fraction, "arena_budget_bytes": arena.budget_bytes,
                "frontend_bytes": fe_bytes, "audio_ring_bytes": ring, "i2s_dma_bytes": I2S_DMA_BYTES,
                "task_stacks_bytes": TASK_STACK_BYTES, "internal_total_bytes": internal,
                "psram_total_bytes": psram, "basis": arena.basis},
        "latency": {"macs": info.macs, "estimate_ms": round(est_ms, 2),
                    "range_ms": [round(est_ms / 2, 2), round(est_ms * 2, 2)],
                    "basis": f"MACs / {rate / 1e9:.2f} GMAC/s effective (esp-nn person-detection: "
                             "7.16 M MACs in 47 ms internal / 54 ms PSRAM at 240 MHz), ±2×"},
    }


def app_partition_size(app_bytes: int) -> int:
    """App partition size: the 1.5 MB default when ``app_bytes`` uses ≤ 85 % of it, otherwise
    1.25 × app rounded up to 64 KiB (app partitions must be 64 KiB aligned)."""
    if app_bytes <= 0.85 * DEFAULT_APP_PARTITION:
        return DEFAULT_APP_PARTITION
    return int(math.ceil(app_bytes * 1.25 / 0x10000) * 0x10000)


# ---------------------------------------------------------------------------------------------
# Project generation
# ---------------------------------------------------------------------------------------------

FLASH_SIZES_MB = (4, 8, 16, 32)


@dataclass(frozen=True)
class BuildOptions:
    """Board options of the generated project (all become Kconfig/sdkconfig defaults).

    i2s: "std" (I2S Philips, e.g. INMP441) or "pdm" (PDM microphone; ``pin_ws`` = PDM clock).
    pin_*: GPIO numbers (defaults: esp-tflite-micro micro_speech's S3 pins 41/42/2).
    slot: "left" | "right" (INMP441 L/R pin low → left on most boards; configurable because
    community code disagrees). bits: 32 (24-bit MSB-aligned, INMP441) or 16.
    ram: "auto" | "internal" | "psram" for the arena. arena_margin: fraction (see plan_arena).
    flash_mb: module flash size; psram_mode: "oct" (N8R8/N16R8) | "quad" (N8R2).
    console: "uart" (ESP-IDF default: UART0, the USB-UART bridge port, reads serial commands) or
    "usb" (native USB Serial/JTAG port, /dev/ttyACM0, as primary console so it reads commands too).
    """

    target: str = "esp32s3"
    i2s: str = "std"
    pin_bclk: int = 41
    pin_ws: int = 42
    pin_din: int = 2
    slot: str = "left"
    bits: int = 32
    ram: str = "auto"
    arena_margin: float = 0.10
    flash_mb: int = 8
    psram_mode: str = "oct"
    console: str = "uart"
    project_name: str = "cry_detector"

    def validate(self) -> None:
        """Raise ParameterError naming the first bad option."""
        if self.target != "esp32s3":
            raise ParameterError(f"parameter 'target': only esp32s3 is supported, got {self.target!r}")
        if self.i2s not in ("std", "pdm"):
            raise ParameterError(f"parameter 'i2s': must be std or pdm, got {self.i2s!r}")
        for n in ("pin_bclk", "pin_ws", "pin_din"):
            v = getattr(self, n)
            if not (isinstance(v, int) and 0 <= v <= 48):
                raise ParameterError(f"parameter '{n}': ESP32-S3 GPIO must be 0..48, got {v!r}")
        pins = [self.pin_ws, self.pin_din] + ([self.pin_bclk] if self.i2s == "std" else [])
        if len(set(pins)) != len(pins):
            raise ParameterError(f"I2S pins must differ, got bclk={self.pin_bclk} ws={self.pin_ws} din={self.pin_din}")
        if self.slot not in ("left", "right"):
            raise ParameterError(f"parameter 'slot': must be left or right, got {self.slot!r}")
        if self.bits not in (16, 32):
            raise ParameterError(f"parameter 'bits': must be 16 or 32, got {self.bits!r}")
        if self.i2s == "pdm" and self.bits != 16:
            raise ParameterError("parameter 'bits': PDM microphones deliver 16-bit samples (use --bits 16)")
        if self.flash_mb not in FLASH_SIZES_MB:
            raise ParameterError(f"parameter 'flash_mb': must be one of {FLASH_SIZES_MB}, got {self.flash_mb!r}")
        if self.psram_mode not in ("oct", "quad"):
            raise ParameterError(f"parameter 'psram_mode': must be oct or quad, got {self.psram_mode!r}")
        if self.console not in ("uart", "usb"):
            raise ParameterError(f"parameter 'console': must be uart or usb, got {self.console!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", self.project_name):
            raise ParameterError(f"parameter 'project_name': must be a C identifier, got {self.project_name!r}")


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


def templates_dir(target: str = "esp32s3") -> Path:
    """Folder of the jinja2 templates of ``target`` (package data of cryblock.templates)."""
    return Path(str(resources.files("cryblock.templates"))) / target


def _jinja_env(root: Path):
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                              autoescape=False)


def _frontend_context(dsp: DspParams) -> dict[str, Any]:
    t = frontend_tables(dsp)
    return {
        "version": __version__, "fe": t, "dsp": dsp,
        "hann_c": _c_list(t["hann"], 6, _cfloat),
        "mel_weights_c": _c_list(t["mel_weights"], 6, _cfloat),
        "mel_start_c": _c_list(t["mel_start"], 16),
        "mel_len_c": _c_list(t["mel_len"], 16),
        "mel_offset_c": _c_list(t["mel_offset"], 16),
        "log_offset_c": _cfloat(t["log_offset"]),
    }


#: Firmware sources that need no ESP-IDF header (plain C99), for host builds and tests.
HOST_SOURCES = ("frontend.h", "frontend.c", "postproc.h", "postproc.c", "cry_log.h", "cry_log.c")


def write_host_sources(dest: str | os.PathLike, dsp: DspParams = DspParams(), target: str = "esp32s3") -> Path:
    """Write the host-compilable firmware C sources into ``dest``: :data:`HOST_SOURCES` plus
    ``frontend_tables.h/.c`` generated from ``dsp``. Lets the C front-end / detector / log
    formatter be compiled with host gcc and compared with the Python blocks."""
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    root = templates_dir(target) / "main"
    env = _jinja_env(root)
    ctx = _frontend_context(dsp)
    for name in ("frontend_tables.h", "frontend_tables.c"):
        (d / name).write_text(env.get_template(name + ".j2").render(**ctx))
    for name in HOST_SOURCES:
        shutil.copyfile(root / name, d / name)
    return d


def template_context(info: ModelInfo, arena: ArenaPlan, params: Params, opts: BuildOptions,
                     report: dict[str, Any]) -> dict[str, Any]:
    """Every variable the templates use (rendering uses jinja2 StrictUndefined)."""
    det = params.detector
    app_part = report["flash"]["app_partition_bytes"]
    if app_part + 0x20000 > opts.flash_mb * 1024 * 1024:
        raise CryblockError(f"app needs a {app_part} byte partition, larger than the {opts.flash_mb} MB flash")
    return {
        **_frontend_context(params.dsp),
        "fw": f"cryblock-{__version__}",
        "project_name": opts.project_name,
        "ops": list(info.ops),
        "op_methods": resolver_calls(info.ops),
        "ops_csv": ",".join(info.ops),
        "model_bytes": info.size_bytes,
        "macs": info.macs,
        "input": info.input, "output": info.output,
        "input_elems": info.input.size, "output_elems": info.output.size,
        "pos_index": positive_output_index(info, params),
        "positive_label": params.learn.positive_label,
        "arena": arena, "arena_bytes": arena.arena_bytes, "arena_psram": arena.region == "psram",
        "threshold_x1000": int(round(det.threshold * 1000)),
        "vote_n": det.vote_n, "vote_m": det.vote_m,
        "hold_ms": int(round(det.hold_seconds * 1000)),
        "i2s": opts.i2s, "pin_bclk": opts.pin_bclk, "pin_ws": opts.pin_ws, "pin_din": opts.pin_din,
        "slot": opts.slot, "bits": opts.bits,
        "flash_mb": opts.flash_mb, "psram_mode": opts.psram_mode, "console": opts.console,
        "custom_partitions": app_part != DEFAULT_APP_PARTITION, "app_partition_bytes": app_part,
        "audio_ring_bytes": report["ram"]["audio_ring_bytes"],
        "input_scale_c": _cfloat(info.input.scale), "output_scale_c": _cfloat(info.output.scale),
        "report": report,
    }


def render_project(ctx: dict[str, Any], model: bytes, dest: Path, target: str = "esp32s3") -> list[Path]:
    """Render every template into ``dest`` (``*.j2`` through jinja2 StrictUndefined, other files
    copied) and write ``main/model_data.cc``. Returns the written paths (relative)."""
    root = templates_dir(target)
    env = _jinja_env(root)
    written = []
    for src in sorted(root.rglob("*")):
        if src.is_dir() or src.name == "__init__.py" or "__pycache__" in src.parts:
            continue
        rel = src.relative_to(root)
        if rel.name == "partitions.csv.j2" and not ctx["custom_partitions"]:
            continue
        out_rel = rel.with_name(rel.name[:-3]) if rel.name.endswith(".j2") else rel
        out = dest / out_rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.name.endswith(".j2"):
            out.write_text(env.get_template(rel.as_posix()).render(**ctx))
        else:
            shutil.copyfile(src, out)
        written.append(out_rel)
    (dest / "main" / "model_data.cc").write_text(model_c_source(model))
    written.append(Path("main/model_data.cc"))
    return written


MARKER = ".cryblock-project.json"


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise CryblockError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise CryblockError(f"{out}: folder exists and is not a cryblock project; choose another --out")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@dataclass
class BuildResult:
    """What :func:`generate_project` did: ``project`` folder, size ``report`` dict, model
    ``info``, arena ``plan``, ``files`` written (relative), ``idf`` status line."""

    project: Path
    report: dict[str, Any]
    info: ModelInfo
    arena: ArenaPlan
    files: list[Path]
    idf: str = "not run"


def generate_project(model_path: str | os.PathLike, out_dir: str | os.PathLike,
                     params: Params | None = None, options: BuildOptions | None = None) -> BuildResult:
    """Generate the ESP-IDF project for ``model_path`` into ``out_dir`` (atomically).

    Args:
        model_path: INT8 ``.tflite`` with int8 input and output (``model_quantized_int8_io.tflite``).
        out_dir: project folder to create; an existing cryblock project there is replaced, any
            other non-empty folder is refused.
        params: the run's parameters (DSP front-end, labels, detector defaults); defaults if None.
        options: board options (:class:`BuildOptions`).

    Returns:
        :class:`BuildResult` (``report`` also saved as ``size_report.json`` in the project).

    Raises:
        CryblockError / ParameterError: bad model (not int8 I/O, input shape ≠ patch shape,
            unsupported op), bad option, arena too large for the RAM region, output folder taken.
    """
    params = params or Params()
    opts = options or BuildOptions()
    opts.validate()
    model = read_model(model_path)
    name = Path(model_path).name
    info = inspect_model(model, name)
    for what, t in (("input", info.input), ("output", info.output)):
        if t.dtype != "int8" or t.scale <= 0:
            raise CryblockError(f"{name}: model {what} must be quantised int8 (got {t.dtype}); use the "
                                "full-integer export model_quantized_int8_io.tflite")
    frames, mels = params.dsp.patch_shape
    if info.input.size != frames * mels:
        raise CryblockError(f"{name}: model input shape {list(info.input.shape)} does not hold one "
                            f"{frames}×{mels} log-mel patch of the DSP parameters")
    positive_output_index(info, params)
    arena = plan_arena(model, opts.ram, opts.arena_margin)
    report = size_report(info, arena, params.dsp)
    ctx = template_context(info, arena, params, opts, report)

    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = render_project(ctx, model, tmp, opts.target)
        (tmp / "size_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        params.save(tmp / "params.json")
        (tmp / MARKER).write_text(json.dumps({"generator": f"cryblock {__version__}", "model": name,
                                              "options": asdict(opts)}, indent=2) + "\n")
        files += [Path("size_report.json"), Path("params.json"), Path(MARKER)]
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = dict(report, project=str(out))
    return BuildResult(out, report, info, arena, files)


def find_idf() -> str | None:
    """How ESP-IDF can be run here: ``"idf.py"`` on PATH, ``"$IDF_PATH"`` if only IDF_PATH is
    set (its export script must be sourced), or None."""
    if shutil.which("idf.py"):
        return "idf.py"
    if os.environ.get("IDF_PATH"):
        return "$IDF_PATH"
    return None


def run_idf_build(project: Path, target: str = "esp32s3") -> subprocess.CompletedProcess:
    """Run ``idf.py set-target <target> build`` in ``project`` (through ``$IDF_PATH/export.sh``
    when idf.py is not on PATH). Output goes to the terminal. Raises CryblockError when ESP-IDF
    is not available or the build fails."""
    how = find_idf()
    if how is None:
        raise CryblockError("ESP-IDF not found (idf.py not on PATH and IDF_PATH unset)")
    cmd = f"idf.py set-target {target} build"
    if how == "idf.py":
        argv = ["idf.py", "set-target", target, "build"]
    else:
        export = Path(os.environ["IDF_PATH"]) / "export.sh"
        argv = ["bash", "-c", f'. "{export}" >/dev/null && {cmd}']
    r = subprocess.run(argv, cwd=str(project))
    if r.returncode != 0:
        raise CryblockError(f"{project}: `{cmd}` failed with exit status {r.returncode}")
    return r


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`size_report` (a few lines)."""
    f, r, lat, m = report["flash"], report["ram"], report["latency"], report["model"]
    kb = lambda b: f"{b / 1024:.1f} KiB"  # noqa: E731
    lines = [
        f"model   : {m['bytes']} B, {len(m['ops'])} ops ({', '.join(m['ops'])}), {m['macs'] / 1e6:.2f} M MACs",
        f"flash   : {kb(f['total_estimate_bytes'])} estimated = model {kb(f['model_bytes'])} + code ≈{kb(f['code_estimate_bytes'])}"
        f"; app partition {kb(f['app_partition_bytes'])}",
        f"arena   : {r['arena_bytes']} B in {r['arena_region']} RAM (host measured {r['arena_measured_host_bytes']} B"
        f" + ESP-NN scratch ≤{r['esp_nn_scratch_bound_bytes']} B + {r['arena_margin_fraction']:.0%}; budget {r['arena_budget_bytes']} B)",
        f"RAM     : internal ≈{kb(r['internal_total_bytes'])} (front-end {kb(r['frontend_bytes'])}, audio ring "
        f"{kb(r['audio_ring_bytes'])}, I2S DMA {kb(r['i2s_dma_bytes'])}, stacks {kb(r['task_stacks_bytes'])})"
        + (f", PSRAM {kb(r['psram_total_bytes'])}" if r["psram_total_bytes"] else ""),
        f"latency : ≈{lat['estimate_ms']} ms per patch (range {lat['range_ms'][0]}–{lat['range_ms'][1]} ms; {lat['basis']})",
    ]
    return "\n".join(lines)
