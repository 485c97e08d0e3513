"""The one parameters object that flows through dsp → teacher → learn → deploy.

:class:`Params` groups three frozen dataclasses:

* :class:`DspParams` – the log-mel front-end. Defaults are YAMNet's ``params.py``
  (tensorflow/models research/audioset/yamnet/params.py); the learning block, the
  teacher and the on-device C twin all read the same object, so a change here changes
  every stage consistently.
* :class:`LearnParams` – knowledge distillation (temperature, α, teacher-as-filter
  thresholds, pos:neg resampling, student width/depth, optimiser).
* :class:`DetectorParams` – the on-device decision logic (threshold, N-of-M voting,
  hold-time hysteresis).

All values are validated on construction; a bad value raises
:class:`cryblock.errors.ParameterError` naming the parameter.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ParameterError

#: YAMNet AudioSet class indices of the cry classes (yamnet_class_map.csv):
#: 19 "Crying, sobbing", 20 "Baby cry, infant cry".
CRY_CLASSES = (19, 20)


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ParameterError(f"parameter '{name}': {msg}")


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
        _check(self.sample_rate >= 4000 and math.isfinite(self.sample_rate), "sample_rate",
               f"must be a finite rate ≥ 4000 Hz, got {self.sample_rate}")
        _check(0 < self.stft_window_seconds <= 0.2, "stft_window_seconds",
               f"must be in (0, 0.2] s, got {self.stft_window_seconds}")
        _check(0 < self.stft_hop_seconds <= self.stft_window_seconds, "stft_hop_seconds",
               f"must be in (0, stft_window_seconds], got {self.stft_hop_seconds}")
        _check(isinstance(self.mel_bands, int) and 8 <= self.mel_bands <= 256, "mel_bands",
               f"must be an integer in [8, 256], got {self.mel_bands!r}")
        _check(0 <= self.mel_min_hz < self.mel_max_hz, "mel_min_hz",
               f"must be ≥ 0 and < mel_max_hz ({self.mel_max_hz}), got {self.mel_min_hz}")
        _check(self.mel_max_hz <= self.sample_rate / 2, "mel_max_hz",
               f"must be ≤ Nyquist ({self.sample_rate / 2} Hz), got {self.mel_max_hz}")
        _check(self.log_offset > 0, "log_offset", f"must be > 0, got {self.log_offset}")
        _check(self.patch_window_seconds >= self.stft_hop_seconds, "patch_window_seconds",
               f"must be ≥ one STFT hop, got {self.patch_window_seconds}")
        _check(0 < self.patch_hop_seconds, "patch_hop_seconds",
               f"must be > 0, got {self.patch_hop_seconds}")

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
    width: int = 32  #: channels of the first DS block
    depth: int = 4  #: number of depthwise-separable blocks
    epochs: int = 30
    learning_rate: float = 0.003
    batch_size: int = 64
    patience: int = 6  #: early-stopping patience (epochs) on validation AUC
    validation_fraction: float = 0.2  #: fraction of training *groups* held out for validation
    test_fraction: float = 0.25  #: fraction of *groups* held out for the test set
    seed: int = 0
    #: set ``detector.threshold`` to the INT8 student's best clip-F1 threshold (clip score = max
    #: over its windows) on the validation split (never the test split) when training
    tune_threshold: bool = True

    def __post_init__(self) -> None:
        _check(len(self.labels) >= 2 and len(set(self.labels)) == len(self.labels), "labels",
               f"need ≥ 2 distinct labels, got {list(self.labels)}")
        _check(self.preset in ("cry", "general"), "preset", f"must be 'cry' or 'general', got {self.preset!r}")
        # the detector thresholds this label's score (cry preset: the sigmoid; general: its softmax column)
        _check(self.positive_label in self.labels, "positive_label",
               f"{self.positive_label!r} is not one of labels {list(self.labels)}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(0 <= self.alpha <= 1, "alpha", f"must be in [0, 1], got {self.alpha}")
        _check(0 <= self.filter_neg < self.filter_pos <= 1, "filter_pos",
               f"need 0 ≤ filter_neg ({self.filter_neg}) < filter_pos ({self.filter_pos}) ≤ 1")
        _check(self.neg_per_pos > 0, "neg_per_pos", f"must be > 0, got {self.neg_per_pos}")
        _check(self.embedding_weight >= 0, "embedding_weight", f"must be ≥ 0, got {self.embedding_weight}")
        _check(4 <= self.width <= 256, "width", f"must be in [4, 256], got {self.width}")
        _check(1 <= self.depth <= 8, "depth", f"must be in [1, 8], got {self.depth}")
        _check(self.epochs >= 1, "epochs", f"must be ≥ 1, got {self.epochs}")
        _check(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        _check(self.batch_size >= 1, "batch_size", f"must be ≥ 1, got {self.batch_size}")
        _check(self.patience >= 1, "patience", f"must be ≥ 1, got {self.patience}")
        _check(0 < self.validation_fraction < 1, "validation_fraction", f"must be in (0, 1), got {self.validation_fraction}")
        _check(0 < self.test_fraction < 1, "test_fraction", f"must be in (0, 1), got {self.test_fraction}")


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
        _check(0 <= self.threshold <= 1, "threshold", f"must be in [0, 1], got {self.threshold}")
        _check(1 <= self.vote_m <= 64, "vote_m", f"must be in [1, 64], got {self.vote_m}")
        _check(1 <= self.vote_n <= self.vote_m, "vote_n", f"must be in [1, vote_m={self.vote_m}], got {self.vote_n}")
        _check(0 <= self.hold_seconds <= 3600, "hold_seconds", f"must be in [0, 3600] s, got {self.hold_seconds}")


@dataclass(frozen=True)
class Params:
    """All stages' parameters. Serialises to/from JSON (``params.json`` in a run)."""

    dsp: DspParams = field(default_factory=DspParams)
    learn: LearnParams = field(default_factory=LearnParams)
    detector: DetectorParams = field(default_factory=DetectorParams)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict ({"dsp": {...}, "learn": {...}, "detector": {...}})."""
        d = dataclasses.asdict(self)
        d["learn"]["labels"] = list(self.learn.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Params":
        """Build from a (possibly partial) dict; unknown keys raise ParameterError."""
        sections = {"dsp": DspParams, "learn": LearnParams, "detector": DetectorParams}
        unknown = set(d) - set(sections)
        if unknown:
            raise ParameterError(f"unknown parameter section(s): {sorted(unknown)}")
        kw = {}
        for name, klass in sections.items():
            sub = dict(d.get(name) or {})
            known = {f.name for f in dataclasses.fields(klass)}
            bad = set(sub) - known
            if bad:
                raise ParameterError(f"unknown parameter(s) in '{name}': {sorted(bad)}")
            if "labels" in sub:
                sub["labels"] = tuple(sub["labels"])
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
        from .io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Params":
        """Read ``params.json``; a missing or malformed file raises ParameterError naming it."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise ParameterError(f"{p}: parameters file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ParameterError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ParameterError(f"{p}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except ParameterError as e:
            raise ParameterError(f"{p}: {e}") from None
