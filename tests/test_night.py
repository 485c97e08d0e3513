"""The nursery night (blocks/learn/night.py, nursery.py), its judge, calibration and DET curve,
and the vectorised detector twin — on real recordings of the shared data and on score
sequences whose right answers are worked out here by hand."""
from __future__ import annotations


import numpy as np
import pytest

from cryblock.blocks.learn import night as N
from cryblock.blocks.learn import nursery
from cryblock.detector import detector_states, run_detector
from cryblock.params import DetectorParams, DspParams, NightParams

DSP = DspParams()
SR = 16000


@pytest.fixture(scope="module")
def waves(tmp_path_factory):
    return N.WaveCache(SR, tmp_path_factory.mktemp("waves"))


@pytest.fixture(scope="module")
def split_clips(clips):
    """A small real 'split': 12 negative clips of several categories, cries of two babies."""
    neg = [c for c in clips if c.label == "not_cry" and c.source == "ESC-10"][::30][:8]
    neg += [c for c in clips if c.category == "cat meow"][:2] + [c for c in clips if c.category == "adult speech"][:2]
    theun = [c for c in clips if c.label == "cry" and c.source == "theunissenlab/BabyCriesDiscomfortPain"]
    babies = sorted({c.group for c in theun})[:2]
    cry = [c for c in theun if c.group in babies][:8]
    return neg, cry


@pytest.fixture(scope="module")
def night(split_clips, waves):
    neg, cry = split_clips
    return N.build_night(neg, cry, DSP, NightParams(max_cry_seconds=5.0, gap_seconds=8.0), seed=3, waves=waves)


def test_detector_states_equals_the_streaming_twin():
    rng = np.random.default_rng(0)
    for _ in range(400):
        s = rng.random(int(rng.integers(1, 150)))
        m = int(rng.integers(1, 13))
        d = DetectorParams(threshold=float(rng.choice([0.2, 0.5, 0.8, s[0]])), vote_m=m,
                           vote_n=int(rng.integers(1, m + 1)), hold_seconds=float(rng.choice([0, 0.48, 1, 2.5, 5])))
        np.testing.assert_array_equal(detector_states(s, d), run_detector(s, d).det)


def test_household_background_is_every_negative_once_longest_first(split_clips, night, waves):
    from cryblock.blocks.dsp.features import waveform_to_patches

    neg, _ = split_clips
    bg = night.backgrounds["household"]
    lengths = sorted((len(waves.load(c.path)) for c in neg), reverse=True)
    assert [s.n for s in bg.segments] == lengths and bg.n == sum(lengths)
    assert {s.category for s in bg.segments} >= {"cat meow", "adult speech"}
    assert night.hours("household") == pytest.approx(sum(lengths) / SR / 3600)
    audio = np.concatenate([np.asarray(waves.load(s.path), np.float32) for s in bg.segments])
    cache = N.AudioCache(DSP, waves)
    np.testing.assert_array_equal(N.render_background(bg, 0, bg.n, cache), audio.astype(np.float64))
    whole = waveform_to_patches(audio)
    assert night.n_patches("household") == len(whole)
    for i0, i1 in ((0, 5), (7, 19), (len(whole) - 4, len(whole))):  # any stretch, the padded end included
        np.testing.assert_array_equal(N.patch_range(lambda a, b: N.render_background(bg, a, b, cache), i0, i1, DSP),
                                      whole[i0:i1])


def test_cries_and_episodes_are_laid_in_at_their_snr(night, split_clips, waves):
    """Every insertion's cry power over the background's power across its span is its SNR, the
    mix never passes full scale, and the background around it is untouched."""
    cache = N.AudioCache(DSP, waves)
    kinds = set()
    for stream in night.streams:
        bg = night.backgrounds[stream.background]
        for ins in stream.insertions:
            kinds.add((stream.background, ins.kind))
            a, b = ins.start, ins.end
            mixed = N.render_stream(night, stream, a, b, cache)
            back = N.render_background(bg, a, b, cache)
            cry = mixed / ins.level - back
            on = np.zeros(b - a, bool)
            for p in ins.pieces:
                on[p.at - a:p.at - a + p.n] = True
            p_bg = max(np.mean(back ** 2), N.BACKGROUND_FLOOR_POWER)
            assert 10 * np.log10(np.mean(cry[on] ** 2) / p_bg) == pytest.approx(stream.snr_db, abs=1e-3)
            assert np.abs(mixed).max() <= N.MAX_MIX_PEAK + 1e-6
            ramp = int(N.LEVEL_RAMP_S * SR)
            if a - ramp - 100 > 0:
                np.testing.assert_array_equal(N.render_stream(night, stream, a - ramp - 100, a - ramp, cache),
                                              N.render_background(bg, a - ramp - 100, a - ramp, cache))
    assert {("household", "single"), ("nursery", "single")} <= kinds and any(k == "episode" for _, k in kinds)


def test_episodes_are_one_babys_cries_with_pauses(night, split_clips):
    neg, cry = split_clips
    group = {str(c.path): c.group for c in cry}
    eps = [i for s in night.streams for i in s.insertions if i.kind == "episode"]
    assert len(eps) == len({c.group for c in cry})  # one per baby, each in one condition
    for e in eps:
        seconds = (e.end - e.start) / SR
        assert N.EPISODE_S[0] - 0.01 <= seconds <= N.EPISODE_S[1] + 0.01
        assert {group[p.path] for p in e.pieces} == {e.group}
        for p, q in zip(e.pieces, e.pieces[1:]):
            assert N.EPISODE_PAUSE_S[0] * SR - 1 <= q.at - (p.at + p.n) <= N.EPISODE_PAUSE_S[1] * SR + 1


def test_every_single_cry_is_judged_once_per_snr(night, split_clips):
    _, cry = split_clips
    for snr in NightParams().snrs_db:
        singles = [i.clip for s in night.streams if s.snr_db == snr for i in s.insertions if i.kind == "single"]
        household = [i.clip for s in night.streams if s.snr_db == snr and s.background == "household"
                     for i in s.insertions if i.kind == "single"]
        assert sorted(set(household)) == sorted(set(household)) and len(household) == len(set(household))
        assert set(household) <= {str(c.path) for c in cry}
        assert len(singles) >= len(cry) - 1  # each cry in the household stream, or moved to the nursery one
    assert night.dropped == 0


def test_nursery_beds_are_steady_at_their_level_and_walls_cut_highs():
    rng = np.random.default_rng(0)
    for kind in nursery.SYNTHETIC:
        x = nursery.bed(kind, SR * 5, SR, rng, -35.0)
        assert 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))) == pytest.approx(-35.0, abs=0.01)
        again = nursery.bed(kind, SR * 5, SR, np.random.default_rng(0), -35.0) if kind == "white" else None
        assert again is None or np.array_equal(again, nursery.bed("white", SR * 5, SR, np.random.default_rng(0), -35))
    noise = np.random.default_rng(1).standard_normal(SR * 4)
    wall = nursery.through_wall(noise, SR)
    spec, spec_w = (np.abs(np.fft.rfft(v)) ** 2 for v in (noise, wall))
    f = np.fft.rfftfreq(len(noise), 1 / SR)
    assert spec_w[f > 2000].sum() / spec[f > 2000].sum() < 1e-3 < spec_w[f < 300].sum() / spec[f < 300].sum()
    assert nursery.kind_for_category("rain") == ["ambience"] and "lullaby" in nursery.kind_for_category("music")


def test_score_night_equals_scoring_the_whole_rendered_streams(night, waves):
    """Only the patches an insertion changes are computed per stream; the result equals scoring
    every patch of every fully rendered stream."""
    cache = N.AudioCache(DSP, waves)
    scorer = {"mean": lambda x: x.mean(axis=(1, 2))}
    got = N.score_night(night, scorer, block=97)["mean"]
    for si, s in enumerate(night.streams):
        T = night.n_patches(s.background)
        want = N.patch_range(lambda a, b: N.render_stream(night, s, a, b, cache), 0, T, DSP).mean(axis=(1, 2))
        np.testing.assert_allclose(got.streams[si], want, rtol=0, atol=1e-5)
    for b in night.backgrounds:
        want = N.patch_range(lambda x0, x1: N.render_background(night.backgrounds[b], x0, x1, cache), 0,
                             night.n_patches(b), DSP).mean(axis=(1, 2))
        np.testing.assert_allclose(got.backgrounds[b], want, rtol=0, atol=1e-5)


def _by_hand(night, value_bg=0.05, value_cry=0.95):
    """Scores by hand: backgrounds low; each stream high on the patches inside its insertions."""
    bgs = {b: np.full(night.n_patches(b), value_bg) for b in night.backgrounds}
    streams = []
    hop = night.dsp.patch_hop_samples
    for s in night.streams:
        x = bgs[s.background].copy()
        for ins in s.insertions:
            x[-(-ins.start // hop):ins.end // hop] = value_cry
        streams.append(x)
    return N.NightScores(bgs, streams)


def test_judge_times_episodes_counts_cries_and_false_alerts(night):
    ns = _by_hand(night)
    det = DetectorParams(threshold=0.5, vote_n=2, vote_m=3, hold_seconds=2.0)
    v = N.judge(night, ns, det)
    assert v.recall() == 1.0 and v.false_alerts("household") == 0 and v.fa_per_8h() == 0.0
    eps = v.select("episode")
    # 2 of 3 patches from its first whole patch: alerted by the decision of the 2nd whole patch
    for r in eps:
        assert 0.0 < r["time_to_alert"] <= 2 * 0.48 + 0.975 + 0.48
    assert v.within(10.0) == 1.0 and v.headline_recall() == 1.0
    # two loud background spots: two false alerts, in the category playing there
    hh = night.backgrounds["household"]
    cat = next(s for s in hh.segments if s.category == "cat meow")
    for i in (int((cat.start / SR + 0.5) / 0.48), 2):
        ns.backgrounds["household"][i:i + 3] = 0.9
    v = N.judge(night, ns, det)
    assert v.false_alerts("household") == 2 and sum(a["category"] == "cat meow" for a in v.alerts) == 1
    assert v.fa_per_8h() == pytest.approx(2 / night.hours("household") * 8)
    lo, hi = v.fa_per_8h_ci()
    assert lo < v.fa_per_8h() < hi
    # a missed episode: flatten it in its stream
    si, ins = next((i, x) for i, s in enumerate(night.streams) for x in s.insertions if x.kind == "episode")
    ns.streams[si][ins.start // 7680 - 3:ins.end // 7680 + 6] = 0.05
    v = N.judge(night, ns, det)
    assert sum(r["time_to_alert"] == np.inf for r in v.select("episode")) == 1
    assert v.within(10.0) == pytest.approx(1 - 1 / len(eps))


def test_pooled_verdicts_add_hours_alerts_and_insertions(night):
    ns = _by_hand(night)
    ns.backgrounds["household"][10:13] = 0.9
    v = N.judge(night, ns, DetectorParams(threshold=0.5, vote_n=1, vote_m=1, hold_seconds=1.0))
    p = N.pool([v, v])
    assert p.false_alerts() == 2 * v.false_alerts() and p.hours["household"] == pytest.approx(2 * v.hours["household"])
    assert len(p.records) == 2 * len(v.records) and p.fa_per_8h() == pytest.approx(v.fa_per_8h())
    s = N.verdict_summary(p, NightParams().snrs_db)
    assert s["false_alerts"]["household"]["count"] == 2 * v.false_alerts()
    e = s["episodes"][next(iter(s["episodes"]))]
    assert e["within_10s"] == 1.0 and e["within_10s_ci"][0] < 1.0 == e["within_10s_ci"][1]


def test_poisson_and_wilson_intervals_known_values():
    assert N.poisson_interval(0) == pytest.approx((0.0, 3.689), abs=1e-3)  # the "rule of 3.7"
    lo, hi = N.poisson_interval(10)
    assert lo == pytest.approx(4.795, abs=1e-3) and hi == pytest.approx(18.39, abs=1e-2)
    assert N.wilson_interval(19, 20) == pytest.approx((0.7639, 0.9911), abs=1e-3)


def test_calibration_spends_the_budget_on_the_upper_limit(night):
    """A setting is only within budget when the upper 95 % limit of its rate is: on a short night
    even zero alerts promise little, and the fewest-alerts setting with the best recall is taken."""
    ns = _by_hand(night)
    hours = night.hours("household") + night.hours("nursery")
    i = len(ns.backgrounds["household"]) // 2
    for s in [ns.backgrounds["household"], *[x for st, x in zip(night.streams, ns.streams)
                                             if st.background == "household"]]:
        s[i:i + 4] = 0.58
    generous = N.fa_upper_per_8h(0, hours) + 1
    cal = N.calibrate([(night, ns)], DetectorParams(), budget_per_8h=generous)
    assert cal.within_budget and cal.verdict.headline_recall() == 1.0
    assert len(cal.verdict.alerts) == 0 and cal.setting.threshold > 0.58
    # a budget below the zero-alert limit of this short night: not met, fewest alerts deployed
    cal = N.calibrate([(night, ns)], DetectorParams(), budget_per_8h=1.0)
    assert not cal.within_budget and len(cal.verdict.alerts) == 0 and cal.verdict.headline_recall() == 1.0
    # everything loud: nothing meets it, the fewest false alerts win
    for s in [*ns.backgrounds.values(), *ns.streams]:
        s[:] = 0.99
    cal = N.calibrate([(night, ns)], DetectorParams(), budget_per_8h=generous)
    assert not cal.within_budget
    assert len(cal.verdict.alerts) == min(c[2] for c in cal.candidates) * hours / 8


def test_pareto_front_is_non_dominated(night):
    ns = _by_hand(night)
    ns.backgrounds["household"][5:9] = 0.7
    cal = N.calibrate([(night, ns)], DetectorParams(), budget_per_8h=1.0)
    front = N.pareto(cal.candidates)
    assert front and all(not any(o[1] >= c[1] and o[2] <= c[2] and (o[1] > c[1] or o[2] < c[2])
                                 for o in cal.candidates) for c in front)
    assert [c[2] for c in front] == sorted(c[2] for c in front)


def test_det_curve_misses_more_and_alerts_less_as_the_threshold_rises(night):
    ns = _by_hand(night)
    rng = np.random.default_rng(0)
    for b in ns.backgrounds:
        ns.backgrounds[b][:] = rng.random(len(ns.backgrounds[b])) * 0.8
    ns = N.NightScores(ns.backgrounds, [np.maximum(x, ns.backgrounds[s.background]) if False else x
                                        for s, x in zip(night.streams, ns.streams)])
    det = N.det_curve([(night, ns)], DetectorParams(threshold=0.5, vote_n=1, vote_m=1, hold_seconds=1.0),
                      thresholds=[0.3, 0.6, 0.9, 0.97])
    assert [d["threshold"] for d in det] == [0.3, 0.6, 0.9, 0.97]
    assert det[-1]["miss_rate"] >= det[0]["miss_rate"] and det[-1]["fa_per_hour"] <= det[0]["fa_per_hour"]
    assert det[-1]["miss_rate"] == 1.0 and det[0]["fa_per_hour"] > 0


def test_night_without_cries_counts_false_alerts_only(split_clips, waves):
    neg, _ = split_clips
    n = N.build_night(neg[:3], [], DSP, NightParams(), seed=0, waves=waves)
    assert all(not s.insertions for s in n.streams) and n.hours("nursery") == 0
    v = N.judge(n, N.NightScores({b: np.zeros(n.n_patches(b)) for b in n.backgrounds},
                                 [np.zeros(n.n_patches(s.background)) for s in n.streams]), DetectorParams())
    assert v.false_alerts() == 0 and np.isnan(v.recall()) and np.isnan(v.headline_recall())


def test_without_nursery_everything_goes_to_the_household_recording(split_clips, waves):
    neg, cry = split_clips
    n = N.build_night(neg, cry, DSP, NightParams(snrs_db=(10.0,)), seed=1, waves=waves, nursery=False)
    assert set(n.backgrounds) == {"household"} and {s.background for s in n.streams} == {"household"}
    placed = sum(len(s.insertions) for s in n.streams)
    assert placed + n.dropped == len(cry) + len({c.group for c in cry})


def test_loud_backgrounds_are_turned_down_not_clipped(split_clips, waves):
    """A cry 20 dB above a loud background would pass full scale: the mix is lowered over the
    cry instead (mix_level), so the SNR holds and no sample clips."""
    neg, cry = split_clips
    loud = max(neg, key=lambda c: float(np.mean(np.asarray(waves.load(c.path), np.float64) ** 2)))
    n = N.build_night([loud] * 12, cry[:2], DSP, NightParams(snrs_db=(20.0,), gap_seconds=4.0), seed=0, waves=waves,
                      nursery=False)
    levels = [i.level for s in n.streams for i in s.insertions]
    assert levels and min(levels) < 1.0
