"""Deployment generator on a real INT8 student (learning block's DS-CNN + INT8 export, trained
briefly on real patches of 40 shared clips): project contents, op resolver, model array, arena
(TFLM allocates and matches tf.lite bit-exactly), StrictUndefined rendering, host compilation of
the generated sources (main.cc / audio_i2s.c against API stubs), manifest lint, CLI, errors, and
the detector on the model's real score sequence (C vs Python)."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryblock.blocks.deploy import arena, size
from cryblock.blocks.deploy import model as tfl
from cryblock.blocks.deploy import project as gen
from cryblock.errors import CryblockError
from cryblock.params import DetectorParams, Params

STUBS = Path(__file__).parent / "c" / "stubs"
HARNESS = Path(__file__).parent / "c"


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def patches(clips):
    """Real patches of 20 cry + 20 not-cry clips (fixed seed), labels 1/0."""
    from cryblock.data import compute_patches

    rng = np.random.default_rng(0)
    cry = [c for c in clips if c.label == "cry"]
    neg = [c for c in clips if c.label != "cry"]
    sel = [cry[i] for i in rng.choice(len(cry), 20, replace=False)] + \
          [neg[i] for i in rng.choice(len(neg), 20, replace=False)]
    ps = compute_patches(sel, cache_dir=os.environ.get("CRYBLOCK_CACHE"), workers=1)
    assert len(ps.patches) > 100
    return ps.patches.astype(np.float32), (ps.labels() == "cry").astype(np.float32)


@pytest.fixture(scope="module")
def student(patches, tmp_path_factory):
    """The learning block's student (narrow: width 8, depth 2), trained 2 epochs on hard labels,
    exported with its INT8 exporter. Returns (int8 path, float path, keras model)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cryblock.blocks.learn.export import export_all, representative_patches
    from cryblock.blocks.learn.student import build_student
    from cryblock.params import LearnParams

    x, y = patches
    sm = build_student(LearnParams(width=8, depth=2, stem_channels=0, blocks=""), seed=0)
    sm.model.compile(optimizer="adam", loss="binary_crossentropy")
    sm.model.fit(x[..., None], y[:, None], epochs=2, batch_size=32, verbose=0)
    out = tmp_path_factory.mktemp("student")
    ex = export_all(sm.model, representative_patches(x[..., None], 100), out)
    return ex.int8_path, ex.float_path, sm.model


@pytest.fixture(scope="module")
def project(student, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "fw"
    res = gen.generate_project(student[0], out, Params(), gen.BuildOptions())
    return res


def _tfl_interpreter(model: bytes):
    """LiteRT's interpreter (tf.lite.Interpreter is deprecated) without the XNNPACK delegate (plain
    builtin INT8 kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    return Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def _tflite_ops(model_path: Path) -> set[str]:
    ip = _tfl_interpreter(Path(model_path).read_bytes())
    ip.allocate_tensors()
    return {d["op_name"] for d in ip._get_ops_details()}


# ------------------------------------------------------------------------------------------------
# project contents
# ------------------------------------------------------------------------------------------------

def test_project_layout(project):
    root = project.project
    for rel in ["CMakeLists.txt", "sdkconfig.defaults", "sdkconfig.defaults.esp32s3", "README.md", "size_report.json",
                "params.json", "main/cry_app.c", "main/replay.c", "linux_stubs/driver/CMakeLists.txt",
                "linux_stubs/esp_timer/esp_timer_linux.c",
                gen.MARKER, "main/CMakeLists.txt", "main/idf_component.yml", "main/Kconfig.projbuild",
                "main/main.cc", "main/model_data.cc", "main/model_data.h", "main/model_settings.h",
                "main/frontend.c", "main/frontend.h", "main/frontend_tables.c", "main/frontend_tables.h",
                "main/postproc.c", "main/postproc.h", "main/cry_log.c", "main/cry_log.h",
                "main/audio_i2s.c", "main/audio_i2s.h"]:
        assert (root / rel).is_file(), rel
    assert not (root / "partitions.csv").exists()  # a small model fits the 1.5 MB default partition
    for p in root.rglob("*"):
        if p.is_file():
            text = p.read_text()
            assert "{{" not in text and "{%" not in text, p
    assert not list(root.parent.glob(".fw.tmp-*"))  # no temp folder left behind
    cm = (root / "main/CMakeLists.txt").read_text()
    assert 'VERSION_GREATER_EQUAL "5.3"' in cm and "esp_driver_i2s" in cm and "esp_driver_gpio" in cm
    # freertos/ringbuf.h: component esp_ringbuf, no longer re-exported by `driver` in ESP-IDF 6
    assert "esp_ringbuf" in re.search(r"set\(priv_reqs ([^)]*)\)", cm).group(1)
    for src in re.search(r"set\(srcs ([^)]*)\)", cm).group(1).split():
        assert (root / "main" / src).is_file(), src
    assert "project(cry_detector)" in (root / "CMakeLists.txt").read_text()


def test_sdkconfig_and_kconfig_defaults(student, tmp_path):
    params = Params().replace(detector={"threshold": 0.62, "vote_n": 3, "vote_m": 5, "hold_seconds": 1.5})
    opts = gen.BuildOptions(i2s="pdm", pin_ws=5, pin_din=6, slot="right", bits=16, flash_mb=16,
                               psram_mode="quad", console="usb")
    res = gen.generate_project(student[0], tmp_path / "p", params, opts)
    sd = ((res.project / "sdkconfig.defaults").read_text() + (res.project / "sdkconfig.defaults.esp32s3").read_text()
          ).splitlines()
    assert "CONFIG_ESP_CONSOLE_USB_SERIAL_JTAG=y" in sd  # commands readable on the native USB port
    for line in ["CONFIG_IDF_TARGET=\"esp32s3\"", "CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ_240=y", "CONFIG_SPIRAM=y",
                 "CONFIG_SPIRAM_MODE_QUAD=y", "CONFIG_ESPTOOLPY_FLASHSIZE_16MB=y",
                 "CONFIG_COMPILER_OPTIMIZATION_PERF=y", "CONFIG_PARTITION_TABLE_SINGLE_APP_LARGE=y",
                 "CONFIG_SPIRAM_IGNORE_NOTFOUND=y"]:
        assert line in sd, line
    kc = (res.project / "main/Kconfig.projbuild").read_text()
    defaults = dict(re.findall(r"config (\w+)\n(?:.*\n){1,2}?\s+default (\S+)", kc))
    assert defaults["CRY_THRESHOLD_X1000"] == "620"
    assert (defaults["CRY_VOTE_N"], defaults["CRY_VOTE_M"], defaults["CRY_HOLD_MS"]) == ("3", "5", "1500")
    assert (defaults["CRY_I2S_WS_GPIO"], defaults["CRY_I2S_DIN_GPIO"], defaults["CRY_I2S_BITS"]) == ("5", "6", "16")
    assert "default CRY_I2S_MODE_PDM" in kc and "default CRY_I2S_SLOT_RIGHT" in kc


# Every option name the sdkconfig.defaults template can emit, verified by running kconfgen
# (esp-idf-kconfig 2.5) on the generated defaults for target esp32s3 against the Kconfig trees of
# ESP-IDF v5.1.6, v5.2.5, v5.3.3, v5.4.2, v5.5.1 and master (6.2), plus esp-dsp 1.8 and esp-nn
# (NN_OPTIMIZED): each value was applied, none was unknown. A name outside this list is unverified.
VERIFIED_SDKCONFIG_NAMES = {
    "IDF_TARGET", "ESP_DEFAULT_CPU_FREQ_MHZ_240", "FREERTOS_HZ",
    # choice ESPTOOLPY_FLASHMODE in components/esptool_py/Kconfig.projbuild (read in v5.5.5; the
    # same four names since ESP-IDF v4)
    "ESPTOOLPY_FLASHMODE_QIO", "ESPTOOLPY_FLASHMODE_QOUT", "ESPTOOLPY_FLASHMODE_DIO", "ESPTOOLPY_FLASHMODE_DOUT",
    "ESPTOOLPY_FLASHFREQ_80M", "ESPTOOLPY_FLASHSIZE_4MB", "ESPTOOLPY_FLASHSIZE_8MB",
    "ESPTOOLPY_FLASHSIZE_16MB", "ESPTOOLPY_FLASHSIZE_32MB", "SPIRAM", "SPIRAM_MODE_OCT",
    "SPIRAM_MODE_QUAD", "SPIRAM_SPEED_80M", "SPIRAM_IGNORE_NOTFOUND", "ESP32S3_INSTRUCTION_CACHE_32KB",
    "ESP32S3_DATA_CACHE_64KB", "ESP32S3_DATA_CACHE_LINE_64B", "COMPILER_OPTIMIZATION_PERF", "NN_OPTIMIZED",
    "NN_SKIP_NUDGE", "PARTITION_TABLE_CUSTOM", "PARTITION_TABLE_CUSTOM_FILENAME",
    "PARTITION_TABLE_SINGLE_APP_LARGE",
    # `git grep "config ESP_CONSOLE_USB_SERIAL_JTAG$"`: esp_system/Kconfig in v5.1.6 and v5.4.2,
    # esp_stdio/Kconfig on master (same name).
    "ESP_CONSOLE_USB_SERIAL_JTAG",
}


def test_sdkconfig_option_names_are_verified(project):
    template = (gen.templates_dir() / "sdkconfig.defaults.esp32s3.j2").read_text()
    texts = [(project.project / "sdkconfig.defaults").read_text(), (project.project / "sdkconfig.defaults.esp32s3").read_text()]
    texts += [template.replace("{{ flash_mb }}", str(mb)).replace("{{ flash_mode | upper }}", mode.upper())
              for mb in gen.FLASH_SIZES_MB for mode in gen.FLASH_MODES]  # every branch
    for text in texts:
        names = set(re.findall(r"CONFIG_([A-Z0-9_]+)", text))
        assert names and names <= VERIFIED_SDKCONFIG_NAMES, names - VERIFIED_SDKCONFIG_NAMES


def test_op_resolver_lists_exactly_the_models_ops(project, student):
    ops = _tflite_ops(student[0])  # independent source: TensorFlow Lite's own interpreter
    assert set(project.info.ops) == ops
    assert "LOGISTIC" in ops and "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops
    main = (project.project / "main/main.cc").read_text()
    n = int(re.search(r"MicroMutableOpResolver<(\d+)>", main).group(1))
    calls = re.findall(r"resolver\.(Add\w+)\(\)", main)
    assert n == len(ops) == len(calls) == len(set(calls))
    assert sorted(calls) == sorted(tfl.OP_RESOLVER_METHODS[o] for o in ops)


def test_unknown_or_custom_op_is_a_clear_error():
    with pytest.raises(CryblockError, match="FOO_OP"):
        tfl.resolver_calls(["CONV_2D", "FOO_OP"])


def test_model_array_round_trips(project, student):
    model = Path(student[0]).read_bytes()
    src = (project.project / "main/model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_model[]" in src
    assert tfl.parse_c_array(src) == model
    assert f"const unsigned int g_model_len = {len(model)};" in src


def test_arena_allocates_and_output_matches_tflite(project, student, patches):
    """The generated arena size makes TFLM allocate; TFLM's int8 output on real patches quantised
    with the model's own input parameters equals tf.lite's INT8 run exactly."""
    from tflite_micro import runtime

    model = Path(student[0]).read_bytes()
    settings = (project.project / "main/model_settings.h").read_text()
    arena = int(re.search(r"#define CRY_ARENA_BYTES (\d+)", settings).group(1))
    assert arena == project.arena.arena_bytes and arena % 16 == 0
    assert arena >= project.arena.measured_bytes + project.arena.esp_nn_scratch_bytes
    # largest ESP-NN S3 scratch of this student (width 8, depth 2): the 3x3 depthwise convs on
    # 48x32x8 (8 channels, not a multiple of 16 → int16 copies of filter and input):
    # 2·(3·3·8 + 48·32·8) + 16 bytes in esp-nn 1.2.0, + 32 in 1.2.3 (the plan takes the larger)
    assert project.arena.esp_nn_scratch_bytes == 2 * (9 * 8 + 48 * 32 * 8) + 32
    inp = project.info.input
    assert f"#define CRY_INPUT_ZERO_POINT ({inp.zero_point})" in settings
    assert float(re.search(r"#define CRY_INPUT_SCALE (\S+)f", settings).group(1)) == pytest.approx(inp.scale, rel=1e-7)

    tl = _tfl_interpreter(model)
    tl.allocate_tensors()
    d_in, d_out = tl.get_input_details()[0], tl.get_output_details()[0]
    assert d_in["quantization"] == pytest.approx((inp.scale, inp.zero_point))
    micro = runtime.Interpreter.from_bytes(model, arena_size=arena)
    x, _ = patches
    sel = x[:: max(1, len(x) // 24)]
    outs_micro, outs_tfl = [], []
    for p in sel:
        q = tfl.quantize_input(p, inp.scale, inp.zero_point).reshape(d_in["shape"])
        micro.set_input(q, 0)
        micro.invoke()
        outs_micro.append(micro.get_output(0).copy())
        tl.set_tensor(d_in["index"], q)
        tl.invoke()
        outs_tfl.append(tl.get_tensor(d_out["index"]).copy())
    outs_micro, outs_tfl = np.array(outs_micro), np.array(outs_tfl)
    assert outs_micro.dtype == np.int8 and len(np.unique(outs_micro)) > 1
    np.testing.assert_array_equal(outs_micro, outs_tfl)
    # the measurement is tight: well below it the interpreter cannot allocate
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(model, arena_size=project.arena.measured_bytes // 2)
    print(f"arena: host {project.arena.measured_bytes} B, ESP-NN bound {project.arena.esp_nn_scratch_bytes} B, "
          f"generated {arena} B; {len(sel)} patches bit-exact vs tf.lite")


def test_arena_too_large_for_region_is_refused(student):
    model = Path(student[0]).read_bytes()
    with pytest.raises(CryblockError, match="--ram psram"):
        arena.plan_arena(model, "internal", measured=400_000)
    assert arena.plan_arena(model, "auto", measured=400_000).region == "psram"
    with pytest.raises(CryblockError, match="psram RAM budget"):
        arena.plan_arena(model, "psram", measured=3_000_000)


def test_size_report(project, student):
    from cryblock.blocks.learn.student import count_macs

    r = project.report
    info = project.info
    # conv + depthwise + fully-connected MACs from the flatbuffer = the learning block's Keras count
    core = sum(info.macs_by_op.get(k, 0) for k in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    assert core == count_macs(student[2])
    assert r["model"]["bytes"] == Path(student[0]).stat().st_size
    assert r["flash"]["total_estimate_bytes"] == r["model"]["bytes"] + size.CODE_FLASH_ESTIMATE
    assert r["latency"]["estimate_ms"] == pytest.approx(info.macs / 0.15e9 * 1000, abs=0.01)
    assert r["latency"]["range_ms"][1] == pytest.approx(4 * r["latency"]["range_ms"][0], rel=1e-2)
    assert r["ram"]["internal_total_bytes"] > r["ram"]["arena_bytes"]
    saved = json.loads((project.project / "size_report.json").read_text())
    assert saved["ram"]["arena_bytes"] == r["ram"]["arena_bytes"]
    print(size.format_report(r))


def test_large_app_gets_custom_partition_table():
    assert size.app_partition_size(500_000) == size.DEFAULT_APP_PARTITION
    big = size.app_partition_size(3_000_000)
    assert big % 0x10000 == 0 and big >= 3_000_000 * 1.25


def test_templates_are_rendered_strictly(project, student, tmp_path):
    """Rendering uses StrictUndefined: a context without a variable the templates use fails,
    and the full context renders every template (including partitions.csv)."""
    import jinja2

    params, opts = Params(), gen.BuildOptions()
    info = project.info
    ctx = gen.template_context(info, project.arena, params, opts, project.report)
    model = Path(student[0]).read_bytes()
    big = dict(ctx, custom_partitions=True, app_partition_bytes=0x300000)
    files = gen.render_project(big, model, tmp_path / "full")
    assert Path("partitions.csv") in files
    part = (tmp_path / "full/partitions.csv").read_text()
    assert "factory,  app,  factory, ,        0x300000," in part
    templates = list(gen.templates_dir().rglob("*.j2"))
    assert len(templates) >= 9
    for key in ("arena_bytes", "op_methods", "pin_ws", "hann_c", "report"):
        bad = {k: v for k, v in big.items() if k != key}
        with pytest.raises(jinja2.UndefinedError):
            gen.render_project(bad, model, tmp_path / f"bad_{key}")


def test_manifest_passes_compote_lint(project, tmp_path):
    compote = Path(sys.executable).parent / "compote"
    if not compote.exists():
        pytest.skip("idf-component-manager (compote) not installed")
    r = subprocess.run([str(compote), "manifest", "lint", str(project.project / "main/idf_component.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "idf_component.yml"  # the linter does reject a broken version range
    bad.write_text((project.project / "main/idf_component.yml").read_text().replace('"^1.3.5"', '"^^1.3.5"'))
    assert bad.read_text() != (project.project / "main/idf_component.yml").read_text()
    assert subprocess.run([str(compote), "manifest", "lint", str(bad)], capture_output=True).returncode != 0


def test_manifest_excludes_esp_nn_with_the_s3_padding_bug(project):
    """esp-nn 1.2.0's S3 conv pads only top/left (our SAME 3×3/2 first layer then reads past the
    input); the component manager must never resolve it."""
    import yaml
    from idf_component_tools.semver import SimpleSpec, Version

    deps = yaml.safe_load((project.project / "main/idf_component.yml").read_text())["dependencies"]
    spec = SimpleSpec(deps["espressif/esp-nn"])
    assert not spec.match(Version("1.2.0")) and spec.match(Version("1.2.1")) and spec.match(Version("1.2.3"))


# ------------------------------------------------------------------------------------------------
# host compilation of the generated sources
# ------------------------------------------------------------------------------------------------

def _sdkconfig_from_kconfig(kconfig: str, **overrides: str) -> str:
    """sdkconfig.h as ESP-IDF would generate it from the Kconfig defaults (int/bool/choice)."""
    out: dict[str, str] = {}
    cur, in_choice = None, False
    for raw in kconfig.splitlines():
        s = raw.strip()
        if s.startswith("choice"):
            in_choice = True
        elif s.startswith("endchoice"):
            in_choice = False
        elif m := re.match(r"config (\w+)", s):
            cur = m.group(1)
        elif m := re.match(r"default (\S+)", s):
            v = m.group(1)
            if in_choice:
                out[v] = "1"
            elif v == "y":
                out[cur] = "1"
            elif v != "n":
                out[cur] = v
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return "".join(f"#define CONFIG_{k} {v}\n" for k, v in out.items())


def _stub_dir(tmp: Path, kconfig: str, **overrides) -> Path:
    d = tmp / "gen_stubs"
    (d / "tensorflow/lite/micro").mkdir(parents=True, exist_ok=True)
    (d / "sdkconfig.h").write_text(_sdkconfig_from_kconfig(kconfig, **overrides))
    methods = "".join(f"  TfLiteStatus {m}();\n" for m in sorted(set(tfl.OP_RESOLVER_METHODS.values())))
    (d / "tensorflow/lite/micro/micro_mutable_op_resolver.h").write_text(
        '#pragma once\n#include "tensorflow/lite/micro/micro_interpreter.h"\nnamespace tflite {\n'
        "template <unsigned int tOpCount>\nclass MicroMutableOpResolver : public MicroOpResolver {\n public:\n"
        f"{methods}}};\n}}  // namespace tflite\n")
    return d


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="host gcc/g++ missing")
def test_generated_sources_compile_on_host(project, tmp_path):
    main = project.project / "main"
    warn = ["-Wall", "-Wextra", "-Werror"]
    for c in ["frontend.c", "frontend_tables.c", "postproc.c", "cry_log.c", "replay.c", "cry_app.c"]:  # portable C
        r = subprocess.run(["gcc", "-std=c99", "-Wpedantic", *warn, "-c", str(main / c), "-o", str(tmp_path / "x.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{c}: {r.stderr}"
    r = subprocess.run(["g++", "-std=c++17", *warn, "-c", str(main / "model_data.cc"), "-o", str(tmp_path / "m.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # model_settings.h agrees with the front-end tables and the model
    chk = tmp_path / "chk.cc"
    chk.write_text('#include "frontend_tables.h"\n#include "model_settings.h"\n'
                   "static_assert(CRY_INPUT_ELEMS == CRY_PATCH_FRAMES * CRY_FE_NMEL, \"input\");\n"
                   "static_assert(CRY_POS_INDEX < CRY_OUTPUT_ELEMS, \"pos\");\nint main() { return 0; }\n")
    r = subprocess.run(["g++", "-std=c++17", *warn, f"-I{main}", "-fsyntax-only", str(chk)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # ESP-IDF-dependent files against declaration stubs (tests/c/stubs), sdkconfig.h from Kconfig
    kconfig = (main / "Kconfig.projbuild").read_text()
    for overrides in ({}, {"CRY_I2S_MODE_STD": None, "CRY_I2S_MODE_PDM": "1", "CRY_I2S_BITS": "16",
                           "CRY_I2S_SLOT_LEFT": None, "CRY_I2S_SLOT_RIGHT": "1", "CRY_ARENA_IN_PSRAM": "1"},
                      {"CRY_AUDIO_I2S": None, "CRY_AUDIO_REPLAY": "1"},  # replay (QEMU, bench boards)
                      {"CRY_AUDIO_I2S": None, "CRY_AUDIO_FILE": "1", "IDF_TARGET_LINUX": "1"},  # linux target
                      {"CRY_AUDIO_I2S": None, "CRY_AUDIO_REPLAY": "1", "IDF_TARGET_LINUX": "1"}):  # linux + replay
        gen = _stub_dir(tmp_path, kconfig, **overrides)
        inc = [f"-I{gen}", f"-I{STUBS}", f"-I{main}"]
        # ESP-IDF 5.x compiles C++ as gnu++2b at -O2, and since v5.4 with -Werror: `volatile +=` (-Wvolatile)
        # fails there, and some warnings (-Wstringop-truncation) only appear once the optimiser inlines
        r = subprocess.run(["g++", "-std=gnu++2b", "-O2", *warn, "-c", *inc, str(main / "main.cc"),
                            "-o", str(tmp_path / "main.o")], capture_output=True, text=True)
        assert r.returncode == 0, f"main.cc {overrides}: {r.stderr}"
        r = subprocess.run(["gcc", "-std=gnu17", "-O2", *warn, "-c", *inc, str(main / "audio_i2s.c"),
                            "-o", str(tmp_path / "audio.o")], capture_output=True, text=True)
        assert r.returncode == 0, f"audio_i2s.c {overrides}: {r.stderr}"
    # the esp-dsp path of the front-end (ESP_PLATFORM)
    r = subprocess.run(["gcc", "-std=gnu17", *warn, "-DESP_PLATFORM", "-fsyntax-only", f"-I{STUBS}", f"-I{main}",
                        str(main / "frontend.c")], capture_output=True, text=True)
    assert r.returncode == 0, f"frontend.c (ESP_PLATFORM): {r.stderr}"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc missing")
def test_detector_on_real_score_sequence_c_equals_python(project, student, patches, tmp_path):
    """Scores of the real model over all patches of the 40 clips (one long sequence), fed to
    postproc.c and to cryblock.detector: identical pos/votes/det/events."""
    from cryblock.detector import run_detector

    model = Path(student[0]).read_bytes()
    tl = _tfl_interpreter(model)
    tl.allocate_tensors()
    d_in, d_out = tl.get_input_details()[0], tl.get_output_details()[0]
    o_scale, o_zp = d_out["quantization"]
    x, _ = patches
    scores = []
    for p in x:
        tl.set_tensor(d_in["index"], tfl.quantize_input(p, *d_in["quantization"]).reshape(d_in["shape"]))
        tl.invoke()
        q = int(tl.get_tensor(d_out["index"]).ravel()[0])
        scores.append(np.float32((q - o_zp) * o_scale))  # as main.cc dequantises
    scores = np.array(scores, np.float32)
    det = DetectorParams(threshold=float(np.median(scores)), vote_n=2, vote_m=3, hold_seconds=1.0)
    src = project.project / "main"
    exe = tmp_path / "det"
    subprocess.run(["gcc", "-std=c99", "-O2", f"-I{src}", str(HARNESS / "det_harness.c"), str(src / "postproc.c"),
                    "-o", str(exe)], check=True)
    scores.tofile(tmp_path / "s.f32")
    r = subprocess.run([str(exe), "run", str(tmp_path / "s.f32"), repr(float(np.float32(det.threshold))), "2", "3",
                        "1000", "480"], capture_output=True, text=True, check=True)
    c = np.array([[int(v) for v in ln.split()] for ln in r.stdout.splitlines()])
    py = run_detector(scores, det)
    assert len(scores) > 100 and len(py.events) >= 4
    np.testing.assert_array_equal(c[:, 0], py.pos)
    np.testing.assert_array_equal(c[:, 1], py.votes)
    np.testing.assert_array_equal(c[:, 2], py.det)
    assert np.flatnonzero(c[:, 3]).tolist() == [e[0] for e in py.events]


# ------------------------------------------------------------------------------------------------
# CLI and user errors
# ------------------------------------------------------------------------------------------------

def test_cli_build(student, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    monkeypatch.delenv("IDF_PATH", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no idf.py
    params = tmp_path / "params.json"
    Params().replace(detector={"threshold": 0.7}).save(params)
    out = tmp_path / "fw"
    runner = CliRunner()
    r = runner.invoke(cli, ["build", "--model", str(student[0]), "--params", str(params), "--out", str(out),
                            "--i2s", "std", "--pin-bclk", "4", "--pin-ws", "5", "--pin-din", "6", "--slot", "right",
                            "--ram", "internal", "--arena-margin", "0.2", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert rep["ram"]["arena_region"] == "internal" and rep["ram"]["arena_margin_fraction"] == 0.2
    assert "ESP-IDF not found" in r.stderr and "&& idf.py build" in r.stderr
    assert "default 700" in (out / "main/Kconfig.projbuild").read_text()
    # regenerating over an earlier project replaces it
    r = runner.invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf"])
    assert r.exit_code == 0, r.output
    assert "default 500" in (out / "main/Kconfig.projbuild").read_text()


def test_cli_user_errors(student, tmp_path):
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    runner = CliRunner()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    whole = Path(student[0]).read_bytes()
    for cut in (len(whole) // 2, len(whole) - 700):  # truncated downloads / copies
        (tmp_path / f"cut{cut}.tflite").write_bytes(whole[:cut])
    cases = [
        *((["--model", str(tmp_path / f"cut{cut}.tflite"), "--out", str(tmp_path / "a")], "corrupt or truncated")
          for cut in (len(whole) // 2, len(whole) - 700)),
        (["--model", str(tmp_path / "missing.tflite"), "--out", str(tmp_path / "a")], "model file not found"),
        (["--model", str(student[1]), "--out", str(tmp_path / "b")], "must be quantised int8"),
        (["--model", str(taken / "notes.txt"), "--out", str(tmp_path / "c")], "not a TFLite model"),
        (["--model", str(student[0]), "--out", str(taken)], "not a cryblock project"),
        (["--model", str(student[0]), "--out", str(tmp_path / "my fw")], "does not support spaces"),
        (["--model", str(student[0]), "--out", str(tmp_path / "fw\nx")], "does not support spaces"),
        (["--model", str(student[0]), "--out", str(tmp_path / "d"), "--pin-ws", "60"], "pin_ws"),
        (["--model", str(student[0]), "--out", str(tmp_path / "e"), "--pin-ws", "2"], "pins must differ"),
        (["--model", str(student[0]), "--out", str(tmp_path / "f"), "--i2s", "pdm", "--bits", "32"], "bits"),
    ]
    for args, msg in cases:
        r = runner.invoke(cli, ["build", "--no-idf", *args])
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]  # untouched
    assert not [p for p in tmp_path.iterdir() if p.name[0] in "abcdef" and len(p.name) == 1]


def test_model_with_wrong_labels_or_shape(student, tmp_path):
    # a 1-unit sigmoid model works with any labels; a 2-label params file is fine too
    res = gen.generate_project(student[0], tmp_path / "ok", Params().replace(learn={"labels": ["a", "b", "c"],
                                                                                     "positive_label": "b"}))
    assert "#define CRY_POS_INDEX 0" in (res.project / "main/model_settings.h").read_text()
    odd = Params().replace(dsp={"patch_window_seconds": 0.5})
    with pytest.raises(CryblockError, match="does not hold one"):
        gen.generate_project(student[0], tmp_path / "bad", odd)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------
# hostile build inputs and rebuilding into an earlier project
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opts,msg", [
    ({"pin_din": 22}, "GPIO 22 does not exist"), ({"pin_din": 24}, "GPIO 24 does not exist"),
    ({"pin_ws": 27}, "SPI flash"), ({"pin_bclk": 32}, "SPI flash"),
    ({"pin_din": 35}, "octal"), ({"pin_din": 19, "console": "usb"}, "USB"), ({"pin_ws": 20, "console": "usb"}, "USB"),
    ({"pin_din": 43}, "UART0"), ({"flash_mode": "fast"}, "flash_mode"),
])
def test_unusable_pins_are_refused(student, tmp_path, opts, msg):
    with pytest.raises(CryblockError, match=msg):
        gen.generate_project(student[0], tmp_path / "fw", Params(), gen.BuildOptions(**opts))
    assert not (tmp_path / "fw").exists()


def test_usable_pin_variants(student, tmp_path):
    res = gen.generate_project(student[0], tmp_path / "a", Params(),
                               gen.BuildOptions(pin_din=35, psram_mode="quad", pin_ws=19, pin_bclk=20))
    assert "CONFIG_ESPTOOLPY_FLASHMODE_DIO=y" in (res.project / "sdkconfig.defaults.esp32s3").read_text()
    res = gen.generate_project(student[0], tmp_path / "b", Params(), gen.BuildOptions(flash_mode="qio"))
    assert "CONFIG_ESPTOOLPY_FLASHMODE_QIO=y" in (res.project / "sdkconfig.defaults.esp32s3").read_text()


def test_label_cannot_inject_code_or_break_tables(student, tmp_path):
    evil = 'x */ int injected(void){return 42;} /* "q" \\ |pipe| `tick`'
    p = Params().replace(learn={"labels": ["not_cry", evil], "positive_label": evil})
    res = gen.generate_project(student[0], tmp_path / "fw", p)
    main = res.project / "main"
    pre = subprocess.run(["gcc", "-E", "-P", "-x", "c", str(main / "model_settings.h")], capture_output=True,
                         text=True, check=True).stdout
    assert "injected" not in pre  # stayed inside its comment
    subprocess.run(["gcc", "-fsyntax-only", "-Wall", "-Werror", "-x", "c", str(main / "model_settings.h")], check=True)
    row = next(ln for ln in (res.project / "README.md").read_text().splitlines() if ln.startswith("| output |"))
    assert row.count("|") - row.count("\\|") == 3  # still a two-column row
    with pytest.raises(CryblockError, match="labels"):
        Params().replace(learn={"labels": ["not_cry", "a\nb"], "positive_label": "a\nb"})


def test_rebuild_keeps_user_files_and_refreshes_sdkconfig(student, tmp_path):
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    out = tmp_path / "fw"
    gen.generate_project(student[0], out, Params().replace(detector={"threshold": 0.7}))
    # what a user and idf.py add to a project
    (out / "build").mkdir()
    (out / "build" / "app.bin").write_bytes(b"\xe9built")
    (out / "main" / "my_leds.c").write_text("int leds;\n")
    kc_default = re.search(r"default (\d+)", (out / "main/Kconfig.projbuild").read_text()).group(1)
    (out / "sdkconfig").write_text(f"CONFIG_IDF_TARGET=\"esp32s3\"\nCONFIG_CRY_THRESHOLD_X1000={kc_default}\n"
                                   "CONFIG_CRY_VOTE_N=2\nCONFIG_LOG_DEFAULT_LEVEL=3\n")
    res = gen.generate_project(student[0], out, Params().replace(detector={"threshold": 0.45}))
    assert (out / "build" / "app.bin").read_bytes() == b"\xe9built" and (out / "main" / "my_leds.c").is_file()
    assert res.kept == ["build", "sdkconfig"] and res.notes == [
        "sdkconfig: CONFIG_CRY_THRESHOLD_X1000=700 → CONFIG_CRY_THRESHOLD_X1000=450"]
    sdk = (out / "sdkconfig").read_text()
    assert "CONFIG_CRY_THRESHOLD_X1000=450" in sdk and "CONFIG_LOG_DEFAULT_LEVEL=3" in sdk
    # an edited generated file is not overwritten without --force
    (out / "main" / "main.cc").write_text("// my tweaks\n")
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf"])
    assert r.exit_code == 2 and "main/main.cc changed since cryblock generated them" in r.stderr
    assert (out / "main" / "main.cc").read_text() == "// my tweaks\n"
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf", "--force"])
    assert r.exit_code == 0, r.output
    assert "app_main" in (out / "main" / "main.cc").read_text() and (out / "main" / "my_leds.c").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~cio_umask()


def cio_umask() -> int:
    from cryblock import output as cio

    return cio._UMASK


def test_build_out_is_checked_first(student, tmp_path):
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    f = tmp_path / "file"
    f.write_text("x")
    for out, msg in ((f, "is a file"), (f / "fw", "is a file"), ("/proc/cryblock-fw", "cannot write")):
        r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf"])
        assert r.exit_code == 2 and msg in r.stderr, r.output


def test_linux_target_project(student, tmp_path):
    """One code base, two targets: --target linux gives the same sources, linux defaults, the
    stand-in components and no ESP-NN scratch in the arena plan."""
    s3 = gen.generate_project(student[0], tmp_path / "s3", Params(), gen.BuildOptions())
    lx = gen.generate_project(student[0], tmp_path / "lx", Params(), gen.BuildOptions(target="linux"))
    assert 'CONFIG_IDF_TARGET="linux"' in (lx.project / "sdkconfig.defaults").read_text()
    assert "default CRY_AUDIO_REPLAY" in (lx.project / "main/Kconfig.projbuild").read_text()
    assert "default CRY_AUDIO_I2S" in (s3.project / "main/Kconfig.projbuild").read_text()
    for f in ("main/main.cc", "main/cry_app.c", "main/frontend.c", "CMakeLists.txt", "main/CMakeLists.txt"):
        assert (lx.project / f).read_text() == (s3.project / f).read_text().replace("idf.py build", "idf.py --preview build"), f
    assert lx.arena.esp_nn_scratch_bytes == 0 < s3.arena.esp_nn_scratch_bytes
    assert lx.arena.measured_bytes == s3.arena.measured_bytes
    with pytest.raises(CryblockError, match="audio"):
        gen.generate_project(student[0], tmp_path / "bad", Params(), gen.BuildOptions(target="linux", audio="i2s"))
    with pytest.raises(CryblockError, match="audio"):
        gen.generate_project(student[0], tmp_path / "bad", Params(), gen.BuildOptions(audio="file"))
    # board options given with --target linux are named as ignored (a PC has no pins, flash or console)
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(tmp_path / "lx2"), "--no-idf",
                                 "--target", "linux", "--pin-din", "4", "--console", "usb", "--flash-mode", "qio"])
    assert r.exit_code == 0, r.output
    assert "note    : --target linux ignores the ESP32-S3 board option(s) --pin-din, --console, --flash-mode" in r.stderr
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(tmp_path / "lx3"), "--no-idf",
                                 "--target", "linux"])
    assert r.exit_code == 0 and "ignores" not in r.stderr, r.output
    # replay on the chip (QEMU, bench boards): pins are not checked, the source is replay
    r = gen.generate_project(student[0], tmp_path / "rp", Params(), gen.BuildOptions(audio="replay", pin_din=24))
    assert "default CRY_AUDIO_REPLAY" in (r.project / "main/Kconfig.projbuild").read_text()


def _host_firmware(student, folder: Path) -> tuple[Path, Path]:
    """An ESP32-S3 ``--audio replay`` project of the student and a program that plays its firmware:
    the portable core compiled by host gcc around tests/c/app_harness.c's stand-in model (so its
    scores differ from the real model's). Returns (project, program)."""
    if shutil.which("gcc") is None:
        pytest.skip("host gcc missing")
    fw = gen.generate_project(student[0], folder / "fw", Params(), gen.BuildOptions(audio="replay")).project
    main = fw / "main"
    twin = folder / "twin"
    r = subprocess.run(["gcc", "-std=c99", "-O1", f"-I{main}", str(HARNESS / "app_harness.c"),
                        *(str(main / f) for f in ("cry_app.c", "frontend.c", "frontend_tables.c", "postproc.c",
                                                   "cry_log.c", "replay.c")), "-lm", "-o", str(twin)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = tfl.inspect_model(Path(student[0]).read_bytes())
    wrapper = folder / "firmware.sh"
    wrapper.write_text(f"#!/bin/sh\nexec {twin} 0.5 2 3 1000 {info.input.scale!r} {info.input.zero_point}\n")
    wrapper.chmod(0o755)
    return fw, wrapper


def test_emulate_cli_exit_status_and_damaged_projects(student, tmp_path):
    """cryblock emulate on a generated project with the host-compiled firmware core:
    DIFFERS → exit status 1 and the JSON written; a binary that is not executable, a damaged
    model_data.cc or project marker → one line, exit 2."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    fw, wrapper = _host_firmware(student, tmp_path)
    main = fw / "main"
    clip = sorted(Path(os.environ["CRYBLOCK_DATA"]).glob("audio/theunissen/*.flac"))[0]
    runner = CliRunner()
    base = ["emulate", "--project", str(fw), "--audio", str(clip), "--boot-timeout", "20"]
    wrapper.chmod(0o644)
    r = runner.invoke(cli, [*base, "--binary", str(wrapper)])
    assert r.exit_code == 2 and "is not executable" in r.output, r.output
    wrapper.chmod(0o755)
    r = runner.invoke(cli, [*base, "--binary", str(wrapper), "--json", str(tmp_path / "cmp.json")])
    assert r.exit_code == 1 and "DIFFERS" in r.output, r.output
    assert json.loads((tmp_path / "cmp.json").read_text())[0]["ok"] is False
    (fw / gen.MARKER).write_text("{not json")
    r = runner.invoke(cli, base)
    assert r.exit_code == 2 and "damaged project marker" in r.output and "Traceback" not in r.output, r.output
    src = (main / "model_data.cc").read_text()
    for damaged, msg in ((src.replace("0x", "0xZ", 1), "is not a byte"),
                         (src[: len(src) // 2] + "};\n", "corrupt or truncated")):
        (main / "model_data.cc").write_text(damaged)
        r = runner.invoke(cli, [*base, "--binary", str(wrapper)])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output


def test_emulate_compare_lines_up_firmware_and_python(student, tmp_path):
    """emulate.compare on a firmware log made from the Python INT8 run itself: identical; one raw
    output nudged by one quantisation step: still OK; by two: DIFFERS; a lost patch: DIFFERS. The
    streamed reference (blocks of any size) equals the one of the whole recording."""
    from cryblock.blocks.deploy import emulate as em
    from cryblock.blocks.deploy.capture import LogCapture
    from cryblock.logformat import format_line

    model = Path(student[0]).read_bytes()
    params = Params().replace(detector={"threshold": 0.5})
    clip = sorted(Path(os.environ["CRYBLOCK_DATA"]).glob("audio/theunissen/*.flac"))[0]
    pcm = em.audio_pcm(clip, params)
    ref = em.python_reference(pcm, model, params)
    q, s, det = ref.q, ref.score, ref.det
    streamed = em.python_reference(np.array_split(pcm, 7), model, params)
    for a, b in ((ref.q, streamed.q), (ref.score, streamed.score), (ref.det, streamed.det)):
        np.testing.assert_array_equal(a, b)

    def fw(qs, drop=None):
        run = em.FirmwareRun(LogCapture())
        for i, v in enumerate(qs):
            if i != drop:
                rec = run.log.feed_line(format_line("INF", t_ms=i, seq=i, fe_us=1, inv_us=1, score=float(s[i]),
                                                    q=int(v), pos=0, votes=0, det=int(det[i])))
                run.take(rec)
        return run

    c = em.compare("a", ref, fw(q))
    assert c.ok and c.exact == 1.0 and c.max_abs_diff < 1e-4
    nudged = q.copy()
    nudged[3] += 1
    assert em.compare("a", ref, fw(nudged)).ok
    nudged[3] += 1
    c = em.compare("a", ref, fw(nudged))
    assert not c.ok and c.max_steps == 2
    assert not em.compare("a", ref, fw(q, drop=len(q) - 1)).ok
    lines = em.replay_lines(pcm)
    assert lines == [ln for ln, _ in em._replay_stream(np.array_split(pcm, 5))]  # lines do not depend on blocks
    assert lines[-1] == "pcm end" and len(lines) == -(-len(pcm) // 512) + 1


# ------------------------------------------------------------------------------------------------
# a --out someone else prepared: nothing outside it is deleted or written
# ------------------------------------------------------------------------------------------------

def _listing(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (os.readlink(p) if p.is_symlink() else p.read_text() if p.is_file() else "/")
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("entries", [
    {"../victim.txt": None}, {"VICTIM": None}, {"main/../../victim.txt": None}, {"./CMakeLists.txt": None},
    {"main//main.cc": None}, {"": None}, {"main/main.cc": 42}, {"main/main.cc": "../victim.txt"},
    {"elsewhere/main.cc": None}, {"ok.txt": None, "elsewhere/x": "0" * 64},
], ids=["dotdot", "absolute", "dotdot-inside", "dot", "double-slash", "empty", "hash-int", "hash-text",
        "through-symlink", "through-symlink-hashed"])
def test_build_refuses_a_marker_that_points_outside_out(student, tmp_path, entries):
    """Marker entries are relative, normalised paths of regular files inside --out with a SHA-256
    (or null); anything else is refused before anything is written, deleted or replaced."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "main.cc").write_text("theirs")
    (elsewhere / "x").write_text("theirs")
    out = tmp_path / "fw"
    out.mkdir()
    (out / "elsewhere").symlink_to(elsewhere)
    (out / "ok.txt").write_text("mine")
    entries = {str(victim) if k == "VICTIM" else k: v for k, v in entries.items()}
    (out / gen.MARKER).write_text(json.dumps({"generator": "cryblock 0.1.0", "files": entries}))
    before = _listing(tmp_path)
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf"])
    assert r.exit_code == 2, r.output
    (err,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert err.startswith((f"error: {out / gen.MARKER}: entry ", f"error: {out / 'elsewhere'}: is a symbolic link"))
    assert "Traceback" not in r.output
    assert _listing(tmp_path) == before  # nothing written, deleted or replaced, inside or outside


def test_build_never_writes_through_a_symlinked_folder(student, tmp_path):
    """An old-style marker (no file list) with ``main`` a symlink: before, the 21 generated files of
    main/ went into the link's target. Now refused, nothing changed; a symlinked generated file is
    replaced by a regular file (the link, not its target) only with --force."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    out = gen.generate_project(student[0], tmp_path / "fw", Params()).project
    target = tmp_path / "their_sources"
    shutil.copytree(out / "main", target)
    (target / "main.cc").write_text("theirs")
    shutil.rmtree(out / "main")
    (out / "main").symlink_to(target)
    for marker in ({"generator": "cryblock 0.1.0"}, json.loads((out / gen.MARKER).read_text())):
        (out / gen.MARKER).write_text(json.dumps(marker))
        before = _listing(tmp_path)
        r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf", "--force"])
        assert r.exit_code == 2 and "main: is a symbolic link" in r.stderr, r.output
        assert _listing(tmp_path) == before
    # a generated file replaced by a link to someone else's file: counted as edited, the target never written
    shutil.rmtree(tmp_path / "fw")
    out = gen.generate_project(student[0], tmp_path / "fw", Params()).project
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(victim)
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf"])
    assert r.exit_code == 2 and "README.md changed since cryblock generated" in r.stderr, r.output
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf", "--force"])
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "precious" and not (out / "README.md").is_symlink()
    # sdkconfig as a link is read, never written through
    (tmp_path / "their_sdkconfig").write_text("CONFIG_CRY_THRESHOLD_X1000=1\n")
    (out / "sdkconfig").symlink_to(tmp_path / "their_sdkconfig")
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out), "--no-idf"])
    assert r.exit_code == 0 and "sdkconfig is a symbolic link" in r.stderr, r.output
    assert (tmp_path / "their_sdkconfig").read_text() == "CONFIG_CRY_THRESHOLD_X1000=1\n"


def test_install_is_all_or_nothing(student, tmp_path, monkeypatch):
    """A Ctrl-C (a real SIGINT) or a failing write in the middle of replacing an earlier project's
    files: before, new model data sat beside the old input scale. Now a signal waits until every file
    is in place (then takes effect), and a failure puts every old file back."""
    import signal

    out = gen.generate_project(student[0], tmp_path / "fw", Params().replace(detector={"threshold": 0.3})).project
    old = _listing(out)
    real_replace = os.replace
    calls = []

    def replace_then_ctrl_c(src, dst, **kw):
        real_replace(src, dst, **kw)
        if str(dst).endswith("model_data.cc") and not calls:  # the model is in, its scale not yet
            calls.append(dst)
            signal.raise_signal(signal.SIGINT)  # a real SIGINT to this thread (os.kill may land on another)

    monkeypatch.setattr(gen.os, "replace", replace_then_ctrl_c)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's Ctrl-C, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt):
            gen.generate_project(student[0], out, Params().replace(detector={"threshold": 0.7}))
    finally:
        signal.signal(signal.SIGINT, before)
    new = _listing(out)
    assert "default 700" in new["main/Kconfig.projbuild"] and new != old  # everything installed, then Ctrl-C
    assert json.loads(new[gen.MARKER])["files"]["main/Kconfig.projbuild"] == gen._sha256(out / "main/Kconfig.projbuild")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")] and calls

    def replace_then_fail(src, dst, **kw):  # a disk error after main/ was replaced
        if str(dst).endswith("size_report.json") and not calls:
            calls.append(dst)
            raise OSError(28, "No space left on device")
        real_replace(src, dst, **kw)

    calls.clear()
    monkeypatch.setattr(gen.os, "replace", replace_then_fail)
    with pytest.raises(OSError):
        gen.generate_project(student[0], out, Params().replace(detector={"threshold": 0.3}))
    assert _listing(out) == new and calls  # every file as before the failed install
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------
# damaged models: one shared check for build, detect, evaluate and emulate
# ------------------------------------------------------------------------------------------------

def _mutated(model: bytes, what: str) -> bytes:
    """The model with one field of its flatbuffer changed (the TFLite schema's object API)."""
    import flatbuffers

    fb = tfl.tflite_schema()
    m = fb.ModelT.InitFromPackedBuf(bytearray(model), 0)
    g = m.subgraphs[0]
    tin, tout = g.tensors[g.inputs[0]], g.tensors[g.outputs[0]]
    if what == "flat-input":  # the same 6144 values, without the layout the first convolution needs
        tin.shape = tin.shapeSignature = np.array([6144], np.int32)
    elif what == "row-input-into-conv":
        tin.shape = tin.shapeSignature = np.array([1, 6144], np.int32)
    elif what == "nan-input-scale":
        tin.quantization.scale = np.array([np.nan], np.float32)
    elif what == "inf-output-scale":
        tout.quantization.scale = np.array([np.inf], np.float32)
    elif what == "zero-point-100000":
        tin.quantization.zeroPoint = np.array([100000], np.int64)
    elif what == "output-2x1":
        tout.shape = tout.shapeSignature = np.array([2, 1], np.int32)
    elif what == "non-utf8-custom-op":
        oc = fb.OperatorCodeT()
        oc.builtinCode = oc.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
        oc.customCode = b"\xff\xfe\x1b[2Jop"
        m.operatorCodes.append(oc)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize("what,msg", [
    ("flat-input", "input shape [6144] does not hold one 96×64"),
    ("row-input-into-conv", "input shape [1, 6144] is fed straight to CONV_2D"),
    ("nan-input-scale", "input scale is nan, not a finite number > 0"),
    ("inf-output-scale", "output scale is inf, not a finite number > 0"),
    ("zero-point-100000", "input zero point 100000 is outside the int8 range"),
    ("output-2x1", "output shape [2, 1] is not one row of scores"),
    ("non-utf8-custom-op", 'custom operator "\\ufffd\\ufffd\\u001b[2Jop" is not supported'),
])
def test_damaged_model_is_refused_by_the_shared_check(student, tmp_path, what, msg):
    """Before, only element counts and ``scale <= 0`` were checked: [6144] passed (and TFLite Micro
    died of SIGFPE), NaN/Inf scales became ``nanf``/``inff`` in the firmware, zero point 100000 was
    taken, a non-UTF-8 custom op name raised UnicodeDecodeError."""
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(_mutated(Path(student[0]).read_bytes(), what))
    with pytest.raises(CryblockError) as e:
        tfl.check_model_for_params(tfl.inspect_model(bad.read_bytes(), "bad.tflite"), Params(), "bad.tflite")
    assert str(e.value).startswith("bad.tflite: ") and msg in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CryblockError, match=re.escape(msg)):
        gen.generate_project(bad, tmp_path / "fw", Params())
    assert not (tmp_path / "fw").exists()


@pytest.mark.parametrize("command", ["build", "detect", "evaluate", "emulate"])
def test_model_reshaped_to_6144_is_one_error_line_everywhere(student, tmp_path, command):
    """The model whose input was reshaped to [6144]: before, ``build`` accepted it and ``detect``
    died of SIGFPE inside TFLite Micro (exit 136). Now each command prints one ``error:`` line and
    exits 2 (run as a process: a crash cannot take the test run with it)."""
    bad = _mutated(Path(student[0]).read_bytes(), "flat-input")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_quantized_int8_io.tflite").write_bytes(bad)
    shutil.copyfile(student[1], run / "model.tflite")
    Params().save(run / "params.json")
    clip = sorted(Path(os.environ["CRYBLOCK_DATA"]).glob("audio/theunissen/*.flac"))[0]
    if command == "build":
        args = ["build", "--model", str(run / "model_quantized_int8_io.tflite"), "--out", str(tmp_path / "fw"),
                "--no-idf"]
    elif command == "detect":
        args = ["detect", "--run", str(run), str(clip)]
    elif command == "evaluate":
        (tmp_path / "m.csv").write_text(f"path,label,group\n{clip},cry,g1\n")
        args = ["evaluate", "--run", str(run), "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path / "ev")]
    else:
        fw = gen.generate_project(student[0], tmp_path / "fw", Params(), gen.BuildOptions(target="linux")).project
        (fw / "main" / "model_data.cc").write_text(tfl.model_c_source(bad))
        args = ["emulate", "--project", str(fw), "--audio", str(clip), "--binary", "/bin/true"]
    r = subprocess.run([sys.executable, "-m", "cryblock.cli", *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PATH": "/usr/bin:/bin"})
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(errors) == 1 and "input shape [6144] does not hold one 96×64" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "ev").exists() and (command == "emulate" or not (tmp_path / "fw").exists())


def test_threshold_is_never_rounded_into_another_decision(student, tmp_path):
    """The firmware holds the threshold in thousandths (k / 1000.0f). Before, 0.0004 became 0 (every
    patch positive on the device while ``detect`` raised nothing); now a threshold the firmware cannot
    hold exactly is refused, naming the nearest ones, and every multiple of 0.001 (all calibrated
    thresholds are) is bit-exact against the Python detector's float32 threshold."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    assert all(np.float32(k) / np.float32(1000) == np.float32(k / 1000) for k in range(1001))
    for t, k in ((0.449, 449), (0.0, 0), (1.0, 1000), (0.1 + 0.2, 300)):
        assert gen.threshold_x1000(t) == k
    params = tmp_path / "params.json"
    Params().replace(detector={"threshold": 0.0004}).save(params)
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--params", str(params),
                                 "--out", str(tmp_path / "fw"), "--no-idf"])
    assert r.exit_code == 2 and "error: parameter 'detector.threshold': 0.0004 is finer" in r.stderr, r.output
    assert "set 0 or 0.001 in params.json" in r.stderr and not (tmp_path / "fw").exists()
    with pytest.raises(CryblockError, match="set 0.449 or 0.45"):
        gen.generate_project(student[0], tmp_path / "fw", Params().replace(detector={"threshold": 0.4495}))


def test_build_hint_is_quoted_for_the_shell(student, tmp_path, monkeypatch):
    """``--out 'fw;touch PWNED'``-style names: the printed ``cd <out> && idf.py build`` line, pasted
    into a shell, enters the project and runs idf.py — and nothing else."""
    from click.testing import CliRunner

    from cryblock.cli.main import cli

    monkeypatch.delenv("IDF_PATH", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    out = tmp_path / "fw;touch_PWNED;$(touch_PWNED2)"
    r = CliRunner().invoke(cli, ["build", "--model", str(student[0]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    hint = next(ln.strip() for ln in r.stderr.splitlines() if ln.strip().startswith("cd "))
    fake_idf = tmp_path / "bin"
    fake_idf.mkdir()
    (fake_idf / "idf.py").write_text('#!/bin/sh\npwd > "$0.ran"\n')
    (fake_idf / "idf.py").chmod(0o755)
    (fake_idf / "touch_PWNED").write_text("#!/bin/sh\ntouch PWNED\n")
    (fake_idf / "touch_PWNED").chmod(0o755)
    subprocess.run(["sh", "-c", hint], cwd=tmp_path, check=True, env={"PATH": f"{fake_idf}:/usr/bin:/bin"})
    assert (fake_idf / "idf.py.ran").read_text().strip() == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", out.name]


def _run_cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryblock.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_emulate_on_a_board_over_its_serial_port(student, tmp_path):
    """``emulate --port``: the replay build on a board's serial console. The board here is the
    host-compiled firmware core behind a real pty, started once the port is opened (like a board
    reset by the host); every patch comes back and is compared (the stand-in model differs)."""
    import pty
    import termios
    import threading
    import tty

    fw, program = _host_firmware(student, tmp_path)
    clip = sorted(Path(os.environ["CRYBLOCK_DATA"]).glob("audio/theunissen/*.flac"))[0]
    master, slave = pty.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    attrs[4] = attrs[5] = termios.B9600
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    port = os.ttyname(slave)
    started = []

    def board():  # power on when the host has opened the port at 115200 Bd
        import time

        deadline = time.monotonic() + 120
        while termios.tcgetattr(slave)[4] != termios.B115200 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        started.append(subprocess.Popen([str(program)], stdin=master, stdout=master, stderr=subprocess.DEVNULL))

    t = threading.Thread(target=board, daemon=True)
    t.start()
    try:
        r = _run_cli("emulate", "--project", str(fw), "--audio", str(clip), "--port", port, "--boot-timeout", "30",
                     "--json", str(tmp_path / "cmp.json"))
    finally:
        t.join(timeout=10)
        for p in started:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)
    assert r.returncode == 1, r.stdout + r.stderr  # the stand-in model is not the real one
    (c,) = json.loads((tmp_path / "cmp.json").read_text())
    assert c["patches_firmware"] == c["patches_python"] > 5 and c["ok"] is False
    assert "Traceback" not in r.stderr, r.stderr


def test_emulate_refuses_odd_programs_and_keeps_device_text_short_and_safe(student, tmp_path):
    """A marker project name that walks out of build/, a FIFO or device as the program: one line.
    A firmware that prints terminal escapes and megabyte lines before dying: the error quotes its
    last lines cut short and terminal-safe (before: all of it, escape sequences included)."""
    fw, _ = _host_firmware(student, tmp_path)
    clip = sorted(Path(os.environ["CRYBLOCK_DATA"]).glob("audio/theunissen/*.flac"))[0]
    marker = json.loads((fw / gen.MARKER).read_text())
    marker["options"]["project_name"] = "../../../../bin/sh"
    (fw / gen.MARKER).write_text(json.dumps(marker))
    r = _run_cli("emulate", "--project", str(fw), "--audio", str(clip))
    assert r.returncode == 2 and "damaged project marker (project name" in r.stderr, r.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for program, what in ((fifo, "is a FIFO, not a program"), ("/dev/zero", "is a device, not a program")):
        r = _run_cli("emulate", "--project", str(fw), "--audio", str(clip), "--binary", str(program))
        assert r.returncode == 2 and what in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    noisy = tmp_path / "noisy.sh"
    noisy.write_text("#!/bin/sh\nfor i in 1 2 3 4 5 6; do printf '\\033]0;owned\\007\\033[2J'; "
                     "head -c 3000000 /dev/zero | tr '\\0' x; echo; done\n")
    noisy.chmod(0o755)
    r = _run_cli("emulate", "--project", str(fw), "--audio", str(clip), "--binary", str(noisy), "--boot-timeout", "20")
    (err,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and "firmware exited (last lines:" in err, r.stderr[:500]
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and len(r.stderr) < 2000


def test_emulate_qemu_uses_reference_kernels_unless_asked(student, tmp_path):
    """``emulate --qemu`` builds the image with esp-nn's reference kernels (CONFIG_NN_ANSI_C, in
    build-nn-ansi-c/, the project's build/ and sdkconfig untouched) and says so; ``--kernels
    optimized`` boots build/ with the QEMU SIMD caveat. ESP-IDF's Xtensa toolchain and Espressif's
    QEMU cannot be installed here: stand-ins record how they are called (idf.py) and play the
    booted image (qemu: the host-compiled firmware core)."""
    fw, program = _host_firmware(student, tmp_path)
    clip = sorted(Path(os.environ["CRYBLOCK_DATA"]).glob("audio/theunissen/*.flac"))[0]
    assert "CONFIG_NN_ANSI_C=y" in (fw / "sdkconfig.nn-ansi-c").read_text()
    tools = tmp_path / "tools"
    tools.mkdir()
    flasher = json.dumps({"flash_settings": {"flash_mode": "dio", "flash_size": "8MB", "flash_freq": "80m"},
                          "flash_files": {"0x0": "bootloader/bootloader.bin", "0x8000": "partition_table/pt.bin",
                                          "0x10000": "cry_detector.bin"},
                          "extra_esptool_args": {"chip": "esp32s3"}})
    (tools / "idf.py").write_text(f"""#!/bin/sh
echo "$@" >> "{tmp_path}/idf.calls"
b=$(echo "$@" | sed -n 's/.*-B \\([^ ]*\\).*/\\1/p')
mkdir -p "$b/bootloader" "$b/partition_table"
printf '\\351' > "$b/bootloader/bootloader.bin"; printf 'x' > "$b/partition_table/pt.bin"
printf '\\351' > "$b/cry_detector.bin"; echo '{flasher}' > "$b/flasher_args.json"
""")
    (tools / "qemu-system-xtensa").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/qemu.calls\nexec {program}\n")
    for f in tools.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:/usr/bin:/bin"}
    r = _run_cli("emulate", "--project", str(fw), "--audio", str(clip), "--qemu", "qemu-system-xtensa", env=env)
    assert r.returncode == 1, r.stderr  # ran, compared (the stand-in model differs)
    assert "QEMU: esp-nn's reference C kernels (CONFIG_NN_ANSI_C" in r.stderr
    call = (tmp_path / "idf.calls").read_text()
    assert ("-B build-nn-ansi-c -D SDKCONFIG=build-nn-ansi-c/sdkconfig "
            "-D SDKCONFIG_DEFAULTS=sdkconfig.defaults;sdkconfig.nn-ansi-c build") in call
    assert "build-nn-ansi-c" in (tmp_path / "qemu.calls").read_text() or (fw / "build-nn-ansi-c").is_dir()
    assert not (fw / "build").exists() and not (fw / "sdkconfig").exists()
    r = _run_cli("emulate", "--project", str(fw), "--audio", str(clip), "--qemu", "qemu-system-xtensa",
                 "--kernels", "optimized", env=env)
    assert r.returncode == 2 and "build folder not found" in r.stderr, r.stderr  # build/ was never built
    shutil.copytree(fw / "build-nn-ansi-c", fw / "build")
    r = _run_cli("emulate", "--project", str(fw), "--audio", str(clip), "--qemu", "qemu-system-xtensa",
                 "--kernels", "optimized", env=env)
    assert r.returncode == 1 and "optimised S3 kernels (build/). Caveat: Espressif's QEMU mis-emulates" in r.stderr
    assert "espressif/qemu #161, #164, #165, #166" in r.stderr
    r = _run_cli("emulate", "--project", str(fw), "--audio", str(clip), "--kernels", "optimized", env=env)
    assert r.returncode == 2 and "--kernels: only with --qemu" in r.stderr


def test_build_states_esp_nn_versions_and_known_defect_shapes(project):
    """The build report names the esp-nn range it requires and the version it was verified with,
    and flags the layers in the shape classes of known esp-nn S3 defects (#34 per-channel FC on
    unaligned rows, #23 the general convolution, #30 asymmetric depthwise scratch)."""
    from cryblock.blocks.deploy import esp_nn
    from cryblock.blocks.deploy.arena import layer_scratch_s3
    from cryblock.blocks.deploy.model import Layer

    text = size.format_report(project.report)
    assert "esp-nn  : manifest requires >=1.2.1" in text and "verified with 1.2.3" in text
    assert ('espressif/esp-nn: ">=1.2.1"' in (project.project / "main/idf_component.yml").read_text())
    stem = tfl.layers(tfl.parse_c_array((project.project / "main/model_data.cc").read_text()))[0]
    assert stem.op == "CONV_2D" and stem.stride == (2, 2) and stem.pad == (0, 1, 0, 1)  # TFLite SAME: extra at the end
    assert any(d["level"] == "warning" and d["text"].startswith("esp-nn #23 (open): CONV_2D 3×3 stride 2")
               for d in project.report["esp_nn"]["known_defects"])
    fc = Layer("FULLY_CONNECTED", (4, 100), (2, 100), (4, 2), per_channel=True)
    dw = Layer("DEPTHWISE_CONV_2D", (1, 12, 8, 48), (1, 3, 3, 48), (1, 6, 4, 48), (2, 2), (0, 1, 0, 1))
    pointwise = Layer("CONV_2D", (1, 6, 4, 48), (96, 1, 1, 48), (1, 6, 4, 96))
    found = esp_nn.known_defects([fc, dw, pointwise, Layer("FULLY_CONNECTED", (1, 100), (2, 100), (1, 2),
                                                           per_channel=True)])
    assert [(lv, t.split(":")[0]) for lv, t in found] == [("warning", "esp-nn #34 (fixed in 1.2.6)"),
                                                          ("note", "esp-nn #30 (fixed after 1.2.3)")]
    # what the #30 kernel path really uses: 9·48 + (8+2)·(12+2)·48 + 4·6·48 + 64, above esp-nn's 7,168 B report
    assert layer_scratch_s3(dw) == 9 * 48 + 10 * 14 * 48 + 4 * 6 * 48 + 64 == 8368
    sym = Layer("DEPTHWISE_CONV_2D", (1, 6, 4, 96), (1, 3, 3, 96), (1, 6, 4, 96), (1, 1), (1, 1, 1, 1))
    assert esp_nn.known_defects([sym]) == []


@pytest.mark.parametrize("console", ["uart", "usb"])
def test_docs_send_commands_to_the_port_that_reads_them(student, tmp_path, console):
    """README and the generated README name, for every command that talks to the firmware, the
    port of the primary console of the build they describe: UART0's USB-UART bridge (ttyUSB0) by
    default — the native USB port (ttyACM0) is output-only there — and ttyACM0 for --console usb."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    fw = gen.generate_project(student[0], tmp_path / "fw", Params(), gen.BuildOptions(console=console)).project
    generated = (fw / "README.md").read_text()
    want = "/dev/ttyACM0" if console == "usb" else "/dev/ttyUSB0"
    talk = re.compile(r"(?:cryblock (?:monitor|config|bench|emulate)\b.*--port|idf\.py -p) (/dev/\S+)")
    texts = [generated] + ([readme] if console == "uart" else [])
    ports = [m.group(1) for t in texts for m in talk.finditer(t)]
    assert ports and set(ports) == {want}, ports
    sdk = (fw / "sdkconfig.defaults.esp32s3").read_text()
    assert ("CONFIG_ESP_CONSOLE_USB_SERIAL_JTAG=y" in sdk) == (console == "usb")
