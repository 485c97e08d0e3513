"""Reference implementation of the on-device detector (threshold, N-of-M voting, hold time).

This is the Python twin of ``templates/esp32s3/main/postproc.c``; tests feed both the same score
sequences and require identical decisions, so the learning block's evaluation can score the
*deployed* decision logic with :func:`run_detector`.

Semantics (per patch, patches every ``hop_ms`` = 480 ms of audio by default)::

    pos   = float32(score) >= float32(threshold)
    votes = number of positives among the last M patches (fewer at start-up)
    ok    = votes >= N                 -> last_ok_ms = t_ms
    det   = ok or (a vote was ever ok and t_ms - last_ok_ms < hold_ms)
    event = det differs from the previous patch's det (firmware logs an EVT line)

``hold_ms = round(hold_seconds * 1000)``. Times are integer milliseconds so Python and C agree
exactly. Changing N or M with :meth:`Detector.configure` clears the vote history, as in C.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .errors import ParameterError
from .params import DetectorParams


@dataclass(frozen=True)
class DetectorStep:
    """Result of one :meth:`Detector.update`: ``pos``/``det`` 0|1, ``votes`` count,
    ``changed`` True when ``det`` flipped with this patch."""

    pos: int
    votes: int
    det: int
    changed: bool


@dataclass
class DetectorTrace:
    """Result of :func:`run_detector` over n patches.

    Attributes:
        t_ms: int64 ``[n]`` patch times (ms).
        pos: int8 ``[n]`` 0|1.
        votes: int16 ``[n]``.
        det: int8 ``[n]`` 0|1.
        events: list of ``(index, t_ms, "ON"|"OFF")`` state changes.
    """

    t_ms: np.ndarray
    pos: np.ndarray
    votes: np.ndarray
    det: np.ndarray
    events: list[tuple[int, int, str]] = field(default_factory=list)


class Detector:
    """Streaming detector; ``Detector(DetectorParams(threshold=0.6, vote_n=2, vote_m=3))``."""

    def __init__(self, params: DetectorParams = DetectorParams()) -> None:
        self.params = params
        self.reset()

    @property
    def hold_ms(self) -> int:
        """Hold time in integer ms: ``round(hold_seconds * 1000)``."""
        return int(round(self.params.hold_seconds * 1000.0))

    def reset(self) -> None:
        """Forget all history (as after reset on the device)."""
        self._hist: deque[int] = deque(maxlen=self.params.vote_m)
        self.det = 0
        self._last_ok_ms: int | None = None

    def configure(self, params: DetectorParams) -> None:
        """Change the configuration at run time, like the serial ``set`` commands: a new N or M
        clears the vote history; det and hold state are kept."""
        if (params.vote_n, params.vote_m) != (self.params.vote_n, self.params.vote_m):
            self._hist = deque(maxlen=params.vote_m)
        self.params = params

    def update(self, score: float, t_ms: int) -> DetectorStep:
        """Feed one patch score (in [0, 1]) observed at integer time ``t_ms`` (ms)."""
        pos = int(np.float32(score) >= np.float32(self.params.threshold))
        self._hist.append(pos)
        votes = int(sum(self._hist))
        ok = votes >= self.params.vote_n
        if ok:
            self._last_ok_ms = int(t_ms)
        det = int(ok or (self._last_ok_ms is not None and int(t_ms) - self._last_ok_ms < self.hold_ms))
        changed = det != self.det
        self.det = det
        return DetectorStep(pos, votes, det, changed)


def run_detector(scores, params: DetectorParams = DetectorParams(), t_ms=None,
                 hop_ms: int = 480) -> DetectorTrace:
    """Run the detector over a whole score sequence.

    Args:
        scores: float ``[n]`` patch scores in [0, 1], in time order.
        params: threshold / vote N, M / hold time.
        t_ms: optional int ``[n]`` patch times in ms (non-decreasing); default ``i * hop_ms``.
        hop_ms: patch hop in ms when ``t_ms`` is not given (YAMNet: 480 ms).

    Returns:
        :class:`DetectorTrace`.

    Raises:
        ParameterError: scores not 1-D / not finite, or t_ms of another length.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ParameterError(f"scores must be a finite 1-D sequence, got shape {s.shape}")
    n = s.shape[0]
    t = np.arange(n, dtype=np.int64) * int(hop_ms) if t_ms is None else np.asarray(t_ms, dtype=np.int64)
    if t.shape != (n,):
        raise ParameterError(f"t_ms has shape {t.shape}, expected ({n},)")
    d = Detector(params)
    pos = np.zeros(n, np.int8)
    votes = np.zeros(n, np.int16)
    det = np.zeros(n, np.int8)
    events = []
    for i in range(n):
        r = d.update(float(s[i]), int(t[i]))
        pos[i], votes[i], det[i] = r.pos, r.votes, r.det
        if r.changed:
            events.append((i, int(t[i]), "ON" if r.det else "OFF"))
    return DetectorTrace(t, pos, votes, det, events)


def detector_states(scores, params: DetectorParams = DetectorParams(), hop_ms: int = 480) -> np.ndarray:
    """The detector state after each patch, vectorised: int8 ``[n]`` equal to
    ``run_detector(scores, params, hop_ms=hop_ms).det`` for patches every ``hop_ms`` (the same
    float32 comparison, vote counts over the last M patches — fewer at start-up — and the same
    integer-millisecond hold), without the Python loop (the night calibration tries ~1000
    settings).

    Raises:
        ParameterError: scores not 1-D / not finite.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ParameterError(f"scores must be a finite 1-D sequence, got shape {s.shape}")
    n = s.shape[0]
    if n == 0:
        return np.zeros(0, np.int8)
    pos = (s.astype(np.float32) >= np.float32(params.threshold)).astype(np.int32)
    votes = np.convolve(pos, np.ones(params.vote_m, np.int32))[:n]
    ok = votes >= params.vote_n
    t = np.arange(n, dtype=np.int64) * int(hop_ms)
    last_ok = np.maximum.accumulate(np.where(ok, t, np.iinfo(np.int64).min))
    hold_ms = int(round(params.hold_seconds * 1000.0))
    held = (last_ok > np.iinfo(np.int64).min) & (t - last_ok < hold_ms)
    return (ok | held).astype(np.int8)
