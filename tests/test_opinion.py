"""The second opinion on real recordings and the real YAMNet teacher: the hub model (fit, save
without pickle, load), verdicts on real cries and real negatives, resampled snippets, the cascade
on a real night stream, and ``cryblock collect --confirm`` live over a real broker."""
from __future__ import annotations

import json
import os
import threading
import zlib

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cryblock import mqttformat as mf
from cryblock.blocks.hub import db
from cryblock.blocks.hub.opinion import HUB_MODEL_NAME, HubModel, SecondOpinion, fit_hub_model

from hubutil import mosquitto_or_skip, wait_for


def _pick(clips, label, half, n, seed=0):
    """``n`` random clips of ``label`` from one half of the groups (``half`` 0 or 1)."""
    rng = np.random.default_rng(seed)
    cs = [c for c in clips if c.label == label and zlib.crc32(c.group.encode()) % 2 == half]
    return [cs[i] for i in rng.choice(len(cs), min(n, len(cs)), replace=False)]


@pytest.fixture(scope="module")
def hub_data(clips, teacher):
    """Teacher embeddings of 60 cry + 60 other clips, training / validation by group (two disjoint
    halves of the groups)."""
    from cryblock.data import compute_patches

    out = {}
    for name, mod in (("train", 0), ("val", 1)):
        sel = _pick(clips, "cry", mod, 30) + _pick(clips, "not_cry", mod, 30)
        ps = compute_patches(sel, cache_dir=os.environ.get("CRYBLOCK_CACHE"), workers=1)
        _, emb = teacher.predict(ps.patches)
        out[name] = (emb, ps.labels() == "cry", ps.clip_index, ps)
    return out


@pytest.fixture(scope="module")
def hub(hub_data):
    et, pt, _, _ = hub_data["train"]
    ev, pv, cv, _ = hub_data["val"]
    return fit_hub_model(et, pt, ev, pv, cv)


def test_hub_model_fit_save_load_without_pickle(hub, hub_data, tmp_path):
    ev, pv, _, _ = hub_data["val"]
    assert set(hub.val_auc) == {"logreg", "mlp"} and hub.kind == max(hub.val_auc, key=hub.val_auc.get)
    assert hub.val_auc[hub.kind] > 0.9, hub.val_auc
    assert 0.0 < hub.threshold < 1.0
    hub.save(tmp_path / HUB_MODEL_NAME)
    with np.load(tmp_path / HUB_MODEL_NAME, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
    back = HubModel.load(tmp_path / HUB_MODEL_NAME)
    np.testing.assert_allclose(back.proba(ev), hub.proba(ev), atol=1e-6)
    assert (back.kind, back.threshold, back.val_auc) == (hub.kind, hub.threshold, hub.val_auc)
    print(f"hub model {hub.kind}: validation AUC {hub.val_auc}, threshold {hub.threshold}")
    (tmp_path / "bad.npz").write_bytes(b"not npz")
    from cryblock.errors import DataError

    with pytest.raises(DataError, match="bad.npz"):
        HubModel.load(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="no hub model"):
        HubModel.load(tmp_path / "missing.npz")


def _val_clips(hub_data, cry: bool):
    ps = hub_data["val"][3]
    return [c for c in ps.clips if (c.label == "cry") == cry]


def test_verdicts_on_real_validation_clips(hub, teacher, hub_data):
    """Real held-out recordings: cries mostly confirmed, other sounds mostly doubtful; a 4 s
    snippet resampled from 8 kHz int16 gives the verdict of its 16 kHz float twin."""
    from cryblock.audio import load_audio
    from cryblock.params import Params

    op = SecondOpinion(teacher, hub, Params())
    res = {True: [], False: []}
    for cry in (True, False):
        for c in _val_clips(hub_data, cry)[:12]:
            x = load_audio(c.path, 16000)[: int(4 * 16000)]
            res[cry].append(op.score_waveform(x))
    conf = {k: np.mean([o.verdict == "confirmed" for o in v]) for k, v in res.items()}
    print(f"confirmed: cries {conf[True]:.2f}, others {conf[False]:.2f}")
    assert conf[True] >= 0.75 and conf[False] <= 0.25
    assert np.mean([o.teacher_score for o in res[True]]) > np.mean([o.teacher_score for o in res[False]])
    c = _val_clips(hub_data, True)[0]
    x16 = load_audio(c.path, 16000)[:64000]
    pcm8 = (load_audio(c.path, 8000)[:32000] * 32767).astype(np.int16)
    a, b = op.score_waveform(x16), op.score_pcm(pcm8.tobytes(), 8000)
    assert a.verdict == b.verdict and abs(a.hub_score - b.hub_score) < 0.2
    short = op.score_pcm(np.zeros(100, np.int16), 16000)  # shorter than a patch: padded, silent → doubtful
    assert short.verdict == "doubtful"


def test_cascade_on_a_real_night(hub, teacher, hub_data):
    """On a real night: the hub as a second stage of the detector only ever removes alerts (never
    adds one), its verdict comes CONFIRM_DELAY_S later, and with a threshold nothing reaches every
    alert is gone; with threshold 0 it is the device alone, delayed."""
    from cryblock.blocks.hub.opinion import CONFIRM_DELAY_S, confirmer
    from cryblock.blocks.learn.night import build_night, judge, score_night
    from cryblock.params import DetectorParams, Params

    params = Params()
    ps = hub_data["val"][3]
    night = build_night([c for c in ps.clips if c.label != "cry"], [c for c in ps.clips if c.label == "cry"][:10],
                        params.dsp, params.night)
    op = SecondOpinion(teacher, hub, params)
    both = score_night(night, {"teacher": lambda x: op.patch_scores(x)[0], "hub": lambda x: op.patch_scores(x)[1]})
    det = DetectorParams(threshold=0.005, vote_n=1, vote_m=1, hold_seconds=1.0)  # the teacher as a noisy device
    alone = judge(night, both["teacher"], det)
    casc = judge(night, both["teacher"], det, confirm=confirmer(night, both["hub"], op.threshold),
                 confirm_delay_s=CONFIRM_DELAY_S)
    assert len(casc.alerts) <= len(alone.alerts) and alone.alerts
    for a, c in zip(alone.records, casc.records):
        assert c["time_to_alert"] == np.inf or c["time_to_alert"] >= a["time_to_alert"] + CONFIRM_DELAY_S - 1e-9
    open_gate = judge(night, both["teacher"], det, confirm=confirmer(night, both["hub"], 0.0),
                      confirm_delay_s=CONFIRM_DELAY_S)
    assert len(open_gate.alerts) == len(alone.alerts)
    assert [r["time_to_alert"] for r in open_gate.records] == pytest.approx(
        [r["time_to_alert"] + CONFIRM_DELAY_S for r in alone.records])
    shut = judge(night, both["teacher"], det, confirm=confirmer(night, both["hub"], 1.01))
    assert not shut.alerts and all(r["time_to_alert"] == np.inf for r in shut.records)
    print(json.dumps({"device": len(alone.alerts), "cascade": len(casc.alerts),
                      "episodes within 10 s": [alone.headline_recall(), casc.headline_recall()]}))


def test_collect_confirm_live(hub, hub_data, tmp_path, teacher_path):
    """``cryblock collect --confirm``: a real cry snippet and a real non-cry snippet published by a
    simulated monitor get their verdicts stored and published on the verdict topic."""
    import subprocess
    import sys

    from cryblock.blocks.hub.broker import connect, make_client, parse_broker
    from cryblock.blocks.hub.simulate import Fleet, SimDevice
    from cryblock.audio import load_audio
    from cryblock.params import Params

    run = tmp_path / "run"
    run.mkdir()
    Params().save(run / "params.json")
    hub.save(run / HUB_MODEL_NAME)
    dbf = tmp_path / "hub.db"
    with mosquitto_or_skip() as m:
        b = parse_broker(m.url)
        verdicts = []
        listener = make_client(b, "verdict-listener")
        listener.on_message = lambda c, u, msg: verdicts.append(mf.parse(msg.topic, bytes(msg.payload)))
        connect(listener, b)
        listener.subscribe("cryblock/+/verdict", qos=1)
        listener.loop_start()
        env = dict(os.environ, CRYBLOCK_TEACHER=str(teacher_path))
        proc = subprocess.Popen([sys.executable, "-m", "cryblock.cli", "collect", "--broker", m.url, "--db", str(dbf),
                                 "--confirm", "--run", str(run), "--duration", "120"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
        try:
            wait_for(lambda: any(ln.startswith("collect :") for ln in lines), 120, "collector subscribed")
            dev = SimDevice("nursery", b)
            fleet = Fleet([dev])
            fleet.connect()
            cry = _val_clips(hub_data, True)[1]
            other = _val_clips(hub_data, False)[1]
            for c in (cry, other):
                pcm = (load_audio(c.path, 16000)[:64000] * 32767).astype(np.int16)
                fleet.at(0, lambda pcm=pcm: dev.snippet(dev.event("on", 0.9), pcm))
            fleet.run()
            wait_for(lambda: len(verdicts) >= 2, 120, "two verdicts")
            fleet.close()
        finally:
            proc.terminate()
            proc.wait(60)
            listener.loop_stop()
        out = "".join(lines)
        assert proc.returncode == 0, out
    engine = db.open_db(str(dbf), migrate=False)
    with Session(engine) as s:
        rows = list(s.scalars(select(db.SnippetRow).order_by(db.SnippetRow.seq)))
    assert [r.verdict for r in rows] == [v.verdict for v in sorted(verdicts, key=lambda v: v.seq)]
    assert rows[0].teacher_score is not None and rows[0].hub_score is not None
    op = SecondOpinion.from_run(run, teacher=teacher_path)
    x = load_audio(cry.path, 16000)[:64000]
    assert rows[0].verdict == op.score_waveform((x * 32767).astype(np.int16) / 32768.0).verdict
    assert "confirmed" in out
