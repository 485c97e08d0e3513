"""ESP-IDF project generation: INT8 ``.tflite`` + :class:`~cryblock.params.Params` → project folder.

:func:`generate_project` writes a complete ESP-IDF (≥ 5.1) project for the ESP32-S3 from the
jinja2 templates in ``templates/esp32s3/``:

* the model as an ``alignas(16)`` C array and a ``MicroMutableOpResolver<N>`` holding exactly the
  model's ops (:mod:`.model`);
* a tensor arena sized from a measurement plus an ESP-NN scratch bound and a margin (:mod:`.arena`);
* the C twin of the DSP block (``frontend.c`` + tables generated here by :func:`frontend_tables`),
  the detector (``postproc.c``), the ``CRYB/1`` log formatter (``cry_log.c``), I2S capture
  (``audio_i2s.c``) and ``main.cc``;
* ``sdkconfig.defaults``, ``Kconfig.projbuild`` (detector and pin defaults),
  ``idf_component.yml``, ``partitions.csv`` when the app outgrows the 1.5 MB default partition,
  and a README.

It also returns a size / latency report (:mod:`.size`). Everything is written into a temporary
folder next to ``out`` and renamed into place, so a failure never leaves half a project. The
ESP-IDF facts come from shared/docs/espidf-tflm-esptool-notes.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import stat
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cryblock import __version__
from cryblock import mqttformat as mf
from cryblock.errors import CryblockError, ParameterError
from cryblock.escape import c_comment, md_cell
from cryblock.output import atomic_write_text, check_output, staging_dir
from cryblock.params import DspParams, Params
from cryblock.signals import deferred

from . import esp_nn
from .arena import ArenaPlan, plan_arena
from .model import (ModelInfo, check_model_for_params, inspect_model, model_c_source, positive_output_index,
                    read_model, resolver_calls)
from .size import DEFAULT_APP_PARTITION, size_report


FLASH_SIZES_MB = (4, 8, 16, 32)
#: Build targets: the chip, and ESP-IDF's host target (the same project as a PC program).
TARGETS = ("esp32s3", "linux")
#: SPI flash modes esptool / ESP-IDF offer (``CONFIG_ESPTOOLPY_FLASHMODE_*``). DIO is the default:
#: every ESP32-S3 module boots with it, and Espressif's QEMU does not boot QIO images
#: (``qio_mode: Failed to set QIE bit``); QIO is slightly faster on boards whose flash supports it.
FLASH_MODES = ("dio", "qio", "dout", "qout")

#: ESP32-S3 GPIOs an I2S microphone cannot use (ESP32-S3 datasheet, "Pin overview" and
#: "Strapping pins"/"Peripheral pin configurations"): (pins, why, condition on the options).
RESERVED_GPIOS = (
    (range(22, 26), "does not exist on the ESP32-S3", lambda o: True),
    (range(26, 33), "is wired to the module's SPI flash/PSRAM", lambda o: True),
    (range(33, 38), "is wired to the octal flash/PSRAM of N8R8/N16R8-type modules (--psram oct)",
     lambda o: o.psram_mode == "oct"),
    ((19, 20), "is the native USB D-/D+ pair used by --console usb", lambda o: o.console == "usb"),
    ((43, 44), "is UART0 TX/RX, the --console uart port", lambda o: o.console == "uart"),
)


@dataclass(frozen=True)
class BuildOptions:
    """Board options of the generated project (all become Kconfig/sdkconfig defaults).

    target: "esp32s3", or "linux" (ESP-IDF's host target: the same firmware as a program on
    the PC). audio: where samples come from — "i2s" (microphone; esp32s3 only), "replay" (sent
    by the host over the serial console, :mod:`.emulate`; the linux default) or "file" (a raw
    PCM file named by ``$CRY_AUDIO_FILE``; linux only). None = the target's default.
    i2s: "std" (I2S Philips, e.g. INMP441) or "pdm" (PDM microphone; ``pin_ws`` = PDM clock).
    pin_*: GPIO numbers (defaults: esp-tflite-micro micro_speech's S3 pins 41/42/2).
    slot: "left" | "right" (INMP441 L/R pin low → left on most boards; configurable because
    community code disagrees). bits: 32 (24-bit MSB-aligned, INMP441) or 16.
    ram: "auto" | "internal" | "psram" for the arena. arena_margin: fraction (see plan_arena).
    flash_mb: module flash size; psram_mode: "oct" (N8R8/N16R8) | "quad" (N8R2).
    console: "uart" (ESP-IDF default: UART0, the USB-UART bridge port, reads serial commands) or
    "usb" (native USB Serial/JTAG port, /dev/ttyACM0, as primary console so it reads commands too).
    flash_mode: SPI flash mode, one of :data:`FLASH_MODES` (default dio).
    Pins in :data:`RESERVED_GPIOS` are refused.
    """

    target: str = "esp32s3"
    audio: str | None = None
    i2s: str = "std"
    pin_bclk: int = 41
    pin_ws: int = 42
    pin_din: int = 2
    slot: str = "left"
    bits: int = 32
    ram: str = "auto"
    arena_margin: float = 0.10
    flash_mb: int = 8
    psram_mode: str = "oct"
    console: str = "uart"
    flash_mode: str = "dio"
    project_name: str = "cry_detector"

    @property
    def audio_source(self) -> str:
        """The audio source: ``audio``, or the target's default (i2s on the S3, replay on linux)."""
        return self.audio or ("replay" if self.target == "linux" else "i2s")

    def validate(self) -> None:
        """Raise ParameterError naming the first bad option."""
        if self.target not in TARGETS:
            raise ParameterError(f"parameter 'target': must be one of {TARGETS}, got {self.target!r}")
        allowed = {"esp32s3": ("i2s", "replay"), "linux": ("replay", "file")}[self.target]
        if self.audio_source not in allowed:
            raise ParameterError(f"parameter 'audio': target {self.target} reads audio from {' or '.join(allowed)}, "
                                 f"got {self.audio_source!r}")
        if self.i2s not in ("std", "pdm"):
            raise ParameterError(f"parameter 'i2s': must be std or pdm, got {self.i2s!r}")
        for n in ("pin_bclk", "pin_ws", "pin_din"):
            v = getattr(self, n)
            if not (isinstance(v, int) and 0 <= v <= 48):
                raise ParameterError(f"parameter '{n}': ESP32-S3 GPIO must be 0..48, got {v!r}")
        pins = [self.pin_ws, self.pin_din] + ([self.pin_bclk] if self.i2s == "std" else [])
        if self.console not in ("uart", "usb"):
            raise ParameterError(f"parameter 'console': must be uart or usb, got {self.console!r}")
        if self.psram_mode not in ("oct", "quad"):
            raise ParameterError(f"parameter 'psram_mode': must be oct or quad, got {self.psram_mode!r}")
        for n in ("pin_ws", "pin_din") + (("pin_bclk",) if self.i2s == "std" else ()):
            v = getattr(self, n)
            for bad, why, applies in (RESERVED_GPIOS if self.audio_source == "i2s" else ()):
                if v in bad and applies(self):
                    raise ParameterError(f"parameter '{n}': GPIO {v} {why}; choose another pin")
        if len(set(pins)) != len(pins):
            raise ParameterError(f"I2S pins must differ, got bclk={self.pin_bclk} ws={self.pin_ws} din={self.pin_din}")
        if self.slot not in ("left", "right"):
            raise ParameterError(f"parameter 'slot': must be left or right, got {self.slot!r}")
        if self.bits not in (16, 32):
            raise ParameterError(f"parameter 'bits': must be 16 or 32, got {self.bits!r}")
        if self.i2s == "pdm" and self.bits != 16:
            raise ParameterError("parameter 'bits': PDM microphones deliver 16-bit samples (use --bits 16)")
        if self.flash_mb not in FLASH_SIZES_MB:
            raise ParameterError(f"parameter 'flash_mb': must be one of {FLASH_SIZES_MB}, got {self.flash_mb!r}")
        if self.flash_mode not in FLASH_MODES:
            raise ParameterError(f"parameter 'flash_mode': must be one of {FLASH_MODES}, got {self.flash_mode!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", self.project_name):
            raise ParameterError(f"parameter 'project_name': must be a C identifier, got {self.project_name!r}")


@dataclass(frozen=True)
class MqttOptions:
    """``cryblock build --mqtt``: the firmware joins Wi-Fi and publishes the fleet messages
    (:mod:`cryblock.mqttformat`; templates ``main/cry_msg.c``, ``main/cry_net.c``). Wi-Fi
    credentials, broker URI and device id are set at run time over the serial console (NVS),
    never here.

    snippets: publish the audio around each alert onset (off by default: privacy).
    ca: PEM file of the broker's CA, embedded as ``main/mqtt_ca.pem`` for ``mqtts://`` (None:
    ESP-IDF's certificate bundle of public CAs). ha_prefix: Home Assistant's discovery prefix
    (changeable at run time with ``set prefix``).
    """

    snippets: bool = False
    ca: str | None = None
    ha_prefix: str = "homeassistant"

    def validate(self, target: str) -> None:
        """Raise ParameterError naming the first bad option."""
        if target != "esp32s3":
            raise ParameterError("--mqtt: the firmware reaches the broker over the ESP32-S3's Wi-Fi; "
                                 f"target {target} has none")
        if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", self.ha_prefix) or len(self.ha_prefix) > 64:
            raise ParameterError(f"--ha-prefix: {self.ha_prefix!r} is not an MQTT topic prefix (A-Z a-z 0-9 _ - /)")
        if self.ca is not None:
            p = Path(self.ca)
            try:
                text = p.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as e:
                raise ParameterError(f"--mqtt-ca: {p}: cannot read a PEM file ({getattr(e, 'strerror', None) or e})") \
                    from None
            if "-----BEGIN CERTIFICATE-----" not in text or "-----END CERTIFICATE-----" not in text:
                raise ParameterError(f"--mqtt-ca: {p}: not a PEM certificate (no BEGIN/END CERTIFICATE lines)")


#: Template files of the network firmware, rendered only with ``--mqtt``.
MQTT_FILES = ("main/cry_msg.h", "main/cry_msg.c", "main/cry_net.h", "main/cry_net.c", "main/cry_net_config.h.j2")


def templates_dir() -> Path:
    """Folder of the jinja2 ESP-IDF project templates (package data of cryblock.templates): one code
    base for every target (``templates/esp32s3``, named after the chip it was written for)."""
    return Path(str(resources.files("cryblock.templates"))) / "esp32s3"


def _jinja_env(root: Path):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             autoescape=False)
    env.filters["c_comment"] = c_comment
    env.filters["md"] = md_cell
    return env


def _cfloat(x: float) -> str:
    s = repr(float(np.float32(x)))
    if "e" not in s and "." not in s and "inf" not in s and "nan" not in s:
        s += ".0"
    return s + "f"


def _c_list(values, per_line: int = 8, fmt=str) -> str:
    items = [fmt(v) for v in values]
    return ",\n    ".join(", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))


def frontend_tables(dsp: DspParams) -> dict[str, Any]:
    """Constants and tables for ``frontend_tables.h/.c`` from the DSP parameters.

    Returns a dict with ints (win, hop, nfft, nbins, nmel, patch_frames, patch_hop,
    sample_rate, patch_hop_ms), the log offset, the periodic Hann window (float32 [win]) and
    the sparse mel matrix: per band ``start`` bin, ``len`` and an ``offset`` into the
    concatenated non-zero ``weights`` (from :func:`cryblock.blocks.dsp.features.mel_matrix`).

    Raises:
        ParameterError: FFT length whose half is not a power of 4 (esp-dsp's radix-4 FFT).
    """
    from cryblock.blocks.dsp.features import mel_matrix, periodic_hann

    n = dsp.fft_length // 2
    if n < 4 or 4 ** round(math.log(n, 4)) != n:
        raise ParameterError(f"parameter 'stft_window_seconds': FFT length {dsp.fft_length} is not "
                             "supported on device (fft_length/2 must be a power of 4, e.g. 512)")
    if dsp.hop_length_samples > dsp.window_length_samples:
        raise ParameterError("parameter 'stft_hop_seconds': hop longer than the window")
    mm = mel_matrix(dsp)  # [bins, mel]
    starts, lens, offs, weights = [], [], [], []
    for b in range(mm.shape[1]):
        nz = np.nonzero(mm[:, b])[0]
        if nz.size == 0:
            s, ln = 0, 0
        else:
            s, ln = int(nz[0]), int(nz[-1] - nz[0] + 1)
        starts.append(s)
        lens.append(ln)
        offs.append(len(weights))
        weights.extend(float(w) for w in mm[s:s + ln, b])
    return {
        "sample_rate": int(round(dsp.sample_rate)),
        "win": dsp.window_length_samples,
        "hop": dsp.hop_length_samples,
        "nfft": dsp.fft_length,
        "nbins": dsp.num_spectrogram_bins,
        "nmel": dsp.mel_bands,
        "patch_frames": dsp.patch_frames,
        "patch_hop": dsp.patch_hop_frames,
        "patch_hop_ms": int(round(dsp.patch_hop_samples * 1000.0 / dsp.sample_rate)),
        "log_offset": float(dsp.log_offset),
        "hann": np.asarray(periodic_hann(dsp.window_length_samples), dtype=np.float32),
        "mel_start": starts, "mel_len": lens, "mel_offset": offs,
        "mel_weights": np.asarray(weights, dtype=np.float32),
    }


def _frontend_context(dsp: DspParams) -> dict[str, Any]:
    t = frontend_tables(dsp)
    return {
        "version": __version__, "fe": t, "dsp": dsp,
        "hann_c": _c_list(t["hann"], 6, _cfloat),
        "mel_weights_c": _c_list(t["mel_weights"], 6, _cfloat),
        "mel_start_c": _c_list(t["mel_start"], 16),
        "mel_len_c": _c_list(t["mel_len"], 16),
        "mel_offset_c": _c_list(t["mel_offset"], 16),
        "log_offset_c": _cfloat(t["log_offset"]),
    }


#: Firmware sources that need no ESP-IDF header (plain C99), for host builds and tests.
HOST_SOURCES = ("frontend.h", "frontend.c", "postproc.h", "postproc.c", "cry_log.h", "cry_log.c", "replay.h", "replay.c",
                "cry_app.h", "cry_app.c")


def write_host_sources(dest: str | os.PathLike, dsp: DspParams = DspParams()) -> Path:
    """Write the host-compilable firmware C sources into ``dest``: :data:`HOST_SOURCES` (the
    portable core: front-end, detector, log formatter, replay protocol, cry_app) plus
    ``frontend_tables.h/.c`` generated from ``dsp``. Lets that code be compiled with host gcc and
    compared with the Python blocks (tests, and the host twin of the firmware)."""
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    root = templates_dir() / "main"
    env = _jinja_env(root)
    ctx = _frontend_context(dsp)
    for name in ("frontend_tables.h", "frontend_tables.c"):
        (d / name).write_text(env.get_template(name + ".j2").render(**ctx))
    for name in HOST_SOURCES:
        shutil.copyfile(root / name, d / name)
    return d


def threshold_x1000(threshold: float) -> int:
    """The detector threshold in the firmware's unit: ``CONFIG_CRY_THRESHOLD_X1000`` thousandths,
    which the firmware turns into ``k / 1000.0f`` (float32).

    Raises:
        ParameterError: ``float32(k) / 1000`` is not ``float32(threshold)`` — the firmware would
            then count other patches as positive than :mod:`cryblock.detector` (which compares
            ``float32(score) >= float32(threshold)``) and ``detect`` do; 0.0004 would become 0
            and every patch would be positive. Names the two nearest thresholds the firmware holds.
    """
    k = int(round(threshold * 1000))
    if np.float32(k) / np.float32(1000) != np.float32(threshold):
        lo, hi = math.floor(threshold * 1000) / 1000, math.ceil(threshold * 1000) / 1000
        raise ParameterError(f"parameter 'detector.threshold': {threshold!r} is finer than the firmware's resolution "
                             f"of 0.001 (CONFIG_CRY_THRESHOLD_X1000), and rounding it would change which patches are "
                             f"positive; set {lo:g} or {hi:g} in params.json")
    return k


def template_context(info: ModelInfo, arena: ArenaPlan, params: Params, opts: BuildOptions,
                     report: dict[str, Any], mqtt: MqttOptions | None = None,
                     model_sha256: str = "") -> dict[str, Any]:
    """Every variable the templates use (rendering uses jinja2 StrictUndefined); ``mqtt`` False
    unless ``--mqtt``."""
    det = params.detector
    app_part = report["flash"]["app_partition_bytes"]
    if app_part + 0x20000 > opts.flash_mb * 1024 * 1024:
        raise CryblockError(f"app needs a {app_part} byte partition, larger than the {opts.flash_mb} MB flash")
    return {
        **_frontend_context(params.dsp),
        "fw": f"cryblock-{__version__}",
        "project_name": opts.project_name,
        "ops": list(info.ops),
        "op_methods": resolver_calls(info.ops),
        "ops_csv": ",".join(info.ops),
        "model_bytes": info.size_bytes,
        "macs": info.macs,
        "input": info.input, "output": info.output,
        "input_elems": info.input.size, "output_elems": info.output.size,
        "pos_index": positive_output_index(info, params),
        "output_activation_code": 0 if info.output_activation != "none" else (1 if info.output.size == 1 else 2),
        "positive_label": params.learn.positive_label,
        "arena": arena, "arena_bytes": arena.arena_bytes, "arena_psram": arena.region == "psram",
        "threshold_x1000": threshold_x1000(det.threshold),
        "vote_n": det.vote_n, "vote_m": det.vote_m,
        "hold_ms": int(round(det.hold_seconds * 1000)),
        "i2s": opts.i2s, "pin_bclk": opts.pin_bclk, "pin_ws": opts.pin_ws, "pin_din": opts.pin_din,
        "slot": opts.slot, "bits": opts.bits,
        "flash_mb": opts.flash_mb, "psram_mode": opts.psram_mode, "console": opts.console, "flash_mode": opts.flash_mode,
        "target": opts.target, "audio": opts.audio_source,
        "custom_partitions": app_part != DEFAULT_APP_PARTITION, "app_partition_bytes": app_part,
        "audio_ring_bytes": report["ram"]["audio_ring_bytes"],
        "input_scale_c": _cfloat(info.input.scale), "output_scale_c": _cfloat(info.output.scale),
        "report": report,
        "mqtt": False if mqtt is None else {
            "snippets": mqtt.snippets, "ca": mqtt.ca is not None, "ha_prefix": mqtt.ha_prefix,
            "snippet_pre_ms": int(round(mf.SNIPPET_PRE_S * 1000)), "snippet_post_ms": int(round(mf.SNIPPET_POST_S * 1000)),
            "status_period_s": mf.STATUS_PERIOD_S},
        "model_sha16": model_sha256[:16],
    }


def render_project(ctx: dict[str, Any], model: bytes, dest: Path) -> list[Path]:
    """Render every template into ``dest`` (``*.j2`` through jinja2 StrictUndefined, other files
    copied) and write ``main/model_data.cc``. Returns the written paths (relative)."""
    root = templates_dir()
    env = _jinja_env(root)
    written = []
    for src in sorted(root.rglob("*")):
        if src.is_dir() or src.name == "__init__.py" or "__pycache__" in src.parts:
            continue
        rel = src.relative_to(root)
        if rel.name == "partitions.csv.j2" and not ctx["custom_partitions"]:
            continue
        if rel.as_posix() in MQTT_FILES and not ctx.get("mqtt"):
            continue
        out_rel = rel.with_name(rel.name[:-3]) if rel.name.endswith(".j2") else rel
        out = dest / out_rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.name.endswith(".j2"):
            out.write_text(env.get_template(rel.as_posix()).render(**ctx))
        else:
            shutil.copyfile(src, out)
        written.append(out_rel)
    (dest / "main" / "model_data.cc").write_text(model_c_source(model))
    written.append(Path("main/model_data.cc"))
    return written


MARKER = ".cryblock-project.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sdkconfig_lines(kconfig_text: str) -> dict[str, str]:
    """``CONFIG_NAME=value`` lines that a fresh ``idf.py`` configuration would write for the
    cryblock Kconfig menu of a generated ``Kconfig.projbuild`` (its defaults), by name."""
    out: dict[str, str] = {}
    for name, body in re.findall(r"^\s*config (CRY_\w+)\n((?:\s+(?!config\b)\S.*\n)*)", kconfig_text, re.M):
        m = re.search(r"^\s+default (\S+)", body, re.M)
        if m and m.group(1) not in ("y", "n") and not m.group(1).startswith("CRY_"):
            out[name] = f"CONFIG_{name}={m.group(1)}"
        elif m and m.group(1) in ("y", "n"):
            out[name] = f"CONFIG_{name}=y" if m.group(1) == "y" else f"# CONFIG_{name} is not set"
    for choice, default in re.findall(r"^\s*choice (CRY_\w+)\n(?:.*\n)*?\s+default (CRY_\w+)", kconfig_text, re.M):
        for opt in re.findall(rf"^\s*config ({choice}_\w+)", kconfig_text, re.M):
            out[opt] = f"CONFIG_{opt}=y" if opt == default else f"# CONFIG_{opt} is not set"
    return out


def _sync_sdkconfig(project: Path) -> list[str]:
    """An existing ``sdkconfig`` keeps its values over changed defaults (ESP-IDF reads
    ``sdkconfig.defaults`` and Kconfig defaults only for options it lacks), so a regenerated
    project would silently keep the old model's detector threshold, votes, hold and pins. The
    cryblock options (``CONFIG_CRY_*``) are cryblock's output: set them to the new defaults.
    Returns one note per changed line."""
    sdk = project / "sdkconfig"
    if sdk.is_symlink():
        return ["sdkconfig is a symbolic link: read by ESP-IDF, not updated by cryblock (its CONFIG_CRY_* values "
                "stay as they are)"]
    if not sdk.is_file():
        return []
    want = _sdkconfig_lines((project / "main" / "Kconfig.projbuild").read_text())
    lines = sdk.read_text().splitlines()
    notes = []
    for i, line in enumerate(lines):
        m = re.match(r"^(?:# )?CONFIG_(CRY_\w+)[= ]", line)
        if m and m.group(1) in want and line != want[m.group(1)]:
            notes.append(f"sdkconfig: {line.strip()} → {want[m.group(1)]}")
            lines[i] = want[m.group(1)]
    if notes:
        atomic_write_text(sdk, "\n".join(lines) + "\n")
    return notes


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _marker_entry_ok(rel: object, digest: object) -> bool:
    """A marker entry as cryblock writes it: a relative, normalised POSIX path (no ``.``/``..``
    part, no empty part, no backslash) with a SHA-256 hex digest or null."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    p = PurePosixPath(rel)
    return (not p.is_absolute() and p.as_posix() == rel and ".." not in p.parts
            and (digest is None or (isinstance(digest, str) and _SHA256_HEX.fullmatch(digest) is not None)))


class _ProjectTree:
    """The files of an existing project folder, reached only through real sub-folders.

    Every folder on the way to a file is opened relative to its parent with ``O_NOFOLLOW``, and
    files are replaced, moved and removed relative to that folder's descriptor: a symlinked folder
    (or one swapped for a link meanwhile) is never followed, so nothing outside ``out`` is read,
    written or deleted. Files are hashed without following a link (a link is never "unchanged").
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self._fds: dict[tuple[str, ...], int] = {(): os.open(out, os.O_RDONLY | os.O_DIRECTORY)}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def folder(self, parts: tuple[str, ...], create: bool = False) -> int | None:
        """Descriptor of the sub-folder ``parts`` (created when ``create``); None when absent.
        Raises CryblockError when it is a symbolic link or not a folder."""
        if parts in self._fds:
            return self._fds[parts]
        parent = self.folder(parts[:-1], create)
        if parent is None:
            return None
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(parts[-1], dir_fd=parent)
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError:
            where = self.out.joinpath(*parts)
            if where.is_symlink():
                raise CryblockError(f"{where}: is a symbolic link; cryblock build writes only into real folders "
                                    "inside --out, never through a link (replace it by a folder or choose "
                                    "another --out)") from None
            raise CryblockError(f"{where}: is not a folder, but cryblock generates files in it") from None
        self._fds[parts] = fd
        return fd

    def locate(self, rel: str, create: bool = False) -> tuple[int | None, str]:
        """(descriptor of the folder holding ``rel``, file name)."""
        parts = tuple(rel.split("/"))
        return self.folder(parts[:-1], create), parts[-1]

    def kind(self, rel: str) -> str:
        """"file", "link", "missing" or "other" (a folder, FIFO, …), without following a link."""
        fd, name = self.locate(rel)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False) if fd is not None else None
        except FileNotFoundError:
            st = None
        if st is None:
            return "missing"
        return "file" if stat.S_ISREG(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "other"

    def sha256(self, rel: str) -> str | None:
        """SHA-256 of the regular file ``rel``; None for anything else."""
        if self.kind(rel) != "file":
            return None
        fd, name = self.locate(rel)
        with os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    def read(self, rel: str) -> bytes | None:
        """Content of the regular file ``rel``; None for anything else."""
        if self.kind(rel) != "file":
            return None
        fd, name = self.locate(rel)
        with os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as fh:
            return fh.read()

    def move(self, rel: str, to: Path) -> None:
        """Move ``rel`` to the path ``to`` (outside the tree: a backup)."""
        fd, name = self.locate(rel)
        to.parent.mkdir(parents=True, exist_ok=True)
        os.replace(name, to, src_dir_fd=fd)

    def put(self, src: Path, rel: str) -> None:
        """Move the path ``src`` to ``rel``, creating real folders on the way."""
        fd, name = self.locate(rel, create=True)
        os.replace(src, name, dst_dir_fd=fd)


def _earlier_files(tree: _ProjectTree, out: Path, files: list[Path]) -> dict[str, str | None]:
    """The generated files of the earlier cryblock project in ``out``: ``{relative path: SHA-256 or
    None}`` from its marker (None = no hash recorded: cryblock 0.1 wrote no file list, and its files
    are the ones generated now).

    Raises:
        CryblockError: ``out`` is not empty and holds no marker, or a marker entry is not a path of
            a file inside the project (absolute, ``..``, not normalised, a bad hash).
    """
    marker = out / MARKER
    kind = tree.kind(MARKER)
    if kind != "file":
        if kind == "missing" and not any(out.iterdir()):
            return {}
        raise CryblockError(f"{out}: folder exists and is not a cryblock project; choose another --out")
    try:
        doc = json.loads(tree.read(MARKER) or b"")
    except ValueError:
        doc = None
    old = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(old, dict):
        return {str(f): None for f in files}
    for rel, digest in old.items():
        if not _marker_entry_ok(rel, digest):
            raise CryblockError(f"{marker}: entry {json.dumps(rel)[:80]} → {json.dumps(digest)[:20]} is not how cryblock "
                                "records a generated file (a relative path inside --out and its SHA-256); the marker "
                                "was not written by cryblock: remove it, or choose another --out")
    return old


def _install(tmp: Path, out: Path, files: list[Path], force: bool) -> tuple[list[str], list[str]]:
    """Put the freshly rendered project ``tmp`` (its ``files``) in place at ``out``.

    A new ``out`` is the renamed ``tmp`` (atomic). Into an earlier cryblock project the generated
    files are replaced and everything else — ``sdkconfig``, ``build/``, ``managed_components/``,
    sources the user added — is kept; generated files the user edited since (their hash differs
    from the marker's record, or they were replaced by a link) are refused unless ``force``.

    Nothing outside ``out`` is touched: the marker's entries are checked (:func:`_earlier_files`) and
    files are reached only through real folders (:class:`_ProjectTree`). The replacement is all or
    nothing: a failure puts every earlier file back, and Ctrl-C, SIGTERM or SIGHUP take effect only
    once every file is in place (:func:`cryblock.signals.deferred`).

    Returns:
        (names of top-level entries kept, notes on sdkconfig values updated or left).

    Raises:
        CryblockError: ``out`` is a file, a non-empty folder that is no cryblock project, has a
            damaged marker or a symlinked folder, or holds edited generated files without ``force``.
    """
    if not out.exists():
        os.replace(tmp, out)
        return [], []
    if not out.is_dir():
        raise CryblockError(f"{out}: exists and is not a folder")
    tree = _ProjectTree(out)
    try:
        old = _earlier_files(tree, out, files)
        new = [str(f) for f in files if str(f) != MARKER] + [MARKER]  # the marker last
        for rel in new:
            if tree.kind(rel) == "other":
                raise CryblockError(f"{out / rel}: is not a regular file, but cryblock generates this file")
        obsolete = [rel for rel in sorted(set(old) - set(new)) if tree.kind(rel) == "file"]
        edited = sorted(rel for rel, h in old.items() if h and tree.kind(rel) != "missing" and tree.sha256(rel) != h)
        if edited and not force:
            raise CryblockError(f"{out}: {', '.join(edited)} changed since cryblock generated them; save your "
                                "changes elsewhere or pass --force to overwrite them")
        obsolete = [rel for rel in obsolete if force or old[rel] is None or tree.sha256(rel) == old[rel]]
        backup = tmp / ".earlier"
        moved: list[tuple[str, bool, bool]] = []  # (rel, earlier file moved to backup, new file placed)
        with deferred():
            try:
                for rel in new:
                    had = tree.kind(rel) != "missing"
                    if had:
                        tree.move(rel, backup / rel)
                    moved.append((rel, had, False))
                    tree.put(tmp / rel, rel)
                    moved[-1] = (rel, had, True)
                for rel in obsolete:  # generated before, not any more (e.g. partitions.csv)
                    tree.move(rel, backup / rel)
                    moved.append((rel, True, False))
            except BaseException:
                for rel, had, placed in reversed(moved):
                    fd, name = tree.locate(rel)
                    if placed:
                        os.unlink(name, dir_fd=fd)
                    if had:
                        os.replace(backup / rel, name, dst_dir_fd=fd)  # if this fails, the copy stays in tmp
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the earlier files too, before a held-back signal acts
    finally:
        tree.close()
    top = {rel.split("/")[0] for rel in new}
    kept = sorted(e.name for e in out.iterdir() if e.name not in top)
    return kept, _sync_sdkconfig(out)


@dataclass
class BuildResult:
    """What :func:`generate_project` did: ``project`` folder, size ``report`` dict, model
    ``info``, arena ``plan``, ``files`` written (relative), ``idf`` status line, ``kept``
    (user entries of an earlier project left in place) and ``notes`` (sdkconfig values updated)."""

    project: Path
    report: dict[str, Any]
    info: ModelInfo
    arena: ArenaPlan
    files: list[Path]
    idf: str = "not run"
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def generate_project(model_path: str | os.PathLike, out_dir: str | os.PathLike,
                     params: Params | None = None, options: BuildOptions | None = None, *,
                     force: bool = False, mqtt: MqttOptions | None = None) -> BuildResult:
    """Generate the ESP-IDF project for ``model_path`` into ``out_dir`` (atomically).

    Args:
        model_path: INT8 ``.tflite`` with int8 input and output (``model_quantized_int8_io.tflite``).
        out_dir: project folder to create. In an earlier cryblock project the generated files
            are replaced and everything else (sdkconfig, build/, added sources) is kept, its
            ``CONFIG_CRY_*`` values updated (:func:`_install`); any other non-empty folder is refused.
        params: the run's parameters (DSP front-end, labels, detector defaults); defaults if None.
        options: board options (:class:`BuildOptions`).
        force: overwrite generated files the user edited since.
        mqtt: network firmware (:class:`MqttOptions`); None: exactly the serial-only firmware.

    Returns:
        :class:`BuildResult` (``report`` also saved as ``size_report.json`` in the project).

    Raises:
        CryblockError / ParameterError: bad model (not int8 I/O, input shape ≠ patch shape,
            unsupported op), bad option, arena too large for the RAM region, output folder taken.
    """
    params = params or Params()
    opts = options or BuildOptions()
    opts.validate()
    if mqtt is not None:
        mqtt.validate(opts.target)
    out = Path(out_dir).resolve()
    check_output(out, folder=True)
    if re.search(r"\s", str(out)):  # "does not support spaces in the paths to ... projects" (ESP-IDF Get Started)
        raise CryblockError(f"{str(out)!r}: --out contains a space or line break; the ESP-IDF build system does "
                            "not support spaces in project paths — choose a path without them")
    model = read_model(model_path)
    name = Path(model_path).name
    info = inspect_model(model, name)
    check_model_for_params(info, params, name)
    arena = plan_arena(model, opts.ram, opts.arena_margin, target=opts.target)
    report = size_report(info, arena, params.dsp)
    defects = esp_nn.known_defects(model) if opts.target == "esp32s3" else []
    report["esp_nn"] = {"required": esp_nn.REQUIRED, "verified": esp_nn.VERIFIED,
                        "statement": esp_nn.statement(opts.target),
                        "known_defects": [{"level": lv, "text": t} for lv, t in defects]}
    ctx = template_context(info, arena, params, opts, report, mqtt, hashlib.sha256(model).hexdigest())

    tmp = staging_dir(out.parent, f"{out.name}.tmp")
    try:
        files = render_project(ctx, model, tmp)
        if mqtt is not None and mqtt.ca is not None:
            shutil.copyfile(mqtt.ca, tmp / "main" / "mqtt_ca.pem")
            files.append(Path("main/mqtt_ca.pem"))
        (tmp / "size_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        params.save(tmp / "params.json")
        files += [Path("size_report.json"), Path("params.json")]
        hashes = {str(f): _sha256(tmp / f) for f in files}
        marker = {"generator": f"cryblock {__version__}", "model": name, "options": asdict(opts), "files": hashes}
        if mqtt is not None:
            marker["mqtt"] = asdict(mqtt)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        files.append(Path(MARKER))
        kept, notes = _install(tmp, out, files, force)
    except BaseException:
        if not any(p.is_file() for p in (tmp / ".earlier").rglob("*")):  # never delete files not put back
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = dict(report, project=str(out))
    return BuildResult(out, report, info, arena, files, kept=kept, notes=notes)
