"""Tensor arena sizing for TFLite Micro on the ESP32-S3.

:func:`measure_arena` measures what the TFLM interpreter allocates for a model on the host
(reference kernels); :func:`esp_nn_scratch_bound` adds the largest scratch buffer ESP-NN's
optimised S3 kernels request; :func:`plan_arena` combines them with a margin and picks the RAM
region (:data:`RAM_BUDGETS`).
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass

from cryblock.errors import CryblockError, ParameterError

from .model import Layer, layers


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


def _conv_scratch_s3_v120(h, w, cin, kh, kw, cout, ph, pw, sh, sw) -> int:
    # esp-nn 1.2.0 esp_nn_get_conv_scratch_size_esp32s3 (esp_nn_conv_esp32s3.c)
    if kh == 1 and kw == 1 and ph == 0 and pw == 0 and sh == 1 and sw == 1:
        nc = (cin + 7) & ~7
        transpose = 0 if w * h < 8 else 2 * 8 * nc
        inp = w * h * nc if cin % 8 else 0
        return inp + nc * cout + transpose + 32
    nc = (cin + 15) & ~15
    inp = (w + 2 * pw) * (h + 2 * ph) * cin if (ph or pw) else 0
    return inp + kh * kw * nc * cout + 32 + 4 * cout


def _conv_scratch_s3_v123(h, w, cin, kh, kw, cout, oh, ow, ph, pw, sh, sw) -> int:
    # esp-nn 1.2.3: 64 B alignment margin, an im2col path for narrow filter rows, filter-row
    # alignment and a bottom/right boundary copy (the 1.2.1 padding fix)
    align = 64
    if kh == 1 and kw == 1 and ph == 0 and pw == 0 and sh == 1 and sw == 1:
        nc = (cin + 7) & ~7
        transpose = 0 if w * h < 8 else 2 * 8 * nc
        inp = w * h * nc if cin % 8 else 0
        return inp + nc * cout + transpose + align
    row, window = kw * cin, kh * kw * cin
    if row < 16 <= window:
        wa = (window + 15) & ~15
        return cout * 4 + 16 + cout * wa + 16 + wa + align
    nc = (cin + 15) & ~15
    inp = (w + 2 * pw) * (h + 2 * ph) * cin if (ph or pw) else 0
    filt = kh * kw * nc * cout
    filt_align = ((row + 15) // 16) * 16 * kh * cout
    pad_r, pad_b = max(0, ow * sw + kw - 1 - w), max(0, oh * sh + kh - 1 - h)
    boundary = (w + pad_r) * (h + pad_b) * cin if (pad_r or pad_b) else 0
    return inp + filt + filt_align + boundary + align + 4 * cout


def _conv_scratch_s3(h, w, cin, kh, kw, cout, oh, ow, ph, pw, sh, sw) -> int:
    """Scratch of an int8 CONV_2D in ESP-NN's S3 kernel: the larger of the esp-nn 1.2.0 and 1.2.3
    requests (idf_component.yml admits esp-nn >= 1.2.1; both bound what a build resolves)."""
    return max(_conv_scratch_s3_v120(h, w, cin, kh, kw, cout, ph, pw, sh, sw),
               _conv_scratch_s3_v123(h, w, cin, kh, kw, cout, oh, ow, ph, pw, sh, sw))


def _dw_pads(h, w, kh, kw, oh, ow, ph, pw, sh, sw) -> tuple[int, int]:
    # the S3 3x3 depthwise kernels copy the input padded on both sides, or up to the output's reach
    if ph or pw:
        return 2 * pw, 2 * ph
    return ow * sw + kw - 1 - w, oh * sh + kh - 1 - h


def _dwconv_scratch_s3_v120(h, w, c, kh, kw, mult, oh, ow, ph, pw, sh, sw) -> int:
    # esp-nn 1.2.0 esp_nn_get_depthwise_conv_scratch_size_esp32s3 (esp_nn_depthwise_conv_s8_esp32s3.c)
    filt = kh * kw * c * mult
    if mult == 1 and c % 8 == 0 and kh == 3 and kw == 3:
        if c % 16 == 0:
            pad_w, pad_h = _dw_pads(h, w, kh, kw, oh, ow, ph, pw, sh, sw)
            if pad_w or pad_h:
                return (w + pad_w) * (h + pad_h) * c + filt + 16
            return filt + 16
        return 2 * (filt + h * w * c) + 16
    if mult % 4 == 0:
        return 2 * (filt + h * w * c) + 16
    return 32


def _dwconv_scratch_s3_v123(h, w, c, kh, kw, mult, oh, ow, ph, pw, sh, sw) -> int:
    # esp-nn 1.2.3: tiled variants above 40 KiB / 48 KiB, channel padding to 16 (≥ 12 channels)
    # or to 8 (other shapes with more than 3 channels)
    filt = kh * kw * c * mult
    if mult == 1 and c % 8 == 0:
        if kh == 3 and kw == 3:
            if c % 16 == 0:
                pad_w, pad_h = _dw_pads(h, w, kh, kw, oh, ow, ph, pw, sh, sw)
                if pad_w or pad_h:
                    full = (w + pad_w) * (h + pad_h) * c
                    return filt + (full if full <= 40 * 1024 else (w + pad_w) * kh * c) + 16
                return filt + 16
            if c >= 12:
                nc = (c + 15) & ~15
                tw = 2 * pw + max(0, ow * sw + 2 - w)
                th = 2 * ph + max(0, oh * sh + 2 - h)
                return 9 * nc + (w + tw) * (h + th) * nc + ow * oh * nc + 64
            return 2 * (filt + h * w * c) + 32
        s16 = 2 * (filt + h * w * c)
        return s16 + 32 if s16 <= 48 * 1024 else 2 * filt + 2 * w * kh * c + 32
    if mult == 1 and c > 3:
        nc = (c + 7) & ~7
        up = lambda n: (n + 15) & ~15  # noqa: E731 - 16-byte alignment of each region
        in_start = up(2 * kh * kw * nc)
        out_start = up(in_start + 2 * h * w * nc)
        bias_start = up(out_start + ow * oh * nc)
        return bias_start + 3 * 4 * nc + 16
    if mult % 4 == 0:
        return 2 * (filt + h * w * c) + 32
    return 32


def _dwconv_scratch_s3(h, w, c, kh, kw, mult, oh, ow, ph, pw, sh, sw) -> int:
    """Scratch of an int8 DEPTHWISE_CONV_2D in ESP-NN's S3 kernel: the larger of the esp-nn 1.2.0
    and 1.2.3 requests."""
    return max(_dwconv_scratch_s3_v120(h, w, c, kh, kw, mult, oh, ow, ph, pw, sh, sw),
               _dwconv_scratch_s3_v123(h, w, c, kh, kw, mult, oh, ow, ph, pw, sh, sw))


def _dwconv_scratch_s3_asymmetric(h, w, c, oh, ow, sh, sw, pad) -> int:
    """What esp-nn ≤ 1.2.3's S3 3×3 depthwise kernel really uses for asymmetric SAME padding with
    channels % 16 == 0: it needs symmetric padding for its fast path and falls through to the
    ``channels >= 12`` path, whose scratch the sizing function does not report (esp-nn #30, fixed
    by PR #37)."""
    top, bottom, left, right = pad
    if (top, left) == (bottom, right):
        return 0
    nc = (c + 15) & ~15
    tw = 2 * left + max(0, ow * sw + 2 - w)
    th = 2 * top + max(0, oh * sh + 2 - h)
    return 9 * nc + (w + tw) * (h + th) * nc + ow * oh * nc + 64


def layer_scratch_s3(layer: Layer) -> int:
    """ESP-NN S3 scratch bytes one conv or depthwise layer requests (0 for other layers): the
    largest of the esp-nn 1.2.0 and 1.2.3 requests and, for esp-nn #30's shapes, of what the
    depthwise kernel really writes."""
    if layer.op not in ("CONV_2D", "DEPTHWISE_CONV_2D") or len(layer.input) != 4 or len(layer.filter) != 4:
        return 0
    _, h, w, cin = layer.input
    _, oh, ow, cout = layer.output
    kh, kw = layer.filter[1], layer.filter[2]
    sh, sw = layer.stride
    ph, pw = layer.pad[0], layer.pad[2]  # TFLite passes only the leading pad to the kernels
    if layer.op == "CONV_2D":
        return _conv_scratch_s3(h, w, cin, kh, kw, cout, oh, ow, ph, pw, sh, sw)
    mult = max(1, cout // max(cin, 1))
    need = _dwconv_scratch_s3(h, w, cin, kh, kw, mult, oh, ow, ph, pw, sh, sw)
    if mult == 1 and (kh, kw) == (3, 3) and cin % 16 == 0:
        need = max(need, _dwconv_scratch_s3_asymmetric(h, w, cin, oh, ow, sh, sw, layer.pad))
    return need


def esp_nn_scratch_bound(model: bytes) -> int:
    """Largest ESP-NN scratch buffer (bytes) any conv / depthwise op of ``model`` requests on the
    ESP32-S3 (:func:`layer_scratch_s3`).

    Mirrors esp-nn's ``esp_nn_get_conv_scratch_size_esp32s3`` and
    ``esp_nn_get_depthwise_conv_scratch_size_esp32s3`` of esp-nn 1.2.0 and 1.2.3 and takes the
    larger (aligned/padded int8 copies of filter and input, int16 copies for some depthwise
    shapes, boundary copies), with TFLM's SAME-padding rule, and what the depthwise kernel
    really uses where esp-nn #30 under-reports it.
    The host TFLM interpreter uses reference kernels that request none of this; TFLM plans
    scratch buffers like tensors living for one op, so the device arena grows by at most the
    largest one (plus alignment, covered by the margin of :func:`plan_arena`).
    """
    return max((layer_scratch_s3(layer) for layer in layers(model)), default=0)


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
               measured: int | None = None, target: str = "esp32s3") -> ArenaPlan:
    """Size the tensor arena and choose its RAM region.

    Args:
        model: ``.tflite`` bytes.
        ram: "internal", "psram" or "auto" (internal when it fits, else PSRAM).
        margin: extra fraction of the measured arena (default 10 %), on top of the ESP-NN
            scratch bound, for kernel/allocator differences between host and device.
        measured: host measurement (bytes) if already known, else :func:`measure_arena`.
        target: "esp32s3" (ESP-NN's S3 kernels request scratch) or "linux" (ESP-NN's portable C
            kernels request none).

    Raises:
        ParameterError: bad ``ram`` / ``margin``.
        CryblockError: the arena does not fit the chosen region's budget (:data:`RAM_BUDGETS`).
    """
    if ram not in ("auto", "internal", "psram"):
        raise ParameterError(f"parameter 'ram': must be auto, internal or psram, got {ram!r}")
    if not (0 <= margin <= 4):
        raise ParameterError(f"parameter 'arena_margin': must be in [0, 4], got {margin}")
    meas = measure_arena(model) if measured is None else int(measured)
    scratch = esp_nn_scratch_bound(model) if target == "esp32s3" else 0
    arena = int(math.ceil((meas + scratch + margin * meas) / 16.0) * 16)
    scratch_basis = ("largest ESP-NN S3 scratch buffer (esp-nn esp_nn_get_*conv_scratch_size_esp32s3)"
                     if target == "esp32s3" else "no scratch (ESP-NN's portable C kernels on linux)")
    basis = (f"host TFLM RecordingMicroAllocator total + {scratch_basis} + {margin:.0%} margin, "
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
