"""``cryblock collect``: the broker's cryblock messages into the hub database.

Delivery guarantee: **a QoS-1 message is acknowledged to the broker only after the transaction
that stores it has committed.** The collector connects with a persistent session
(``clean_session = False``, a fixed client id) and paho-mqtt's manual acknowledgement, so

* while the collector is down or restarting, the broker queues the alerts for it;
* a message received but not yet committed when the collector dies (or the database fails) is
  not acknowledged, and the broker delivers it again on the next connection;
* a message delivered twice (QoS-1 redelivery, or a device resending after a lost PUBACK) is
  stored once: rows are unique on ``(device, boot, seq)`` and inserted with ON CONFLICT DO NOTHING.

When the database fails (server restart, SQLite file locked), the batch is rolled back and
retried with back-off (:data:`DB_RETRY_MIN_S` … :data:`DB_RETRY_MAX_S`), nothing is acknowledged
meanwhile; when the broker goes away, paho reconnects with back-off and the session resumes.

Never a crash on input: a message that is not a valid cryblock message (bad topic or device id,
not JSON, unknown version, a field out of range, a payload over the size limit) is counted by
reason and skipped; so is every message over a device's rate budget (:data:`RATE_PER_DEVICE`,
:data:`BURST_PER_DEVICE`: a flooding device cannot fill the database or starve the others).

With ``--confirm`` a second thread scores each stored snippet (:mod:`.opinion`), stores the
teacher and hub scores and the verdict, and publishes it on ``cryblock/<device>/verdict``.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cryblock import mqttformat as mf

from . import db
from .broker import Broker, connect, make_client

#: Default MQTT client id of the collector (its persistent session on the broker is keyed by it).
CLIENT_ID = "cryblock-collector"
#: Messages stored per transaction at most.
BATCH = 500
#: Database retry back-off, s.
DB_RETRY_MIN_S, DB_RETRY_MAX_S = 0.5, 30.0
#: A device's message budget: sustained rate (messages/s) and burst. The firmware sends one status
#: a minute and two events (+ a snippet) per alert; more than this is a fault or an attack.
RATE_PER_DEVICE = 5.0
BURST_PER_DEVICE = 120
#: Received messages waiting for the writer at most (the paho thread waits when it is full).
QUEUE_LIMIT = 20_000

Log = Callable[[str], None]


@dataclass
class _Received:
    topic: str
    payload: bytes
    qos: int
    mid: int
    generation: int
    received: float


class _Bucket:
    """Token bucket per device (:data:`RATE_PER_DEVICE`, :data:`BURST_PER_DEVICE`)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens: dict[str, tuple[float, float]] = {}

    def allow(self, device: str, now: float) -> bool:
        tokens, last = self.tokens.get(device, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self.tokens[device] = (tokens - 1.0 if ok else tokens, now)
        return ok


class Collector:
    """Subscribe to ``cryblock/#`` and store what arrives (see the module docstring).

    Args:
        engine: the hub database (:func:`.db.open_db`).
        broker: where to subscribe (:func:`.broker.parse_broker`).
        client_id: MQTT client id (the persistent session).
        opinion: a :class:`.opinion.SecondOpinion` to score snippets live, or None.
        rate, burst: per-device message budget.
        log: progress and problem lines.

    ``counts`` (a Counter) holds ``received``, ``stored``, ``duplicates``, ``skipped_<reason>``
    (reasons of :class:`cryblock.mqttformat.MessageError`, plus ``flood``), ``db_retries``,
    ``confirmed`` / ``doubtful`` and ``connects``.
    """

    def __init__(self, engine, broker: Broker, *, client_id: str = CLIENT_ID, opinion=None,
                 rate: float = RATE_PER_DEVICE, burst: float = BURST_PER_DEVICE, log: Log = print) -> None:
        self.engine, self.broker, self.opinion, self.log = engine, broker, opinion, log
        self.client = make_client(broker, client_id, clean_session=False, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.counts: Counter = Counter()
        self.queue: queue.Queue[_Received] = queue.Queue(QUEUE_LIMIT)
        self.bucket = _Bucket(rate, burst)
        self.generation = 0
        self.connected = threading.Event()
        self._stop = threading.Event()  # take no more messages; store what was received
        self._abandon = threading.Event()  # give up (stop's timeout passed)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # --- paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if reason.is_failure:
            self.log(f"collect: broker refused the connection: {reason}")
            return
        client.subscribe(mf.SUBSCRIPTION, qos=1)
        self.counts["connects"] += 1
        if self.counts["connects"] > 1:
            self.log(f"collect: reconnected to {self.broker.url}")
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:
        with self._lock:
            self.generation += 1  # acks of this connection's messages must not reach the next one
        self.connected.clear()
        if not self._stop.is_set():
            self.log(f"collect: disconnected from {self.broker.url} ({reason}); reconnecting")

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            gen = self.generation
        self.queue.put(_Received(msg.topic, bytes(msg.payload), msg.qos, msg.mid, gen, db.now()))

    # --- writer thread
    def _parse(self, batch: list[_Received]) -> list[tuple[mf.Message, float]]:
        good = []
        for r in batch:
            self.counts["received"] += 1
            try:
                m = mf.parse(r.topic, r.payload)
            except mf.MessageError as e:
                self.counts[f"skipped_{e.reason}"] += 1
                continue
            if isinstance(m, mf.Verdict):  # our own (or another hub's) opinion: stored with the snippet
                self.counts["verdicts_seen"] += 1
                continue
            if not self.bucket.allow(m.device, r.received):
                self.counts["skipped_flood"] += 1
                continue
            good.append((m, r.received))
        return good

    def _commit(self, batch: list[_Received]) -> None:
        messages = self._parse(batch)
        wait = DB_RETRY_MIN_S
        while True:
            try:
                with Session(self.engine) as s, s.begin():
                    res = db.store(s, messages)
                break
            except SQLAlchemyError as e:
                self.counts["db_retries"] += 1
                self.log(f"collect: database unavailable ({db.db_error(e)}); {len(batch)} message(s) kept "
                         f"unacknowledged, retrying in {wait:g} s")
                if self._abandon.wait(wait):
                    return
                wait = min(DB_RETRY_MAX_S, wait * 2)
        self.counts["stored"] += res["stored"]
        self.counts["duplicates"] += res["duplicates"]
        with self._lock:
            gen = self.generation
        for r in batch:  # committed: acknowledge, in the order received
            if r.qos > 0 and r.generation == gen:
                self.client.ack(r.mid, r.qos)

    def _writer(self) -> None:
        while True:
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)
            if self._abandon.is_set():
                return

    # --- second opinion thread
    def _confirmer(self) -> None:
        failed: set[int] = set()
        while not self._stop.wait(0.3):
            try:
                with Session(self.engine) as s:
                    todo = [(r.id, r.device, r.boot, r.seq, r.pcm, r.sr)
                            for r in db.unscored_snippets(s, exclude=failed)]
                for row_id, device, boot, seq, pcm, sr in todo:  # scored outside any transaction
                    try:
                        op = self.opinion.score_pcm(pcm, sr)
                    except Exception as e:  # noqa: BLE001 - one bad snippet must not stop the others
                        failed.add(row_id)
                        self.counts["opinion_errors"] += 1
                        self.log(f"collect: cannot score the snippet of {device} boot {boot} seq {seq}: {e}")
                        continue
                    with Session(self.engine) as s, s.begin():
                        row = s.get(db.SnippetRow, row_id)
                        row.teacher_score, row.hub_score, row.verdict = op.teacher_score, op.hub_score, op.verdict
                    self.counts[op.verdict] += 1
                    t, p = mf.format_verdict(mf.Verdict(device, boot, seq, op.verdict, op.teacher_score, op.hub_score))
                    self.client.publish(t, p, qos=1)
            except SQLAlchemyError as e:
                self.log(f"collect: second opinion waits for the database ({db.db_error(e)})")
                self._stop.wait(DB_RETRY_MIN_S)

    # --- control
    def start(self) -> "Collector":
        """Connect (raises CryblockError when the broker cannot be reached) and start the threads."""
        connect(self.client, self.broker)
        self.client.loop_start()
        self._threads = [threading.Thread(target=self._writer, name="cryblock-writer", daemon=True)]
        if self.opinion is not None:
            self._threads.append(threading.Thread(target=self._confirmer, name="cryblock-opinion", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, store and acknowledge what was received, disconnect."""
        self.client.on_message = None
        self._stop.set()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, end - time.monotonic()))
        self._abandon.set()
        self.client.disconnect()
        self.client.loop_stop()

    def summary(self) -> str:
        """One line of counts."""
        c = self.counts
        skipped = {k[8:]: v for k, v in c.items() if k.startswith("skipped_") and v}
        line = (f"{c['received']:,} received, {c['stored']:,} stored, {c['duplicates']:,} duplicate(s), "
                f"{sum(skipped.values()):,} skipped")
        if skipped:
            line += " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(skipped.items())) + ")"
        if self.opinion is not None:
            line += f", {c['confirmed']:,} confirmed / {c['doubtful']:,} doubtful"
        if c["db_retries"]:
            line += f", {c['db_retries']:,} database retries"
        return line
