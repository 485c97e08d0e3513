"""``cryblock features`` on real recordings ($CRYBLOCK_DATA) and on broken files made from them:
output contents, skip/error reporting, exit codes, atomic output."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from cryblock.blocks.dsp.features import file_to_patches
from cryblock.cli.main import cli
from cryblock.params import DspParams, Params


def _pick(clips, source, n):
    cs = sorted((c for c in clips if c.source == source), key=lambda c: str(c.path))
    return [cs[i] for i in np.linspace(0, len(cs) - 1, n).round().astype(int)]


@pytest.fixture(scope="module")
def real(clips):
    """A few real clips of each format: ESC-10 OGG 44.1k, donateacry/FSDD FLAC 8k, theunissen 16k."""
    return (_pick(clips, "ESC-10", 2) + _pick(clips, "donateacry-corpus", 2)
            + _pick(clips, "free-spoken-digit-dataset", 2) + _pick(clips, "theunissenlab/BabyCriesDiscomfortPain", 2))


@pytest.fixture
def run(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("CRYBLOCK_CACHE", str(tmp_path_factory.mktemp("cache")))  # the default cache, not the user's

    def _run(*args):
        return CliRunner().invoke(cli, ["features", *map(str, args), "--workers", "1"])
    return _run


@pytest.fixture
def broken(tmp_path, real):
    """Broken files made from real recordings: {kind: path}."""
    d = tmp_path / "broken"
    d.mkdir()
    flac = next(c.path for c in real if c.path.suffix == ".flac" and "theunissen" in str(c.path))
    x, sr = sf.read(str(flac), dtype="float32")
    out = {}
    out["empty"] = d / "empty.wav"
    out["empty"].write_bytes(b"")
    data = flac.read_bytes()
    out["truncated"] = d / "truncated.flac"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["random"] = d / "random.ogg"
    out["random"].write_bytes(np.random.default_rng(1).integers(0, 256, 30000, dtype=np.uint8).tobytes())
    y = x.copy()
    y[500] = np.nan
    out["nan"] = d / "nan.wav"
    sf.write(out["nan"], y, sr, subtype="FLOAT")
    y = x.copy()
    y[-1] = np.inf
    out["inf"] = d / "inf.wav"
    sf.write(out["inf"], y, sr, subtype="FLOAT")
    out["zeros"] = d / "zeros.wav"
    sf.write(out["zeros"], np.zeros_like(x), sr, subtype="PCM_16")
    for fmt in ("wav", "aiff"):  # an interrupted copy: libsndfile alone decodes the first half silently
        whole = d / f"whole.{fmt}"
        sf.write(whole, x, sr, subtype="PCM_16")
        out[f"cut_{fmt}"] = d / f"cut.{fmt}"
        out[f"cut_{fmt}"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        whole.unlink()
    out["fifo"] = d / "fifo.wav"
    os.mkfifo(out["fifo"])
    return out


EXPECTED = {"empty": "empty file", "truncated": "cannot decode audio", "random": "cannot decode audio",
            "nan": "1 sample(s) are NaN or Inf", "inf": "1 sample(s) are NaN or Inf",
            "zeros": "all samples are zero", "cut_wav": "truncated WAV file", "cut_aiff": "truncated AIFF file",
            "fifo": "is a FIFO, not a regular audio file"}


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_single_bad_file_is_one_line_error_exit_2_and_nothing_written(run, broken, tmp_path, kind):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    keep = out_dir / "patches.npz"
    keep.write_bytes(b"previous result")
    r = run(broken[kind], "--out", keep, "--quiet")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert lines == [f"error: {broken[kind]}: " + lines[0].split(f"{broken[kind]}: ", 1)[1]]
    assert EXPECTED[kind] in lines[0]
    assert "Traceback" not in r.output
    assert keep.read_bytes() == b"previous result"  # untouched
    assert _no_leftovers(out_dir) == ["patches.npz"]  # no temp file left


def test_directory_with_unreadable_files_skips_and_reports(run, real, broken, tmp_path):
    d = tmp_path / "in"
    for i, c in enumerate(real):
        sub = d / ("a" if i % 2 else "b") / "deep"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(c.path, sub / c.path.name)
    shutil.copy(broken["truncated"], d / "a" / "truncated.flac")
    shutil.copy(broken["zeros"], d / "zeros.WAV")  # upper-case extension is collected too
    (d / "notes.txt").write_text("not audio, ignored")
    out = tmp_path / "p.npz"
    r = run(d, "--out", out)
    assert r.exit_code == 0, r.output
    assert f"skipped 2 of {len(real) + 2} file(s)" in r.stderr
    assert f"{d / 'a' / 'truncated.flac'}: cannot decode audio" in r.stderr
    assert f"{d / 'zeros.WAV'}: all samples are zero" in r.stderr
    assert "notes.txt" not in r.stderr
    z = np.load(out)
    assert set(z.files) == {"patches", "clip_index", "starts", "paths", "skipped", "params"}
    assert z["patches"].dtype == np.float32 and z["patches"].shape[1:] == (96, 64)
    assert z["clip_index"].dtype == np.int32 and len(z["clip_index"]) == len(z["patches"])
    assert len(z["paths"]) == len(real) and len(z["skipped"]) == 2
    assert DspParams(**json.loads(str(z["params"]))) == DspParams()
    for i, p in enumerate(z["paths"]):
        mine = z["patches"][z["clip_index"] == i]
        np.testing.assert_array_equal(mine, file_to_patches(p))
        np.testing.assert_allclose(z["starts"][z["clip_index"] == i], np.arange(len(mine)) * 0.48, atol=1e-6)
    assert r.stdout == ""  # progress and report go to stderr
    assert f"features of {len(real) + 2} files: done" in r.stderr and f"wrote {out}" in r.stderr


def test_valid_variants_8bit_stereo_8k_44k(run, real, tmp_path):
    theu = next(c for c in real if "theunissen" in str(c.path))
    x, sr = sf.read(str(theu.path), dtype="float32")
    d = tmp_path / "variants"
    d.mkdir()
    sf.write(d / "u8.wav", x, sr, subtype="PCM_U8")
    sf.write(d / "stereo.wav", np.stack([x, x[::-1]], axis=1), sr, subtype="FLOAT")
    k8 = next(c for c in real if c.source == "donateacry-corpus")
    k44 = next(c for c in real if c.source == "ESC-10")
    assert sf.info(str(k8.path)).samplerate == 8000 and sf.info(str(k44.path)).samplerate == 44100
    out = tmp_path / "v.npz"
    r = run(d / "u8.wav", d / "stereo.wav", k8.path, k44.path, theu.path, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    z = np.load(out)
    assert len(z["paths"]) == 5 and len(z["skipped"]) == 0
    by_name = {Path(p).name: z["patches"][z["clip_index"] == i] for i, p in enumerate(z["paths"])}
    ref16 = by_name[theu.path.name]
    u8 = by_name["u8.wav"]
    loud = ref16 > 0
    assert u8.shape == ref16.shape and np.abs(u8 - ref16)[loud].mean() < 0.05
    np.testing.assert_array_equal(by_name[k8.path.name], file_to_patches(k8.path))
    np.testing.assert_array_equal(by_name[k44.path.name], file_to_patches(k44.path))
    assert by_name["stereo.wav"].shape == ref16.shape


def test_nothing_readable_is_an_error(run, broken, tmp_path):
    out = tmp_path / "none.npz"
    r = run(broken["empty"], broken["random"], "--out", out, "-q")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: nothing readable: none of 2")
    assert str(broken["empty"]) in r.stderr or str(broken["random"]) in r.stderr
    assert not out.exists() and _no_leftovers(tmp_path) == ["broken"]


def test_manifest_mode_stores_labels_and_groups(run, real, broken, tmp_path):
    man = tmp_path / "manifest.csv"
    rows = [(str(c.path), c.label, c.group) for c in real] + [(str(broken["truncated"]), "cry", "g-bad")]
    with man.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        w.writerows(rows)
    out = tmp_path / "m.npz"
    r = run("--manifest", man, "--out", out, "--no-cache", "-q")
    assert r.exit_code == 0, r.output
    assert "skipped 1 of 9" in r.stderr and "truncated.flac: cannot decode audio" in r.stderr
    z = np.load(out)
    assert list(z["paths"]) == [str(c.path) for c in real]
    assert list(z["labels"]) == [c.label for c in real] and list(z["groups"]) == [c.group for c in real]
    assert {"cry", "not_cry"} <= set(z["labels"])
    for i, c in enumerate(real):
        np.testing.assert_array_equal(z["patches"][z["clip_index"] == i], file_to_patches(c.path))


def test_dsp_flags_and_params_file(run, real, tmp_path):
    clip = real[0].path
    out = tmp_path / "f.npz"
    r = run(clip, "--out", out, "--mel-bands", "32", "--mel-max-hz", "6000", "-q")
    assert r.exit_code == 0, r.output
    z = np.load(out)
    want = DspParams(mel_bands=32, mel_max_hz=6000.0)
    assert DspParams(**json.loads(str(z["params"]))) == want
    np.testing.assert_array_equal(z["patches"], file_to_patches(clip, want))
    pfile = tmp_path / "params.json"
    Params().replace(dsp={"log_offset": 0.01}).save(pfile)
    r = run(clip, "--out", out, "--params", pfile, "--patch-hop-seconds", "0.96", "-q")
    assert r.exit_code == 0, r.output
    assert DspParams(**json.loads(str(np.load(out)["params"]))) == DspParams(log_offset=0.01, patch_hop_seconds=0.96)
    r = run(clip, "--out", out, "--mel-max-hz", "9000", "-q")
    assert r.exit_code == 2 and r.stderr.startswith("error: parameter 'mel_max_hz'")


def test_usage_mistakes(run, real, tmp_path):
    assert run("--out", tmp_path / "x.npz").exit_code == 2
    man = tmp_path / "m.csv"
    man.write_text("path,label,group\n")
    assert run(real[0].path, "--manifest", man, "--out", tmp_path / "x.npz").exit_code == 2
    r = run(tmp_path / "missing.wav", real[0].path, "--out", tmp_path / "x.npz")
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {tmp_path / 'missing.wav'}: file not found"
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    r = run(empty_dir, "--out", tmp_path / "x.npz")
    assert r.exit_code == 2 and "directory holds no audio files" in r.stderr
    r = run(real[0].path, "--out", tmp_path)
    assert r.exit_code == 2 and "--out is a directory" in r.stderr
    r = run("--manifest", man, "--out", tmp_path / "x.npz")
    assert r.exit_code == 2 and "manifest has no rows" in r.stderr
    r = run("", "--out", tmp_path / "x.npz")  # "$UNSET": would have read the current folder
    assert r.exit_code == 2 and "empty string" in r.stderr
    r = run(real[0].path, "--out", tmp_path / "x.npz", "--cache-dir", man / "cache")  # under a file
    assert r.exit_code == 2 and "--cache-dir" in r.stderr and "is a file, not a folder" in r.stderr
    for bad in ("nan", "inf"):
        r = CliRunner().invoke(cli, ["features", str(real[0].path), "--out", str(tmp_path / "x.npz"),
                                     "--patch-hop-seconds", bad])
        assert r.exit_code == 2 and "Traceback" not in r.output
    assert not (tmp_path / "x.npz").exists()


def test_real_process_exit_code_and_progress(real, broken, tmp_path, tmp_path_factory):
    env = {**os.environ, "CRYBLOCK_CACHE": str(tmp_path_factory.mktemp("cache"))}
    out = tmp_path / "proc.npz"
    p = subprocess.run([sys.executable, "-m", "cryblock.cli", "features", str(broken["nan"]), "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"error: {broken['nan']}: 1 sample(s) are NaN or Inf"
    p = subprocess.run([sys.executable, "-m", "cryblock.cli", "features", *[str(c.path) for c in real[:3]],
                        "--out", str(out), "--workers", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "features of 3 files: done in" in p.stderr and "wrote" in p.stderr  # progress lines, no bar
    assert "\r" not in p.stderr
    assert len(np.load(out)["paths"]) == 3
