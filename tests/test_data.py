"""Datasets (cryblock/data.py) on real recordings and real file-system objects: manifest rows
that name a FIFO or a device."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

_DEDUP = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # /dev/zero read whole: MemoryError, not the machine
from cryblock.data import deduplicate, load_manifest
clips, warnings = deduplicate(load_manifest(sys.argv[1]))
print(len(clips), len(warnings))
"""


def test_fifo_and_dev_zero_rows_do_not_hang_the_duplicate_check(clips, tmp_path):
    """A FIFO (no writer) and /dev/zero in a manifest used to hang ``train``/``evaluate`` forever in
    the duplicate check, or grow memory to a MemoryError: it read every file whole. Now only
    regular files are hashed (in chunks); the others are skipped and listed by the audio rules."""
    from cryblock.data import compute_patches, load_manifest

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    real = [c for c in clips if c.source == "ESC-10"][:4]
    rows = [f"{c.path},{c.label},{c.group}" for c in real] + [f"{fifo},cry,g1", "/dev/zero,not_cry,g2"]
    man = tmp_path / "m.csv"
    man.write_text("path,label,group\n" + "\n".join(rows) + "\n")
    r = subprocess.run([sys.executable, "-c", _DEDUP, str(man)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["6", "0"], r.stderr[-2000:]
    ps = compute_patches(load_manifest(man), workers=1)
    assert [c.path for c in ps.clips] == [c.path for c in real]
    reasons = dict(ps.skipped)
    assert "is a FIFO, not a regular audio file" in reasons[str(fifo)]
    assert "is a character device, not a regular audio file" in reasons["/dev/zero"]


def test_manifest_that_is_a_fifo_is_one_line(tmp_path):
    from cryblock.data import load_manifest
    from cryblock.errors import DataError

    fifo = tmp_path / "manifest.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a FIFO, not a regular file"):
        load_manifest(fifo)
    with pytest.raises(DataError, match="manifest not found"):
        load_manifest(tmp_path / "none.csv")
