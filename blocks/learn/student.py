"""The student: a small depthwise-separable CNN (DS-CNN) on one YAMNet log-mel patch.

The family (all ops run in TFLite Micro; CONV_2D, DEPTHWISE_CONV_2D, MAX/AVERAGE_POOL_2D,
FULLY_CONNECTED and SOFTMAX have ESP-NN kernels, while MEAN (the global average pool), RESHAPE
and LOGISTIC use TFLM's reference kernels)::

    input [96, 64, 1] (or flat [6144] → Reshape, for Edge Impulse)
    stem: Conv 3×3, stride ``stem_stride``, ``stem_channels`` ch, BN, ReLU
    optional 2×2 max/avg pool (``pool``)
    DS blocks (``blocks``: CHANNELS/STRIDE each): DW ``kernel`` (stride), BN, ReLU, PW 1×1, BN, ReLU
    GlobalAveragePooling                                           → penultimate features
    optional Dense(``head``) + ReLU
    Dense(n_out) "logits" → sigmoid (binary cry preset, n_out = 1) or softmax (general labels)

With ``blocks`` empty the blocks follow the width/depth plan of the first cryblock student
(:func:`channel_plan`: ``depth`` blocks from ``width`` channels, odd blocks stride 2 and ×2
channels; stem = ``width`` channels unless ``stem_channels`` is set). The design follows Zhang et
al., "Hello Edge: Keyword Spotting on Microcontrollers" (2017), DS-CNN. The tensor arena is
dominated by the largest pair of live activations, so the stem stride, early pooling and the
first blocks' channels decide it; ``cryblock tune`` measures the cost of candidates.

:func:`build_student` returns the inference model (probabilities), the logits model (what the
firmware's INT8 file computes) and the training model (logits, plus the embedding projection and
the auxiliary head when requested); all share the same layers. :func:`count_params` gives the
parameter count of reports; :func:`count_macs` the Keras-side MACs of the convolutions and dense
layers (reports use the INT8 graph's count, :func:`cryblock.blocks.deploy.model.inspect_model`,
which adds pools and means).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryblock.params import DspParams, LearnParams

#: Teacher embedding width (YAMNet penultimate layer, 1024-d).
TEACHER_EMBEDDING_DIM = 1024


@dataclass
class StudentModels:
    """The Keras models of one student.

    Attributes:
        model: inference model, input float32 ``[None, 96, 64, 1]`` (or ``[None, 6144]`` when
            ``flat_input``), output ``[None, n_out]`` probabilities (sigmoid or softmax).
        train_model: same layers; outputs ``[logits [None, n_out], emb [None, 1024]]`` when an
            embedding projection was requested, else ``[logits]``.
        n_out: number of output units.
        activation: ``"sigmoid"`` or ``"softmax"``.
        logits_model: same layers, output the logits ``[None, n_out]`` (before the activation):
            what the firmware's INT8 model computes (the activation then runs in float, so the
            int8 output keeps its resolution at very low and very high scores).
    """

    model: object
    train_model: object
    n_out: int
    activation: str
    logits_model: object = None


def channel_plan(width: int, depth: int) -> list[tuple[int, int]]:
    """(out_channels, stride) of each DS block of the width/depth plan: odd blocks stride 2 and
    double the channels."""
    plan, ch = [], width
    for i in range(depth):
        stride = 2 if i % 2 == 1 else 1
        if stride == 2:
            ch *= 2
        plan.append((ch, stride))
    return plan


@dataclass(frozen=True)
class Architecture:
    """One member of the student family (see the module docstring), resolved from
    :class:`~cryblock.params.LearnParams` by :func:`architecture`."""

    stem_channels: int
    stem_stride: int
    pool: str
    kernel: tuple[int, int]
    blocks: tuple[tuple[int, int], ...]  #: (out channels, stride)
    head: int

    def describe(self) -> str:
        """Compact text, e.g. ``stem 8/2, DS 16/1 32/2 64/2 128/2, k3x3``."""
        pool = f", {self.pool}pool" if self.pool != "none" else ""
        head = f", head {self.head}" if self.head else ""
        return (f"stem {self.stem_channels}/{self.stem_stride}{pool}, DS "
                + " ".join(f"{c}/{s}" for c, s in self.blocks) + f", k{self.kernel[0]}x{self.kernel[1]}{head}")


def architecture(learn: LearnParams) -> Architecture:
    """The student architecture the parameters describe (``blocks`` or the width/depth plan)."""
    from cryblock.params import parse_blocks, parse_kernel

    blocks = parse_blocks(learn.blocks) if learn.blocks else tuple(channel_plan(learn.width, learn.depth))
    return Architecture(learn.stem_channels or learn.width, learn.stem_stride, learn.pool, parse_kernel(learn.kernel),
                        tuple(blocks), learn.head)


def build_student(learn: LearnParams = LearnParams(), dsp: DspParams = DspParams(), *, n_out: int | None = None,
                  embedding_projection: bool = False, aux_outputs: int = 0, flat_input: bool = False,
                  seed: int | None = None) -> StudentModels:
    """Build the DS-CNN student.

    Args:
        learn: architecture fields, preset and labels are read from it.
        dsp: patch shape (frames × mel bands, default 96 × 64).
        n_out: output units; default 1 (sigmoid) for preset "cry", ``len(labels)`` (softmax)
            for preset "general".
        embedding_projection: add a Dense(1024) projection of the penultimate features to the
            training model (SEA-style embedding-approximation loss); not part of ``model``.
        aux_outputs: add an auxiliary Dense(aux_outputs) head (logits of the teacher's confusable
            classes) to the training model; not part of ``model``, so it is dropped at export.
        flat_input: input is a flat ``[frames·bands]`` vector (Edge Impulse layout), reshaped
            inside the model.
        seed: weight-initialisation seed (default ``learn.seed``).

    Returns:
        :class:`StudentModels`; ``train_model`` outputs ``[logits, (emb), (aux)]`` in that order.
    """
    import keras
    from keras import layers

    arch = architecture(learn)
    seed = learn.seed if seed is None else seed
    keras.utils.set_random_seed(seed)
    if n_out is None:
        n_out = 1 if learn.preset == "cry" else len(learn.labels)
    activation = "sigmoid" if n_out == 1 else "softmax"
    frames, bands = dsp.patch_shape
    if flat_input:
        inp = keras.Input((frames * bands,), name="features")
        x = layers.Reshape((frames, bands, 1))(inp)
    else:
        inp = keras.Input((frames, bands, 1), name="patch")
        x = inp
    x = layers.Conv2D(arch.stem_channels, 3, strides=arch.stem_stride, padding="same", use_bias=False, name="conv0")(x)
    x = layers.BatchNormalization(momentum=0.9, name="conv0_bn")(x)
    x = layers.ReLU(name="conv0_relu")(x)
    if arch.pool == "max":
        x = layers.MaxPooling2D(2, padding="same", name="pool0")(x)
    elif arch.pool == "avg":
        x = layers.AveragePooling2D(2, padding="same", name="pool0")(x)
    for i, (ch, stride) in enumerate(arch.blocks):
        x = layers.DepthwiseConv2D(arch.kernel, strides=stride, padding="same", use_bias=False, name=f"ds{i}_dw")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"ds{i}_dw_bn")(x)
        x = layers.ReLU(name=f"ds{i}_dw_relu")(x)
        x = layers.Conv2D(ch, 1, use_bias=False, name=f"ds{i}_pw")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"ds{i}_pw_bn")(x)
        x = layers.ReLU(name=f"ds{i}_pw_relu")(x)
    feat = layers.GlobalAveragePooling2D(name="pool")(x)
    if arch.head:
        feat = layers.Dense(arch.head, activation="relu", name="hidden")(feat)
    logits = layers.Dense(n_out, name="logits")(feat)
    probs = layers.Activation(activation, name="probs")(logits)
    model = keras.Model(inp, probs, name="cryblock_student")
    outs = [logits]
    if embedding_projection:
        outs.append(layers.Dense(TEACHER_EMBEDDING_DIM, name="emb_proj")(feat))
    if aux_outputs:
        outs.append(layers.Dense(aux_outputs, name="aux_logits")(feat))
    train_model = keras.Model(inp, outs, name="cryblock_student_train")
    return StudentModels(model, train_model, n_out, activation, keras.Model(inp, logits, name="cryblock_student_logits"))


def count_params(model) -> int:
    """Number of weights of ``model`` (trainable + BatchNorm statistics, before BN folding)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def count_macs(model) -> int:
    """Multiply-accumulates of one inference, from the Keras layers.

    Counts Conv2D (H_out·W_out·k_h·k_w·C_in·C_out), DepthwiseConv2D (H_out·W_out·k_h·k_w·C_in·mult)
    and Dense (in·out). BatchNorm (folded into the convolutions by the converter), ReLU,
    pooling and the output activation are not counted.
    """
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, _ = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += h * w * kh * kw * c_in * layer.depth_multiplier
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += h * w * kh * kw * c_in * c_out
        elif isinstance(layer, layers.Dense):
            total += int(layer.input.shape[-1]) * int(layer.units)
    return int(total)
