"""``cryblock dashboard``: the hub database in a browser (Starlette + uvicorn, jinja2, matplotlib).

Pages:

* ``/`` — devices (availability, last seen, last status), alerts over time per device (plot),
  the alerts with score, second opinion and a play button for the snippet; filters by device and
  time (``?device=…&start=YYYY-MM-DDTHH:MM&end=…``);
* ``/night?device=…&date=YYYY-MM-DD`` — one device's alerts across a night
  (:data:`NIGHT_START_H` h that evening to :data:`NIGHT_END_H` h the next morning, hub time);
* ``/plot.svg`` (same filters), ``/snippet/<id>.wav``.

No authentication: it binds to 127.0.0.1 unless told otherwise, and says so when it is not
loopback. Every device-supplied string reaches the page through jinja2's autoescaping; plot
labels are drawn as paths (matplotlib's SVG default), never as markup. Times are the hub's local
time of reception.
"""
from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import wave
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import db

#: The night view spans from this hour of the chosen date to this hour of the next day (local).
NIGHT_START_H, NIGHT_END_H = 18, 9
#: Alerts listed on one page at most (newest first).
MAX_ALERTS = 500


def _fmt_time(t: float | None) -> str:
    return "–" if t is None else dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _parse_time(value: str | None, what: str) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"{what}: {value[:40]!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None


def alerts(session: Session, device: str | None, start: float | None, end: float | None,
           limit: int = MAX_ALERTS) -> list[dict]:
    """Alert onsets (``on`` events), newest first, each with its snippet's second opinion."""
    q = (select(db.EventRow, db.SnippetRow)
         .outerjoin(db.SnippetRow, (db.SnippetRow.device == db.EventRow.device)
                    & (db.SnippetRow.boot == db.EventRow.boot) & (db.SnippetRow.seq == db.EventRow.seq))
         .where(db.EventRow.state == "on"))
    if device:
        q = q.where(db.EventRow.device == device)
    if start is not None:
        q = q.where(db.EventRow.received >= start)
    if end is not None:
        q = q.where(db.EventRow.received < end)
    out = []
    for ev, sn in session.execute(q.order_by(db.EventRow.received.desc()).limit(limit)):
        out.append({"id": ev.id, "device": ev.device, "received": ev.received, "when": _fmt_time(ev.received),
                    "score": ev.score, "threshold": ev.threshold, "vote": ev.vote, "model": ev.model,
                    "snippet": sn.id if sn else None, "verdict": sn.verdict if sn else None,
                    "teacher": sn.teacher_score if sn else None, "hub": sn.hub_score if sn else None})
    return out


def plot_svg(rows: list[dict], title: str, start: float | None = None, end: float | None = None) -> bytes:
    """Alerts over time, one row per device, coloured by verdict: SVG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    devices = sorted({r["device"] for r in rows})
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.35 * max(1, len(devices))))
    colours = {"confirmed": "#c0392b", "doubtful": "#7f8c8d", None: "#2c7fb8"}
    names = {"confirmed": "confirmed", "doubtful": "doubtful", None: "no second opinion"}
    for verdict in colours:
        sel = [r for r in rows if r["verdict"] == verdict]
        if sel:
            ax.scatter([dt.datetime.fromtimestamp(r["received"]) for r in sel],
                       [devices.index(r["device"]) for r in sel], c=colours[verdict], s=30, label=names[verdict])
    ax.set_yticks(range(len(devices)), devices)
    ax.set_ylim(-0.7, max(0.7, len(devices) - 0.3))
    if start is not None and end is not None:
        ax.set_xlim(dt.datetime.fromtimestamp(start), dt.datetime.fromtimestamp(end))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if rows:
        ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")  # svg.fonttype "path": text becomes outlines, not markup
    plt.close(fig)
    return buf.getvalue()


def wav_bytes(pcm: bytes, sr: int) -> bytes:
    """A mono 16-bit WAV file of int16 LE samples."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm)
    return buf.getvalue()


def make_app(engine):
    """The Starlette application over ``engine`` (read-only use of the hub database)."""
    import jinja2
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                             autoescape=True, undefined=jinja2.StrictUndefined)

    def page(name: str, status: int = 200, **ctx) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status)

    def filters(request):
        qp = request.query_params
        device = qp.get("device") or None
        return device, _parse_time(qp.get("start"), "start"), _parse_time(qp.get("end"), "end")

    def bad(e: Exception) -> HTMLResponse:
        return page("error.html", 400, message=str(e))

    def device_rows(s: Session) -> list[dict]:
        out = []
        for d in s.scalars(select(db.Device).order_by(db.Device.id)):
            st = json.loads(d.last_status) if d.last_status else {}
            out.append({"id": d.id, "online": d.online, "last_seen": _fmt_time(d.last_seen),
                        "availability_at": _fmt_time(d.availability_at), "fw": d.fw or "–", "model": d.model or "–",
                        "uptime_s": st.get("uptime_s"), "rssi": st.get("rssi"), "lat_p95_ms": st.get("lat_p95_ms"),
                        "dropped_audio": st.get("dropped_audio"), "dropped_events": st.get("dropped_events"),
                        "battery": st.get("battery")})
        return out

    async def index(request):
        try:
            device, start, end = filters(request)
        except ValueError as e:
            return bad(e)
        with Session(engine) as s:
            devs = device_rows(s)
            rows = alerts(s, device, start, end)
        return page("index.html", devices=devs, alerts=rows, device=device or "",
                    start=request.query_params.get("start", ""), end=request.query_params.get("end", ""),
                    query=str(request.query_params))

    async def night(request):
        device = request.query_params.get("device") or ""
        date = request.query_params.get("date") or dt.date.today().isoformat()
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            return bad(ValueError(f"date: {date[:40]!r} is not YYYY-MM-DD"))
        start = dt.datetime.combine(day, dt.time(NIGHT_START_H))
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(NIGHT_END_H))
        with Session(engine) as s:
            devs = [d["id"] for d in device_rows(s)]
            rows = alerts(s, device, start.timestamp(), end.timestamp()) if device else []
        return page("night.html", devices=devs, device=device, date=day.isoformat(), alerts=rows,
                    start=start.isoformat(timespec="minutes"), end=end.isoformat(timespec="minutes"))

    async def plot(request):
        try:
            device, start, end = filters(request)
        except ValueError as e:
            return bad(e)
        with Session(engine) as s:
            rows = alerts(s, device, start, end)
        title = "Alerts per device" + (" (newest 500)" if len(rows) == MAX_ALERTS else "")
        return Response(plot_svg(rows, title, start, end), media_type="image/svg+xml")

    async def snippet(request):
        with Session(engine) as s:
            row = s.get(db.SnippetRow, int(request.path_params["sid"]))
            if row is None:
                return Response("no such snippet", status_code=404, media_type="text/plain")
            data = wav_bytes(row.pcm, row.sr)
        return Response(data, media_type="audio/wav")

    return Starlette(routes=[Route("/", index), Route("/night", night), Route("/plot.svg", plot),
                             Route("/snippet/{sid:int}.wav", snippet)])


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
