"""The nursery night: a continuous stream of a split's negative audio with its cries inserted at
several SNRs, scored by a model and judged by the firmware's own decision rule.

* :func:`build_night` lays the split's negative clips end to end, longest first (the
  *background*), and inserts the split's cry clips one per ``gap_seconds`` slot (at a random
  offset within the slot, seeded; cries never overlap), one copy of the stream per SNR of ``snrs_db``. The SNR is the
  cry's mean power over the background's mean power during the cry (waveform domain; the
  background power is floored at −60 dBFS so cries in digital silence stay audible). A mix that
  would exceed full scale is turned down as a whole over the cry (:func:`insert_at_snr`), so the
  SNR holds and nothing clips.
* :func:`score_night` scores the background once and, per SNR, only the patches the inserted
  cries changed (the rest are bit-identical).
* :func:`judge` runs the detector (:func:`cryblock.detector.detector_states`, identical to the
  firmware's postproc.c) over each stream: a **cry episode** is detected when the detector is on
  during the cry or within :data:`LATENCY_S` after it; every off→on switch over the background is a
  **false alert**, attributed to the category of the clip playing then. False alerts per 8 h come
  from the background alone, with an exact Poisson 95 % interval.
* :func:`calibrate` picks threshold, N-of-M and hold time: the highest mean episode recall over
  the SNRs with at most ``fa_budget_per_8h`` false alerts per 8 h; :func:`pareto` lists the
  non-dominated candidates.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from cryblock.detector import detector_states
from cryblock.params import DetectorParams, DspParams, NightParams

#: Background power floor for the SNR, linear power (−60 dBFS).
BACKGROUND_FLOOR_POWER = 10.0 ** (-60 / 10)
#: Peak of a cry-plus-background mix that would clip is brought to this (−0.1 dBFS)...
MAX_MIX_PEAK = 10.0 ** (-0.1 / 20)
#: ...with the level ramped over this long before and after the cry, s.
LEVEL_RAMP_S = 0.05
#: A detection up to this long after a cry ends still counts (N-of-M voting needs a few patches).
LATENCY_S = 2.0

#: Detector candidates :func:`calibrate` tries besides the thresholds: (N, M) votes and hold times (s).
VOTES = ((1, 1), (2, 2), (2, 3), (3, 4), (3, 5), (4, 6))
HOLDS_S = (1.0, 2.0, 5.0)

Scorer = Callable[[np.ndarray], np.ndarray]  #: patches [n, 96, 64] → positive score [n]


@dataclass
class Episode:
    """One inserted cry: onset and end (s), the clip's path and the SNR stream it is in."""

    start_s: float
    end_s: float
    clip: str
    snr_db: float


@dataclass
class NightStream:
    """A built night (see the module docstring).

    Attributes:
        background: float32 ``[T, 96, 64]`` patches of the negative audio alone.
        mixed: per SNR, (indices of the patches the cries changed, those patches).
        episodes: per SNR, its inserted cries.
        segments: ``(start_s, end_s, category, path)`` of each negative clip in the background.
        duration_s: length of the background, s.
        hop_s: patch hop, s.
    """

    background: np.ndarray
    mixed: dict[float, tuple[np.ndarray, np.ndarray]]
    episodes: dict[float, list[Episode]]
    segments: list[tuple[float, float, str, str]]
    duration_s: float
    hop_s: float
    patch_s: float


def build_night(negatives: Sequence, cries: Sequence, dsp: DspParams, night: NightParams, seed: int = 0,
                load: Callable | None = None) -> NightStream:
    """Build the night stream of one split.

    Args:
        negatives: the split's negative :class:`~cryblock.data.Clip` s (``category`` names them).
        cries: its positive clips (any order; shuffled with ``seed``).
        dsp: front-end parameters.
        night: SNRs, gap, longest cry.
        seed: insertion offsets and cry order.
        load: ``path → float32 waveform at dsp.sample_rate`` (default :func:`cryblock.audio.load_audio`);
            unreadable clips are left out.

    Raises:
        CryblockError: no readable negative clip, or cries given but none readable (with no cries
            at all the night is the background alone: false alerts, no recall).
    """
    from cryblock.blocks.dsp.features import waveform_to_patches
    from cryblock.errors import AudioError, CryblockError
    from cryblock.audio import load_audio

    load = load or (lambda p: load_audio(p, dsp.sample_rate))
    sr = dsp.sample_rate

    def read(clips):
        out = []
        for c in clips:
            try:
                out.append((c, load(c.path)))
            except AudioError:
                continue
        return out

    negs = sorted(read(negatives), key=lambda cx: (-len(cx[1]), str(cx[0].path)))
    if not negs:
        raise CryblockError("night stream: no readable negative clip")
    cry = read(cries)  # may be empty: a night of negatives only (false alerts, no recall)
    if cries and not cry:
        raise CryblockError("night stream: none of the cry clips is readable")
    rng = np.random.default_rng([seed, 7])
    cry = [cry[i] for i in rng.permutation(len(cry))]
    bg = np.concatenate([x for _, x in negs]).astype(np.float32)
    segments, t = [], 0.0
    for c, x in negs:
        segments.append((t, t + len(x) / sr, c.category or c.label, str(c.path)))
        t += len(x) / sr
    duration = len(bg) / sr
    slot = min(night.gap_seconds, duration)  # a background shorter than one slot still gets one cry
    n_slots = max(1, int(duration // slot))
    max_len = int(min(night.max_cry_seconds, slot) * sr)
    background = waveform_to_patches(bg, dsp)
    mixed, episodes = {}, {}
    for j, snr in enumerate(night.snrs_db):
        stream = bg.copy()
        eps = []
        for k in range(n_slots if cry else 0):
            c, x = cry[(k + j * n_slots) % len(cry)]
            x = x[:max_len]
            room = max(0.0, slot - len(x) / sr)
            start = int(round((k * slot + rng.uniform(0.0, room)) * sr))
            x = x[: max(0, min(len(x), len(bg) - start))]
            if len(x) == 0 or not np.any(x):
                continue
            insert_at_snr(stream, bg, x, start, snr, sr)
            eps.append(Episode(start / sr, (start + len(x)) / sr, str(c.path), float(snr)))
        patches = waveform_to_patches(stream, dsp)
        changed = np.flatnonzero(np.any(patches != background, axis=(1, 2)))
        mixed[float(snr)] = (changed, patches[changed])
        episodes[float(snr)] = eps
    return NightStream(background, mixed, episodes, segments, duration, dsp.patch_hop_seconds,
                       dsp.patch_samples / sr)


def insert_at_snr(stream: np.ndarray, background: np.ndarray, cry: np.ndarray, start: int, snr_db: float,
                  sample_rate: float) -> float:
    """Add ``cry`` into ``stream`` (a copy of ``background``) at sample ``start`` so that its mean
    power is ``snr_db`` above the background's over the same span (floored at
    :data:`BACKGROUND_FLOOR_POWER`). Where the mix would exceed full scale, the whole mix — cry and
    background — is turned down over the cry's span (:data:`LEVEL_RAMP_S` ramps on both sides) so
    its peak is :data:`MAX_MIX_PEAK`: the SNR is kept, nothing clips (a loud background at 20 dB SNR
    would otherwise put the cry far beyond full scale). Returns the level factor applied (1 = none)."""
    n = len(cry)
    seg = background[start:start + n].astype(np.float64)
    p_bg = max(float(np.mean(seg ** 2)), BACKGROUND_FLOOR_POWER)
    gain = np.sqrt(p_bg * 10.0 ** (snr_db / 10.0) / float(np.mean(cry.astype(np.float64) ** 2)))
    mix = seg + gain * cry
    peak = float(np.abs(mix).max())
    level = min(1.0, MAX_MIX_PEAK / peak) if peak > 0 else 1.0
    stream[start:start + n] = (level * mix).astype(np.float32)
    if level < 1.0:  # ramp the level down before and back up after the cry
        r = int(LEVEL_RAMP_S * sample_rate)
        a, b = max(0, start - r), min(len(stream), start + n + r)
        ramp_in = np.linspace(1.0, level, start - a, endpoint=False)
        ramp_out = np.linspace(level, 1.0, b - (start + n) + 1)[1:]
        stream[a:start] = (background[a:start] * ramp_in).astype(np.float32)
        stream[start + n:b] = (background[start + n:b] * ramp_out).astype(np.float32)
    return level


@dataclass
class NightScores:
    """A model's scores of a night: ``background`` float ``[T]`` and per SNR the whole stream ``[T]``."""

    background: np.ndarray
    streams: dict[float, np.ndarray]


def score_night(night: NightStream, scorer: Scorer) -> NightScores:
    """Score the background patches and, per SNR, only the patches the cries changed."""
    bg = np.asarray(scorer(night.background), dtype=np.float64).reshape(-1)
    streams = {}
    for snr, (changed, patches) in night.mixed.items():
        s = bg.copy()
        if len(changed):
            s[changed] = np.asarray(scorer(patches), dtype=np.float64).reshape(-1)
        streams[snr] = s
    return NightScores(bg, streams)


def poisson_interval(k: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Garwood) two-sided interval of a Poisson mean from ``k`` events."""
    from scipy.stats import chi2

    lo = 0.0 if k == 0 else float(chi2.ppf(alpha / 2, 2 * k) / 2)
    return lo, float(chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2)


@dataclass
class Verdict:
    """:func:`judge`'s result for one detector setting.

    Attributes:
        recall: per SNR, the fraction of inserted cries detected.
        detected: per SNR, one bool per episode.
        false_alerts: off→on switches over the background.
        fa_per_8h, fa_per_8h_ci: rate per 8 h and its exact Poisson 95 % interval.
        hours: background length, h.
        fa_categories: category → false alerts.
        fa_times_s: when each false alert started (background time, s).
    """

    recall: dict[float, float]
    detected: dict[float, list[bool]]
    false_alerts: int
    fa_per_8h: float
    fa_per_8h_ci: tuple[float, float]
    hours: float
    fa_categories: dict[str, int] = field(default_factory=dict)
    fa_times_s: list[float] = field(default_factory=list)

    @property
    def mean_recall(self) -> float:
        """Episode recall averaged over the SNRs that hold episodes (NaN when none does)."""
        vals = [r for r in self.recall.values() if r == r]
        return float(np.mean(vals)) if vals else float("nan")


def _category_at(night: NightStream, t: float) -> str:
    for start, end, cat, _ in night.segments:
        if start <= t < end:
            return cat
    return night.segments[-1][2]


def judge(night: NightStream, scores: NightScores, det: DetectorParams, *, details: bool = True) -> Verdict:
    """Episode recall per SNR and false alerts of one detector setting (see the module docstring)."""
    hop_ms = int(round(night.hop_s * 1000))
    n = len(scores.background)
    t = np.arange(n) * night.hop_s
    recall, detected = {}, {}
    for snr, s in scores.streams.items():
        on = np.r_[0, np.cumsum(detector_states(s, det, hop_ms))]
        # an episode owns the patches overlapping [start, end + LATENCY_S]; patch i spans [i·hop, i·hop + patch_s)
        eps = night.episodes[snr]
        i0 = np.clip(np.floor(np.array([e.start_s - night.patch_s for e in eps]) / night.hop_s).astype(int) + 1, 0, n)
        i1 = np.clip(np.floor(np.array([e.end_s + LATENCY_S for e in eps]) / night.hop_s).astype(int) + 1, 0, n)
        hits = [bool(h) for h in (on[i1] - on[i0]) > 0] if eps else []
        detected[snr] = hits
        recall[snr] = float(np.mean(hits)) if hits else float("nan")
    bg_on = detector_states(scores.background, det, hop_ms).astype(bool)
    starts = np.flatnonzero(bg_on & ~np.r_[False, bg_on[:-1]])
    k = int(len(starts))
    hours = night.duration_s / 3600.0
    lo, hi = poisson_interval(k)
    cats: dict[str, int] = {}
    times = [float(t[i]) for i in starts]
    if details:
        for ts in times:
            c = _category_at(night, ts + night.patch_s / 2)
            cats[c] = cats.get(c, 0) + 1
    return Verdict(recall, detected, k, k / hours * 8 if hours else float("nan"),
                   (lo / hours * 8, hi / hours * 8) if hours else (float("nan"),) * 2, hours, cats, times)


def candidate_settings(scores: NightScores, base: DetectorParams, n_thresholds: int = 40) -> list[DetectorParams]:
    """Detector settings :func:`calibrate` tries: thresholds (multiples of 0.001, as the firmware's
    Kconfig holds them) spread over the upper score quantiles of the cry streams, × :data:`VOTES` ×
    :data:`HOLDS_S`."""
    allv = np.concatenate([*scores.streams.values(), scores.background])
    q = np.quantile(allv, np.linspace(0.5, 0.9995, n_thresholds))
    grid = np.unique(np.clip(np.floor(np.r_[q, np.linspace(0.05, 0.95, 19)] * 1000) / 1000, 0.001, 1.0))
    return [dataclasses.replace(base, threshold=float(thr), vote_n=n, vote_m=m, hold_seconds=h)
            for thr in grid for n, m in VOTES for h in HOLDS_S]


@dataclass
class Calibration:
    """:func:`calibrate`'s choice: the ``setting``, its ``verdict`` on the validation night,
    whether it met the budget, and every candidate's (setting, mean recall, false alerts per 8 h)."""

    setting: DetectorParams
    verdict: Verdict
    within_budget: bool
    budget_per_8h: float
    candidates: list[tuple[DetectorParams, float, float]]


def calibrate(night: NightStream, scores: NightScores, base: DetectorParams, budget_per_8h: float) -> Calibration:
    """The setting with the highest mean episode recall whose false alerts per 8 h on ``night`` stay
    within ``budget_per_8h``; ties go to fewer false alerts, then the higher threshold, then the
    shorter vote window and hold. If none meets the budget, the one with the fewest false alerts
    (then the highest recall)."""
    cands = []
    for d in candidate_settings(scores, base):
        v = judge(night, scores, d, details=False)
        cands.append((d, v.mean_recall, v.fa_per_8h, v))
    def recall(c):  # NaN (no episodes) ranks lowest
        return c[1] if c[1] == c[1] else -1.0

    ok = [c for c in cands if c[2] <= budget_per_8h + 1e-12]
    if ok:
        best = max(ok, key=lambda c: (recall(c), -c[2], c[0].threshold, -c[0].vote_m, -c[0].hold_seconds))
    else:
        best = min(cands, key=lambda c: (c[2], -recall(c), -c[0].threshold))
    d = best[0]
    return Calibration(d, judge(night, scores, d), bool(ok), budget_per_8h, [(c[0], c[1], c[2]) for c in cands])


def pareto(candidates: list[tuple[DetectorParams, float, float]]) -> list[tuple[DetectorParams, float, float]]:
    """Non-dominated candidates (no other has ≥ recall and ≤ false alerts, one of them strictly),
    sorted by false alerts per 8 h; one setting per distinct (false alerts, recall) pair. Candidates
    without a recall (a night without cries) are left out unless all are."""
    candidates = [c for c in candidates if c[1] == c[1]] or candidates
    front, seen = [], set()
    for d, r, fa in sorted(candidates, key=lambda c: (c[2], -c[1], -c[0].threshold)):
        if any(r2 >= r and fa2 <= fa and (r2 > r or fa2 < fa) for _, r2, fa2 in candidates):
            continue
        if (round(fa, 6), round(r, 6)) not in seen:
            seen.add((round(fa, 6), round(r, 6)))
            front.append((d, r, fa))
    return front
