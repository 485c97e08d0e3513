"""YAMNet's float front-end written with ``tf.signal`` (the reference the NumPy block must equal).

Mirrors research/audioset/yamnet/features.py ``waveform_to_log_mel_spectrogram_patches``;
used by the parity test and by ``bench/dsp.py``. Imports TensorFlow lazily.
"""
from __future__ import annotations

import numpy as np

from cryblock.params import DspParams

from .features import pad_waveform


def tf_log_mel_patches(waveform: np.ndarray, params: DspParams = DspParams()) -> np.ndarray:
    """float32 ``[n_patches, 96, 64]`` computed by tf.signal.stft + tf mel matrix, after
    YAMNet padding. Same contract as :func:`blocks.dsp.features.waveform_to_patches`."""
    import tensorflow as tf

    x = tf.constant(pad_waveform(waveform, params))
    spec = tf.abs(tf.signal.stft(x, frame_length=params.window_length_samples,
                                 frame_step=params.hop_length_samples, fft_length=params.fft_length))
    mel_w = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=params.mel_bands, num_spectrogram_bins=params.num_spectrogram_bins,
        sample_rate=params.sample_rate, lower_edge_hertz=params.mel_min_hz, upper_edge_hertz=params.mel_max_hz)
    log_mel = tf.math.log(tf.matmul(spec, mel_w) + params.log_offset)
    patches = tf.signal.frame(log_mel, frame_length=params.patch_frames, frame_step=params.patch_hop_frames, axis=0)
    return patches.numpy().astype(np.float32)
