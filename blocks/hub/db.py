"""The hub's database: SQLAlchemy 2 models, Alembic migrations, idempotent writes.

An SQLite file by default (embedded, nothing to set up), PostgreSQL when the URL says so
(``postgresql://user@host/db``, driver psycopg 3); only the URL changes. The schema is managed by
Alembic (``blocks/hub/migrations``): :func:`open_db` upgrades a database to the newest revision
(the collector) or refuses one that is not at it (the dashboard, which only reads).

Tables (times are UNIX seconds, float; ``received`` is the hub's clock):

* ``devices`` — one row per device id: first/last seen, availability (and when it changed), the
  last status (JSON text) and the model and firmware it last reported.
* ``events`` — alert on/off, unique on ``(device, boot, seq)``: a QoS-1 redelivery is a no-op.
* ``statuses`` — status messages, unique on ``(device, boot, seq)``.
* ``snippets`` — int16 LE audio of an alert onset, unique on ``(device, boot, seq)`` (the event's
  seq), with the second opinion once scored (teacher score, hub score, verdict).
"""
from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Iterable

from sqlalchemy import (Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, create_engine,
                        event as sa_event, select)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cryblock import mqttformat as mf
from cryblock.errors import CryblockError

#: The SQLite file ``cryblock collect`` and ``cryblock dashboard`` use when ``--db`` is not given.
DEFAULT_DB = "cryblock-hub.db"


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    online: Mapped[bool | None] = mapped_column(default=None)
    availability_at: Mapped[float | None] = mapped_column(Float, default=None)
    model: Mapped[str | None] = mapped_column(String(64), default=None)
    fw: Mapped[str | None] = mapped_column(String(48), default=None)
    last_status: Mapped[str | None] = mapped_column(Text, default=None)  # JSON of the last Status


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("device", "boot", "seq", name="uq_events_device_boot_seq"),
                      Index("ix_events_device_received", "device", "received"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(32), ForeignKey("devices.id"))
    boot: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    t_ms: Mapped[int] = mapped_column(Integer)
    time: Mapped[float | None] = mapped_column(Float, default=None)
    received: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(3))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    vote: Mapped[str] = mapped_column(String(5))
    votes: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(64))


class StatusRow(Base):
    __tablename__ = "statuses"
    __table_args__ = (UniqueConstraint("device", "boot", "seq", name="uq_statuses_device_boot_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(32), ForeignKey("devices.id"))
    boot: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    received: Mapped[float] = mapped_column(Float)
    uptime_s: Mapped[int] = mapped_column(Integer)
    lat_p50_ms: Mapped[float] = mapped_column(Float)
    lat_p95_ms: Mapped[float] = mapped_column(Float)
    lat_max_ms: Mapped[float] = mapped_column(Float)
    arena_used: Mapped[int] = mapped_column(Integer)
    dropped_audio: Mapped[int] = mapped_column(Integer)
    dropped_events: Mapped[int] = mapped_column(Integer)
    rssi: Mapped[int | None] = mapped_column(Integer, default=None)
    battery: Mapped[float | None] = mapped_column(Float, default=None)


class SnippetRow(Base):
    __tablename__ = "snippets"
    __table_args__ = (UniqueConstraint("device", "boot", "seq", name="uq_snippets_device_boot_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(32), ForeignKey("devices.id"))
    boot: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    received: Mapped[float] = mapped_column(Float)
    sr: Mapped[int] = mapped_column(Integer)
    pre_ms: Mapped[int] = mapped_column(Integer)
    pcm: Mapped[bytes] = mapped_column(LargeBinary)
    teacher_score: Mapped[float | None] = mapped_column(Float, default=None)
    hub_score: Mapped[float | None] = mapped_column(Float, default=None)
    verdict: Mapped[str | None] = mapped_column(String(10), default=None)


# ------------------------------------------------------------------------------------------ engine
def database_url(db: str | os.PathLike) -> str:
    """A SQLAlchemy URL from ``--db``: a URL (``sqlite:///file.db``, ``postgresql://…``) or a plain
    file path (→ SQLite). PostgreSQL URLs without a driver get psycopg 3.

    Raises:
        CryblockError: not a URL of a supported database (SQLite, PostgreSQL).
    """
    s = os.fspath(db)
    if "://" not in s:
        if not s or s.endswith(("/", os.sep)):
            raise CryblockError(f"--db: {s!r} is neither a database URL nor a file name")
        return "sqlite:///" + str(Path(s).expanduser())
    try:
        url = make_url(s)
    except ArgumentError:
        raise CryblockError(f"--db: {s!r} is not a database URL (e.g. sqlite:///hub.db, "
                            "postgresql://user@host/db)") from None
    if url.get_backend_name() == "postgresql":
        if url.get_driver_name() in ("psycopg2", "psycopg2cffi", "pg8000", "asyncpg") or "+" not in url.drivername:
            url = url.set(drivername="postgresql+psycopg")
    elif url.get_backend_name() != "sqlite":
        raise CryblockError(f"--db: {url.get_backend_name()!r} databases are not supported (SQLite or PostgreSQL)")
    return url.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) do not block the collector
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _alembic_config(engine_url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(str(resources.files("cryblock.blocks.hub"))) / "migrations"))
    cfg.set_main_option("sqlalchemy.url", engine_url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest Alembic revision of this cryblock."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (None: not a cryblock hub database, or empty)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_db(db: str | os.PathLike = DEFAULT_DB, *, migrate: bool = True) -> Engine:
    """Connect to the hub database and check it at start-up, so a wrong URL fails in a second.

    Args:
        db: URL or SQLite file name (:func:`database_url`).
        migrate: upgrade the schema to the newest revision (creating the tables in a new
            database); False (read-only users): refuse a database that is not at it.

    Raises:
        CryblockError: invalid URL, server unreachable, authentication failed, read-only or
            unwritable database (with ``migrate``), not a cryblock hub database or an older
            schema (without ``migrate``) — one line naming ``--db``.
    """
    url = database_url(db)
    shown = make_url(url).render_as_string(hide_password=True)
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") \
            and not u.database.startswith("file:"):  # (SQLite URI filenames are left to SQLite)
        p = Path(u.database)
        if p.is_dir():
            raise CryblockError(f"--db: {p} is a folder, not a database file")
        if not migrate and not p.is_file():
            raise CryblockError(f"--db: {p}: no such database (cryblock collect creates it)")
        if migrate and not p.parent.is_dir():
            raise CryblockError(f"--db: folder {p.parent} does not exist")
    try:
        engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5}
                               if u.get_backend_name() == "postgresql" else {})
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise CryblockError(f"--db: {shown}: {e}") from None
    if u.get_backend_name() == "sqlite":
        sa_event.listen(engine, "connect", _sqlite_pragmas)
    try:
        if migrate:
            from alembic import command

            cfg = _alembic_config(url)
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            _check_writable(engine)
        else:
            rev = current_revision(engine)
            if rev is None:
                raise CryblockError(f"--db: {shown}: not a cryblock hub database (run cryblock collect with it first)")
            if rev != head_revision():
                raise CryblockError(f"--db: {shown}: schema revision {rev}, this cryblock reads {head_revision()} "
                                    "(cryblock collect upgrades it)")
    except SQLAlchemyError as e:
        engine.dispose()
        raise CryblockError(f"--db: {shown}: {db_error(e)}") from None
    return engine


def _check_writable(engine: Engine) -> None:
    """A write the collector will need, rolled back (an SQLite file opened read-only passes the
    migration when it is already at head)."""
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            conn.execute(Device.__table__.insert().values(id="", first_seen=0.0, last_seen=0.0))
        finally:
            tx.rollback()


def db_error(e: BaseException) -> str:
    """A database error as one short line (the driver's first line, without SQL or parameters)."""
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return (text[0] if text else type(orig).__name__)[:200]


# ------------------------------------------------------------------------------------------ writes
def _insert_ignore(session: Session, table, rows: list[dict]) -> int:
    """INSERT … ON CONFLICT DO NOTHING (SQLite and PostgreSQL); returns the rows inserted."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    res = session.execute(insert(table).on_conflict_do_nothing().returning(table.c.id), rows)
    return len(res.fetchall())


def store(session: Session, messages: Iterable[tuple[mf.Message, float]]) -> dict[str, int]:
    """Add parsed messages (each with the hub time it was received) to the session, idempotently:
    an ``(device, boot, seq)`` already stored is skipped. The caller commits.

    Returns:
        ``{"stored": new rows, "duplicates": messages already stored}``.
    """
    devices: dict[str, dict] = {}
    rows: dict[str, list[dict]] = {"events": [], "statuses": [], "snippets": []}
    for m, received in messages:
        d = devices.setdefault(m.device, {"first_seen": received, "last_seen": received})
        d["last_seen"] = max(d["last_seen"], received)
        if isinstance(m, mf.Event):
            rows["events"].append(dict(device=m.device, boot=m.boot, seq=m.seq, t_ms=m.t_ms, time=m.time,
                                       received=received, state=m.state, score=m.score, threshold=m.threshold,
                                       vote=m.vote, votes=m.votes, model=m.model))
            d["model"] = m.model
        elif isinstance(m, mf.Status):
            rows["statuses"].append(dict(device=m.device, boot=m.boot, seq=m.seq, received=received,
                                         uptime_s=m.uptime_s, lat_p50_ms=m.lat_p50_ms, lat_p95_ms=m.lat_p95_ms,
                                         lat_max_ms=m.lat_max_ms, arena_used=m.arena_used,
                                         dropped_audio=m.dropped_audio, dropped_events=m.dropped_events,
                                         rssi=m.rssi, battery=m.battery))
            d["last_status"] = json.dumps({k: v for k, v in rows["statuses"][-1].items() if k != "device"})
            if m.fw:
                d["fw"] = m.fw
        elif isinstance(m, mf.Snippet):
            rows["snippets"].append(dict(device=m.device, boot=m.boot, seq=m.seq, received=received, sr=m.sr,
                                         pre_ms=m.pre_ms, pcm=m.pcm.astype("<i2").tobytes()))
        elif isinstance(m, mf.Availability):
            d["online"], d["availability_at"] = m.online, received
    for dev_id, d in devices.items():
        row = session.get(Device, dev_id)
        if row is None:
            row = Device(id=dev_id, first_seen=d["first_seen"], last_seen=d["last_seen"])
            session.add(row)
        row.last_seen = max(row.last_seen, d["last_seen"])
        for k in ("online", "availability_at", "model", "fw", "last_status"):
            if k in d:
                setattr(row, k, d[k])
    session.flush()
    n = sum(len(v) for v in rows.values())
    stored = (_insert_ignore(session, EventRow.__table__, rows["events"])
              + _insert_ignore(session, StatusRow.__table__, rows["statuses"])
              + _insert_ignore(session, SnippetRow.__table__, rows["snippets"]))
    return {"stored": stored, "duplicates": n - stored}


def unscored_snippets(session: Session, limit: int = 20, exclude: Iterable[int] = ()) -> list[SnippetRow]:
    """Snippets without a second opinion yet (oldest first), but those with ids in ``exclude``."""
    q = select(SnippetRow).where(SnippetRow.verdict.is_(None))
    if exclude:
        q = q.where(SnippetRow.id.not_in(list(exclude)))
    return list(session.scalars(q.order_by(SnippetRow.id).limit(limit)))


def now() -> float:
    """The hub clock (UNIX s)."""
    return time.time()
