"""Output safety (cryblock/output.py) on real file-system objects: FIFOs, a character device (a
/dev/null twin made with mknod when root), symlinks, folders, unwritable places, stale work
folders of killed processes."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cryblock import output as cio
from cryblock.errors import CryblockError


# ----------------------------------------------------------------------------- output targets
def test_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(Path(fifo).read_bytes()))
    reader.start()
    cio.atomic_write_bytes(fifo, b"patches")
    reader.join(10)
    assert got == [b"patches"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_character_device_stays_a_device(tmp_path):
    """`cryblock features good.wav --out /dev/null` used to turn /dev/null into a regular file;
    here on a twin of /dev/null (char 1:3) so a regression cannot break the machine."""
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    cio.atomic_write_text(null, "x" * 1000)
    cio.atomic_save_npz(null, a=np.arange(10))
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_cli_features_out_to_a_device(clips, tmp_path):
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    r = subprocess.run([sys.executable, "-m", "cryblock.cli", "features", str(clips[0].path), "--out", str(null),
                        "-q", "--no-cache"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_symlink_is_followed_and_kept(tmp_path):
    real = tmp_path / "runs" / "report.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o640)
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    cio.atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # an existing file keeps its mode
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "runs" / "created.json")
    cio.atomic_write_text(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "runs" / "created.json").read_text() == "made"


def test_folder_socket_and_file_parent_are_refused(tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    with pytest.raises(CryblockError, match="is a folder"):
        cio.atomic_write_text(d, "x")
    import socket

    sock_path = tmp_path / "s"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        with pytest.raises(CryblockError, match="socket"):
            cio.atomic_write_text(sock_path, "x")
    finally:
        s.close()
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(CryblockError, match="cannot write"):
        cio.atomic_write_text(f / "under" / "x.json", "x")
    assert f.read_text() == "keep"


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    out = tmp_path / "p.npz"
    out.write_bytes(b"previous")

    def blocks():
        yield np.zeros((2, 3), np.float32)
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        with cio.NpzWriter(out) as w:
            w.add_blocks("x", (4, 3), np.float32, blocks())
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["p.npz"]
    with pytest.raises(CryblockError, match="blocks hold"):
        with cio.NpzWriter(out) as w:
            w.add_blocks("x", (4, 3), np.float32, [np.zeros((3, 3))])
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_npz_writer_equals_savez(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 4, 5)).astype(np.float32), np.array(["x", "yy"])
    with cio.NpzWriter(tmp_path / "s.npz") as w:
        w.add_blocks("a", a.shape, np.float32, [a[:3], a[3:5], a[5:]])
        w.add("b", b)
    z = np.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(z["a"], a)
    assert list(z["b"]) == ["x", "yy"]


@pytest.mark.parametrize("case", ["file_as_folder", "under_a_file", "proc", "folder_as_file"])
def test_check_output_fails_fast(tmp_path, case):
    f = tmp_path / "taken"
    f.write_text("x")
    path, folder = {"file_as_folder": (f, True), "under_a_file": (f / "run", True),
                    "proc": (Path("/proc/cryblock-run"), True), "folder_as_file": (tmp_path, False)}[case]
    with pytest.raises(CryblockError):
        cio.check_output(path, folder=folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing created
    cio.check_output(tmp_path / "new" / "deep", folder=True)
    assert not (tmp_path / "new").exists()


def test_output_that_is_an_input_is_refused(clips, tmp_path):
    """An output naming one of the job's inputs (the same path, a symlink to it, or the same run
    folder) is refused before anything is read or written; names too long fail in one line."""
    wav = tmp_path / "in.flac"
    wav.write_bytes(clips[0].path.read_bytes())
    link = tmp_path / "link.npz"
    link.symlink_to(wav)
    for out in (wav, link, tmp_path / "." / "in.flac"):
        with pytest.raises(CryblockError, match="also an input"):
            cio.check_output(out, folder=False, inputs=(None, wav))
    with pytest.raises(CryblockError, match="also an input"):
        cio.check_output(tmp_path, folder=True, inputs=(tmp_path / "sub" / "..",))
    cio.check_output(tmp_path / "other.npz", folder=False, inputs=(wav, None))
    for folder in (False, True):
        with pytest.raises(CryblockError, match="cannot write.*too long"):
            cio.check_output(tmp_path / ("n" * 300), folder=folder)
    r = subprocess.run([sys.executable, "-m", "cryblock.cli", "features", str(wav), "--out", str(wav), "-q",
                        "--no-cache"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "also an input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert wav.read_bytes() == clips[0].path.read_bytes()
    r = subprocess.run([sys.executable, "-m", "cryblock.cli", "monitor", "--port", "socket://127.0.0.1:9",
                        "--out", str(tmp_path / "m.log"), "--json", str(tmp_path / "m.log")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "also an input" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "cryblock.cli", "features", "x" * 300 + ".wav", "--out",
                        str(tmp_path / "o.npz"), "-q", "--no-cache"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr) < 600, r.stderr


def test_staging_dirs_use_umask_and_dead_ones_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".cryblock-staging-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "model.tflite").write_bytes(b"half")
    alive = tmp_path / f".cryblock-staging-{os.getppid()}-def456"  # our parent is alive
    alive.mkdir()
    stale_tmp = tmp_path / f".cryblock-report.json-{dead.pid}-x1y2.tmp"
    stale_tmp.write_text("half")
    users = tmp_path / f".config-{dead.pid}-abc"  # not ours: kept
    users.mkdir()
    d = cio.staging_dir(tmp_path)
    assert not stale.exists() and not stale_tmp.exists() and alive.exists() and users.exists() and d.exists()
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~cio._UMASK
    assert d.name.startswith(f".cryblock-staging-{os.getpid()}-")


# ----------------------------------------------------------------------------- run folders
def _run_folder(d: Path, kind: str = "run") -> Path:
    d.mkdir(parents=True)
    if kind == "tune":
        (d / "tune.json").write_text("{}")
    else:
        (d / "params.json").write_text("{}")
        (d / "metrics.json").write_text('{"kind": "evaluation"}' if kind == "evaluation" else "{}")
    (d / "model.tflite").write_bytes(b"model")
    return d


def test_a_run_is_replaced_only_when_asked_and_only_by_its_own_command(tmp_path):
    cio.check_run_output(tmp_path / "new", "run")
    (tmp_path / "empty").mkdir()
    cio.check_run_output(tmp_path / "empty", "run")
    run = _run_folder(tmp_path / "run")
    with pytest.raises(CryblockError, match=r"--out holds a run \(metrics.json, model.tflite, params.json\); .*--force"):
        cio.check_run_output(run, "run")
    cio.check_run_output(run, "run", force=True)
    with pytest.raises(CryblockError, match="holds a run folder, not an evaluation"):
        cio.check_run_output(run, "evaluation", force=True)
    ev = _run_folder(tmp_path / "ev", "evaluation")
    with pytest.raises(CryblockError, match="holds an evaluation"):
        cio.check_run_output(ev, "evaluation")
    cio.check_run_output(ev, "evaluation", force=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(CryblockError, match="is not empty"):
        cio.check_run_output(tmp_path / "mine", "tune")
    with pytest.raises(CryblockError, match="inside --out .* which --force would replace"):
        cio.check_run_output(run, "run", force=True, inputs=(run / "params.json",))
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.tflite", "params.json"]


def test_nothing_is_written_through_a_symlink_inside_a_run(tmp_path):
    run = _run_folder(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "evaluation").symlink_to(elsewhere)
    with pytest.raises(CryblockError, match="is a symlink inside the run folder"):
        cio.check_run_output(run / "evaluation", "evaluation", force=True)
    with pytest.raises(CryblockError, match="is a symlink inside the run folder"):
        cio.check_output(run / "evaluation" / "plot.png", folder=False)
    with pytest.raises(CryblockError, match="symlink inside the run folder"):
        cio.check_run_output(run, "run", force=True)  # run/evaluation would be replaced through it
    (run / "evaluation").unlink()
    (run / "metrics.json").unlink()
    (run / "metrics.json").symlink_to(elsewhere / "m.json")
    with pytest.raises(CryblockError, match="symlink inside the run folder"):
        cio.check_run_output(run, "run", force=True)
    assert list(elsewhere.iterdir()) == []


def test_file_outputs_never_replace_a_runs_files(tmp_path):
    run = _run_folder(tmp_path / "run")
    for name in ("model.tflite", "metrics.json", "params.json"):
        with pytest.raises(CryblockError, match="would replace a file of the run"):
            cio.check_output(run / name, folder=False, what="--plot")
    cio.check_output(run / "detect.png", folder=False)  # a new file beside the run's is fine
    cio.check_output(tmp_path / "model.tflite", folder=False)  # outside a run folder: as before
