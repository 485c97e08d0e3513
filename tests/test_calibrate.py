"""Per-home calibration (cryblock calibrate): a real trained run, real recordings as a parent's
nursery night, the firmware's decision rule; params.json replaced atomically with the previous one
kept; the setting sent to a (simulated) running device; every bad input one error line with
params.json untouched."""
from __future__ import annotations

import itertools
import shutil
import wave

import numpy as np
import pytest
from click.testing import CliRunner

from cryblock.cli.main import cli
from cryblock.params import Params

#: ≥ 10 min of steady and everyday sounds of the shared data (rain, birds, a boat, a fan-like
#: exercise bike, dishes, a tap, music): a parent's nursery recording stand-in.
AMBIENT = ("blanket/rain.flac", "blanket/birds.flac", "blanket/boat.flac", "blanket/city.flac",
           "speechcommands_bg/exercise_bike.flac", "speechcommands_bg/doing_the_dishes.flac",
           "speechcommands_bg/running_tap.flac", "librosa_data/Karissa_Hobbs_-_Lets_Go_Fishin.flac")


@pytest.fixture
def run(quick_run, tmp_path):
    """A private copy of the session's quick run (calibrate changes its params.json)."""
    out = tmp_path / "run"
    shutil.copytree(quick_run[0].out_dir, out)
    return out


def _ambient(data_dir):
    args = []
    for a in AMBIENT:
        args += ["--ambient", str(data_dir / "audio" / a)]
    return args


def _calibrate(*args):
    return CliRunner().invoke(cli, ["calibrate", *map(str, args)])


def test_calibration_keeps_the_recall_floor_and_the_old_params(run, data_dir):
    before = (run / "params.json").read_bytes()
    r = _calibrate("--run", run, *_ambient(data_dir), "--budget-per-8h", "1", "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "recall floor:" in r.output and "before: thr" in r.output and "after: thr" in r.output
    lines = {ln.split(":")[0]: ln for ln in r.output.splitlines() if ln.startswith(("before:", "after:"))}
    floor = float(r.output.split("recall floor: ")[1].split(" %")[0])
    after_recall = float(lines["after"].split("episodes within 10 s ")[1].split(" %")[0])
    assert after_recall >= floor  # never below the floor
    if "updated" in r.output:
        assert (run / "params.before-calibration.json").read_bytes() == before
        new = Params.load(run / "params.json").detector
        assert f"after: thr {new.threshold:.3g}, {new.vote_n}/{new.vote_m}, hold {new.hold_seconds:g} s" in r.output
        assert Params.load(run / "params.json").learn == Params.load(run / "params.before-calibration.json").learn
    else:
        assert "no change" in r.output and (run / "params.json").read_bytes() == before
    # the same recording again: the chosen setting is already the best one
    again = _calibrate("--run", run, *_ambient(data_dir), "--budget-per-8h", "1", "--workers", "1")
    assert again.exit_code == 0 and "no change" in again.output, again.output


def test_calibration_sends_the_setting_to_the_running_firmware(run, data_dir):
    from fake_device import FakeDevice, endless_stream

    with FakeDevice(endless_stream(), close_at_end=False) as fake:
        r = _calibrate("--run", run, *_ambient(data_dir), "--port", fake.port, "--workers", "1")
        applied = dict(fake.config)
    assert r.exit_code == 0, r.output
    d = Params.load(run / "params.json").detector
    assert applied == {"threshold": round(d.threshold, 4), "vote": (d.vote_n, d.vote_m),
                       "hold_ms": int(round(d.hold_seconds * 1000))}
    assert f"sent to {fake.port}" in r.output


def _write_wav(path, x):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.asarray(x, np.int16).tobytes())


@pytest.mark.parametrize("case", ["unreadable", "too short", "silent", "no int8", "budget", "mute port"])
def test_bad_input_is_one_error_line_and_params_untouched(run, data_dir, tmp_path, case):
    from fake_device import FakeDevice, endless_stream

    before = (run / "params.json").read_bytes()
    amb = _ambient(data_dir)
    extra, expect = [], ""
    if case == "unreadable":
        bad = tmp_path / "night.wav"
        bad.write_bytes(b"RIFF not really a wave file")
        amb += ["--ambient", str(bad)]
        expect = "night.wav"
    elif case == "too short":
        amb = ["--ambient", str(data_dir / "audio" / "blanket" / "city.flac")]
        expect = "record at least 10 min"
    elif case == "silent":
        quiet = tmp_path / "quiet.wav"
        _write_wav(quiet, np.zeros(16000 * 60 * 11))
        amb = ["--ambient", str(quiet)]
        expect = "quiet.wav"
    elif case == "no int8":
        (run / "model_quantized_int8_io.tflite").unlink()
        expect = "model_quantized_int8_io.tflite"
    elif case == "budget":
        for v in ("-1", "inf", "nan"):
            r = _calibrate("--run", run, *amb, "--budget-per-8h", v)
            assert r.exit_code == 2 and "budget-per-8h" in r.output, r.output
        assert (run / "params.json").read_bytes() == before
        return
    if case == "mute port":
        inf_only = itertools.islice(endless_stream(), 2, None)  # no BOOT/CFG: nothing answers
        with FakeDevice(inf_only, close_at_end=False, respond=False) as fake:
            r = _calibrate("--run", run, *amb, "--port", fake.port, "--budget-per-8h", "1000", "--workers", "1")
        expect = "no CFG answer"
    else:
        r = _calibrate("--run", run, *amb, *extra, "--workers", "1")
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], r.output
    assert "Traceback" not in r.output
    assert (run / "params.json").read_bytes() == before
    assert not (run / "params.before-calibration.json").exists()
