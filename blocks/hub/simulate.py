"""Simulated monitors: many MQTT devices speaking :mod:`cryblock.mqttformat`, from one thread.

Each :class:`SimDevice` behaves as the firmware built with ``cryblock build --mqtt`` does on the
network: last will ``offline`` and retained ``online`` on its availability topic, its retained Home
Assistant discovery config, sent again when ``homeassistant/status`` = ``online`` arrives; events
(QoS 1), a status every :data:`~cryblock.mqttformat.STATUS_PERIOD_S` (QoS 0), optional snippets.
:class:`Fleet` drives hundreds of them from one thread (paho's external event loop: ``select``
over their sockets), for the tests and ``bench/fleet.py``.
"""
from __future__ import annotations

import heapq
import itertools
import select
import time
from dataclasses import dataclass, field

import numpy as np

from cryblock import mqttformat as mf

from .broker import Broker, make_client


class SimDevice:
    """One simulated monitor (see the module docstring); ``boot`` is its boot counter."""

    def __init__(self, device: str, broker: Broker, *, boot: int = 1, ha_prefix: str = mf.HA_PREFIX,
                 model: str = "9f86d081884c7d65", fw: str = "cryblock-sim") -> None:
        self.device, self.boot, self.ha_prefix, self.model, self.fw = device, boot, ha_prefix, model, fw
        self.client = make_client(broker, f"cryblock-sim-{device}", clean_session=True)
        self.client.will_set(*mf.availability(device, online=False), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = lambda c, u, mid, reason, props: self.unacked.discard(mid)
        self.broker = broker
        self.seq = _Seq()
        self.unacked: set[int] = set()  # QoS-1 messages the broker has not acknowledged yet
        self.t0 = time.monotonic()
        self.announcements = 0
        self.connected = False

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if reason.is_failure:
            return
        self.connected = True
        self._pub(*mf.availability(self.device, True), qos=1, retain=True)
        self.announce()
        client.subscribe(mf.ha_status_topic(self.ha_prefix), qos=1)

    def _pub(self, t: str, payload: bytes, qos: int, retain: bool = False) -> None:
        info = self.client.publish(t, payload, qos=qos, retain=retain)
        if qos > 0:
            self.unacked.add(info.mid)

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == mf.ha_status_topic(self.ha_prefix) and msg.payload == b"online":
            self.announce()

    def announce(self) -> None:
        """Publish the retained Home Assistant discovery config."""
        self._pub(*mf.discovery(self.device, self.ha_prefix, fw=self.fw), qos=1, retain=True)
        self.announcements += 1

    def t_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    def event(self, state: str, score: float, *, stamp: float | None = None) -> int:
        """Publish an alert on/off event (QoS 1); ``time`` = ``stamp`` or now. Returns its seq."""
        seq = self.seq.next("event")
        self._pub(*mf.format_event(mf.Event(
            self.device, self.boot, seq, self.t_ms(), state, score, 0.449, "2/2", 2 if state == "on" else 0,
            self.model, time.time() if stamp is None else stamp)), qos=1)
        return seq

    def status(self, rssi: int = -61) -> None:
        """Publish a status (QoS 0)."""
        self._pub(*mf.format_status(mf.Status(
            self.device, self.boot, self.seq.next("status"), self.t_ms(), self.t_ms() // 1000, 4.7, 5.1, 6.0,
            25104, 0, 0, rssi, None, self.fw)), qos=0)

    def snippet(self, event_seq: int, pcm: np.ndarray, sr: int = 16000,
                pre_ms: int = int(mf.SNIPPET_PRE_S * 1000)) -> None:
        """Publish the audio of the alert ``event_seq`` (QoS 1)."""
        self._pub(*mf.format_snippet(mf.Snippet(self.device, self.boot, event_seq, sr, pre_ms, pcm)), qos=1)


class _Seq:
    """Per-kind sequence numbers from 0."""

    def __init__(self) -> None:
        self.c: dict[str, itertools.count] = {}

    def next(self, kind: str) -> int:
        return next(self.c.setdefault(kind, itertools.count()))


@dataclass(order=True)
class _Job:
    at: float
    n: int
    fn: object = field(compare=False)


class Fleet:
    """Many :class:`SimDevice` s on one thread. ``at(delay_s, fn)`` schedules ``fn()`` (which
    publishes); :meth:`run` connects every device and runs the loop until the schedule is done and
    every QoS-1 message is acknowledged by the broker (or ``timeout``)."""

    def __init__(self, devices: list[SimDevice]) -> None:
        self.devices = devices
        self.jobs: list[_Job] = []
        self._n = itertools.count()
        self.start = time.monotonic()

    def at(self, delay_s: float, fn) -> None:
        heapq.heappush(self.jobs, _Job(delay_s, next(self._n), fn))

    def _pump(self, timeout: float) -> None:
        socks = {}
        for d in self.devices:
            s = d.client.socket()
            if s is not None:
                socks[s] = d.client
        if not socks:
            time.sleep(timeout)
            return
        want_w = [s for s, c in socks.items() if c.want_write()]
        r, w, _ = select.select(list(socks), want_w, [], timeout)
        for s in r:
            socks[s].loop_read()
        for s in w:
            socks[s].loop_write()
        for c in socks.values():
            c.loop_misc()

    def connect(self, timeout: float = 30.0) -> None:
        """Connect every device (in parallel) and wait for their CONNACKs."""
        for d in self.devices:
            d.client.connect_async(d.broker.host, d.broker.port, keepalive=60)
            d.client.reconnect()
        end = time.monotonic() + timeout
        while not all(d.connected for d in self.devices):
            if time.monotonic() > end:
                raise TimeoutError(f"{sum(not d.connected for d in self.devices)} simulated device(s) not connected")
            self._pump(0.05)
        self.start = time.monotonic()

    def pending(self) -> int:
        """QoS-1 messages not yet acknowledged by the broker, over all devices."""
        return sum(len(d.unacked) for d in self.devices)

    def run(self, timeout: float = 600.0) -> None:
        end = time.monotonic() + timeout
        while (self.jobs or self.pending()) and time.monotonic() < end:
            now = time.monotonic() - self.start
            while self.jobs and self.jobs[0].at <= now:
                heapq.heappop(self.jobs).fn()
            wait = min(0.05, max(0.0, self.jobs[0].at - now)) if self.jobs else 0.05
            self._pump(wait)

    def pump_for(self, seconds: float) -> None:
        """Keep the connections alive (and answer broker messages) for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._pump(0.05)

    def close(self) -> None:
        """Shut every device down cleanly: retained ``offline`` (a clean DISCONNECT sends no will),
        then DISCONNECT."""
        for d in self.devices:
            if d.connected:
                d._pub(*mf.availability(d.device, online=False), qos=1, retain=True)
        self.run(timeout=10)
        for d in self.devices:
            d.client.disconnect()
        self.pump_for(0.2)
