"""esp-nn, the ESP32-S3 kernels under TensorFlow Lite Micro: the versions cryblock was verified
against, and the known upstream defects that give silently wrong outputs, checked against a
model's layers.

Sources (shared/docs/false-alerts-and-upstream-defects.md, and the esp-nn issue tracker):

* #31 (fixed in 1.2.1): the S3 convolution dropped the bottom/right part of asymmetric SAME
  padding — the component manifest requires esp-nn ≥ 1.2.1 (:data:`REQUIRED`).
* #34 (fix ships in 1.2.6): per-channel FULLY_CONNECTED on the S3 corrupts its accumulator when
  its input is not 16-byte aligned. TFLite Micro and the firmware's arena align tensors to 16
  bytes, so the rows of an input of several rows are the exposed case.
* #23 (open): outputs of the S3 general convolution (every CONV_2D but 1×1 stride-1 unpadded)
  saturating at −128 on some models, against the reference C kernels.
* #30 (fixed by PR #37, after 1.2.3): a 3×3 depthwise convolution with channels % 16 == 0 and
  asymmetric SAME padding needs more scratch than esp-nn reports; the arena plan reserves it
  (:func:`cryblock.blocks.deploy.arena.layer_scratch_s3`).

None of these can be checked without the chip: ``cryblock emulate --port`` compares a board's
int8 outputs with Python patch by patch (README, *Firmware, built and run*).
"""
from __future__ import annotations

from .model import Layer, layers

#: The esp-nn versions the generated manifest admits (``main/idf_component.yml``).
REQUIRED = ">=1.2.1"
#: What cryblock was verified against, and how.
VERIFIED = "1.2.3: its C kernels against Python (linux build), its S3 kernels only in QEMU, not on a board"


def _conv_desc(layer: Layer) -> str:
    kh, kw = layer.filter[1], layer.filter[2]
    return (f"{layer.op} {kh}×{kw} stride {layer.stride[0]} {list(layer.input)}→{list(layer.output)}")


def known_defects(model: bytes | list[Layer]) -> list[tuple[str, str]]:
    """``(level, text)`` per layer of ``model`` (its bytes, or its :func:`~.model.layers`) in the
    shape class of a known esp-nn S3 defect (above): what it is, whether it is fixed, what to do.
    level: "warning" (the output may be wrong) or "note" (cryblock works around it)."""
    out = []
    for layer in (layers(model) if isinstance(model, (bytes, bytearray)) else model):
        if layer.op == "FULLY_CONNECTED" and layer.per_channel and len(layer.input) >= 2:
            rows, row_len = int(layer.input[0]), int(layer.input[-1])
            if rows > 1 and row_len % 16:
                out.append(("warning", f"esp-nn #34 (fixed in 1.2.6): per-channel FULLY_CONNECTED {list(layer.input)}: "
                                       f"rows of {row_len} int8 are not 16-byte aligned, which corrupts results with "
                                       "esp-nn < 1.2.6"))
        elif layer.op == "CONV_2D" and len(layer.filter) == 4:
            fast = layer.filter[1:3] == (1, 1) and layer.stride == (1, 1) and not any(layer.pad)
            if not fast:
                out.append(("warning", f"esp-nn #23 (open): {_conv_desc(layer)} runs the general S3 convolution, "
                                       "whose outputs are reported to saturate at -128 on some models; compare a "
                                       "board with Python (cryblock emulate --port)"))
        elif layer.op == "DEPTHWISE_CONV_2D" and len(layer.filter) == 4:
            top, bottom, left, right = layer.pad
            if layer.filter[1:3] == (3, 3) and layer.input[3] % 16 == 0 and (top, left) != (bottom, right) \
                    and layer.output[3] == layer.input[3]:
                out.append(("note", f"esp-nn #30 (fixed after 1.2.3): {_conv_desc(layer)} has asymmetric SAME "
                                    "padding and needs more scratch than esp-nn <= 1.2.3 reports; the arena plan "
                                    "reserves it"))
    return out


def statement(target: str) -> str:
    """The esp-nn line of the build report."""
    if target == "linux":
        return f"manifest requires {REQUIRED}; the linux target runs its portable C kernels; verified with {VERIFIED}"
    return f"manifest requires {REQUIRED} (1.2.0 pads wrongly, #31); verified with {VERIFIED}"
