"""``cryblock flash``: flasher_args.json parsing, error paths, chip check and esptool call sequence.

No ESP32-S3 is attached to the test machine. The build folder is realistic: bootloader and app
are real ESP images made with esptool's own image writer (``esptool.bin_image``), the partition
table is a real binary table, and flasher_args.json has the layout ESP-IDF writes from
``components/esptool_py/flasher_args.json.in``. Error paths for a missing port and a port with no
chip behind it call the real esptool. Only the chip-facing half of esptool (``esptool.cmds``
connection and flash functions) is substituted, in the tests marked so, because no chip exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import pty
import struct
from pathlib import Path

import esptool.cmds
import pytest
from click.testing import CliRunner
from esptool.bin_image import ELFSection, ESP32C3FirmwareImage, ESP32S3FirmwareImage
from esptool.util import FatalError

from cryblock.blocks.deploy import flash
from cryblock.cli.main import cli
from cryblock.errors import CryblockError

APP_NAME = "cryblock_fw.bin"


def _esp_image(path: Path, cls=ESP32S3FirmwareImage, sizes=(5000, 3000), seed=0) -> None:
    rng = __import__("random").Random(seed)
    img = cls()
    img.entrypoint = 0x403C9908
    addrs = (0x3FCE3818, 0x403C9700, 0x403CC700)
    img.segments = [ELFSection(f".seg{i}".encode(), addrs[i], rng.randbytes(n), 0) for i, n in enumerate(sizes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(str(path))


def _partition_table(path: Path) -> None:
    """Binary partition table as gen_esp32part.py writes it: 32-byte entries (magic 0xAA50),
    an MD5 entry (0xEBEB), 0xFF padding to 0xC00 bytes."""
    entries = [(1, 2, 0x9000, 0x6000, b"nvs"), (1, 1, 0xF000, 0x1000, b"phy_init"),
               (0, 0, 0x10000, 0x200000, b"factory")]
    body = b"".join(struct.pack("<2sBBLL16sL", b"\xaa\x50", t, st, off, size, label.ljust(16, b"\0"), 0)
                    for t, st, off, size, label in entries)
    body += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(body).digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + b"\xff" * (0xC00 - len(body)))


def _flasher_args(app_name: str = APP_NAME, chip: str = "esp32s3") -> dict:
    """What ESP-IDF v5 writes to build/flasher_args.json for a factory-app project."""
    return {
        "write_flash_args": ["--flash_mode", "dio", "--flash_size", "4MB", "--flash_freq", "80m"],
        "flash_settings": {"flash_mode": "dio", "flash_size": "4MB", "flash_freq": "80m"},
        "flash_files": {
            "0x0": "bootloader/bootloader.bin",
            "0x10000": app_name,
            "0x8000": "partition_table/partition-table.bin",
        },
        "bootloader": {"offset": "0x0", "file": "bootloader/bootloader.bin", "encrypted": "false"},
        "app": {"offset": "0x10000", "file": app_name, "encrypted": "false"},
        "partition-table": {"offset": "0x8000", "file": "partition_table/partition-table.bin",
                            "encrypted": "false"},
        "extra_esptool_args": {"after": "hard_reset", "before": "default_reset", "stub": True, "chip": chip},
    }


@pytest.fixture()
def build(tmp_path: Path) -> Path:
    """An ESP-IDF project folder ``fw/`` with a realistic ``fw/build``."""
    bd = tmp_path / "fw" / "build"
    _esp_image(bd / "bootloader" / "bootloader.bin", sizes=(5000, 3000), seed=1)
    _partition_table(bd / "partition_table" / "partition-table.bin")
    _esp_image(bd / APP_NAME, sizes=(40000, 20000, 8000), seed=2)
    (bd / "flasher_args.json").write_text(json.dumps(_flasher_args(), indent=4))
    return bd


def test_flasher_args_parsed(build: Path) -> None:
    plan = flash.load_flasher_args(build)
    assert [off for off, _ in plan.files] == [0x0, 0x8000, 0x10000]  # sorted by offset
    assert [p for _, p in plan.files] == [
        (build / "bootloader/bootloader.bin").resolve(),
        (build / "partition_table/partition-table.bin").resolve(),
        (build / APP_NAME).resolve()]
    assert (plan.flash_mode, plan.flash_size, plan.flash_freq) == ("dio", "4MB", "80m")
    assert (plan.before, plan.after, plan.stub, plan.chip) == ("default-reset", "hard-reset", True, "esp32s3")
    assert plan.addr_data[2] == (0x10000, str((build / APP_NAME).resolve()))
    # --project resolves to <project>/build
    assert flash.find_build_dir(project=build.parent) == build


@pytest.mark.parametrize("damage, expect", [
    ("no_build_dir", "build folder not found"),
    ("no_json", "flasher_args.json: not found"),
    ("bad_json", "flasher_args.json: cannot read JSON"),
    ("no_flash_files", "no 'flash_files'"),
    ("missing_app", f"{APP_NAME}: listed in flasher_args.json at 0x10000 but not found"),
    ("empty_bootloader", "bootloader.bin: listed in flasher_args.json at 0x0 but empty"),
    ("bad_offset", "flash offset 'zero' is not a number"),
    ("overlap", "overlaps"),
    ("json_chip", "build targets esp32c3"),
    ("app_chip", f"{APP_NAME}: app image is built for ESP32-C3, not ESP32-S3"),
    ("not_image", "bootloader is not an ESP image"),
    ("encrypted", "'app' is marked encrypted"),
    ("escape", "points outside the build folder"),
    ("escape_named", "'app.file' = '/etc/hostname' points outside"),
    ("unaligned", "not on a 4 KiB sector boundary"),
    ("beyond_flash", "ends beyond the 4 MB flash"),
    ("file_not_str", "is not a file path"),
    ("settings_list", "'flash_settings' is not an object"),
    ("settings_empty_list", "'flash_settings' is not an object"),
    ("extra_empty_list", "'extra_esptool_args' is not an object"),
])
def test_flasher_args_errors(build: Path, damage: str, expect: str) -> None:
    fa = build / "flasher_args.json"
    doc = _flasher_args()
    target = build
    if damage == "no_build_dir":
        target = build.parent / "nope"
    elif damage == "no_json":
        fa.unlink()
    elif damage == "bad_json":
        fa.write_text('{"flash_files": {"0x0": ')
    elif damage == "no_flash_files":
        del doc["flash_files"]
    elif damage == "missing_app":
        (build / APP_NAME).unlink()
    elif damage == "empty_bootloader":
        (build / "bootloader/bootloader.bin").write_bytes(b"")
    elif damage == "bad_offset":
        doc["flash_files"]["zero"] = doc["flash_files"].pop("0x0")
    elif damage == "overlap":
        doc["flash_files"]["0x7000"] = "bootloader/bootloader.bin"  # ~8 KB image at 0x7000 runs into 0x8000
    elif damage == "json_chip":
        doc["extra_esptool_args"]["chip"] = "esp32c3"
    elif damage == "app_chip":
        _esp_image(build / APP_NAME, cls=ESP32C3FirmwareImage, sizes=(4000,))
    elif damage == "encrypted":
        doc["app"]["encrypted"] = "true"
    elif damage == "escape":
        doc["flash_files"]["0x200000"] = "../../../../../../../../etc/hostname"
    elif damage == "escape_named":
        doc["app"]["file"] = "/etc/hostname"
    elif damage == "unaligned":
        doc["flash_files"]["0x10010"] = doc["flash_files"].pop("0x10000")
    elif damage == "beyond_flash":
        doc["flash_files"]["0x3ff000"] = doc["flash_files"].pop("0x10000")
    elif damage == "file_not_str":
        doc["app"]["file"] = 65536
    elif damage == "settings_list":
        doc["flash_settings"] = ["dio"]
    elif damage == "settings_empty_list":
        doc["flash_settings"] = []
    elif damage == "extra_empty_list":  # an empty list used to read as "no extra args"
        doc["extra_esptool_args"] = []
    elif damage == "not_image":
        (build / "bootloader/bootloader.bin").write_bytes(b"\x00" * 4096)
    if damage not in ("no_json", "bad_json"):
        if fa.exists():
            fa.write_text(json.dumps(doc))
    with pytest.raises(CryblockError, match=expect.replace(".", r"\.").replace("(", r"\(")):
        flash.load_flasher_args(target)


def test_cli_missing_build_is_one_line_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["flash", "--port", "/dev/null", "--project", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {tmp_path / 'build'}: build folder not found (run `idf.py build` in {tmp_path} first)"


def test_cli_nonexistent_port_real_esptool(build: Path) -> None:
    """Real esptool call: the port does not exist → FatalError translated to one error line."""
    r = CliRunner().invoke(cli, ["flash", "--port", "/dev/ttyCRYBLOCK_NOPE", "--build-dir", str(build)])
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1
    assert "port /dev/ttyCRYBLOCK_NOPE: Could not open /dev/ttyCRYBLOCK_NOPE" in err[0]
    assert "Traceback" not in r.output


def test_port_without_chip_real_esptool(build: Path) -> None:
    """Real esptool call on a serial port (a pty) where nothing answers the ROM sync."""
    master, slave = pty.openpty()
    try:
        with pytest.raises(CryblockError, match=r"port /dev/pts/\d+: Failed to connect to Espressif device"):
            flash.flash(flash.load_flasher_args(build), os.ttyname(slave), connect_attempts=1)
    finally:
        os.close(master)
        os.close(slave)


# ---- chip-facing esptool functions substituted (MOCK BOUNDARY: no chip exists here) ----------


class _FakeLoader:
    """Stands in for the ``ESPLoader`` that ``esptool.cmds.detect_chip`` returns for a real chip."""

    def __init__(self, chip: str, calls: list):
        self.CHIP_NAME = chip
        self.calls = calls
        self.closed = False

    def change_baud(self, baud):
        self.calls.append(("change_baud", baud))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True
        self.calls.append(("close",))


@pytest.fixture()
def esptool_boundary(monkeypatch):
    """Replace esptool.cmds' chip-facing functions by recorders. This is the one boundary mocked,
    because no ESP32-S3 is attached to the test machine; everything above it is the real code."""
    state = {"chip": "ESP32-S3", "calls": [], "written": {}, "fail": None}

    def detect_chip(port, baud=115200, connect_mode="default-reset", trace_enabled=False, connect_attempts=7):
        state["calls"].append(("detect_chip", port, baud, connect_mode))
        state["loader"] = _FakeLoader(state["chip"], state["calls"])
        return state["loader"]

    def run_stub(esp, plugins=None):
        state["calls"].append(("run_stub",))
        return esp

    def attach_flash(esp, spi_connection=None, flash_type="nor"):
        state["calls"].append(("attach_flash",))

    def write_flash(esp, addr_data, flash_freq="keep", flash_mode="keep", flash_size="keep", **kw):
        state["calls"].append(("write_flash", [a for a, _ in addr_data], flash_mode, flash_size, flash_freq))
        for addr, path in addr_data:
            state["written"][addr] = Path(path).read_bytes()
        if state["fail"]:
            raise FatalError(state["fail"])

    def verify_flash(esp, addr_data, flash_freq="keep", flash_mode="keep", flash_size="keep", diff=False,
                     flash_type="nor"):
        state["calls"].append(("verify_flash", [a for a, _ in addr_data], flash_mode, flash_size, flash_freq))

    def reset_chip(esp, reset_mode="hard-reset"):
        state["calls"].append(("reset_chip", reset_mode))

    for name, fn in dict(detect_chip=detect_chip, run_stub=run_stub, attach_flash=attach_flash,
                         write_flash=write_flash, verify_flash=verify_flash, reset_chip=reset_chip).items():
        monkeypatch.setattr(esptool.cmds, name, fn)
    return state


def test_flash_call_sequence(build: Path, esptool_boundary) -> None:
    r = CliRunner().invoke(cli, ["flash", "--port", "/dev/ttyACM0", "--project", str(build.parent)])
    assert r.exit_code == 0, r.output
    addrs = [0x0, 0x8000, 0x10000]
    assert esptool_boundary["calls"] == [
        ("detect_chip", "/dev/ttyACM0", 115200, "default-reset"),
        ("run_stub",),
        ("change_baud", 460800),
        ("attach_flash",),
        ("write_flash", addrs, "dio", "4MB", "80m"),
        ("verify_flash", addrs, "dio", "4MB", "80m"),
        ("reset_chip", "hard-reset"),
        ("close",),
    ]
    w = esptool_boundary["written"]
    assert w[0x10000] == (build / APP_NAME).read_bytes()
    assert w[0x8000][:2] == b"\xaa\x50" and w[0x0][0] == 0xE9
    assert "flashed 3 region(s) to ESP32-S3 on /dev/ttyACM0, verified; reset: hard-reset" in r.output


def test_flash_refuses_other_chip(build: Path, esptool_boundary) -> None:
    esptool_boundary["chip"] = "ESP32"
    r = CliRunner().invoke(cli, ["flash", "--port", "/dev/ttyUSB0", "--build-dir", str(build), "--no-verify"])
    assert r.exit_code == 2
    assert "error: port /dev/ttyUSB0: found ESP32, but this firmware is for ESP32-S3; refusing to flash" in r.output
    names = [c[0] for c in esptool_boundary["calls"]]
    assert names == ["detect_chip", "close"]  # nothing written, port closed


def test_flash_md5_failure_is_reported(build: Path, esptool_boundary) -> None:
    esptool_boundary["fail"] = "MD5 of file does not match data in flash!"
    with pytest.raises(CryblockError, match="flashing ESP32-S3 on /dev/ttyACM0 failed: MD5 of file does not match"):
        flash.flash(flash.load_flasher_args(build), "/dev/ttyACM0", verify=False)
    assert esptool_boundary["calls"][-1] == ("close",)
    assert "reset_chip" not in [c[0] for c in esptool_boundary["calls"]]
