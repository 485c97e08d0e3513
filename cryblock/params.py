"""The one parameters object that flows through dsp → teacher → learn → deploy.

:class:`Params` groups five frozen dataclasses:

* :class:`DspParams` – the log-mel front-end. Defaults are YAMNet's ``params.py``
  (tensorflow/models research/audioset/yamnet/params.py); the learning block, the
  teacher and the on-device C twin all read the same object, so a change here changes
  every stage consistently.
* :class:`LearnParams` – knowledge distillation (temperature, α, teacher-as-filter
  thresholds, pos:neg resampling, auxiliary head, student architecture, optimiser).
* :class:`AugmentParams` – training-time augmentation (background mixing, gain, time shift,
  SpecAugment, band-limiting).
* :class:`NightParams` – the nursery-night evaluation and the detector calibration on it.
* :class:`DetectorParams` – the on-device decision logic (threshold, N-of-M voting,
  hold-time hysteresis).

All values are validated on construction; a bad value raises
:class:`cryblock.errors.ParameterError` naming the parameter.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ParameterError

#: YAMNet AudioSet class indices of the cry classes (yamnet_class_map.csv):
#: 19 "Crying, sobbing", 20 "Baby cry, infant cry".
CRY_CLASSES = (19, 20)

#: YAMNet classes a baby monitor hears and must not take for a cry (yamnet_class_map.csv):
#: 0 Speech, 1 Child speech, 4 Babbling, 13 Laughter, 14 Baby laughter, 24 Singing, 38 Snoring,
#: 42 Cough, 44 Sneeze, 69 Dog, 76 Cat, 77 Purr, 78 Meow, 79 Hiss, 80 Caterwaul, 132 Music.
#: Their teacher scores are the targets of the student's auxiliary head (``learn.aux_weight``).
CONFUSABLE_CLASSES = (0, 1, 4, 13, 14, 24, 38, 42, 44, 69, 76, 77, 78, 79, 80, 132)

_BLOCK_RE = re.compile(r"^\s*(\d+)\s*/\s*([12])\s*$")
_KERNEL_RE = re.compile(r"^\s*([1-7])\s*x\s*([1-7])\s*$")


def parse_blocks(spec: str) -> tuple[tuple[int, int], ...]:
    """``"16/1,32/2,64/2"`` → ``((16, 1), (32, 2), (64, 2))``: output channels / stride of each
    depthwise-separable block. Raises ParameterError naming ``blocks``."""
    out = []
    for part in str(spec).split(","):
        m = _BLOCK_RE.match(part)
        if not m or not 4 <= int(m.group(1)) <= 512:
            raise ParameterError(f"parameter 'blocks': expected CHANNELS/STRIDE items like 16/1,32/2 "
                                 f"(channels 4–512, stride 1 or 2), got {spec!r}")
        out.append((int(m.group(1)), int(m.group(2))))
    if not 1 <= len(out) <= 12:
        raise ParameterError(f"parameter 'blocks': 1–12 blocks, got {len(out)}")
    return tuple(out)


def parse_kernel(spec: str) -> tuple[int, int]:
    """``"3x3"`` / ``"5x3"`` → (time, mel) kernel size of the depthwise convolutions (odd, 1–7)."""
    m = _KERNEL_RE.match(str(spec))
    if not m or int(m.group(1)) % 2 == 0 or int(m.group(2)) % 2 == 0:
        raise ParameterError(f"parameter 'kernel': expected TIMExMEL with odd sizes 1–7 (3x3, 5x3), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ParameterError(f"parameter '{name}': {msg}")


def _num(obj: Any, name: str, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False,
         hi_open: bool = False) -> None:
    """Check that field ``name`` of ``obj`` is a finite number (an integer when ``integer``) in
    the interval from ``lo`` to ``hi`` (open ends where asked); ParameterError names it."""
    v = getattr(obj, name)
    if integer:
        ok = isinstance(v, int) and not isinstance(v, bool)
        kind = "an integer"
    else:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))
        kind = "a finite number"
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    lo_s, hi_s = (str(b) if isinstance(b, int) else f"{b:g}" for b in (lo, hi))
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    _check(ok, name, f"must be {kind} in {left}{lo_s}, {hi_s}{right}, got {_short_repr(v)}")


def _short_repr(v: Any, n: int = 60) -> str:
    """``repr(v)`` cut to ``n`` characters (a 400-digit integer or a long string in a message)."""
    r = repr(v) if not isinstance(v, int) or v.bit_length() < 4000 else f"an integer of {len(str(v))} digits"
    return r if len(r) <= n else r[: n - 1] + "…"


#: Bounds of the front-end sizes (every allocation follows from them): a hop of at least 1 ms,
#: an FFT of at most 16384 points, a patch of at most 1000 frames. YAMNet uses 10 ms, 512, 96.
MIN_HOP_SECONDS = 0.001
MAX_FFT_LENGTH = 16384
MAX_PATCH_FRAMES = 1000


@dataclass(frozen=True)
class DspParams:
    """Log-mel front-end parameters; defaults = YAMNet ``params.py``.

    Units: Hz for frequencies, seconds for durations. Derived integer sizes
    (samples, frames, bins) are properties computed exactly as YAMNet's
    ``features.py`` does.
    """

    sample_rate: float = 16000.0  #: Hz (YAMNet params.py)
    stft_window_seconds: float = 0.025  #: 25 ms periodic Hann window
    stft_hop_seconds: float = 0.010  #: 10 ms hop
    mel_bands: int = 64
    mel_min_hz: float = 125.0
    mel_max_hz: float = 7500.0
    log_offset: float = 0.001  #: log(mel + log_offset)
    patch_window_seconds: float = 0.96  #: 96 frames
    patch_hop_seconds: float = 0.48  #: 48 frames

    def __post_init__(self) -> None:
        # Bounds keep every derived size (FFT, frames, patches) small enough to allocate: a rate
        # of 1e9 Hz or a 1e5 s patch would otherwise ask for gigabytes.
        _num(self, "sample_rate", 4000, 192000)
        _num(self, "stft_window_seconds", 0, 0.2, lo_open=True)
        _num(self, "stft_hop_seconds", MIN_HOP_SECONDS, self.stft_window_seconds)
        _check(16 <= self.window_length_samples <= MAX_FFT_LENGTH, "stft_window_seconds",
               f"must span 16–{MAX_FFT_LENGTH} samples at {self.sample_rate:g} Hz, got {self.window_length_samples}")
        _check(self.hop_length_samples >= 1, "stft_hop_seconds",
               f"rounds to {self.hop_length_samples} samples at {self.sample_rate:g} Hz; must be ≥ 1 sample")
        _num(self, "mel_bands", 8, 256, integer=True)
        _num(self, "mel_min_hz", 0, self.sample_rate / 2)
        _num(self, "mel_max_hz", 0, 96000, lo_open=True)
        _check(self.mel_max_hz <= self.sample_rate / 2, "mel_max_hz",
               f"must be ≤ Nyquist ({self.sample_rate / 2:g} Hz), got {self.mel_max_hz}")
        _check(self.mel_min_hz < self.mel_max_hz, "mel_min_hz",
               f"must be < mel_max_hz ({self.mel_max_hz}), got {self.mel_min_hz}")
        _num(self, "log_offset", 0, 1, lo_open=True)
        _num(self, "patch_window_seconds", self.stft_hop_seconds, 10)
        _num(self, "patch_hop_seconds", self.stft_hop_seconds, self.patch_window_seconds)
        _check(self.patch_frames <= MAX_PATCH_FRAMES, "patch_window_seconds",
               f"gives {self.patch_frames} frames of {self.stft_hop_seconds:g} s; at most {MAX_PATCH_FRAMES}")

    # --- derived sizes, exactly as YAMNet features.py computes them ---
    @property
    def window_length_samples(self) -> int:
        """STFT window in samples: round(sr · 0.025) = 400."""
        return int(round(self.sample_rate * self.stft_window_seconds))

    @property
    def hop_length_samples(self) -> int:
        """STFT hop in samples: round(sr · 0.010) = 160."""
        return int(round(self.sample_rate * self.stft_hop_seconds))

    @property
    def fft_length(self) -> int:
        """FFT size: next power of two ≥ window = 512."""
        return 2 ** int(math.ceil(math.log(self.window_length_samples) / math.log(2.0)))

    @property
    def num_spectrogram_bins(self) -> int:
        """fft_length // 2 + 1 = 257."""
        return self.fft_length // 2 + 1

    @property
    def patch_frames(self) -> int:
        """Frames per patch: round(0.96 / 0.010) = 96."""
        return int(round(self.patch_window_seconds / self.stft_hop_seconds))

    @property
    def patch_hop_frames(self) -> int:
        """Frames between patch starts: round(0.48 / 0.010) = 48."""
        return int(round(self.patch_hop_seconds / self.stft_hop_seconds))

    @property
    def patch_samples(self) -> int:
        """Waveform samples covering one patch: (96-1)·160 + 400 = 15600 (YAMNet's 0.975 s)."""
        return (self.patch_frames - 1) * self.hop_length_samples + self.window_length_samples

    @property
    def patch_hop_samples(self) -> int:
        """Waveform samples between patch starts: 48 · 160 = 7680."""
        return self.patch_hop_frames * self.hop_length_samples

    @property
    def patch_shape(self) -> tuple[int, int]:
        """(frames, mel bands) = (96, 64)."""
        return (self.patch_frames, self.mel_bands)


@dataclass(frozen=True)
class LearnParams:
    """Knowledge-distillation settings (teacher = YAMNet, student = DS-CNN).

    ``alpha`` weights the hard-label loss: loss = α·CE(hard) + (1-α)·T²·KD(soft, T);
    α = 1 means hard labels only, α = 0 teacher only (Hinton et al. 2015).
    """

    labels: tuple[str, ...] = ("not_cry", "cry")
    positive_label: str = "cry"  #: the label the detector fires on (its score is thresholded)
    preset: str = "cry"  #: "cry" (sigmoid, teacher classes 19/20) or "general" (softmax, teacher head)
    temperature: float = 2.0
    alpha: float = 0.3
    filter_pos: float = 0.30  #: keep positive windows whose teacher score > this
    filter_neg: float = 0.05  #: keep negative windows whose teacher score < this
    neg_per_pos: float = 3.0  #: per-epoch resampling ratio pos:neg = 1:neg_per_pos
    embedding_weight: float = 0.0  #: weight of the embedding-approximation (SEA-style) loss
    #: weight of the auxiliary head's loss: BCE to the teacher's scores of ``aux_classes`` (the
    #: head trains the shared layers to tell those sounds apart and is dropped at export)
    aux_weight: float = 0.0
    aux_classes: tuple[int, ...] = CONFUSABLE_CLASSES  #: YAMNet class indices of the auxiliary head
    # --- student architecture (see cryblock.blocks.learn.student) ---
    width: int = 32  #: channels of the first DS block (and of the stem when stem_channels = 0)
    depth: int = 4  #: number of DS blocks when ``blocks`` is empty (odd blocks stride 2, ×2 channels)
    stem_channels: int = 8  #: channels of the first 3×3 convolution; 0 = ``width``
    stem_stride: int = 2  #: stride of the stem convolution (both axes)
    pool: str = "none"  #: 2×2 pooling after the stem: "none", "max" or "avg"
    kernel: str = "3x3"  #: depthwise kernel, time × mel ("3x3", "5x3", …)
    #: DS blocks as CHANNELS/STRIDE items; "" = the width/depth plan. Default: the best candidate of
    #: ``cryblock tune`` within 1.2 M MACs, 40 KB arena and 64 KB INT8 (README, "Choosing the student").
    blocks: str = "24/2,48/2,96/2,96/1"
    head: int = 0  #: hidden units of a dense layer before the output; 0 = linear head
    epochs: int = 30
    learning_rate: float = 0.003
    batch_size: int = 64
    patience: int = 6  #: early-stopping patience (epochs) on validation AUC
    validation_fraction: float = 0.2  #: fraction of training *groups* held out for validation
    test_fraction: float = 0.25  #: fraction of *groups* held out for the test set
    seed: int = 0
    #: calibrate the deployed detector (threshold, N-of-M, hold) on the *validation* split's night
    #: stream when training (see :class:`NightParams`); never on the test split
    tune_threshold: bool = True
    #: negative windows the teacher scores at or above ``filter_neg``: "drop" them (the teacher
    #: may be right that they hold a cry) or "clip" — keep them with the teacher's probability
    #: clipped to ``filter_neg`` (they are often the hardest negatives: cats, laughter)
    neg_filter: str = "drop"
    #: category balance of the negatives drawn each epoch: a window's weight is
    #: (windows of its category)^(-negative_balance); 0 = uniform over windows, 1 = every category
    #: drawn equally often. Default 0.5 (the square root): chosen on the cross-validated night
    #: (README, "Making the detector meet the night"), where most negatives are speech
    negative_balance: float = 0.5
    #: hard-negative mining: a negative's draw weight is multiplied by 1 + hard_negative_weight · p,
    #: p = the student's probability for it when last trained on (refreshed every epoch); 0 = off
    hard_negative_weight: float = 0.0
    #: cross-validation folds of ``cryblock evaluate --cv`` and ``cryblock demo`` (groups per fold)
    cv_folds: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.labels, list):
            object.__setattr__(self, "labels", tuple(self.labels))
        _check(isinstance(self.labels, tuple) and all(isinstance(x, str) and x for x in self.labels), "labels",
               f"must be non-empty strings, got {list(self.labels) if isinstance(self.labels, tuple) else self.labels!r}")
        _check(not any(unicodedata.category(ch)[0] == "C" for x in self.labels for ch in x), "labels",
               f"must not hold control characters (newlines, tabs, NUL), got {list(self.labels)}")
        _check(len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels), "labels",
               f"need ≥ 2 distinct labels, got {list(self.labels)}")
        _check(self.preset in ("cry", "general"), "preset", f"must be 'cry' or 'general', got {self.preset!r}")
        # the detector thresholds this label's score (cry preset: the sigmoid; general: its softmax column)
        _check(self.positive_label in self.labels, "positive_label",
               f"{self.positive_label!r} is not one of labels {list(self.labels)}")
        # T beyond 100 makes the soft targets uniform to float precision (σ(z/T) → 0.5) and T² overflows the loss scale
        _num(self, "temperature", 0, 100, lo_open=True)
        _num(self, "alpha", 0, 1)
        _num(self, "filter_pos", 0, 1)
        _num(self, "filter_neg", 0, 1)
        _check(self.filter_neg < self.filter_pos, "filter_pos",
               f"need 0 ≤ filter_neg ({self.filter_neg}) < filter_pos ({self.filter_pos}) ≤ 1")
        _num(self, "neg_per_pos", 0, 1000, lo_open=True)
        _num(self, "embedding_weight", 0, 1000)
        _num(self, "aux_weight", 0, 1000)
        if isinstance(self.aux_classes, list):
            object.__setattr__(self, "aux_classes", tuple(self.aux_classes))
        _check(isinstance(self.aux_classes, tuple) and len(self.aux_classes) >= 1
               and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 521 for c in self.aux_classes)
               and len(set(self.aux_classes)) == len(self.aux_classes), "aux_classes",
               f"must be distinct YAMNet class indices 0–520, got {self.aux_classes!r}")
        _num(self, "width", 4, 256, integer=True)
        _num(self, "depth", 1, 8, integer=True)
        _num(self, "stem_channels", 0, 256, integer=True)
        _num(self, "stem_stride", 1, 2, integer=True)
        _check(self.pool in ("none", "max", "avg"), "pool", f"must be none, max or avg, got {self.pool!r}")
        parse_kernel(self.kernel)
        if self.blocks:
            parse_blocks(self.blocks)
        _num(self, "head", 0, 1024, integer=True)
        _num(self, "epochs", 1, 10000, integer=True)
        _num(self, "learning_rate", 0, 1, lo_open=True, hi_open=True)
        _num(self, "batch_size", 1, 65536, integer=True)
        _num(self, "patience", 1, 10000, integer=True)
        _num(self, "validation_fraction", 0, 1, lo_open=True, hi_open=True)
        _num(self, "test_fraction", 0, 1, lo_open=True, hi_open=True)
        _num(self, "seed", 0, 2 ** 32 - 1, integer=True)
        _check(isinstance(self.tune_threshold, bool), "tune_threshold", f"must be true or false, got {self.tune_threshold!r}")
        _check(self.neg_filter in ("drop", "clip"), "neg_filter", f"must be 'drop' or 'clip', got {self.neg_filter!r}")
        _num(self, "negative_balance", 0, 1)
        _num(self, "hard_negative_weight", 0, 1000)
        _num(self, "cv_folds", 2, 20, integer=True)


@dataclass(frozen=True)
class DetectorParams:
    """On-device decision logic, in the units the firmware uses.

    A patch is *positive* when score ≥ ``threshold``. The detector fires when at least
    ``vote_n`` of the last ``vote_m`` patches are positive (N-of-M voting), then stays
    on for ``hold_seconds`` after the last satisfied vote (hold-time hysteresis).
    """

    threshold: float = 0.5
    vote_n: int = 2
    vote_m: int = 3
    hold_seconds: float = 2.0

    def __post_init__(self) -> None:
        _num(self, "threshold", 0, 1)
        _num(self, "vote_m", 1, 64, integer=True)
        _num(self, "vote_n", 1, self.vote_m, integer=True)
        _num(self, "hold_seconds", 0, 3600)


@dataclass(frozen=True)
class AugmentParams:
    """Training-time augmentation of the student's windows (cryblock.blocks.learn.augment).

    Each ``p_*`` is the probability that an augmentation is applied to a training window in an
    epoch (drawn afresh every epoch, seeded by ``learn.seed``); all zero trains exactly as
    without augmentation. The default is noise-robust distillation: 40 % of the windows mixed
    with a training negative at 0–20 dB SNR, 40 % with a nursery noise bed at 0–25 dB, the soft
    target the teacher's score of the *clean* window (``teacher_target``); it was chosen on the
    cross-validated night over three seeds (README, *Making the detector meet the night*). With
    ``teacher_target="augmented"`` the teacher scores every augmented window instead. Patches
    are ``log(mel + log_offset)``: everything is done in the linear-mel domain.
    """

    p_mix: float = 0.4  #: mix with a random training negative ("background") at a random SNR
    mix_snr_min_db: float = 0.0  #: SNR range of the mix, dB (mel-domain power ratio)
    mix_snr_max_db: float = 20.0
    p_gain: float = 0.0  #: random gain (exact: mel scales linearly with the waveform)
    gain_min_db: float = -30.0
    gain_max_db: float = 6.0
    p_shift: float = 0.0  #: time shift by up to ± half a patch hop (from the neighbouring patches)
    p_specaugment: float = 0.0  #: SpecAugment time and frequency masks (set to silence)
    time_masks: int = 2
    time_mask_frames: int = 12  #: widest time mask, frames (10 ms each)
    freq_masks: int = 2
    freq_mask_bands: int = 8  #: widest frequency mask, mel bands
    p_bandlimit: float = 0.0  #: band-limit to ``bandlimit_hz`` (8 kHz-sourced and phone audio)
    bandlimit_hz: float = 4000.0
    #: mix with a steady nursery noise bed (white/pink/brown noise, fan, purifier — see
    #: cryblock.blocks.learn.nursery) at a random SNR in the nursery range
    p_nursery: float = 0.4
    nursery_snr_min_db: float = 0.0
    nursery_snr_max_db: float = 25.0
    #: soft targets of augmented windows: "augmented" (the teacher scores the augmented window) or
    #: "clean" (the teacher's score of the clean window: noise-robust distillation — the student
    #: learns to hear through the noise what the teacher hears without it)
    teacher_target: str = "clean"

    def __post_init__(self) -> None:
        for name in ("p_mix", "p_gain", "p_shift", "p_specaugment", "p_bandlimit"):
            _num(self, name, 0, 1)
        _num(self, "mix_snr_min_db", -40, 60)
        _num(self, "mix_snr_max_db", self.mix_snr_min_db, 60)
        _num(self, "gain_min_db", -60, 40)
        _num(self, "gain_max_db", self.gain_min_db, 40)
        _num(self, "time_masks", 0, 10, integer=True)
        _num(self, "time_mask_frames", 0, 96, integer=True)
        _num(self, "freq_masks", 0, 10, integer=True)
        _num(self, "freq_mask_bands", 0, 64, integer=True)
        _num(self, "bandlimit_hz", 500, 96000)
        _num(self, "p_nursery", 0, 1)
        _num(self, "nursery_snr_min_db", -40, 60)
        _num(self, "nursery_snr_max_db", self.nursery_snr_min_db, 60)
        _check(self.teacher_target in ("augmented", "clean"), "teacher_target",
               f"must be 'augmented' or 'clean', got {self.teacher_target!r}")

    #: every augmentation off (``Params().replace(augment=AugmentParams.OFF)``): training as without it
    OFF = {"p_mix": 0.0, "p_gain": 0.0, "p_shift": 0.0, "p_specaugment": 0.0, "p_bandlimit": 0.0, "p_nursery": 0.0}

    @property
    def active(self) -> bool:
        """True when any augmentation can happen."""
        return any(getattr(self, name) for name in self.OFF)


@dataclass(frozen=True)
class NightParams:
    """The nursery-night evaluation and the detector calibration on it (cryblock.blocks.learn.night).

    A night has a household background (a split's negative clips back to back, longest first)
    and nursery noise beds; single cries and sustained crying episodes are laid into both at each
    SNR of ``snrs_db``; false alerts are counted on the backgrounds alone. Calibration (when
    ``learn.tune_threshold``) picks the threshold, N-of-M and hold time with the most episodes
    alerted within 10 s whose false-alert rate's upper 95 % limit stays within
    ``fa_budget_per_8h`` on the *validation* nights.
    """

    snrs_db: tuple[float, ...] = (0.0, 10.0, 20.0)  #: cry-to-background SNRs, dB
    gap_seconds: float = 25.0  #: mean background between two insertions, s (uniform ±25 %)
    max_cry_seconds: float = 10.0  #: single inserted cries are cut to this, s
    #: false alerts per 8 h the calibration may spend — on the upper end of the rate's exact 95 %
    #: Poisson interval over the validation nights, not on its point estimate
    fa_budget_per_8h: float = 1.0
    bootstrap: int = 500  #: bootstrap resamples (of groups) for the AUC confidence intervals

    def __post_init__(self) -> None:
        if isinstance(self.snrs_db, list):
            object.__setattr__(self, "snrs_db", tuple(self.snrs_db))
        _check(isinstance(self.snrs_db, tuple) and 1 <= len(self.snrs_db) <= 8
               and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       and -30 <= v <= 60 for v in self.snrs_db), "snrs_db",
               f"must be 1–8 SNRs in [-30, 60] dB, got {self.snrs_db!r}")
        _num(self, "gap_seconds", 2, 3600)
        _num(self, "max_cry_seconds", 0.5, 600)
        _num(self, "fa_budget_per_8h", 0, 10000)
        _num(self, "bootstrap", 0, 100000, integer=True)


@dataclass(frozen=True)
class Params:
    """All stages' parameters. Serialises to/from JSON (``params.json`` in a run)."""

    dsp: DspParams = field(default_factory=DspParams)
    learn: LearnParams = field(default_factory=LearnParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    night: NightParams = field(default_factory=NightParams)
    detector: DetectorParams = field(default_factory=DetectorParams)

    def __post_init__(self) -> None:
        # a time shift moves a window by 1 … hop/2 frames (blocks/learn/augment.py): none fit a 1-frame hop
        if self.augment.p_shift > 0 and self.dsp.patch_hop_frames < 2:
            raise ParameterError(f"parameter 'p_shift': a time shift needs a patch hop of at least 2 frames "
                                 f"(patch_hop_seconds ≥ {2 * self.dsp.stft_hop_seconds:g} s), got "
                                 f"{self.dsp.patch_hop_frames} frame; set --shift 0 or a longer hop")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict ({"dsp": {...}, "learn": {...}, "augment": {...}, "night": {...},
        "detector": {...}}; tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Params":
        """Build from a (possibly partial) dict; missing sections/fields take their defaults (so a
        params.json of an earlier version still loads), unknown keys raise ParameterError."""
        sections = {"dsp": DspParams, "learn": LearnParams, "augment": AugmentParams, "night": NightParams,
                    "detector": DetectorParams}
        unknown = set(d) - set(sections)
        if unknown:
            raise ParameterError(f"unknown parameter section(s): {sorted(unknown)}")
        kw = {}
        for name, klass in sections.items():
            sub = d.get(name) or {}
            if not isinstance(sub, dict):
                raise ParameterError(f"section '{name}' must be a JSON object of fields, got {type(sub).__name__}")
            known = {f.name for f in dataclasses.fields(klass)}
            bad = set(sub) - known
            if bad:
                raise ParameterError(f"unknown parameter(s) in '{name}': {sorted(bad)}")
            sub = {k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()}  # JSON lists → tuples
            try:
                kw[name] = klass(**sub)
            except TypeError as e:  # wrong type for a field
                raise ParameterError(f"section '{name}': {e}") from None
        return cls(**kw)

    def replace(self, **sections: dict[str, Any]) -> "Params":
        """Return a copy with some fields changed: ``p.replace(learn={"epochs": 5})``."""
        d = self.to_dict()
        for name, upd in sections.items():
            if name not in d:
                raise ParameterError(f"unknown parameter section {name!r}")
            d[name].update(upd)
        return Params.from_dict(d)

    def save(self, path: str | Path) -> None:
        """Write JSON to ``path`` atomically (temp file + rename)."""
        from .output import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Params":
        """Read ``params.json``; a missing or malformed file raises ParameterError naming it."""
        from .inputs import read_regular_text

        p = Path(path)
        try:
            d = json.loads(read_regular_text(p))  # a FIFO or /dev/zero is refused, not read forever
        except FileNotFoundError:
            raise ParameterError(f"{p}: parameters file not found") from None
        except IsADirectoryError:
            raise ParameterError(f"{p}: is a folder; give the params.json file") from None
        except OSError as e:
            raise ParameterError(f"{p}: cannot read parameters ({e.strerror or e})") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number
            msg = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
            raise ParameterError(f"{p}: not valid JSON ({msg})") from None
        if not isinstance(d, dict):
            raise ParameterError(f"{p}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except ParameterError as e:
            raise ParameterError(f"{p}: {e}") from None
