"""The fleet's MQTT messages, version 1: topics, payloads, Home Assistant discovery; formatter and parser.

One module for both sides, like :mod:`cryblock.logformat` is for the serial log: the firmware
(``templates/esp32s3/main/cry_msg.c``, built with ``cryblock build --mqtt``) writes these
payloads, the hub (:mod:`cryblock.blocks.hub`) and the fleet simulator read and write them.

**Topics** ``cryblock/<device>/<kind>``; ``<device>`` is 1–32 characters of ``A–Z a–z 0–9 _ -``
(:data:`DEVICE_ID_RE`): no ``/``, no MQTT wildcards ``+ #``, no spaces or control characters.

==============  ====  ========  ====================================================================
kind            QoS   retained  payload
==============  ====  ========  ====================================================================
``event``       1     no        alert on/off (JSON, below)
``status``      0     no        health, every :data:`STATUS_PERIOD_S` (JSON)
``availability`` 1    yes       ``online``; the broker publishes the last will ``offline``
``snippet``     1     no        int16 audio around an alert onset (JSON + base64); off by default
``verdict``     1     no        the hub's second opinion on an alert (JSON; published by the hub)
==============  ====  ========  ====================================================================

**JSON payloads** are objects with ``"v": 1`` (:data:`VERSION`); a payload with another ``v`` is
counted and skipped by readers (never guessed at); unknown extra keys are ignored. Every
message of a device carries ``device`` (equal to the topic's) and ``boot`` (the device's boot
counter, kept in NVS), and ``seq`` — a counter per kind that restarts at 0 every boot, so
``(device, boot, seq)`` names a message uniquely: a QoS-1 redelivery is recognised and stored once.

* ``event``: ``t_ms`` (ms since boot), ``time`` (UNIX s once the device clock is set by SNTP,
  else null), ``state`` ``on``/``off``, ``score`` (the patch score, [0, 1]), ``threshold``,
  ``vote`` (``"N/M"``), ``votes`` (positives among the last M), ``model`` (first 16 hex digits
  of the INT8 model's SHA-256).
* ``status``: ``t_ms``, ``uptime_s``, ``lat_p50_ms`` ``lat_p95_ms`` ``lat_max_ms`` (front-end +
  inference time per patch over the last :data:`LATENCY_WINDOW` patches), ``arena_used`` (bytes),
  ``dropped_audio`` (samples lost to a full ring), ``dropped_events`` (alerts pushed out of the
  full outbox while offline), ``rssi`` (dBm, or null), ``battery`` (%, or null), ``fw``.
* ``snippet``: ``seq`` = the ``event`` seq of the alert onset it belongs to, ``sr`` (Hz),
  ``pre_ms`` (audio before the onset), ``pcm`` (base64 of int16 little-endian mono samples).
* ``verdict``: ``seq`` = the event's, ``verdict`` ``confirmed``/``doubtful``, ``teacher`` and
  ``hub`` scores.

**Home Assistant** (MQTT discovery, device-based: ``<prefix>/device/<object id>/config``,
retained; :func:`discovery`): a ``binary_sensor`` (``device_class: sound``), an ``event`` entity
(``cry_started`` / ``cry_ended``), diagnostic sensors (score, RSSI, uptime) and the hub's second
opinion, all with the ``availability`` topic. The device sends it on every connect and again when
Home Assistant's birth message (``<prefix>/status`` = ``online``) arrives.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VERSION = 1
ROOT = "cryblock"
KINDS = ("event", "status", "availability", "snippet", "verdict")
#: QoS per kind (see the table above).
QOS = {"event": 1, "status": 0, "availability": 1, "snippet": 1, "verdict": 1}
#: Device ids: letters, digits, ``_`` and ``-``; 1–32 characters (also a valid Home Assistant
#: object id and NVS string).
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
ONLINE, OFFLINE = "online", "offline"
#: Largest event/status/verdict payload a reader accepts, bytes (the firmware's are < 400).
MAX_MESSAGE_BYTES = 2048
#: Longest snippet, s, and so the largest snippet payload (base64 of 16-bit samples at
#: :data:`MAX_SNIPPET_RATE` plus the JSON around it).
MAX_SNIPPET_SECONDS = 10.0
MAX_SNIPPET_RATE = 48000
MAX_SNIPPET_BYTES = 4 * math.ceil(MAX_SNIPPET_SECONDS * MAX_SNIPPET_RATE * 2 / 3) + 512
#: The firmware's rates: one status message per minute; latency percentiles over this many patches.
STATUS_PERIOD_S = 60
LATENCY_WINDOW = 64
#: Snippet window around an alert onset, s (the hub's second opinion scores this audio).
SNIPPET_PRE_S = 2.0
SNIPPET_POST_S = 2.0
HA_PREFIX = "homeassistant"
VERDICTS = ("confirmed", "doubtful")
_HEX_RE = re.compile(r"[0-9a-f]{1,64}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._+-]{1,48}")
_VOTE_RE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})")


class MessageError(ValueError):
    """A message a reader must count and skip. ``reason`` is one of ``topic`` (not a cryblock
    topic, or a kind this version does not know), ``device`` (bad device id, or the payload names
    another device than the topic), ``oversize``, ``version`` (``v`` is not :data:`VERSION`) and
    ``malformed`` (not JSON, a field missing, out of range or of the wrong type)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def valid_device_id(device: object) -> bool:
    """True for a usable device id (:data:`DEVICE_ID_RE`)."""
    return isinstance(device, str) and DEVICE_ID_RE.fullmatch(device) is not None


def check_device_id(device: object) -> str:
    """``device`` if valid, else :class:`MessageError` (reason ``device``) saying what is wrong."""
    if valid_device_id(device):
        return device  # type: ignore[return-value]
    raise MessageError("device", f"device id {device!r} is not 1-32 characters of A-Z a-z 0-9 _ - "
                                 "(no '/', '+', '#', spaces or control characters)")


def topic(device: str, kind: str) -> str:
    """``cryblock/<device>/<kind>``. Raises MessageError for a bad device id or kind."""
    if kind not in KINDS:
        raise MessageError("topic", f"unknown message kind {kind!r}")
    return f"{ROOT}/{check_device_id(device)}/{kind}"


#: What a collector subscribes to (every level, so that bad topics are seen and counted).
SUBSCRIPTION = f"{ROOT}/#"


def parse_topic(t: str) -> tuple[str, str]:
    """``(device, kind)`` of a cryblock topic. Raises MessageError (``topic`` or ``device``)."""
    parts = t.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise MessageError("topic", f"not a {ROOT}/<device>/<kind> topic: {t[:80]!r}")
    if parts[-1] not in KINDS:
        raise MessageError("topic", f"unknown message kind {parts[-1][:40]!r}")
    return check_device_id("/".join(parts[1:-1])), parts[-1]  # a '/' in the id fails the check


# ------------------------------------------------------------------------------------------ messages
@dataclass(frozen=True)
class Event:
    """An alert switching on or off (topic ``event``)."""

    device: str
    boot: int
    seq: int
    t_ms: int
    state: str
    score: float
    threshold: float
    vote: str
    votes: int
    model: str
    time: float | None = None


@dataclass(frozen=True)
class Status:
    """Periodic health (topic ``status``)."""

    device: str
    boot: int
    seq: int
    t_ms: int
    uptime_s: int
    lat_p50_ms: float
    lat_p95_ms: float
    lat_max_ms: float
    arena_used: int
    dropped_audio: int
    dropped_events: int
    rssi: int | None = None
    battery: float | None = None
    fw: str = ""


@dataclass(frozen=True)
class Snippet:
    """Audio around an alert onset (topic ``snippet``); ``pcm`` int16 ``[n]`` at ``sr`` Hz."""

    device: str
    boot: int
    seq: int
    sr: int
    pre_ms: int
    pcm: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Verdict:
    """The hub's second opinion on the alert ``(device, boot, seq)`` (topic ``verdict``)."""

    device: str
    boot: int
    seq: int
    verdict: str
    teacher: float
    hub: float


@dataclass(frozen=True)
class Availability:
    """``online`` / ``offline`` (topic ``availability``)."""

    device: str
    online: bool


Message = Event | Status | Snippet | Verdict | Availability


# ------------------------------------------------------------------------------------------ format
def _dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), allow_nan=False).encode()


def _r4(x: float) -> float:
    return float(f"{float(x):.4f}")


def format_event(e: Event) -> tuple[str, bytes]:
    """``(topic, payload)`` of an :class:`Event` (floats with 4 decimals, like the firmware)."""
    return topic(e.device, "event"), _dumps({
        "v": VERSION, "device": e.device, "boot": e.boot, "seq": e.seq, "t_ms": e.t_ms,
        "time": None if e.time is None else round(float(e.time), 3), "state": e.state, "score": _r4(e.score),
        "threshold": _r4(e.threshold), "vote": e.vote, "votes": e.votes, "model": e.model})


def format_status(s: Status) -> tuple[str, bytes]:
    """``(topic, payload)`` of a :class:`Status`."""
    return topic(s.device, "status"), _dumps({
        "v": VERSION, "device": s.device, "boot": s.boot, "seq": s.seq, "t_ms": s.t_ms, "uptime_s": s.uptime_s,
        "lat_p50_ms": round(s.lat_p50_ms, 2), "lat_p95_ms": round(s.lat_p95_ms, 2),
        "lat_max_ms": round(s.lat_max_ms, 2), "arena_used": s.arena_used, "dropped_audio": s.dropped_audio,
        "dropped_events": s.dropped_events, "rssi": s.rssi, "battery": s.battery, "fw": s.fw})


def format_snippet(s: Snippet) -> tuple[str, bytes]:
    """``(topic, payload)`` of a :class:`Snippet` (``pcm`` as base64 of int16 LE)."""
    pcm = np.asarray(s.pcm, dtype="<i2")
    return topic(s.device, "snippet"), _dumps({
        "v": VERSION, "device": s.device, "boot": s.boot, "seq": s.seq, "sr": s.sr, "pre_ms": s.pre_ms,
        "pcm": base64.b64encode(pcm.tobytes()).decode("ascii")})


def format_verdict(v: Verdict) -> tuple[str, bytes]:
    """``(topic, payload)`` of a :class:`Verdict`."""
    return topic(v.device, "verdict"), _dumps({
        "v": VERSION, "device": v.device, "boot": v.boot, "seq": v.seq, "verdict": v.verdict,
        "teacher": _r4(v.teacher), "hub": _r4(v.hub)})


def availability(device: str, online: bool = True) -> tuple[str, bytes]:
    """``(topic, payload)`` of the retained availability message (also the last will's)."""
    return topic(device, "availability"), (ONLINE if online else OFFLINE).encode()


def example_event(device_id: str = "nursery") -> tuple[str, bytes]:
    """A realistic alert-on event of ``device_id`` for tests and tools: ``(topic, payload)``."""
    return format_event(Event(device=device_id, boot=3, seq=17, t_ms=7_384_512, time=1_767_225_600.25, state="on",
                              score=0.8125, threshold=0.449, vote="2/2", votes=2, model="9f86d081884c7d65"))


# ------------------------------------------------------------------------------------------ parse
def _obj(payload: bytes, limit: int) -> dict:
    if len(payload) > limit:
        raise MessageError("oversize", f"payload of {len(payload):,} bytes (at most {limit:,})")
    try:
        d = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MessageError("malformed", "payload is not JSON") from None
    if not isinstance(d, dict):
        raise MessageError("malformed", "payload is not a JSON object")
    if "v" not in d:
        raise MessageError("malformed", "payload has no version field 'v'")
    if d["v"] != VERSION or isinstance(d["v"], bool):
        raise MessageError("version", f"message version {str(d['v'])[:20]!r} (this reader knows {VERSION})")
    return d


def _int(d: dict, k: str, lo: int = 0, hi: int = 2 ** 53) -> int:
    v = d.get(k)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise MessageError("malformed", f"field {k!r}: want an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    return v


def _num(d: dict, k: str, lo: float, hi: float, *, null: bool = False) -> float | None:
    v = d.get(k)
    if v is None and null:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise MessageError("malformed", f"field {k!r}: want a number in [{lo:g}, {hi:g}], got {str(v)[:40]!r}")
    return float(v)


def _str(d: dict, k: str, pattern: re.Pattern, *, choices: tuple[str, ...] | None = None) -> str:
    v = d.get(k)
    if not isinstance(v, str) or (choices and v not in choices) or (not choices and not pattern.fullmatch(v)):
        raise MessageError("malformed", f"field {k!r}: unexpected value {str(v)[:40]!r}")
    return v


def _ids(d: dict, device: str) -> tuple[int, int]:
    if d.get("device") != device:
        raise MessageError("device", f"payload device {str(d.get('device'))[:40]!r} differs from the topic's {device!r}")
    return _int(d, "boot", 0, 2 ** 32 - 1), _int(d, "seq", 0, 2 ** 32 - 1)


def parse(t: str, payload: bytes) -> Message:
    """Parse one message received on topic ``t``.

    Returns:
        :class:`Event`, :class:`Status`, :class:`Snippet`, :class:`Verdict` or :class:`Availability`.

    Raises:
        MessageError: with ``reason`` (see the class) — readers count it and skip the message.
    """
    device, kind = parse_topic(t)
    if kind == "availability":
        if payload not in (ONLINE.encode(), OFFLINE.encode()):
            raise MessageError("malformed", f"availability payload {payload[:20]!r} (want online/offline)")
        return Availability(device, payload == ONLINE.encode())
    d = _obj(payload, MAX_SNIPPET_BYTES if kind == "snippet" else MAX_MESSAGE_BYTES)
    boot, seq = _ids(d, device)
    if kind == "event":
        vote = _str(d, "vote", _VOTE_RE)
        n, m = (int(x) for x in _VOTE_RE.fullmatch(vote).groups())
        if not 1 <= n <= m <= 64:
            raise MessageError("malformed", f"field 'vote': N/M with 1 <= N <= M <= 64, got {vote!r}")
        return Event(device, boot, seq, _int(d, "t_ms"), _str(d, "state", _TOKEN_RE, choices=("on", "off")),
                     _num(d, "score", 0, 1), _num(d, "threshold", 0, 1), vote, _int(d, "votes", 0, 64),
                     _str(d, "model", _HEX_RE), _num(d, "time", 0, 1e11, null=True))
    if kind == "status":
        fw = d.get("fw", "")
        if not isinstance(fw, str) or (fw and not _TOKEN_RE.fullmatch(fw)):
            raise MessageError("malformed", f"field 'fw': unexpected value {str(fw)[:40]!r}")
        rssi = _num(d, "rssi", -127, 20, null=True)
        return Status(device, boot, seq, _int(d, "t_ms"), _int(d, "uptime_s"), _num(d, "lat_p50_ms", 0, 1e6),
                      _num(d, "lat_p95_ms", 0, 1e6), _num(d, "lat_max_ms", 0, 1e6), _int(d, "arena_used", 0, 2 ** 31),
                      _int(d, "dropped_audio"), _int(d, "dropped_events"), None if rssi is None else int(rssi),
                      _num(d, "battery", 0, 100, null=True), fw)
    if kind == "snippet":
        sr = _int(d, "sr", 8000, MAX_SNIPPET_RATE)
        pre_ms = _int(d, "pre_ms", 0, int(MAX_SNIPPET_SECONDS * 1000))
        b64 = d.get("pcm")
        try:
            raw = base64.b64decode(b64, validate=True) if isinstance(b64, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None or len(raw) % 2 or not raw:
            raise MessageError("malformed", "field 'pcm': not base64 of int16 samples")
        pcm = np.frombuffer(raw, dtype="<i2").astype(np.int16)
        if len(pcm) > MAX_SNIPPET_SECONDS * sr:
            raise MessageError("oversize", f"snippet of {len(pcm) / sr:.1f} s (at most {MAX_SNIPPET_SECONDS:g} s)")
        if pre_ms > len(pcm) * 1000 // sr:
            raise MessageError("malformed", f"field 'pre_ms': {pre_ms} ms is longer than the snippet")
        return Snippet(device, boot, seq, sr, pre_ms, pcm)
    # verdict
    return Verdict(device, boot, seq, _str(d, "verdict", _TOKEN_RE, choices=VERDICTS), _num(d, "teacher", 0, 1),
                   _num(d, "hub", 0, 1))


# ------------------------------------------------------------------------------------------ discovery
def discovery(device: str, prefix: str = HA_PREFIX, *, fw: str = "") -> tuple[str, bytes]:
    """Home Assistant's device-based MQTT discovery config of ``device``: ``(topic, payload)``,
    published retained at QoS 1 (home-assistant.io, "MQTT" → device discovery payload: ``dev``,
    ``o``, ``cmps``; shared options such as ``avty_t`` and ``qos`` at the top level).

    Components: ``cry`` binary_sensor (``device_class: sound``, ON while the detector is on),
    ``cry_event`` event (``cry_started`` / ``cry_ended``, with the score), diagnostic sensors
    ``score``, ``rssi`` (dBm), ``uptime`` (s), and ``opinion`` (the hub's ``confirmed`` /
    ``doubtful``). The C firmware writes the same config (tests compare them).

    Raises:
        MessageError: bad device id or prefix (``prefix``: 1–64 characters of the device-id set
            plus ``/``, no wildcards).
    """
    check_device_id(device)
    if not re.fullmatch(r"[A-Za-z0-9_/-]{1,64}", prefix) or prefix.startswith("/") or prefix.endswith("/"):
        raise MessageError("topic", f"discovery prefix {prefix!r}: 1-64 characters of A-Z a-z 0-9 _ - /")
    uid = f"cryblock_{device}"
    ev, st = topic(device, "event"), topic(device, "status")
    on = "{{ 'ON' if value_json.state == 'on' else 'OFF' }}"
    cmps = {
        "cry": {"p": "binary_sensor", "name": "Crying", "device_class": "sound", "unique_id": f"{uid}_cry",
                "state_topic": ev, "value_template": on},
        "cry_event": {"p": "event", "name": "Cry", "unique_id": f"{uid}_event", "state_topic": ev,
                      "event_types": ["cry_started", "cry_ended"],
                      "value_template": "{{ {'event_type': 'cry_started' if value_json.state == 'on' else "
                                        "'cry_ended', 'score': value_json.score} | tojson }}"},
        "score": {"p": "sensor", "name": "Cry score", "unique_id": f"{uid}_score", "state_topic": ev,
                  "value_template": "{{ value_json.score }}", "state_class": "measurement",
                  "entity_category": "diagnostic"},
        "rssi": {"p": "sensor", "name": "Wi-Fi signal", "unique_id": f"{uid}_rssi", "state_topic": st,
                 "value_template": "{{ value_json.rssi }}", "device_class": "signal_strength",
                 "unit_of_measurement": "dBm", "state_class": "measurement", "entity_category": "diagnostic"},
        "uptime": {"p": "sensor", "name": "Uptime", "unique_id": f"{uid}_uptime", "state_topic": st,
                   "value_template": "{{ value_json.uptime_s }}", "device_class": "duration",
                   "unit_of_measurement": "s", "entity_category": "diagnostic"},
        "opinion": {"p": "sensor", "name": "Second opinion", "unique_id": f"{uid}_opinion",
                    "state_topic": topic(device, "verdict"), "value_template": "{{ value_json.verdict }}"},
    }
    cfg = {"dev": {"ids": [uid], "name": f"Cry monitor {device}", "mf": "cryblock", "mdl": "cry detector",
                   **({"sw": fw} if fw else {})},
           "o": {"name": "cryblock", "sw": fw or "cryblock"},
           "avty_t": topic(device, "availability"), "qos": 1, "cmps": cmps}
    return f"{prefix}/device/{uid}/config", _dumps(cfg)


def ha_status_topic(prefix: str = HA_PREFIX) -> str:
    """Home Assistant's birth/will topic: discovery is sent again when ``online`` arrives on it."""
    return f"{prefix}/status"
