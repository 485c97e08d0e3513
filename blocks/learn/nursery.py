"""Nursery noise beds: the steady sounds a baby monitor hears all night.

Parents run white-noise machines, fans and air purifiers, play lullabies, and hear a TV or radio
through the wall. A detector that misses cries over them (or alerts on them) fails where it is
used. This module makes those beds, for the nursery-night streams (:mod:`.night`) and for
training mixes (:class:`cryblock.blocks.learn.augment.Augmenter`):

* synthetic, seeded: ``white``, ``pink`` (1/f power), ``brown`` (1/f², a "deep" noise machine),
  ``fan`` (low-passed brown noise with a motor hum at 40–120 Hz and three harmonics, slowly
  modulated), ``purifier`` (band-passed noise 300–3,000 Hz with a faint motor whine);
* from recordings the caller provides (a fold's own negative clips, so nothing of the training
  split leaks into a test night): ``ambience`` (rain, waves, wind, fire … looped), ``lullaby``
  (music looped), ``wall`` (speech or music heard through a wall: 4th-order low-pass at 700 Hz —
  a wall's transmission loss rises about 6 dB per octave (mass law) and the sound that passes is
  mostly below 1 kHz).

Every bed is scaled to an RMS level drawn from :data:`BED_LEVEL_DBFS` (a quiet nursery with a
noise machine: the cry-to-bed SNR is what the night streams set).
"""
from __future__ import annotations

import numpy as np

#: Synthetic bed kinds (always available).
SYNTHETIC = ("white", "pink", "brown", "fan", "purifier")
#: Bed kinds made from recordings, with the manifest categories (lower case, substring match)
#: that can feed them. The shared data's categories: ESC-10 rain/sea waves/fire crackling,
#: Blanket's rain/storm/wind/waves/summer-night/fireplace/…, music clips.
FROM_RECORDINGS = {
    "ambience": ("rain", "waves", "wind", "storm", "fire", "summer-night", "stream", "water", "running_tap",
                 "white noise", "pink noise", "fan"),
    "lullaby": ("music", "lullaby", "song", "piano", "guitar", "orchestra", "tchaikovsky", "dance"),
    "wall": ("speech", "music", "tv", "radio", "soundtrack"),
}
#: Bed RMS level range, dBFS.
BED_LEVEL_DBFS = (-45.0, -30.0)
#: Low-pass corner of the through-the-wall bed, Hz, and its order.
WALL_CUTOFF_HZ = 700.0
WALL_ORDER = 4


def kind_for_category(category: str) -> list[str]:
    """The recording-based bed kinds a clip of this manifest ``category`` can feed."""
    c = (category or "").lower()
    return [k for k, keys in FROM_RECORDINGS.items() if any(w in c for w in keys)]


def _normalise(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms <= 0:
        return np.zeros_like(x, dtype=np.float32)
    y = x * (10.0 ** (level_dbfs / 20.0) / rms)
    peak = float(np.abs(y).max())
    if peak > 0.99:  # a bed never clips; beds this loud are far above the levels drawn
        y *= 0.99 / peak
    return y.astype(np.float32)


def _coloured(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power ∝ f^-exponent (0 white, 1 pink, 2 brown), DC removed."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    spec *= f ** (-exponent / 2.0)
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def synthetic_bed(kind: str, n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Unscaled float64 ``[n]`` samples of a synthetic bed ``kind`` (one of :data:`SYNTHETIC`).

    Raises:
        ValueError: an unknown kind.
    """
    from scipy.signal import butter, sosfilt

    t = np.arange(n) / sample_rate
    if kind == "white":
        return rng.standard_normal(n)
    if kind == "pink":
        return _coloured(n, 1.0, rng)
    if kind == "brown":
        return _coloured(n, 2.0, rng)
    if kind == "fan":
        x = sosfilt(butter(2, 1500.0, "lowpass", fs=sample_rate, output="sos"), _coloured(n, 1.5, rng))
        x /= np.sqrt(np.mean(x ** 2)) + 1e-12
        f0 = rng.uniform(40.0, 120.0)
        hum = sum((0.5 ** k) * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 2 * np.pi)) for k in range(4))
        am = 1.0 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
        return am * (x + 0.3 * hum)
    if kind == "purifier":
        x = sosfilt(butter(2, (300.0, 3000.0), "bandpass", fs=sample_rate, output="sos"), rng.standard_normal(n))
        x /= np.sqrt(np.mean(x ** 2)) + 1e-12
        return x + 0.05 * np.sin(2 * np.pi * rng.uniform(150.0, 400.0) * t)
    raise ValueError(f"unknown synthetic bed {kind!r}; known: {SYNTHETIC}")


def through_wall(x: np.ndarray, sample_rate: float) -> np.ndarray:
    """A recording as heard through a wall: :data:`WALL_ORDER`-order Butterworth low-pass at
    :data:`WALL_CUTOFF_HZ`."""
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(WALL_ORDER, WALL_CUTOFF_HZ, "lowpass", fs=sample_rate, output="sos"),
                   np.asarray(x, dtype=np.float64))


def looped(x: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """``n`` samples of ``x`` repeated end to end, starting at ``offset``."""
    x = np.asarray(x)
    if len(x) == 0:
        return np.zeros(n, x.dtype)
    idx = (offset + np.arange(n)) % len(x)
    return x[idx]


def bed(kind: str, n: int, sample_rate: float, rng: np.random.Generator, level_dbfs: float,
        recording: np.ndarray | None = None) -> np.ndarray:
    """A bed of ``n`` samples at RMS ``level_dbfs``: float32 ``[n]``.

    Args:
        kind: a :data:`SYNTHETIC` kind, or ``ambience``/``lullaby``/``wall`` with ``recording``
            (float32 waveform at ``sample_rate``; looped from a random offset).
        rng: seeded generator (noise, hum frequency, loop offset).

    Raises:
        ValueError: unknown kind, or a recording-based kind without a recording.
    """
    if kind in SYNTHETIC:
        x = synthetic_bed(kind, n, sample_rate, rng)
    elif kind in FROM_RECORDINGS:
        if recording is None or len(recording) == 0:
            raise ValueError(f"bed {kind!r} needs a recording")
        x = looped(recording, n, int(rng.integers(0, len(recording))))
        if kind == "wall":
            x = through_wall(x, sample_rate)
    else:
        raise ValueError(f"unknown bed {kind!r}")
    return _normalise(np.asarray(x, dtype=np.float64), level_dbfs)
