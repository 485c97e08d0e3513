"""Host-gcc checks of the firmware's plain-C parts against their Python twins.

* frontend.c (log-mel, streaming patches) vs cryblock.blocks.dsp.features on real recordings;
* cry_quantize_int8 vs cryblock.model.quantize_input / numpy;
* postproc.c (threshold, N-of-M, hold, serial commands) vs cryblock.detector;
* cry_log.c vs cryblock.logformat.

The harnesses live in tests/c/; sources come from :func:`cryblock.project.write_host_sources`.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cryblock import logformat
from cryblock.blocks.deploy.model import quantize_input
from cryblock.blocks.deploy.project import write_host_sources
from cryblock.detector import Detector, run_detector
from cryblock.params import DetectorParams, DspParams

HARNESS = Path(__file__).parent / "c"
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")


def _cc(out: Path, sources, src_dir: Path, extra=()) -> Path:
    cmd = ["gcc", *CFLAGS, *extra, f"-I{src_dir}", *map(str, sources), "-lm", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"compile failed: {' '.join(cmd)}\n{r.stderr}"
    return out


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """Compiled harnesses: fe (double host FFT), fe_f32 (float32 FFT like the device), det, log."""
    d = tmp_path_factory.mktemp("hostc")
    src = write_host_sources(d / "src", DspParams())
    fe_srcs = [HARNESS / "fe_harness.c", src / "frontend.c", src / "frontend_tables.c"]
    return {
        "src": src,
        "fe": _cc(d / "fe", fe_srcs, src),
        "fe_f32": _cc(d / "fe_f32", fe_srcs, src, ["-DCRY_FE_HOST_FLOAT"]),
        "det": _cc(d / "det", [HARNESS / "det_harness.c", src / "postproc.c"], src),
        "log": _cc(d / "log", [HARNESS / "log_harness.c", src / "cry_log.c"], src),
    }


@pytest.fixture(scope="module")
def parity_clips(clips):
    """Two clips of every source of the shared manifest (fixed seed): ESC-10 OGG 44.1 kHz,
    donateacry 8 kHz, FSDD 8 kHz, Theunissen 16 kHz, long ambience files."""
    rng = np.random.default_rng(1)
    by_src: dict[str, list] = {}
    for c in clips:
        by_src.setdefault(c.source, []).append(c)
    out = []
    for src in sorted(by_src):
        cs = by_src[src]
        out += [cs[i] for i in rng.choice(len(cs), min(2, len(cs)), replace=False)]
    return out


def _run_fe(exe: Path, x: np.ndarray, tmp: Path, chunk: int) -> np.ndarray:
    from cryblock.blocks.dsp.features import pad_waveform

    xp = pad_waveform(x).astype(np.float32)
    xp.tofile(tmp / "in.f32")
    r = subprocess.run([str(exe), "patches", str(tmp / "in.f32"), str(tmp / "out.f32"), str(chunk)],
                       capture_output=True, text=True, check=True)
    got = np.fromfile(tmp / "out.f32", np.float32).reshape(-1, 96, 64)
    assert int(r.stdout) == got.shape[0]
    return got


def _load(c, max_seconds=20.0):
    from cryblock.audio import load_audio

    x = load_audio(c.path, 16000)
    return x[: int(max_seconds * 16000)]


def test_frontend_matches_python_dsp_block(bins, parity_clips, tmp_path):
    from cryblock.blocks.dsp.features import waveform_to_patches

    assert len({c.source for c in parity_clips}) >= 5
    worst, n_patches = 0.0, 0
    for k, c in enumerate(parity_clips):
        x = _load(c)
        ref = waveform_to_patches(x)
        # odd chunk sizes exercise the streaming path (frames straddling pushes)
        got = _run_fe(bins["fe"], x, tmp_path, chunk=(333, 160, 7680, 1)[k % 4] if len(x) < 200000 else 333)
        assert got.shape == ref.shape, c.path
        d = float(np.abs(got - ref).max())
        print(c.source, c.path.name, got.shape[0], f"{d:.2e}")
        worst = max(worst, d)
        n_patches += got.shape[0]
    print(f"front-end parity: {len(parity_clips)} clips, {n_patches} patches, max |diff| = {worst:.2e} log units")
    assert n_patches > 100
    assert worst <= 1e-3


def test_frontend_float32_fft_noise_floor(bins, parity_clips, tmp_path):
    """With a float32 FFT (the device's arithmetic) the log-mel differs from the float64 reference
    only in near-silent bands (empty spectrum above 4 kHz of 8 kHz-sourced clips): a few 1e-3 log
    units at most, far below one input-quantisation step."""
    from cryblock.blocks.dsp.features import waveform_to_patches

    worst, means = 0.0, []
    for c in parity_clips:
        x = _load(c)
        ref = waveform_to_patches(x)
        got = _run_fe(bins["fe_f32"], x, tmp_path, chunk=480)
        worst = max(worst, float(np.abs(got - ref).max()))
        means.append(float(np.abs(got - ref).mean()))
    print(f"float32-FFT front-end: max |diff| = {worst:.2e}, mean {np.mean(means):.2e} log units")
    assert worst <= 1e-2
    assert np.mean(means) <= 1e-4


def test_patch_count_and_order_streaming(bins, tmp_path):
    """A patch is emitted after 96 frames and then every 48 frames, oldest frame first: a chirp
    makes every frame distinct, so a wrong ring order cannot pass."""
    from cryblock.blocks.dsp.features import waveform_to_patches

    t = np.arange(int(3.3 * 16000)) / 16000.0
    x = (0.3 * np.sin(2 * np.pi * (200 * t + 900 * t ** 2))).astype(np.float32)
    ref = waveform_to_patches(x)
    got = _run_fe(bins["fe"], x, tmp_path, chunk=1)
    assert got.shape == ref.shape == (6, 96, 64)
    assert np.abs(got - ref).max() <= 1e-3
    np.testing.assert_array_equal(got[1, :48], got[0, 48:])


def test_int8_quantisation_matches_numpy(bins, parity_clips, tmp_path):
    from cryblock.blocks.dsp.features import waveform_to_patches

    scale, zp = np.float32(0.04658867), 20
    real = waveform_to_patches(_load(parity_clips[0])).ravel()
    rng = np.random.default_rng(0)
    ties = (np.arange(-300, 300) + 0.5).astype(np.float32) * scale  # exact .5 → round half to even
    x = np.concatenate([real, rng.normal(0, 4, 5000).astype(np.float32), ties,
                        np.float32([-1e6, 1e6, 0.0, -0.0])]).astype(np.float32)
    x.tofile(tmp_path / "q.f32")
    subprocess.run([str(bins["fe"]), "quant", str(tmp_path / "q.f32"), str(tmp_path / "q.i8"), repr(float(scale)),
                    str(zp)], check=True)
    got = np.fromfile(tmp_path / "q.i8", np.int8)
    numpy_ref = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(got, numpy_ref)
    np.testing.assert_array_equal(got, quantize_input(x, float(scale), zp))
    assert got.min() == -128 and got.max() == 127


def test_patch_quantised_in_c_equals_python(bins, parity_clips, tmp_path):
    from cryblock.blocks.dsp.features import pad_waveform

    scale, zp = 0.05, -7
    x = pad_waveform(_load(parity_clips[3], 6.0)).astype(np.float32)
    x.tofile(tmp_path / "in.f32")
    subprocess.run([str(bins["fe"]), "patches", str(tmp_path / "in.f32"), str(tmp_path / "p.f32"), "500"], check=True)
    subprocess.run([str(bins["fe"]), "patches_q", str(tmp_path / "in.f32"), str(tmp_path / "p.i8"), "500",
                    str(scale), str(zp)], check=True)
    cf = np.fromfile(tmp_path / "p.f32", np.float32)
    ci = np.fromfile(tmp_path / "p.i8", np.int8)
    assert ci.size == cf.size > 0
    np.testing.assert_array_equal(ci, quantize_input(cf, scale, zp))


def _c_detector(exe: Path, scores: np.ndarray, det: DetectorParams, hop_ms: int, tmp: Path) -> np.ndarray:
    np.asarray(scores, np.float32).tofile(tmp / "s.f32")
    hold_ms = int(round(det.hold_seconds * 1000))
    r = subprocess.run([str(exe), "run", str(tmp / "s.f32"), repr(float(np.float32(det.threshold))),
                        str(det.vote_n), str(det.vote_m), str(hold_ms), str(hop_ms)],
                       capture_output=True, text=True, check=True)
    return np.array([[int(v) for v in ln.split()] for ln in r.stdout.splitlines()]).reshape(-1, 4)


@pytest.mark.parametrize("det", [
    DetectorParams(),
    DetectorParams(threshold=0.3, vote_n=1, vote_m=1, hold_seconds=0.0),
    DetectorParams(threshold=0.7, vote_n=3, vote_m=5, hold_seconds=1.5),
    DetectorParams(threshold=0.5, vote_n=4, vote_m=4, hold_seconds=10.0),
    DetectorParams(threshold=0.9, vote_n=5, vote_m=64, hold_seconds=0.96),
])
def test_detector_matches_python_on_random_scores(bins, tmp_path, det):
    rng = np.random.default_rng(42)
    # bursty sequence: runs of high and low scores, plus exact-threshold ties
    runs = np.repeat(rng.random(300) < 0.3, rng.integers(1, 12, 300))
    scores = np.where(runs, rng.uniform(0.2, 1.0, runs.size), rng.uniform(0.0, 0.8, runs.size)).astype(np.float32)
    scores[::37] = np.float32(det.threshold)
    c = _c_detector(bins["det"], scores, det, 480, tmp_path)
    py = run_detector(scores, det)
    assert c.shape[0] == scores.size
    np.testing.assert_array_equal(c[:, 0], py.pos)
    np.testing.assert_array_equal(c[:, 1], py.votes)
    np.testing.assert_array_equal(c[:, 2], py.det)
    changed = np.flatnonzero(c[:, 3])
    assert [e[0] for e in py.events] == changed.tolist()
    assert len(py.events) >= 2 and py.det.min() == 0 and py.det.max() == 1


def test_detector_semantics_by_hand():
    d = DetectorParams(threshold=0.5, vote_n=2, vote_m=3, hold_seconds=1.0)
    tr = run_detector([0.9, 0.1, 0.6, 0.0, 0.0, 0.0, 0.0], d)
    # votes over the last 3: 1,1,2,1,1,0,0 → ok at patch 2 only; hold 1000 ms covers patches 3, 4
    # (480 and 960 ms after it), patch 5 (1440 ms after) is off
    assert tr.votes.tolist() == [1, 1, 2, 1, 1, 0, 0]
    assert tr.det.tolist() == [0, 0, 1, 1, 1, 0, 0]
    assert tr.events == [(2, 960, "ON"), (5, 2400, "OFF")]
    det = Detector(d)
    det.update(0.9, 0)
    det.configure(DetectorParams(threshold=0.5, vote_n=1, vote_m=2, hold_seconds=1.0))
    assert det.update(0.1, 480).votes == 0  # new N/M clears the history, like the C detector


def test_detector_serial_commands(bins):
    r = subprocess.run([str(bins["det"]), "cmd", "2", "3", "set threshold 0.6", "set vote 3 5", "set hold 1500",
                        "get config", "set vote 4 3", "set threshold 1.5", "set threshold abc", "set hold -1",
                        "set vote 2", "set volume 3", "bogus", "set threshold 0.25 x",
                        # integers that overflow (4294967297 used to become 1 ms), or are not plain decimals
                        "set hold 4294967297", "set hold 18446744073709551617", "set hold 3600001", "set hold 1e3",
                        "set hold 0x10", "set hold 99999999999999999999999999", "set vote 4294967298 4294967299",
                        "set vote 2 65", "set vote 2 3x"],
                       capture_output=True, text=True, check=True)
    rows = [ln.split(" ", 5) for ln in r.stdout.splitlines()]
    assert [row[:5] for row in rows[:4]] == [["1", "0.6000", "2", "3", "2000"], ["1", "0.6000", "3", "5", "2000"],
                                             ["1", "0.6000", "3", "5", "1500"], ["0", "0.6000", "3", "5", "1500"]]
    for row in rows[4:]:  # every bad command: rc -1, configuration unchanged, an error token
        assert row[:5] == ["-1", "0.6000", "3", "5", "1500"], row
        assert row[5] != "-" and " " not in row[5]


def test_log_lines_match_python_formatter(bins):
    r = subprocess.run([str(bins["log"]), "0.8125"], capture_output=True, text=True, check=True)
    lines = r.stdout.splitlines()
    recs = [logformat.parse_line(ln) for ln in lines[:5]]
    assert [x.kind for x in recs] == ["BOOT", "INF", "EVT", "CFG", "ERR"]
    assert lines[1] == logformat.format_line("INF", t_ms=123456, seq=7, fe_us=2100, inv_us=31000, score=0.8125,
                                             pos=1, votes=2, det=1)
    assert lines[0] == logformat.format_line("BOOT", model_bytes=8288, arena_bytes=115616, arena_used=52000,
                                             ops="CONV_2D,DEPTHWISE_CONV_2D,SOFTMAX", sr=16000, threshold=0.5,
                                             vote="2/3", hold_ms=2000, fw="cryblock-0.1.0")
    assert lines[3] == logformat.format_line("CFG", threshold=0.6, vote="2/3", hold_ms=2000)
    assert recs[4].fields == {"code": "bad_command", "msg": "a_b"}  # '*' in a value is neutralised
    assert recs[2].fields == {"t_ms": "123456", "state": "ON", "score": "0.8125"}
    assert lines[5] == "-1"  # a record that does not fit is refused, never truncated
    corrupted = lines[1].replace("seq=7", "seq=8")
    assert logformat.parse_line(corrupted) is None


# ---- the portable firmware core over the replay protocol (host twin) ---------------------------

@pytest.fixture(scope="module")
def twin(bins, tmp_path_factory):
    """tests/c/app_harness.c: cry_app + front-end + detector + log + replay, the stand-in model."""
    src = bins["src"]
    exe = tmp_path_factory.mktemp("twin") / "twin"
    return _cc(exe, [HARNESS / "app_harness.c", *(src / f for f in ("cry_app.c", "frontend.c", "frontend_tables.c",
                                                                     "postproc.c", "cry_log.c", "replay.c"))], src)


def _stub_scores(patches: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """The host twin's stand-in model in Python: half the mean int8 input (floor), as int8."""
    q = quantize_input(patches, scale, zp).reshape(len(patches), -1).astype(np.int64)
    out = np.clip(np.floor_divide(q.sum(axis=1), 2 * q.shape[1]), -128, 127)
    return (out + 128) / 256.0


def test_firmware_core_over_replay_matches_python(twin, parity_clips):
    """The audio path of the firmware, end to end on real recordings: replay lines (RDY each),
    streaming front-end, int8 quantisation, model call, detector and CRYB/1 lines, driven by the
    same code `cryblock emulate` uses; one patch per Python patch, scores and decisions as Python."""
    from cryblock.blocks.deploy.emulate import audio_pcm, run_firmware
    from cryblock.blocks.dsp.features import frames_to_patches, log_mel_spectrogram
    from cryblock.params import Params

    params = Params()
    det = DetectorParams(threshold=0.25, vote_n=2, vote_m=3, hold_seconds=1.0)
    scale, zp = 0.0309, 99
    argv = [str(twin), repr(det.threshold), "2", "3", "1000", repr(scale), str(zp)]
    total_patches, agree = 0, []
    for c in parity_clips:
        pcm = audio_pcm(c.path, params)[: 16000 * 12]
        run = run_firmware(argv, pcm, boot_timeout=10, line_timeout=10)
        assert len(run.records("RDY")) == -(-len(pcm) // 512)
        (end,) = run.records("END")
        patches = frames_to_patches(log_mel_spectrogram(pcm.astype(np.float32) / 32768.0))
        assert int(end.fields["seq"]) == len(patches) and int(end.fields["samples"]) == len(pcm)
        infs = run.records("INF")
        assert [int(r.fields["seq"]) for r in infs] == list(range(len(patches)))
        s_fw = np.array([float(r.fields["score"]) for r in infs])
        s_py = _stub_scores(patches, scale, zp)
        assert np.abs(s_fw - s_py).max() <= 1 / 256 + 1e-4  # within one output step
        agree.append(np.mean(np.abs(s_fw - s_py) < 1e-4))
        # the firmware's detector states are the Python twin's on the firmware's own scores
        np.testing.assert_array_equal([int(r.fields["det"]) for r in infs], run_detector(s_fw, det).det)
        total_patches += len(patches)
    print(f"host twin: {total_patches} patches, {np.mean(agree):.1%} identical scores")
    assert total_patches > 150 and np.mean(agree) > 0.95


def test_replay_protocol_errors_and_commands(twin):
    import base64

    pcm = base64.b64encode(np.arange(300, dtype="<i2").tobytes()).decode()
    lines = [f"pcm 0 {pcm}", "pcm 2 " + pcm, "pcm 1 !!!!", "pcm 1 QUJD", "pcm x", "set threshold 0.7",
             "set vote 9 3", f"pcm 1 {pcm}", "pcm end"]
    r = subprocess.run([str(twin), "0.5", "2", "3", "2000", "0.03", "99"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=30)
    recs = [logformat.parse_line(ln) for ln in r.stdout.splitlines()]
    assert all(recs), r.stdout
    kinds = [(x.kind, x.fields.get("msg") or x.fields.get("seq") or x.fields.get("threshold")) for x in recs[2:]]
    assert kinds == [("RDY", "0"), ("ERR", "seq_out_of_order"), ("ERR", "bad_base64_or_too_many_samples"),
                     ("ERR", "need_whole_int16_samples"), ("ERR", "usage:_pcm_<seq>_<base64>"), ("CFG", "0.7000"),
                     ("ERR", "value_out_of_range"), ("RDY", "1"), ("END", "0")]
    assert recs[-1].fields["samples"] == "600"
