"""Device commands: ``flash``, ``monitor``, ``bench``, ``config`` (see :mod:`cryblock.blocks.deploy`)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from cryblock.blocks.deploy import bench, capture, config, flash
from cryblock.escape import printable
from cryblock.output import check_output
from cryblock.signals import deferred

from .options import FiniteFloat

#: Options of the commands that talk to the running firmware (monitor, bench, config).
_board_port = click.option("--port", required=True,
                           help="The board's primary console: the USB-UART bridge (e.g. /dev/ttyUSB0) for default "
                                "builds, the native USB port (/dev/ttyACM0) for --console usb builds.")
_console_baud = click.option("--baud", type=click.IntRange(300, 5_000_000), default=capture.CONSOLE_BAUD,
                             show_default=True)


@click.command("flash")
@click.option("--port", required=True, help="Serial port of the ESP32-S3 (e.g. /dev/ttyUSB0, /dev/ttyACM0, COM5).")
@click.option("--project", type=click.Path(file_okay=False), default=None,
              help="ESP-IDF project folder; its build/ folder is flashed.")
@click.option("--build-dir", type=click.Path(file_okay=False), default=None,
              help="ESP-IDF build folder holding flasher_args.json (instead of --project).")
@click.option("--baud", type=click.IntRange(9600, 5_000_000), default=flash.FLASH_BAUD, show_default=True,
              help="Flashing speed after the stub is loaded.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Read back MD5 digests of every region after writing (verify_flash).")
def flash_cmd(port: str, project: str | None, build_dir: str | None, baud: int, verify: bool) -> None:
    """Flash an ESP-IDF build (flasher_args.json) to an ESP32-S3, verify, hard-reset."""
    if project is None and build_dir is None:
        project = "."
    bd = flash.find_build_dir(project=project, build_dir=build_dir)
    plan = flash.load_flasher_args(bd)
    for off, p in plan.files:
        click.echo(f"  0x{off:06x}  {p.stat().st_size:8d} B  {p}")
    rep = flash.flash(plan, port, baud=baud, verify=verify)
    click.echo(f"flashed {len(rep.regions)} region(s) to {rep.chip} on {rep.port}"
               f"{', verified' if rep.verified else ''}; reset: {rep.reset}")


def _live_printer(quiet: bool):
    def on_line(raw: bytes, rec):
        if quiet:
            return
        if rec is not None:
            click.echo(capture.format_record(rec))
        elif raw.strip():
            click.echo("# " + printable(raw), err=True)
    return on_line


@click.command("monitor")
@_board_port
@_console_baud
@click.option("--out", "out_csv", type=click.Path(dir_okay=False), default=None,
              help="Write all records as CSV (one row per record).")
@click.option("--json", "out_json", type=click.Path(dir_okay=False), default=None,
              help="Write summary + records as JSON.")
@click.option("--seconds", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Stop after this many seconds (default: until Ctrl-C or the port goes away).")
@click.option("--send", multiple=True, metavar="LINE",
              help="Command line to send after opening, e.g. 'set threshold 0.6' (repeatable).")
@click.option("--reset", is_flag=True, help="Pulse EN via RTS after opening so the log starts at BOOT.")
@click.option("--quiet", is_flag=True, help="Do not print lines live; only the summary.")
def monitor_cmd(port: str, baud: int, out_csv: str | None, out_json: str | None, seconds: float | None,
                send: tuple[str, ...], reset: bool, quiet: bool) -> None:
    """Print the firmware's CRYB/1 log live; on exit summarise it and write CSV/JSON."""
    if out_csv is not None and out_json is not None:
        check_output(out_json, folder=False, what="--json", inputs=(out_csv,))
    for p in (out_csv, out_json):
        if p is not None:
            check_output(p, folder=False)
    res = capture.capture(port, baud=baud, seconds=seconds, send=send, reset=reset,
                         on_line=_live_printer(quiet))
    _finish(res, out_csv, out_json)


def _finish(res: capture.CaptureResult, out_csv, out_json) -> None:
    with deferred():  # first, and whole: the capture is never lost, not even to a second Ctrl-C / SIGTERM
        written = capture.write_capture(res, out_csv, out_json)
    try:
        if res.port_lost:
            click.echo(f"warning: serial port went away ({res.stop_reason}); summarising what was captured",
                       err=True)
        click.echo(bench.format_summary(res.summary()))
        for p in written:
            click.echo(f"wrote {p}")
    except OSError:  # the terminal is gone (SIGHUP) or the pipe closed: the files are written
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            os.dup2(devnull, stream.fileno())  # so that flushing at exit cannot fail either


@click.command("bench")
@_board_port
@click.option("--seconds", type=FiniteFloat(min=0, min_open=True), required=True,
              help="Capture duration in seconds.")
@click.option("--out-dir", type=click.Path(file_okay=False), default="cryblock-bench", show_default=True,
              help="Folder for bench.csv (records) and bench.json (summary + records).")
@_console_baud
@click.option("--reset", is_flag=True, help="Pulse EN via RTS first so BOOT (arena) is captured.")
def bench_cmd(port: str, seconds: float, out_dir: str, baud: int, reset: bool) -> None:
    """Capture the log for SECONDS and report latency percentiles, arena, rates, resets."""
    d = Path(out_dir)
    check_output(d / "bench.json", folder=False)
    res = capture.capture(port, baud=baud, seconds=seconds, reset=reset)
    _finish(res, d / "bench.csv", d / "bench.json")


@click.command("config")
@_board_port
@click.option("--threshold", type=FiniteFloat(0, 1), default=None, help="Score threshold in [0, 1].")
@click.option("--vote", default=None, metavar="N/M", help="N-of-M voting, e.g. 2/3.")
@click.option("--hold-ms", type=int, default=None, help="Hold time after the last vote, ms.")
@_console_baud
@click.option("--timeout", "timeout_s", type=FiniteFloat(min=0, min_open=True), default=3.0,
              show_default=True, help="Seconds to wait for each CFG answer.")
def config_cmd(port: str, threshold: float | None, vote: str | None, hold_ms: int | None, baud: int,
               timeout_s: float) -> None:
    """Set/read the detector configuration of the running firmware (answers with a CFG line)."""
    v = config.parse_vote(vote) if vote is not None else None
    cfg = config.configure(port, threshold=threshold, vote=v, hold_ms=hold_ms, baud=baud,
                           timeout_s=timeout_s)
    click.echo("config " + json.dumps(cfg))


def register(group: click.Group) -> None:
    """Add this module's commands to the ``cryblock`` group."""
    for cmd in (flash_cmd, monitor_cmd, bench_cmd, config_cmd):
        group.add_command(cmd)

