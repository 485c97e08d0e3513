"""Audio input rules (cryblock/audio.py) on real recordings: absurd files refused, quiet ones
kept, long recordings streamed with the same patches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cryblock import audio
from cryblock.blocks.dsp.features import file_patch_blocks, waveform_to_patches
from cryblock.errors import AudioError


# ----------------------------------------------------------------------------- audio rules
def _wav(path: Path, x, sr: int, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), np.asarray(x), sr, subtype=subtype)
    return path


@pytest.mark.parametrize("what,make,msg", [
    ("2 samples at 1 Hz", lambda d: _wav(d / "a.wav", [0.1, -0.1], 1), "sample rate 1"),
    ("peak ±300", lambda d: _wav(d / "b.wav", 300 * np.sin(np.arange(16000) / 5), 16000), "exceeds 2"),
    ("constant 1e-30", lambda d: _wav(d / "c.wav", np.full(16000, 1e-30), 16000), "silent recording"),
])
def test_absurd_audio_is_refused(tmp_path, what, make, msg):
    p = make(tmp_path)
    with pytest.raises(AudioError, match=msg):
        audio.load_audio(p)
    x, sr = sf.read(str(p), dtype="float32")
    with pytest.raises(AudioError, match=msg):
        audio.prepare_waveform(x, sr, 16000.0)


def test_quiet_but_real_audio_passes(clips, tmp_path):
    x = audio.load_audio(clips[0].path)
    quiet = x / np.abs(x).max() * 10 ** (-60 / 20)  # −60 dBFS peak: quiet, not silent
    p = _wav(tmp_path / "quiet.wav", quiet, 16000)
    assert np.abs(audio.load_audio(p)).max() > 0
    _wav(tmp_path / "hot.wav", np.clip(x * 1.5, -1.5, 1.5), 16000)  # float overshoot ≤ +6 dBFS is kept
    assert np.abs(audio.load_audio(tmp_path / "hot.wav")).max() > 1.0


def test_long_recording_is_streamed_with_the_same_patches(clips, tmp_path):
    """Three minutes of real audio (several clips end to end, 8 kHz FLAC → resampled): streamed in
    blocks of 20 s it gives exactly the patches of the whole waveform at once."""
    import soxr

    src = [c for c in clips if c.source == "donateacry-corpus"][:40]
    x8 = np.concatenate([sf.read(str(c.path), dtype="float32")[0] for c in src])[: 8000 * 180]
    p = _wav(tmp_path / "long.flac", x8, 8000, "PCM_16")
    blocks = list(file_patch_blocks(p))
    assert len(blocks) >= 9  # ≥ one block of patches per 20 s read
    whole = waveform_to_patches(soxr.resample(sf.read(str(p), dtype="float32")[0], 8000, 16000, quality="HQ"))
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_manifest_with_byte_order_mark(clips, tmp_path):
    from cryblock.data import load_manifest

    m = tmp_path / "excel.csv"
    rows = "".join(f"{c.path},{c.label},{c.group}\r\n" for c in clips[:3])
    m.write_bytes(b"\xef\xbb\xbf" + ("path,label,group\r\n" + rows).encode())
    got = load_manifest(m)
    assert [c.path for c in got] == [c.path for c in clips[:3]]
