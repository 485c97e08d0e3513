"""The firmware's serial log format, version 1 (``CRYB/1``): spec, formatter and parser.

Each record is one ASCII line::

    CRYB/1 <KIND> key=value key=value ... *CC

* ``CRYB/1`` – magic and format version; a parser skips lines of other versions.
* ``<KIND>`` – ``BOOT`` (once after reset), ``INF`` (one per inference), ``EVT`` (detector
  state change), ``CFG`` (configuration after a serial command), ``ERR``, and for replayed audio
  ``RDY`` / ``END`` (below).
* values contain no spaces; numbers are decimal; lists are comma-separated.
* ``*CC`` – two upper-case hex digits: XOR of every byte before the space that precedes
  ``*`` (NMEA-style). A line whose checksum does not match is garbage and is dropped.

Fields by kind (units in the names):

=====  ==========================================================================
BOOT   ``model_bytes arena_bytes arena_used ops sr threshold vote hold_ms audio fw``
       (audio = i2s | replay | file)
INF    ``t_ms seq fe_us inv_us score q pos votes det``  (score in [0,1]; q = the model's raw
       int8 output behind it; pos/det 0|1; votes = positives among the last M)
EVT    ``t_ms state score``  (state = ON|OFF)
CFG    ``threshold vote hold_ms``  (vote = N/M)
ERR    ``code msg``
RDY    ``seq samples``  (replay: line ``seq`` queued; ``samples`` received so far)
END    ``seq samples``  (replayed/file audio fully processed: ``seq`` patches)
NET    network state and answers to network commands (``cryblock build --mqtt``:
       templates/esp32s3/main/cry_net.c): ``device boot wifi mqtt …`` or ``error``
=====  ==========================================================================

**Audio replay** (firmware built with ``--audio replay``; templates/esp32s3/main/replay.h): the
host sends ``pcm <seq> <base64>`` lines — base64 (RFC 4648, padded) of 1–512 int16
little-endian samples at the DSP rate, ``seq`` counting from 0 — and waits for ``RDY seq=<seq>``
before the next one (stop and wait: no serial buffer overflows at any link speed); ``pcm end``
closes the audio and the firmware answers ``END`` after its last patch. A malformed or
out-of-order line is answered ``ERR code=replay``. Other lines are detector commands.

The C firmware (templates/esp32s3/main/cry_log.h) writes the same format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MAGIC = "CRYB/1"
KINDS = ("BOOT", "INF", "EVT", "CFG", "ERR", "RDY", "END", "NET")


def checksum(body: str) -> str:
    """XOR of the bytes of ``body`` as two upper-case hex digits."""
    c = 0
    for b in body.encode("ascii", errors="replace"):
        c ^= b
    return f"{c:02X}"


def format_line(kind: str, /, **fields: object) -> str:
    """Build one log line (without newline). Floats are written with 4 decimals."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
    parts = [MAGIC, kind]
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.4f}"
        s = str(v)
        if " " in s or "*" in s:
            raise ValueError(f"field {k}={s!r} contains a space or '*'")
        parts.append(f"{k}={s}")
    body = " ".join(parts)
    return f"{body} *{checksum(body)}"


@dataclass
class Record:
    """A parsed log line: ``kind`` and its ``fields`` (values as strings)."""

    kind: str
    fields: dict[str, str] = field(default_factory=dict)

    def num(self, key: str, default: float | None = None) -> float | None:
        """Field as a finite float, or ``default`` when absent, unparsable, NaN or infinite
        (a checksum-valid ``seq=nan`` or ``t_ms=1e999`` is a broken value, not a number)."""
        try:
            v = float(self.fields[key])
        except (KeyError, ValueError):
            return default
        return v if math.isfinite(v) else default


def field_value(v: str) -> int | float | str:
    """A field value as the JSON summaries show it: an int, a finite float, or the text as sent."""
    try:
        return int(v)
    except ValueError:
        pass
    try:
        f = float(v)
        return f if math.isfinite(f) else v
    except ValueError:
        return v


def parse_line(line: str | bytes) -> Record | None:
    """Parse one line; returns None for anything that is not a valid ``CRYB/1`` record
    (boot-ROM chatter, truncated or corrupted lines, wrong checksum, other versions)."""
    if isinstance(line, bytes):
        line = line.decode("ascii", errors="replace")
    line = line.strip()
    start = line.find(MAGIC + " ")
    if start < 0:
        return None
    line = line[start:]
    body, sep, cc = line.rpartition(" *")
    if not sep or len(cc) != 2 or checksum(body) != cc.upper():
        return None
    tokens = body.split(" ")
    if len(tokens) < 2 or tokens[1] not in KINDS:
        return None
    fields = {}
    for tok in tokens[2:]:
        k, eq, v = tok.partition("=")
        if not eq or not k:
            return None
        fields[k] = v
    return Record(tokens[1], fields)
