"""The learning block's settable parameters as command-line flags, in one table for both entry
points: ``cryblock train`` / ``demo`` / ``tune`` (click, cli/learn_cmds.py) and the Edge Impulse
learning block (argparse, :mod:`cryblock.blocks.learn.ei_train`, whose ``parameters.json`` names
the same flags). Ranges and defaults are those of :mod:`cryblock.params`, which validates.

Each row: ``(flag, "section.field", type, choices or None, help, edge_impulse)``.
"""
from __future__ import annotations

#: (flag, section.field, type, choices, help, offered by the Edge Impulse block)
LEARN_FLAGS: list[tuple[str, str, type, tuple | None, str, bool]] = [
    ("--epochs", "learn.epochs", int, None, "training epochs (early stopping may end sooner)", True),
    ("--learning-rate", "learn.learning_rate", float, None, "Adam learning rate (cosine-decayed)", True),
    ("--batch-size", "learn.batch_size", int, None, "batch size", True),
    ("--patience", "learn.patience", int, None, "early-stopping patience (epochs) on validation AUC", False),
    ("--seed", "learn.seed", int, None, "random seed (split, sampling, initialisation, augmentation, night)", True),
    ("--temperature", "learn.temperature", float, None, "KD temperature T", True),
    ("--alpha", "learn.alpha", float, None, "weight of the hard-label loss (1 = hard labels only)", True),
    ("--neg-per-pos", "learn.neg_per_pos", float, None, "negatives per positive window drawn each epoch", True),
    ("--filter-pos", "learn.filter_pos", float, None, "keep positive windows with teacher p > this", True),
    ("--filter-neg", "learn.filter_neg", float, None, "keep negative windows with teacher p < this", True),
    ("--embedding-weight", "learn.embedding_weight", float, None, "weight of the embedding-approximation loss", True),
    ("--aux-weight", "learn.aux_weight", float, None,
     "weight of the auxiliary head on the teacher's confusable classes (cat, speech, music …; dropped at export)", True),
    ("--width", "learn.width", int, None, "student channels of the first block (width/depth plan)", True),
    ("--depth", "learn.depth", int, None, "student depthwise-separable blocks (width/depth plan)", True),
    ("--stem-channels", "learn.stem_channels", int, None, "channels of the stem 3x3 convolution (0 = width)", True),
    ("--stem-stride", "learn.stem_stride", int, None, "stride of the stem convolution (1 or 2)", True),
    ("--pool", "learn.pool", str, ("none", "max", "avg"), "2x2 pooling after the stem", True),
    ("--kernel", "learn.kernel", str, None, "depthwise kernel TIMExMEL, e.g. 3x3 or 5x3", True),
    ("--blocks", "learn.blocks", str, None,
     "DS blocks as CHANNELS/STRIDE items, e.g. 16/1,32/2,64/2,128/2 (empty: the width/depth plan)", True),
    ("--head", "learn.head", int, None, "hidden units before the output layer (0 = linear head)", True),
    ("--positive-label", "learn.positive_label", str, None,
     "label the detector fires on (default cry; required for --preset general unless a label is named cry)", False),
    ("--preset", "learn.preset", str, ("cry", "general"),
     "cry (sigmoid, teacher cry classes) or general (softmax over the manifest's labels)", False),
    ("--mix", "augment.p_mix", float, None, "probability of mixing a training window with a training negative", True),
    ("--mix-snr-min", "augment.mix_snr_min_db", float, None, "lowest mixing SNR, dB", True),
    ("--mix-snr-max", "augment.mix_snr_max_db", float, None, "highest mixing SNR, dB", True),
    ("--gain", "augment.p_gain", float, None, "probability of a random gain", True),
    ("--gain-min-db", "augment.gain_min_db", float, None, "lowest random gain, dB", True),
    ("--gain-max-db", "augment.gain_max_db", float, None, "highest random gain, dB", True),
    ("--shift", "augment.p_shift", float, None, "probability of a time shift (up to half a patch hop)", True),
    ("--specaugment", "augment.p_specaugment", float, None, "probability of SpecAugment time/frequency masks", True),
    ("--bandlimit", "augment.p_bandlimit", float, None, "probability of band-limiting to 4 kHz", True),
    ("--nursery", "augment.p_nursery", float, None,
     "probability of mixing a training window with a synthetic nursery noise bed (white/pink/brown, fan, purifier)",
     True),
    ("--teacher-target", "augment.teacher_target", str, ("augmented", "clean"),
     "soft targets of augmented windows: the teacher on the augmented window, or on the clean one "
     "(noise-robust distillation)", True),
    ("--neg-filter", "learn.neg_filter", str, ("drop", "clip"),
     "negatives the teacher finds cry-like: drop them, or keep them with the teacher's p clipped to --filter-neg",
     True),
    ("--negative-balance", "learn.negative_balance", float, None,
     "category balance of the negatives drawn each epoch (0 uniform over windows … 1 every category equally)", True),
    ("--hard-negatives", "learn.hard_negative_weight", float, None,
     "hard-negative mining: negatives the student gets wrong are drawn 1 + this × p(wrong) times as often", True),
    ("--fa-budget", "night.fa_budget_per_8h", float, None,
     "false alerts per 8 h the detector calibration may spend (on the upper 95 % limit of the validation rate)",
     False),
    ("--night-gap", "night.gap_seconds", float, None,
     "mean seconds of background between two cries laid into the night", False),
]


def overrides(values: dict) -> dict[str, dict]:
    """``{"learn.epochs": 5, "augment.p_mix": None}`` (or ``learn__epochs`` keys) → the given
    values per Params section: ``{"learn": {"epochs": 5}}``.

    ``--width``/``--depth`` without ``--blocks`` ask for the width/depth plan: ``blocks`` becomes
    "" (and ``stem_channels`` 0 = width unless given), so the flags are not silently overridden
    by the default block list."""
    out: dict[str, dict] = {}
    for key, v in values.items():
        if v is None:
            continue
        section, _, name = key.replace("__", ".").partition(".")
        if name:
            out.setdefault(section, {})[name] = v
    learn = out.get("learn", {})
    if ({"width", "depth"} & set(learn)) and "blocks" not in learn:
        learn["blocks"] = ""
        learn.setdefault("stem_channels", 0)
    return out
