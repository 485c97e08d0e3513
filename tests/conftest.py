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
    """One real training run (80 clips stratified by label and group, QUICK recipe, augmentation
    off — the recipe a streamed dataset trains): the (RunResult, log lines). Read-only: copy the
    folder before changing it."""
    from cryblock.blocks.learn.train import train_from_manifest
    from cryblock.params import AugmentParams, Params

    out = tmp_path_factory.mktemp("run") / "quick"
    lines = []
    res = train_from_manifest(data_dir / "manifest.csv", out, Params().replace(learn=QUICK, augment=AugmentParams.OFF),
                              teacher=teacher, max_clips=80, log=lines.append)
    return res, lines


def _loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A one-node Ray cluster on loopback with 2 CPUs: yields (its address, the environment that
    authenticates to it); stopped afterwards (only the processes it started)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'cryblock[ray]'); the Ray runner is not tested")
    import contextlib
    import secrets
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    import psutil

    ray_bin = Path(sys.executable).with_name("ray")
    tmp = tempfile.mkdtemp(prefix="crb-ray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    port = _loopback_port()
    ports = {flag: _loopback_port() for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                             "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                             "--metrics-export-port", "--node-manager-port", "--object-manager-port")}
    cmd = [str(ray_bin), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
           "--temp-dir", tmp, "--object-store-memory", str(100 << 20),
           *[x for flag, p in ports.items() for x in (flag, str(p))]]
    # Ray's servers listen on every interface: token authentication with a fresh token keeps
    # other processes out; the driver gets the same token
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **auth})
    try:
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    pytest.fail(f"ray start --head did not come up (exit {head.poll()})")
                time.sleep(0.5)
        time.sleep(3)  # the raylet registers after the GCS port opens
        yield f"127.0.0.1:{port}", auth
    finally:
        # the head command and every process it started (GCS, raylet, workers …), by pid
        procs = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)] \
            if head.poll() is None else []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        for p in psutil.wait_procs(procs, timeout=5)[1]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        head.wait(15)
        shutil.rmtree(tmp, ignore_errors=True)
