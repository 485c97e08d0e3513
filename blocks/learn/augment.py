"""Training-time augmentation of log-mel patches, done in the linear-mel domain.

A patch is ``P = log(M + ε)`` (ε = ``log_offset``), ``M`` the mel projection of the STFT
magnitude. Adding log patches would multiply the sounds; the augmentations therefore work on
``M = exp(P) − ε`` and return ``log(M' + ε)``:

* **gain** g dB: ``M' = 10^(g/20) · M`` — exact, since M is linear in the waveform's amplitude.
* **background mix** at SNR s dB with a training negative ``B``:
  ``M' = sqrt(M² + k² B²)``, ``k² = ΣM² / (ΣB² · 10^(s/10))``. The power sum per mel bin is the
  expected magnitude of two uncorrelated sounds; it stays closer to the log-mel of the mixed
  waveform than a plain magnitude sum (tests/test_learn.py measures both on real clips). The SNR
  is the ratio of mel-domain powers, i.e. within the 125–7500 Hz band the model hears.
* **time shift** by up to ± half a patch hop, built from the window's neighbour in its clip (the
  patches of a clip overlap by half), so it is the exact patch of the shifted audio; windows
  without that neighbour (clip edges, Edge Impulse data) shift in silence.
* **SpecAugment** (Park et al. 2019): ``time_masks`` × up to ``time_mask_frames`` frames and
  ``freq_masks`` × up to ``freq_mask_bands`` bands set to silence (M = 0).
* **band-limit** to ``bandlimit_hz``: each mel band keeps the fraction of its triangle weight
  below the cutoff (the energy a flat spectrum leaves in it), as 8 kHz-sourced or phone audio.
* **nursery bed** at SNR in ``nursery_snr_min_db … nursery_snr_max_db``: the same power sum with
  a patch of a synthetic steady bed (white, pink, brown noise, fan, air purifier —
  :mod:`cryblock.blocks.learn.nursery`, 30 s of each, seeded).

Order per window: shift, gain, mix, nursery bed, band-limit, SpecAugment; each with its own
probability (:class:`~cryblock.params.AugmentParams`), all drawn from one seeded generator.
"""
from __future__ import annotations

import numpy as np

from cryblock.params import AugmentParams, DspParams


def band_fractions(dsp: DspParams, cutoff_hz: float) -> np.ndarray:
    """Per mel band, the fraction of its triangle weight below ``cutoff_hz``: float32 ``[mel_bands]``
    (1 for bands entirely below, 0 above)."""
    from cryblock.blocks.dsp.features import mel_matrix

    m = mel_matrix(dsp).astype(np.float64)  # [bins, mel]
    freqs = np.linspace(0.0, dsp.sample_rate / 2, dsp.num_spectrogram_bins)
    total = m.sum(axis=0)
    below = m[freqs < cutoff_hz].sum(axis=0)
    return np.where(total > 0, below / np.maximum(total, 1e-12), 0.0).astype(np.float32)


class Augmenter:
    """Augments windows of one training split.

    Args:
        params: probabilities and ranges.
        dsp: front-end parameters (log offset, mel matrix, patch hop).
        patches: float32 ``[N, frames, mels]`` — every window of the split, in clip/time order.
        clip_index: int ``[N]`` clip of each window (windows of a clip contiguous), or None when
            windows are unrelated (Edge Impulse rows): time shifts then fill in silence.
        background: indices into ``patches`` of the windows mixed in as background (training
            negatives); the quietest tenth is left out, since scaling near-silence to an SNR only
            amplifies its noise floor.
        seed: the nursery beds' generator (:func:`nursery_patches`).
    """

    def __init__(self, params: AugmentParams, dsp: DspParams, patches: np.ndarray,
                 clip_index: np.ndarray | None, background: np.ndarray, seed: int = 0) -> None:
        self.p = params
        self.eps = float(dsp.log_offset)
        self.x = patches
        self.hop = dsp.patch_hop_frames
        n = len(patches)
        ci = None if clip_index is None else np.asarray(clip_index)
        self.prev = np.full(n, -1, np.int64)
        self.next = np.full(n, -1, np.int64)
        if ci is not None and n > 1:
            same = ci[1:] == ci[:-1]
            self.prev[1:][same] = np.arange(n - 1)[same]
            self.next[:-1][same] = np.arange(1, n)[same]
        bg = np.asarray(background, dtype=np.int64)
        if len(bg):
            power = np.array([float(np.sum(self._lin(patches[i]) ** 2)) for i in bg])
            bg = bg[power > max(np.quantile(power, 0.1), 0.0)] if len(bg) >= 10 else bg[power > 0]
        self.background = bg
        self.fractions = band_fractions(dsp, params.bandlimit_hz)
        self.beds = nursery_patches(dsp, seed) if params.p_nursery > 0 else np.zeros((0,) + patches.shape[1:], np.float32)

    def _lin(self, p: np.ndarray) -> np.ndarray:
        return np.maximum(np.exp(p.astype(np.float64)) - self.eps, 0.0)

    def _log(self, m: np.ndarray) -> np.ndarray:
        return np.log(m + self.eps).astype(np.float32)

    def _shifted(self, i: int, s: int) -> np.ndarray:
        """Window ``i`` moved by ``s`` frames (s > 0: later audio), linear mel."""
        f = self.x.shape[1]
        cur = self._lin(self.x[i])
        if s > 0:
            nb = self.next[i]
            tail = self._lin(self.x[nb])[f - self.hop:f - self.hop + s] if nb >= 0 else np.zeros((s, cur.shape[1]))
            return np.concatenate([cur[s:], tail])
        s = -s
        pb = self.prev[i]
        head = self._lin(self.x[pb])[self.hop - s:self.hop] if pb >= 0 else np.zeros((s, cur.shape[1]))
        return np.concatenate([head, cur[:f - s]])

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Which of ``n`` windows get any augmentation this epoch: bool ``[n]``. Draws nothing
        when all probabilities are zero (training is then exactly as without augmentation)."""
        if not self.p.active:
            return np.zeros(n, bool)
        return rng.random(n) < 1.0 - np.prod([1.0 - q for q in self._probs()])

    def _probs(self) -> np.ndarray:
        p = self.p
        return np.array([p.p_shift, p.p_gain, p.p_mix, p.p_nursery, p.p_bandlimit, p.p_specaugment])

    def apply(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augmented copies of windows ``idx`` (indices into ``patches``): float32 ``[len(idx), frames, mels]``.
        Each window gets at least one augmentation (chosen with the configured probabilities)."""
        p = self.p
        probs = self._probs()
        out = np.empty((len(idx),) + self.x.shape[1:], np.float32)
        frames, mels = self.x.shape[1:]
        for k, i in enumerate(np.asarray(idx, dtype=np.int64)):
            todo = rng.random(len(probs)) < probs
            while not todo.any():  # the caller picked this window to be augmented
                todo = rng.random(len(probs)) < probs
            shift, gain, mix, bed, band, spec = todo
            m = self._shifted(i, int(rng.integers(1, self.hop // 2 + 1)) * (1 if rng.random() < 0.5 else -1)) \
                if shift else self._lin(self.x[i])
            if gain:
                m = m * 10.0 ** (rng.uniform(p.gain_min_db, p.gain_max_db) / 20.0)
            if mix and len(self.background):
                b = self._lin(self.x[self.background[rng.integers(len(self.background))]])
                ps, pb = float(np.sum(m * m)), float(np.sum(b * b))
                if ps > 0 and pb > 0:
                    k2 = ps / (pb * 10.0 ** (rng.uniform(p.mix_snr_min_db, p.mix_snr_max_db) / 10.0))
                    m = np.sqrt(m * m + k2 * b * b)
            if bed and len(self.beds):
                b = self._lin(self.beds[rng.integers(len(self.beds))])
                ps, pb = float(np.sum(m * m)), float(np.sum(b * b))
                if ps > 0 and pb > 0:
                    k2 = ps / (pb * 10.0 ** (rng.uniform(p.nursery_snr_min_db, p.nursery_snr_max_db) / 10.0))
                    m = np.sqrt(m * m + k2 * b * b)
            if band:
                m = m * self.fractions[None, :]
            if spec:
                m = m.copy()
                for _ in range(p.time_masks):
                    w = int(rng.integers(0, p.time_mask_frames + 1))
                    t0 = int(rng.integers(0, frames - w + 1))
                    m[t0:t0 + w] = 0.0
                for _ in range(p.freq_masks):
                    w = int(rng.integers(0, p.freq_mask_bands + 1))
                    f0 = int(rng.integers(0, mels - w + 1))
                    m[:, f0:f0 + w] = 0.0
            out[k] = self._log(m)
        return out


#: Seconds of each synthetic nursery bed the augmenter mixes from.
NURSERY_BED_SECONDS = 30.0


def nursery_patches(dsp: DspParams, seed: int = 0) -> np.ndarray:
    """Log-mel patches of :data:`NURSERY_BED_SECONDS` of every synthetic nursery bed
    (:data:`cryblock.blocks.learn.nursery.SYNTHETIC`), each at a random level: float32 ``[n, frames, mels]``."""
    from cryblock.blocks.dsp.features import waveform_to_patches
    from cryblock.blocks.learn import nursery

    rng = np.random.default_rng([seed, 5])
    n = int(NURSERY_BED_SECONDS * dsp.sample_rate)
    return np.concatenate([waveform_to_patches(nursery.bed(kind, n, dsp.sample_rate, rng,
                                                           float(rng.uniform(*nursery.BED_LEVEL_DBFS))), dsp)
                           for kind in nursery.SYNTHETIC])
