"""Parameters object, manifest and group split, serial log format."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cryblock import logformat
from cryblock.data import load_manifest, split_by_group
from cryblock.errors import DataError, ParameterError
from cryblock.params import DspParams, Params


def test_dsp_defaults_are_yamnet_sizes():
    d = DspParams()
    assert (d.window_length_samples, d.hop_length_samples, d.fft_length) == (400, 160, 512)
    assert d.num_spectrogram_bins == 257
    assert d.patch_shape == (96, 64) and d.patch_hop_frames == 48
    assert d.patch_samples == 15600 and d.patch_hop_samples == 7680


@pytest.mark.parametrize("section,kw,name", [
    ("dsp", {"mel_max_hz": 9000.0}, "mel_max_hz"),
    ("learn", {"alpha": 1.5}, "alpha"),
    ("learn", {"filter_pos": 0.01, "filter_neg": 0.05}, "filter_pos"),
    ("learn", {"positive_label": "dog"}, "positive_label"),
    ("detector", {"vote_n": 4, "vote_m": 3}, "vote_n"),
])
def test_bad_parameters_name_the_parameter(section, kw, name):
    with pytest.raises(ParameterError, match=name):
        Params().replace(**{section: kw})


def test_params_json_round_trip(tmp_path):
    p = Params().replace(learn={"temperature": 4.0, "labels": ["a", "b", "c"], "preset": "general",
                                "positive_label": "b"},
                         detector={"vote_n": 3, "vote_m": 5})
    f = tmp_path / "params.json"
    p.save(f)
    assert Params.load(f) == p
    assert json.loads(f.read_text())["learn"]["labels"] == ["a", "b", "c"]


def test_params_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ParameterError, match="p.json"):
        Params.load(bad)
    bad.write_text('{"dsp": {"no_such": 1}}')
    with pytest.raises(ParameterError, match="no_such"):
        Params.load(bad)
    hostile = {  # text → what the one-line error says
        '{"dsp": [1, 2]}': "section 'dsp' must be a JSON object", '{"learn": 5}': "section 'learn' must be",
        '{"dsp": "ab"}': "got str", '{"dsp": {"sample_rate": %s}}' % ("9" * 400): "'sample_rate': must be",
        '{"dsp": {"mel_bands": %s}}' % ("9" * 5000): "4300 digits", "[" * 100000 + "]" * 100000: "nested too deeply",
    }
    for text, msg in hostile.items():
        bad.write_text(text)
        with pytest.raises(ParameterError, match=msg) as e:
            Params.load(bad)
        assert str(bad) in str(e.value) and len(str(e.value)) < 300
    with pytest.raises(ParameterError, match="is a folder"):
        Params.load(tmp_path)


def test_group_split_never_shares_a_group(clips):
    tr, va, te = split_by_group(clips, seed=0)
    groups = [set(clips[i].group for i in part) for part in (tr, va, te)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert len(tr) + len(va) + len(te) == len(clips)
    for part in (tr, va, te):
        assert {clips[i].label for i in part} == {"cry", "not_cry"}
    # deterministic for a seed, different for another
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), split_by_group(clips, seed=0)))
    assert not np.array_equal(te, split_by_group(clips, seed=1)[2])


def test_manifest_errors(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\nx.wav,cry\n")
    with pytest.raises(DataError, match="group"):
        load_manifest(m)
    m.write_text("path,label,group\nx.wav,,g1\n")
    with pytest.raises(DataError, match=r"m.csv:2"):
        load_manifest(m)
    with pytest.raises(DataError, match="not found"):
        load_manifest(tmp_path / "missing.csv")
    m.write_text("path,label,group,label\nx.wav,cry,g1,not_cry\n")  # which label is meant?
    with pytest.raises(DataError, match=r"\['label'\] appear more than once"):
        load_manifest(m)


def test_split_needs_two_labels(clips):
    one = [c for c in clips if c.label == "cry"]
    with pytest.raises(DataError, match="labels"):
        split_by_group(one)


def test_log_line_round_trip_and_corruption():
    line = logformat.format_line("INF", t_ms=1234, seq=7, fe_us=812, inv_us=23500, score=0.9123, pos=1, votes=2, det=1)
    rec = logformat.parse_line(line)
    assert rec.kind == "INF" and rec.fields["score"] == "0.9123" and rec.num("inv_us") == 23500
    # one flipped character → checksum mismatch → dropped
    assert logformat.parse_line(line.replace("0.9123", "0.9124")) is None
    assert logformat.parse_line(line[:-3]) is None  # truncated
    assert logformat.parse_line("ESP-ROM:esp32s3-20210327") is None
    # garbage before the magic (e.g. after a reset) is tolerated
    assert logformat.parse_line(b"\x00\xff" + line.encode()).kind == "INF"
    assert logformat.parse_line(line.replace("CRYB/1", "CRYB/2")) is None


@pytest.mark.parametrize("args", [
    ["monitor", "--port", "x", "--seconds", "nan"], ["bench", "--port", "x", "--seconds", "inf"],
    ["config", "--port", "x", "--timeout", "nan"], ["config", "--port", "x", "--threshold", "nan"],
    ["dsp", "serve", "--max-body-mb", "nan"], ["dsp", "serve", "--timeout", "nan"],
    ["build", "--model", "m.tflite", "--arena-margin", "nan"], ["emulate", "--project", ".", "--audio", "a.wav",
                                                                "--boot-timeout", "nan"],
    ["tune", "--data", "m.csv", "--out", "t", "--minutes", "nan"], ["features", "a.wav", "--out", "x.npz",
                                                                  "--workers", "100000"],
], ids=lambda a: " ".join(a[:1] + a[-2:-1]))
def test_numeric_options_refuse_nan_inf_and_absurd_values(args, tmp_path, monkeypatch):
    """``nan`` passes click.FloatRange (every comparison with NaN is false): each such option is
    refused before the command runs."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and f"Invalid value for '{args[-2]}'" in r.output and "Traceback" not in r.output, r.output


def test_pool_size_never_exceeds_cpus_or_work():
    from cryblock.data import pool_size

    cpus = os.cpu_count() or 1
    assert pool_size(256, 1000) == cpus and pool_size(256, 3) == 1 and pool_size(None, 9) == min(cpus, 3)
    assert pool_size(1, 1000) == 1


def test_quick_subset_is_stratified_by_label_and_group(clips):
    """--max-clips on the negative-heavy shared manifest (13:1) keeps both labels in every split:
    equal label shares, spread over groups and sources (a proportional draw gave 6 cries from
    a handful of groups, and the split failed)."""
    from collections import Counter

    from cryblock.blocks.learn.train import sample_clips
    from cryblock.errors import CryblockError

    for n in (12, 60, 80):
        sub = sample_clips(clips, n, seed=0)
        assert len(sub) == n and Counter(c.label for c in sub) == {"cry": n // 2, "not_cry": n // 2}
        for lab in ("cry", "not_cry"):  # one clip per group before a group's second clip
            assert len({c.group for c in sub if c.label == lab}) >= min(n // 2, 10)
        tr, va, te = split_by_group(sub, seed=0)
        for part in (tr, va, te):
            assert {sub[i].label for i in part} == {"cry", "not_cry"}
    negs = {c.source for c in sample_clips(clips, 80, seed=0) if c.label == "not_cry"}
    assert len(negs) >= 10  # cats, ESC, speech, music … not 40 speech clips
    assert sample_clips(clips, 80, seed=1) != sample_clips(clips, 80, seed=0)
    with pytest.raises(CryblockError, match="≥ 6"):
        sample_clips(clips, 5)


def test_split_error_says_how_many_groups_each_label_has(clips):
    few = [c for c in clips if c.label == "not_cry" or c.group in sorted({c.group for c in clips
                                                                       if c.label == "cry"})[:2]]
    with pytest.raises(DataError, match=r"groups per label: 'cry' 2, 'not_cry' \d+"):
        split_by_group(few, seed=0)


@pytest.mark.parametrize("args", [
    ["tune", "--data", "m.csv", "--out", "t", "--epochs", "0"], ["config", "--port", "x", "--threshold", "2"],
    ["train", "--data", "m.csv", "--out", "o", "--max-clips", "2"], ["trian"], ["train", "--epoch", "3"], ["detect"],
    ["features", "a.wav", "--out", "x.npz", "--workers", "0"], ["dsp", "serve", "--port", "70000"],
], ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_every_usage_mistake_is_one_error_line(args, tmp_path, monkeypatch):
    """Click's range and usage errors printed 3–4 lines (usage, hint, blank, Error: …)."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.output
    assert r.stdout == "" and list(tmp_path.iterdir()) == []
