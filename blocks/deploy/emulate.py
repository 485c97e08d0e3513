"""``cryblock emulate``: run the generated firmware on known audio and compare it with Python.

The firmware runs as a process whose console is its stdin/stdout:

* the **linux-target** build of the project (``build/<name>.elf``, ESP-IDF's host target), or any
  program that speaks the protocol (``binary``);
* the **ESP32-S3 image in Espressif's QEMU** (:func:`qemu_command`: the build's flash regions
  merged into one image with esptool, the console UART on stdio).

The audio goes in over the console with the replay protocol of ``replay.h`` (``pcm <seq>
<base64>`` lines, one in flight, each acknowledged by ``CRYB/1 RDY``; ``pcm end`` → ``CRYB/1
END``), padded like YAMNet's front-end so the firmware sees exactly the patches Python does. The
``CRYB/1`` lines are parsed by the same :class:`~cryblock.blocks.deploy.capture.LogCapture` as
``cryblock monitor``. :func:`compare` sets the firmware's INF scores and detector states beside
the Python INT8 run of the same audio (the DSP block + TensorFlow Lite Micro + the detector twin).
"""
from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cryblock.errors import CryblockError
from cryblock.params import Params

from .capture import LogCapture, LogRecord

#: Samples per replay line (replay.h CRY_REPLAY_MAX_SAMPLES).
REPLAY_SAMPLES = 512


def replay_lines(pcm: np.ndarray, per_line: int = REPLAY_SAMPLES) -> list[str]:
    """The host's replay lines for int16 samples: ``pcm <seq> <base64 int16 LE>`` then ``pcm end``."""
    x = np.asarray(pcm, dtype="<i2")
    lines = [f"pcm {k} {base64.b64encode(x[i:i + per_line].tobytes()).decode('ascii')}"
             for k, i in enumerate(range(0, len(x), per_line))]
    return lines + ["pcm end"]


def audio_pcm(path, params: Params) -> np.ndarray:
    """A recording as the firmware should hear it: mono int16 at the DSP rate, zero-padded like
    YAMNet's ``pad_waveform`` (:func:`cryblock.blocks.dsp.features.padded_length`) so the
    firmware's streaming front-end yields exactly the patches of the Python block."""
    from cryblock.blocks.dsp.features import padded_length
    from cryblock.audio import load_audio

    x = load_audio(path, params.dsp.sample_rate)
    q = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    return np.concatenate([q, np.zeros(padded_length(len(q), params.dsp) - len(q), np.int16)])


@dataclass
class FirmwareRun:
    """What one emulated run printed: the parsed log, the raw lines, wall time."""

    log: LogCapture
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def records(self, kind: str) -> list[LogRecord]:
        return [r for r in self.log.records if r.kind == kind]


def run_firmware(argv: Sequence[str], pcm: np.ndarray, *, boot_timeout: float = 120.0, line_timeout: float = 30.0,
                 cwd: str | None = None, env: dict | None = None) -> FirmwareRun:
    """Start the firmware process, wait for its BOOT record, replay ``pcm`` (stop and wait on RDY),
    end the audio and wait for END; then stop the process.

    Raises:
        CryblockError: the program cannot be started, exits early, never boots, or stops answering
            (the message quotes its last lines).
    """
    exe = shutil.which(argv[0]) or argv[0]
    if os.path.isfile(exe) and not os.access(exe, os.X_OK):
        raise CryblockError(f"{argv[0]}: is not executable (chmod +x, or give the built program)")
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, bufsize=0)
    except OSError as e:
        raise CryblockError(f"cannot start {argv[0]} ({e.strerror or e})") from None
    log = LogCapture()
    run = FirmwareRun(log)
    events: queue.Queue = queue.Queue()
    t0 = time.monotonic()

    def reader():
        buf = b""
        for chunk in iter(lambda: os.read(proc.stdout.fileno(), 65536), b""):
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                raw = raw.rstrip(b"\r")
                run.lines.append(raw.decode("utf-8", errors="replace"))
                rec = log.feed_line(raw, time.monotonic() - t0)
                if rec is not None:
                    events.put(rec)
        events.put(None)  # the process closed its output

    th = threading.Thread(target=reader, daemon=True)
    th.start()

    def wait_for(kind: str, timeout: float, **match) -> LogRecord:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                rec = events.get(timeout=max(0.01, left))
            except queue.Empty:
                rec = "timeout"
            if rec is None or rec == "timeout" or left <= 0:
                tail = "; ".join(run.lines[-5:]) or "no output"
                why = "exited" if rec is None else f"gave no {kind} within {timeout:g} s"
                raise CryblockError(f"{argv[0]}: firmware {why} (last lines: {tail})")
            if rec.kind == "ERR" and rec.fields.get("code") == "replay":
                raise CryblockError(f"{argv[0]}: firmware rejected a replay line ({rec.fields.get('msg')})")
            if rec.kind == kind and all(rec.fields.get(k) == str(v) for k, v in match.items()):
                return rec

    try:
        wait_for("BOOT", boot_timeout)
        for k, line in enumerate(replay_lines(pcm)):
            proc.stdin.write(line.encode("ascii") + b"\n")
            proc.stdin.flush()
            if line == "pcm end":
                wait_for("END", line_timeout + 0.1 * len(pcm) / 16000.0)
            else:
                wait_for("RDY", line_timeout, seq=k)
    except (BrokenPipeError, OSError) as e:
        raise CryblockError(f"{argv[0]}: lost the firmware's console ({e})") from None
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        th.join(timeout=5)
        run.seconds = time.monotonic() - t0
    return run


def project_model(project: Path) -> tuple[bytes, Params]:
    """The INT8 model (from ``main/model_data.cc``) and parameters (``params.json``) of a generated
    project, checked against each other. Raises CryblockError naming a missing, damaged or
    mismatching file."""
    from .model import check_model_for_params, check_tflite_bytes, inspect_model, parse_c_array

    src = Path(project) / "main" / "model_data.cc"
    if not src.is_file():
        raise CryblockError(f"{src}: not found (is {project} a cryblock project?)")
    try:
        model = parse_c_array(src.read_text(errors="replace"))
    except CryblockError as e:
        raise CryblockError(f"{src}: {e}") from None
    check_tflite_bytes(model, src)
    params = Params.load(Path(project) / "params.json")
    check_model_for_params(inspect_model(model, str(src)), params, str(src))
    return model, params


def linux_binary(project: Path) -> Path:
    """``build/<project name>.elf`` of a linux-target build. Raises CryblockError when absent."""
    from .project import MARKER

    name = "cry_detector"
    marker = Path(project) / MARKER
    if marker.is_file():
        try:
            name = str(json.loads(marker.read_text()).get("options", {}).get("project_name", name))
        except (OSError, ValueError, AttributeError):
            raise CryblockError(f"{marker}: damaged project marker (not the JSON object cryblock build writes); "
                                "regenerate the project with cryblock build") from None
    exe = Path(project) / "build" / f"{name}.elf"
    if not exe.is_file():
        raise CryblockError(f"{exe}: not found; build the project for the linux target first "
                            "(cryblock build --target linux, or idf.py --preview build there)")
    return exe


def qemu_command(qemu: str, project: Path, work: Path) -> list[str]:
    """Merge the project's ESP32-S3 build into one flash image (esptool ``merge_bin``, padded to the
    flash size) in ``work`` and return the QEMU command line that boots it with the console UART on
    stdio (Espressif's QEMU, machine ``esp32s3``).

    Raises:
        CryblockError: the build folder or flasher_args.json is missing or not for the ESP32-S3.
    """
    from .flash import find_build_dir, load_flasher_args

    plan = load_flasher_args(find_build_dir(project=project))
    image = work / "flash.bin"
    size = plan.flash_size if plan.flash_size not in ("keep", "detect") else "4MB"
    from esptool.cmds import merge_bin

    merge_bin(plan.addr_data, chip="esp32s3", output=str(image), flash_size=size, format="raw",
              pad_to_size=size)
    return [qemu, "-nographic", "-machine", "esp32s3", "-drive", f"file={image},if=mtd,format=raw",
            "-serial", "stdio", "-monitor", "none"]


@dataclass
class Comparison:
    """Firmware vs Python on one recording."""

    audio: str
    patches_python: int
    patches_firmware: int
    max_steps: float  #: max |Δq|: the raw int8 model outputs, in quantisation steps
    exact: float  #: fraction of patches with the identical int8 output
    max_abs_diff: float  #: max |Δscore| (scores as printed, 4 decimals)
    decision_agreement: float  #: fraction of patches with the same detector state
    events_python: list[tuple[int, str]]
    events_firmware: list[tuple[int, str]]
    firmware_seconds: float

    @property
    def ok(self) -> bool:
        """Within one output step everywhere and identical decisions (the target)."""
        return (self.patches_python == self.patches_firmware and self.max_steps <= 1
                and self.decision_agreement == 1.0 and self.events_python == self.events_firmware)


def python_reference(pcm: np.ndarray, model: bytes, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Python INT8 run of the same samples: the DSP block on ``pcm``/32768 (the padding is already
    in ``pcm``), TensorFlow Lite Micro, the detector twin. Returns (raw int8 output of the
    positive unit, scores, detector states), one per patch."""
    from cryblock.blocks.dsp.features import frames_to_patches, log_mel_spectrogram
    from cryblock.blocks.learn.evaluate import TflmRunner
    from cryblock.detector import run_detector

    from .model import inspect_model, positive_output_index

    x = pcm.astype(np.float32) / 32768.0
    patches = frames_to_patches(log_mel_spectrogram(x, params.dsp), params.dsp)
    runner = TflmRunner(model)
    q = runner.predict_raw(patches)
    pos = positive_output_index(inspect_model(model), params)
    s = runner.scores(q)[:, pos]
    det = run_detector(s, params.detector, hop_ms=int(round(params.dsp.patch_hop_seconds * 1000)))
    return q[:, pos].astype(np.int64), s, det.det


def compare(audio: str, pcm: np.ndarray, model: bytes, params: Params, run: FirmwareRun) -> Comparison:
    """Line the firmware's INF records (by ``seq``) up with :func:`python_reference`: raw int8
    outputs, printed scores, detector states and events."""
    q_py, s_py, det_py = python_reference(pcm, model, params)
    infs = [r for r in run.records("INF") if r.num("seq") is not None]
    n = min(len(s_py), len(infs))
    q_fw = np.array([r.num("q") if r.num("q") is not None else np.nan for r in infs[:n]], dtype=np.float64)
    s_fw = np.array([r.num("score") for r in infs[:n]], dtype=np.float64)
    det_fw = np.array([int(r.num("det") or 0) for r in infs[:n]])
    dq = np.abs(q_fw - q_py[:n]) if n else np.zeros(0)

    def events(states):
        st = np.asarray(states, dtype=int)
        return [(int(i), "ON" if st[i] else "OFF") for i in np.flatnonzero(np.diff(np.r_[0, st]) != 0)]

    nan = float("nan")
    return Comparison(audio, int(len(s_py)), int(len(infs)), float(np.nanmax(dq)) if n else nan,
                      float(np.mean(dq == 0)) if n else nan,
                      float(np.abs(s_fw - s_py[:n]).max()) if n else nan,
                      float(np.mean(det_fw == det_py[:n])) if n else nan,
                      events(det_py[:n]), events(det_fw), run.seconds)


def emulate(project, audio: Sequence, *, binary: str | None = None, qemu: str | None = None,
            boot_timeout: float = 120.0) -> list[Comparison]:
    """Run the project's firmware on each recording and compare it with Python.

    Args:
        project: generated project folder (its params.json and main/model_data.cc are the truth).
        audio: recordings (any format :func:`cryblock.audio.load_audio` reads).
        binary: program to run instead of ``build/<name>.elf`` (linux target).
        qemu: path of Espressif's ``qemu-system-xtensa``: boot the ESP32-S3 build instead.

    Raises:
        CryblockError: missing project files or build, unreadable audio, firmware that does not
            boot or answer.
    """
    project = Path(project)
    model, params = project_model(project)
    pcms = [(str(a), audio_pcm(a, params)) for a in audio]  # fail on bad audio before starting anything
    out = []
    with tempfile.TemporaryDirectory(prefix="cryblock-emulate-") as td:
        if qemu:
            if shutil.which(qemu) is None and not os.access(qemu, os.X_OK):
                raise CryblockError(f"{qemu}: QEMU not found")
            argv = qemu_command(qemu, project, Path(td))
        else:
            argv = [binary or str(linux_binary(project))]
        for name, pcm in pcms:
            run = run_firmware(argv, pcm, boot_timeout=boot_timeout)
            out.append(compare(name, pcm, model, params, run))
    return out


def format_comparison(c: Comparison) -> str:
    """One block of text per recording for the terminal."""
    verdict = "OK (within one output step, identical decisions)" if c.ok else "DIFFERS"
    return (f"{c.audio}: {c.patches_firmware} patches from the firmware, {c.patches_python} from Python; "
            f"int8 outputs identical on {c.exact:.1%}, max |Δq| {c.max_steps:.0f} step(s), max |Δscore| "
            f"{c.max_abs_diff:.4f}; detector states agree on {c.decision_agreement:.1%}; events firmware "
            f"{c.events_firmware} vs Python {c.events_python}; firmware ran {c.firmware_seconds:.1f} s — {verdict}")
