"""The second opinion on a night: device alone vs device + hub confirmation.

Rebuilds a ``cryblock train`` run's test split (same manifest, ``--max-clips`` and seed as the
run), its nursery night (negatives back to back, cries inserted at each SNR), scores it with the
run's INT8 model and deployed detector (the device), then asks the hub (YAMNet teacher + the run's
hub model) about the snippet around each alert onset (:mod:`cryblock.blocks.hub.opinion`), and
prints recall per SNR and false alerts per 8 h for both.

    CRYBLOCK_TEACHER=../shared/models/yamnet.tflite .venv/bin/python bench/cascade.py \\
        --run runs/demo --data ../shared/data/manifest.csv
"""
from __future__ import annotations

import argparse

from cryblock import mqttformat as mf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True, help="the run's manifest")
    ap.add_argument("--max-clips", type=int, default=None, help="as given to cryblock train")
    ap.add_argument("--hub-threshold", type=float, default=None, help="default: the run's calibrated one")
    a = ap.parse_args()

    from cryblock.blocks.hub.opinion import SecondOpinion, cascade, night_opinion_scores
    from cryblock.blocks.learn import evaluate
    from cryblock.blocks.learn.night import score_night
    from cryblock.blocks.learn.train import _positive_score, _subset, prepare_clips
    from cryblock.data import compute_patches, default_cache_dir, split_by_group

    run = evaluate.load_run(a.run)
    params, learn = run.params, run.params.learn
    _, clips, params = prepare_clips(a.data, params, max_clips=a.max_clips, log=lambda s: None)
    ps = compute_patches(clips, params.dsp, cache_dir=default_cache_dir())
    _, _, te = split_by_group(ps.clips, learn.test_fraction, learn.validation_fraction, learn.seed)
    labels = sorted({c.label for c in ps.clips})
    index = ({lab: int(lab == learn.positive_label) for lab in labels} if learn.preset == "cry"
             else {lab: i for i, lab in enumerate(learn.labels)})
    test = _subset(ps, te, index)
    night = evaluate.night_of(test, run.pos_index, params, learn.seed)
    runner = evaluate.TflmRunner(run.int8)
    device = score_night(night, lambda x: _positive_score(runner.predict(x), run.pos_index))
    op = SecondOpinion.from_run(a.run, threshold=a.hub_threshold)
    _, hub = night_opinion_scores(night, op)
    r = cascade(night, device, hub, params.detector, op.threshold)
    det = params.detector
    print(f"run {a.run}: test night {night.duration_s / 3600:.2f} h of negatives, "
          f"{len(next(iter(night.episodes.values())))} cries per SNR; device detector thr {det.threshold:g}, "
          f"{det.vote_n}/{det.vote_m}, hold {det.hold_seconds:g} s; hub model {op.hub.kind}, threshold "
          f"{op.threshold:.3f}; snippet {mf.SNIPPET_PRE_S:g} s before to {mf.SNIPPET_POST_S:g} s after the onset")
    snrs = sorted(next(iter(r.values()))["recall"])
    print("| | " + " | ".join(f"recall {s:g} dB" for s in snrs) + " | false alerts / 8 h [95 % CI] | alerts |")
    print("|---|" + "---|" * (len(snrs) + 2))
    for name, label in (("device", "device alone (INT8)"), ("cascade", "device + hub confirmation")):
        x = r[name]
        lo, hi = x["fa_per_8h_ci"]
        print(f"| {label} | " + " | ".join(f"{x['recall'][s]:.3f}" for s in snrs)
              + f" | {x['fa_per_8h']:.1f} [{lo:.1f}, {hi:.1f}] | {x['false_alerts']} of {x['alerts']} |")


if __name__ == "__main__":
    main()
