"""The hub on a real Mosquitto broker and real databases: message spec, Home Assistant discovery,
collector (ack after commit, redelivery, broker and database restarts, bad input, floods),
``cryblock collect`` errors, the fleet load test.

Every test starts its own Mosquitto on a free 127.0.0.1 port (Debian's mosquitto, which .ci/run
installs). PostgreSQL tests use a scratch database on the running server and skip with the
reason printed when none answers; the SQLite path always runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cryblock import mqttformat as mf
from cryblock.blocks.hub import db
from cryblock.blocks.hub.broker import connect, make_client, parse_broker
from cryblock.blocks.hub.collector import Collector
from cryblock.blocks.hub.simulate import Fleet, SimDevice

from hubutil import mosquitto_or_skip, pg_scratch_database, wait_for

CLI = [sys.executable, "-m", "cryblock.cli"]


@pytest.fixture
def broker():
    with mosquitto_or_skip() as m:
        yield m


@pytest.fixture
def sqlite_db(tmp_path):
    return str(tmp_path / "hub.db")


def _count(engine, table) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(table))


def _offline(engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(db.Device).where(db.Device.online.is_(False)))


def _events(engine) -> list[tuple]:
    with Session(engine) as s:
        return sorted(s.execute(select(db.EventRow.device, db.EventRow.boot, db.EventRow.seq)).all())


class Publisher:
    """A raw MQTT publisher with its own network thread (payloads the simulator would never send)."""

    def __init__(self, url: str, client_id: str = "test-publisher") -> None:
        self.client = make_client(parse_broker(url), client_id)
        connect(self.client, parse_broker(url))
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ----------------------------------------------------------------------------------- message spec
def test_example_event_roundtrip_and_spec_limits():
    t, p = mf.example_event("nursery")
    assert t == "cryblock/nursery/event"
    e = mf.parse(t, p)
    assert isinstance(e, mf.Event) and (e.device, e.state, e.vote, e.score) == ("nursery", "on", "2/2", 0.8125)
    assert mf.format_event(e) == (t, p)
    d = json.loads(p)
    assert d["v"] == mf.VERSION and set(d) >= {"device", "model", "time", "score", "threshold", "vote", "votes", "seq"}
    st = mf.Status("n1", 2, 5, 61000, 61, 4.7, 5.1, 9.0, 25104, 0, 3, -61, None, "cryblock-0.1.0")
    assert mf.parse(*mf.format_status(st)) == st
    pcm = (np.sin(np.arange(64000) / 5) * 8000).astype(np.int16)
    sn = mf.parse(*mf.format_snippet(mf.Snippet("n1", 2, 7, 16000, 2000, pcm)))
    np.testing.assert_array_equal(sn.pcm, pcm)
    v = mf.Verdict("n1", 2, 7, "confirmed", 0.91, 0.97)
    assert mf.parse(*mf.format_verdict(v)) == v
    assert mf.parse(*mf.availability("n1", False)) == mf.Availability("n1", False)


@pytest.mark.parametrize("topic,payload,reason", [
    ("cryblock/n1/event", b"{not json", "malformed"),
    ("cryblock/n1/event", b"[1,2]", "malformed"),
    ("cryblock/n1/event", json.dumps({**json.loads(mf.example_event("n1")[1]), "v": 2}).encode(), "version"),
    ("cryblock/n1/event", json.dumps({**json.loads(mf.example_event("n1")[1]), "v": "1"}).encode(), "version"),
    ("cryblock/n1/event", json.dumps({**json.loads(mf.example_event("n1")[1]), "score": 1.5}).encode(), "malformed"),
    ("cryblock/n1/event", json.dumps({**json.loads(mf.example_event("n1")[1]), "seq": True}).encode(), "malformed"),
    ("cryblock/n1/event", json.dumps({**json.loads(mf.example_event("n1")[1]), "vote": "3/2"}).encode(), "malformed"),
    ("cryblock/n1/event", mf.example_event("other")[1], "device"),
    ("cryblock/a/b/event", mf.example_event("n1")[1], "device"),
    ("cryblock/bad\x01id/event", mf.example_event("n1")[1], "device"),
    ("cryblock/with space/event", mf.example_event("n1")[1], "device"),
    ("cryblock/" + "x" * 33 + "/event", mf.example_event("n1")[1], "device"),
    ("cryblock/n1/reboot", b"{}", "topic"),
    ("other/n1/event", b"{}", "topic"),
    ("cryblock/n1/event", b" " * 3000, "oversize"),
    ("cryblock/n1/snippet", b"{" + b" " * (mf.MAX_SNIPPET_BYTES + 1), "oversize"),
    ("cryblock/n1/snippet", json.dumps({"v": 1, "device": "n1", "boot": 1, "seq": 1, "sr": 16000, "pre_ms": 0,
                                        "pcm": "not base64!"}).encode(), "malformed"),
    ("cryblock/n1/snippet", json.dumps({"v": 1, "device": "n1", "boot": 1, "seq": 1, "sr": 16000, "pre_ms": 0,
                                        "pcm": "QUJD"}).encode(), "malformed"),  # 3 bytes: not int16 samples
    ("cryblock/n1/availability", b"maybe", "malformed"),
])
def test_bad_messages_are_refused_with_a_reason(topic, payload, reason):
    with pytest.raises(mf.MessageError) as e:
        mf.parse(topic, payload)
    assert e.value.reason == reason, str(e.value)


def test_home_assistant_discovery_config_and_templates():
    """The device-based discovery config: the entities Home Assistant needs, availability on the
    LWT topic, and value templates that render (HA templates are jinja2) to what HA expects."""
    import jinja2

    t, p = mf.discovery("nursery", "ha")
    assert t == "ha/device/cryblock_nursery/config"
    cfg = json.loads(p)
    cmps = cfg["cmps"]
    assert cfg["avty_t"] == "cryblock/nursery/availability" and cfg["dev"]["ids"] == ["cryblock_nursery"]
    assert {c["p"] for c in cmps.values()} == {"binary_sensor", "event", "sensor"}
    assert cmps["cry"]["device_class"] == "sound"
    assert cmps["rssi"]["entity_category"] == cmps["uptime"]["entity_category"] == "diagnostic"
    assert len({c["unique_id"] for c in cmps.values()}) == len(cmps)
    env = jinja2.Environment()
    on, off = (json.loads(mf.format_event(mf.Event("nursery", 1, k, 0, s, sc, 0.5, "2/3", 2, "ab"))[1])
               for k, s, sc in ((0, "on", 0.9), (1, "off", 0.2)))
    assert env.from_string(cmps["cry"]["value_template"]).render(value_json=on) == "ON"
    assert env.from_string(cmps["cry"]["value_template"]).render(value_json=off) == "OFF"
    ev = json.loads(env.from_string(cmps["cry_event"]["value_template"]).render(value_json=on))
    assert ev["event_type"] in cmps["cry_event"]["event_types"] and ev["event_type"] == "cry_started"
    assert float(env.from_string(cmps["score"]["value_template"]).render(value_json=on)) == 0.9
    for bad in ("/ha", "h#a", "h a"):
        with pytest.raises(mf.MessageError):
            mf.discovery("nursery", bad)


def test_device_announces_and_answers_home_assistant_birth(broker):
    """Retained availability and discovery on connect; discovery again when Home Assistant's birth
    message arrives; the broker publishes the last will ``offline`` when the device vanishes."""
    b = parse_broker(broker.url)
    got: list[tuple[str, bytes, bool]] = []
    ha = make_client(b, "fake-home-assistant")
    ha.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload), m.retain))
    ha.connect(b.host, b.port)
    ha.loop_start()
    try:
        dev = SimDevice("nursery", b)
        fleet = Fleet([dev])
        fleet.connect()
        fleet.run()
        ha.subscribe([("homeassistant/device/+/config", 1), ("cryblock/+/availability", 1)])
        wait_for(lambda: len(got) >= 2, what="retained discovery and availability")
        assert ("cryblock/nursery/availability", b"online", True) in got
        assert any(t == "homeassistant/device/cryblock_nursery/config" and r for t, _, r in got)
        got.clear()
        ha.publish("homeassistant/status", b"online", qos=1)
        fleet.pump_for(1.0)
        wait_for(lambda: any(t.endswith("/config") for t, _, _ in got), what="re-announcement")
        assert dev.announcements == 2
        dev.client.socket().close()  # the device vanishes without DISCONNECT: the broker sends its will
        wait_for(lambda: ("cryblock/nursery/availability", b"offline", False) in got, timeout=10, what="last will")
    finally:
        ha.disconnect()
        ha.loop_stop()


# ----------------------------------------------------------------------------------- collector
def _run_fleet(url: str, n_devices: int, events_per_device: int = 2, *, snippet: bool = False):
    b = parse_broker(url)
    devs = [SimDevice(f"dev{i:03d}", b, boot=4) for i in range(n_devices)]
    fleet = Fleet(devs)
    fleet.connect()
    pcm = (np.random.default_rng(0).normal(0, 3000, 64000)).clip(-32768, 32767).astype(np.int16)
    for k, d in enumerate(devs):
        fleet.at(0.001 * k, d.status)
        for j in range(events_per_device):
            def ev(d=d, j=j):
                seq = d.event("on" if j % 2 == 0 else "off", 0.9 if j % 2 == 0 else 0.1)
                if snippet and j % 2 == 0:
                    d.snippet(seq, pcm)
            fleet.at(0.01 + 0.002 * j, ev)
    fleet.run(timeout=120)
    return fleet


def test_collector_stores_everything_once_sqlite(broker, sqlite_db):
    engine = db.open_db(sqlite_db)
    col = Collector(engine, parse_broker(broker.url), log=print).start()
    try:
        fleet = _run_fleet(broker.url, 5, 4, snippet=True)
        wait_for(lambda: _count(engine, db.EventRow) == 20 and _count(engine, db.SnippetRow) == 10, what="storage")
        # a device resending everything (lost PUBACKs): nothing is stored twice
        pub = Publisher(broker.url)
        for d in fleet.devices:
            for seq in range(4):
                pub.send(*mf.format_event(mf.Event(d.device, 4, seq, 0, "on", 0.9, 0.449, "2/2", 2, "9f86d081884c7d65")))
        pub.close()
        wait_for(lambda: col.counts["duplicates"] >= 20, what="duplicates counted")
        fleet.close()
        wait_for(lambda: _offline(engine) == 5, what="devices offline")
    finally:
        col.stop()
    assert _count(engine, db.EventRow) == 20 and _count(engine, db.StatusRow) == 5
    assert len(set(_events(engine))) == 20
    with Session(engine) as s:
        row = s.scalars(select(db.SnippetRow)).first()
        assert (row.sr, row.pre_ms, len(row.pcm)) == (16000, 2000, 128000)
        dev = s.get(db.Device, "dev000")
        assert dev.model == "9f86d081884c7d65" and json.loads(dev.last_status)["rssi"] == -61
    print(col.summary())


def test_collect_restores_the_signal_handlers_it_borrowed(broker, sqlite_db):
    """`collect` run inside another program (here click's CliRunner) hands SIGINT / SIGTERM back
    as it found them: a later Ctrl-C is the program's again (it stayed a no-op before)."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    r = CliRunner().invoke(cli, ["collect", "--broker", broker.url, "--db", sqlite_db, "--duration", "0.5"])
    assert r.exit_code == 0, r.output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_unacknowledged_messages_survive_a_killed_collector(broker, sqlite_db, tmp_path):
    """Ack only after commit: the collector (the real CLI) receives alerts it cannot commit (the
    SQLite file is locked by another writer), is killed with SIGKILL, and a new collector gets
    every one of them from the broker — stored exactly once."""
    import sqlite3

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [*CLI, "collect", "--broker", broker.url, "--db", sqlite_db, "--stats-every", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        wait_for(lambda: any("collect :" in ln for ln in lines), 60, "collector start")
        lock = sqlite3.connect(sqlite_db, timeout=0.1, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        _run_fleet(broker.url, 10, 6)  # 60 alerts, acknowledged by the broker to the devices
        wait_for(lambda: any("database unavailable" in ln for ln in lines), 30, "a failed commit")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    lock.execute("ROLLBACK")
    lock.close()
    engine = db.open_db(sqlite_db)
    assert _count(engine, db.EventRow) == 0  # nothing was committed before the kill
    r = subprocess.run([*cmd, "--duration", "6"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _count(engine, db.EventRow) == 60 and len(set(_events(engine))) == 60, r.stdout + r.stderr


def test_broker_restart_loses_nothing(broker, sqlite_db):
    """Alerts queued for the collector survive a broker restart (persistent session, Mosquitto's
    persistence), the collector reconnects by itself, and alerts sent after the restart arrive too."""
    import sqlite3

    engine = db.open_db(sqlite_db)
    col = Collector(engine, parse_broker(broker.url), log=print).start()
    lock = sqlite3.connect(sqlite_db, timeout=0.1, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # the collector receives but cannot commit: nothing acknowledged
        _run_fleet(broker.url, 5, 10).close()
        wait_for(lambda: col.counts["db_retries"] > 0, what="a failed commit")
        broker.restart(down_s=1.0)
        lock.execute("ROLLBACK")
        wait_for(lambda: col.counts["connects"] >= 2, 60, "reconnection")
        b = parse_broker(broker.url)
        devs = [SimDevice(f"late{i}", b) for i in range(3)]
        fl = Fleet(devs)
        fl.connect()
        for d in devs:
            fl.at(0, lambda d=d: d.event("on", 0.8))
        fl.run()
        fl.close()
        wait_for(lambda: _count(engine, db.EventRow) == 53, 60, "all 53 alerts")
    finally:
        lock.close()
        col.stop()
    assert len(set(_events(engine))) == 53


def test_bad_input_is_counted_and_skipped_nothing_lost(broker, sqlite_db):
    """Malformed JSON, unknown versions, device ids with slashes / control characters, a 10 MB
    payload, a flood from one device: counted by reason, skipped; the collector keeps storing
    good messages and nothing stored before is lost."""
    engine = db.open_db(sqlite_db)
    col = Collector(engine, parse_broker(broker.url), rate=0.01, burst=120, log=print).start()
    pub = Publisher(broker.url)
    try:
        pub.send(*mf.example_event("good"))
        wait_for(lambda: _count(engine, db.EventRow) == 1, what="first event")
        ex = json.loads(mf.example_event("n1")[1])
        pub.send("cryblock/n1/event", b"{broken")
        pub.send("cryblock/n1/event", json.dumps({**ex, "v": 99}).encode())
        pub.send("cryblock/a/b/event", mf.example_event("n1")[1])
        pub.send("cryblock/with space/event", json.dumps({**ex, "device": "with space"}).encode())
        # (Mosquitto itself drops a client that publishes on a topic with control characters)
        pub.send("cryblock/n1/event", json.dumps({**ex, "device": "ctl\x07x"}).encode())
        pub.send("cryblock/n1/snippet", b"{" + b"x" * (10 * 1024 * 1024))
        pub.send("cryblock/n1/snippet", json.dumps({"v": 1, "device": "n1", "boot": 1, "seq": 1, "sr": 16000,
                                                    "pre_ms": 0, "pcm": "%%%"}).encode())
        for k in range(400):  # a flood: far over the device's burst budget
            pub.send(*mf.format_event(mf.Event("flood", 1, k, k, "on", 0.9, 0.5, "1/1", 1, "ab")))
        pub.send(*mf.format_event(mf.Event("good", 3, 18, 1, "off", 0.1, 0.449, "2/2", 0, "9f86d081884c7d65")))
        wait_for(lambda: _count(engine, db.EventRow) >= 2 and col.queue.empty() and col.counts["received"] >= 408,
                 what="all received")
    finally:
        pub.close()
        col.stop()
    c = col.counts
    print(col.summary())
    assert c["skipped_malformed"] == 2 and c["skipped_version"] == 1 and c["skipped_device"] == 3
    assert c["skipped_oversize"] == 1
    assert c["skipped_flood"] == 400 - 120 and _count(engine, db.EventRow) == 2 + 120
    with Session(engine) as s:
        assert [e.seq for e in s.scalars(select(db.EventRow).where(db.EventRow.device == "good"))] == [17, 18]


def test_postgresql_survives_a_database_restart(broker):
    """PostgreSQL by URL: the collector's connections are terminated server-side (as in a server
    restart) in the middle of a stream; it retries, and every alert is stored once."""
    url, drop = pg_scratch_database()
    try:
        engine = db.open_db(url)
        col = Collector(engine, parse_broker(broker.url), log=print).start()
        try:
            import psycopg

            from hubutil import PG_ADMIN

            name = url.rsplit("/", 1)[1]
            fleet_done = threading.Event()

            def kill_backends():
                with psycopg.connect(PG_ADMIN, autocommit=True) as a:
                    while not fleet_done.is_set():
                        a.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                                  "AND pid <> pg_backend_pid()", (name,))
                        time.sleep(0.15)

            killer = threading.Thread(target=kill_backends, daemon=True)
            killer.start()
            _run_fleet(broker.url, 20, 10).close()
            time.sleep(0.5)
            fleet_done.set()
            killer.join()
            wait_for(lambda: _count(engine, db.EventRow) == 200, 60, "200 alerts in PostgreSQL")
        finally:
            col.stop()
        assert len(set(_events(engine))) == 200 and _count(engine, db.StatusRow) == 20
        print(col.summary())
        engine.dispose()
    finally:
        drop()


def test_migrations_match_the_models(sqlite_db):
    """Alembic's autogenerate finds no difference between the migrated schema and the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = db.open_db(sqlite_db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.Base.metadata)
    assert diff == []
    assert db.current_revision(engine) == db.head_revision()


# ----------------------------------------------------------------------------------- CLI errors
def _cli(*args, timeout=60):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _one_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_collect_start_up_errors(tmp_path, broker):
    from cryblock.blocks.hub.broker import free_port

    dead = free_port()
    _one_error(_cli("collect", "--broker", f"mqtt://127.0.0.1:{dead}", "--db", str(tmp_path / "a.db")),
               "--broker", "cannot connect")
    _one_error(_cli("collect", "--broker", "http://127.0.0.1", "--db", str(tmp_path / "a.db")), "--broker")
    _one_error(_cli("collect", "--broker", broker.url, "--db", "mysql://x@y/z"), "--db", "not supported")
    _one_error(_cli("collect", "--broker", broker.url, "--db", "postgresql://u@127.0.0.1:1/x"), "--db")
    _one_error(_cli("collect", "--broker", broker.url, "--db", str(tmp_path / "nodir" / "a.db")), "--db")
    _one_error(_cli("collect", "--broker", broker.url, "--db", str(tmp_path)), "--db")
    _one_error(_cli("collect", "--broker", broker.url, "--confirm"), "--confirm")
    _one_error(_cli("collect", "--broker", "mqtts://127.0.0.1", "--ca", str(tmp_path / "none.pem")), "--ca")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    _one_error(_cli("collect", "--broker", "mqtts://127.0.0.1", "--ca", str(tmp_path / "junk.pem")), "--ca")
    # a read-only database: refused at start-up, its contents untouched
    path = tmp_path / "ro.db"
    engine = db.open_db(str(path))
    with Session(engine) as s, s.begin():
        db.store(s, [(mf.parse(*mf.example_event("n1")), 1.0)])
    engine.dispose()
    before = path.read_bytes()
    _one_error(_cli("collect", "--broker", broker.url, "--db", f"sqlite:///file:{path}?mode=ro&uri=true"),
               "--db", "readonly")
    assert path.read_bytes() == before
    _one_error(_cli("dashboard", "--db", str(tmp_path / "missing.db")), "--db")
    (tmp_path / "plain.db").write_bytes(b"")
    _one_error(_cli("dashboard", "--db", str(tmp_path / "plain.db")), "--db", "not a cryblock hub database")


# ----------------------------------------------------------------------------------- load
def test_fleet_of_200_devices_nothing_lost_nothing_duplicated(broker, sqlite_db):
    """200 simulated monitors through a real Mosquitto into SQLite: every device's status and a
    burst of alert on/off events from all of them at once; every alert stored exactly once."""
    engine = db.open_db(sqlite_db)
    col = Collector(engine, parse_broker(broker.url), log=print).start()
    try:
        t0 = time.monotonic()
        fleet = _run_fleet(broker.url, 200, 4)
        wait_for(lambda: _count(engine, db.EventRow) == 800, 120, "800 alerts")
        dt = time.monotonic() - t0
        fleet.close()
    finally:
        col.stop()
    ev = _events(engine)
    assert len(ev) == len(set(ev)) == 800 and _count(engine, db.Device) == 200
    assert _count(engine, db.StatusRow) == 200 and col.counts["duplicates"] == 0
    print(f"200 devices: {col.counts['received']} messages in {dt:.1f} s (connect, publish and store)")
