"""Reading audio: every recording cryblock reads goes through here.

* :func:`audio_blocks` streams any file libsndfile understands (WAV, FLAC, OGG, …; 8/16/24/32-bit
  PCM or float) as mono float32 blocks at the target rate (soxr, high quality, streaming), so
  memory does not grow with the recording's length; :func:`load_audio` is the whole file at once.
* :func:`prepare_waveform` does the same checks/mixing/resampling for an in-memory array.
* The rules, the same for files and arrays (each broken rule raises
  :class:`~cryblock.errors.AudioError` naming the file): a rate in
  [:data:`MIN_INPUT_RATE`, :data:`MAX_INPUT_RATE`]; no NaN/Inf; a peak of at most
  :data:`MAX_PEAK` (full scale = 1); not silent (peak ≥ :data:`SILENCE_PEAK`).
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import AudioError, file_kind, short_path

#: left for a 125–7500 Hz mel front-end, and a "1 Hz recording" would be resampled 16,000×.
MIN_INPUT_RATE = 4000.0
#: Highest input sample rate accepted, Hz (the top rate of common audio interfaces).
MAX_INPUT_RATE = 384000.0
#: Largest |sample| accepted (full scale = 1.0): float files may overshoot full scale a little
#: (inter-sample peaks, headroom), but a peak beyond +6 dBFS means the samples are on another scale.
MAX_PEAK = 2.0
#: A recording whose peak is below one 16-bit step (2⁻¹⁵, −90.3 dBFS) is silent.
SILENCE_PEAK = 2.0 ** -15
#: Block length of :func:`audio_blocks`, seconds of input audio.
BLOCK_SECONDS = 20.0


# ----------------------------------------------------------------------------------- audio
def _check_rate(rate: Any, source: str) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError, OverflowError):
        raise AudioError(f"{source}: sample rate must be a number, got {rate!r}") from None
    if not (MIN_INPUT_RATE <= r <= MAX_INPUT_RATE):  # also NaN
        raise AudioError(f"{source}: sample rate {rate!r} Hz is outside [{MIN_INPUT_RATE:g}, "
                         f"{MAX_INPUT_RATE:g}] Hz")
    return r


def _mono_float(x: np.ndarray, source: str) -> np.ndarray:
    """[n] or [n, channels] of any numeric dtype → float32 [n] (integers scaled to [-1, 1))."""
    if x.ndim == 0 or x.ndim > 2:
        raise AudioError(f"{source}: expected samples shaped [n] or [n, channels], got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)):
        raise AudioError(f"{source}: samples must be real numbers, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):
        full_scale = float(np.iinfo(x.dtype).max) + 1.0
        if np.issubdtype(x.dtype, np.unsignedinteger):  # 8-bit WAV is unsigned, centred at 128
            x = (x.astype(np.float64) - full_scale / 2) / (full_scale / 2)
        else:
            x = x.astype(np.float64) / full_scale
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    return x


def _check_block(x: np.ndarray, source: str) -> float:
    """NaN/Inf and scale checks of a mono block; returns its peak |x|."""
    finite = np.isfinite(x)
    if not finite.all():
        raise AudioError(f"{source}: {int(np.count_nonzero(~finite))} sample(s) are NaN or Inf")
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > MAX_PEAK:
        raise AudioError(f"{source}: peak {peak:g} exceeds {MAX_PEAK:g} × full scale; float audio must be "
                         "in [-1, 1] (samples on another scale?)")
    return peak


def _check_not_silent(peak: float, source: str) -> None:
    if peak == 0.0:
        raise AudioError(f"{source}: all samples are zero (silent or broken recording)")
    if peak < SILENCE_PEAK:
        raise AudioError(f"{source}: silent recording (peak {20 * np.log10(peak):.1f} dBFS, below one "
                         "16-bit step)")


def prepare_waveform(samples: np.ndarray, sample_rate: float, target_rate: float,
                     source: str = "<array>") -> np.ndarray:
    """Mix to mono, validate and resample an in-memory waveform.

    Args:
        samples: float or int array, shape ``[n]`` (mono) or ``[n, channels]``. Integer
            dtypes are scaled to [-1, 1) by their full-scale value (int16 → /32768).
        sample_rate: rate of ``samples`` in Hz, in [:data:`MIN_INPUT_RATE`, :data:`MAX_INPUT_RATE`].
        target_rate: wanted rate in Hz (YAMNet: 16000).
        source: name used in error messages (file path or request id).

    Returns:
        float32 array ``[m]``, mono, at ``target_rate``, values as in the input scale.

    Raises:
        AudioError: empty input, NaN/Inf samples, peak above :data:`MAX_PEAK`, silent
            (below :data:`SILENCE_PEAK`), bad rate or shape.
    """
    x = np.asarray(samples)
    rate = _check_rate(sample_rate, source)
    if x.size == 0:
        raise AudioError(f"{source}: no audio samples (empty file)")
    x = _mono_float(x, source)
    _check_not_silent(_check_block(x, source), source)
    if rate != target_rate:
        import soxr

        n_in = x.shape[0]
        x = soxr.resample(x, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
        if x.size == 0:
            raise AudioError(f"{source}: too short to resample ({n_in} samples at {rate:g} Hz)")
    return np.ascontiguousarray(x)


#: libsndfile's header report of a WAV ``data`` / AIFF ``SSND`` chunk larger than the file.
_SHORT_CHUNK_RE = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)


def _open_sound_file(p: Path):
    """Open an audio file for reading after checking it is a non-empty regular file; WAV/AIFF
    files whose header promises more audio than the file holds (an incomplete copy or download:
    libsndfile would silently decode the part that is there) are refused. Streaming writers'
    placeholder sizes (0, ≥ 2³¹ − 4096) are accepted."""
    import soundfile as sf

    try:
        st = p.stat()
    except FileNotFoundError:
        raise AudioError(f"{p}: file not found") from None
    except OSError as e:
        raise AudioError(f"{short_path(p)}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{p}: is {file_kind(st.st_mode)}, not a regular audio file")
    if st.st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    try:
        f = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{p}: cannot decode audio ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise AudioError(f"{p}: cannot read ({e.strerror or e})") from None
    m = _SHORT_CHUNK_RE.search(f.extra_info or "")
    if m and 0 < int(m.group(2)) < 0x7FFFF000 and int(m.group(3)) < int(m.group(2)):
        f.close()
        raise AudioError(f"{p}: truncated {f.format} file: its header promises {int(m.group(2)):,} bytes of audio, "
                         f"the file holds {int(m.group(3)):,} (an incomplete copy or download?)")
    return f


def audio_blocks(path: str | os.PathLike, target_rate: float = 16000.0,
                 block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Stream an audio file as mono float32 blocks at ``target_rate``.

    Decoding, mixing and soxr resampling (``ResampleStream``, the same output as a one-shot
    ``soxr.resample`` of the whole file) run block by block, so memory stays flat for a
    recording of any length.

    Args:
        path: audio file (anything libsndfile reads: WAV, FLAC, OGG/Vorbis, AIFF, …).
        target_rate: output rate in Hz (default 16000, YAMNet params.py).
        block_seconds: input seconds per block.

    Yields:
        float32 ``[n]`` blocks in [-1, 1] (possibly empty), in order.

    Raises:
        AudioError: missing/unreadable/corrupt/truncated file, directory, empty file, sample
            rate outside [:data:`MIN_INPUT_RATE`, :data:`MAX_INPUT_RATE`], NaN/Inf samples, peak
            above :data:`MAX_PEAK` (raised at the block holding them), or a silent recording
            (raised after the last block). The message names the file.
    """
    import soundfile as sf
    import soxr

    p = Path(path)
    with _open_sound_file(p) as f:
        rate = _check_rate(f.samplerate, str(p))
        if f.frames == 0:
            raise AudioError(f"{p}: no audio samples (empty file)")
        stream = None if rate == target_rate else soxr.ResampleStream(rate, target_rate, 1, dtype="float32",
                                                                      quality="HQ")
        n_block = max(1, int(block_seconds * rate))
        peak, n_in, n_out = 0.0, 0, 0
        while True:
            try:
                data = f.read(n_block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                raise AudioError(f"{p}: cannot decode audio ({str(e).splitlines()[0]})") from None
            last = len(data) < n_block
            x = _mono_float(data, str(p))
            peak = max(peak, _check_block(x, str(p)))
            n_in += len(x)
            if stream is not None:
                x = stream.resample_chunk(x, last=last)
            n_out += len(x)
            yield np.ascontiguousarray(x, dtype=np.float32)
            if last:
                break
    if n_in == 0:
        raise AudioError(f"{p}: no audio samples (empty file)")
    _check_not_silent(peak, str(p))
    if n_out == 0:
        raise AudioError(f"{p}: too short to resample ({n_in} samples at {rate:g} Hz)")


def load_audio(path: str | os.PathLike, target_rate: float = 16000.0) -> np.ndarray:
    """Read a whole audio file as mono float32 at ``target_rate`` (:func:`audio_blocks` joined).

    Returns:
        float32 ``[n]`` in [-1, 1], mono, at ``target_rate``.

    Raises:
        AudioError: as :func:`audio_blocks`; the message names the file.
    """
    return np.concatenate(list(audio_blocks(path, target_rate)))
