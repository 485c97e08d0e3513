"""Audio I/O and safe file writing.

* :func:`load_audio` reads any file libsndfile understands (WAV, FLAC, OGG, …; 8/16/24/32-bit
  PCM or float), mixes to mono, resamples to the target rate with soxr (high quality) and
  checks the samples. Every problem raises :class:`~cryblock.errors.AudioError` naming the file.
* :func:`prepare_waveform` does the same checks/mixing/resampling for an in-memory array.
* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_save_npz` write to a
  temporary file in the destination folder and rename it, so a crash never leaves half a file.
"""
from __future__ import annotations

import io as _io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AudioError


def prepare_waveform(samples: np.ndarray, sample_rate: float, target_rate: float,
                     source: str = "<array>") -> np.ndarray:
    """Mix to mono, validate and resample a waveform.

    Args:
        samples: float or int array, shape ``[n]`` (mono) or ``[n, channels]``. Integer
            dtypes are scaled to [-1, 1) by their full-scale value (int16 → /32768).
        sample_rate: rate of ``samples`` in Hz.
        target_rate: wanted rate in Hz (YAMNet: 16000).
        source: name used in error messages (file path or request id).

    Returns:
        float32 array ``[m]``, mono, at ``target_rate``, values as in the input scale.

    Raises:
        AudioError: empty input, NaN/Inf samples, all-zero signal, bad rate or shape.
    """
    x = np.asarray(samples)
    if x.ndim == 0 or x.ndim > 2:
        raise AudioError(f"{source}: expected samples shaped [n] or [n, channels], got shape {x.shape}")
    if not (np.isfinite(sample_rate) and sample_rate > 0):
        raise AudioError(f"{source}: invalid sample rate {sample_rate!r}")
    if x.size == 0 or x.shape[0] == 0:
        raise AudioError(f"{source}: no audio samples (empty file)")
    if np.issubdtype(x.dtype, np.integer):
        full_scale = float(np.iinfo(x.dtype).max) + 1.0
        if np.issubdtype(x.dtype, np.unsignedinteger):  # 8-bit WAV is unsigned, centred at 128
            x = (x.astype(np.float64) - full_scale / 2) / (full_scale / 2)
        else:
            x = x.astype(np.float64) / full_scale
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise AudioError(f"{source}: {bad} sample(s) are NaN or Inf")
    if not np.any(x):
        raise AudioError(f"{source}: all samples are zero (silent or broken recording)")
    if sample_rate != target_rate:
        import soxr

        n_in = x.shape[0]
        x = soxr.resample(x, sample_rate, target_rate, quality="HQ").astype(np.float32, copy=False)
        if x.size == 0:
            raise AudioError(f"{source}: too short to resample ({n_in} samples at {sample_rate} Hz)")
    return np.ascontiguousarray(x)


def load_audio(path: str | os.PathLike, target_rate: float = 16000.0) -> np.ndarray:
    """Read an audio file as mono float32 at ``target_rate``.

    Args:
        path: audio file (anything libsndfile reads: WAV, FLAC, OGG/Vorbis, AIFF, …).
        target_rate: output rate in Hz (default 16000, YAMNet params.py).

    Returns:
        float32 ``[n]`` in [-1, 1], mono, at ``target_rate``.

    Raises:
        AudioError: missing/unreadable/corrupt/truncated file, directory, empty file,
            NaN/Inf samples, all-zero signal. The message names the file.
    """
    import soundfile as sf

    p = Path(path)
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not p.exists():
        raise AudioError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        msg = str(e).split("\n")[0]
        raise AudioError(f"{p}: cannot decode audio ({msg})") from None
    except OSError as e:
        raise AudioError(f"{p}: cannot read ({e.strerror or e})") from None
    return prepare_waveform(data, float(rate), target_rate, source=str(p))


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process umask, read once at import (reading it means setting it, which is not thread-safe)
_UMASK = _read_umask()


def _atomic_write(path: str | os.PathLike, write: Any, mode: str) -> Path:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return dest


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via temp file + rename; returns the path."""
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` via temp file + rename; returns the path."""
    return _atomic_write(path, lambda f: f.write(text), "w")


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``np.savez_compressed`` to ``path`` via temp file + rename; returns the path."""
    buf = _io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())
