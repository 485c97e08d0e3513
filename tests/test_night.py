"""The nursery night (blocks/learn/night.py), its detector judge and calibration, and the
vectorised detector twin — on real recordings of the shared data and on score sequences whose
right answers are worked out here by hand."""
from __future__ import annotations

import numpy as np
import pytest

from cryblock.blocks.learn import night as N
from cryblock.detector import detector_states, run_detector
from cryblock.params import DetectorParams, DspParams, NightParams

DSP = DspParams()


@pytest.fixture(scope="module")
def split_clips(clips):
    """A small real 'split': 12 negative clips of several categories, 6 cries."""
    neg = [c for c in clips if c.label == "not_cry" and c.source == "ESC-10"][::30][:8]
    neg += [c for c in clips if c.category == "cat meow"][:2] + [c for c in clips if c.category == "adult speech"][:2]
    cry = [c for c in clips if c.label == "cry" and c.source == "theunissenlab/BabyCriesDiscomfortPain"][:6]
    return neg, cry


@pytest.fixture(scope="module")
def night(split_clips):
    neg, cry = split_clips
    return N.build_night(neg, cry, DSP, NightParams(gap_seconds=12.0, max_cry_seconds=5.0), seed=3)


def test_detector_states_equals_the_streaming_twin(clips):
    rng = np.random.default_rng(0)
    for _ in range(400):
        s = rng.random(int(rng.integers(1, 150)))
        m = int(rng.integers(1, 7))
        d = DetectorParams(threshold=float(rng.choice([0.2, 0.5, 0.8, s[0]])), vote_m=m,
                           vote_n=int(rng.integers(1, m + 1)), hold_seconds=float(rng.choice([0, 0.48, 1, 2.5, 5])))
        np.testing.assert_array_equal(detector_states(s, d), run_detector(s, d).det)


def test_background_is_the_negatives_longest_first(split_clips, night):
    from cryblock.audio import load_audio

    neg, _ = split_clips
    lengths = sorted((len(load_audio(c.path)) for c in neg), reverse=True)
    assert [round((e - s) * 16000) for s, e, _, _ in night.segments] == lengths
    assert night.duration_s == pytest.approx(sum(lengths) / 16000)
    assert {cat for _, _, cat, _ in night.segments} >= {"cat meow", "adult speech"}
    from cryblock.blocks.dsp.features import waveform_to_patches

    bg = np.concatenate([load_audio(p) for _, _, _, p in night.segments])
    np.testing.assert_array_equal(night.background, waveform_to_patches(bg))


def test_cries_are_inserted_at_their_snr(split_clips, night):
    """Rebuild each 10 dB stream from the waveforms and check the power ratio really is 10 dB."""
    from cryblock.audio import load_audio

    bg = np.concatenate([load_audio(p) for _, _, _, p in night.segments]).astype(np.float64)
    eps = night.episodes[10.0]
    assert len(eps) == int(night.duration_s // 12.0) and len(eps) >= 4
    for k, e in enumerate(eps):  # one cry per 12 s slot, inside it
        assert 12.0 * k <= e.start_s < e.end_s <= 12.0 * (k + 1) + 1e-6
    for e in eps:
        cry = load_audio(e.clip).astype(np.float64)[: int(round((e.end_s - e.start_s) * 16000))]
        a = int(round(e.start_s * 16000))
        p_bg = max(np.mean(bg[a:a + len(cry)] ** 2), N.BACKGROUND_FLOOR_POWER)
        gain = np.sqrt(p_bg * 10 ** (10 / 10) / np.mean(cry ** 2))
        assert 10 * np.log10(np.mean((gain * cry) ** 2) / p_bg) == pytest.approx(10.0, abs=1e-6)
    changed, _ = night.mixed[10.0]
    assert 0 < len(changed) < len(night.background)  # only the patches around the cries differ
    assert {e.clip for e in night.episodes[0.0]} != {e.clip for e in night.episodes[20.0]} or len(split_clips[1]) < 3


def _scores(night, value_bg=0.05):
    """Scores by hand: background low; each SNR stream 0.95 on its cries' patches."""
    bg = np.full(len(night.background), value_bg)
    streams = {}
    for snr, eps in night.episodes.items():
        s = bg.copy()
        for e in eps:
            i0, i1 = int(np.ceil(e.start_s / night.hop_s)), int(e.end_s / night.hop_s)
            s[i0:i1] = 0.95
        streams[snr] = s
    return N.NightScores(bg, streams)


def test_judge_counts_episodes_and_false_alerts_by_category(night):
    ns = _scores(night)
    det = DetectorParams(threshold=0.5, vote_n=2, vote_m=3, hold_seconds=2.0)
    v = N.judge(night, ns, det)
    assert all(r == 1.0 for r in v.recall.values()) and v.false_alerts == 0 and v.fa_per_8h == 0.0
    # two loud background spots: two false alerts, in the category playing there
    cat_start = next(s for s, _, cat, _ in night.segments if cat == "cat meow")
    for t in (cat_start + 1.0, night.segments[0][0] + 0.5):
        i = int(t / night.hop_s)
        ns.background[i:i + 3] = 0.9
    v = N.judge(night, ns, det)
    assert v.false_alerts == 2 and v.fa_categories.get("cat meow") == 1
    assert v.fa_per_8h == pytest.approx(2 / (night.duration_s / 3600) * 8)
    lo, hi = v.fa_per_8h_ci
    assert lo < v.fa_per_8h < hi
    # a missed cry: flatten one episode of the 0 dB stream
    e = night.episodes[0.0][1]
    i0, i1 = int(e.start_s / night.hop_s) - 3, int(e.end_s / night.hop_s) + 6
    ns.streams[0.0][i0:i1] = 0.05
    v = N.judge(night, ns, det)
    assert v.detected[0.0][1] is False and v.recall[0.0] == pytest.approx(1 - 1 / len(night.episodes[0.0]))


def test_poisson_interval_known_values():
    assert N.poisson_interval(0) == pytest.approx((0.0, 3.689), abs=1e-3)  # the "rule of 3.7"
    lo, hi = N.poisson_interval(10)
    assert lo == pytest.approx(4.795, abs=1e-3) and hi == pytest.approx(18.39, abs=1e-2)


def test_calibrate_takes_best_recall_within_budget_else_fewest_alerts(night):
    ns = _scores(night)
    # make cries weak (0.6) in the 0 dB stream and a background bump to 0.58 once
    for e in night.episodes[0.0]:
        i0, i1 = int(np.ceil(e.start_s / night.hop_s)), int(e.end_s / night.hop_s)
        ns.streams[0.0][i0:i1] = 0.6
    i = len(ns.background) // 2
    for s in [ns.background, *ns.streams.values()]:
        s[i:i + 4] = 0.58
    cal = N.calibrate(night, ns, DetectorParams(), budget_per_8h=0.0)
    assert cal.within_budget and cal.verdict.false_alerts == 0
    assert 0.58 < cal.setting.threshold <= 0.6 and cal.verdict.mean_recall == 1.0
    # every candidate's recall with zero false alerts is ≤ the chosen one
    assert all(r <= cal.verdict.mean_recall for d, r, fa in cal.candidates if fa == 0)
    # nothing fits a budget no setting meets → says so, fewest false alerts deployed
    ns.background[:] = 0.99
    for s in ns.streams.values():
        s[:] = 0.99
    cal = N.calibrate(night, ns, DetectorParams(), budget_per_8h=0.0)
    assert not cal.within_budget
    assert cal.verdict.false_alerts == min(fa for _, _, fa in cal.candidates) * cal.verdict.hours / 8


def test_pareto_front_is_non_dominated(night):
    ns = _scores(night)
    ns.background[5:9] = 0.7
    cal = N.calibrate(night, ns, DetectorParams(), budget_per_8h=1.0)
    front = N.pareto(cal.candidates)
    assert front and all(not any(r2 >= r and fa2 <= fa and (r2 > r or fa2 < fa) for _, r2, fa2 in cal.candidates)
                         for _, r, fa in front)
    assert [fa for _, _, fa in front] == sorted(fa for _, _, fa in front)


def test_night_without_cries_counts_false_alerts_only(split_clips):
    neg, _ = split_clips
    n = N.build_night(neg[:3], [], DSP, NightParams(), seed=0)
    assert all(len(e) == 0 for e in n.episodes.values())
    v = N.judge(n, N.NightScores(np.zeros(len(n.background)), {k: np.zeros(len(n.background)) for k in n.episodes}),
                DetectorParams())
    assert v.false_alerts == 0 and all(np.isnan(r) for r in v.recall.values())


def test_loud_backgrounds_are_turned_down_not_clipped(split_clips):
    """A cry 20 dB above a loud background would pass full scale: the mix is lowered over the
    cry instead, so the SNR holds and no sample clips."""
    from cryblock.audio import load_audio

    neg, cry = split_clips
    bg = max((load_audio(c.path) for c in neg), key=lambda x: np.mean(x ** 2))[: 16000 * 5].copy()
    x = load_audio(cry[0].path)[: 16000 * 3]
    for snr in (0.0, 10.0, 20.0):
        stream = bg.copy()
        level = N.insert_at_snr(stream, bg, x, 8000, snr, 16000)
        seg = slice(8000, 8000 + len(x))
        cry_part = stream[seg].astype(np.float64) - level * bg[seg]
        got = 10 * np.log10(np.mean(cry_part ** 2) / max(np.mean((level * bg[seg].astype(np.float64)) ** 2),
                                                          level ** 2 * N.BACKGROUND_FLOOR_POWER))
        assert got == pytest.approx(snr, abs=0.01)
        assert np.abs(stream).max() <= N.MAX_MIX_PEAK + 1e-6
        np.testing.assert_array_equal(stream[:8000 - 800], bg[:8000 - 800])  # untouched outside the ramps
    assert level < 1.0  # this background is loud enough that 20 dB had to be turned down
