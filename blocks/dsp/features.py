"""YAMNet-compatible log-mel patches in NumPy.

A NumPy port of YAMNet's ``features.py`` (tensorflow/models research/audioset/yamnet):

    waveform (16 kHz mono float32)
      → pad like YAMNet's ``pad_waveform`` (≥ one patch, then whole patch hops)
      → frames of 400 samples, hop 160, periodic Hann window, zero-padded to FFT 512
      → magnitude |rfft|  [n_frames, 257]
      → HTK mel matrix 64 bands 125–7500 Hz (``tf.signal.linear_to_mel_weight_matrix``)
      → log(mel + 0.001)  [n_frames, 64]
      → patches of 96 frames, hop 48 frames (0.48 s)  [n_patches, 96, 64]

All arithmetic is float64 (output float32). It matches an exact float64 evaluation of YAMNet's
front-end to ≤ 3e-7 log units and ``tf.signal.stft`` + ``tf.signal.linear_to_mel_weight_matrix``
(blocks/dsp/tf_reference.py) to ≤ 1e-4 on every bin with log-mel ≥ −3 (99.99 % of all
elements of full-band recordings). The rest of the difference is TF's own float32 rounding
(FFT and mel matrix, the latter up to 8.2e-6 off its float64 value), which reaches 2.6e-4 in
near-silent bins of full-band clips and 5.5e-3 in 8 kHz-sourced clips (empty above 4 kHz); the NumPy
output is never further from TF than TF is from the exact value (+1e-4). Measured in
tests/test_dsp.py on 20 recordings covering every source of the shared data.

It differs from the ``Identity_1`` log-mel output of the shared ``yamnet.tflite``, whose
front-end uses int8-quantised DFT matrices: on the first 0.975 s window of ESC-10
``baby_cry/1-187207-A.ogg`` mean |Δ| = 0.19 log units, max 5.6 (on quiet bins); other clips
measured 0.02–0.05 mean. The float reference here is what YAMNet's published weights were
trained on.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Iterator

import numpy as np

from cryblock.errors import AudioError
from cryblock.params import DspParams

# HTK mel scale constants (tensorflow/python/ops/signal/mel_ops.py).
_MEL_BREAK_FREQUENCY_HERTZ = 700.0
_MEL_HIGH_FREQUENCY_Q = 1127.0


def hertz_to_mel(freq_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel: ``1127 · ln(1 + f / 700)`` (mel_ops.py constants). Input Hz, output mel."""
    return _MEL_HIGH_FREQUENCY_Q * np.log1p(np.asarray(freq_hz, dtype=np.float64) / _MEL_BREAK_FREQUENCY_HERTZ)


@lru_cache(maxsize=8)
def _mel_matrix_cached(num_mel_bins: int, num_spectrogram_bins: int, sample_rate: float,
                       lower_edge_hertz: float, upper_edge_hertz: float) -> np.ndarray:
    nyquist = sample_rate / 2.0
    bands_to_zero = 1  # "HTK excludes the spectrogram DC bin." (mel_ops.py)
    linear_freqs = np.linspace(0.0, nyquist, num_spectrogram_bins)[bands_to_zero:]
    spec_mel = hertz_to_mel(linear_freqs)[:, None]
    edges = np.linspace(hertz_to_mel(lower_edge_hertz), hertz_to_mel(upper_edge_hertz), num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    lower_slopes = (spec_mel - lower) / (center - lower)
    upper_slopes = (upper - spec_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    weights = np.concatenate([np.zeros((bands_to_zero, num_mel_bins)), weights], axis=0)
    out = weights.astype(np.float32)
    out.setflags(write=False)
    return out


def mel_matrix(params: DspParams = DspParams()) -> np.ndarray:
    """HTK linear→mel weight matrix: the formula of ``tf.signal.linear_to_mel_weight_matrix``
    evaluated in float64 and rounded to float32. TF evaluates it in float32, so TF's matrix is
    up to 8.2e-6 away from this one (and from the float64 value); same support.

    Returns:
        float32 ``[num_spectrogram_bins, mel_bands]`` = ``[257, 64]`` (read-only). Row 0
        (DC) is zero; triangles are linear in HTK mel with no area normalisation.
    """
    return _mel_matrix_cached(params.mel_bands, params.num_spectrogram_bins, float(params.sample_rate),
                              float(params.mel_min_hz), float(params.mel_max_hz))


@lru_cache(maxsize=8)
def _mel_matrix64(params: DspParams) -> np.ndarray:
    return mel_matrix(params).astype(np.float64)


@lru_cache(maxsize=8)
def _hann_cached(n: int) -> np.ndarray:
    # tf.signal.hann_window(periodic=True) only makes *even* lengths periodic (denominator n);
    # odd lengths get the symmetric window (denominator n - 1), as in TF's _raised_cosine_window.
    # Length 1 is [1.0] in TF.
    denom = n if n % 2 == 0 else n - 1
    w = np.ones(1) if n == 1 else 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / denom)
    w.setflags(write=False)
    return w


def periodic_hann(n: int) -> np.ndarray:
    """Hann window exactly as ``tf.signal.hann_window(n, periodic=True)``: ``0.5 - 0.5·cos(2πk/n)``,
    k = 0..n-1, for even n (YAMNet: n = 400); TF uses the symmetric form (denominator n - 1)
    for odd n, and so does this. Returns float64 ``[n]`` (read-only; cast as needed)."""
    return _hann_cached(int(n))


def padded_length(n: int, params: DspParams = DspParams()) -> int:
    """Samples after YAMNet's ``pad_waveform``: at least one patch (15600), then a whole number of
    patch hops (7680) beyond it, so every sample is covered."""
    min_n = params.patch_samples
    extra = max(int(n), min_n) - min_n
    return min_n + (-(-extra // params.patch_hop_samples)) * params.patch_hop_samples


def pad_waveform(waveform: np.ndarray, params: DspParams = DspParams()) -> np.ndarray:
    """Zero-pad like YAMNet's ``features.pad_waveform`` to :func:`padded_length` samples, so a clip
    shorter than one patch still yields one patch. Input/output float32 ``[n]`` at
    ``params.sample_rate``."""
    x = np.asarray(waveform, dtype=np.float32)
    total = padded_length(x.shape[0], params)
    if total == x.shape[0]:
        return x
    return np.concatenate([x, np.zeros(total - x.shape[0], dtype=np.float32)])


def log_mel_spectrogram(waveform: np.ndarray, params: DspParams = DspParams()) -> np.ndarray:
    """Log-mel spectrogram of a (16 kHz, mono) waveform, no padding.

    Args:
        waveform: float32 ``[n]`` at ``params.sample_rate``, n ≥ one window (400 samples).

    Returns:
        float32 ``[n_frames, mel_bands]`` with n_frames = 1 + (n - 400) // 160,
        values ``log(|STFT|·M + 0.001)`` (natural log).

    Raises:
        AudioError: waveform shorter than one STFT window or not 1-D.
    """
    x = np.ascontiguousarray(waveform, dtype=np.float64)
    win, hop, nfft = params.window_length_samples, params.hop_length_samples, params.fft_length
    if x.ndim != 1:
        raise AudioError(f"waveform must be 1-D mono, got shape {x.shape}")
    if x.shape[0] < win:
        raise AudioError(f"waveform has {x.shape[0]} samples, fewer than one {win}-sample window")
    n_frames = 1 + (x.shape[0] - win) // hop
    # float64 internally: the float32 FFT noise floor (≈1e-7 of full scale) is several 1e-4 log
    # units in near-silent bands (e.g. above 4 kHz in 8 kHz-sourced audio).
    frames = np.lib.stride_tricks.as_strided(x, shape=(n_frames, win), strides=(hop * 8, 8), writeable=False)
    window, mel_matrix = periodic_hann(win), _mel_matrix64(params)
    out = np.empty((n_frames, params.mel_bands), np.float32)
    step = max(1, _FFT_CHUNK_VALUES // nfft)  # frames per FFT call: memory bounded by the chunk
    for a in range(0, n_frames, step):
        spec = np.abs(np.fft.rfft(frames[a:a + step] * window, n=nfft, axis=1))
        out[a:a + step] = np.log(spec @ mel_matrix + params.log_offset)
    return out


#: FFT work per call of :func:`log_mel_spectrogram` (frames × FFT length): ≈ 32 MB of complex128.
_FFT_CHUNK_VALUES = 1 << 21


def frames_to_patches(log_mel: np.ndarray, params: DspParams = DspParams()) -> np.ndarray:
    """Cut a log-mel spectrogram into patches (``tf.signal.frame``, pad_end=False).

    Args:
        log_mel: float32 ``[n_frames, mel_bands]``.

    Returns:
        float32 ``[n_patches, 96, mel_bands]``; n_patches = 1 + (n_frames - 96) // 48,
        0 when n_frames < 96.
    """
    f, h = params.patch_frames, params.patch_hop_frames
    n = log_mel.shape[0]
    if n < f:
        return np.zeros((0, f, log_mel.shape[1]), dtype=np.float32)
    count = 1 + (n - f) // h
    idx = np.arange(f)[None, :] + h * np.arange(count)[:, None]
    return np.ascontiguousarray(log_mel[idx], dtype=np.float32)


def waveform_to_patches(waveform: np.ndarray, params: DspParams = DspParams()) -> np.ndarray:
    """YAMNet log-mel patches of a 16 kHz mono waveform (the DSP block's core).

    Args:
        waveform: float32 ``[n]`` in [-1, 1] at ``params.sample_rate`` (resample first with
            :func:`cryblock.audio.prepare_waveform` or load with :func:`cryblock.audio.load_audio`).

    Returns:
        float32 ``[n_patches, 96, 64]``; patch k starts at sample k·7680 (0.48 s); at least one.
    """
    return frames_to_patches(log_mel_spectrogram(pad_waveform(waveform, params), params), params)


def patch_start_seconds(n_patches: int, params: DspParams = DspParams()) -> np.ndarray:
    """Start time in seconds of each patch: k · 0.48 s. float64 ``[n_patches]``."""
    return np.arange(n_patches) * params.patch_hop_samples / params.sample_rate


def stream_patches(blocks: Iterable[np.ndarray], params: DspParams = DspParams()) -> Iterator[np.ndarray]:
    """:func:`waveform_to_patches` of a waveform that arrives in blocks, with memory bounded by
    the block size: frames and patches are cut as soon as their samples are in, and YAMNet's
    end padding is added after the last block. The concatenated output equals
    :func:`waveform_to_patches` of the concatenated blocks (same frames, same float64 arithmetic).

    Args:
        blocks: float32 ``[n_i]`` waveform blocks at ``params.sample_rate``, in order.

    Yields:
        float32 ``[k, 96, 64]`` patch blocks (k ≥ 1), in time order.
    """
    win, hop = params.window_length_samples, params.hop_length_samples
    f, h = params.patch_frames, params.patch_hop_frames
    buf = np.zeros(0, np.float32)  # samples from the next frame's start on
    frames = np.zeros((0, params.mel_bands), np.float32)  # log-mel frames from the next patch's start on
    n_total = 0

    def cut(buf, frames):
        if len(buf) >= win:
            n = 1 + (len(buf) - win) // hop
            frames = np.concatenate([frames, log_mel_spectrogram(buf[:(n - 1) * hop + win], params)])
            buf = buf[n * hop:]
        patches = None
        if len(frames) >= f:
            count = 1 + (len(frames) - f) // h
            patches = frames_to_patches(frames[:(count - 1) * h + f], params)
            frames = frames[count * h:]
        return buf, frames, patches

    for b in blocks:
        b = np.asarray(b, dtype=np.float32).reshape(-1)
        n_total += len(b)
        buf, frames, patches = cut(np.concatenate([buf, b]), frames)
        if patches is not None:
            yield patches
    pad = padded_length(n_total, params) - n_total
    buf, frames, patches = cut(np.concatenate([buf, np.zeros(pad, np.float32)]), frames)
    if patches is not None:
        yield patches


def file_patch_blocks(path, params: DspParams = DspParams()) -> Iterator[np.ndarray]:
    """Patches of an audio file, streamed (:func:`cryblock.audio.audio_blocks` →
    :func:`stream_patches`): memory stays flat for a recording of any length. Raises AudioError
    naming the file (a silent recording only after its last block)."""
    from cryblock.audio import audio_blocks

    return stream_patches(audio_blocks(path, params.sample_rate), params)


def file_to_patches(path, params: DspParams = DspParams()) -> np.ndarray:
    """Load any audio file (see :func:`cryblock.audio.audio_blocks`) and return its patches
    float32 ``[n_patches, 96, 64]``. Raises AudioError naming the file."""
    return np.concatenate(list(file_patch_blocks(path, params)))
