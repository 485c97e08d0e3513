"""Augmentation in the linear-mel domain (blocks/learn/augment.py) against the exact answer: the
log-mel patches of the correspondingly changed *waveform* of real recordings."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cryblock.blocks.dsp.features import waveform_to_patches
from cryblock.blocks.learn.augment import Augmenter, band_fractions
from cryblock.audio import load_audio
from cryblock.params import AugmentParams, DspParams

DSP = DspParams()


@pytest.fixture(scope="module")
def waves(clips):
    """Real 16 kHz waveforms: cries and negatives of several kinds."""
    cry = [c for c in clips if c.label == "cry" and c.source == "theunissenlab/BabyCriesDiscomfortPain"][:6]
    neg = [c for c in clips if c.label == "not_cry" and c.source == "ESC-10"][::40][:6]
    return [load_audio(c.path) for c in cry], [load_audio(c.path) for c in neg]


def _only(**p):
    base = {f.name: 0.0 for f in dataclasses.fields(AugmentParams) if f.name.startswith("p_")}
    return AugmentParams(**{**base, **p})


def test_gain_is_exact(waves):
    x = waves[0][0]
    pt = waveform_to_patches(x)
    aug = Augmenter(_only(p_gain=1.0, gain_min_db=-12.0, gain_max_db=-12.0), DSP, pt, np.zeros(len(pt), int),
                    np.arange(len(pt)))
    got = aug.apply(np.arange(len(pt)), np.random.default_rng(0))
    want = waveform_to_patches(x * 10 ** (-12 / 20))
    np.testing.assert_allclose(got, want, atol=2e-4)  # float32 rounding of exp/log only


def test_shift_is_the_patch_of_the_shifted_audio(waves):
    """Windows overlap by half, so a shift of s frames is built exactly from the neighbour."""
    x = waves[0][1]
    pt = waveform_to_patches(x)
    ci = np.zeros(len(pt), int)
    aug = Augmenter(_only(p_shift=1.0), DSP, pt, ci, np.arange(len(pt)))
    i = len(pt) // 2
    for s in (5, -7, 24, -24):
        got = np.log(aug._shifted(i, s) + DSP.log_offset).astype(np.float32)
        start = (i * DSP.patch_hop_frames + s) * DSP.hop_length_samples
        want = waveform_to_patches(x[start:start + DSP.patch_samples])[0]
        np.testing.assert_allclose(got, want, atol=2e-4)


def test_background_mix_follows_the_waveform_mix_better_than_magnitude_sum(waves):
    """Power sum of linear mel vs plain magnitude sum, against the log-mel of the mixed waveform."""
    cries, negs = waves
    err_pow, err_mag = [], []
    eps = DSP.log_offset
    pairs = [(c, n) for c, n in zip(cries, negs)
             if np.mean(n[:DSP.patch_samples] ** 2) > 1e-6 and np.mean(c[:DSP.patch_samples] ** 2) > 1e-6]
    assert len(pairs) >= 4
    for c, n in pairs:
        L = min(len(c), len(n), DSP.patch_samples)
        for snr in (-5.0, 5.0, 15.0):
            pc, pn = waveform_to_patches(c[:L])[:1], waveform_to_patches(n[:L])[:1]
            both = np.concatenate([pc, pn])
            aug = Augmenter(_only(p_mix=1.0, mix_snr_min_db=snr, mix_snr_max_db=snr), DSP, both, None, np.array([1]))
            aug.background = np.array([1])  # the one negative, whatever its level
            got = aug.apply(np.array([0]), np.random.default_rng(0))[0]
            mc, mn = np.maximum(np.exp(pc[0]) - eps, 0), np.maximum(np.exp(pn[0]) - eps, 0)
            k2 = np.sum(mc ** 2) / (np.sum(mn ** 2) * 10 ** (snr / 10))
            true = waveform_to_patches(c[:L] + np.sqrt(k2) * n[:L])[0]
            err_pow.append(np.abs(got - true).mean())
            err_mag.append(np.abs(np.log(mc + np.sqrt(k2) * mn + eps) - true).mean())
    assert np.mean(err_pow) < 0.6 * np.mean(err_mag), (np.mean(err_pow), np.mean(err_mag))
    assert np.mean(err_pow) < 0.06


def test_bandlimit_matches_a_lowpassed_waveform(waves):
    import soxr

    x = waves[0][2][: 3 * DSP.patch_samples]
    pt = waveform_to_patches(x)
    aug = Augmenter(_only(p_bandlimit=1.0), DSP, pt, None, np.arange(len(pt)))
    got = aug.apply(np.arange(len(pt)), np.random.default_rng(0))
    # the real thing: through 8 kHz and back (soxr's anti-alias filter cuts at 4 kHz)
    want = waveform_to_patches(soxr.resample(soxr.resample(x, 16000, 8000, quality="HQ"), 8000, 16000, quality="HQ")[:len(x)])
    f = band_fractions(DSP, 4000.0)
    full = f == 1.0
    assert full.sum() > 30 and (f == 0).sum() > 10
    loud = want[..., full] > np.log(DSP.log_offset) + 3  # (quiet cells differ by the filters' noise floors)
    assert np.abs(got[..., full] - want[..., full])[loud].mean() < 0.05  # bands well below 4 kHz kept
    assert np.all(got[..., f == 0] == np.float32(np.log(DSP.log_offset)))  # bands above 4 kHz silent
    assert np.abs(got - want).mean() < np.abs(pt - want).mean() / 3


def test_specaugment_masks_are_silence(waves):
    pt = waveform_to_patches(waves[0][0])[:4]
    floor = np.float32(np.log(DSP.log_offset))
    assert not (pt == floor).any()  # a cry with sound in every cell: masks are all that is silent
    aug = Augmenter(_only(p_specaugment=1.0, time_masks=1, time_mask_frames=10, freq_masks=1, freq_mask_bands=6),
                    DSP, pt, None, np.arange(4))
    got = aug.apply(np.arange(4), np.random.default_rng(5))
    silent = got == floor
    assert silent.any() and np.all(got[~silent] == pytest.approx(pt[~silent], abs=2e-4))
    for g in silent:
        rows, cols = g.all(axis=1).sum(), g.all(axis=0).sum()
        assert rows <= 10 and cols <= 6


def test_all_off_draws_nothing(waves):
    pt = waveform_to_patches(waves[0][0])
    aug = Augmenter(AugmentParams(**AugmentParams.OFF), DSP, pt, None, np.arange(len(pt)))
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    assert not aug.draw(100, rng).any()
    assert rng.bit_generator.state == state  # training without augmentation sees the same random stream
