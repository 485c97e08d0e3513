"""``cryblock monitor`` / ``bench`` / ``config`` against a simulated board on a real pty.

The simulated firmware (tests/fake_device.py) writes a realistic CRYB/1 stream over real serial
I/O — boot-ROM chatter, BOOT, INF every 10 ms, EVT ON/OFF, damaged lines, noise, a device reset
and finally a vanishing port — and answers configuration commands. Expected counts and
percentiles are computed here from what the fake sent (its construction record), not by parsing.
"""
from __future__ import annotations

import csv
import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cryblock.blocks.deploy import bench, capture
from cryblock.cli.main import cli

try:
    from fake_device import BOOT_CFG, BOOT_FIELDS, HOP_MS, FakeDevice, build_scenario, endless_stream
except ImportError:  # tests/ made a package
    from tests.fake_device import BOOT_CFG, BOOT_FIELDS, HOP_MS, FakeDevice, build_scenario, endless_stream


def _run(args: list[str]):
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def scenario():
    return build_scenario(seed=7)


@pytest.fixture(scope="module")
def monitored(scenario, tmp_path_factory):
    """``cryblock monitor`` until the fake board's port vanishes."""
    chunks, truth = scenario
    out = tmp_path_factory.mktemp("mon")
    with FakeDevice(chunks) as fake:
        r = _run(["monitor", "--port", fake.port, "--out", str(out / "log.csv"), "--json", str(out / "log.json")])
    return r, truth, out


def _check_summary(s: dict, truth) -> None:
    inf = truth.inf
    assert s["format"] == "CRYB/1"
    assert s["records"] == {"BOOT": 2, "INF": len(inf), "EVT": truth.evt_on + truth.evt_off, "CFG": 2, "ERR": 0,
                            "RDY": 0, "END": 0, "NET": 0}
    assert s["config"] == BOOT_CFG
    assert s["garbage_lines"] == truth.garbage_lines == 28
    assert s["corrupt_lines"] == truth.corrupt_lines == 4
    assert s["other_version_lines"] == truth.other_version_lines == 1
    assert s["lines"] == truth.lines
    assert (s["boots"], s["resets"], s["resets_inferred"]) == (2, 1, 0)
    assert s["inferences"] == len(inf)
    assert s["lost_inferences"] == truth.lost_inferences == 3
    assert s["boot"] == BOOT_FIELDS
    assert (s["model_bytes"], s["arena_bytes"], s["arena_used_bytes"]) == (61344, 98304, 71236)
    for key, values in (("fe", [r["fe_us"] for r in inf]), ("inv", [r["inv_us"] for r in inf]),
                        ("total", [r["fe_us"] + r["inv_us"] for r in inf])):
        p = s["latency_us"][key]
        assert p["n"] == len(inf)
        assert [p["p50"], p["p90"], p["p99"]] == pytest.approx(np.percentile(values, [50, 90, 99]).tolist())
        assert p["max"] == max(values)
    assert s["positives"] == sum(r["pos"] for r in inf) > 0
    assert s["detections"] == truth.evt_on == 3
    assert s["device_s"] == pytest.approx(truth.device_s)
    assert s["inference_hz"] == pytest.approx(1000.0 / HOP_MS)
    assert s["detections_per_hour"] == pytest.approx(truth.evt_on / truth.device_s * 3600)
    assert s["port_lost"] is True and s["stop_reason"].startswith("port lost")
    assert s["unterminated_bytes"] == truth.unterminated_bytes


def test_monitor_summary_matches_what_was_sent(monitored) -> None:
    r, truth, out = monitored
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "log.json").read_text())
    _check_summary(doc["summary"], truth)
    assert "warning: serial port went away" in r.output


def test_monitor_prints_live_lines(monitored) -> None:
    r, truth, _ = monitored
    live = [ln for ln in r.stdout.splitlines() if ln.startswith("INF t=")]
    assert len(live) == len(truth.inf)
    first = truth.inf[0]
    assert live[0] == (f"INF t={first['t_ms'] / 1000:.2f}s seq=0 score={first['score']:.4f} pos={first['pos']} "
                       f"votes={first['votes']} det={first['det']} fe={first['fe_us'] / 1000:.1f}ms "
                       f"inv={first['inv_us'] / 1000:.1f}ms")
    assert sum(ln.startswith("EVT state=ON") or "state=ON" in ln for ln in r.stdout.splitlines()) == truth.evt_on
    assert "# ESP-ROM:esp32s3-20210327" in r.output  # boot-ROM chatter shown, marked as non-record
    assert "# W (19512) i2s_std: DMA buffer overflow, 512 bytes dropped\n" in r.output  # colour codes gone
    # noise never reaches the terminal as control characters (escape sequences)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", r.output)


def test_monitor_csv_holds_every_record(monitored) -> None:
    _, truth, out = monitored
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    infs = [row for row in rows if row["kind"] == "INF"]
    assert [int(row["fe_us"]) for row in infs] == [r["fe_us"] for r in truth.inf]
    assert [float(row["score"]) for row in infs] == [r["score"] for r in truth.inf]
    assert [int(row["session"]) for row in infs] == [r["session"] for r in truth.inf]
    assert sum(row["kind"] == "BOOT" for row in rows) == 2
    assert [row["state"] for row in rows if row["kind"] == "EVT"].count("ON") == truth.evt_on
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_bench_writes_summary(scenario, tmp_path: Path) -> None:
    chunks, truth = scenario
    with FakeDevice(chunks) as fake:
        r = _run(["bench", "--port", fake.port, "--seconds", "30", "--out-dir", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    _check_summary(doc["summary"], truth)
    assert len(doc["records"]) == sum(doc["summary"]["records"].values())
    assert (tmp_path / "b" / "bench.csv").is_file()
    assert "boots 2, resets 1" in r.output
    assert "arena 98304 B (used 71236 B)" in r.output
    assert "INF t=" not in r.output  # bench does not print the live stream


def test_monitor_stops_after_seconds(tmp_path: Path) -> None:
    with FakeDevice(endless_stream(), close_at_end=False) as fake:
        r = _run(["monitor", "--port", fake.port, "--seconds", "1.0", "--quiet", "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "m.json").read_text())["summary"]
    assert s["stop_reason"] == "time" and s["port_lost"] is False
    assert s["records"]["BOOT"] == 1 and s["records"]["INF"] >= 5
    assert (s["garbage_lines"], s["resets"], s["lost_inferences"]) == (0, 0, 0)
    assert s["errors"] == [{"code": "overrun", "msg": "dropped_512_samples"}]
    assert s["inference_hz"] == pytest.approx(1000.0 / HOP_MS)
    assert "INF t=" not in r.stdout  # --quiet


def test_monitor_reset_on_port_without_modem_lines(tmp_path: Path) -> None:
    """--reset pulses RTS; a pty has no modem-control lines, so the user is told to press RESET."""
    with FakeDevice(endless_stream(), close_at_end=False) as fake:
        r = _run(["monitor", "--port", fake.port, "--seconds", "0.6", "--quiet", "--reset"])
    assert r.exit_code == 0, r.output
    assert f"note: could not pulse RTS on {fake.port}" in r.output and "press the board's RESET button" in r.output


def test_output_path_checked_before_capture(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    r = _run(["monitor", "--port", "/dev/ttyCRYBLOCK_NOPE", "--json", str(tmp_path / "afile" / "log.json")])
    assert r.exit_code == 2 and "is a file, not a folder" in r.output
    r = _run(["bench", "--port", "/dev/ttyCRYBLOCK_NOPE", "--seconds", "1", "--out-dir", str(tmp_path / "afile" / "b")])
    assert r.exit_code == 2 and "is a file, not a folder" in r.output


def test_monitor_send_commands(tmp_path: Path) -> None:
    with FakeDevice(endless_stream(), close_at_end=False) as fake:
        r = _run(["monitor", "--port", fake.port, "--seconds", "1.0", "--quiet", "--json", str(tmp_path / "m.json"),
                  "--send", "set threshold 0.6", "--send", "set vote 3 5", "--send", "reboot now"])
        commands = list(fake.commands)
    assert r.exit_code == 0, r.output
    assert commands == ["set threshold 0.6", "set vote 3 5", "reboot now"]
    s = json.loads((tmp_path / "m.json").read_text())["summary"]
    assert s["records"]["CFG"] == 1 + 2 and s["records"]["ERR"] == 1 + 1  # boot CFG, overrun ERR
    assert s["config"] == {"threshold": 0.6, "vote": "3/5", "hold_ms": 2000}
    assert {"code": "bad_command", "msg": "usage:_set_threshold|vote|hold_or_get"} in s["errors"]


def test_config_command_round_trip() -> None:
    with FakeDevice(endless_stream(), close_at_end=False) as fake:
        r = _run(["config", "--port", fake.port, "--threshold", "0.62", "--vote", "3/5", "--hold-ms", "1500"])
        # a CFG in flight may answer a command before the fake has read the last one: let it catch up
        deadline = time.monotonic() + 3
        while len(fake.commands) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        commands = list(fake.commands)
        applied = dict(fake.config)
    assert r.exit_code == 0, r.output
    assert commands == ["set threshold 0.6200", "set vote 3 5", "set hold 1500", "get config"]
    assert applied == {"threshold": 0.62, "vote": (3, 5), "hold_ms": 1500}
    assert json.loads(r.output.split("config ", 1)[1]) == {"threshold": 0.62, "vote": "3/5", "hold_ms": 1500}


def test_config_detects_unapplied_value() -> None:
    with FakeDevice(endless_stream(), close_at_end=False, max_threshold=0.9) as fake:
        r = _run(["config", "--port", fake.port, "--threshold", "0.95", "--timeout", "0.5"])
    assert r.exit_code == 2
    assert f"error: port {fake.port}: device did not apply the configuration: threshold=0.9 (asked 0.95)" in r.output


def test_config_mute_device_times_out() -> None:
    inf_only = itertools.islice(endless_stream(), 2, None)  # no BOOT/CFG: a CFG in flight is no answer
    with FakeDevice(inf_only, close_at_end=False, respond=False) as fake:
        r = _run(["config", "--port", fake.port, "--vote", "2/4", "--timeout", "0.3"])
    assert r.exit_code == 2
    assert "no CFG answer to 'set vote 2 4' within 0.3 s" in r.output


def test_config_rejects_bad_values_before_opening_port() -> None:
    r = _run(["config", "--port", "/dev/ttyCRYBLOCK_NOPE", "--vote", "4/3"])
    assert r.exit_code == 2 and "vote_n" in r.output and "ttyCRYBLOCK_NOPE" not in r.output
    r = _run(["config", "--port", "/dev/ttyCRYBLOCK_NOPE", "--vote", "two of three"])
    assert r.exit_code == 2 and "vote must be N/M" in r.output


def test_monitor_missing_port_is_one_line_error() -> None:
    r = _run(["monitor", "--port", "/dev/ttyCRYBLOCK_NOPE", "--seconds", "1"])
    assert r.exit_code == 2
    assert r.output.startswith("error: cannot open serial port /dev/ttyCRYBLOCK_NOPE:")
    assert len(r.output.strip().splitlines()) == 1


def test_ctrl_c_ends_capture_with_summary(scenario) -> None:
    """Ctrl-C (KeyboardInterrupt) during a capture keeps everything read so far."""
    chunks, truth = scenario
    seen = []

    def on_line(raw, rec):
        seen.append(rec)
        if len(seen) == 40:
            raise KeyboardInterrupt

    with FakeDevice(chunks) as fake:
        res = capture.capture(fake.port, on_line=on_line)
    s = res.summary()
    assert s["stop_reason"] == "interrupted" and not s["port_lost"]
    assert s["lines"] == 40
    assert s["records"]["INF"] == sum(r is not None and r.kind == "INF" for r in seen) > 0


def test_empty_capture_summary_renders() -> None:
    s = capture.LogCapture().summary(capture_s=2.0)
    assert s["inferences"] == 0 and s["latency_us"]["total"] is None and s["detections_per_hour"] == 0.0
    text = bench.format_summary(s)
    assert "no BOOT line seen" in text and "rate n/a" in text


# ---- LogCapture / LineSplitter units on hand-made lines ---------------------------------------


def _inf(t_ms: int, seq: int) -> bytes:
    from cryblock.logformat import format_line
    return format_line("INF", t_ms=t_ms, seq=seq, fe_us=3000, inv_us=40000, score=0.1, pos=0, votes=0,
                       det=0).encode()


def test_reset_inferred_when_boot_line_lost() -> None:
    log = capture.LogCapture()
    for raw in [_inf(5000, 10), _inf(5480, 11), b"CRYB/1 BOOT model_b", _inf(312, 0), _inf(792, 1)]:
        log.feed_line(raw)
    s = log.summary()
    assert (s["boots"], s["resets"], s["resets_inferred"]) == (0, 1, 1)
    assert [r.session for r in log.records] == [0, 0, 1, 1]
    assert s["lost_inferences"] == 0 and s["corrupt_lines"] == 1
    assert s["boot"] is None and s["arena_bytes"] is None


def test_line_splitter_reassembles_byte_by_byte() -> None:
    sp = capture.LineSplitter(max_line=128)
    stream = _inf(312, 0) + b"\r\n" + b"\xff" * 300 + b"\n" + _inf(792, 1)
    lines = []
    for i in range(len(stream)):
        lines += sp.feed(stream[i:i + 1])
    assert lines[0] == _inf(312, 0)
    assert [len(x) for x in lines[1:]] == [128, 128, 44]  # overlong noise cut at max_line
    assert sp.pending == _inf(792, 1)


# ---- hostile streams and ports -----------------------------------------------------------------

def _line(kind_: str, **fields) -> bytes:
    from cryblock.logformat import format_line
    return format_line(kind_, **fields).encode()


def test_non_finite_fields_never_lose_the_capture(tmp_path: Path) -> None:
    """One checksum-valid INF with seq=nan (or 1e999) used to crash the summary and write
    neither CSV nor JSON."""
    bad = [_line("INF", t_ms=1000, seq="nan", fe_us=3000, inv_us=9000, score=0.2, pos=0, votes=0, det=0),
           _line("INF", t_ms="1e999", seq="1e999", fe_us="inf", inv_us=9000, score="nan", pos=0, votes=0, det=0)]
    chunks = list(itertools.islice(endless_stream(), 6))
    from fake_device import Chunk
    chunks += [Chunk(b + b"\r\n", 0.01) for b in bad] + list(itertools.islice(endless_stream(), 6, 10))
    with FakeDevice(chunks) as fake:
        r = _run(["monitor", "--port", fake.port, "--quiet", "--out", str(tmp_path / "m.csv"),
                  "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert doc["summary"]["records"]["INF"] >= 2 + 4
    assert any(rec["fields"].get("seq") == "nan" for rec in doc["records"])
    rows = list(csv.DictReader(open(tmp_path / "m.csv", newline="")))
    assert sum(row["seq"] in ("nan", "1e999") for row in rows) == 2


def test_device_values_are_shown_not_obeyed_and_csv_columns_stay_unique() -> None:
    """A checksum-valid line may carry terminal escape sequences in its values (a damaged or
    hostile device): monitor prints them as '?'; a field named like a capture column (kind,
    session, host_s) gets its own CSV column."""
    esc = "\x1b]0;owned\x07\x1b[2J"
    log = capture.LogCapture()
    for raw in (_line("BOOT", fw=f"v1{esc}", model_bytes=100, arena_bytes=10, arena_used=9, t_ms=0),
                _line("ERR", **{"code": "x", "msg": f"bad{esc}", "kind": "mine", "session": 7}),
                _line("CFG", threshold=0.5, vote="2/3", hold_ms=esc)):
        log.feed_line(raw)
    assert len(log.records) == 3
    shown = [capture.format_record(r) for r in log.records] + [bench.format_summary(log.summary())]
    assert all("\x1b" not in t and "\x07" not in t for t in shown), shown
    assert "v1?]0;owned??" in shown[-1]
    rows = list(csv.reader(capture.records_csv(log.records).splitlines()))
    assert len(rows[0]) == len(set(rows[0])) and {"field_kind", "field_session"} <= set(rows[0])
    err = dict(zip(rows[0], rows[2]))
    assert err["kind"] == "ERR" and err["field_kind"] == "mine" and err["field_session"] == "7"


def test_csv_cells_are_never_spreadsheet_formulas(tmp_path: Path) -> None:
    """A device value (or field name) starting with = + - @ tab or CR is run by a spreadsheet as a
    formula; monitor's CSV makes such cells text with a leading ' and leaves numbers numbers."""
    log = capture.LogCapture()
    evil = {"msg": '=HYPERLINK("http://x","y")', "a": "+1+cmd|'/c_calc'!A0", "b": "@SUM(1)", "c": "-2+3",
            "d": "\tx", "@name": "v", "e": "-0.5", "f": "+3", "g": "-1e-3", "h": "7", "i": "-inf"}
    log.feed_line(_line("ERR", code="x", **evil))
    capture.write_capture(capture.CaptureResult(log, 1.0, "time"), tmp_path / "log.csv")
    rows = list(csv.reader((tmp_path / "log.csv").open()))
    cells = dict(zip(rows[0], rows[1]))
    for k in ("msg", "a", "b", "c", "d", "i"):
        assert cells[k] == "'" + evil[k], (k, cells[k])
    assert cells["'@name"] == "v"
    assert (cells["e"], cells["f"], cells["g"], cells["h"], cells["host_s"]) == ("-0.5", "+3", "-1e-3", "7", "0.000")


def test_concatenated_and_repeated_lines() -> None:
    log = capture.LogCapture()
    a, b, c = _inf(312, 0), _inf(792, 1), _inf(1272, 2)
    for raw in [a, b + c, b"noise" + c, c, _inf(1752, 3)[:-5] + _inf(1752, 3)]:
        log.feed_line(raw)
    s = log.summary()
    assert [int(r.fields["seq"]) for r in log.records] == [0, 1, 2, 3]
    assert s["concatenated_lines"] == 2 and s["duplicate_records"] == 2 and s["lost_inferences"] == 0
    assert s["corrupt_lines"] == 1 and s["lines"] == 5


def test_socket_url_port(tmp_path: Path) -> None:
    """--port socket://host:port (a board behind ser2net / esp-rfc2217-server) is read like a tty."""
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    lines = [_line("BOOT", **{**{k: str(v) for k, v in BOOT_FIELDS.items()}})] + [_inf(312 + 480 * i, i) for i in range(5)]

    def board():
        conn, _ = srv.accept()
        with conn:
            time.sleep(0.3)  # pyserial discards what is already waiting when it opens a port
            for ln in lines:
                conn.sendall(ln + b"\r\n")
    t = threading.Thread(target=board, daemon=True)
    t.start()
    r = _run(["monitor", "--port", f"socket://127.0.0.1:{port}", "--seconds", "1.5", "--quiet",
              "--json", str(tmp_path / "s.json")])
    srv.close()
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert s["records"]["INF"] == 5 and s["records"]["BOOT"] == 1


@pytest.mark.parametrize("port", ["", "hwgrep://no-such-device-anywhere", "/etc/hostname", "socket://127.0.0.1:1",
                                  "bogus://x"])
def test_odd_ports_are_one_line_errors(port: str) -> None:
    r = _run(["monitor", "--port", port, "--seconds", "1"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: ")


def test_capture_and_bench_do_not_import_each_other() -> None:
    """One concept per module: capture reads the port, bench summarises records (no import cycle)."""
    import ast

    def imports(mod) -> set[str]:
        tree = ast.parse(Path(mod.__file__).read_text())
        return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    assert not any(m.endswith("capture") for m in imports(bench))


# ---- every way of ending a capture keeps it (real signals, a real terminal hang-up) -------------

def _capture_until(cmd: list[str], end: str, fake: FakeDevice) -> tuple[int, str]:
    """Run ``cryblock <cmd>`` in a new session whose terminal is a pty, let it capture for a while,
    then end it by ``end``: "SIGTERM" (what ``timeout`` and ``kill`` send) or "hangup" (the terminal
    goes away, as with a dropped SSH session: the kernel sends SIGHUP and the terminal fails).
    Returns (exit status, what the terminal showed)."""
    import os
    import pty
    import signal
    import subprocess
    import sys
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen(["setsid", "--ctty", sys.executable, "-m", "cryblock.cli", *cmd],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    shown = bytearray()
    done = threading.Event()

    def drain():
        while not done.is_set():
            try:
                shown.extend(os.read(master, 65536))
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert fake.opened.wait(60), "the capture never opened the port"
        deadline = time.monotonic() + 30
        while fake._written < 60 and time.monotonic() < deadline:  # ≥ 0.5 s of records captured
            time.sleep(0.05)
        if end == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            done.set()
            os.close(master)  # hang-up: SIGHUP to the session, EIO on every later write to the terminal
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        done.set()
        try:
            os.close(master)
        except OSError:
            pass
        reader.join(timeout=5)
    return code, shown.decode("utf-8", "replace")


@pytest.mark.parametrize("cmd,end", [("monitor", "SIGTERM"), ("monitor", "hangup"), ("bench", "SIGTERM")])
def test_sigterm_and_hangup_keep_the_capture(tmp_path: Path, cmd: str, end: str) -> None:
    """Before, SIGTERM (``timeout 8h cryblock monitor``) and SIGHUP (a closed SSH session) killed the
    capture and lost every record; only Ctrl-C saved them. Now all of them end it like Ctrl-C."""
    args = (["monitor", "--out", str(tmp_path / "m.csv"), "--json", str(tmp_path / "m.json")] if cmd == "monitor"
            else ["bench", "--seconds", "600", "--out-dir", str(tmp_path)])
    with FakeDevice(endless_stream(), close_at_end=False) as fake:
        code, shown = _capture_until([args[0], "--port", fake.port, *args[1:]], end, fake)
    doc = json.loads((tmp_path / ("m.json" if cmd == "monitor" else "bench.json")).read_text())
    s = doc["summary"]
    assert code == 0, shown
    # a hang-up: SIGHUP, or first the failed write of a live line to the vanished terminal (EIO)
    assert s["stop_reason"] in (("interrupted (SIGTERM)",) if end == "SIGTERM" else
                                ("interrupted (SIGHUP)", "live output failed: [Errno 5] Input/output error"))
    assert s["records"]["BOOT"] == 1 and s["records"]["INF"] >= 40 and s["lost_inferences"] == 0
    rows = list(csv.DictReader((tmp_path / ("m.csv" if cmd == "monitor" else "bench.csv")).open()))
    assert len(rows) == len(doc["records"]) == sum(s["records"].values())
    assert "Traceback" not in shown
    if end == "SIGTERM":
        assert "stopped: interrupted (SIGTERM)" in shown and "wrote " in shown
