"""``cryblock prepare`` and the dataset reader on real recordings and the real teacher: contents
equal a direct computation, byte-identical shards whatever the workers, a killed run resumed,
what a change invalidates, the index/folds/reads/tf.data stream, AudioSet segment input, bad
input (one ``error:`` line, exit 2, nothing half-written), and ``--runner ray`` on a real local
Ray cluster (``ray start --head``, loopback, 2 CPUs, started and stopped here; skipped with the
reason when Ray is not installed)."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from cryblock.blocks.dataset import shards as S
from cryblock.blocks.dataset.prepare import LocalRunner, manifest_source, prepare_dataset
from cryblock.blocks.dsp.features import file_to_patches
from cryblock.cli.main import cli
from cryblock.errors import CryblockError, DataError
from cryblock.params import CRY_CLASSES, DspParams, Params

#: (source, label, clips) taken from the shared manifest: both labels, five sources, OGG/FLAC.
PICK = (("ESC-10", "cry", 3), ("ESC-10", "not_cry", 3), ("donateacry-corpus", "cry", 4),
        ("theunissenlab/BabyCriesDiscomfortPain", "cry", 3), ("CatMeows (Zenodo 4008297)", "not_cry", 4),
        ("free-spoken-digit-dataset", "not_cry", 4), ("rafaelmardojai/blanket", "not_cry", 1))
SHARD_CLIPS = 6


def _write_manifest(path: Path, rows) -> Path:
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "category", "source"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def corpus(clips, tmp_path_factory):
    """22 real clips copied (mtime kept) into a folder with their manifest (relative paths)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    rows = []
    for source, label, n in PICK:
        cs = sorted((c for c in clips if c.source == source and c.label == label), key=lambda c: str(c.path))
        for c in [cs[i] for i in np.linspace(0, len(cs) - 1, n).round().astype(int)]:
            dst = root / "audio" / f"{len(rows):02d}_{c.path.name}"
            shutil.copy2(c.path, dst)
            rows.append([f"audio/{dst.name}", c.label, c.group, c.category, c.source])
    return _write_manifest(root / "manifest.csv", rows)


def _files(d: Path) -> dict[str, bytes]:
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(d.glob("*/part-*.parquet"))}


@pytest.fixture(scope="module")
def reference(corpus, teacher_path, tmp_path_factory):
    """The corpus prepared in this process (one worker)."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    res = prepare_dataset(manifest_source(corpus), out, teacher=teacher_path, shard_clips=SHARD_CLIPS,
                          runner=LocalRunner(1), log=lambda s: None)
    return out, res


def _prepare_cli(*args, env_teacher=None, **kw):
    env = {**os.environ, "CRYBLOCK_TEACHER": str(env_teacher)} if env_teacher else None
    return subprocess.run([sys.executable, "-m", "cryblock.cli", "prepare", *map(str, args)], capture_output=True,
                          text=True, env=env, **kw)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# ------------------------------------------------------------------------------ contents
def test_dataset_holds_the_patches_and_teacher_outputs_of_every_clip(reference, corpus, teacher):
    out, res = reference
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["complete"] and meta["patch_format"] == "float16" and len(meta["shards"]) == 4
    assert meta["teacher"]["sha256"] == teacher.sha256 and meta["teacher"]["classes"] == list(range(521))
    ds = S.open_dataset(out, dsp=DspParams(), teacher_sha256=teacher.sha256)
    b = ds.read()
    from cryblock.data import load_manifest

    clips = load_manifest(corpus)
    ref = [file_to_patches(c.path) for c in clips]
    assert ds.rows == sum(len(r) for r in ref) == res.features["rows"]
    # patches: the DSP block's, stored as float16; teacher: YAMNet on exactly those patches
    assert np.array_equal(b.patches, np.concatenate(ref).astype(np.float16).astype(np.float32))
    scores, _ = teacher.predict(b.patches)
    assert np.array_equal(b.scores, scores)
    assert np.array_equal(b.clip_id, np.concatenate([np.full(len(r), i) for i, r in enumerate(ref)]))
    ix = ds.index()
    offs = np.concatenate([np.arange(len(r)) * 0.48 for r in ref])
    assert np.allclose(ix.offset_s, offs, atol=1e-6)
    assert [c.path for c in ix.clips()] == [c.path for c in clips]
    assert [(c.label, c.group, c.category, c.source) for c in ix.clips()] == \
        [(c.label, c.group, c.category, c.source) for c in clips]
    assert np.allclose(ix.teacher_score, b.scores[:, list(CRY_CLASSES)].max(axis=1))
    # hours of audio recorded; every shard file has its recorded checksum
    assert abs(meta["audio_seconds"] - sum(sf.info(str(c.path)).duration for c in clips)) < 0.05 * len(clips)
    for s in meta["shards"]:
        for part in ("patches", "teacher"):
            assert S.file_sha256(out / s[part]["file"]) == s[part]["sha256"]


def test_index_selection_folds_reads_and_tf_stream(reference, corpus):
    from cryblock.data import load_manifest, split_by_group

    out, _ = reference
    ds = S.open_dataset(out)
    ix = ds.index()
    all_ = ds.read()
    # groups → rows; K folds by group from the index: disjoint groups, every row once
    g = ix.groups[:3]
    rows = ix.rows_of_groups(g)
    assert set(np.asarray(ix.groups)[ix.group[rows]]) == set(g) and len(rows) == np.isin(ix.group, [0, 1, 2]).sum()
    folds = ix.group_kfold(3, seed=0)
    held = np.concatenate([f[1] for f in folds])
    assert sorted(held.tolist()) == list(range(ds.rows))
    for rest, fold in folds:
        assert not set(ix.group[rest]) & set(ix.group[fold])
    # the index's clips split exactly like the manifest read directly (same seeds)
    a, b = split_by_group(ix.clips(), seed=3), split_by_group(load_manifest(corpus), seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    test_rows = ix.rows_of_clips(ix.clip_ids[a[2]])
    assert set(ix.clip_id[test_rows]) == set(a[2].tolist()) and len(test_rows) == np.isin(ix.clip_id, a[2]).sum()
    # reading chosen rows: shard order, any input order, equal to the full read
    pick = np.array([ds.rows - 1, 5, 0, 700 % ds.rows, 5])
    got = ds.read(pick)
    assert np.array_equal(got.rows, np.unique(pick))
    assert np.array_equal(got.patches, all_.patches[np.unique(pick)]) and np.array_equal(got.scores, all_.scores[np.unique(pick)])
    with pytest.raises(DataError, match="row ids"):
        ds.read([ds.rows])
    with pytest.raises(DataError, match="--embedding"):
        ds.read([0], embedding=True)
    # tf.data: each chosen row once, shuffled, the stored values
    chosen = np.arange(0, ds.rows, 2)
    els = list(ds.tf_dataset(chosen, shuffle_buffer=64, seed=1, cycle_length=2).as_numpy_iterator())
    r = np.array([e["row"] for e in els])
    assert sorted(r.tolist()) == chosen.tolist() and not np.array_equal(r, np.sort(r))
    for e in els[:20]:
        assert np.array_equal(e["patch"], all_.patches[e["row"]]) and np.array_equal(e["scores"], all_.scores[e["row"]])


def test_killed_run_resumes_to_identical_shards_with_any_workers(reference, corpus, teacher_path, tmp_path):
    """SIGKILL `cryblock prepare` while it writes a teacher shard; the same command (with 2
    workers this time) finishes it: shards byte-identical to the one-worker run, staging gone."""
    ref_out, _ = reference
    out = tmp_path / "ds"
    p = subprocess.Popen([sys.executable, "-m", "cryblock.cli", "prepare", "--data", str(corpus), "--out", str(out),
                          "--shard-clips", str(SHARD_CLIPS), "--workers", "1", "--teacher", str(teacher_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    killed = False
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        teacher_dir = out / "teacher"
        staging = [f for f in teacher_dir.iterdir() if f.name.startswith(".cryblock-")] if teacher_dir.is_dir() else []
        done = list(teacher_dir.glob("part-*.parquet")) if teacher_dir.is_dir() else []
        if staging and done:  # one teacher shard finished, the next one half written
            os.killpg(p.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    p.wait(30)
    assert killed, "the run finished before it could be killed"
    meta = json.loads((out / "dataset.json").read_text())
    assert not meta["complete"]
    with pytest.raises(DataError, match="unfinished dataset"):
        S.open_dataset(out)
    assert any(f.name.startswith(".cryblock-") for f in (out / "teacher").iterdir())  # the killed write
    r = _prepare_cli("--data", corpus, "--out", out, "--shard-clips", SHARD_CLIPS, "--workers", 2,
                     "--teacher", teacher_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 kept" in r.stdout  # the patch shards of the killed run were reused
    assert _files(out) == _files(ref_out)
    assert not [f for d in ("patches", "teacher") for f in (out / d).iterdir() if f.name.startswith(".cryblock-")]
    S.open_dataset(out)


def _h5_teacher(teacher, path: Path, bias_shift: float) -> Path:
    """The teacher's weights written as a yamnet.h5 (batch norm of mean −bias, variance 1 − ε), the
    classifier's biases shifted: another teacher file, another teacher."""
    import h5py

    from cryblock.blocks.learn.yamnet import BN_EPSILON, _layer_names

    with h5py.File(path, "w") as f:
        for name, kind, *_ in _layer_names():
            k, b = teacher.keras_model.get_layer(name.replace("/", "_")).get_weights()
            f[f"{name}/{'depthwise_kernel' if kind == 'depthwise' else 'kernel'}"] = k
            f[f"{name}/bn/moving_mean"] = -b
            f[f"{name}/bn/moving_variance"] = np.full_like(b, 1 - BN_EPSILON)
        k, b = teacher.keras_model.get_layer("dense").get_weights()
        f["dense/kernel"], f["dense/bias"] = k, b + bias_shift
    return path


def test_changes_invalidate_exactly_what_they_must(reference, corpus, teacher, teacher_path, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "ds"
    shutil.copytree(ref_out, out)
    before = {f: (out / f).stat().st_mtime_ns for f in _files(out)}
    corpus = Path(shutil.copytree(corpus.parent, tmp_path / "corpus")) / "manifest.csv"  # mtimes kept: same keys
    src = manifest_source(corpus)

    def prep(**kw):
        kw.setdefault("teacher", teacher_path)
        return prepare_dataset(src, out, shard_clips=SHARD_CLIPS, runner=LocalRunner(1), log=lambda s: None, **kw)

    # nothing changed: nothing computed, nothing rewritten
    r = prep()
    assert (r.features["shards"], r.teacher["shards"]) == (0, 0)
    assert {f: (out / f).stat().st_mtime_ns for f in _files(out)} == before

    # another teacher: teacher shards only; the patches stay
    other = _h5_teacher(teacher, tmp_path / "yamnet.h5", 0.5)
    r = prep(teacher=other)
    assert (r.features["shards"], r.teacher["shards"]) == (0, 4)
    assert all((out / f).stat().st_mtime_ns == t for f, t in before.items() if f.startswith("patches/"))
    ds = S.open_dataset(out)
    from cryblock.blocks.learn.teacher import load_teacher

    b = ds.read()
    assert np.array_equal(b.scores, load_teacher(other).predict(b.patches)[0])
    assert not np.array_equal(b.scores, S.open_dataset(ref_out).read().scores)
    with pytest.raises(DataError, match="another teacher"):
        S.open_dataset(out, teacher_sha256=teacher.sha256)

    # stored classes and embeddings are part of the teacher shards' key too
    r = prep(classes="19,20", embedding=True)
    assert (r.features["shards"], r.teacher["shards"]) == (0, 4)
    b2 = S.open_dataset(out).read(embedding=True)
    assert np.array_equal(b2.scores, S.open_dataset(ref_out).read().scores[:, [19, 20]])
    assert np.allclose(b2.embedding, teacher.predict(b2.patches)[1], atol=2e-3, rtol=2e-3)

    # one clip edited (here: touched): its shard's patches are recomputed — same bytes, so its
    # teacher shard stays
    f = sorted((corpus.parent / "audio").iterdir())[8]
    os.utime(f, ns=(time.time_ns(), time.time_ns()))
    r = prep(classes="19,20", embedding=True)
    assert (r.features["shards"], r.teacher["shards"]) == (1, 0)

    # other DSP parameters: everything
    r = prep(dsp=DspParams(mel_max_hz=7000.0))
    assert (r.features["shards"], r.teacher["shards"]) == (4, 4)
    with pytest.raises(DataError, match=r"other DSP parameters \(mel_max_hz 7000.0 \(dataset\) vs 7500.0\)"):
        S.open_dataset(out, dsp=DspParams())
    from cryblock.data import load_manifest

    first = file_to_patches(load_manifest(corpus)[0].path, DspParams(mel_max_hz=7000.0))
    patches = S.open_dataset(out, dsp=DspParams(mel_max_hz=7000.0)).read(np.arange(len(first))).patches
    assert np.array_equal(patches, first.astype(np.float16).astype(np.float32))

    # a shorter manifest: shard files of the old plan are removed
    rows = (corpus.read_text().splitlines())
    short = corpus.parent / "short.csv"
    short.write_text("\n".join(rows[:SHARD_CLIPS + 1]) + "\n")
    prepare_dataset(manifest_source(short), out, teacher=teacher_path, shard_clips=SHARD_CLIPS,
                    runner=LocalRunner(1), log=lambda s: None)
    assert sorted(_files(out)) == ["patches/part-00000.parquet", "teacher/part-00000.parquet"]


def test_int8_patch_formats_round_trip_within_half_a_step(reference):
    ds = S.open_dataset(reference[0])
    x = ds.read(np.arange(min(ds.rows, 300))).patches
    dsp = DspParams()
    lo, step = S.int8_global_range(dsp)
    assert lo == pytest.approx(np.log(dsp.log_offset)) and step == pytest.approx(0.0592, abs=1e-4)
    assert x.min() >= lo and x.max() <= lo + 255 * step
    import pyarrow as pa

    for fmt in ("int8-patch", "int8-global"):
        cols = S.encode_patches(x, fmt, dsp)
        y = S.decode_patches(pa.table(cols), fmt, dsp.patch_shape, S.int8_global_range(dsp))
        steps = (x.reshape(len(x), -1).max(1) - x.reshape(len(x), -1).min(1)) / 255 if fmt == "int8-patch" else step
        err = np.abs(y - x).reshape(len(x), -1).max(1)
        assert np.all(err <= np.broadcast_to(steps, err.shape) * 0.5 + 1e-5), fmt


def test_int8_dataset_stores_int8_and_its_teacher_sees_the_decoded_patches(corpus, teacher, teacher_path, tmp_path):
    out = tmp_path / "ds8"
    src = manifest_source(corpus)
    src.clips = src.clips[:SHARD_CLIPS]
    prepare_dataset(src, out, teacher=teacher_path, patch_format="int8-patch", classes="19,20",
                    shard_clips=SHARD_CLIPS, runner=LocalRunner(1), log=lambda s: None)
    import pyarrow.parquet as pq

    assert str(pq.read_schema(out / "patches/part-00000.parquet").field("patch").type) == "fixed_size_list<element: int8>[6144]"
    b = S.open_dataset(out).read()
    assert np.array_equal(b.scores, teacher.predict(b.patches)[0][:, [19, 20]])


def test_shard_writer_bytes_do_not_depend_on_the_blocks_and_fail_leaves_nothing(tmp_path):
    schema = S.teacher_schema(3, False)
    import pyarrow as pa

    rng = np.random.default_rng(0)
    x = rng.random((1300, 3), dtype=np.float32)

    def cols(a, b):
        return {"clip_id": np.arange(a, b, dtype=np.int32),
                "scores": pa.FixedSizeListArray.from_arrays(pa.array(x[a:b].reshape(-1)), 3)}

    with S.ShardWriter(tmp_path / "a.parquet", schema) as w:
        w.write(cols(0, 1300))
    with S.ShardWriter(tmp_path / "b.parquet", schema) as w2:
        for a in range(0, 1300, 7):
            w2.write(cols(a, min(a + 7, 1300)))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert (w.rows, w.sha256) == (1300, S.file_sha256(tmp_path / "a.parquet"))
    with pytest.raises(RuntimeError), S.ShardWriter(tmp_path / "c.parquet", schema) as w3:
        w3.write(cols(0, 600))
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]


def test_unreadable_clips_are_skipped_whole_and_listed(corpus, teacher_path, tmp_path, monkeypatch):
    """A clip that breaks after its first block leaves no rows; long clips spill to disk first."""
    import cryblock.blocks.dataset.prepare as P

    from cryblock.data import load_manifest

    good = load_manifest(corpus)[:3]
    x, sr = sf.read(str(good[0].path), dtype="float32")
    long = np.tile(x, int(np.ceil(50 * sr / len(x))))[: 50 * sr]  # 50 s: three 20-s blocks
    sf.write(tmp_path / "long.wav", long, sr, subtype="FLOAT")
    bad = long.copy()
    bad[45 * sr] = np.nan  # in the third block
    sf.write(tmp_path / "late_nan.wav", bad, sr, subtype="FLOAT")
    (tmp_path / "garbage.ogg").write_bytes(b"OggS" + bytes(200))
    os.mkfifo(tmp_path / "pipe.wav")  # nobody writes it: reading it must not hang
    rows = [[str(c.path), c.label, c.group, c.category, c.source] for c in good]
    rows += [["late_nan.wav", "not_cry", "x", "", ""], ["garbage.ogg", "not_cry", "x", "", ""],
             ["long.wav", "not_cry", "y", "", ""], ["pipe.wav", "not_cry", "y", "", ""]]
    man = _write_manifest(tmp_path / "m.csv", rows)
    monkeypatch.setattr(P, "CLIP_SPOOL_ROWS", 16)  # the 50-s clips (104 patches) spill
    lines = []
    res = prepare_dataset(manifest_source(man), tmp_path / "ds", teacher=teacher_path, shard_clips=10,
                          runner=LocalRunner(1), log=lines.append)
    meta = res.meta
    assert meta["skipped"] == 3
    skipped = meta["shards"][0]["skipped"]
    assert [s[:2] for s in skipped] == [[3, "late_nan.wav"], [4, "garbage.ogg"], [6, "pipe.wav"]]
    assert "NaN" in skipped[0][2] and "FIFO" in skipped[2][2] and any("late_nan.wav" in ln for ln in lines)
    ds = S.open_dataset(tmp_path / "ds")
    ix = ds.index()
    assert set(ix.clip_id.tolist()) == {0, 1, 2, 5}
    assert np.array_equal(ds.read(ix.rows_of_clips([5])).patches,
                          file_to_patches(tmp_path / "long.wav").astype(np.float16).astype(np.float32))


# ------------------------------------------------------------------------------ AudioSet
def test_audioset_segments_map_labels_groups_and_count_missing_files(clips, teacher_path, tmp_path):
    from cryblock.blocks.dataset.audioset import audioset_source, cry_ids

    assert cry_ids() == ("/m/0463cq4", "/t/dd00002")  # "Crying, sobbing", "Baby cry, infant cry"
    cry = [c for c in clips if c.label == "cry"][:2]
    neg = [c for c in clips if c.label == "not_cry"][:3]
    audio = tmp_path / "audioset"
    (audio / "sub").mkdir(parents=True)
    # the usual names: YTID.ext, YTID_START_END.ext, YYTID_START_END.ext (two segments of one video)
    os.symlink(cry[0].path, audio / f"aaaaaaaaaaa{cry[0].path.suffix}")
    os.symlink(cry[1].path, audio / "sub" / f"Y-bbbbbbbbbb_30.000_40.000{cry[1].path.suffix}")
    os.symlink(neg[0].path, audio / f"ccccccc_ccc_10.000_20.000{neg[0].path.suffix}")
    os.symlink(neg[1].path, audio / f"ccccccc_ccc_50.000_60.000{neg[1].path.suffix}")
    os.symlink(neg[2].path, audio / f"ddddddddddd{neg[2].path.suffix}")
    csv_path = tmp_path / "segments.csv"
    csv_path.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=6, num_segs=7, num_unique_labels=5, num_positive_labels=9\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'aaaaaaaaaaa, 0.000, 10.000, "/t/dd00002,/m/09x0r"\n'
        '-bbbbbbbbbb, 30.000, 40.000, "/m/0463cq4"\n'
        'ccccccc_ccc, 10.000, 20.000, "/m/0ytgt,/m/09x0r"\n'
        'ccccccc_ccc, 50.000, 60.000, "/m/01yrx"\n'
        'ddddddddddd, 0.000, 10.000, "/m/0bt9lr"\n'
        'eeeeeeeeeee, 0.000, 10.000, "/t/dd00002"\n'
        'fffffffffff, 20.000, 30.000, "/m/09x0r"\n')
    src = audioset_source(csv_path, audio)
    assert src.report == {"segments": 7, "with_audio": 5, "missing": 2, "missing_examples": ["eeeeeeeeeee@0", "fffffffffff@20"],
                          "unmapped": 0, "labels": {"cry": 2, "not_cry": 3}}
    got = [(c.group, c.label, c.category, Path(c.path).name) for c in src.clips]
    assert got == [("aaaaaaaaaaa", "cry", "Baby cry, infant cry", cry[0].path.name),
                   ("-bbbbbbbbbb", "cry", "Crying, sobbing", cry[1].path.name),
                   # child speech (/m/0ytgt) is a hard negative, not a cry
                   ("ccccccc_ccc", "not_cry", "Child speech, kid speaking", neg[0].path.name),
                   ("ccccccc_ccc", "not_cry", "Cat", neg[1].path.name),
                   ("ddddddddddd", "not_cry", "Dog", neg[2].path.name)]
    g = audioset_source(csv_path, audio, preset="general", mapping={"/m/01yrx": "cat", "/m/09x0r": "speech"})
    assert [(c.group, c.label) for c in g.clips] == [("aaaaaaaaaaa", "speech"), ("ccccccc_ccc", "speech"),
                                                     ("ccccccc_ccc", "cat")]
    assert g.report["unmapped"] == 3 and g.report["missing"] == 1
    # through the command line: the report, then a dataset grouped by video
    r = CliRunner().invoke(cli, ["prepare", "--segments", str(csv_path), "--audio", str(audio), "--out",
                                 str(tmp_path / "ds"), "--teacher", str(teacher_path), "--workers", "1",
                                 "--classes", "19,20"])
    assert r.exit_code == 0, r.output
    assert "AudioSet: 7 segment(s), 5 with audio, 2 missing (first: eeeeeeeeeee@0, fffffffffff@20); labels: cry 2, not_cry 3" in r.output
    ix = S.open_dataset(tmp_path / "ds").index()
    assert ix.groups == ["-bbbbbbbbbb", "aaaaaaaaaaa", "ccccccc_ccc", "ddddddddddd"]
    assert set(ix.sources) == {"AudioSet"}


def test_audioset_bad_input(tmp_path):
    from cryblock.blocks.dataset.audioset import audioset_source, parse_mapping

    (tmp_path / "a").mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("# YTID, start_seconds, end_seconds, positive_labels\nabcdefghijk, x, 10, \"/m/09x0r\"\n")
    with pytest.raises(DataError, match=r"bad.csv:2: start/end seconds must be numbers"):
        audioset_source(bad, tmp_path / "a")
    good = tmp_path / "s.csv"
    good.write_text('abcdefghijk, 0, 10, "/m/09x0r"\n')
    with pytest.raises(DataError, match="none of the 1 segment"):
        audioset_source(good, tmp_path / "a")
    with pytest.raises(DataError, match="needs --map-id"):
        audioset_source(good, tmp_path / "a", preset="general")
    with pytest.raises(DataError, match="ONTOLOGY_ID=LABEL"):
        parse_mapping(["dog"])
    r = CliRunner().invoke(cli, ["prepare", "--segments", str(good), "--audio", str(tmp_path / "a"), "--out",
                                 str(tmp_path / "o"), "--preset", "general", "--map-id", "Dog=dog"])
    assert r.exit_code == 2 and r.output.strip().startswith("error: --map-id")


# ------------------------------------------------------------------------------ bad input
def test_bad_datasets_give_one_error_line_naming_the_file(reference, teacher, teacher_path, tmp_path):
    ref_out, _ = reference
    default = tmp_path / "default.json"
    Params().save(default)
    other = tmp_path / "other.json"
    Params().replace(dsp={"stft_hop_seconds": 0.02}).save(other)

    def check(ds, *extra):
        return CliRunner().invoke(cli, ["dataset", str(ds), *map(str, extra)])

    r = check(ref_out, "--params", default, "--teacher", teacher_path)
    assert r.exit_code == 0 and "checked: every shard's size and sha256, the DSP parameters, the teacher" in r.output
    assert "cry: 10 clip(s)" in r.output
    r = check(ref_out, "--params", other)
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "made with other DSP parameters (stft_hop_seconds 0.01 (dataset) vs 0.02)" in r.output
    r = check(ref_out, "--teacher", _h5_teacher(teacher, tmp_path / "yamnet.h5", 0.0))
    assert r.exit_code == 2 and "teacher outputs from another teacher" in r.output
    for damage in ("truncate", "tamper", "remove", "garbage-json", "unfinished"):
        d = tmp_path / damage
        shutil.copytree(ref_out, d)
        shard = d / "teacher" / "part-00002.parquet"
        if damage == "truncate":
            shard.write_bytes(shard.read_bytes()[:-100])
        elif damage == "tamper":
            data = bytearray(shard.read_bytes())
            data[len(data) // 2] ^= 1
            shard.write_bytes(bytes(data))
        elif damage == "remove":
            shard.unlink()
        elif damage == "garbage-json":
            (d / "dataset.json").write_text("{\"format\": \"cryblock-dataset\", ")
        else:
            meta = json.loads((d / "dataset.json").read_text())
            meta["complete"] = False
            (d / "dataset.json").write_text(json.dumps(meta))
        r = check(d)
        assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: "), (damage, r.output)
        want = {"truncate": f"{shard}: ", "tamper": f"{shard}: sha256 differs", "remove": f"{shard}: shard missing",
                "garbage-json": f"{d / 'dataset.json'}: not a readable dataset", "unfinished": "unfinished dataset"}[damage]
        assert want in r.output, (damage, r.output)
    # a damaged shard is rebuilt by running prepare again
    res = prepare_dataset(manifest_source(Path(json.loads((ref_out / "dataset.json").read_text())["input"]["file"])),
                          tmp_path / "tamper", teacher=teacher_path, shard_clips=SHARD_CLIPS, runner=LocalRunner(1),
                          log=lambda s: None)
    assert (res.features["shards"], res.teacher["shards"]) == (0, 1)
    assert _files(tmp_path / "tamper") == _files(ref_out)


def test_prepare_bad_input_one_line_exit_2_nothing_written(corpus, teacher_path, tmp_path):
    def prep(*args):
        return CliRunner().invoke(cli, ["prepare", *map(str, args), "--teacher", str(teacher_path)])

    # a manifest whose audio moved
    moved = tmp_path / "moved"
    shutil.copytree(corpus.parent, moved)
    shutil.move(moved / "audio", moved / "audio-elsewhere")
    r = prep("--data", moved / "manifest.csv", "--out", tmp_path / "o1")
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert f"{moved / 'manifest.csv'}: 22 of 22 audio file(s) it lists do not exist (first: {moved / 'audio'}" in r.output
    assert "was the audio moved?" in r.output and not (tmp_path / "o1").exists()
    # --out that holds other files
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("x")
    r = prep("--data", corpus, "--out", tmp_path / "docs")
    assert r.exit_code == 2 and "is not a dataset" in r.output and sorted(os.listdir(tmp_path / "docs")) == ["thesis.tex"]
    # options
    r = prep("--data", corpus, "--out", tmp_path / "o2", "--classes", "19,Purring cats")
    assert r.exit_code == 2 and "'Purring cats' is neither a class index" in r.output and not (tmp_path / "o2").exists()
    r = prep("--data", corpus, "--out", tmp_path / "o3", "--ray-address", "127.0.0.1:1")
    assert r.exit_code == 2 and "--ray-address needs --runner ray" in r.output
    # a second prepare into a dataset being written
    (tmp_path / "busy").mkdir()
    fd = os.open(tmp_path / "busy" / ".prepare.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = prep("--data", corpus, "--out", tmp_path / "busy")
    finally:
        os.close(fd)
    assert r.exit_code == 2 and "another cryblock prepare is writing this dataset" in r.output


def test_missing_teacher_fails_before_any_work(corpus, tmp_path):
    with pytest.raises(CryblockError, match="teacher file not found"):
        prepare_dataset(manifest_source(corpus), tmp_path / "o", teacher=tmp_path / "none.tflite",
                        runner=LocalRunner(1), log=lambda s: None)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.parquet"))


# ------------------------------------------------------------------------------ Ray
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_cluster_writes_the_local_runners_shards_even_when_a_worker_is_killed(
        ray_cluster, reference, corpus, teacher_path, tmp_path):
    import psutil

    from cryblock.output import _STAGING_RE

    ref_out, _ = reference
    out = tmp_path / "ds"
    address, auth = ray_cluster
    env = {**os.environ, **auth, "RAY_ADDRESS": address}
    p = subprocess.Popen([sys.executable, "-m", "cryblock.cli", "prepare", "--data", str(corpus), "--out", str(out),
                          "--shard-clips", str(SHARD_CLIPS), "--runner", "ray", "--teacher", str(teacher_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    killed = None
    deadline = time.time() + 300
    while killed is None and p.poll() is None and time.time() < deadline:
        d = out / "teacher"
        for f in (d.iterdir() if d.is_dir() else ()):
            m = _STAGING_RE.match(f.name)
            if m and int(m.group("pid")) != p.pid:
                try:
                    proc = psutil.Process(int(m.group("pid")))
                    if "ray::" in " ".join(proc.cmdline()) or proc.name().startswith("ray::"):
                        proc.kill()  # the teacher actor, half-way through writing this shard
                        killed = f.name
                except psutil.NoSuchProcess:
                    pass
                break
        time.sleep(0.005)
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output[-3000:]
    assert killed, "no teacher worker was caught writing a shard\n" + output[-2000:]
    assert f"ray cluster {address}: 2 CPU(s), 0 GPU(s)" in output
    # no patch lost or written twice: the shard files are the local runner's, byte for byte
    assert _files(out) == _files(ref_out)
    ds = S.open_dataset(out)
    ix = ds.index()
    assert len({(int(c), round(float(o), 3)) for c, o in zip(ix.clip_id, ix.offset_s)}) == ds.rows
    assert not [f for d in ("patches", "teacher") for f in (out / d).iterdir() if f.name.startswith(".cryblock-")]


def test_ray_address_that_does_not_answer_is_one_error_line(corpus, teacher_path, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'cryblock[ray]'); the Ray runner is not tested")
    port = _free_port()  # nothing listens there
    r = subprocess.run([sys.executable, "-m", "cryblock.cli", "prepare", "--data", str(corpus), "--out",
                        str(tmp_path / "o"), "--runner", "ray", "--ray-address", f"127.0.0.1:{port}",
                        "--teacher", str(teacher_path)], capture_output=True, text=True, timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert re.search(rf"--ray-address 127.0.0.1:{port}: no Ray cluster answers there", errors[0])
    assert not (tmp_path / "o").exists()
