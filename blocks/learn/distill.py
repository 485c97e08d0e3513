"""Knowledge distillation YAMNet → DS-CNN: targets, losses, teacher-as-filter, resampling, training.

Losses (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015)::

    loss = α · hard + (1 − α) · T² · soft(T)  [+ embedding_weight · MSE(proj(feat), teacher_emb)]

* Binary cry preset (one sigmoid unit): ``hard`` = BCE(label, σ(z_s)); ``soft`` =
  KL(Bern(σ(z_t/T)) ‖ Bern(σ(z_s/T))), with teacher logit z_t = logit(p_teacher). Distilling the
  cry probability as its own Bernoulli avoids the prior system's mistake of a softmax over
  YAMNet's 521 independent sigmoid scores (see docs/prior-art-lessons.md).
* General labels (softmax): ``hard`` = CE(one-hot, softmax(z_s)); ``soft`` =
  KL(softmax(z_t/T) ‖ softmax(z_s/T)), z_t = logits of the teacher head (logistic regression on
  YAMNet's 1024-d embeddings, fitted on the training split, :func:`fit_teacher_head`).
* KL (not cross-entropy) is used for the soft term, so it is 0 exactly when the student's
  logits equal the teacher's; the gradients are the same as with cross-entropy. The T² factor
  keeps the soft gradients' size independent of T; as T → ∞, T²·KL → (z_t − z_s)²/8 (binary).
* α = 1 → hard labels only (the teacher then only selects windows); α = 0 → teacher only.

Teacher-as-filter (:func:`teacher_filter`): positive-labelled windows are kept where the teacher's
score > ``filter_pos`` (0.30) and negative ones where it is < ``filter_neg`` (0.05): a cry clip's
silent gaps and a "not cry" clip that does contain crying are dropped (``neg_filter = "clip"``
keeps such negatives with the teacher's probability clipped to ``filter_neg`` instead). Each epoch
then draws all kept positives and ``neg_per_pos`` × as many negatives (:func:`resample_epoch`):
uniformly, or weighted by category balance (:func:`category_weights`) and hard-negative mining
(negatives the student got wrong when last trained on are drawn more often).

Training (:func:`fit_student`): Adam, cosine learning-rate decay over the epochs, early stopping
on the validation ROC AUC (validation split made by group by the caller), best weights restored.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cryblock.progress import Progress
from cryblock.errors import CryblockError, DataError
from cryblock.params import LearnParams

_EPS = 1e-6


# ----------------------------------------------------------------------------- losses
def binary_kd_loss(y_hard, student_logits, teacher_logits, temperature: float, alpha: float):
    """Binary (sigmoid) KD loss, mean over the batch.

    Args:
        y_hard: float ``[B]`` or ``[B, 1]``, 1 = positive label.
        student_logits: float ``[B]`` or ``[B, 1]``.
        teacher_logits: float ``[B]`` or ``[B, 1]`` (``logit(p_teacher)``).
        temperature: T > 0.
        alpha: weight of the hard-label term, in [0, 1].

    Returns:
        scalar tensor ``α·BCE(y, σ(z_s)) + (1−α)·T²·KL(Bern(σ(z_t/T)) ‖ Bern(σ(z_s/T)))``.
        With α = 1 the teacher term is not evaluated at all.
    """
    import tensorflow as tf

    y = tf.reshape(tf.cast(y_hard, tf.float32), [-1])
    zs = tf.reshape(tf.cast(student_logits, tf.float32), [-1])
    hard = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=zs))
    if alpha >= 1.0:
        return hard
    zt = tf.reshape(tf.cast(teacher_logits, tf.float32), [-1])
    t = float(temperature)
    pt = tf.sigmoid(zt / t)
    # KL(p‖q) = CE(p, q) − H(p), both from logits for numerical stability.
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=pt, logits=zs / t)
    ent = tf.nn.sigmoid_cross_entropy_with_logits(labels=pt, logits=zt / t)
    soft = tf.reduce_mean(ce - ent)
    return alpha * hard + (1.0 - alpha) * t * t * soft


def softmax_kd_loss(y_onehot, student_logits, teacher_logits, temperature: float, alpha: float):
    """Softmax KD loss, mean over the batch.

    Args:
        y_onehot: float ``[B, K]``.
        student_logits, teacher_logits: float ``[B, K]``.
        temperature: T > 0.
        alpha: weight of the hard-label term.

    Returns:
        scalar tensor ``α·CE(y, softmax(z_s)) + (1−α)·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``.
    """
    import tensorflow as tf

    y = tf.cast(y_onehot, tf.float32)
    zs = tf.cast(student_logits, tf.float32)
    hard = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=zs))
    if alpha >= 1.0:
        return hard
    t = float(temperature)
    zt = tf.cast(teacher_logits, tf.float32)
    pt = tf.nn.softmax(zt / t)
    soft = tf.reduce_mean(tf.reduce_sum(pt * (tf.nn.log_softmax(zt / t) - tf.nn.log_softmax(zs / t)), axis=-1))
    return alpha * hard + (1.0 - alpha) * t * t * soft


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 − p))`` with p clipped to [1e-6, 1 − 1e-6]; float32."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p)).astype(np.float32)


# ----------------------------------------------------------------------------- teacher outputs
def teacher_cache_key(patches: np.ndarray, teacher) -> str:
    """sha1 of the patch bytes + the teacher's identity (its ``path``/``sha256`` if it has one)."""
    h = hashlib.sha1()
    a = np.ascontiguousarray(patches, dtype=np.float32)
    h.update(str(a.shape).encode())
    h.update(memoryview(a).cast("B"))
    ident = getattr(teacher, "sha256", None) or getattr(teacher, "path", None) or type(teacher).__name__
    h.update(str(ident).encode())
    return h.hexdigest()[:20]


def teacher_outputs(teacher, patches: np.ndarray, cache_dir: str | os.PathLike | None = None,
                    batch_size: int = 256, log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Teacher scores and embeddings of every patch, cached.

    Args:
        teacher: object with ``predict(patches, batch_size) -> (scores [N,521], emb [N,1024])``
            (:func:`cryblock.blocks.learn.teacher.load_teacher`).
        patches: float32 ``[N, 96, 64]``.
        cache_dir: if given, outputs are stored in ``<cache_dir>/teacher-<key>.npz`` (key =
            :func:`teacher_cache_key`) and reused by later runs on the same patches.
        batch_size: teacher batch size.
        log: progress messages (:class:`cryblock.progress.Progress` lines while the teacher scores).

    Returns:
        (scores float32 ``[N, 521]``, embeddings float32 ``[N, 1024]``). Embeddings are cached as
        float16 (≈ 1e-3 relative error) and always returned rounded to float16, so a run gives
        the same results from a cold cache, a warm one or none.

    The cache file is an uncompressed npz (``np.savez``, written atomically): compressing
    ≈ 70 MB of float noise for the full manifest costs seconds and saves little.
    """
    from cryblock.output import atomic_write_bytes

    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"teacher-{teacher_cache_key(patches, teacher)}.npz"
        if cache_file.is_file():
            try:
                with np.load(cache_file) as z:
                    scores, emb = z["scores"].astype(np.float32), z["emb"].astype(np.float32)
                if len(scores) == len(patches):
                    if log:
                        log(f"teacher outputs: cached ({cache_file.name}, {len(scores)} patches)")
                    return scores, emb
            except (OSError, ValueError, KeyError):
                pass  # corrupt cache → recompute
    with Progress(len(patches), f"teacher scores of {len(patches):,} patches", log) as prog:
        scores, emb = teacher.predict(np.asarray(patches, dtype=np.float32), batch_size=batch_size,
                                      progress=prog.update)
    scores = np.asarray(scores, dtype=np.float32)
    emb16 = np.asarray(emb).astype(np.float16)
    emb = emb16.astype(np.float32)
    if cache_file is not None:
        buf = io.BytesIO()
        np.savez(buf, scores=scores, emb=emb16)
        atomic_write_bytes(cache_file, buf.getvalue())
    return scores, emb


@dataclass
class TeacherHead:
    """Logistic-regression head on YAMNet embeddings (general-labels preset).

    ``logits(emb)`` → float32 ``[N, K]`` (K = number of labels, columns in ``labels`` order);
    ``proba(emb)`` → softmax of them.
    """

    clf: object
    labels: tuple[str, ...]

    def logits(self, emb: np.ndarray) -> np.ndarray:
        d = np.asarray(self.clf.decision_function(emb), dtype=np.float32)
        if d.ndim == 1:  # binary: decision = logit of class 1 → logits [0, d]
            d = np.stack([np.zeros_like(d), d], axis=1)
        return d

    def proba(self, emb: np.ndarray) -> np.ndarray:
        z = self.logits(emb)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Store the fitted coefficients (``.npz``: coef ``[K', 1024]``, intercept, classes, labels)."""
        from cryblock.output import atomic_save_npz

        atomic_save_npz(path, coef=self.clf.coef_, intercept=self.clf.intercept_, classes=self.clf.classes_,
                        labels=np.array(self.labels))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TeacherHead":
        """The head :meth:`save` wrote. Raises DataError naming the file when it is unreadable."""
        from sklearn.linear_model import LogisticRegression

        from cryblock.inputs import open_regular

        try:
            with open_regular(path) as f, np.load(f, allow_pickle=False) as z:
                clf = LogisticRegression()
                clf.coef_, clf.intercept_, clf.classes_ = z["coef"], z["intercept"], z["classes"]
                labels = tuple(str(v) for v in z["labels"])
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: not a teacher head ({e})") from None
        return cls(clf, labels)


def fit_teacher_head(emb: np.ndarray, y: np.ndarray, labels: tuple[str, ...], seed: int = 0) -> TeacherHead:
    """Fit a multinomial logistic regression (scikit-learn, C = 1, balanced class weights)
    from YAMNet embeddings to label indices.

    Args:
        emb: float32 ``[N, 1024]``.
        y: int ``[N]`` label indices into ``labels``.
        labels: label names.

    Raises:
        DataError: a label has no training window.
    """
    from sklearn.linear_model import LogisticRegression

    present = set(np.unique(y).tolist())
    missing = [labels[i] for i in range(len(labels)) if i not in present]
    if missing:
        raise DataError(f"label(s) {missing} have no training windows; cannot fit the teacher head")
    clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed)
    clf.fit(emb, y)
    return TeacherHead(clf, tuple(labels))


# ----------------------------------------------------------------------------- filter & resampling
def teacher_filter(y_pos: np.ndarray, teacher_p: np.ndarray, filter_pos: float, filter_neg: float) -> np.ndarray:
    """Teacher-as-filter: which windows to train on.

    Args:
        y_pos: bool ``[N]``, window's clip is positive-labelled.
        teacher_p: float ``[N]``, teacher probability of the positive class.
        filter_pos: keep positives with ``p > filter_pos``.
        filter_neg: keep negatives with ``p < filter_neg``.

    Returns:
        bool ``[N]`` mask of kept windows.
    """
    y_pos = np.asarray(y_pos, dtype=bool)
    p = np.asarray(teacher_p, dtype=np.float32)
    return (y_pos & (p > filter_pos)) | (~y_pos & (p < filter_neg))


def resample_epoch(pos_idx: np.ndarray, neg_idx: np.ndarray, neg_per_pos: float,
                   rng: np.random.Generator, neg_weights: np.ndarray | None = None) -> np.ndarray:
    """One epoch's window indices: all positives + ``round(neg_per_pos · n_pos)`` negatives drawn
    without replacement (all negatives if there are fewer), shuffled.

    Args:
        neg_weights: float ``[len(neg_idx)]`` draw weights of the negatives (category balance,
            hard-negative mining), or None for a uniform draw (the draw is then exactly the
            unweighted one).

    Returns:
        int64 ``[n]`` indices.
    """
    n_neg = min(len(neg_idx), int(round(neg_per_pos * len(pos_idx))))
    if n_neg and neg_weights is not None:
        w = np.asarray(neg_weights, dtype=np.float64)
        w = np.where(w > 0, w, 0.0)
        n_neg = min(n_neg, int(np.count_nonzero(w)))
        neg = rng.choice(neg_idx, size=n_neg, replace=False, p=w / w.sum())
    else:
        neg = rng.choice(neg_idx, size=n_neg, replace=False) if n_neg else np.zeros(0, dtype=np.int64)
    idx = np.concatenate([np.asarray(pos_idx, dtype=np.int64), neg.astype(np.int64)])
    rng.shuffle(idx)
    return idx


# ----------------------------------------------------------------------------- training
@dataclass
class DistillData:
    """Training windows with their targets.

    Attributes:
        x: float32 ``[N, 96, 64]`` (or ``[N, 96, 64, 1]``) patches.
        y: int ``[N]`` hard label: 0/1 (cry preset, 1 = positive) or label index (general).
        teacher_logits: float32 ``[N, n_out]`` (cry preset: ``[N, 1]`` = logit(p_teacher)).
        teacher_emb: float32 ``[N, 1024]`` or None (needed when embedding_weight > 0).
        pos_mask: bool ``[N]`` windows counted as "positive" for resampling.
        aux_targets: float32 ``[N, n_aux]`` teacher scores of ``learn.aux_classes`` or None
            (needed when aux_weight > 0).
        source_index: int ``[N]`` index of each window in the augmenter's patch array (the whole
            training split, which also holds the windows the teacher filter dropped), or None.
        neg_weight: float ``[N]`` base draw weight of each window when it is a negative
            (category balance, :func:`category_weights`), or None (uniform).
    """

    x: np.ndarray
    y: np.ndarray
    teacher_logits: np.ndarray
    teacher_emb: np.ndarray | None
    pos_mask: np.ndarray
    aux_targets: np.ndarray | None = None
    source_index: np.ndarray | None = None
    neg_weight: np.ndarray | None = None


@dataclass
class StreamData:
    """Training windows read from a stream instead of memory (``cryblock train --dataset``):
    per-window labels and sampling weights are small arrays, the patches and targets arrive
    batch by batch.

    Attributes:
        y: int ``[N]`` hard label of each window (as :attr:`DistillData.y`).
        pos_mask: bool ``[N]`` windows counted as "positive" for resampling.
        batches: ``(idx, epoch) -> iterator`` of the epoch's batches for the window indices
            ``idx`` (int64, the epoch's :func:`resample_epoch` draw, every index once, in any
            order): tuples ``(window indices int64 [b], patches float32 [b, 96, 64], teacher
            logits float32 [b, n_out], embeddings float32 [b, 1024] or None, aux scores float32
            [b, n_aux] or None)``; every index of ``idx`` in exactly one batch.
        neg_weight: float ``[N]`` base draw weight when a negative, or None (uniform).
        with_embedding, with_aux: the batches carry teacher embeddings / aux-class scores.
    """

    y: np.ndarray
    pos_mask: np.ndarray
    batches: Callable
    neg_weight: np.ndarray | None = None
    with_embedding: bool = False
    with_aux: bool = False


def category_weights(categories: np.ndarray, balance: float) -> np.ndarray | None:
    """Draw weight of each window for category-balanced sampling: ``n_c ** -balance`` with n_c
    the windows of its category (0 → None: uniform; 1 → each category drawn equally often).

    Args:
        categories: ``[N]`` category of each window (any hashable values).
        balance: exponent in [0, 1].
    """
    if balance <= 0:
        return None
    _, inv, counts = np.unique(np.asarray(categories), return_inverse=True, return_counts=True)
    return counts[inv].astype(np.float64) ** (-float(balance))


#: Teacher targets of augmented windows: patches ``[n, 96, 64]`` →
#: (logits ``[n, n_out]``, embeddings ``[n, 1024]`` or None, aux scores ``[n, n_aux]`` or None).
Rescore = Callable[[np.ndarray], tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]]


@dataclass
class FitResult:
    """Outcome of :func:`fit_student`: per-epoch history and the chosen epoch."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_auc: float = float("nan")


def val_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC for early stopping: binary (probs ``[N]``/``[N,1]``) or macro one-vs-rest."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    probs = np.asarray(probs)
    if probs.ndim == 1 or probs.shape[1] == 1:
        return float(roc_auc_score(y, probs.reshape(-1)))
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    present = np.unique(y)
    p = probs[:, present]
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    return float(roc_auc_score(y, p, multi_class="ovr", labels=present))


def model_input(model, x: np.ndarray) -> np.ndarray:
    """Patches shaped for ``model``'s input: float32 ``[N, 96·64]`` for a flat-input (Edge
    Impulse) model, else ``[N, 96, 64, 1]`` (the channel axis added to ``[N, 96, 64]``)."""
    x = np.asarray(x, dtype=np.float32)
    if len(model.inputs[0].shape) == 2:
        return x.reshape(len(x), int(np.prod(x.shape[1:])))
    return x[..., None] if x.ndim == 3 else x


def predict_batches(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Run a Keras model on patches ``x`` (:func:`model_input` shapes them) in batches
    (inference mode); float32 output ``[N, ...]``."""
    x = model_input(model, x)
    outs = []
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size], training=False)
        if isinstance(out, (list, tuple)):
            out = out[0]
        outs.append(np.asarray(out))
    if not outs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outs).astype(np.float32)


def fit_student(models, data: "DistillData | StreamData", val_x: "np.ndarray | Callable", val_y: np.ndarray,
                learn: LearnParams, *,
                augmenter=None, rescore: Rescore | None = None,
                log: Callable[[str], None] | None = print) -> FitResult:
    """Train the student with the KD loss; early-stop on validation AUC; restore the best weights.

    Args:
        models: :class:`cryblock.blocks.learn.student.StudentModels`.
        data: the (already teacher-filtered) training windows: in memory (:class:`DistillData`)
            or streamed (:class:`StreamData`; the same resampling, mining and loss, the batches
            come from its ``batches``; no augmentation).
        val_x: float32 ``[M, 96, 64]`` validation patches (split by group by the caller), or a
            function ``model -> float32 [M, ...]`` that scores them (streamed validation:
            :func:`predict_batches` over batches read one at a time).
        val_y: int ``[M]`` validation labels (0/1 or label index).
        learn: epochs, batch_size, learning_rate (cosine-decayed per epoch to 0), temperature,
            alpha, neg_per_pos, embedding_weight, aux_weight, hard_negative_weight, patience, seed.
        augmenter: :class:`cryblock.blocks.learn.augment.Augmenter` over the training split, or
            None. Each epoch it picks windows to augment (its own seeded generator, untouched when
            every probability is zero) and ``rescore`` gives the teacher's targets for them — or,
            with ``teacher_target = "clean"``, they keep the clean window's targets.
        rescore: teacher targets of augmented windows (required with an active augmenter that
            re-scores).
        log: called with one progress line per epoch.

    Returns:
        :class:`FitResult`.

    Raises:
        DataError: no positive or no negative training window.
    """
    import keras
    import tensorflow as tf

    binary = models.n_out == 1
    pos_idx = np.flatnonzero(data.pos_mask)
    neg_idx = np.flatnonzero(~data.pos_mask)
    if len(pos_idx) == 0 or len(neg_idx) == 0:
        raise DataError(f"training needs positive and negative windows after the teacher filter, got "
                        f"{len(pos_idx)} positive / {len(neg_idx)} negative")
    use_emb = learn.embedding_weight > 0
    use_aux = learn.aux_weight > 0
    n_heads = 1 + use_emb + use_aux
    streaming = isinstance(data, StreamData)
    has_emb = data.with_embedding if streaming else data.teacher_emb is not None
    has_aux = data.with_aux if streaming else data.aux_targets is not None
    if use_emb and (not has_emb or len(models.train_model.outputs) < n_heads):
        raise CryblockError("embedding_weight > 0 needs teacher embeddings and a student built with "
                            "embedding_projection=True")
    if use_aux and (not has_aux or len(models.train_model.outputs) < n_heads):
        raise CryblockError("aux_weight > 0 needs the teacher's aux-class scores and a student built with aux_outputs")
    augmenting = augmenter is not None and augmenter.p.active
    if augmenting and streaming:
        raise CryblockError("augmentation needs the training windows in memory; it does not work on a stream")
    if augmenting and ((rescore is None and augmenter.p.teacher_target != "clean") or data.source_index is None):
        raise CryblockError("augmentation needs the teacher (rescore) and each window's source_index")
    y_all = np.asarray(data.y)
    y_t = (y_all.astype(np.float32)[:, None] if binary
           else np.eye(models.n_out, dtype=np.float32)[y_all.astype(np.int64)])
    if not streaming:
        x_all = model_input(models.model, data.x)
        zt_all = np.asarray(data.teacher_logits, dtype=np.float32).reshape(len(y_all), -1)
        emb_all = np.asarray(data.teacher_emb, dtype=np.float32) if use_emb else None
        aux_all = np.asarray(data.aux_targets, dtype=np.float32) if use_aux else None

    model = models.train_model
    opt = keras.optimizers.Adam(learning_rate=learn.learning_rate)
    temperature, alpha = float(learn.temperature), float(learn.alpha)
    ew, aw = float(learn.embedding_weight), float(learn.aux_weight)
    kd = binary_kd_loss if binary else softmax_kd_loss

    @tf.function(reduce_retracing=True)
    def step(xb, yb, ztb, eb, ab):
        with tf.GradientTape() as tape:
            outs = model(xb, training=True)
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            loss = kd(yb, outs[0], ztb, temperature, alpha)
            if use_emb:
                loss = loss + ew * tf.reduce_mean(tf.square(outs[1] - eb))
            if use_aux:  # per-class BCE to the teacher's sigmoid scores
                loss = loss + aw * tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=ab, logits=outs[-1]))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        # how wrong the student is on each window: its probability of not the window's own label
        yf = tf.cast(yb, tf.float32)
        wrong = (tf.reshape(tf.abs(yf - tf.sigmoid(outs[0])), [-1]) if binary
                 else 1.0 - tf.reduce_sum(yf * tf.nn.softmax(outs[0]), -1))
        return loss, wrong

    rng = np.random.default_rng(learn.seed)
    aug_rng = np.random.default_rng([learn.seed, 1])  # its own stream: augmentation off changes nothing
    clean_targets = augmenting and augmenter.p.teacher_target == "clean"
    # negatives' draw weights: category balance × (1 + hard_negative_weight · how wrong the student
    # was on the window when last trained on it); None = the plain uniform draw
    base_w = None if data.neg_weight is None else np.asarray(data.neg_weight, dtype=np.float64)[neg_idx]
    mining = learn.hard_negative_weight > 0
    wrong = np.zeros(len(y_all), np.float32)
    res = FitResult()
    best_weights, bad_epochs = None, 0
    dummy = np.zeros((1, 1), dtype=np.float32)
    chunk = learn.batch_size * max(1, 4096 // learn.batch_size)  # windows augmented/re-scored at a time (whole batches)

    def memory_batches(idx: np.ndarray, aug_mask: np.ndarray):
        """The epoch's batches from the in-memory arrays, ``chunk`` windows gathered (and
        augmented) at a time: (window indices, x, teacher logits, embeddings, aux scores)."""
        for c0 in range(0, len(idx), chunk):
            cidx = idx[c0:c0 + chunk]
            xc, zc = x_all[cidx], zt_all[cidx]
            ec = emb_all[cidx] if use_emb else None
            ac = aux_all[cidx] if use_aux else None
            am = aug_mask[c0:c0 + chunk]
            if am.any() and clean_targets:  # the student hears the augmented window, the targets stay the clean ones
                xc = xc.copy()
                xc[am] = model_input(models.model, augmenter.apply(data.source_index[cidx[am]], aug_rng))
            elif am.any():
                xa = augmenter.apply(data.source_index[cidx[am]], aug_rng)
                za, ea, aa = rescore(xa)
                xc = xc.copy()
                xc[am] = model_input(models.model, xa)
                zc = zc.copy()
                zc[am] = np.asarray(za, dtype=np.float32).reshape(len(xa), -1)
                if use_emb:
                    ec = ec.copy()
                    ec[am] = ea
                if use_aux:
                    ac = ac.copy()
                    ac[am] = aa
            for i in range(0, len(cidx), learn.batch_size):
                sl = slice(i, i + learn.batch_size)
                order = np.argsort(cidx[sl], kind="stable")  # the order batches were drawn in before
                yield (cidx[sl][order], xc[sl][order], zc[sl][order], ec[sl][order] if use_emb else None,
                       ac[sl][order] if use_aux else None)

    for epoch in range(learn.epochs):
        lr = 0.5 * learn.learning_rate * (1 + math.cos(math.pi * epoch / learn.epochs))
        opt.learning_rate.assign(lr)
        t0 = time.perf_counter()
        w = base_w
        if mining:
            w = (np.ones(len(neg_idx)) if w is None else w) * (1.0 + learn.hard_negative_weight * wrong[neg_idx])
        idx = resample_epoch(pos_idx, neg_idx, learn.neg_per_pos, rng, w)
        aug_mask = augmenter.draw(len(idx), aug_rng) if augmenting else np.zeros(len(idx), bool)
        losses = []
        batches = data.batches(idx, epoch) if streaming else memory_batches(idx, aug_mask)
        for bidx, xb, zb, eb, ab in batches:
            if streaming:
                xb = model_input(models.model, xb)
            loss, wr = step(xb, y_t[bidx], zb, eb if use_emb else dummy, ab if use_aux else dummy)
            losses.append(float(loss))
            if mining:
                wrong[bidx] = np.asarray(wr)
        probs = val_x(models.model) if callable(val_x) else predict_batches(models.model, val_x)
        auc = val_auc(val_y, probs)
        rec = {"epoch": epoch + 1, "lr": lr, "loss": float(np.mean(losses)), "val_auc": auc,
               "windows": int(len(idx)), "augmented": int(aug_mask.sum()), "seconds": time.perf_counter() - t0}
        res.history.append(rec)
        improved = not math.isnan(auc) and (math.isnan(res.best_val_auc) or auc > res.best_val_auc)
        if improved or best_weights is None:
            res.best_val_auc, res.best_epoch = auc, epoch + 1
            best_weights = [w.numpy().copy() for w in model.weights]
            bad_epochs = 0
        else:
            bad_epochs += 1
        if log:
            log(f"epoch {epoch + 1:3d}/{learn.epochs}  loss {rec['loss']:.4f}  val AUC {auc:.4f}  "
                f"lr {lr:.2e}  {len(idx)} windows" + (f" ({rec['augmented']} augmented)" if augmenting else "")
                + f"  {rec['seconds']:.1f} s" + ("  *" if improved else ""))
        if bad_epochs >= learn.patience:
            if log:
                log(f"early stop: no val AUC gain for {learn.patience} epochs (best {res.best_val_auc:.4f} "
                    f"at epoch {res.best_epoch})")
            break
    for w, v in zip(model.weights, best_weights):
        w.assign(v)
    return res
