"""Flash an ESP-IDF build to an ESP32-S3 with esptool.

:func:`load_flasher_args` reads ``build/flasher_args.json`` (written by ESP-IDF from
``components/esptool_py/flasher_args.json.in``: ``flash_files`` offset→file map,
``flash_settings``, ``extra_esptool_args``) into a :class:`FlashPlan`; :func:`flash` writes it
with the esptool v5 Python API (``detect_chip`` → chip check → ``run_stub`` → ``attach_flash`` →
``write_flash`` (MD5 check of every region built in) → ``verify_flash`` → ``reset_chip``).

Every user mistake (missing build dir/file, wrong chip, bad port, no device) raises
:class:`~cryblock.errors.CryblockError` with one line naming the file or port.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryblock.errors import CryblockError, one_line


#: esptool's name for the only chip cryblock flashes (``esptool.targets.ESP32S3ROM.CHIP_NAME``).
TARGET_CHIP_NAME = "ESP32-S3"


#: ESP-IDF target name of that chip (``flasher_args.json`` ``extra_esptool_args.chip``).
TARGET_IDF_NAME = "esp32s3"


#: First byte of every ESP application/bootloader image (``esp_image_header_t.magic``, ESP-IDF
#: ``components/bootloader_support/include/esp_app_format.h``: ``ESP_IMAGE_HEADER_MAGIC``).
ESP_IMAGE_MAGIC = 0xE9


#: Byte offset of the little-endian uint16 ``chip_id`` in ``esp_image_header_t`` (same header).
_IMAGE_CHIP_ID_OFFSET = 12


#: Flashing speed after the stub is loaded (``idf.py flash`` default), Bd.
FLASH_BAUD = 460800


#: Baud esptool uses to talk to the ROM bootloader before ``change_baud``.
_ROM_BAUD = 115200


@dataclass(frozen=True)
class FlashPlan:
    """What to write where, read from an ESP-IDF ``build/flasher_args.json``.

    Attributes:
        build_dir: the build folder the file paths are relative to.
        files: ``((offset, path), ...)`` sorted by flash offset in bytes; paths are absolute.
        flash_mode, flash_size, flash_freq: ``flash_settings`` (e.g. ``dio``, ``4MB``, ``80m``);
            written into the bootloader header by esptool.
        before, after: esptool reset modes in v5 spelling (``default-reset``, ``hard-reset``),
            from ``extra_esptool_args`` (ESP-IDF writes ``default_reset``/``hard_reset``).
        stub: whether to upload the flasher stub (``extra_esptool_args.stub``, default True).
        chip: ESP-IDF target named in the file (``esp32s3``), or ``None`` if absent.
    """

    build_dir: Path
    files: tuple[tuple[int, Path], ...]
    flash_mode: str = "keep"
    flash_size: str = "keep"
    flash_freq: str = "keep"
    before: str = "default-reset"
    after: str = "hard-reset"
    stub: bool = True
    chip: str | None = None

    @property
    def addr_data(self) -> list[tuple[int, str]]:
        """``[(offset, path_str), ...]`` as esptool's ``write_flash``/``verify_flash`` take it."""
        return [(off, str(p)) for off, p in self.files]


def find_build_dir(project: str | Path | None = None, build_dir: str | Path | None = None) -> Path:
    """Resolve the build folder: ``build_dir`` if given, else ``<project>/build``.

    Raises:
        CryblockError: neither given, both given, or the folder does not exist.
    """
    if build_dir is not None and project is not None:
        raise CryblockError("give either --project or --build-dir, not both")
    if build_dir is None:
        if project is None:
            raise CryblockError("give --project DIR (ESP-IDF project) or --build-dir DIR (its build folder)")
        proj = Path(project)
        if not proj.is_dir():
            raise CryblockError(f"{proj}: project folder not found")
        build_dir = proj / "build"
        if not build_dir.is_dir():
            raise CryblockError(f"{build_dir}: build folder not found (run `idf.py build` in {proj} first)")
    bd = Path(build_dir)
    if not bd.is_dir():
        raise CryblockError(f"{bd}: build folder not found")
    return bd


#: Flash sector size, bytes: esptool erases whole 4 KiB sectors, so a region that does not start on
#: one would erase the end of its neighbour (ESP-IDF places every image on a sector boundary).
FLASH_SECTOR = 0x1000
#: Largest flash an ESP32-S3 addresses, bytes (32 MB, ``esptool`` ``ESP32S3ROM.FLASH_SIZES``).
MAX_FLASH_BYTES = 32 * 1024 * 1024


def _parse_offset(text: object, where: str) -> int:
    try:
        off = int(str(text), 0)
    except ValueError:
        raise CryblockError(f"{where}: flash offset {text!r} is not a number") from None
    if off < 0:
        raise CryblockError(f"{where}: negative flash offset {text!r}")
    if off % FLASH_SECTOR:
        raise CryblockError(f"{where}: flash offset {text!r} is not on a 4 KiB sector boundary")
    return off


def _flash_bytes(size: object) -> int:
    """``"4MB"`` → 4 MiB; anything else (``keep``, ``detect``) → :data:`MAX_FLASH_BYTES`."""
    m = re.fullmatch(r"(\d+)MB", str(size))
    return int(m.group(1)) * 1024 * 1024 if m else MAX_FLASH_BYTES


def _check_image(path: Path, label: str) -> None:
    """Refuse an app/bootloader image that is not an ESP image or not built for ESP32-S3."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16 or head[0] != ESP_IMAGE_MAGIC:
        first = f"0x{head[0]:02X}" if head else "nothing (empty file)"
        raise CryblockError(f"{path}: {label} is not an ESP image (first byte {first}, expected 0xE9)")
    chip_id = int.from_bytes(head[_IMAGE_CHIP_ID_OFFSET:_IMAGE_CHIP_ID_OFFSET + 2], "little")
    from esptool.targets import CHIP_DEFS, ESP32S3ROM

    if chip_id != ESP32S3ROM.IMAGE_CHIP_ID:
        names = {c.IMAGE_CHIP_ID: c.CHIP_NAME for c in CHIP_DEFS.values() if c.IMAGE_CHIP_ID is not None}
        raise CryblockError(
            f"{path}: {label} image is built for {names.get(chip_id, f'chip id {chip_id}')}, "
            f"not {TARGET_CHIP_NAME} (run `idf.py set-target {TARGET_IDF_NAME}` and rebuild)")


def load_flasher_args(build_dir: str | Path) -> FlashPlan:
    """Read ``<build_dir>/flasher_args.json`` into a :class:`FlashPlan` and check it.

    Checks: the JSON parses; ``flash_files`` is a non-empty ``{"0x…": "relative/path"}`` map; every
    file exists and is non-empty; regions do not overlap; the target (``extra_esptool_args.chip``,
    and the ``chip_id`` in the headers of the ``bootloader``/``app`` images) is ESP32-S3.

    Raises:
        CryblockError: naming the file and the problem.
    """
    bd = Path(build_dir)
    fa = bd / "flasher_args.json"
    if not bd.is_dir():
        raise CryblockError(f"{bd}: build folder not found")
    if not fa.is_file():
        raise CryblockError(f"{fa}: not found (is {bd} an ESP-IDF build folder? run `idf.py build`)")
    try:
        doc = json.loads(fa.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CryblockError(f"{fa}: cannot read JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CryblockError(f"{fa}: expected a JSON object")
    ff = doc.get("flash_files")
    if not isinstance(ff, dict) or not ff:
        raise CryblockError(f"{fa}: no 'flash_files' map (offset -> file)")
    settings = doc.get("flash_settings", {})
    if not isinstance(settings, dict):
        raise CryblockError(f"{fa}: 'flash_settings' is not an object")
    flash_end = _flash_bytes(settings.get("flash_size"))
    files: list[tuple[int, Path]] = []
    root = bd.resolve()
    for off_text, rel in ff.items():
        off = _parse_offset(off_text, f"{fa} flash_files")
        if not isinstance(rel, str) or not rel:
            raise CryblockError(f"{fa}: flash_files[{off_text!r}] is not a file path")
        p = (bd / rel).resolve()
        if not p.is_relative_to(root):  # ESP-IDF writes paths inside build/; never flash ../../etc/shadow
            raise CryblockError(f"{fa}: flash_files[{off_text!r}] = {rel!r} points outside the build folder {bd}")
        if not p.is_file():
            raise CryblockError(f"{bd / rel}: listed in {fa.name} at {off_text} but not found")
        if p.stat().st_size == 0:
            raise CryblockError(f"{bd / rel}: listed in {fa.name} at {off_text} but empty")
        if off + p.stat().st_size > flash_end:
            raise CryblockError(f"{fa}: {rel} at {off_text} ({p.stat().st_size} bytes) ends beyond the "
                                f"{flash_end // (1024 * 1024)} MB flash")
        files.append((off, p))
    files.sort()
    for (o1, p1), (o2, p2) in zip(files, files[1:]):
        if o1 + p1.stat().st_size > o2:
            raise CryblockError(f"{fa}: {p1.name} at 0x{o1:x} ({p1.stat().st_size} bytes) overlaps "
                                f"{p2.name} at 0x{o2:x}")

    extra = doc.get("extra_esptool_args", {})  # [] or "" is a damaged file, not "no extra args"
    if not isinstance(extra, dict):
        raise CryblockError(f"{fa}: 'extra_esptool_args' is not an object")
    chip = extra.get("chip")
    if chip is not None and str(chip).lower() != TARGET_IDF_NAME:
        raise CryblockError(f"{fa}: build targets {chip}, cryblock flashes {TARGET_IDF_NAME} only "
                            f"(run `idf.py set-target {TARGET_IDF_NAME}`)")
    stub = extra.get("stub", True)
    if isinstance(stub, str):
        stub = stub.lower() not in ("false", "0", "no")

    for label, ent in doc.items():
        if isinstance(ent, dict) and str(ent.get("encrypted", "false")).lower() == "true":
            raise CryblockError(f"{fa}: '{label}' is marked encrypted; flash encryption is not supported "
                                "by `cryblock flash` (use `idf.py encrypted-flash`)")
    # Named entries (bootloader / app) tell which images carry an ESP image header.
    for label in ("bootloader", "app"):
        ent = doc.get(label)
        if isinstance(ent, dict) and ent.get("file"):
            if not isinstance(ent["file"], str):
                raise CryblockError(f"{fa}: '{label}.file' is not a file path")
            p = (bd / ent["file"]).resolve()
            if not p.is_relative_to(root):
                raise CryblockError(f"{fa}: '{label}.file' = {ent['file']!r} points outside the build folder {bd}")
            if not p.is_file():
                raise CryblockError(f"{bd / ent['file']}: {label} image listed in {fa.name} but not found")
            _check_image(p, label)

    def reset_mode(v: object, default: str) -> str:
        return str(v).replace("_", "-") if v else default

    return FlashPlan(
        build_dir=bd, files=tuple(files),
        flash_mode=str(settings.get("flash_mode", "keep")),
        flash_size=str(settings.get("flash_size", "keep")),
        flash_freq=str(settings.get("flash_freq", "keep")),
        before=reset_mode(extra.get("before"), "default-reset"),
        after=reset_mode(extra.get("after"), "hard-reset"),
        stub=bool(stub), chip=None if chip is None else str(chip))


@dataclass(frozen=True)
class FlashReport:
    """Outcome of :func:`flash`: the chip found, the regions written (offset, bytes, file)
    and whether a separate ``verify_flash`` pass ran (``write_flash`` always MD5-checks)."""

    port: str
    chip: str
    regions: tuple[tuple[int, int, str], ...]
    verified: bool
    reset: str


def flash(plan: FlashPlan, port: str, baud: int = FLASH_BAUD, verify: bool = True,
          connect_attempts: int = 7) -> FlashReport:
    """Write ``plan`` to the ESP32-S3 on ``port`` with the esptool v5 Python API.

    Sequence: ``detect_chip`` (ROM bootloader at 115200 Bd, reset mode ``plan.before``) →
    refuse any chip other than ESP32-S3 → ``run_stub`` (if ``plan.stub``) → ``change_baud(baud)``
    → ``attach_flash`` → ``write_flash`` (esptool MD5-checks each region after writing) →
    ``verify_flash`` (if ``verify``; MD5 digest of each region, read back from flash) →
    ``reset_chip(plan.after)`` (``hard-reset``: the new firmware starts).

    Args:
        plan: from :func:`load_flasher_args`.
        port: serial device (``/dev/ttyACM0``, ``COM5``, ``rfc2217://…``).
        baud: flashing speed after the stub is running, in Bd (default 460800, ``idf.py`` default).
        verify: run ``verify_flash`` after writing.
        connect_attempts: esptool connection attempts (its default 7).

    Raises:
        CryblockError: port missing/busy, no ESP device answering, wrong chip, write or
            verification failure — esptool's ``FatalError`` translated to one line.
    """
    import serial
    from esptool import cmds as et
    from esptool.util import FatalError

    addr_data = plan.addr_data
    try:
        rom = et.detect_chip(port, baud=_ROM_BAUD, connect_mode=plan.before,
                             connect_attempts=connect_attempts)
    except FatalError as e:
        raise CryblockError(f"port {port}: {one_line(e)}") from None
    except (serial.SerialException, OSError) as e:
        raise CryblockError(f"port {port}: cannot open ({one_line(e)})") from None
    with rom:  # ESPLoader closes its serial port on exit
        chip = str(getattr(rom, "CHIP_NAME", "unknown chip"))
        if chip != TARGET_CHIP_NAME:
            raise CryblockError(f"port {port}: found {chip}, but this firmware is for {TARGET_CHIP_NAME}; "
                                "refusing to flash")
        try:
            esp = et.run_stub(rom) if plan.stub else rom
            if baud != _ROM_BAUD:
                esp.change_baud(baud)
            et.attach_flash(esp)
            settings = dict(flash_mode=plan.flash_mode, flash_size=plan.flash_size,
                            flash_freq=plan.flash_freq)
            et.write_flash(esp, addr_data, **settings)
            if verify:
                et.verify_flash(esp, addr_data, **settings)
            et.reset_chip(esp, plan.after)
        except FatalError as e:
            raise CryblockError(f"flashing {chip} on {port} failed: {one_line(e)}") from None
        except (serial.SerialException, OSError) as e:
            raise CryblockError(f"flashing {chip} on {port}: lost the port ({one_line(e)})") from None
    regions = tuple((off, p.stat().st_size, str(p)) for off, p in plan.files)
    return FlashReport(port=port, chip=chip, regions=regions, verified=verify, reset=plan.after)
