"""The second opinion: the hub re-scores the audio around each alert and marks it confirmed or doubtful.

The device must stay tiny; a hub can afford the full YAMNet teacher and a stronger classifier on
a few seconds of audio. Two scores per snippet (the window :data:`~cryblock.mqttformat.SNIPPET_PRE_S`
before to :data:`~cryblock.mqttformat.SNIPPET_POST_S` after the alert onset, cut into YAMNet patches):

* **teacher** — YAMNet's cry probability (preset "cry": :func:`~cryblock.blocks.learn.teacher.cry_probability`;
  preset "general": the run's teacher head), the maximum over the snippet's patches;
* **hub** — the *hub model*: a classifier on the teacher's 1024-d embeddings (positive label vs
  the rest) trained in the same ``cryblock train`` run on its training split (:func:`fit_hub_model`,
  saved as ``hub_model.npz`` in the run folder: plain arrays, no pickle), the maximum over the patches.

**Verdict**: ``confirmed`` when the hub score ≥ the hub threshold, else ``doubtful``. The threshold
is calibrated on the run's *validation* clips: the highest value that keeps :data:`HUB_RECALL` of
the positive clips (clip score = maximum over its windows), so confirmation costs at most
5 % of real cries on validation data; ``threshold=`` overrides it.

:func:`confirmer` makes the hub a second stage of the night's detector: the cross-validated
nights report device alone vs device + hub (``cryblock demo``, ``cryblock evaluate --cv``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryblock import mqttformat as mf
from cryblock.errors import CryblockError, DataError

#: File name of the hub model in a run folder.
HUB_MODEL_NAME = "hub_model.npz"
#: Fraction of the positive validation clips the calibrated hub threshold keeps.
HUB_RECALL = 0.95
#: Hub model candidates (scikit-learn, fitted on standardised embeddings): name → constructor kwargs.
#: The one with the best validation window AUC is kept.
CANDIDATES = {
    "logreg": dict(C=0.1, max_iter=1000, class_weight="balanced"),
    "mlp": dict(hidden_layer_sizes=(256,), alpha=1e-3, early_stopping=True, max_iter=60, n_iter_no_change=5),
}
VERDICTS = mf.VERDICTS


@dataclass
class HubModel:
    """A fitted hub model as plain arrays: ``proba(emb)`` = the positive probability of float
    ``[N, 1024]`` embeddings, float32 ``[N]``.

    Attributes:
        kind: "logreg" or "mlp" (one ReLU hidden layer).
        mean, scale: standardisation of the embeddings, ``[1024]``.
        weights, biases: layer weights ``[in, out]`` and biases ``[out]``; the last layer has one output (a logit).
        threshold: the verdict threshold (see the module docstring).
        val_auc: validation window AUC of each candidate tried.
        label: the positive label.
    """

    kind: str
    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    threshold: float
    val_auc: dict[str, float]
    label: str = "cry"

    def logit(self, emb: np.ndarray) -> np.ndarray:
        h = (np.asarray(emb, np.float32) - self.mean) / self.scale
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if k < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h.reshape(-1)

    def proba(self, emb: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-np.clip(self.logit(emb), -60, 60)))).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``hub_model.npz`` (no pickled objects)."""
        from cryblock.output import atomic_save_npz

        arrays = {f"w{k}": w for k, w in enumerate(self.weights)} | {f"b{k}": b for k, b in enumerate(self.biases)}
        atomic_save_npz(path, kind=np.array(self.kind), mean=self.mean, scale=self.scale,
                        layers=np.array(len(self.weights)), threshold=np.array(self.threshold),
                        label=np.array(self.label), candidates=np.array(list(self.val_auc)),
                        val_auc=np.array(list(self.val_auc.values()), np.float64), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HubModel":
        """Read :meth:`save`'s file. Raises DataError naming it when it is missing or damaged."""
        try:
            with np.load(path, allow_pickle=False) as z:
                n = int(z["layers"])
                m = cls(str(z["kind"]), z["mean"].astype(np.float32), z["scale"].astype(np.float32),
                        [z[f"w{k}"].astype(np.float32) for k in range(n)],
                        [z[f"b{k}"].astype(np.float32) for k in range(n)], float(z["threshold"]),
                        dict(zip((str(c) for c in z["candidates"]), (float(v) for v in z["val_auc"]))),
                        str(z["label"]))
        except FileNotFoundError:
            raise DataError(f"{path}: no hub model (train the run with this cryblock: cryblock train writes "
                            f"{HUB_MODEL_NAME})") from None
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: not a hub model ({e})") from None
        if m.mean.shape != (1024,) or m.weights[0].shape[0] != 1024 or m.weights[-1].shape[1:] != (1,):
            raise DataError(f"{path}: not a hub model for 1024-d embeddings")
        return m


def _clip_max(scores: np.ndarray, clip_index: np.ndarray) -> np.ndarray:
    out = np.full(int(clip_index.max()) + 1, -np.inf)
    np.maximum.at(out, clip_index, scores)
    return out[np.isfinite(out)]


def calibrate_threshold(pos_scores: np.ndarray, recall: float = HUB_RECALL) -> float:
    """The highest threshold that keeps ``recall`` of the positive (clip) scores, floored to 1e-3."""
    s = np.sort(np.asarray(pos_scores, np.float64))
    if s.size == 0:
        return 0.5
    k = int(np.floor((1.0 - recall) * s.size))
    return float(np.floor(s[min(k, s.size - 1)] * 1000) / 1000)


def fit_hub_model(emb_train: np.ndarray, pos_train: np.ndarray, emb_val: np.ndarray, pos_val: np.ndarray,
                  val_clip_index: np.ndarray | None = None, *, label: str = "cry", seed: int = 0) -> HubModel:
    """Fit the :data:`CANDIDATES` on the training embeddings, keep the best by validation AUC,
    calibrate its threshold on the validation positives (see the module docstring).

    Args:
        emb_train, emb_val: float ``[N, 1024]`` teacher embeddings of the training / validation windows.
        pos_train, pos_val: bool ``[N]``, the window's clip carries the positive label.
        val_clip_index: the validation windows' clip numbers (threshold on clip maxima), or None
            (on windows).

    Raises:
        DataError: a split lacks positive or negative windows.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    pos_train, pos_val = np.asarray(pos_train, bool), np.asarray(pos_val, bool)
    for name, y in (("training", pos_train), ("validation", pos_val)):
        if y.all() or not y.any():
            raise DataError(f"hub model: the {name} split needs positive and negative windows")
    x = np.asarray(emb_train, np.float32)
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6).astype(np.float32)
    xs, xv = (x - mean) / scale, (np.asarray(emb_val, np.float32) - mean) / scale
    fitted, auc = {}, {}
    for name, kw in CANDIDATES.items():
        clf = (LogisticRegression(random_state=seed, **kw) if name == "logreg"
               else MLPClassifier(random_state=seed, **kw))
        clf.fit(xs, pos_train)
        auc[name] = float(roc_auc_score(pos_val, clf.predict_proba(xv)[:, 1]))
        if name == "logreg":
            fitted[name] = ([clf.coef_.T.astype(np.float32)], [clf.intercept_.astype(np.float32)])
        else:
            fitted[name] = ([w.astype(np.float32) for w in clf.coefs_], [b.astype(np.float32) for b in clf.intercepts_])
    best = max(auc, key=lambda k: auc[k])
    m = HubModel(best, mean.astype(np.float32), scale, *fitted[best], 0.5, auc, label)
    pv = m.proba(emb_val)[pos_val]
    clip_pos = pv if val_clip_index is None else _clip_max(pv, np.asarray(val_clip_index)[pos_val])
    m.threshold = calibrate_threshold(clip_pos)
    return m


# ------------------------------------------------------------------------------------------ opinion
@dataclass(frozen=True)
class Opinion:
    """A snippet's scores and verdict (``confirmed`` / ``doubtful``)."""

    teacher_score: float
    hub_score: float
    verdict: str


class SecondOpinion:
    """Teacher + hub model of one run (:meth:`from_run`).

    Args:
        teacher: a loaded :class:`~cryblock.blocks.learn.teacher.Teacher`.
        hub: the run's :class:`HubModel`.
        params: the run's :class:`~cryblock.params.Params` (DSP front-end, preset, labels).
        head: the run's teacher head (preset "general"), else None.
        threshold: hub threshold for the verdict (None: the calibrated one).
    """

    def __init__(self, teacher, hub: HubModel, params, head=None, threshold: float | None = None) -> None:
        self.teacher, self.hub, self.params, self.head = teacher, hub, params, head
        self.threshold = hub.threshold if threshold is None else float(threshold)
        learn = params.learn
        self.pos_index = 1 if learn.preset == "cry" else learn.labels.index(learn.positive_label)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, teacher=None, threshold: float | None = None) -> "SecondOpinion":
        """Load the run's params, hub model (and teacher head) and the teacher.

        Raises:
            CryblockError: not a run folder, no/damaged hub model, teacher not found.
        """
        from cryblock.blocks.learn.distill import TeacherHead
        from cryblock.blocks.learn.teacher import load_teacher
        from cryblock.blocks.learn.train import TEACHER_HEAD_NAME
        from cryblock.params import Params

        d = Path(run_dir)
        if not (d / "params.json").is_file():
            raise CryblockError(f"--run: {d}: not a cryblock train run folder (no params.json)")
        params = Params.load(d / "params.json")
        hub = HubModel.load(d / HUB_MODEL_NAME)
        head = TeacherHead.load(d / TEACHER_HEAD_NAME) if params.learn.preset == "general" else None
        if teacher is None or isinstance(teacher, (str, os.PathLike)):
            teacher = load_teacher(teacher)
        return cls(teacher, hub, params, head, threshold)

    def patch_scores(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Teacher and hub positive scores of each patch: two float32 ``[N]``."""
        from cryblock.blocks.learn.teacher import cry_probability

        sc, emb = self.teacher.predict(patches)
        t = cry_probability(sc) if self.head is None else self.head.proba(emb)[:, self.pos_index]
        return np.asarray(t, np.float32), self.hub.proba(emb)

    def verdict(self, teacher_score: float, hub_score: float) -> Opinion:
        return Opinion(float(teacher_score), float(hub_score),
                       "confirmed" if hub_score >= self.threshold else "doubtful")

    def score_waveform(self, waveform: np.ndarray) -> Opinion:
        """Opinion on a snippet: float32 ``[n]`` in [-1, 1] at the run's sample rate (16 kHz);
        a snippet shorter than one patch is zero-padded to one."""
        from cryblock.blocks.dsp.features import waveform_to_patches

        t, h = self.patch_scores(waveform_to_patches(np.asarray(waveform, np.float32), self.params.dsp))
        return self.verdict(t.max(), h.max())

    def score_pcm(self, pcm: bytes | np.ndarray, sr: int) -> Opinion:
        """Opinion on int16 samples (bytes little-endian, or an array) at ``sr`` Hz (resampled)."""
        x = (np.frombuffer(pcm, "<i2") if isinstance(pcm, (bytes, bytearray, memoryview)) else np.asarray(pcm))
        x = x.astype(np.float32) / 32768.0
        rate = int(round(self.params.dsp.sample_rate))
        if sr != rate:
            import soxr

            x = soxr.resample(x, sr, rate).astype(np.float32)
        return self.score_waveform(x)


# ------------------------------------------------------------------------------------------ cascade
def snippet_patch_range(onset_patch: int, n: int, hop_s: float, patch_s: float) -> tuple[int, int]:
    """Patches ``[a, b)`` of the snippet of an alert that switched on at patch ``onset_patch``: the
    device sees the onset at the end of that patch; the snippet spans :data:`SNIPPET_PRE_S` before
    to :data:`SNIPPET_POST_S` after it, and a patch belongs to it when it lies inside."""
    onset_s = onset_patch * hop_s + patch_s
    a = int(np.ceil((onset_s - mf.SNIPPET_PRE_S) / hop_s - 1e-9))
    b = int(np.floor((onset_s + mf.SNIPPET_POST_S - patch_s) / hop_s + 1e-9)) + 1
    return max(0, a), min(n, max(b, a + 1))


def _confirmed_states(states: np.ndarray, hub: np.ndarray, threshold: float, hop_s: float, patch_s: float):
    """``states`` with every alert (on-run) whose snippet's hub score is below ``threshold`` removed;
    also the number of alerts and of confirmed ones."""
    out = states.copy()
    runs = np.flatnonzero(np.diff(np.r_[0, states, 0]) != 0).reshape(-1, 2)
    kept = 0
    for a, b in runs:
        s0, s1 = snippet_patch_range(int(a), len(states), hop_s, patch_s)
        if hub[s0:s1].max() >= threshold:
            kept += 1
        else:
            out[a:b] = 0
    return out, len(runs), kept


#: The hub's verdict comes once the snippet is complete: this long after the device's alert, s.
CONFIRM_DELAY_S = mf.SNIPPET_POST_S


def confirmer(night, hub, threshold: float):
    """The hub as a second stage of the night's detector (``confirm`` of
    :func:`cryblock.blocks.learn.night.judge`): every alert whose snippet's hub score is below
    ``threshold`` is switched off.

    Args:
        night: the :class:`~cryblock.blocks.learn.night.Night`.
        hub: the hub's per-patch scores of it (:class:`~cryblock.blocks.learn.night.NightScores`).
        threshold: hub threshold of the verdict.
    """
    def confirm(key, states):
        h = hub.backgrounds[key] if isinstance(key, str) else hub.streams[key]
        return _confirmed_states(np.asarray(states), h, threshold, night.hop_s, night.patch_s)[0]
    return confirm
