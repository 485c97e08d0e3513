"""Capture the firmware's ``CRYB/1`` serial log.

:func:`capture` reads the serial port with pyserial (opened with RTS/DTR low so opening does not
reset the board), splits the byte stream into lines (:class:`LineSplitter`), parses them with
:func:`cryblock.logformat.parse_line` and accumulates a :class:`LogCapture`; :mod:`.bench`
summarises it. Garbage, partial lines, non-UTF-8 bytes, device resets and a port that disappears
are all tolerated: the capture ends and what was read is kept. :func:`write_capture` writes the
records as CSV / JSON.
"""
from __future__ import annotations

import csv
import io as _io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from cryblock.errors import CryblockError, ParameterError, one_line
from cryblock.escape import csv_cell, printable
from cryblock.output import atomic_write_text, json_safe
from cryblock.logformat import MAGIC, Record, parse_line
from cryblock.signals import Interrupted, interruptible

from .bench import summarize


#: The firmware console speed (ESP-IDF ``CONFIG_ESP_CONSOLE_UART_BAUDRATE`` default), Bd.
CONSOLE_BAUD = 115200


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


class LogCapture:
    """Accumulates a ``CRYB/1`` stream line by line and summarises it.

    Line classes: a *record* parses with :func:`cryblock.logformat.parse_line`; a *blank* line is
    ignored; everything else is *garbage* (boot-ROM chatter, ESP_LOG text, noise). Garbage lines
    that contain ``CRYB/1 `` are also counted as *corrupt* (wrong checksum, truncated, cut by a
    reset); those with another ``CRYB/<n>`` version as *other_version*.

    A *reset* is a BOOT record that is not the first record of the capture, or an INF whose
    ``t_ms`` goes backwards within a session (the BOOT line itself was lost). Each starts a new
    session; INF ``seq`` gaps inside a session count as *lost* inferences. Lines holding several
    records (*concatenated*) are split; a repeated INF (*duplicates*) is counted once. Field values
    that are not finite numbers (``seq=nan``) are kept as text and ignored by the statistics.
    """

    def __init__(self, keep_garbage: int = 200, keep_records: bool = True) -> None:
        self.records: list[LogRecord] = []
        self.keep_records = keep_records  #: False: records are only returned by feed_line (long streams)
        self.n_records = 0
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
        self.concatenated = 0
        self.duplicates = 0
        self._last_inf: LogRecord | None = None
        self._seqs: set[tuple[int, float]] = set()

    def feed_line(self, raw: bytes | str, host_s: float = 0.0) -> LogRecord | None:
        """Classify one line (without terminator); returns its (last) record, or None if none.

        Two records run together on one line (a lost newline) are split at each ``CRYB/``; an
        INF that repeats an earlier one of the same session (same ``seq``, e.g. a replayed or
        echoed line) is counted in ``duplicates`` and not recorded again.
        """
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="replace")
        starts = [m.start() for m in re.finditer(rb"CRYB/", raw)]
        if len(starts) > 1:
            self.concatenated += 1
            pieces = [raw[: starts[1]]] + [raw[a:b] for a, b in zip(starts[1:], starts[2:] + [len(raw)])]
            self.lines -= len(pieces) - 1  # one physical line
            recs = [self.feed_line(piece, host_s) for piece in pieces]
            return next((r for r in reversed(recs) if r is not None), None)
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
            if self.n_records:
                self.resets += 1
            self.session += 1
            self._last_inf = None
            self._seqs = set()
        elif rec.kind == "INF":
            t = rec.num("t_ms")
            prev = self._last_inf
            seq = rec.num("seq")
            if seq is not None and (self.session, seq) in self._seqs:
                self.duplicates += 1
                return None
            if prev is not None and t is not None and (prev.num("t_ms") or 0.0) > t:
                self.resets += 1
                self.resets_inferred += 1
                self.session += 1
                self._seqs = set()
            if seq is not None:
                self._seqs.add((self.session, seq))
        lr = LogRecord(float(host_s), self.session, rec.kind, dict(rec.fields))
        if rec.kind == "INF":
            self._last_inf = lr
        self.n_records += 1
        if self.keep_records:
            self.records.append(lr)
        return lr

    def summary(self, capture_s: float | None = None) -> dict:
        """Summary of everything captured so far (:func:`cryblock.blocks.deploy.bench.summarize`)."""
        return summarize(self, capture_s)


@dataclass
class CaptureResult:
    """What :func:`capture` returns: the accumulated :class:`LogCapture`, host duration (s),
    why it stopped (``time``, ``interrupted`` (Ctrl-C), ``interrupted (SIGTERM)``, ``interrupted
    (SIGHUP)``, ``port lost: …``, ``live output failed: …``) and the number of
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
        an open pyserial port (``serial.serial_for_url``: device paths, ``socket://host:port``,
        ``rfc2217://host:port``, ``loop://``) with read ``timeout`` seconds.

    Raises:
        CryblockError: the port does not exist, is busy, or cannot be configured.
    """
    import serial

    if not str(port).strip():
        raise CryblockError("no serial port given (e.g. --port /dev/ttyUSB0, COM5, rfc2217://host:4000)")
    try:
        ser = serial.serial_for_url(port, do_not_open=True)  # device paths and URLs: socket://, rfc2217://, loop://
        ser.baudrate = int(baud)
        ser.timeout = timeout
        if isinstance(ser, serial.Serial):
            ser.exclusive = True
        ser.rts = False
        ser.dtr = False
        ser.open()
    except (serial.SerialException, OSError, ValueError) as e:
        raise CryblockError(f"cannot open serial port {port}: {one_line(e)}") from None
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
        return f"could not pulse RTS on {ser.port} ({one_line(e)}); press the board's RESET button"
    return None


def capture(port: str, baud: int = CONSOLE_BAUD, seconds: float | None = None,
            send: Iterable[str] = (), reset: bool = False,
            on_line: Callable[[bytes, LogRecord | None], None] | None = None) -> CaptureResult:
    """Read and parse the ``CRYB/1`` log on ``port`` until time is up, the capture is ended (Ctrl-C,
    SIGTERM, SIGHUP: :func:`cryblock.signals.interruptible`), the port goes away or ``on_line``
    fails to show a line (an OSError: the terminal was closed, the pipe reader exited).

    Args:
        port: serial device; opened by :func:`open_serial` (no reset on open).
        baud: console speed in Bd (firmware default 115200).
        seconds: capture duration in host seconds; None = until Ctrl-C or port loss.
        send: text commands written (one per line, ``\\n``-terminated) right after opening.
        reset: pulse EN via RTS after opening so the capture starts with a BOOT line.
        on_line: called for every complete line with ``(raw_bytes, record_or_None)``.

    Returns:
        :class:`CaptureResult` with everything read however the capture ended; never raises for
        device misbehaviour (garbage, resets, a port that disappears mid-capture — ``port_lost``
        is then True).

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
    with interruptible():  # SIGTERM and SIGHUP end the capture like Ctrl-C
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
                stop_reason = f"port lost: {one_line(e)}"
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
                    stop_reason = f"port lost: {one_line(e)}"
                    port_lost = True
                    break
                if not chunk:
                    continue
                nbytes += len(chunk)
                host_s = time.monotonic() - t0
                shown = True
                for raw in splitter.feed(chunk):
                    rec = log.feed_line(raw, host_s)
                    if on_line is not None and shown:
                        try:
                            on_line(raw, rec)
                        except OSError as e:  # the terminal or pipe went away: keep what was read
                            stop_reason, shown = f"live output failed: {one_line(e)}", False
                if not shown:
                    break
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP through interruptible()
            stop_reason = f"interrupted ({e.signame})" if isinstance(e, Interrupted) else "interrupted"
        finally:
            try:
                ser.close()
            except Exception:  # noqa: BLE001 - a vanished port may fail to close; nothing to save
                pass
    return CaptureResult(log=log, capture_s=time.monotonic() - t0, stop_reason=stop_reason,
                         port_lost=port_lost, unterminated_bytes=len(splitter.pending),
                         bytes_read=nbytes, notes=notes)


_CSV_COLUMNS = ("host_s", "session", "kind")


def records_csv(records: Sequence[LogRecord]) -> str:
    """CSV text, one row per record: ``host_s,session,kind`` then every field name seen
    (first-seen order; empty where a record lacks it; a field named like one of the first three
    columns is headed ``field_<name>``). Values are the raw strings from the line, except that a
    name or value a spreadsheet would run as a formula is made text (:func:`cryblock.escape.csv_cell`)."""
    keys: list[str] = []
    seen: set[str] = set()
    for r in records:
        for k in r.fields:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # a device field named like a capture column gets a prefix (two "kind" columns are unreadable)
    w.writerow(["host_s", "session", "kind", *(csv_cell(f"field_{k}" if k in _CSV_COLUMNS else k) for k in keys)])
    for r in records:
        w.writerow([f"{r.host_s:.3f}", r.session, r.kind, *(csv_cell(r.fields.get(k, "")) for k in keys)])
    return buf.getvalue()


def write_capture(result: CaptureResult, csv_path: str | Path | None = None,
                  json_path: str | Path | None = None) -> list[Path]:
    """Write the records as CSV (:func:`records_csv`) and/or ``{"summary", "records",
    "garbage_samples"}`` as strict JSON (NaN/inf → null), each atomically. The records are always
    written: if summarising fails, the JSON holds ``summary_error`` instead of the summary.
    Returns the paths written."""
    out = []
    if csv_path is not None:
        out.append(atomic_write_text(csv_path, records_csv(result.log.records)))
    if json_path is not None:
        doc: dict = {}
        try:
            doc["summary"] = result.summary()
        except Exception as e:  # noqa: BLE001 - a capture is never lost to a summary bug
            doc["summary_error"] = f"{type(e).__name__}: {e}"
        doc["records"] = [{"host_s": round(r.host_s, 3), "session": r.session, "kind": r.kind, "fields": r.fields}
                          for r in result.log.records]
        doc["garbage_samples"] = result.log.garbage_samples
        out.append(atomic_write_text(json_path, json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n"))
    return out


def format_record(rec: LogRecord) -> str:
    """One human-readable line for a record (what ``cryblock monitor`` prints live), terminal-safe
    (:func:`printable`)."""
    return printable(_format_record(rec)).replace("\n", "?")


def _format_record(rec: LogRecord) -> str:
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
