"""``cryblock collect`` and ``cryblock dashboard``: the home hub (cryblock.blocks.hub)."""
from __future__ import annotations

import contextlib
import signal
import threading
import time

import click

from cryblock.errors import CryblockError

from .options import FiniteFloat


def register(group: click.Group) -> None:
    """Add ``collect`` and ``dashboard`` to the ``cryblock`` group."""
    group.add_command(collect)
    group.add_command(dashboard)


@contextlib.contextmanager
def _stop_event():
    """An event set on SIGINT / SIGTERM while the block runs, so that the command finishes what it
    holds and exits 0; the previous handlers are restored afterwards (the command may run inside
    another program, e.g. a test's CliRunner)."""
    ev = threading.Event()
    before = {sig: signal.signal(sig, lambda *_: ev.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield ev
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@click.command()
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True,
              help="MQTT broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS); user name as mqtt://USER@HOST, "
                   "password in $CRYBLOCK_MQTT_PASSWORD.")
@click.option("--ca", type=click.Path(dir_okay=False), default=None,
              help="PEM file of the broker's CA (mqtts://; default: the system's CA store).")
@click.option("--db", "db_url", default="cryblock-hub.db", show_default=True,
              help="Database: an SQLite file (created), or a URL: sqlite:///FILE, postgresql://USER@HOST/DB.")
@click.option("--client-id", default="cryblock-collector", show_default=True,
              help="MQTT client id; the broker keeps this collector's queued messages under it while it is away.")
@click.option("--confirm", is_flag=True, help="Score each snippet live (teacher + hub model of --run) and publish "
                                              "the verdict on cryblock/<device>/verdict.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="cryblock train run folder with hub_model.npz (needed by --confirm).")
@click.option("--hub-threshold", type=FiniteFloat(0, 1), default=None,
              help="Hub score that confirms an alert (default: the run's calibrated threshold).")
@click.option("--max-rate", type=FiniteFloat(0.01, 1e6), default=5.0, show_default=True,
              help="Messages per second one device may send on average (more are counted and skipped).")
@click.option("--burst", type=click.IntRange(1, 10 ** 6), default=120, show_default=True,
              help="Messages one device may send at once above --max-rate.")
@click.option("--stats-every", type=FiniteFloat(1, 86400), default=60.0, show_default=True,
              help="Seconds between count lines.")
@click.option("--duration", type=FiniteFloat(0.1, 10 ** 9), default=None,
              help="Stop after this many seconds (default: run until Ctrl-C / SIGTERM).")
def collect(broker, ca, db_url, client_id, confirm, run_dir, hub_threshold, max_rate, burst, stats_every, duration):
    """Store the monitors' MQTT messages (events, status, availability, snippets) in a database.

    A message is acknowledged to the broker only after it is committed; redeliveries are stored
    once; broker and database outages are waited out; bad messages are counted and skipped."""
    from cryblock.blocks.hub import db
    from cryblock.blocks.hub.broker import parse_broker
    from cryblock.blocks.hub.collector import Collector

    b = parse_broker(broker, ca)
    if confirm and not run_dir:
        raise CryblockError("--confirm: needs --run (the training run whose hub model gives the second opinion)")
    if run_dir and not confirm:
        raise CryblockError("--run: only used with --confirm")
    engine = db.open_db(db_url)
    opinion = None
    if confirm:
        from cryblock.blocks.hub.opinion import SecondOpinion

        opinion = SecondOpinion.from_run(run_dir, threshold=hub_threshold)
        click.echo(f"confirm : teacher + hub model ({opinion.hub.kind}) of {run_dir}, hub threshold "
                   f"{opinion.threshold:.3f}", err=True)
    with _stop_event() as stop:
        col = Collector(engine, b, client_id=client_id, opinion=opinion, rate=max_rate, burst=burst,
                        log=lambda s: click.echo(s, err=True)).start()
        click.echo(f"collect : {b.url} → {db.database_url(db_url).split('://')[0]} database, client id "
                   f"{client_id} (Ctrl-C to stop)", err=True)
        t_end = None if duration is None else time.monotonic() + duration
        next_stats = time.monotonic() + stats_every
        try:
            while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
                stop.wait(0.2)
                if time.monotonic() >= next_stats:
                    click.echo(f"collect : {col.summary()}", err=True)
                    next_stats += stats_every
        finally:
            col.stop()
            engine.dispose()
    click.echo(f"collect : {col.summary()}")


@click.command()
@click.option("--db", "db_url", default="cryblock-hub.db", show_default=True,
              help="The collector's database (SQLite file or URL).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The dashboard has no authentication: anything but loopback shares "
                   "every alert and snippet with whoever reaches it.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
def dashboard(db_url, host, port):
    """Serve the hub's dashboard: devices, alerts over time, second opinions, snippets, night view."""
    import socket

    import uvicorn

    from cryblock.blocks.hub import db
    from cryblock.blocks.hub.dashboard import is_loopback, make_app

    engine = db.open_db(db_url, migrate=False)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise CryblockError(f"--host: {host!r}: {e}") from None
    with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:  # fail now with one line, not in uvicorn
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(infos[0][4])
        except OSError as e:
            raise CryblockError(f"--port: cannot listen on {host}:{port}: {e.strerror or e}") from None
    url = f"http://{host}:{port}/"
    if is_loopback(host):
        click.echo(f"dashboard: {url} (this computer only: no authentication; --host shares it)", err=True)
    else:
        click.echo(f"warning: dashboard on {url} has NO authentication: anyone who can reach it sees every alert "
                   "and can play every snippet", err=True)
    uvicorn.Server(uvicorn.Config(make_app(engine), host=host, port=port, log_level="warning")).run()
