"""Configure the running firmware over its serial console.

:func:`configure` sends the firmware's text commands (``set threshold <float>``,
``set vote <N> <M>``, ``set hold <ms>``, ``get config``; one per line) and checks the
``CRYB/1 CFG threshold=.. vote=N/M hold_ms=..`` answer.
"""
from __future__ import annotations

import re
import time

from cryblock.errors import CryblockError, ParameterError, one_line
from cryblock.logformat import Record, field_value, parse_line

from .capture import CONSOLE_BAUD, LineSplitter, open_serial


def config_commands(threshold: float | None = None, vote: tuple[int, int] | None = None,
                    hold_ms: int | None = None) -> list[str]:
    """The firmware command lines for the requested changes, then ``get config``.

    Values are validated with :class:`cryblock.params.DetectorParams` ranges (threshold in
    [0, 1], 1 ≤ N ≤ M ≤ 64, hold in [0, 3600] s).

    Raises:
        ParameterError: a value out of range.
    """
    from cryblock.params import DetectorParams

    d = DetectorParams()
    DetectorParams(threshold=d.threshold if threshold is None else float(threshold),
                   vote_n=vote[0] if vote else d.vote_n, vote_m=vote[1] if vote else d.vote_m,
                   hold_seconds=d.hold_seconds if hold_ms is None else hold_ms / 1000.0)
    cmds = []
    if threshold is not None:
        cmds.append(f"set threshold {float(threshold):.4f}")
    if vote is not None:
        cmds.append(f"set vote {int(vote[0])} {int(vote[1])}")
    if hold_ms is not None:
        cmds.append(f"set hold {int(hold_ms)}")
    cmds.append("get config")
    return cmds


def parse_vote(text: str) -> tuple[int, int]:
    """``"2/3"`` → ``(2, 3)``. Raises ParameterError for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ParameterError(f"vote must be N/M (e.g. 2/3), got {text!r}")
    return int(m.group(1)), int(m.group(2))


#: ``ERR`` code with which the firmware rejects a command line (templates/esp32s3 main.cc
#: ``handle_commands``); other ERR lines (``overrun``, ``i2s_read``…) are not answers to commands.
COMMAND_ERR_CODE = "bad_command"


def _mismatches(cfg: dict, threshold: float | None, vote: tuple[int, int] | None,
                hold_ms: int | None) -> list[str]:
    problems = []
    got_thr = cfg.get("threshold")
    if threshold is not None and not (isinstance(got_thr, (int, float)) and abs(got_thr - threshold) < 5e-5):
        problems.append(f"threshold={got_thr} (asked {threshold:g})")
    if vote is not None and str(cfg.get("vote")) != f"{vote[0]}/{vote[1]}":
        problems.append(f"vote={cfg.get('vote')} (asked {vote[0]}/{vote[1]})")
    if hold_ms is not None and cfg.get("hold_ms") != int(hold_ms):
        problems.append(f"hold_ms={cfg.get('hold_ms')} (asked {hold_ms})")
    return problems


def configure(port: str, threshold: float | None = None, vote: tuple[int, int] | None = None,
              hold_ms: int | None = None, baud: int = CONSOLE_BAUD, timeout_s: float = 3.0) -> dict:
    """Send configuration commands and return the configuration the device reports.

    Each command line (:func:`config_commands`) is sent and an answer awaited (at most
    ``timeout_s`` s) before the next: a ``CFG`` record, or an ``ERR`` with
    ``code=bad_command`` (rejection). Log lines in between are ignored. The firmware handles
    commands between inferences and also prints CFG at boot, so a CFG already in flight can be
    taken as an answer; the final check therefore keeps reading (up to ``timeout_s``) until a CFG
    shows every requested value.

    Returns:
        the last ``CFG`` fields, numbers converted: ``{"threshold": float, "vote": "N/M",
        "hold_ms": int}`` (plus any extra fields).

    Raises:
        ParameterError: value out of range (nothing sent).
        CryblockError: port cannot be opened or vanished, no answer in time, the device rejects a
            command, or the reported configuration differs from the one requested.
    """
    import serial

    cmds = config_commands(threshold, vote, hold_ms)
    ser = open_serial(port, baud)
    splitter = LineSplitter()
    pending: list[Record] = []

    def next_answer(deadline: float) -> Record | None:
        while time.monotonic() < deadline:
            if not pending:
                for raw in splitter.feed(ser.read(max(1, ser.in_waiting))):
                    rec = parse_line(raw)
                    if rec is not None and (rec.kind == "CFG" or (
                            rec.kind == "ERR" and rec.fields.get("code") == COMMAND_ERR_CODE)):
                        pending.append(rec)
            if pending:
                return pending.pop(0)
        return None

    try:
        last: Record | None = None
        for cmd in cmds:
            ser.write(cmd.encode("ascii") + b"\n")
            ser.flush()
            answer = next_answer(time.monotonic() + timeout_s)
            if answer is None:
                raise CryblockError(f"port {port}: no CFG answer to {cmd!r} within {timeout_s:g} s "
                                    "(is the cryblock firmware running?)")
            if answer.kind == "ERR":
                raise CryblockError(f"port {port}: device rejected {cmd!r}: {answer.fields.get('msg', '?')}")
            last = answer
        cfg = {k: field_value(v) for k, v in last.fields.items()}
        deadline = time.monotonic() + timeout_s
        while _mismatches(cfg, threshold, vote, hold_ms):
            later = next_answer(deadline)
            if later is None:
                break
            if later.kind == "CFG":
                cfg = {k: field_value(v) for k, v in later.fields.items()}
    except (serial.SerialException, OSError) as e:
        raise CryblockError(f"port {port}: lost the port while configuring ({one_line(e)})") from None
    finally:
        try:
            ser.close()
        except Exception:  # noqa: BLE001 - a vanished port may fail to close
            pass
    problems = _mismatches(cfg, threshold, vote, hold_ms)
    if problems:
        raise CryblockError(f"port {port}: device did not apply the configuration: {', '.join(problems)}")
    return cfg
