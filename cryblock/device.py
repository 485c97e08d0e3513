"""Device side: flash an ESP-IDF build, capture/summarise the ``CRYB/1`` serial log, configure.

Three jobs, one module:

* **Flash** — :func:`load_flasher_args` reads ``build/flasher_args.json`` (written by ESP-IDF from
  ``components/esptool_py/flasher_args.json.in``: ``flash_files`` offset→file map,
  ``flash_settings``, ``extra_esptool_args``) into a :class:`FlashPlan`; :func:`flash` writes it
  with the esptool v5 Python API (``detect_chip`` → chip check → ``run_stub`` → ``attach_flash`` →
  ``write_flash`` (MD5 check of every region built in) → ``verify_flash`` → ``reset_chip``).
* **Capture** — :func:`capture` reads the serial port with pyserial (opened with RTS/DTR low so
  opening does not reset the board), splits the byte stream into lines, parses them with
  :func:`cryblock.logformat.parse_line` and accumulates a :class:`LogCapture`, whose
  :meth:`LogCapture.summary` gives latency percentiles, arena, inference rate, detections per
  hour, garbage/corrupt line counts and resets. Garbage, partial lines, non-UTF-8 bytes, device
  resets and a port that disappears are all tolerated: the capture ends and what was read is
  summarised.
* **Configure** — :func:`configure` sends the firmware's text commands (``set threshold <float>``,
  ``set vote <N> <M>``, ``set hold <ms>``, ``get config``; one per line) and checks the
  ``CRYB/1 CFG threshold=.. vote=N/M hold_ms=..`` answer.

Every user mistake (missing build dir/file, wrong chip, bad port, no device) raises
:class:`~cryblock.errors.CryblockError` with one line naming the file or port.
"""
from __future__ import annotations

import csv
import io as _io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import CryblockError, ParameterError
from .io import atomic_write_text
from .logformat import KINDS, MAGIC, Record, parse_line

#: esptool's name for the only chip cryblock flashes (``esptool.targets.ESP32S3ROM.CHIP_NAME``).
TARGET_CHIP_NAME = "ESP32-S3"
#: ESP-IDF target name of that chip (``flasher_args.json`` ``extra_esptool_args.chip``).
TARGET_IDF_NAME = "esp32s3"
#: First byte of every ESP application/bootloader image (``esp_image_header_t.magic``, ESP-IDF
#: ``components/bootloader_support/include/esp_app_format.h``: ``ESP_IMAGE_HEADER_MAGIC``).
ESP_IMAGE_MAGIC = 0xE9
#: Byte offset of the little-endian uint16 ``chip_id`` in ``esp_image_header_t`` (same header).
_IMAGE_CHIP_ID_OFFSET = 12
#: Default serial speeds: the firmware console (ESP-IDF ``CONFIG_ESP_CONSOLE_UART_BAUDRATE``
#: default) and the flashing speed after the stub is loaded (``idf.py flash`` default).
CONSOLE_BAUD = 115200
FLASH_BAUD = 460800
#: Baud esptool uses to talk to the ROM bootloader before ``change_baud``.
_ROM_BAUD = 115200


def _one_line(exc: BaseException) -> str:
    """An exception message squeezed onto one line (esptool's FatalErrors span several)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Hint:", "For troubleshooting"))]
    return " ".join(lines) or type(exc).__name__


# ----------------------------------------------------------------------------------- flashing


@dataclass(frozen=True)
class FlashPlan:
    """What to write where, read from an ESP-IDF ``build/flasher_args.json``.

    Attributes:
        build_dir: the build folder the file paths are relative to.
        files: ``((offset, path), ...)`` sorted by flash offset in bytes; paths are absolute.
        flash_mode, flash_size, flash_freq: ``flash_settings`` (e.g. ``dio``, ``4MB``, ``80m``);
            written into the bootloader header by esptool.
        before, after: esptool reset modes in v5 spelling (``default-reset``, ``hard-reset``),
            from ``extra_esptool_args`` (ESP-IDF writes ``default_reset``/``hard_reset``).
        stub: whether to upload the flasher stub (``extra_esptool_args.stub``, default True).
        chip: ESP-IDF target named in the file (``esp32s3``), or ``None`` if absent.
    """

    build_dir: Path
    files: tuple[tuple[int, Path], ...]
    flash_mode: str = "keep"
    flash_size: str = "keep"
    flash_freq: str = "keep"
    before: str = "default-reset"
    after: str = "hard-reset"
    stub: bool = True
    chip: str | None = None

    @property
    def addr_data(self) -> list[tuple[int, str]]:
        """``[(offset, path_str), ...]`` as esptool's ``write_flash``/``verify_flash`` take it."""
        return [(off, str(p)) for off, p in self.files]


def find_build_dir(project: str | Path | None = None, build_dir: str | Path | None = None) -> Path:
    """Resolve the build folder: ``build_dir`` if given, else ``<project>/build``.

    Raises:
        CryblockError: neither given, both given, or the folder does not exist.
    """
    if build_dir is not None and project is not None:
        raise CryblockError("give either --project or --build-dir, not both")
    if build_dir is None:
        if project is None:
            raise CryblockError("give --project DIR (ESP-IDF project) or --build-dir DIR (its build folder)")
        proj = Path(project)
        if not proj.is_dir():
            raise CryblockError(f"{proj}: project folder not found")
        build_dir = proj / "build"
        if not build_dir.is_dir():
            raise CryblockError(f"{build_dir}: build folder not found (run `idf.py build` in {proj} first)")
    bd = Path(build_dir)
    if not bd.is_dir():
        raise CryblockError(f"{bd}: build folder not found")
    return bd


def _parse_offset(text: object, where: str) -> int:
    try:
        off = int(str(text), 0)
    except ValueError:
        raise CryblockError(f"{where}: flash offset {text!r} is not a number") from None
    if off < 0:
        raise CryblockError(f"{where}: negative flash offset {text!r}")
    return off


def _check_image(path: Path, label: str) -> None:
    """Refuse an app/bootloader image that is not an ESP image or not built for ESP32-S3."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16 or head[0] != ESP_IMAGE_MAGIC:
        first = f"0x{head[0]:02X}" if head else "nothing (empty file)"
        raise CryblockError(f"{path}: {label} is not an ESP image (first byte {first}, expected 0xE9)")
    chip_id = int.from_bytes(head[_IMAGE_CHIP_ID_OFFSET:_IMAGE_CHIP_ID_OFFSET + 2], "little")
    from esptool.targets import CHIP_DEFS, ESP32S3ROM

    if chip_id != ESP32S3ROM.IMAGE_CHIP_ID:
        names = {c.IMAGE_CHIP_ID: c.CHIP_NAME for c in CHIP_DEFS.values() if c.IMAGE_CHIP_ID is not None}
        raise CryblockError(
            f"{path}: {label} image is built for {names.get(chip_id, f'chip id {chip_id}')}, "
            f"not {TARGET_CHIP_NAME} (run `idf.py set-target {TARGET_IDF_NAME}` and rebuild)")


def load_flasher_args(build_dir: str | Path) -> FlashPlan:
    """Read ``<build_dir>/flasher_args.json`` into a :class:`FlashPlan` and check it.

    Checks: the JSON parses; ``flash_files`` is a non-empty ``{"0x…": "relative/path"}`` map; every
    file exists and is non-empty; regions do not overlap; the target (``extra_esptool_args.chip``,
    and the ``chip_id`` in the headers of the ``bootloader``/``app`` images) is ESP32-S3.

    Raises:
        CryblockError: naming the file and the problem.
    """
    bd = Path(build_dir)
    fa = bd / "flasher_args.json"
    if not bd.is_dir():
        raise CryblockError(f"{bd}: build folder not found")
    if not fa.is_file():
        raise CryblockError(f"{fa}: not found (is {bd} an ESP-IDF build folder? run `idf.py build`)")
    try:
        doc = json.loads(fa.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CryblockError(f"{fa}: cannot read JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CryblockError(f"{fa}: expected a JSON object")
    ff = doc.get("flash_files")
    if not isinstance(ff, dict) or not ff:
        raise CryblockError(f"{fa}: no 'flash_files' map (offset -> file)")
    files: list[tuple[int, Path]] = []
    for off_text, rel in ff.items():
        off = _parse_offset(off_text, f"{fa} flash_files")
        if not isinstance(rel, str) or not rel:
            raise CryblockError(f"{fa}: flash_files[{off_text!r}] is not a file path")
        p = (bd / rel).resolve()
        if not p.is_file():
            raise CryblockError(f"{bd / rel}: listed in {fa.name} at {off_text} but not found")
        if p.stat().st_size == 0:
            raise CryblockError(f"{bd / rel}: listed in {fa.name} at {off_text} but empty")
        files.append((off, p))
    files.sort()
    for (o1, p1), (o2, p2) in zip(files, files[1:]):
        if o1 + p1.stat().st_size > o2:
            raise CryblockError(f"{fa}: {p1.name} at 0x{o1:x} ({p1.stat().st_size} bytes) overlaps "
                                f"{p2.name} at 0x{o2:x}")

    settings = doc.get("flash_settings") or {}
    if not isinstance(settings, dict):
        raise CryblockError(f"{fa}: 'flash_settings' is not an object")
    extra = doc.get("extra_esptool_args") or {}
    if not isinstance(extra, dict):
        raise CryblockError(f"{fa}: 'extra_esptool_args' is not an object")
    chip = extra.get("chip")
    if chip is not None and str(chip).lower() != TARGET_IDF_NAME:
        raise CryblockError(f"{fa}: build targets {chip}, cryblock flashes {TARGET_IDF_NAME} only "
                            f"(run `idf.py set-target {TARGET_IDF_NAME}`)")
    stub = extra.get("stub", True)
    if isinstance(stub, str):
        stub = stub.lower() not in ("false", "0", "no")

    for label, ent in doc.items():
        if isinstance(ent, dict) and str(ent.get("encrypted", "false")).lower() == "true":
            raise CryblockError(f"{fa}: '{label}' is marked encrypted; flash encryption is not supported "
                                "by `cryblock flash` (use `idf.py encrypted-flash`)")
    # Named entries (bootloader / app) tell which images carry an ESP image header.
    for label in ("bootloader", "app"):
        ent = doc.get(label)
        if isinstance(ent, dict) and ent.get("file"):
            p = (bd / ent["file"]).resolve()
            if not p.is_file():
                raise CryblockError(f"{bd / ent['file']}: {label} image listed in {fa.name} but not found")
            _check_image(p, label)

    def reset_mode(v: object, default: str) -> str:
        return str(v).replace("_", "-") if v else default

    return FlashPlan(
        build_dir=bd, files=tuple(files),
        flash_mode=str(settings.get("flash_mode", "keep")),
        flash_size=str(settings.get("flash_size", "keep")),
        flash_freq=str(settings.get("flash_freq", "keep")),
        before=reset_mode(extra.get("before"), "default-reset"),
        after=reset_mode(extra.get("after"), "hard-reset"),
        stub=bool(stub), chip=None if chip is None else str(chip))


@dataclass(frozen=True)
class FlashReport:
    """Outcome of :func:`flash`: the chip found, the regions written (offset, bytes, file)
    and whether a separate ``verify_flash`` pass ran (``write_flash`` always MD5-checks)."""

    port: str
    chip: str
    regions: tuple[tuple[int, int, str], ...]
    verified: bool
    reset: str


def flash(plan: FlashPlan, port: str, baud: int = FLASH_BAUD, verify: bool = True,
          connect_attempts: int = 7) -> FlashReport:
    """Write ``plan`` to the ESP32-S3 on ``port`` with the esptool v5 Python API.

    Sequence: ``detect_chip`` (ROM bootloader at 115200 Bd, reset mode ``plan.before``) →
    refuse any chip other than ESP32-S3 → ``run_stub`` (if ``plan.stub``) → ``change_baud(baud)``
    → ``attach_flash`` → ``write_flash`` (esptool MD5-checks each region after writing) →
    ``verify_flash`` (if ``verify``; MD5 digest of each region, read back from flash) →
    ``reset_chip(plan.after)`` (``hard-reset``: the new firmware starts).

    Args:
        plan: from :func:`load_flasher_args`.
        port: serial device (``/dev/ttyACM0``, ``COM5``, ``rfc2217://…``).
        baud: flashing speed after the stub is running, in Bd (default 460800, ``idf.py`` default).
        verify: run ``verify_flash`` after writing.
        connect_attempts: esptool connection attempts (its default 7).

    Raises:
        CryblockError: port missing/busy, no ESP device answering, wrong chip, write or
            verification failure — esptool's ``FatalError`` translated to one line.
    """
    import serial
    from esptool import cmds as et
    from esptool.util import FatalError

    addr_data = plan.addr_data
    try:
        rom = et.detect_chip(port, baud=_ROM_BAUD, connect_mode=plan.before,
                             connect_attempts=connect_attempts)
    except FatalError as e:
        raise CryblockError(f"port {port}: {_one_line(e)}") from None
    except (serial.SerialException, OSError) as e:
        raise CryblockError(f"port {port}: cannot open ({_one_line(e)})") from None
    with rom:  # ESPLoader closes its serial port on exit
        chip = str(getattr(rom, "CHIP_NAME", "unknown chip"))
        if chip != TARGET_CHIP_NAME:
            raise CryblockError(f"port {port}: found {chip}, but this firmware is for {TARGET_CHIP_NAME}; "
                                "refusing to flash")
        try:
            esp = et.run_stub(rom) if plan.stub else rom
            if baud != _ROM_BAUD:
                esp.change_baud(baud)
            et.attach_flash(esp)
            settings = dict(flash_mode=plan.flash_mode, flash_size=plan.flash_size,
                            flash_freq=plan.flash_freq)
            et.write_flash(esp, addr_data, **settings)
            if verify:
                et.verify_flash(esp, addr_data, **settings)
            et.reset_chip(esp, plan.after)
        except FatalError as e:
            raise CryblockError(f"flashing {chip} on {port} failed: {_one_line(e)}") from None
        except (serial.SerialException, OSError) as e:
            raise CryblockError(f"flashing {chip} on {port}: lost the port ({_one_line(e)})") from None
    regions = tuple((off, p.stat().st_size, str(p)) for off, p in plan.files)
    return FlashReport(port=port, chip=chip, regions=regions, verified=verify, reset=plan.after)


# ------------------------------------------------------------------------------------ capture


class LineSplitter:
    """Reassemble lines from arbitrary serial read chunks.

    :meth:`feed` returns the complete lines (``\\n``-terminated; the terminator and a trailing
    ``\\r`` removed) and keeps the unfinished tail for the next call. A "line" longer than
    ``max_line`` bytes without a newline (binary noise, wrong baud) is cut and returned as is, so
    memory stays bounded.
    """

    def __init__(self, max_line: int = 4096) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the lines it completed (bytes, without line terminator)."""
        self._buf += data
        out: list[bytes] = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                break
            out.append(bytes(self._buf[:i]).rstrip(b"\r"))
            del self._buf[:i + 1]
        while len(self._buf) > self.max_line:
            out.append(bytes(self._buf[:self.max_line]))
            del self._buf[:self.max_line]
        return out

    @property
    def pending(self) -> bytes:
        """Bytes of the unfinished last line."""
        return bytes(self._buf)


@dataclass
class LogRecord:
    """One parsed record as captured: host time (s since capture start), boot session index
    (0 = before the first BOOT line seen; +1 at every BOOT or detected reset), kind, raw fields."""

    host_s: float
    session: int
    kind: str
    fields: dict[str, str]

    def num(self, key: str) -> float | None:
        """Field as float, or None when absent/unparsable."""
        return Record(self.kind, self.fields).num(key)


_OTHER_VERSION = re.compile(rb"CRYB/(\d+) ")


def _value(v: str) -> int | float | str:
    try:
        return int(v)
    except ValueError:
        pass
    try:
        f = float(v)
        return f if math.isfinite(f) else v
    except ValueError:
        return v


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])  # numpy default: linear interpolation
    return {"n": int(a.size), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(a.max()), "mean": float(a.mean())}


class LogCapture:
    """Accumulates a ``CRYB/1`` stream line by line and summarises it.

    Line classes: a *record* parses with :func:`cryblock.logformat.parse_line`; a *blank* line is
    ignored; everything else is *garbage* (boot-ROM chatter, ESP_LOG text, noise). Garbage lines
    that contain ``CRYB/1 `` are also counted as *corrupt* (wrong checksum, truncated, cut by a
    reset); those with another ``CRYB/<n>`` version as *other_version*.

    A *reset* is a BOOT record that is not the first record of the capture, or an INF whose
    ``t_ms`` goes backwards within a session (the BOOT line itself was lost). Each starts a new
    session; INF ``seq`` gaps inside a session count as *lost* inferences.
    """

    def __init__(self, keep_garbage: int = 200) -> None:
        self.records: list[LogRecord] = []
        self.lines = 0
        self.blank = 0
        self.garbage = 0
        self.corrupt = 0
        self.other_version = 0
        self.garbage_samples: list[str] = []
        self.keep_garbage = keep_garbage
        self.session = 0
        self.resets = 0
        self.resets_inferred = 0
        self._last_inf: LogRecord | None = None

    def feed_line(self, raw: bytes | str, host_s: float = 0.0) -> LogRecord | None:
        """Classify one line (without terminator); returns the record, or None if not one."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="replace")
        self.lines += 1
        rec = parse_line(raw)
        if rec is None:
            if not raw.strip():
                self.blank += 1
                return None
            self.garbage += 1
            if (MAGIC + " ").encode() in raw:
                self.corrupt += 1
            else:
                m = _OTHER_VERSION.search(raw)
                if m and m.group(1) != b"1":
                    self.other_version += 1
            if len(self.garbage_samples) < self.keep_garbage:
                self.garbage_samples.append(raw.decode("utf-8", errors="replace"))
            return None
        if rec.kind == "BOOT":
            if self.records:
                self.resets += 1
            self.session += 1
            self._last_inf = None
        elif rec.kind == "INF":
            t = rec.num("t_ms")
            prev = self._last_inf
            if prev is not None and t is not None and (prev.num("t_ms") or 0.0) > t:
                self.resets += 1
                self.resets_inferred += 1
                self.session += 1
        lr = LogRecord(float(host_s), self.session, rec.kind, dict(rec.fields))
        if rec.kind == "INF":
            self._last_inf = lr
        self.records.append(lr)
        return lr

    # -- summary --------------------------------------------------------------------------
    def summary(self, capture_s: float | None = None) -> dict:
        """Summary of everything captured so far (JSON-ready dict).

        Keys: ``format`` (``CRYB/1``), ``capture_s`` (host wall time), ``device_s`` (sum over
        sessions of the INF ``t_ms`` span, s), ``lines``, ``records`` (count per kind),
        ``garbage_lines``, ``corrupt_lines``, ``other_version_lines``, ``boots``, ``resets``,
        ``resets_inferred``, ``boot`` (fields of the last BOOT, numbers converted) and
        ``model_bytes``/``arena_bytes``/``arena_used_bytes``, ``inferences`` (INF received),
        ``lost_inferences`` (INF ``seq`` gaps), ``inference_hz`` (seq advance / device_s),
        ``latency_us`` (``fe``, ``inv``, ``total`` = fe+inv → n/p50/p90/p99/max/mean, µs;
        numpy linear-interpolation percentiles), ``positives``, ``positive_fraction``,
        ``detections`` (EVT ON count), ``detections_per_hour`` (detections / device_s · 3600,
        falling back to capture_s), ``config`` (last CFG), ``errors`` (ERR records).
        Values that cannot be computed are None.
        """
        counts = {k: 0 for k in KINDS}
        for r in self.records:
            counts[r.kind] += 1
        infs = [r for r in self.records if r.kind == "INF"]
        fe = [r.num("fe_us") for r in infs]
        inv = [r.num("inv_us") for r in infs]
        fe_ok = [v for v in fe if v is not None]
        inv_ok = [v for v in inv if v is not None]
        total = [a + b for a, b in zip(fe, inv) if a is not None and b is not None]

        # Per-session device time span and seq advance.
        device_ms = 0.0
        seq_advance = 0
        lost = 0
        by_session: dict[int, list[LogRecord]] = {}
        for r in infs:
            by_session.setdefault(r.session, []).append(r)
        for recs in by_session.values():
            ts = [r.num("t_ms") for r in recs if r.num("t_ms") is not None]
            if len(ts) >= 2:
                device_ms += max(ts) - min(ts)
            seqs = sorted({int(s) for s in (r.num("seq") for r in recs) if s is not None})
            if len(seqs) >= 2:
                seq_advance += seqs[-1] - seqs[0]
                lost += (seqs[-1] - seqs[0] + 1) - len(seqs)
        device_s = device_ms / 1000.0 if device_ms > 0 else None

        pos = [r.num("pos") for r in infs]
        positives = int(sum(1 for p in pos if p is not None and p >= 1))
        detections = sum(1 for r in self.records if r.kind == "EVT" and r.fields.get("state") == "ON")
        span = device_s if device_s else (capture_s if capture_s else None)

        boots = [r for r in self.records if r.kind == "BOOT"]
        boot = {k: _value(v) for k, v in boots[-1].fields.items()} if boots else None
        cfgs = [r for r in self.records if r.kind == "CFG"]

        def ib(key: str) -> int | None:
            v = boot.get(key) if boot else None
            return int(v) if isinstance(v, (int, float)) else None

        return {
            "format": MAGIC,
            "capture_s": None if capture_s is None else round(float(capture_s), 3),
            "device_s": device_s,
            "lines": self.lines,
            "records": counts,
            "garbage_lines": self.garbage,
            "corrupt_lines": self.corrupt,
            "other_version_lines": self.other_version,
            "boots": len(boots),
            "resets": self.resets,
            "resets_inferred": self.resets_inferred,
            "boot": boot,
            "model_bytes": ib("model_bytes"),
            "arena_bytes": ib("arena_bytes"),
            "arena_used_bytes": ib("arena_used"),
            "inferences": len(infs),
            "lost_inferences": lost,
            "inference_hz": (seq_advance / device_s) if device_s else None,
            "latency_us": {"fe": _percentiles(fe_ok), "inv": _percentiles(inv_ok),
                           "total": _percentiles(total)},
            "positives": positives,
            "positive_fraction": (positives / len(infs)) if infs else None,
            "detections": detections,
            "detections_per_hour": (detections / span * 3600.0) if span else None,
            "config": {k: _value(v) for k, v in cfgs[-1].fields.items()} if cfgs else None,
            "errors": [dict(r.fields) for r in self.records if r.kind == "ERR"],
        }


@dataclass
class CaptureResult:
    """What :func:`capture` returns: the accumulated :class:`LogCapture`, host duration (s),
    why it stopped (``time``, ``interrupted``, ``port lost: …``) and the number of
    bytes of an unterminated last line (not counted as a line)."""

    log: LogCapture
    capture_s: float
    stop_reason: str
    port_lost: bool = False
    unterminated_bytes: int = 0
    bytes_read: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """:meth:`LogCapture.summary` plus the capture's stop reason and byte counts."""
        s = self.log.summary(self.capture_s)
        s.update(stop_reason=self.stop_reason, port_lost=self.port_lost,
                 bytes_read=self.bytes_read, unterminated_bytes=self.unterminated_bytes,
                 notes=list(self.notes))
        return s


def open_serial(port: str, baud: int = CONSOLE_BAUD, timeout: float = 0.05):
    """Open ``port`` for log capture without resetting the board.

    RTS and DTR are set low *before* opening (as esptool does), because on ESP dev boards these
    lines drive EN/IO0 and toggling them on open resets the chip. The port is opened exclusively.

    Returns:
        an open ``serial.Serial`` with read ``timeout`` seconds.

    Raises:
        CryblockError: the port does not exist, is busy, or cannot be configured.
    """
    import serial

    ser = serial.Serial()
    ser.port = port
    ser.baudrate = int(baud)
    ser.timeout = timeout
    ser.exclusive = True
    ser.rts = False
    ser.dtr = False
    try:
        ser.open()
    except (serial.SerialException, OSError, ValueError) as e:
        raise CryblockError(f"cannot open serial port {port}: {_one_line(e)}") from None
    return ser


def reset_board(ser) -> str | None:
    """Pulse EN through RTS (esptool's ``HardReset``) so the firmware restarts and prints BOOT.

    Returns None on success, or a note when the port has no modem-control lines (the user must
    press the board's reset button instead).
    """
    try:
        ser.dtr = False
        ser.rts = True
        time.sleep(0.1)
        ser.rts = False
    except OSError as e:
        return f"could not pulse RTS on {ser.port} ({_one_line(e)}); press the board's RESET button"
    return None


def capture(port: str, baud: int = CONSOLE_BAUD, seconds: float | None = None,
            send: Iterable[str] = (), reset: bool = False,
            on_line: Callable[[bytes, LogRecord | None], None] | None = None) -> CaptureResult:
    """Read and parse the ``CRYB/1`` log on ``port`` until time is up, Ctrl-C, or the port goes away.

    Args:
        port: serial device; opened by :func:`open_serial` (no reset on open).
        baud: console speed in Bd (firmware default 115200).
        seconds: capture duration in host seconds; None = until Ctrl-C or port loss.
        send: text commands written (one per line, ``\\n``-terminated) right after opening.
        reset: pulse EN via RTS after opening so the capture starts with a BOOT line.
        on_line: called for every complete line with ``(raw_bytes, record_or_None)``.

    Returns:
        :class:`CaptureResult`; never raises for device misbehaviour (garbage, resets, a port
        that disappears mid-capture — ``port_lost`` is then True).

    Raises:
        CryblockError: the port cannot be opened.
    """
    import serial

    if seconds is not None and not (seconds > 0):
        raise ParameterError(f"seconds must be > 0, got {seconds}")
    ser = open_serial(port, baud)
    log = LogCapture()
    splitter = LineSplitter()
    notes: list[str] = []
    t0 = time.monotonic()
    stop_reason = "time"
    port_lost = False
    nbytes = 0
    try:
        if reset:
            note = reset_board(ser)
            if note:
                notes.append(note)
        try:
            for line in send:
                ser.write(line.rstrip("\r\n").encode("ascii", errors="replace") + b"\n")
            if send:
                ser.flush()
        except (serial.SerialException, OSError) as e:
            stop_reason = f"port lost: {_one_line(e)}"
            port_lost = True
        while not port_lost:
            now = time.monotonic()
            if seconds is not None and now - t0 >= seconds:
                stop_reason = "time"
                break
            try:
                waiting = ser.in_waiting
                chunk = ser.read(max(1, min(waiting, 65536)))
            except (serial.SerialException, OSError) as e:
                stop_reason = f"port lost: {_one_line(e)}"
                port_lost = True
                break
            if not chunk:
                continue
            nbytes += len(chunk)
            host_s = time.monotonic() - t0
            for raw in splitter.feed(chunk):
                rec = log.feed_line(raw, host_s)
                if on_line is not None:
                    on_line(raw, rec)
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        try:
            ser.close()
        except Exception:  # noqa: BLE001 - a vanished port may fail to close; nothing to save
            pass
    return CaptureResult(log=log, capture_s=time.monotonic() - t0, stop_reason=stop_reason,
                         port_lost=port_lost, unterminated_bytes=len(splitter.pending),
                         bytes_read=nbytes, notes=notes)


# ------------------------------------------------------------------------------------ outputs


def records_csv(records: Sequence[LogRecord]) -> str:
    """CSV text, one row per record: ``host_s,session,kind`` then every field name seen
    (first-seen order; empty where a record lacks it). Values are the raw strings from the line."""
    keys: list[str] = []
    seen: set[str] = set()
    for r in records:
        for k in r.fields:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["host_s", "session", "kind", *keys])
    for r in records:
        w.writerow([f"{r.host_s:.3f}", r.session, r.kind, *(r.fields.get(k, "") for k in keys)])
    return buf.getvalue()


def write_capture(result: CaptureResult, csv_path: str | Path | None = None,
                  json_path: str | Path | None = None) -> list[Path]:
    """Write the records as CSV (:func:`records_csv`) and/or ``{"summary", "records",
    "garbage_samples"}`` as JSON, each atomically (temp file + rename). Returns the paths written."""
    out = []
    jobs = []
    if csv_path is not None:
        jobs.append((csv_path, lambda: records_csv(result.log.records)))
    if json_path is not None:
        def doc() -> str:
            return json.dumps({
                "summary": result.summary(),
                "records": [{"host_s": round(r.host_s, 3), "session": r.session, "kind": r.kind,
                             "fields": r.fields} for r in result.log.records],
                "garbage_samples": result.log.garbage_samples,
            }, indent=1) + "\n"
        jobs.append((json_path, doc))
    for path, text in jobs:
        try:
            out.append(atomic_write_text(path, text()))
        except OSError as e:
            raise CryblockError(f"{path}: cannot write ({e.strerror or e})") from None
    return out


def check_output_path(path: str | Path | None) -> None:
    """Fail early (before a long capture) if ``path`` cannot be a file: it is a folder, or a
    parent is a file. Raises CryblockError naming the path."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise CryblockError(f"{p}: is a folder, expected a file name")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CryblockError(f"{p}: {parent} is a file, not a folder")
            break


_ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(raw: bytes) -> str:
    """A non-record line made safe for a terminal: UTF-8 decoded (bad bytes → U+FFFD), ESP_LOG
    colour codes removed, other control characters (which noise could turn into terminal
    escape sequences) shown as ``?``."""
    text = _ANSI_SGR.sub("", raw.decode("utf-8", errors="replace"))
    return _CONTROL.sub("?", text)


def format_record(rec: LogRecord) -> str:
    """One human-readable line for a record (what ``cryblock monitor`` prints live)."""
    f = rec.fields
    if rec.kind == "INF":
        def ms(key: str) -> str:
            v = rec.num(key)
            return "?" if v is None else f"{v / 1000:.1f}ms"
        t = rec.num("t_ms")
        return (f"INF t={'?' if t is None else f'{t / 1000:.2f}s'} seq={f.get('seq', '?')} "
                f"score={f.get('score', '?')} pos={f.get('pos', '?')} votes={f.get('votes', '?')} "
                f"det={f.get('det', '?')} fe={ms('fe_us')} inv={ms('inv_us')}")
    return f"{rec.kind} " + " ".join(f"{k}={v}" for k, v in f.items())


def format_summary(s: dict) -> str:
    """Multi-line human-readable rendering of :meth:`LogCapture.summary` output."""
    def num(v, fmt="{:.1f}"):
        return "n/a" if v is None else fmt.format(v)

    lines = [f"format {s['format']}: {s['lines']} lines, {sum(s['records'].values())} records "
             f"({', '.join(f'{k} {v}' for k, v in s['records'].items() if v)}), "
             f"{s['garbage_lines']} garbage ({s['corrupt_lines']} corrupt CRYB/1, "
             f"{s['other_version_lines']} other version)"]
    dur = f"capture {num(s.get('capture_s'))} s, device time {num(s.get('device_s'))} s"
    if s.get("stop_reason"):
        dur += f", stopped: {s['stop_reason']}"
    lines.append(dur)
    lines.append(f"boots {s['boots']}, resets {s['resets']}"
                 + (f" ({s['resets_inferred']} inferred from t_ms)" if s.get("resets_inferred") else ""))
    if s["boot"]:
        lines.append(f"model {num(s['model_bytes'], '{:d}')} B, arena {num(s['arena_bytes'], '{:d}')} B "
                     f"(used {num(s['arena_used_bytes'], '{:d}')} B), fw {s['boot'].get('fw', '?')}")
    else:
        lines.append("no BOOT line seen (arena unknown; use --reset or press RESET while capturing)")
    lines.append(f"inferences {s['inferences']} ({s['lost_inferences']} lost), "
                 f"rate {num(s['inference_hz'], '{:.3f}')} /s")
    for key, name in (("fe", "front-end"), ("inv", "invoke"), ("total", "total")):
        p = s["latency_us"][key]
        if p:
            lines.append(f"{name:9s} µs: p50 {p['p50']:.0f}  p90 {p['p90']:.0f}  p99 {p['p99']:.0f}  "
                         f"max {p['max']:.0f}")
    lines.append(f"positives {s['positives']} ({num(s['positive_fraction'], '{:.1%}')}), "
                 f"detections {s['detections']} ({num(s['detections_per_hour'])} /h)")
    if s.get("config"):
        lines.append("config " + " ".join(f"{k}={v}" for k, v in s["config"].items()))
    for e in s.get("errors") or []:
        lines.append("device error " + " ".join(f"{k}={v}" for k, v in e.items()))
    for n in s.get("notes") or []:
        lines.append(f"note: {n}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- configuration


def config_commands(threshold: float | None = None, vote: tuple[int, int] | None = None,
                    hold_ms: int | None = None) -> list[str]:
    """The firmware command lines for the requested changes, then ``get config``.

    Values are validated with :class:`cryblock.params.DetectorParams` ranges (threshold in
    [0, 1], 1 ≤ N ≤ M ≤ 64, hold in [0, 3600] s).

    Raises:
        ParameterError: a value out of range.
    """
    from .params import DetectorParams

    d = DetectorParams()
    DetectorParams(threshold=d.threshold if threshold is None else float(threshold),
                   vote_n=vote[0] if vote else d.vote_n, vote_m=vote[1] if vote else d.vote_m,
                   hold_seconds=d.hold_seconds if hold_ms is None else hold_ms / 1000.0)
    cmds = []
    if threshold is not None:
        cmds.append(f"set threshold {float(threshold):.4f}")
    if vote is not None:
        cmds.append(f"set vote {int(vote[0])} {int(vote[1])}")
    if hold_ms is not None:
        cmds.append(f"set hold {int(hold_ms)}")
    cmds.append("get config")
    return cmds


def parse_vote(text: str) -> tuple[int, int]:
    """``"2/3"`` → ``(2, 3)``. Raises ParameterError for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ParameterError(f"vote must be N/M (e.g. 2/3), got {text!r}")
    return int(m.group(1)), int(m.group(2))


#: ``ERR`` code with which the firmware rejects a command line (templates/esp32s3 main.cc
#: ``handle_commands``); other ERR lines (``overrun``, ``i2s_read``…) are not answers to commands.
COMMAND_ERR_CODE = "bad_command"


def _mismatches(cfg: dict, threshold: float | None, vote: tuple[int, int] | None,
                hold_ms: int | None) -> list[str]:
    problems = []
    got_thr = cfg.get("threshold")
    if threshold is not None and not (isinstance(got_thr, (int, float)) and abs(got_thr - threshold) < 5e-5):
        problems.append(f"threshold={got_thr} (asked {threshold:g})")
    if vote is not None and str(cfg.get("vote")) != f"{vote[0]}/{vote[1]}":
        problems.append(f"vote={cfg.get('vote')} (asked {vote[0]}/{vote[1]})")
    if hold_ms is not None and cfg.get("hold_ms") != int(hold_ms):
        problems.append(f"hold_ms={cfg.get('hold_ms')} (asked {hold_ms})")
    return problems


def configure(port: str, threshold: float | None = None, vote: tuple[int, int] | None = None,
              hold_ms: int | None = None, baud: int = CONSOLE_BAUD, timeout_s: float = 3.0) -> dict:
    """Send configuration commands and return the configuration the device reports.

    Each command line (:func:`config_commands`) is sent and an answer awaited (at most
    ``timeout_s`` s) before the next: a ``CFG`` record, or an ``ERR`` with
    ``code=bad_command`` (rejection). Log lines in between are ignored. The firmware handles
    commands between inferences and also prints CFG at boot, so a CFG already in flight can be
    taken as an answer; the final check therefore keeps reading (up to ``timeout_s``) until a CFG
    shows every requested value.

    Returns:
        the last ``CFG`` fields, numbers converted: ``{"threshold": float, "vote": "N/M",
        "hold_ms": int}`` (plus any extra fields).

    Raises:
        ParameterError: value out of range (nothing sent).
        CryblockError: port cannot be opened or vanished, no answer in time, the device rejects a
            command, or the reported configuration differs from the one requested.
    """
    import serial

    cmds = config_commands(threshold, vote, hold_ms)
    ser = open_serial(port, baud)
    splitter = LineSplitter()
    pending: list[Record] = []

    def next_answer(deadline: float) -> Record | None:
        while time.monotonic() < deadline:
            if not pending:
                for raw in splitter.feed(ser.read(max(1, ser.in_waiting))):
                    rec = parse_line(raw)
                    if rec is not None and (rec.kind == "CFG" or (
                            rec.kind == "ERR" and rec.fields.get("code") == COMMAND_ERR_CODE)):
                        pending.append(rec)
            if pending:
                return pending.pop(0)
        return None

    try:
        last: Record | None = None
        for cmd in cmds:
            ser.write(cmd.encode("ascii") + b"\n")
            ser.flush()
            answer = next_answer(time.monotonic() + timeout_s)
            if answer is None:
                raise CryblockError(f"port {port}: no CFG answer to {cmd!r} within {timeout_s:g} s "
                                    "(is the cryblock firmware running?)")
            if answer.kind == "ERR":
                raise CryblockError(f"port {port}: device rejected {cmd!r}: {answer.fields.get('msg', '?')}")
            last = answer
        cfg = {k: _value(v) for k, v in last.fields.items()}
        deadline = time.monotonic() + timeout_s
        while _mismatches(cfg, threshold, vote, hold_ms):
            later = next_answer(deadline)
            if later is None:
                break
            if later.kind == "CFG":
                cfg = {k: _value(v) for k, v in later.fields.items()}
    except (serial.SerialException, OSError) as e:
        raise CryblockError(f"port {port}: lost the port while configuring ({_one_line(e)})") from None
    finally:
        try:
            ser.close()
        except Exception:  # noqa: BLE001 - a vanished port may fail to close
            pass
    problems = _mismatches(cfg, threshold, vote, hold_ms)
    if problems:
        raise CryblockError(f"port {port}: device did not apply the configuration: {', '.join(problems)}")
    return cfg
