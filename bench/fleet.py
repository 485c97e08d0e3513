"""Fleet load: N simulated monitors through a real Mosquitto (started here) into the collector.

Each device publishes availability and discovery on connect, one status every --status-period s
(QoS 0, the firmware's minute by default, staggered), and at --burst-at s every device raises an
alert at once (event on, off 4 s later; QoS 1). Prints messages per second, end-to-end latency
percentiles (device publish → stored row's reception time, from the event's ``time`` stamp) and
checks that every alert is stored exactly once.

    .venv/bin/python bench/fleet.py --devices 200 --seconds 60
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cryblock.blocks.hub import db
from cryblock.blocks.hub.broker import Mosquitto, parse_broker
from cryblock.blocks.hub.collector import Collector
from cryblock.blocks.hub.simulate import Fleet, SimDevice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0, help="simulated time")
    ap.add_argument("--status-period", type=float, default=60.0)
    ap.add_argument("--burst-at", type=float, default=10.0)
    ap.add_argument("--burst-events", type=int, default=2,
                    help="alert events per device in the burst (2: on, and off 4 s later; more: back to back)")
    ap.add_argument("--db", default=None, help="database URL (default: an SQLite file in a temporary folder)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as mq:
        engine = db.open_db(a.db or str(Path(tmp) / "hub.db"))
        b = parse_broker(mq.url)
        col = Collector(engine, b, log=print).start()
        devs = [SimDevice(f"sim{i:04d}", b) for i in range(a.devices)]
        fleet = Fleet(devs)
        t0 = time.monotonic()
        fleet.connect(timeout=120)
        t_conn = time.monotonic() - t0
        n_status = 0
        for k, d in enumerate(devs):
            t = (k / a.devices) * a.status_period
            while t < a.seconds:
                fleet.at(t, d.status)
                n_status += 1
                t += a.status_period
            if a.burst_events == 2:
                fleet.at(a.burst_at, lambda d=d: d.event("on", 0.9))
                fleet.at(a.burst_at + 4.0, lambda d=d: d.event("off", 0.1))
            else:
                for j in range(a.burst_events):
                    fleet.at(a.burst_at, lambda d=d, j=j: d.event("on" if j % 2 == 0 else "off", 0.9))
        fleet.run(timeout=a.seconds + 120)
        n_events = a.burst_events * a.devices
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            with Session(engine) as s:
                if s.scalar(select(func.count()).select_from(db.EventRow)) >= n_events:
                    break
            time.sleep(0.05)
        wall = time.monotonic() - t0
        fleet.close()
        col.stop()
        with Session(engine) as s:
            rows = s.execute(select(db.EventRow.device, db.EventRow.seq, db.EventRow.time, db.EventRow.received)).all()
            statuses = s.scalar(select(func.count()).select_from(db.StatusRow))
        keys = {(r.device, r.seq) for r in rows}
        lat = np.array([(r.received - r.time) * 1000 for r in rows])
        burst = n_events
        rec = np.array([r.received for r in rows])
        span = rec.max() - rec.min() if len(rec) > 1 else float("nan")
        print(f"{a.devices} devices, {a.seconds:g} s simulated, connected in {t_conn:.1f} s; wall {wall:.1f} s")
        print(f"messages received by the collector: {col.counts['received']:,} "
              f"({col.counts['received'] / wall:.0f} msg/s over the run)")
        print(f"alerts: {n_events} sent, {len(rows)} stored, {len(keys)} distinct, lost {n_events - len(keys)}, "
              f"duplicated {len(rows) - len(keys)}; statuses {statuses}/{n_status} (QoS 0)")
        print(f"end-to-end latency (publish → collector), ms: p50 {np.percentile(lat, 50):.1f}, "
              f"p95 {np.percentile(lat, 95):.1f}, p99 {np.percentile(lat, 99):.1f}, max {lat.max():.1f} "
              f"(burst of {burst} alerts from all devices)")
        print(f"burst stored at {len(rows) / span:.0f} alerts/s ({len(rows)} received in {span:.2f} s)")
        print(col.summary())


if __name__ == "__main__":
    main()
