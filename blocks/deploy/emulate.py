"""``cryblock emulate``: run the generated firmware on known audio and compare it with Python.

The firmware runs where its console can be driven line by line:

* the **linux-target** build of the project (``build/<name>.elf``, ESP-IDF's host target), or any
  program that speaks the protocol (``binary``), with the console on its stdin/stdout;
* the **ESP32-S3 image in Espressif's QEMU** (:func:`qemu_command`), built by default with
  esp-nn's reference kernels (``CONFIG_NN_ANSI_C``, :func:`qemu_build`): Espressif's QEMU
  mis-emulates SIMD instructions the optimised kernels use (espressif/qemu #161, #164, #165, #166);
* a **board** running an ``--audio replay`` build, on its serial console (``port``): the
  bit-exactness check of the real chip, optimised kernels included.

The audio goes in over the console with the replay protocol of ``replay.h`` (``pcm <seq>
<base64>`` lines, one in flight, each acknowledged by ``CRYB/1 RDY``; ``pcm end`` → ``CRYB/1
END``), padded like YAMNet's front-end so the firmware sees exactly the patches Python does. The
``CRYB/1`` lines are parsed by the same :class:`~cryblock.blocks.deploy.capture.LogCapture` as
``cryblock monitor``. :func:`compare` sets the firmware's INF scores and detector states beside
the Python INT8 run of the same audio (:func:`python_reference`: the DSP block + TensorFlow Lite
Micro + the detector twin).

Recordings of any length are streamed: audio is decoded and replayed block by block, and only
one int8 output, score and detector state per patch is kept from each side (≈ 10 bytes per
0.48 s), so memory does not grow with the recording (``bench/long_audio.py`` prints the peak).
"""
from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from cryblock.errors import CryblockError, one_line
from cryblock.escape import printable
from cryblock.params import Params

from .capture import LineSplitter, LogCapture, LogRecord

#: Samples per replay line (replay.h CRY_REPLAY_MAX_SAMPLES).
REPLAY_SAMPLES = 512
#: Firmware output kept for error messages: the last lines, each cut to this many characters.
TAIL_LINES, TAIL_CHARS = 5, 160
#: Longest firmware output line read as one line (the log's longest record is < 300 bytes).
MAX_LINE = 4096
#: esp-nn kernels for QEMU: the reference C kernels (default) or the optimised S3 assembly.
KERNELS = ("ansi", "optimized")
#: The ESP-IDF configuration file ``cryblock build`` writes for the reference-kernel QEMU build.
ANSI_C_DEFAULTS = "sdkconfig.nn-ansi-c"
#: Espressif QEMU issues that make it no reference for esp-nn's optimised S3 kernels.
QEMU_SIMD_CAVEAT = ("Espressif's QEMU mis-emulates SIMD instructions esp-nn's optimised S3 kernels use "
                    "(espressif/qemu #161, #164, #165, #166): a difference here may be QEMU's, not the "
                    "firmware's; check on a board (cryblock emulate --port)")


def replay_lines(pcm: np.ndarray, per_line: int = REPLAY_SAMPLES) -> list[str]:
    """The host's replay lines for int16 samples: ``pcm <seq> <base64 int16 LE>`` then ``pcm end``."""
    return [line for line, _ in _replay_stream([np.asarray(pcm)], per_line)]


def _replay_stream(blocks: Iterable[np.ndarray], per_line: int = REPLAY_SAMPLES) -> Iterator[tuple[str, int]]:
    """(replay line, samples sent so far) for int16 blocks of any sizes: ``per_line`` samples per
    line (the last line fewer), then ``pcm end`` — the lines of the blocks joined."""
    carry = np.zeros(0, "<i2")
    seq = sent = 0
    for b in blocks:
        x = np.concatenate([carry, np.asarray(b, dtype="<i2")])
        full = len(x) - len(x) % per_line
        for i in range(0, full, per_line):
            sent += per_line
            yield f"pcm {seq} {base64.b64encode(x[i:i + per_line].tobytes()).decode('ascii')}", sent
            seq += 1
        carry = x[full:]
    if len(carry):
        sent += len(carry)
        yield f"pcm {seq} {base64.b64encode(carry.tobytes()).decode('ascii')}", sent
    yield "pcm end", sent


def _int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def pcm_blocks(path, params: Params) -> Iterator[np.ndarray]:
    """A recording as the firmware should hear it, streamed: mono int16 blocks at the DSP rate
    (:func:`cryblock.audio.audio_blocks`), then the zeros of YAMNet's ``pad_waveform``
    (:func:`cryblock.blocks.dsp.features.padded_length`), so the firmware's streaming front-end
    yields exactly the patches of the Python block. Raises AudioError naming the file."""
    from cryblock.blocks.dsp.features import padded_length
    from cryblock.audio import audio_blocks

    n = 0
    for x in audio_blocks(path, params.dsp.sample_rate):
        n += len(x)
        yield _int16(x)
    yield np.zeros(padded_length(n, params.dsp) - n, np.int16)


def audio_pcm(path, params: Params) -> np.ndarray:
    """:func:`pcm_blocks` joined (int16 ``[n]``, padded): for short clips and tests."""
    return np.concatenate(list(pcm_blocks(path, params)))


@dataclass
class FirmwareRun:
    """What one emulated run printed: per-INF values (``q`` raw int8 output, printed ``score``,
    detector state ``det``, in arrival order), the log counters (records too unless it was run
    with ``keep_records=False``), the last lines printed (terminal-safe) and the wall time."""

    log: LogCapture
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    seconds: float = 0.0
    q: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    det: list[int] = field(default_factory=list)

    def take(self, rec: LogRecord) -> None:
        """Keep the values of an INF record (others are only counted by the log)."""
        if rec.kind == "INF" and rec.num("seq") is not None:
            q, s = rec.num("q"), rec.num("score")
            self.q.append(np.nan if q is None else q)
            self.score.append(np.nan if s is None else s)
            self.det.append(int(rec.num("det") or 0))

    def records(self, kind: str) -> list[LogRecord]:
        return [r for r in self.log.records if r.kind == kind]


def _program(path: str, what: str) -> str:
    """``path`` (or the program of that name on PATH) when it is an executable regular file.
    Raises CryblockError saying what it is otherwise (missing, a FIFO, a device, a folder, …)."""
    exe = shutil.which(path) if os.sep not in path else path
    try:
        st = os.stat(exe) if exe else None
    except OSError:
        st = None
    if st is None:
        raise CryblockError(f"{path}: {what} not found")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise CryblockError(f"{path}: is {kind}, not a program ({what})")
    if not os.access(exe, os.X_OK):
        raise CryblockError(f"{path}: is not executable (chmod +x, or give the built program)")
    return exe


class _Process:
    """The firmware as a program: its console is its stdin/stdout."""

    def __init__(self, argv: Sequence[str], cwd: str | None = None, env: dict | None = None) -> None:
        self.name = printable(str(argv[0]))[:120]
        exe = _program(str(argv[0]), "firmware program")
        try:
            self.proc = subprocess.Popen([exe, *argv[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, cwd=cwd, env=env, bufsize=0)
        except OSError as e:
            raise CryblockError(f"cannot start {self.name} ({e.strerror or e})") from None

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self) -> bytes:
        """Output bytes; b"" when the program closed it."""
        return os.read(self.proc.stdout.fileno(), 65536)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Board:
    """A board running an ``--audio replay`` build, on its serial console: opened without a reset
    (:func:`~cryblock.blocks.deploy.capture.open_serial`), then reset through RTS so the run starts
    from a fresh boot (the front-end and detector keep state across recordings otherwise)."""

    def __init__(self, port: str, baud: int) -> None:
        from .capture import open_serial, reset_board

        self.name = printable(str(port))[:120]
        self.ser = open_serial(port, baud, timeout=0.05)
        self.note = reset_board(self.ser)

    def write(self, data: bytes) -> None:
        self.ser.write(data)
        self.ser.flush()

    def read(self) -> bytes | None:
        """Bytes read; None when nothing arrived yet; b"" when the port went away."""
        import serial

        try:
            return self.ser.read(max(1, min(self.ser.in_waiting, 65536))) or None
        except (serial.SerialException, OSError):
            return b""

    def close(self) -> None:
        try:
            self.ser.close()
        except Exception:  # noqa: BLE001 - a vanished port may fail to close
            pass


def run_firmware(argv: Sequence[str] | None, pcm: np.ndarray | Iterable[np.ndarray], *, boot_timeout: float = 120.0,
                 line_timeout: float = 30.0, cwd: str | None = None, env: dict | None = None,
                 port: str | None = None, baud: int = 115200, keep_records: bool = True,
                 on_record: Callable[[LogRecord], None] | None = None) -> FirmwareRun:
    """Start the firmware (the program ``argv``, or the board on ``port``), wait for its BOOT
    record, replay ``pcm`` (an int16 array, or int16 blocks streamed one replay line at a time:
    stop and wait on RDY), end the audio and wait for END; then stop the program / close the port.

    Every record reaches ``on_record`` and :meth:`FirmwareRun.take`; the log keeps the records
    themselves only when ``keep_records``. The output is read in bounded lines
    (:data:`MAX_LINE`), and only the last :data:`TAIL_LINES` are kept for messages.

    Raises:
        CryblockError: the program or port cannot be started, the firmware exits early, never
            boots, stops answering or rejects a replay line (the message quotes its last lines,
            terminal-safe).
    """
    console = _Board(port, baud) if port else _Process(argv, cwd, env)
    blocks = [pcm] if isinstance(pcm, np.ndarray) else pcm
    log = LogCapture(keep_records=keep_records)
    run = FirmwareRun(log)
    events: queue.Queue = queue.Queue(maxsize=4096)  # full: the reader waits, the firmware's output blocks
    t0 = time.monotonic()
    stop = threading.Event()

    def reader():
        splitter = LineSplitter(MAX_LINE)
        try:
            while not stop.is_set():
                chunk = console.read()
                if chunk is None:
                    continue
                if not chunk:
                    break
                for raw in splitter.feed(chunk):
                    run.tail.append(printable(raw)[:TAIL_CHARS])
                    rec = log.feed_line(raw, time.monotonic() - t0)
                    while rec is not None and not stop.is_set():
                        try:
                            events.put(rec, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except OSError:
            pass
        events.put(None)  # the firmware closed its output

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
                tail = "; ".join(run.tail) or "no output"
                why = "exited" if rec is None else f"gave no {kind} within {timeout:g} s"
                note = f"; {console.note}" if kind == "BOOT" and getattr(console, "note", None) else ""
                raise CryblockError(f"{console.name}: firmware {why} (last lines: {tail}){note}")
            run.take(rec)
            if on_record is not None:
                on_record(rec)
            if rec.kind == "ERR" and rec.fields.get("code") == "replay":
                raise CryblockError(f"{console.name}: firmware rejected a replay line "
                                    f"({printable(rec.fields.get('msg', '?'))[:TAIL_CHARS]})")
            if rec.kind == kind and all(rec.fields.get(k) == str(v) for k, v in match.items()):
                return rec

    try:
        wait_for("BOOT", boot_timeout)
        for k, (line, sent) in enumerate(_replay_stream(blocks)):
            console.write(line.encode("ascii") + b"\n")
            if line == "pcm end":
                wait_for("END", line_timeout + 0.1 * sent / 16000.0)
            else:
                wait_for("RDY", line_timeout, seq=k)
    except OSError as e:
        raise CryblockError(f"{console.name}: lost the firmware's console ({one_line(e)})") from None
    finally:
        stop.set()
        if port:  # the reader polls the port every 50 ms: let it finish before the port closes under it
            th.join(timeout=2)  # (pyserial read on a port closed meanwhile: a TypeError in the thread)
        console.close()
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


def project_options(project: Path) -> dict:
    """The build options recorded in the project's marker (``{}`` for a project without one).
    Raises CryblockError for a marker that is not cryblock's JSON object or whose project name is
    not the C identifier ``cryblock build`` writes (it names the program that is run)."""
    from .project import MARKER

    marker = Path(project) / MARKER
    if not marker.is_file():
        return {}
    try:
        opts = json.loads(marker.read_text()).get("options", {})
        if not isinstance(opts, dict):
            raise ValueError
    except (OSError, ValueError, AttributeError):
        raise CryblockError(f"{marker}: damaged project marker (not the JSON object cryblock build writes); "
                            "regenerate the project with cryblock build") from None
    name = opts.get("project_name", "cry_detector")
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", name)):
        raise CryblockError(f"{marker}: damaged project marker (project name {json.dumps(name)[:40]} is not a C "
                            "identifier); regenerate the project with cryblock build")
    return opts


def linux_binary(project: Path) -> Path:
    """``build/<project name>.elf`` of a linux-target build. Raises CryblockError when absent."""
    name = project_options(project).get("project_name", "cry_detector")
    exe = Path(project) / "build" / f"{name}.elf"
    if not exe.is_file():
        raise CryblockError(f"{exe}: not found; build the project for the linux target first "
                            "(cryblock build --target linux, or idf.py --preview build there)")
    return exe


def qemu_build(project: Path, kernels: str = "ansi") -> Path:
    """The ESP32-S3 build QEMU boots: for ``kernels="optimized"`` the project's ``build/`` as it
    is; for ``"ansi"`` (default) ``build-nn-ansi-c/``, built here with ``idf.py`` from the project's
    defaults plus :data:`ANSI_C_DEFAULTS` (``CONFIG_NN_ANSI_C=y``: esp-nn's reference kernels) and
    its own ``sdkconfig`` — the project's ``build/`` and ``sdkconfig`` are left as they are.

    Raises:
        CryblockError: the project is not an ESP32-S3 ``--audio replay`` build, lacks
            :data:`ANSI_C_DEFAULTS` (made by an older cryblock), ESP-IDF is missing or the build fails.
    """
    from .flash import find_build_dir
    from .idf import run_idf_build

    opts = project_options(project)
    if opts and (opts.get("target") != "esp32s3" or opts.get("audio") not in ("replay",)):
        raise CryblockError(f"{project}: QEMU runs the ESP32-S3 image with audio replayed over the console; "
                            "generate it with cryblock build --target esp32s3 --audio replay")
    if kernels == "optimized":
        return find_build_dir(project=project)
    if kernels != "ansi":
        raise CryblockError(f"--kernels: must be one of {KERNELS}, got {kernels!r}")
    if not (Path(project) / ANSI_C_DEFAULTS).is_file():
        raise CryblockError(f"{Path(project) / ANSI_C_DEFAULTS}: not found; regenerate the project with this "
                            "cryblock build (or pass --kernels optimized to boot build/ as it is)")
    folder = "build-nn-ansi-c"
    run_idf_build(project, "esp32s3", ["-B", folder, "-D", f"SDKCONFIG={folder}/sdkconfig",
                                       "-D", f"SDKCONFIG_DEFAULTS=sdkconfig.defaults;{ANSI_C_DEFAULTS}"])
    return find_build_dir(build_dir=Path(project) / folder)


def qemu_command(qemu: str, build: Path, work: Path) -> list[str]:
    """Merge the ESP32-S3 ``build`` folder's flash regions into one image (esptool ``merge_bin``,
    padded to the flash size) in ``work`` and return the QEMU command line that boots it with the
    console UART on stdio (Espressif's QEMU, machine ``esp32s3``).

    Raises:
        CryblockError: flasher_args.json is missing or not for the ESP32-S3.
    """
    from .flash import load_flasher_args

    plan = load_flasher_args(build)
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


@dataclass
class Reference:
    """The Python INT8 run of one recording, one value per patch: raw int8 output of the positive
    unit ``q`` (int64), ``score`` (float32), detector state ``det`` (int8)."""

    q: np.ndarray
    score: np.ndarray
    det: np.ndarray


def python_reference(pcm: np.ndarray | Iterable[np.ndarray], model: bytes, params: Params) -> Reference:
    """Python INT8 run of the samples the firmware hears (an int16 array or int16 blocks, padding
    included, as :func:`pcm_blocks` yields them): the streaming DSP block on ``pcm``/32768,
    TensorFlow Lite Micro, the detector twin — block by block, in flat memory."""
    from cryblock.blocks.dsp.features import stream_patches
    from cryblock.blocks.learn.evaluate import TflmRunner
    from cryblock.detector import Detector

    from .model import inspect_model, positive_output_index

    blocks = [pcm] if isinstance(pcm, np.ndarray) else pcm
    runner = TflmRunner(model)
    pos = positive_output_index(inspect_model(model), params)
    detector = Detector(params.detector)
    hop_ms = int(round(params.dsp.patch_hop_seconds * 1000))
    qs, ss, ds = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)], [np.zeros(0, np.int8)]
    n = 0
    for patches in stream_patches((np.asarray(b, np.float32) / 32768.0 for b in blocks), params.dsp):
        q = runner.predict_raw(patches)
        s = runner.scores(q)[:, pos]
        qs.append(q[:, pos].astype(np.int64))
        ss.append(s.astype(np.float32))
        ds.append(np.array([detector.update(float(v), (n + i) * hop_ms).det for i, v in enumerate(s)], np.int8))
        n += len(s)
    return Reference(np.concatenate(qs), np.concatenate(ss), np.concatenate(ds))


def _events(states) -> list[tuple[int, str]]:
    st = np.asarray(states, dtype=int)
    return [(int(i), "ON" if st[i] else "OFF") for i in np.flatnonzero(np.diff(np.r_[0, st]) != 0)]


def compare(audio: str, ref: Reference, run: FirmwareRun) -> Comparison:
    """Line the firmware's INF values (in ``seq`` order) up with the Python reference: raw int8
    outputs, printed scores, detector states and events."""
    n_fw = len(run.score)
    n = min(len(ref.score), n_fw)
    q_fw = np.asarray(run.q[:n], dtype=np.float64)
    s_fw = np.asarray(run.score[:n], dtype=np.float64)
    det_fw = np.asarray(run.det, dtype=np.int8)
    dq = np.abs(q_fw - ref.q[:n]) if n else np.zeros(0)
    nan = float("nan")
    return Comparison(audio, int(len(ref.score)), n_fw, float(np.nanmax(dq)) if n else nan,
                      float(np.mean(dq == 0)) if n else nan,
                      float(np.abs(s_fw - ref.score[:n]).max()) if n else nan,
                      float(np.mean(det_fw[:n] == ref.det[:n])) if n else nan,
                      _events(ref.det[:n]), _events(det_fw[:n]), run.seconds)


def emulate(project, audio: Sequence, *, binary: str | None = None, qemu: str | None = None,
            kernels: str = "ansi", port: str | None = None, baud: int = 115200,
            boot_timeout: float = 120.0) -> list[Comparison]:
    """Run the project's firmware on each recording and compare it with Python.

    Args:
        project: generated project folder (its params.json and main/model_data.cc are the truth).
        audio: recordings (any format :func:`cryblock.audio.audio_blocks` reads), streamed.
        binary: program to run instead of ``build/<name>.elf`` (linux target).
        qemu: path of Espressif's ``qemu-system-xtensa``: boot the ESP32-S3 image of
            :func:`qemu_build` (``kernels``: "ansi", the default, or "optimized").
        port: serial port of a board running the project's ``--audio replay`` build (reset before
            each recording through RTS, as ``cryblock monitor --reset``).
        baud: the board's console speed.

    Raises:
        CryblockError: missing project files or build, unreadable audio, firmware that does not
            boot or answer.
    """
    from cryblock.audio import audio_blocks

    project = Path(project)
    model, params = project_model(project)
    for a in audio:  # a missing or undecodable recording fails before anything starts
        blocks = audio_blocks(a, params.dsp.sample_rate)
        next(blocks)
        blocks.close()
    out = []
    with tempfile.TemporaryDirectory(prefix="cryblock-emulate-") as td:
        argv = None
        if qemu:
            qemu = _program(qemu, "QEMU")
            argv = qemu_command(qemu, qemu_build(project, kernels), Path(td))
        elif not port:
            argv = [binary or str(linux_binary(project))]
        for name in audio:
            ref = python_reference(pcm_blocks(name, params), model, params)
            run = run_firmware(argv, pcm_blocks(name, params), boot_timeout=boot_timeout, port=port, baud=baud,
                               keep_records=False)
            out.append(compare(str(name), ref, run))
    return out


def format_comparison(c: Comparison) -> str:
    """One block of text per recording for the terminal (terminal-safe)."""
    verdict = "OK (within one output step, identical decisions)" if c.ok else "DIFFERS"
    return printable(f"{c.audio}: {c.patches_firmware} patches from the firmware, {c.patches_python} from Python; "
                     f"int8 outputs identical on {c.exact:.1%}, max |Δq| {c.max_steps:.0f} step(s), max |Δscore| "
                     f"{c.max_abs_diff:.4f}; detector states agree on {c.decision_agreement:.1%}; events firmware "
                     f"{c.events_firmware} vs Python {c.events_python}; firmware ran {c.firmware_seconds:.1f} s — "
                     f"{verdict}")
