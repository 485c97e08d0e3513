"""A simulated ESP32-S3 running the cryblock firmware, on a pseudo-terminal (``pty.openpty``).

No chip exists on the test machine, so the device tests talk to this instead. It is real
serial I/O: pyserial opens the pty's slave side (``FakeDevice.port``) exactly as it opens
``/dev/ttyACM0``; a writer thread writes bytes on the master side at a realistic pace and a
responder thread reads the firmware's text commands (``set threshold <f>``, ``set vote <N> <M>``,
``set hold <ms>``, ``get config``) and answers ``CRYB/1 CFG ...`` (or ``CRYB/1 ERR ...``).

:func:`build_scenario` produces the byte stream of a realistic session — boot-ROM chatter,
BOOT, INF lines from a simulated N-of-M/hold detector, EVT ON/OFF, corrupted (bad checksum),
truncated, glued and split lines, random and non-UTF-8 bytes, an ESP_LOG line, an other-version
line, and a mid-line device reset followed by a second boot — together with the :class:`Truth`:
what a correct reader must conclude, derived from how each line was constructed (not by parsing).

pyserial flushes the input buffer when it opens a port, so anything written before the open is
lost. The fake therefore waits until the port has been opened (pyserial sets the baud rate with
``tcsetattr``; the fake starts at 9600 Bd and waits for the change) and a little longer, then
starts the scenario — like a board that is reset right after the host connects.
"""
from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from cryblock.logformat import format_line

HOP_MS = 480  # patch hop of the YAMNet front-end (DspParams.patch_hop_seconds = 0.48 s)

ROM_CHATTER_POWERON = [
    b"ESP-ROM:esp32s3-20210327",
    b"Build:Mar 27 2021",
    b"rst:0x1 (POWERON),boot:0x8 (SPI_FAST_FLASH_BOOT)",
    b"SPIWP:0xee",
    b"mode:DIO, clock div:1",
    b"load:0x3fce3818,len:0x16f8",
    b"load:0x403c9700,len:0x4",
    b"load:0x403c9704,len:0xc00",
    b"load:0x403cc700,len:0x2eb0",
    b"entry 0x403c9908",
    b"\x1b[0;32mI (27) boot: ESP-IDF v5.3.1 2nd stage bootloader\x1b[0m",
    b"\x1b[0;32mI (27) boot: chip revision: v0.2\x1b[0m",
    b"\x1b[0;32mI (301) main_task: Calling app_main()\x1b[0m",
]
ROM_CHATTER_SWRESET = [
    b"ESP-ROM:esp32s3-20210327",
    b"Build:Mar 27 2021",
    b"rst:0xc (RTC_SW_CPU_RST),boot:0x8 (SPI_FAST_FLASH_BOOT)",
    b"Saved PC:0x420359b2",
    b"SPIWP:0xee",
    b"mode:DIO, clock div:1",
    b"entry 0x403c9908",
    b"\x1b[0;32mI (301) main_task: Calling app_main()\x1b[0m",
]

TAIL = b"CRYB/1 INF t_ms=2" + bytes([0xE2, 0x80])  # a line cut by the port vanishing (half a UTF-8 char)

BOOT_FIELDS = dict(model_bytes=61344, arena_bytes=98304, arena_used=71236,
                   ops="CONV_2D,DEPTHWISE_CONV_2D,MEAN,FULLY_CONNECTED,LOGISTIC", sr=16000,
                   threshold=0.5, vote="2/3", hold_ms=2000, fw="0.1.0")
#: The firmware prints its configuration right after BOOT (templates/esp32s3 main.cc).
BOOT_CFG = dict(threshold=0.5, vote="2/3", hold_ms=2000)


@dataclass
class Chunk:
    """Bytes to write on the master, then ``delay`` seconds of silence. ``hold`` keeps the write
    lock into the next chunk (a line written in two pieces is not interleaved with a CFG answer)."""

    data: bytes
    delay: float = 0.0
    hold: bool = False


@dataclass
class Truth:
    """What the reader must find, by construction of the stream."""

    inf: list[dict] = field(default_factory=list)       # valid INF records: numbers as sent
    boots: list[dict] = field(default_factory=list)     # valid BOOT records
    evt_on: int = 0
    evt_off: int = 0
    garbage_lines: int = 0        # non-blank lines that are not valid records
    corrupt_lines: int = 0        # ... of which contain "CRYB/1 "
    other_version_lines: int = 0  # ... of which are another format version
    blank_lines: int = 0
    lost_inferences: int = 0      # corrupted INF lines between two valid INF of the same session
    sessions: dict[int, list[int]] = field(default_factory=dict)  # session -> valid INF seqs
    session_t_ms: dict[int, list[int]] = field(default_factory=dict)
    lines: int = 0
    unterminated_bytes: int = 0   # bytes of a last line cut off by the port vanishing

    @property
    def device_s(self) -> float:
        return sum((max(t) - min(t)) / 1000.0 for t in self.session_t_ms.values() if len(t) >= 2)

    @property
    def seq_advance(self) -> int:
        return sum(max(s) - min(s) for s in self.sessions.values() if len(s) >= 2)


class _Detector:
    """The firmware's decision logic: positive when score ≥ threshold; detection while at least
    N of the last M are positive, held for hold_ms after the last satisfied vote."""

    def __init__(self, threshold=0.5, n=2, m=3, hold_ms=2000):
        self.threshold, self.n, self.m, self.hold_ms = threshold, n, m, hold_ms
        self.window: list[int] = []
        self.det = 0
        self.last_vote_ms = None

    def step(self, t_ms: int, score: float) -> tuple[int, int, int, str | None]:
        pos = int(score >= self.threshold)
        self.window = (self.window + [pos])[-self.m:]
        votes = sum(self.window)
        event = None
        if votes >= self.n:
            self.last_vote_ms = t_ms
            if not self.det:
                self.det, event = 1, "ON"
        elif self.det and t_ms - self.last_vote_ms >= self.hold_ms:
            self.det, event = 0, "OFF"
        return pos, votes, self.det, event


def _noise(rng: np.random.Generator, n: int) -> bytes:
    """Random bytes without newline and without the magic; first byte non-ASCII (never blank)."""
    b = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    b = bytearray(x for x in b if x not in (0x0A, 0x0D))
    b.insert(0, 0x80 + int(rng.integers(0, 128)))
    return bytes(b).replace(b"CRYB", b"CRYX")


class _Builder:
    def __init__(self, pace_s: float):
        self.chunks: list[Chunk] = []
        self.truth = Truth()
        self.pace = pace_s
        self.session = 0

    def garbage(self, line: bytes, delay: float = 0.0) -> None:
        self.chunks.append(Chunk(line + b"\r\n", delay))
        t = self.truth
        t.lines += 1
        t.garbage_lines += 1
        if b"CRYB/1 " in line:
            t.corrupt_lines += 1
        elif b"CRYB/" in line:
            t.other_version_lines += 1

    def record(self, kind: str, fields: dict, delay: float = 0.0, prefix: bytes = b"",
               split: bool = False) -> None:
        line = prefix + format_line(kind, **fields).encode() + b"\r\n"
        if split:
            half = len(line) // 2
            self.chunks.append(Chunk(line[:half], 0.03, hold=True))
            self.chunks.append(Chunk(line[half:], delay))
        else:
            self.chunks.append(Chunk(line, delay))
        t = self.truth
        t.lines += 1
        if kind == "BOOT":
            self.session += 1
            t.boots.append(dict(fields))
        elif kind == "INF":
            t.inf.append(dict(fields, session=self.session))
            t.sessions.setdefault(self.session, []).append(fields["seq"])
            t.session_t_ms.setdefault(self.session, []).append(fields["t_ms"])
        elif kind == "EVT":
            if fields["state"] == "ON":
                t.evt_on += 1
            else:
                t.evt_off += 1

    def blank(self) -> None:
        self.chunks.append(Chunk(b"\r\n"))
        self.truth.lines += 1
        self.truth.blank_lines += 1


def _inference(rng, det: _Detector, seq: int, t_ms: int, burst: bool) -> tuple[dict, str | None]:
    score = round(float(rng.uniform(0.72, 0.99) if burst else rng.beta(1.5, 9.0)), 4)
    fe = int(rng.integers(2900, 3500))
    inv = int(rng.integers(39000, 45000))
    if rng.random() < 0.05:  # occasional slow inference (cache miss / flash wait)
        inv += int(rng.integers(5000, 12000))
    pos, votes, d, event = det.step(t_ms, score)
    return dict(t_ms=t_ms, seq=seq, fe_us=fe, inv_us=inv, score=score, pos=pos, votes=votes, det=d), event


def build_scenario(seed: int = 7, n1: int = 70, n2: int = 40, pace_s: float = 0.01) -> tuple[list[Chunk], Truth]:
    """Two boot sessions with every kind of damage a serial log suffers; returns (chunks, truth).

    Session 1 (``n1`` inferences, bursts at 10-14 and 40-45): power-on ROM chatter, BOOT, INF
    lines (one every ``pace_s`` s of wall time; device ``t_ms`` advances by 480 ms), with a bad
    checksum (i=5), a truncated line (12), a random-bytes line (20), random bytes glued before a
    valid line (25), a line split over two writes (30), a non-UTF-8 line (35), an ESP_LOG warning
    (40), a ``CRYB/2`` line (45), a blank line (50), a bad checksum (55); the last INF is cut
    mid-line by a software reset. Session 2 (``n2`` inferences, burst at 15-20): reset ROM
    chatter, a second BOOT, INF lines, then half a line (:data:`TAIL`) before the port vanishes.
    """
    rng = np.random.default_rng(seed)
    b = _Builder(pace_s)
    for ln in ROM_CHATTER_POWERON:
        b.garbage(ln)
    b.record("BOOT", BOOT_FIELDS)
    b.record("CFG", BOOT_CFG)
    det = _Detector()
    t0 = 312
    lost_mid = 0
    for i in range(n1):
        fields, event = _inference(rng, det, i, t0 + i * HOP_MS, 10 <= i < 15 or 40 <= i < 46)
        line = format_line("INF", **fields).encode()
        if i == n1 - 1:  # reset cuts this line; the ROM banner follows on the same line
            b.garbage(line[:23] + ROM_CHATTER_SWRESET[0])
            for ln in ROM_CHATTER_SWRESET[1:]:
                b.garbage(ln)
            break
        if i in (5, 55):  # one character of the body damaged: checksum no longer matches
            k = line.index(b"score=") + 8
            bad = line[:k] + (b"7" if line[k:k + 1] != b"7" else b"3") + line[k + 1:]
            b.garbage(bad, pace_s)
            lost_mid += 1
        elif i == 12:
            b.garbage(line[: len(line) // 2], pace_s)
            lost_mid += 1
        elif i == 25:
            b.record("INF", fields, pace_s, prefix=_noise(rng, 17))
        elif i == 30:
            b.record("INF", fields, pace_s, split=True)
        else:
            b.record("INF", fields, pace_s)
        if event:
            b.record("EVT", dict(t_ms=fields["t_ms"], state=event, score=fields["score"]))
        if i == 20:
            b.garbage(_noise(rng, 40))
        elif i == 35:
            b.garbage(b"\xff\xfe\x80 brown-out? \xc3\x28\xa0\xa1")
        elif i == 40:
            b.garbage(b"\x1b[0;33mW (19512) i2s_std: DMA buffer overflow, 512 bytes dropped\x1b[0m")
        elif i == 45:
            body = "CRYB/2 INF t_ms=1 seq=1 fe_us=1 inv_us=1 score=0.1 pos=0 votes=0 det=0 extra=1"
            from cryblock.logformat import checksum
            b.garbage(f"{body} *{checksum(body)}".encode())
        elif i == 50:
            b.blank()
    b.record("BOOT", BOOT_FIELDS)
    b.record("CFG", BOOT_CFG)
    det = _Detector()
    for i in range(n2):
        fields, event = _inference(rng, det, i, t0 + i * HOP_MS, 15 <= i < 21)
        b.record("INF", fields, pace_s)
        if event:
            b.record("EVT", dict(t_ms=fields["t_ms"], state=event, score=fields["score"]))
    # The port vanishes in the middle of a line: those bytes are not a line at all.
    b.chunks.append(Chunk(TAIL))
    b.truth.unterminated_bytes = len(TAIL)
    b.truth.lost_inferences = lost_mid
    return b.chunks, b.truth


def endless_stream(seed: int = 3, pace_s: float = 0.01) -> Iterator[Chunk]:
    """BOOT, CFG, then INF lines forever, with one audio-overrun ERR after the 4th (for
    time-limited captures and the command tests)."""
    rng = np.random.default_rng(seed)
    yield Chunk(format_line("BOOT", **BOOT_FIELDS).encode() + b"\r\n")
    yield Chunk(format_line("CFG", **BOOT_CFG).encode() + b"\r\n")
    det = _Detector()
    i = 0
    while True:
        fields, event = _inference(rng, det, i, 312 + i * HOP_MS, (i // 20) % 3 == 1)
        yield Chunk(format_line("INF", **fields).encode() + b"\r\n", pace_s)
        if event:
            yield Chunk(format_line("EVT", t_ms=fields["t_ms"], state=event, score=fields["score"]).encode()
                        + b"\r\n")
        if i == 3:
            yield Chunk(format_line("ERR", code="overrun", msg="dropped_512_samples").encode() + b"\r\n")
        i += 1


class FakeDevice:
    """Simulated board on a pty. Use as a context manager; ``port`` is the path to open.

    Args:
        chunks: what the firmware writes (list or endless iterator of :class:`Chunk`).
        close_at_end: after the last chunk, wait until the reader has drained the pty, then close
            the master — to the reader the port disappears (like unplugging the board).
        respond: answer configuration commands with CFG/ERR lines (False: a mute device).
        max_threshold: the fake firmware clamps the threshold to this (tests a device that does
            not apply what was asked).
        open_baud: the reader's baud rate; the fake starts once the slave is set to it.
        answer_after_chunks: commands are answered only once this many chunks were written (the
            firmware handles commands in its inference loop, after printing BOOT and CFG).
    """

    def __init__(self, chunks: Iterable[Chunk], close_at_end: bool = True, respond: bool = True,
                 max_threshold: float = 1.0, open_baud: int = 115200, answer_after_chunks: int = 2):
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        attrs = termios.tcgetattr(self.slave)
        attrs[4] = attrs[5] = termios.B9600
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.port = os.ttyname(self.slave)
        os.set_blocking(self.master, False)  # a reader that stops reading must not hang the writer
        self.chunks = chunks
        self.close_at_end = close_at_end
        self.respond = respond
        self.max_threshold = max_threshold
        self.open_baud = getattr(termios, f"B{open_baud}")
        self.commands: list[str] = []
        self.answer_after_chunks = answer_after_chunks
        self._written = 0
        self.config = {"threshold": 0.5, "vote": (2, 3), "hold_ms": 2000}
        self.finished = threading.Event()   # all chunks written
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, daemon=True)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "FakeDevice":
        self._writer.start()
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in (self._writer, self._reader):
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout=5)
        self._close_master()
        try:
            os.close(self.slave)
        except OSError:
            pass

    def _close_master(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.master)

    def _slave_pending(self) -> int:
        buf = fcntl.ioctl(self.slave, termios.FIONREAD, struct.pack("i", 0))
        return struct.unpack("i", buf)[0]

    # -- threads --------------------------------------------------------------------------
    def _wait_open(self) -> bool:
        while not self._stop.is_set():
            if termios.tcgetattr(self.slave)[4] == self.open_baud:
                time.sleep(0.25)  # let pyserial finish open() (it flushes input after tcsetattr)
                self.opened.set()
                return True
            time.sleep(0.005)
        return False

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[n:]

    def _write_loop(self) -> None:
        if not self._wait_open():
            return
        held = False
        for ch in self.chunks:
            if self._stop.is_set():
                break
            if not held:
                self._lock.acquire()
            self._write(ch.data)
            self._written += 1
            held = ch.hold
            if not held:
                self._lock.release()
            if ch.delay:
                time.sleep(ch.delay)
        if held:
            self._lock.release()
        self.finished.set()
        if self.close_at_end:
            deadline = time.monotonic() + 10
            while self._slave_pending() > 0 and time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.01)
            self._stop.set()
            self._reader.join(timeout=5)
            self._close_master()

    def _read_loop(self) -> None:
        import select

        buf = b""
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.master], [], [], 0.02)
                if r:
                    buf += os.read(self.master, 1024)
            except OSError:
                return
            while b"\n" in buf and (self._written >= self.answer_after_chunks or self.finished.is_set()):
                line, buf = buf.split(b"\n", 1)
                cmd = line.decode("ascii", errors="replace").strip()
                if cmd:
                    self.commands.append(cmd)
                    if self.respond:
                        answer = self._answer(cmd)
                        with self._lock:
                            if not self._closed:
                                self._write(answer.encode() + b"\r\n")

    def _answer(self, cmd: str) -> str:
        """Mirror of the firmware's ``cry_det_command`` + ``handle_commands``: CFG after a valid
        ``get``/``set``, ``ERR code=bad_command msg=<why>`` otherwise."""
        def err(msg: str) -> str:
            return format_line("ERR", code="bad_command", msg=msg)

        parts = cmd.split()
        c = dict(self.config)
        if parts[0] != "get":
            if parts[0] != "set" or len(parts) < 2:
                return err("usage:_set_threshold|vote|hold_or_get")
            try:
                if parts[1] == "threshold" and len(parts) == 3:
                    c["threshold"] = min(float(parts[2]), self.max_threshold)
                elif parts[1] == "vote" and len(parts) == 4:
                    c["vote"] = (int(parts[2]), int(parts[3]))
                elif parts[1] == "hold" and len(parts) == 3 and int(parts[2]) >= 0:
                    c["hold_ms"] = int(parts[2])
                else:
                    return err("unknown_setting")
            except ValueError:
                return err(f"usage:_set_{parts[1]}")
            n, m = c["vote"]
            if not (0.0 <= c["threshold"] <= 1.0 and 1 <= n <= m <= 64):
                return err("value_out_of_range")
            self.config = c
        c = self.config
        return format_line("CFG", threshold=float(c["threshold"]), vote=f"{c['vote'][0]}/{c['vote'][1]}",
                           hold_ms=c["hold_ms"])
