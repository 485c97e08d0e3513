"""``cryblock build``: generate the ESP-IDF project (and build it when ESP-IDF is available)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from .options import FiniteFloat


def register(group: click.Group) -> None:
    """Add ``build`` and ``emulate`` to the ``cryblock`` group."""
    group.add_command(build)
    group.add_command(emulate_cmd)


#: build options that configure the ESP32-S3 board only (ignored by --target linux)
_BOARD_ONLY = ("i2s", "pin_bclk", "pin_ws", "pin_din", "slot", "bits", "ram", "flash_size", "psram_mode", "console",
               "flash_mode")


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="INT8 TFLite model with int8 input/output (model_quantized_int8_io.tflite).")
@click.option("--params", "params_path", type=click.Path(dir_okay=False), default=None,
              help="params.json of the training run (DSP front-end, labels, detector defaults); "
                   "default: the params.json beside the model, if there is one.")
@click.option("--target", type=click.Choice(["esp32s3", "linux"]), default="esp32s3", show_default=True,
              help="esp32s3, or linux: ESP-IDF's host target (the same firmware as a program on this PC, "
                   "fed with replayed audio; see cryblock emulate).")
@click.option("--audio", type=click.Choice(["i2s", "replay", "file"]), default=None,
              help="Audio source: i2s microphone (esp32s3 default), replay over the serial console (linux default; "
                   "also on the S3, for QEMU and bench boards), or file ($CRY_AUDIO_FILE, linux).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Project folder to write. In an earlier cryblock project only generated files are replaced "
                   "(build/ and your own files are kept; sdkconfig is kept with its CONFIG_CRY_* options set to "
                   "the new values).")
@click.option("--i2s", type=click.Choice(["std", "pdm"]), default="std", show_default=True,
              help="Microphone interface: I2S standard (INMP441) or PDM.")
@click.option("--pin-bclk", type=int, default=41, show_default=True, help="I2S BCLK GPIO (std only).")
@click.option("--pin-ws", type=int, default=42, show_default=True, help="I2S WS GPIO, or PDM CLK.")
@click.option("--pin-din", type=int, default=2, show_default=True, help="I2S / PDM data GPIO.")
@click.option("--slot", type=click.Choice(["left", "right"]), default="left", show_default=True)
@click.option("--bits", type=click.Choice(["16", "32"]), default=None,
              help="I2S slot width (default 32 for std/INMP441, 16 for PDM).")
@click.option("--ram", type=click.Choice(["auto", "internal", "psram"]), default="auto", show_default=True,
              help="Where the tensor arena lives (auto: internal RAM when it fits).")
@click.option("--arena-margin", type=FiniteFloat(0, 10), default=0.10, show_default=True,
              help="Extra arena as a fraction of the host measurement (on top of the ESP-NN scratch bound).")
@click.option("--flash-size", type=click.Choice(["4", "8", "16", "32"]), default="8", show_default=True,
              help="Module flash size in MB.")
@click.option("--psram", "psram_mode", type=click.Choice(["oct", "quad"]), default="oct", show_default=True,
              help="PSRAM type: octal (N8R8, N16R8) or quad (N8R2).")
@click.option("--console", type=click.Choice(["uart", "usb"]), default="uart", show_default=True,
              help="Primary console (reads serial commands): UART0 via the USB-UART bridge, or the native "
                   "USB Serial/JTAG port (/dev/ttyACM0).")
@click.option("--flash-mode", type=click.Choice(["dio", "qio", "dout", "qout"]), default="dio", show_default=True,
              help="SPI flash mode (DIO boots on every module and in QEMU; QIO is slightly faster where supported).")
@click.option("--mqtt", is_flag=True,
              help="Network firmware: Wi-Fi + MQTT messages (cryblock/<device>/event, status, availability), Home "
                   "Assistant discovery. Set Wi-Fi, broker and device id on the serial console: set wifi SSID PASS, "
                   "set mqtt mqtts://HOST:8883, set device ID (kept in NVS, never in the sources).")
@click.option("--mqtt-snippets", is_flag=True,
              help="With --mqtt: also publish the audio around each alert onset (for the hub's second opinion; "
                   "off by default for privacy).")
@click.option("--mqtt-ca", type=click.Path(dir_okay=False), default=None,
              help="With --mqtt: PEM file of the broker's CA, embedded for mqtts:// (default: ESP-IDF's bundle of "
                   "public CAs).")
@click.option("--ha-prefix", default="homeassistant", show_default=True,
              help="With --mqtt: Home Assistant's MQTT discovery prefix.")
@click.option("--force", is_flag=True, help="Overwrite generated files edited since an earlier build into --out.")
@click.option("--no-idf", is_flag=True, help="Only generate; do not run idf.py even if ESP-IDF is available.")
@click.option("--json", "as_json", is_flag=True, help="Print the size report as JSON.")
def build(model_path, params_path, target, audio, out_dir, i2s, pin_bclk, pin_ws, pin_din, slot, bits, ram,
          arena_margin, flash_size, psram_mode, console, flash_mode, mqtt, mqtt_snippets, mqtt_ca, ha_prefix, force,
          no_idf, as_json):
    """Generate an ESP-IDF project for the model and report flash/RAM/latency."""
    from cryblock.blocks.deploy.idf import find_idf, idf_size, run_idf_build
    from cryblock.blocks.deploy.size import write_measured_sizes
    from cryblock.blocks.deploy.project import BuildOptions, MqttOptions, generate_project
    from cryblock.errors import CryblockError
    from cryblock.blocks.deploy.size import format_report
    from cryblock.params import Params

    if params_path is None:
        beside = Path(model_path).with_name("params.json")
        if beside.is_file():
            params_path = str(beside)
            click.echo(f"params  : {beside} (beside the model)", err=True)
        else:
            click.echo("params  : none given and no params.json beside the model: using defaults "
                       "(YAMNet front-end, detector threshold 0.5)", err=True)
    params = Params.load(params_path) if params_path else Params()
    if target == "linux":  # a PC program has no microphone pins, flash chip, PSRAM or console choice
        ctx = click.get_current_context()
        ignored = [p.opts[0] for p in ctx.command.params if p.name in _BOARD_ONLY
                   and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if ignored:
            click.echo(f"note    : --target linux ignores the ESP32-S3 board option(s) {', '.join(ignored)}", err=True)
    opts = BuildOptions(target=target, audio=audio, i2s=i2s, pin_bclk=pin_bclk, pin_ws=pin_ws, pin_din=pin_din, slot=slot,
                        bits=int(bits) if bits else (16 if i2s == "pdm" else 32), ram=ram,
                        arena_margin=arena_margin, flash_mb=int(flash_size), psram_mode=psram_mode,
                        console=console, flash_mode=flash_mode)
    if not mqtt and (mqtt_snippets or mqtt_ca or ha_prefix != "homeassistant"):
        raise CryblockError("--mqtt-snippets / --mqtt-ca / --ha-prefix: only with --mqtt")
    net = MqttOptions(snippets=mqtt_snippets, ca=mqtt_ca, ha_prefix=ha_prefix) if mqtt else None
    res = generate_project(model_path, out_dir, params, opts, force=force, mqtt=net)
    if as_json:
        click.echo(json.dumps(res.report, indent=2, ensure_ascii=False))
    else:
        click.echo(format_report(res.report))
        click.echo(f"project : {res.project}")
    if res.kept:
        click.echo(f"kept    : {', '.join(res.kept)} (not generated by cryblock)", err=True)
    for note in res.notes:
        click.echo(f"note    : {note}", err=True)
    if no_idf:
        return
    how = find_idf()
    if how is None:
        click.echo("ESP-IDF not found (no idf.py on PATH, IDF_PATH unset): project generated but not built.\n"
                   f"To build: install ESP-IDF >= 5.1, `. $IDF_PATH/export.sh`, then\n"
                   f"  cd {shlex.quote(str(res.project))} && idf.py {'--preview ' if target == 'linux' else ''}build",
                   err=True)
        return
    click.echo(f"running idf.py build in {res.project} ...", err=True)
    run_idf_build(res.project, target)
    click.echo(f"built: {res.project / 'build'}")
    sizes = idf_size(res.project) if target == "esp32s3" else None
    if sizes:
        click.echo(f"size    : flash {sizes['flash_bytes']:,} B, DRAM {sizes['dram_bytes']:,} B, IRAM "
                   f"{sizes['iram_bytes']:,} B (esp_idf_size of the linker map; replaces the estimate)")
        write_measured_sizes(res.project, sizes)


@click.command("emulate")
@click.option("--project", required=True, type=click.Path(file_okay=False, exists=True),
              help="Generated project: built for the linux target, or (--qemu, --port) an ESP32-S3 --audio "
                   "replay build.")
@click.option("--audio", "audio", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Recording to replay (repeatable; any format the DSP block reads; any length, streamed).")
@click.option("--qemu", default=None, help="Espressif's qemu-system-xtensa: boot the project's ESP32-S3 image in it.")
@click.option("--kernels", type=click.Choice(["ansi", "optimized"]), default="ansi", show_default=True,
              help="With --qemu: esp-nn's reference C kernels (CONFIG_NN_ANSI_C, built in build-nn-ansi-c/), or its "
                   "optimised S3 kernels (build/ as it is; Espressif's QEMU mis-emulates some of their SIMD "
                   "instructions).")
@click.option("--port", default=None,
              help="Serial port of a board running the project's --audio replay build (e.g. /dev/ttyUSB0): "
                   "the bit-exactness check on the real chip. The board is reset (RTS) before each recording.")
@click.option("--baud", type=click.IntRange(300, 5_000_000), default=115200, show_default=True,
              help="The board's console speed (with --port).")
@click.option("--binary", default=None, type=click.Path(dir_okay=False),
              help="Program to run instead of build/<name>.elf (anything speaking the replay protocol).")
@click.option("--boot-timeout", type=FiniteFloat(1, 3600), default=120.0, show_default=True,
              help="Seconds to wait for the BOOT line.")
@click.option("--json", "as_json", type=click.Path(dir_okay=False), default=None, help="Write the comparison as JSON.")
@click.pass_context
def emulate_cmd(ctx, project, audio, qemu, kernels, port, baud, binary, boot_timeout, as_json):
    """Run the firmware on recordings (linux-target build, the S3 image in QEMU, or a board on its
    serial port) and compare its scores and detector events with the Python INT8 run of the same
    audio. Exit status 0 when every recording is within one output step with identical
    decisions, 1 when one differs."""
    import dataclasses

    from cryblock.blocks.deploy.emulate import ANSI_C_DEFAULTS, QEMU_SIMD_CAVEAT, emulate, format_comparison
    from cryblock.errors import CryblockError
    from cryblock.output import atomic_write_text, check_output, json_safe

    if sum(x is not None for x in (qemu, port, binary)) > 1:
        raise CryblockError("--qemu, --port and --binary: give at most one (where the firmware runs)")
    if ctx.get_parameter_source("kernels") == click.core.ParameterSource.COMMANDLINE and not qemu:
        raise CryblockError("--kernels: only with --qemu (a linux build uses esp-nn's C kernels, a board its "
                            "build's own)")
    if as_json:
        check_output(as_json, folder=False, what="--json", inputs=(*audio, project))
    if qemu and kernels == "ansi":
        click.echo(f"QEMU: esp-nn's reference C kernels (CONFIG_NN_ANSI_C, {ANSI_C_DEFAULTS}), built in "
                   "build-nn-ansi-c/; the board's optimised kernels are checked on a board (--port)", err=True)
    elif qemu:
        click.echo(f"QEMU: esp-nn's optimised S3 kernels (build/). Caveat: {QEMU_SIMD_CAVEAT}", err=True)
    results = emulate(project, audio, binary=binary, qemu=qemu, kernels=kernels, port=port, baud=baud,
                      boot_timeout=boot_timeout)
    for c in results:
        click.echo(format_comparison(c))
    if as_json:
        atomic_write_text(as_json, json.dumps(json_safe([dataclasses.asdict(c) | {"ok": c.ok} for c in results]),
                                              indent=1, allow_nan=False) + "\n")
        click.echo(f"wrote {as_json}")
    if not all(c.ok for c in results):
        if qemu and kernels == "optimized":
            click.echo(f"note: {QEMU_SIMD_CAVEAT}", err=True)
        raise SystemExit(1)  # like a failing test: scripts and CI see that the firmware differs
