"""Edge Impulse custom processing block: ``generate_features`` for YAMNet log-mel patches.

Contract (edgeimpulse/example-custom-processing-block-python, see
shared/docs/edge-impulse-block-conventions.md):

* Studio sends one *window* of raw data per call: ``raw_data`` is a flat array interleaved by
  axis (``[n · len(axes)]``), ``sampling_freq`` in Hz, and the block's parameters (the ``param``
  names of ``parameters.json``) as keyword arguments.
* **Scale.** Edge Impulse delivers audio samples on the int16 scale (values in
  [-32768, 32767], as the microphone/WAV ingestion stores them). This block divides by 32768
  to get YAMNet's [-1, 1) waveform. Values outside [-32768, 32768] are rejected (wrong scale),
  and so is a window of non-integer values all within [-1, 1] (float audio sent unscaled, which
  would otherwise pass as near-silence).
  Several axes (e.g. stereo) are averaged to mono. The window is resampled to
  ``sample-rate`` (16 kHz) with soxr when ``sampling_freq`` differs.
* **Output.** ``features`` is the float32 patches ``[n_patches, 96, 64]`` flattened in C order
  (frame-major: 64 mel values of frame 0, then frame 1, …). ``output_config`` is
  ``{"type": "spectrogram", "shape": {"width": 64, "height": 96 · n_patches}}``: one column
  per mel band, one row per STFT frame, patches stacked along the height. With the
  recommended impulse window of **975 ms** (15600 samples at 16 kHz = exactly one YAMNet
  patch) n_patches = 1, so a learning block reshapes each example to ``[96, 64, 1]``
  (the cryblock student's input). A longer window gives ``1 + ceil((n - 15600) / 7680)``
  patches (YAMNet padding) and a learning block must reshape to ``[n_patches·96, 64, 1]`` or
  split into ``[n_patches, 96, 64, 1]``. Every window of an impulse has the same length, so
  n_patches is the same for all examples.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
from importlib import resources
from typing import Any

import numpy as np

from cryblock.errors import AudioError, ParameterError
from cryblock.audio import prepare_waveform
from cryblock.params import DspParams

from .features import waveform_to_patches

#: Full-scale value of the int16 samples Edge Impulse sends for audio.
INT16_FULL_SCALE = 32768.0

_FIELDS = {f.name: f for f in dataclasses.fields(DspParams)}


def load_parameters_json() -> dict[str, Any]:
    """The block's ``parameters.json`` (package copy ``blocks/dsp/parameters.json``; the repo's
    top-level ``parameters.json`` is the same file, checked by tests/test_dsp_server.py)."""
    text = resources.files("cryblock.blocks.dsp").joinpath("parameters.json").read_text(encoding="utf-8")
    return json.loads(text)


def dsp_params_from_block(params: dict[str, Any]) -> DspParams:
    """Build :class:`DspParams` from Edge Impulse block parameters.

    Args:
        params: ``{param_name: value}``; names as in parameters.json (``mel-bands``) or with
            underscores (``mel_bands``); values native JSON or strings. Missing → YAMNet default.

    Raises:
        ParameterError: unknown name, value of the wrong type, or out of range.
    """
    kw: dict[str, Any] = {}
    for key, value in params.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            raise ParameterError(f"unknown block parameter {key!r} (known: "
                                 f"{', '.join(n.replace('_', '-') for n in _FIELDS)})")
        want = _FIELDS[name].type
        try:
            if want in ("int", int):
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                kw[name] = int(f)
            else:
                kw[name] = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"block parameter {key!r}: expected a number, got {value!r}") from None
        if not math.isfinite(kw[name]):
            raise ParameterError(f"block parameter {key!r}: must be finite, got {value!r}")
    return DspParams(**kw)


def raw_to_waveform(raw_data: Any, axes: Any, sampling_freq: Any, dsp: DspParams,
                    source: str = "raw_data") -> np.ndarray:
    """Edge Impulse raw audio → float32 mono waveform at ``dsp.sample_rate``.

    Args:
        raw_data: flat numbers ``[n · len(axes)]`` on the int16 scale, interleaved by axis.
        axes: axis names (``["audio"]``); None or empty means one axis.
        sampling_freq: rate of ``raw_data`` in Hz.

    Returns:
        float32 ``[m]`` in [-1, 1).

    Raises:
        AudioError: not numeric, empty, NaN/Inf, all zero, not int16-scale (beyond ±32768, or
            non-integers all within ±1), length not a multiple of the axis count, bad rate.
    """
    if isinstance(raw_data, (list, tuple)):  # JSON: numbers only (np.asarray would turn "1" and true into 1.0)
        i = next((i for i, v in enumerate(raw_data) if type(v) not in (int, float)), -1)
        if i >= 0:
            bad = raw_data[i]
            raise AudioError(f"{source}: must be a flat list of numbers, found {type(bad).__name__} {str(bad)[:20]!r}")
    elif isinstance(raw_data, np.ndarray) and raw_data.dtype.kind not in "iuf":
        raise AudioError(f"{source}: must hold numbers, got dtype {raw_data.dtype}")
    try:
        x = np.asarray(raw_data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise AudioError(f"{source}: must be a flat list of numbers") from None
    if x.ndim != 1:
        raise AudioError(f"{source}: must be a flat list of numbers, got shape {x.shape}")
    n_axes = 1 if axes is None else max(1, len(np.atleast_1d(np.asarray(axes, dtype=object))))
    if x.size % n_axes:
        raise AudioError(f"{source}: {x.size} values is not a multiple of {n_axes} axes")
    try:
        if isinstance(sampling_freq, bool):
            raise TypeError
        rate = float(sampling_freq)
    except (TypeError, ValueError, OverflowError):
        raise AudioError(f"{source}: sampling_freq must be a number, got {sampling_freq!r}") from None
    if x.size and np.isfinite(x).all():
        peak = float(np.abs(x).max())
        if peak > INT16_FULL_SCALE:
            raise AudioError(f"{source}: sample magnitude {peak:g} exceeds the int16 scale "
                             f"(Edge Impulse audio must be in [-32768, 32767])")
        if 0 < peak <= 1.0 and not np.all(x == np.round(x)):
            raise AudioError(f"{source}: samples look like [-1, 1] float audio (peak {peak:g}); "
                             f"Edge Impulse audio is expected on the int16 scale [-32768, 32767]")
    # [n, axes]: prepare_waveform averages the axes to mono
    return prepare_waveform((x / INT16_FULL_SCALE).reshape(-1, n_axes), rate, dsp.sample_rate, source=source)


def _draw_patches_png(patches: np.ndarray, dsp: DspParams) -> str:
    """Base64 PNG of the log-mel patches stacked in time (x: seconds, y: mel band)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    img = patches.reshape(-1, patches.shape[-1]).T  # [mel, frames]
    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    secs = img.shape[1] * dsp.stft_hop_seconds
    im = ax.imshow(img, origin="lower", aspect="auto", cmap="magma", extent=(0, secs, 0, img.shape[0]))
    for k in range(1, len(patches)):  # boundaries between concatenated patches
        ax.axvline(k * patches.shape[1] * dsp.stft_hop_seconds, color="white", lw=0.8)
    ax.set_xlabel("frame time (s), patches concatenated")
    ax.set_ylabel("mel band")
    fig.colorbar(im, ax=ax, label="log(mel + offset)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def generate_features(implementation_version: int, draw_graphs: bool, raw_data: Any, axes: Any,
                      sampling_freq: float, **params: Any) -> dict[str, Any]:
    """Edge Impulse entry point: one window of raw audio → flattened YAMNet log-mel patches.

    Args:
        implementation_version: must be 1 (``info.latestImplementationVersion``).
        draw_graphs: also return a PNG of the log-mel image.
        raw_data: flat int16-scale samples (see module docstring), interleaved by axis.
        axes: axis names.
        sampling_freq: Hz.
        **params: block parameters (parameters.json ``param`` names, dashes or underscores).

    Returns:
        ``{"features": float32 [n_patches·96·64], "graphs": [...], "labels": [],
        "fft_used": [], "output_config": {"type": "spectrogram", "shape": {"width": 64,
        "height": 96·n_patches}}}``.

    Raises:
        CryblockError (AudioError / ParameterError): bad samples or parameters, one line.
    """
    version = implementation_version
    if isinstance(version, str) and version.strip().isdigit():
        version = int(version)
    if type(version) is not int:  # 1.5, true, [1] are not versions
        raise ParameterError(f"implementation_version must be an integer, got {str(implementation_version)[:20]!r}")
    if version != 1:
        raise ParameterError(f"implementation_version {version} is not supported (only 1)")
    dsp = dsp_params_from_block(params)
    x = raw_to_waveform(raw_data, axes, sampling_freq, dsp)
    patches = waveform_to_patches(x, dsp)
    graphs = []
    if draw_graphs:
        graphs.append({"name": "Log-mel patches", "image": _draw_patches_png(patches, dsp),
                       "imageMimeType": "image/png", "type": "image"})
    return {
        "features": patches.reshape(-1),
        "graphs": graphs,
        "labels": [],
        "fft_used": [],
        "output_config": {"type": "spectrogram",
                          "shape": {"width": int(patches.shape[2]), "height": int(patches.shape[0] * patches.shape[1])}},
    }


__all__ = ["generate_features", "dsp_params_from_block", "raw_to_waveform", "load_parameters_json",
           "INT16_FULL_SCALE"]
