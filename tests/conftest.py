"""Shared fixtures: the real teacher and recordings, found through environment variables.

``CRYBLOCK_TEACHER`` → yamnet.tflite, ``CRYBLOCK_DATA`` → folder with manifest.csv (CI sets
both to ../shared/...). Tests that need them are skipped with a reason when unset.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# TensorFlow's own switch for its info and warning logs (what `cryblock` sets for its commands), for
# this process and the commands the tests start
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _env_path(var: str) -> Path | None:
    v = os.environ.get(var)
    return Path(v).resolve() if v else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the shared recordings (holds manifest.csv)."""
    p = _env_path("CRYBLOCK_DATA")
    if p is None:
        pytest.skip("CRYBLOCK_DATA is not set (point it at shared/data)")
    assert (p / "manifest.csv").is_file(), f"{p}/manifest.csv missing"
    return p


@pytest.fixture(scope="session")
def teacher_path() -> Path:
    """The real YAMNet TFLite teacher."""
    p = _env_path("CRYBLOCK_TEACHER")
    if p is None:
        pytest.skip("CRYBLOCK_TEACHER is not set (point it at shared/models/yamnet.tflite)")
    assert p.is_file(), f"{p} missing"
    return p


@pytest.fixture(scope="session")
def teacher(teacher_path):
    """The real YAMNet teacher loaded once for the session
    (cryblock.blocks.learn.teacher.Teacher; read-only in tests)."""
    from cryblock.blocks.learn.teacher import load_teacher

    return load_teacher(teacher_path)


@pytest.fixture(scope="session")
def clips(data_dir):
    """All clips of the shared manifest (list of cryblock.data.Clip)."""
    from cryblock.data import load_manifest

    return load_manifest(data_dir / "manifest.csv")


#: A few-second recipe for tests that need a real trained run (tiny student, 3 epochs).
QUICK = {"epochs": 3, "stem_channels": 8, "pool": "max", "blocks": "8/1,16/2", "batch_size": 16, "patience": 3}


@pytest.fixture(scope="session")
def quick_run(data_dir, teacher, tmp_path_factory):
    """One real training run (80 clips stratified by label and group, QUICK recipe): the
    (RunResult, log lines). Read-only: copy the folder before changing it."""
    from cryblock.blocks.learn.train import train_from_manifest
    from cryblock.params import Params

    out = tmp_path_factory.mktemp("run") / "quick"
    lines = []
    res = train_from_manifest(data_dir / "manifest.csv", out, Params().replace(learn=QUICK), teacher=teacher,
                              max_clips=80, log=lines.append)
    return res, lines
