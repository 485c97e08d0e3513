"""``cryblock dashboard`` in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright; no browser is downloaded): the page loads, shows a seeded alert with its second
opinion, the play button has the audio, device-supplied strings stay text, the night view works,
and the server binds to loopback by default and says so."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from sqlalchemy.orm import Session

from cryblock.blocks.hub import db
from cryblock.blocks.hub.broker import free_port

from hubutil import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A hub database with two devices, alerts (one with a confirmed snippet) and a status; the
    firmware string of one device holds markup, as a hostile writer of the database could."""
    path = tmp_path_factory.mktemp("dash") / "hub.db"
    engine = db.open_db(str(path))
    now = time.time()
    t = np.arange(32000) / 16000.0
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes()
    with Session(engine) as s, s.begin():
        s.add(db.Device(id="nursery", first_seen=now - 3600, last_seen=now, online=True, availability_at=now - 3600,
                        model="9f86d081884c7d65", fw=EVIL, last_status=json.dumps({"uptime_s": 3600, "rssi": -58,
                                                                                   "lat_p95_ms": 5.2})))
        s.add(db.Device(id="bedroom", first_seen=now - 7200, last_seen=now - 60, online=False))
        s.flush()
        s.add(db.EventRow(device="nursery", boot=3, seq=17, t_ms=1000, time=now - 120, received=now - 120, state="on",
                          score=0.8125, threshold=0.449, vote="2/2", votes=2, model="9f86d081884c7d65"))
        s.add(db.EventRow(device="nursery", boot=3, seq=18, t_ms=5000, time=now - 116, received=now - 116,
                          state="off", score=0.1, threshold=0.449, vote="2/2", votes=0, model="9f86d081884c7d65"))
        s.add(db.EventRow(device="bedroom", boot=1, seq=0, t_ms=1000, received=now - 300, state="on", score=0.6,
                          threshold=0.449, vote="2/2", votes=2, model="ab"))
        s.add(db.SnippetRow(device="nursery", boot=3, seq=17, received=now - 119, sr=16000, pre_ms=2000, pcm=pcm,
                            teacher_score=0.91, hub_score=0.97, verdict="confirmed"))
    engine.dispose()
    return path


@pytest.fixture(scope="module")
def server(seeded):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cryblock.cli", "dashboard", "--db", str(seeded), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, 60, "dashboard up")
        yield f"http://127.0.0.1:{port}", lines
    finally:
        proc.terminate()
        proc.wait(20)


def test_dashboard_binds_to_loopback_and_says_so(server):
    _, lines = server
    assert any("this computer only" in ln and "no authentication" in ln for ln in lines), lines


def test_dashboard_in_chromium(server, tmp_path):
    if CHROMIUM is None:
        print("SKIP: Debian's chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed (Debian package chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        # a fresh profile folder (Playwright's persistent context passes it as --user-data-dir)
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       args=FLAGS, headless=True)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/", wait_until="load")
        assert page.locator("tr.device").count() == 2
        assert "online" in page.locator("tr.device", has_text="nursery").inner_text()
        assert "offline" in page.locator("tr.device", has_text="bedroom").inner_text()
        # the device-supplied markup is shown as text, never run
        assert EVIL in page.locator("tr.device", has_text="nursery").inner_text()
        assert page.evaluate("window.__pwned") is None
        alert = page.locator("tr.alert", has_text="nursery")
        assert alert.count() == 1
        text = alert.inner_text()
        assert "0.812" in text and "confirmed" in text and "0.970" in text and "0.910" in text
        audio = alert.locator("audio")
        src = audio.get_attribute("src")
        # the play button has the audio: Chromium loads and decodes the snippet (2 s of WAV)
        duration = page.evaluate("""async (sel) => { const a = document.querySelector(sel); a.preload = 'auto';
            a.load(); await new Promise((ok, no) => { a.oncanplaythrough = ok; a.onerror = () => no(a.error.code);
            setTimeout(() => no('timeout'), 15000); }); return a.duration; }""", f'audio[src="{src}"]')
        assert duration == pytest.approx(2.0, abs=0.01)
        plot = page.locator("img.plot")
        assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", plot.element_handle())
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        # filters: one device
        page.goto(url + "/?device=bedroom", wait_until="load")
        assert page.locator("tr.alert").count() == 1 and "no snippet" in page.locator("tr.alert").inner_text()
        # night view of today's date holds the nursery alert only when it falls in the night window
        page.goto(url + "/night?device=nursery&date=" + time.strftime("%Y-%m-%d"), wait_until="load")
        assert "alert(s) from" in page.content()
        page.goto(url + "/?start=yesterday", wait_until="load")
        assert "is not a date" in page.locator("p.error").inner_text()
        assert errors == []
        browser.close()


def test_dashboard_refuses_a_second_server_on_the_same_port(server, seeded):
    url, _ = server
    port = url.rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "cryblock.cli", "dashboard", "--db", str(seeded), "--port", port],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: --port:") and len(r.stderr.splitlines()) == 1, r.stderr
