"""The nursery night: hours of negative audio with cries laid in, scored by a model and judged by
the firmware's own decision rule — what a parent would live through.

A :class:`Night` has two **backgrounds** and, per SNR, one **stream** over each:

* ``household`` — the split's negative clips back to back, longest first (speech, cats, music,
  everyday sounds: every negative second of the split, once). False alerts per 8 h are counted
  here, on the background alone.
* ``nursery`` — steady nursery noise beds (:mod:`.nursery`: white/pink/brown noise machines, a
  fan, an air purifier, and — from the split's own negative recordings — ambience, lullaby music
  and a TV or radio through a wall), 2–5 min per bed. Its false alerts are reported separately.

Into each stream go **insertions**: *single* cries (one clip, cut to ``max_cry_seconds``) and
sustained crying **episodes** (20–90 s, built from one group's — one baby's — cry clips with
natural pauses of 0.5–3 s between them; a group with less audio repeats its clips). Every single
cry goes into every household SNR stream and into one nursery SNR stream; each episode goes into
one (background, SNR) condition, in rotation, so the episode audio is scored once. Insertions are
placed one after another with ``gap_seconds`` (25 s) ± 25 % of background between them (longer than any detector's
vote window plus hold, so each is judged on its own); household insertions that do not fit move to
the nursery stream of their SNR. The SNR is the insertion's mean power (over its cry samples)
over the background's mean power across its span (waveform domain; background power floored at
−60 dBFS); a mix that would pass full scale is turned down as a whole over the insertion with
50 ms ramps (:func:`mix_level`), so the SNR holds and nothing clips.

Nothing of this is held in memory as audio: a night is a *plan* (clip paths, offsets, gains).
:func:`score_night` renders it block by block, computes each patch once and hands it to every
model's scorer; only the patches an insertion changes are computed per stream. Memory does not
grow with the length of the night.

:func:`judge` runs the detector (:func:`cryblock.detector.detector_states`, identical to the
firmware's postproc.c) over every stream and the backgrounds: a single cry is *detected* when the
detector is on during it or within :data:`LATENCY_S` after; an episode's *time to alert* is from
its onset to the decision time (last sample of the patch) of the first patch with the detector
on; every off→on switch over a background is a false alert, attributed to the sound playing then.
Verdicts of several nights (cross-validation folds) add up with :func:`pool`.

:func:`calibrate` picks threshold, N-of-M votes and hold time on (pooled) validation nights: the
highest share of episodes alerted within :data:`HEADLINE_WITHIN_S` whose false-alert rate's
**upper** 95 % Poisson limit stays within the budget (a rate measured on a few hours is spent on
what it could be, not on its point estimate); :func:`det_curve` gives miss rate against false
alerts per hour over thresholds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cryblock.detector import detector_states
from cryblock.params import DetectorParams, DspParams, NightParams

#: Background power floor for the SNR, linear power (−60 dBFS).
BACKGROUND_FLOOR_POWER = 10.0 ** (-60 / 10)
#: Peak of a cry-plus-background mix that would clip is brought to this (−0.1 dBFS)...
MAX_MIX_PEAK = 10.0 ** (-0.1 / 20)
#: ...with the level ramped over this long before and after the insertion, s.
LEVEL_RAMP_S = 0.05
#: A detection up to this long after an insertion ends still counts (N-of-M voting needs a few patches).
LATENCY_S = 2.0
#: Background between two insertions: ``night.gap_seconds`` × a uniform factor in this range
#: (the default 25 s × 0.75 is longer than the longest vote window, 12 patches ≈ 5.8 s, plus the
#: longest hold, 10 s, plus :data:`LATENCY_S`: no insertion is judged by its neighbour's alert).
GAP_SPREAD = (0.75, 1.25)
#: Background before the first insertion, s (uniform).
LEAD_S = (5.0, 15.0)
#: Sustained-crying episode length, s (uniform), and the pause between its clips, s (uniform).
EPISODE_S = (20.0, 90.0)
EPISODE_PAUSE_S = (0.5, 3.0)
#: Length of one nursery bed, s (uniform).
BED_S = (120.0, 300.0)
#: Time-to-alert marks reported for episodes, s; the headline is alerted within 10 s.
WITHIN_S = (5.0, 10.0, 30.0)
HEADLINE_WITHIN_S = 10.0
#: Background names, in report order.
BACKGROUNDS = ("household", "nursery")

#: Detector candidates :func:`calibrate` tries besides the thresholds: (N, M) votes — the longer
#: windows use more temporal context (a sustained cry fills them, a meow does not) — and holds (s):
#: a long hold keeps one alert on through the pauses of one crying (or meowing) bout, one
#: notification for the parent instead of several.
VOTES = ((1, 1), (2, 2), (2, 3), (3, 4), (3, 5), (4, 6), (5, 8), (6, 10), (8, 12))
HOLDS_S = (1.0, 2.0, 5.0, 10.0)

Scorer = Callable[[np.ndarray], np.ndarray]  #: patches [n, 96, 64] → positive score [n]


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Segment:
    """What plays in a background from sample ``start`` for ``n`` samples: a clip (``path``) or a
    nursery bed (``bed`` kind, built from ``path`` when recording-based, ``seed``, RMS ``level_dbfs``)."""

    start: int
    n: int
    category: str
    path: str = ""
    group: str = ""
    bed: str = ""
    seed: int = 0
    level_dbfs: float = 0.0


@dataclass(frozen=True)
class Piece:
    """``n`` samples of cry clip ``path`` from its sample ``offset``, at stream sample ``at``."""

    at: int
    path: str
    offset: int
    n: int


@dataclass
class Insertion:
    """One cry laid into a stream: a ``single`` clip or an ``episode``; ``gain`` scales its pieces,
    ``level`` (≤ 1) the whole mix over [start, end) (ramped, :data:`LEVEL_RAMP_S`)."""

    kind: str
    pieces: list[Piece]
    group: str
    snr_db: float
    gain: float = 1.0
    level: float = 1.0

    @property
    def start(self) -> int:
        return self.pieces[0].at

    @property
    def end(self) -> int:
        return self.pieces[-1].at + self.pieces[-1].n

    @property
    def clip(self) -> str:
        return self.pieces[0].path


@dataclass
class Background:
    """A background: its segments (time order) and length in samples."""

    name: str
    segments: list[Segment]
    n: int


@dataclass
class Stream:
    """Insertions at one SNR over one background."""

    background: str
    snr_db: float
    insertions: list[Insertion]

    @property
    def key(self) -> str:
        return f"{self.background} {self.snr_db:g} dB"


@dataclass
class Night:
    """A night plan (see the module docstring). ``dropped``: insertions that found no room."""

    backgrounds: dict[str, Background]
    streams: list[Stream]
    dsp: DspParams
    dropped: int = 0
    waves: WaveCache | None = field(default=None, repr=False)

    @property
    def sample_rate(self) -> float:
        return self.dsp.sample_rate

    @property
    def hop_s(self) -> float:
        return self.dsp.patch_hop_seconds

    @property
    def patch_s(self) -> float:
        return self.dsp.patch_samples / self.dsp.sample_rate

    def hours(self, background: str) -> float:
        """Length of a background, h."""
        bg = self.backgrounds.get(background)
        return bg.n / self.sample_rate / 3600.0 if bg else 0.0

    def n_patches(self, background: str) -> int:
        """Patches of a background: as :func:`cryblock.blocks.dsp.features.waveform_to_patches`
        of its samples (YAMNet's end padding); 0 for an empty one."""
        from cryblock.blocks.dsp.features import padded_length

        bg = self.backgrounds.get(background)
        if not bg or bg.n == 0:
            return 0
        return 1 + (padded_length(bg.n, self.dsp) - self.dsp.patch_samples) // self.dsp.patch_hop_samples

    def summary(self) -> dict:
        """Hours, clips and insertions of the night (JSON)."""
        out = {"hours": {b: self.hours(b) for b in self.backgrounds}, "dropped": self.dropped,
               "negative_clips": sum(1 for s in self.backgrounds.get("household", Background("", [], 0)).segments),
               "insertions": {}}
        for s in self.streams:
            c = out["insertions"].setdefault(s.key, {"single": 0, "episode": 0})
            for ins in s.insertions:
                c[ins.kind] += 1
        return out


class WaveCache:
    """Decoded, resampled clips as float16 ``.npy`` files in ``folder`` (keyed by path, size,
    modification time and rate), read memory-mapped: a night touches each clip several times
    (lengths, SNR gains, background, the streams around each insertion) and decoding Opus or
    resampling 44.1 kHz audio each time would dominate. float16 keeps 11 bits of mantissa
    (≈ −66 dB relative error), far below what a log-mel patch resolves. Without a folder the
    files go to a temporary folder removed with the object.
    """

    def __init__(self, sample_rate: float, folder: str | os.PathLike | None = None) -> None:
        import tempfile

        self.sample_rate = float(sample_rate)
        self._tmp = None if folder else tempfile.TemporaryDirectory(prefix="cryblock-waves-")
        self.folder = Path(folder) if folder else Path(self._tmp.name)
        self.folder.mkdir(parents=True, exist_ok=True)

    def file(self, path: str) -> Path | None:
        """The cache file of ``path`` (None when the file cannot be stat'ed)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{self.sample_rate:g}"
        return self.folder / f"wave-{hashlib.sha1(key.encode()).hexdigest()[:24]}.npy"

    def lengths(self, paths: Sequence[str], workers: int | None = None) -> dict[str, int]:
        """Samples of each file at the cache's rate, decoding (in parallel) what is not cached yet;
        unreadable files are left out."""
        from concurrent.futures import ProcessPoolExecutor

        from cryblock.data import pool_size
        from cryblock.output import npy_shape

        files = {str(p): self.file(str(p)) for p in paths}
        out, todo = {}, []
        for p, f in files.items():
            shape = npy_shape(f) if f is not None else None
            if shape is not None and len(shape) == 1:
                out[p] = shape[0]
            elif f is not None:
                todo.append(p)
        if todo:
            n = pool_size(workers, len(todo), 16)
            args = [(p, str(files[p]), self.sample_rate) for p in todo]
            if n > 1:
                with ProcessPoolExecutor(n) as ex:
                    found = list(ex.map(_decode_to, args, chunksize=16))
            else:
                found = [_decode_to(a) for a in args]
            out.update({p: m for p, m in zip(todo, found)})
        return {p: m for p, m in out.items() if m > 0}

    def load(self, path: str) -> np.ndarray:
        """The clip's samples (float16; read whole, so no file stays open). Raises AudioError naming it."""
        f = self.file(str(path))
        if f is None or not f.is_file():
            if f is None or _decode_to((str(path), str(f), self.sample_rate)) <= 0:
                from cryblock.errors import AudioError
                from cryblock.audio import load_audio

                load_audio(path, self.sample_rate)  # raises the reason
                raise AudioError(f"{path}: cannot be read")
        return np.load(f)


def _decode_to(args: tuple[str, str, float]) -> int:
    """Worker: decode ``path`` at ``rate`` into the float16 file ``target``; its length, or -1."""
    from cryblock.errors import AudioError
    from cryblock.audio import load_audio
    from cryblock.output import atomic_write_bytes, save_npy_bytes

    path, target, rate = args
    try:
        x = load_audio(path, rate)
    except AudioError:
        return -1
    atomic_write_bytes(target, save_npy_bytes(x.astype(np.float16)))
    return int(len(x))


class AudioCache:
    """Clips (from a :class:`WaveCache`) and rendered nursery beds, kept in memory least recently
    used first out up to ``max_bytes``."""

    def __init__(self, dsp: DspParams, waves: WaveCache, max_bytes: int = 512 << 20) -> None:
        self.dsp, self.waves, self.max_bytes, self.bytes = dsp, waves, max_bytes, 0
        self.items: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        x = self.items.get(key)
        if x is None:
            x = make()
            self.items[key] = x
            self.bytes += x.nbytes
            while self.bytes > self.max_bytes and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.bytes -= old.nbytes
        else:
            self.items.move_to_end(key)
        return x

    def clip(self, path: str) -> np.ndarray:
        """A clip's samples (float16 ``[n]``)."""
        return self.get(("clip", path), lambda: self.waves.load(path))

    def segment(self, seg: Segment) -> np.ndarray:
        """The samples of a background segment, ``[seg.n]``."""
        if not seg.bed:
            x = self.clip(seg.path)
            return x[: seg.n] if len(x) >= seg.n else np.concatenate([x, np.zeros(seg.n - len(x), x.dtype)])
        from cryblock.blocks.learn import nursery

        def make():
            rec = np.asarray(self.clip(seg.path), dtype=np.float32) if seg.path else None
            return nursery.bed(seg.bed, seg.n, self.dsp.sample_rate, np.random.default_rng([seg.seed, 3]),
                               seg.level_dbfs, rec)
        return self.get(("bed", seg.start, seg.seed, seg.bed, seg.path, seg.n), make)


def render_background(bg: Background, a: int, b: int, cache: AudioCache) -> np.ndarray:
    """Samples [a, b) of a background, float64 (zeros beyond its end)."""
    out = np.zeros(max(0, b - a), np.float64)
    if not bg.segments or b <= a:
        return out
    starts = np.fromiter((s.start for s in bg.segments), np.int64, len(bg.segments))
    k = max(0, int(np.searchsorted(starts, a, side="right")) - 1)
    while k < len(bg.segments) and bg.segments[k].start < b:
        s = bg.segments[k]
        lo, hi = max(a, s.start), min(b, s.start + s.n)
        if hi > lo:
            out[lo - a:hi - a] = cache.segment(s)[lo - s.start:hi - s.start]
        k += 1
    return out


def _level_curve(ins: Insertion, a: int, b: int, ramp: int) -> tuple[int, np.ndarray] | None:
    """(offset into [a, b), multiplier) of an insertion's mix level over [a, b), or None."""
    if ins.level >= 1.0:
        return None
    lo, hi = max(a, ins.start - ramp), min(b, ins.end + ramp)
    if hi <= lo:
        return None
    t = np.arange(lo, hi)
    m = np.ones(hi - lo)
    up = t < ins.start
    m[up] = 1.0 - (1.0 - ins.level) * (t[up] - (ins.start - ramp)) / ramp
    mid = (t >= ins.start) & (t < ins.end)
    m[mid] = ins.level
    down = t >= ins.end
    m[down] = ins.level + (1.0 - ins.level) * (t[down] - ins.end + 1) / (ramp + 1)
    return lo - a, m


def render_stream(night: Night, stream: Stream, a: int, b: int, cache: AudioCache) -> np.ndarray:
    """Samples [a, b) of a stream: its background plus the insertions (gain, level ramps)."""
    ramp = int(LEVEL_RAMP_S * night.sample_rate)
    out = render_background(night.backgrounds[stream.background], a, b, cache)
    for ins in stream.insertions:
        if ins.end + ramp <= a or ins.start - ramp >= b:
            continue
        for p in ins.pieces:
            lo, hi = max(a, p.at), min(b, p.at + p.n)
            if hi > lo:
                x = cache.clip(p.path)
                out[lo - a:hi - a] += ins.gain * x[p.offset + lo - p.at:p.offset + hi - p.at].astype(np.float64)
        lv = _level_curve(ins, a, b, ramp)
        if lv is not None:
            off, m = lv
            out[off:off + len(m)] *= m
    return out


def mix_level(background: np.ndarray, cry: np.ndarray) -> float:
    """Level factor (≤ 1) that keeps ``background + cry`` (same length, cry already at its SNR
    gain) within :data:`MAX_MIX_PEAK`."""
    peak = float(np.abs(background + cry).max()) if len(cry) else 0.0
    return min(1.0, MAX_MIX_PEAK / peak) if peak > 0 else 1.0


def _cry_pieces(group_clips: list, lengths: dict, rng: np.random.Generator, target: int,
                sr: float) -> list[tuple[str, int, int, int]]:
    """(path, offset, n, pause before) pieces of an episode of ``target`` samples from one group's
    clips in random order, repeated when the group holds less audio."""
    out, total = [], 0
    while total < target:
        for i in rng.permutation(len(group_clips)):
            path = str(group_clips[i].path)
            pause = int(rng.uniform(*EPISODE_PAUSE_S) * sr) if out else 0
            n = min(lengths[path], target - total - pause)
            if n <= 0:
                return out
            out.append((path, 0, n, pause))
            total += pause + n
            if total >= target:
                break
    return out


def build_night(negatives: Sequence, cries: Sequence, dsp: DspParams, night: NightParams, seed: int | Sequence[int] = 0, *,
                waves: WaveCache | None = None, singles: bool = True, nursery: bool = True,
                workers: int | None = None) -> Night:
    """Plan the night of one split (see the module docstring).

    Args:
        negatives: the split's negative :class:`~cryblock.data.Clip` s (``category`` names them;
            ambience, music and speech among them also feed the nursery beds).
        cries: its positive clips (single insertions; their ``group`` builds the episodes).
        dsp: front-end parameters. night: SNRs, longest single cry.
        seed: every random choice (order, gaps, episode lengths, beds, levels); an int or a
            sequence of ints (e.g. ``[seed, fold, 2]``).
        waves: decoded clips (:class:`WaveCache`; default: a temporary one); clips that cannot be
            read are left out.
        singles: also insert single cries (validation nights for calibration need only episodes).
        nursery: also build the nursery beds; without them every insertion goes to the household
            background (``cryblock calibrate``: a parent's own recording is the background) and
            what does not fit is dropped.
        workers: decoding processes.

    Raises:
        CryblockError: cries given but none readable. A night without negatives has an empty
            household background (every insertion goes to the nursery beds); without cries it
            counts false alerts only.
    """
    from cryblock.blocks.learn import nursery as beds_mod
    from cryblock.errors import CryblockError

    sr = dsp.sample_rate
    waves = waves or WaveCache(sr)
    cache = AudioCache(dsp, waves)
    lengths = waves.lengths([str(c.path) for c in [*negatives, *cries]], workers)
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 7])
    negs = sorted((c for c in negatives if lengths.get(str(c.path), 0) > 0),
                  key=lambda c: (-lengths[str(c.path)], str(c.path)))
    cry = [c for c in cries if lengths.get(str(c.path), 0) > 0]
    if cries and not cry:
        raise CryblockError("night stream: none of the cry clips is readable")
    segs, t = [], 0
    for c in negs:
        n = lengths[str(c.path)]
        segs.append(Segment(t, n, c.category or c.label, str(c.path), c.group))
        t += n
    household = Background("household", segs, t)

    # --- insertions: singles (every clip) and one episode per group
    snrs = [float(s) for s in night.snrs_db]
    cry = [cry[i] for i in rng.permutation(len(cry))]
    max_single = int(night.max_cry_seconds * sr)
    by_group: dict[str, list] = {}
    for c in cry:
        by_group.setdefault(c.group, []).append(c)
    conditions = [(b, s) for b in (BACKGROUNDS if nursery else BACKGROUNDS[:1]) for s in snrs]
    episode_plan = {cond: [] for cond in conditions}
    for k, g in enumerate(sorted(by_group, key=lambda g: rng.random())):
        target = int(rng.uniform(*EPISODE_S) * sr)
        pieces = _cry_pieces(sorted(by_group[g], key=lambda c: str(c.path)), lengths, rng, target, sr)
        if pieces:
            episode_plan[conditions[k % len(conditions)]].append((g, pieces))
    single_pieces = [(c.group, [(str(c.path), 0, min(lengths[str(c.path)], max_single), 0)]) for c in cry] \
        if singles else []

    todo: dict[tuple[str, float], list[tuple[str, str, list]]] = {cond: [] for cond in conditions}
    for j, snr in enumerate(snrs):
        rot = single_pieces[j:] + single_pieces[:j] if single_pieces else []
        todo[("household", snr)] = [("single", g, p) for g, p in rot] + \
            [("episode", g, p) for g, p in episode_plan[("household", snr)]]
        if nursery:
            todo[("nursery", snr)] = [("single", g, p) for k, (g, p) in enumerate(single_pieces) if k % len(snrs) == j] \
                + [("episode", g, p) for g, p in episode_plan[("nursery", snr)]]

    def place(items, limit: int | None):
        """Sequential placement from a random lead; returns (placed, leftover, end sample)."""
        order = [items[i] for i in rng.permutation(len(items))]
        t = int(rng.uniform(*LEAD_S) * sr)
        placed, left = [], []
        for kind, g, pieces in order:
            length = sum(pause + n for _, _, n, pause in pieces)
            if limit is not None and t + length + int(LATENCY_S * sr) > limit:
                left.append((kind, g, pieces))
                continue
            at, out = t, []
            for path, off, n, pause in pieces:
                at += pause
                out.append(Piece(at, path, off, n))
                at += n
            placed.append((kind, g, out))
            t = at + int(night.gap_seconds * rng.uniform(*GAP_SPREAD) * sr)
        return placed, left, t

    streams_raw, dropped = {}, 0
    for snr in snrs:
        placed, left, _ = place(todo[("household", snr)], household.n)
        streams_raw[("household", snr)] = placed
        if nursery:
            todo[("nursery", snr)] += left
        else:
            dropped += len(left)
    nursery_len = 0
    for snr in snrs if nursery else ():
        placed, _, end = place(todo[("nursery", snr)], None)
        streams_raw[("nursery", snr)] = placed
        if placed:
            nursery_len = max(nursery_len, end)
    # --- nursery beds covering the nursery streams
    kinds = list(beds_mod.SYNTHETIC)
    sources: dict[str, list] = {}
    for c in negs:
        for k in beds_mod.kind_for_category(c.category or c.label):
            sources.setdefault(k, []).append(c)
    kinds += [k for k in beds_mod.FROM_RECORDINGS if sources.get(k)]
    beds, t = [], 0
    while t < nursery_len:
        n = int(rng.uniform(*BED_S) * sr)
        kind = kinds[int(rng.integers(len(kinds)))]
        rec = sources[kind][int(rng.integers(len(sources[kind])))] if kind in beds_mod.FROM_RECORDINGS else None
        beds.append(Segment(t, n, f"nursery: {kind}" + (f" ({rec.category or rec.label})" if rec else ""),
                            str(rec.path) if rec else "", rec.group if rec else "", kind,
                            int(rng.integers(2 ** 31)), float(rng.uniform(*beds_mod.BED_LEVEL_DBFS))))
        t += n
    backgrounds = {"household": household}
    if nursery:
        backgrounds["nursery"] = Background("nursery", beds, t)

    # --- gains for the SNR, levels against clipping (in time order: clips stay in the cache)
    order = sorted(((b, pieces[0].at, j, k) for j, (b, snr) in enumerate(conditions)
                    for k, (_, _, pieces) in enumerate(streams_raw[(b, snr)])))
    made: dict[tuple[int, int], Insertion] = {}
    for b, _, j, k in order:
        kind, g, pieces = streams_raw[conditions[j]][k]
        snr = conditions[j][1]
        ins = Insertion(kind, pieces, g, snr)
        a, e = ins.start, ins.end
        bgw = render_background(backgrounds[b], a, e, cache)
        cry_w = np.zeros(e - a)
        for p in pieces:
            cry_w[p.at - a:p.at - a + p.n] = cache.clip(p.path)[p.offset:p.offset + p.n]
        p_cry = float(np.mean(np.concatenate([cry_w[p.at - a:p.at - a + p.n] for p in pieces]) ** 2))
        if p_cry <= 0:
            dropped += 1
            continue
        p_bg = max(float(np.mean(bgw ** 2)), BACKGROUND_FLOOR_POWER)
        ins.gain = math.sqrt(p_bg * 10.0 ** (snr / 10.0) / p_cry)
        ins.level = mix_level(bgw, ins.gain * cry_w)
        made[(j, k)] = ins
    streams = [Stream(b, snr, [made[(j, k)] for k in range(len(streams_raw[(b, snr)])) if (j, k) in made])
               for j, (b, snr) in enumerate(conditions)]
    return Night(backgrounds, streams, dsp, dropped, waves)


# ----------------------------------------------------------------------------- scoring
@dataclass
class NightScores:
    """A model's scores of a night: per background float64 ``[T]`` (the background alone) and per
    stream (same order as ``night.streams``) the whole stream ``[T]``."""

    backgrounds: dict[str, np.ndarray]
    streams: list[np.ndarray]


def patch_range(render: Callable[[int, int], np.ndarray], i0: int, i1: int, dsp: DspParams) -> np.ndarray:
    """Patches ``i0 .. i1-1`` of a stream whose samples ``render(a, b)`` returns: float32
    ``[i1-i0, 96, 64]``, equal to the same rows of :func:`~cryblock.blocks.dsp.features.waveform_to_patches`
    of the whole stream (frames are computed per frame; the end's zero padding is rendered as zeros)."""
    from cryblock.blocks.dsp.features import frames_to_patches, log_mel_spectrogram

    if i1 <= i0:
        return np.zeros((0, *dsp.patch_shape), np.float32)
    hop, size = dsp.patch_hop_samples, dsp.patch_samples
    x = render(i0 * hop, (i1 - 1) * hop + size)
    return frames_to_patches(log_mel_spectrogram(x.astype(np.float32), dsp), dsp)


def changed_patches(night: Night, ins: Insertion) -> tuple[int, int]:
    """Patch index range [i0, i1) that an insertion (with its level ramps) changes."""
    hop, size = night.dsp.patch_hop_samples, night.dsp.patch_samples
    ramp = int(LEVEL_RAMP_S * night.sample_rate) if ins.level < 1.0 else 0
    a, b = ins.start - ramp, ins.end + ramp
    return max(0, (a - size) // hop + 1), (b - 1) // hop + 1


def _runs(ranges: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    out = []
    for a, b in sorted((max(0, a), min(limit, b)) for a, b in ranges):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def score_night(night: Night, scorers: dict[str, Scorer], *, block: int = 1024,
                progress: Callable[[int], None] | None = None) -> dict[str, NightScores]:
    """Score a night with several models at once: each patch is computed once and given to every
    scorer — a background's patches in blocks of ``block``, and per stream only the patches its
    insertions change, all in time order (so each clip is read about once).

    Args:
        scorers: model name → patches ``[n, 96, 64]`` → positive score ``[n]``.
        progress: called with the number of patches done since the last call.

    Returns:
        model name → :class:`NightScores`.
    """
    cache = AudioCache(night.dsp, night.waves or WaveCache(night.sample_rate))
    bg_scores = {k: {b: np.zeros(night.n_patches(b)) for b in night.backgrounds} for k in scorers}
    changed: list[dict[str, list[tuple[int, int, np.ndarray]]]] = [{k: [] for k in scorers} for _ in night.streams]
    jobs = []  # (background, first patch, kind 0 = background block / 1 = stream run, stream, last patch)
    for b in night.backgrounds:
        T = night.n_patches(b)
        jobs += [(b, i0, 0, -1, min(T, i0 + block)) for i0 in range(0, T, block)]
    for si, s in enumerate(night.streams):
        T = night.n_patches(s.background)
        jobs += [(s.background, a, 1, si, e) for a, e in _runs([changed_patches(night, i) for i in s.insertions], T)]
    jobs.sort()
    pending: list[tuple[str, int, int, int, np.ndarray]] = []  # (background, stream or -1, a, e, patches)

    def flush():
        x = np.concatenate([p for *_, p in pending])
        for k, f in scorers.items():
            y = np.asarray(f(x), dtype=np.float64).reshape(-1)
            at = 0
            for b, si, a, e, _ in pending:
                if si < 0:
                    bg_scores[k][b][a:e] = y[at:at + e - a]
                else:
                    changed[si][k].append((a, e, y[at:at + e - a]))
                at += e - a
        if progress:
            progress(len(x))
        pending.clear()

    for b, a, _, si, e in jobs:
        if si < 0:
            p = patch_range(lambda x0, x1: render_background(night.backgrounds[b], x0, x1, cache), a, e, night.dsp)
        else:
            p = patch_range(lambda x0, x1: render_stream(night, night.streams[si], x0, x1, cache), a, e, night.dsp)
        pending.append((b, si, a, e, p))
        if sum(len(q[-1]) for q in pending) >= block:
            flush()
    if pending:
        flush()
    out = {}
    for k in scorers:
        streams = []
        for si, s in enumerate(night.streams):
            x = bg_scores[k][s.background].copy()
            for a, e, y in changed[si][k]:
                x[a:e] = y
            streams.append(x)
        out[k] = NightScores(bg_scores[k], streams)
    return out


def patches_to_score(night: Night) -> int:
    """How many patches :func:`score_night` computes (backgrounds plus changed stream patches)."""
    n = sum(night.n_patches(b) for b in night.backgrounds)
    for s in night.streams:
        n += sum(b - a for a, b in _runs([changed_patches(night, i) for i in s.insertions],
                                         night.n_patches(s.background)))
    return n


# ----------------------------------------------------------------------------- judging
def poisson_interval(k: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Garwood) two-sided interval of a Poisson mean from ``k`` events."""
    from scipy.stats import chi2

    lo = 0.0 if k == 0 else float(chi2.ppf(alpha / 2, 2 * k) / 2)
    return lo, float(chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion k/n ((nan, nan) when n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


@dataclass
class Verdict:
    """:func:`judge`'s result for one detector setting (add several with :func:`pool`).

    Attributes:
        records: one dict per insertion: ``kind`` (single/episode), ``background``, ``snr``,
            ``group``, ``clip``, ``seconds`` (length), ``detected`` (bool), ``time_to_alert``
            (s from onset to the first alerting decision; inf when none).
        alerts: one dict per false alert: ``background``, ``time_s``, ``category``, ``group``.
        hours: background name → hours of background audio judged.
    """

    records: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    hours: dict[str, float] = field(default_factory=dict)

    # --- false alerts
    def false_alerts(self, background: str = "household") -> int:
        return sum(1 for a in self.alerts if a["background"] == background)

    def fa_per_8h(self, background: str = "household") -> float:
        h = self.hours.get(background, 0.0)
        return self.false_alerts(background) / h * 8 if h else float("nan")

    def fa_per_8h_ci(self, background: str = "household") -> tuple[float, float]:
        h = self.hours.get(background, 0.0)
        lo, hi = poisson_interval(self.false_alerts(background))
        return (lo / h * 8, hi / h * 8) if h else (float("nan"), float("nan"))

    # --- recall
    def select(self, kind: str, background: str | None = None, snr: float | None = None) -> list[dict]:
        return [r for r in self.records if r["kind"] == kind and (background is None or r["background"] == background)
                and (snr is None or r["snr"] == snr)]

    def recall(self, background: str | None = None, snr: float | None = None) -> float:
        """Share of single cries detected (NaN when none)."""
        rs = self.select("single", background, snr)
        return float(np.mean([r["detected"] for r in rs])) if rs else float("nan")

    def within(self, seconds: float, background: str | None = None, snr: float | None = None) -> float:
        """Share of episodes alerted within ``seconds`` of their onset (NaN when none)."""
        rs = self.select("episode", background, snr)
        return float(np.mean([r["time_to_alert"] <= seconds for r in rs])) if rs else float("nan")

    def headline_recall(self) -> float:
        """Mean over the (background, SNR) conditions that hold episodes of the share alerted
        within :data:`HEADLINE_WITHIN_S` — what :func:`calibrate` maximises."""
        conds = sorted({(r["background"], r["snr"]) for r in self.records if r["kind"] == "episode"})
        vals = [self.within(HEADLINE_WITHIN_S, b, s) for b, s in conds]
        return float(np.mean(vals)) if vals else float("nan")

    def single_recall(self) -> float:
        """Mean over conditions of the single-cry recall (NaN when none)."""
        conds = sorted({(r["background"], r["snr"]) for r in self.records if r["kind"] == "single"})
        vals = [self.recall(b, s) for b, s in conds]
        return float(np.mean(vals)) if vals else float("nan")


#: ``(key, detector states [T]) → states``: a second stage that may switch alerts off (the hub's
#: confirmation, :func:`cryblock.blocks.hub.opinion.confirmer`); key = background name or stream index.
Confirm = Callable[[object, np.ndarray], np.ndarray]


def _fa_of(night: Night, scores: NightScores, det: DetectorParams, hop_ms: int, details: bool,
           confirm: Confirm | None) -> tuple[list, dict]:
    alerts, hours = [], {}
    for name, bg in night.backgrounds.items():
        hours[name] = night.hours(name)
        s = scores.backgrounds.get(name)
        if s is None or not len(s):
            continue
        on = detector_states(s, det, hop_ms)
        on = (on if confirm is None else confirm(name, on)).astype(bool)
        starts = np.flatnonzero(on & ~np.r_[False, on[:-1]])
        if not details:
            alerts += [{"background": name}] * len(starts)
            continue
        seg_starts = np.fromiter((x.start for x in bg.segments), np.int64, len(bg.segments))
        for i in starts:
            t = i * night.hop_s + night.patch_s / 2
            k = max(0, int(np.searchsorted(seg_starts, int(t * night.sample_rate), side="right")) - 1)
            seg = bg.segments[k] if bg.segments else None
            alerts.append({"background": name, "time_s": float(i * night.hop_s),
                           "category": seg.category if seg else "", "group": seg.group if seg else ""})
    return alerts, hours


def judge(night: Night, scores: NightScores, det: DetectorParams, *, details: bool = True,
          confirm: Confirm | None = None, confirm_delay_s: float = 0.0) -> Verdict:
    """Every insertion's outcome and every false alert of one detector setting (see the module
    docstring). With ``confirm`` a second stage filters the detector's states (alerts it does not
    confirm are gone) and every alert comes ``confirm_delay_s`` later (the audio it waits for)."""
    hop = night.dsp.patch_hop_samples
    size = night.dsp.patch_samples
    sr = night.sample_rate
    hop_ms = int(round(night.hop_s * 1000))
    lat = int(LATENCY_S * sr)
    records = []
    for si, (s, sc) in enumerate(zip(night.streams, scores.streams)):
        if not s.insertions:
            continue
        states = detector_states(sc, det, hop_ms)
        on_idx = np.flatnonzero(states if confirm is None else confirm(si, states))
        starts = np.array([i.start for i in s.insertions], np.int64)
        ends = np.array([i.end for i in s.insertions], np.int64)
        i0 = np.maximum(0, (starts - size) // hop + 1)
        i1 = np.minimum(len(sc), (ends + lat) // hop + 1)
        k = np.searchsorted(on_idx, i0)
        first = np.where(k < len(on_idx), on_idx[np.minimum(k, len(on_idx) - 1)] if len(on_idx) else 0, -1)
        hit = (first >= 0) & (first < i1)
        tta = np.where(hit, (first * hop + size - starts) / sr + confirm_delay_s, np.inf)
        for ins, h, t in zip(s.insertions, hit, tta):
            rec = {"kind": ins.kind, "background": s.background, "snr": s.snr_db, "detected": bool(h),
                   "time_to_alert": float(max(0.0, t))}
            if details:
                rec.update(group=ins.group, clip=ins.clip, seconds=(ins.end - ins.start) / sr,
                           start_s=ins.start / sr)
            records.append(rec)
    alerts, hours = _fa_of(night, scores, det, hop_ms, details, confirm)
    return Verdict(records, alerts, hours)


def pool(verdicts: Sequence[Verdict]) -> Verdict:
    """Verdicts of several nights (folds) as one: insertions and false alerts together, hours added."""
    out = Verdict()
    for v in verdicts:
        out.records += v.records
        out.alerts += v.alerts
        for k, h in v.hours.items():
            out.hours[k] = out.hours.get(k, 0.0) + h
    return out


# ----------------------------------------------------------------------------- calibration, DET
def candidate_settings(scores: Sequence[NightScores], base: DetectorParams, n_thresholds: int = 40,
                       votes: Sequence[tuple[int, int]] = VOTES,
                       holds: Sequence[float] = HOLDS_S) -> list[DetectorParams]:
    """Detector settings :func:`calibrate` tries: thresholds (multiples of 0.001, as the firmware's
    Kconfig holds them) spread over the upper quantiles of all scores, × ``votes`` × ``holds``."""
    allv = np.concatenate([x for sc in scores for x in (*sc.streams, *sc.backgrounds.values())] or [np.zeros(1)])
    q = np.quantile(allv, np.linspace(0.5, 0.9995, n_thresholds))
    grid = np.unique(np.clip(np.floor(np.r_[q, np.linspace(0.05, 0.95, 19)] * 1000) / 1000, 0.001, 1.0))
    return [dataclasses.replace(base, threshold=float(thr), vote_n=n, vote_m=m, hold_seconds=h)
            for thr in grid for n, m in votes for h in holds]


def fa_upper_per_8h(k: int, hours: float) -> float:
    """Upper end of the exact 95 % Poisson interval of a false-alert rate, per 8 h."""
    return poisson_interval(k)[1] / hours * 8 if hours else float("inf")


@dataclass
class Calibration:
    """:func:`calibrate`'s choice.

    Attributes:
        setting: the chosen detector setting; verdict: its pooled verdict on the validation nights.
        within_budget: whether its false-alert rate's upper 95 % limit met the budget.
        budget_per_8h: the budget.
        candidates: every candidate as (setting, headline recall, false alerts per 8 h, upper
            limit per 8 h, single recall).
        hours: validation background hours (household + nursery).
    """

    setting: DetectorParams
    verdict: Verdict
    within_budget: bool
    budget_per_8h: float
    candidates: list[tuple[DetectorParams, float, float, float, float]]
    hours: float


def _fast(pairs: Sequence[tuple[Night, NightScores]], d: DetectorParams) -> tuple[float, int, float, float]:
    v = pool([judge(n, s, d, details=False) for n, s in pairs])
    k = len(v.alerts)
    return v.headline_recall(), k, sum(v.hours.values()), v.single_recall()


def calibrate(pairs: Sequence[tuple[Night, NightScores]], base: DetectorParams, budget_per_8h: float,
              candidates: Sequence[DetectorParams] | None = None) -> Calibration:
    """The setting with the highest share of episodes alerted within :data:`HEADLINE_WITHIN_S`
    (mean over conditions; then single-cry recall) whose false alerts — household and nursery
    beds together, pooled over ``pairs`` (night, one model's scores of it) — have an upper 95 %
    Poisson limit within ``budget_per_8h``; ties go to fewer false alerts, a higher threshold, a
    shorter vote window and hold. If no candidate's limit meets the budget (a short validation
    night cannot promise a small rate), the one with the fewest false alerts, then the highest
    recall."""
    cands = []
    for d in candidates or candidate_settings([s for _, s in pairs], base):
        rec, k, hours, single = _fast(pairs, d)
        cands.append((d, rec, k / hours * 8 if hours else float("nan"), fa_upper_per_8h(k, hours), single, k, hours))

    def r(x):  # NaN (no episodes) ranks lowest
        return x if x == x else -1.0

    ok = [c for c in cands if c[3] <= budget_per_8h + 1e-12]
    if ok:
        best = max(ok, key=lambda c: (r(c[1]), r(c[4]), -c[5], c[0].threshold, -c[0].vote_m, -c[0].hold_seconds))
    else:
        best = max(cands, key=lambda c: (-c[5], r(c[1]), r(c[4]), c[0].threshold, -c[0].vote_m, -c[0].hold_seconds))
    d = best[0]
    v = pool([judge(n, s, d) for n, s in pairs])
    return Calibration(d, v, bool(ok), budget_per_8h, [c[:5] for c in cands], best[6])


def pareto(candidates: list[tuple]) -> list[tuple]:
    """Non-dominated candidates (no other has ≥ headline recall and ≤ false alerts, one of them
    strictly), sorted by false alerts per 8 h; one per distinct (false alerts, recall) pair.
    Candidates without a recall (a night without cries) are left out unless all are."""
    candidates = [c for c in candidates if c[1] == c[1]] or list(candidates)
    front, seen = [], set()
    for c in sorted(candidates, key=lambda c: (c[2], -c[1], -c[0].threshold)):
        _, rc, fa = c[:3]
        if any(o[1] >= rc and o[2] <= fa and (o[1] > rc or o[2] < fa) for o in candidates):
            continue
        if (round(fa, 6), round(rc, 6)) not in seen:
            seen.add((round(fa, 6), round(rc, 6)))
            front.append(c)
    return front


def det_curve(pairs: Sequence[tuple[Night, NightScores]], setting: DetectorParams,
              thresholds: Sequence[float] | None = None) -> list[dict]:
    """Miss rate against false alerts per hour over thresholds, at ``setting``'s votes and hold:
    one dict per threshold with ``threshold``, ``fa_per_hour`` (household background),
    ``fa_per_hour_all`` (household and nursery beds), ``miss_rate`` (episodes not alerted within
    :data:`HEADLINE_WITHIN_S`, all conditions pooled) and ``single_miss_rate``."""
    if thresholds is None:  # where false alerts happen: the upper tail of the background scores
        bg = np.concatenate([x for _, sc in pairs for x in sc.backgrounds.values()] or [np.zeros(1)])
        thresholds = np.unique(np.r_[np.quantile(bg, 1.0 - np.geomspace(0.3, 1e-5, 50)), setting.threshold])
    out = []
    for thr in thresholds:
        d = dataclasses.replace(setting, threshold=float(thr))
        v = pool([judge(n, s, d, details=False) for n, s in pairs])
        eps = v.select("episode")
        sing = v.select("single")
        h_house = v.hours.get("household", 0.0)
        out.append({"threshold": float(thr),
                    "fa_per_hour": v.false_alerts("household") / h_house if h_house else float("nan"),
                    "fa_per_hour_all": len(v.alerts) / sum(v.hours.values()) if sum(v.hours.values()) else float("nan"),
                    "miss_rate": float(np.mean([r["time_to_alert"] > HEADLINE_WITHIN_S for r in eps])) if eps else float("nan"),
                    "single_miss_rate": float(np.mean([not r["detected"] for r in sing])) if sing else float("nan")})
    return out


# ----------------------------------------------------------------------------- summaries
def verdict_summary(v: Verdict, snrs: Sequence[float]) -> dict:
    """A pooled verdict as JSON: false alerts per background (count, hours, rate per 8 h, exact
    Poisson interval), by category and by group; single-cry recall and episode time-to-alert per
    (background, SNR) with Wilson intervals; recall per cry group."""
    out = {"false_alerts": {}, "singles": {}, "episodes": {}, "fa_categories": {}, "fa_groups": {},
           "groups": {}, "headline_recall": v.headline_recall(), "single_recall": v.single_recall()}
    for b in sorted(v.hours, key=lambda b: BACKGROUNDS.index(b) if b in BACKGROUNDS else 9):
        k = v.false_alerts(b)
        out["false_alerts"][b] = {"count": k, "hours": v.hours[b], "per_8h": v.fa_per_8h(b),
                                  "per_8h_ci": list(v.fa_per_8h_ci(b)), "times_s": [a.get("time_s") for a in v.alerts
                                                                                  if a["background"] == b]}
    for a in v.alerts:
        cat = a.get("category") or "(unknown)"
        out["fa_categories"][cat] = out["fa_categories"].get(cat, 0) + 1
        if a.get("group"):
            out["fa_groups"][a["group"]] = out["fa_groups"].get(a["group"], 0) + 1
    for b in BACKGROUNDS:
        for s in snrs:
            key = f"{b} {s:g}"
            rs = v.select("single", b, s)
            if rs:
                k = sum(r["detected"] for r in rs)
                out["singles"][key] = {"n": len(rs), "detected": k, "recall": k / len(rs),
                                       "ci": list(wilson_interval(k, len(rs)))}
            es = v.select("episode", b, s)
            if es:
                t = np.array([r["time_to_alert"] for r in es])
                # nearest-rank quantiles: an episode never alerted counts as infinitely late
                e = {"n": len(es), "median_s": float(np.quantile(t, 0.5, method="inverted_cdf")),
                     "p90_s": float(np.quantile(t, 0.9, method="inverted_cdf"))}
                for w in WITHIN_S:
                    k = int(np.sum(t <= w))
                    e[f"within_{w:g}s"] = k / len(es)
                    e[f"within_{w:g}s_ci"] = list(wilson_interval(k, len(es)))
                out["episodes"][key] = e
    for r in v.records:
        if r.get("group") is None:
            continue
        g = out["groups"].setdefault(r["group"], {"singles": 0, "detected": 0, "episodes": 0, "within_10s": 0})
        if r["kind"] == "single":
            g["singles"] += 1
            g["detected"] += int(r["detected"])
        else:
            g["episodes"] += 1
            g["within_10s"] += int(r["time_to_alert"] <= HEADLINE_WITHIN_S)
    return out


def teacher_score_cache(scorer: Scorer, cache_dir: str | os.PathLike | None, ident: str) -> Scorer:
    """Wrap a scorer so its outputs are cached per batch of patches (key: sha1 of the patch bytes
    and ``ident``) — the teacher's night scores are the same in every run that builds the same
    night, whatever student is trained."""
    if cache_dir is None:
        return scorer
    folder = Path(cache_dir)

    def cached(x: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(x, dtype=np.float32)
        h = hashlib.sha1(ident.encode())
        h.update(str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
        f = folder / f"night-{h.hexdigest()[:24]}.npy"
        if f.is_file():
            try:
                y = np.load(f)
                if y.shape == (len(a),):
                    return y
            except (OSError, ValueError):
                pass
        y = np.asarray(scorer(a), dtype=np.float32).reshape(-1)
        from cryblock.output import atomic_write_bytes, save_npy_bytes

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(f, save_npy_bytes(y))
        return y

    return cached
