"""The firmware's MQTT side (``cryblock build --mqtt``) on the host: the portable C payload
formatter, outbox, latency percentiles, snippet recorder and console-command parser compiled with
host gcc and checked against the Python spec (cryblock/mqttformat.py); the generated project with
and without ``--mqtt``."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cryblock import mqttformat as mf

HARNESS = Path(__file__).parent / "c"
SRC = Path(__file__).parents[1] / "templates" / "esp32s3" / "main"
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")


@pytest.fixture(scope="module")
def msg(tmp_path_factory):
    exe = tmp_path_factory.mktemp("msg") / "msg"
    cmd = ["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", f"-I{SRC}",
           str(HARNESS / "msg_harness.c"), str(SRC / "cry_msg.c"), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def _run(exe, *args) -> list[str]:
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True)
    return r.stdout.splitlines()


def test_c_payloads_parse_with_the_python_spec(msg):
    out = _run(msg, "messages", "nursery-2")
    pairs = [(out[i], out[i + 1].encode()) for i in range(0, 10, 2)]
    (t_on, on), (t_off, off), (t_st, st), (t_disc, disc), (t_sn, sn) = pairs
    assert mf.parse(t_on, on) == mf.parse(*mf.example_event("nursery-2"))  # the spec's example is the firmware's
    e = mf.parse(t_off, off)
    assert (e.state, e.seq, e.time, e.votes, e.vote) == ("off", 18, None, 0, "2/2")
    assert mf.parse(t_st, st) == mf.Status("nursery-2", 3, 5, 61000, 61, 4.7, 5.1, 9.0, 25104, 0, 3, -61, None,
                                           "cryblock-0.1.0")
    assert (t_disc, json.loads(disc)) == (mf.discovery("nursery-2", fw="cryblock-0.1.0")[0],
                                         json.loads(mf.discovery("nursery-2", fw="cryblock-0.1.0")[1]))
    s = mf.parse(t_sn, sn)
    want = ((np.arange(48001, dtype=np.int64) * 7919) % 65536 - 32768).astype(np.int16)
    np.testing.assert_array_equal(s.pcm, want)  # odd byte counts: base64 padding
    assert base64.b64encode(want.astype("<i2").tobytes()).decode() == json.loads(sn)["pcm"]
    assert (s.sr, s.pre_ms, s.seq) == (16000, 2000, 17)
    assert out[10] == "-1"  # a payload that does not fit is refused, never truncated


def test_c_device_id_check_matches_python(msg, tmp_path):
    for dev in ("a", "A-b_9", "x" * 32, "x" * 33, "a/b", "a+b", "a#", "with space", "é", ""):
        r = subprocess.run([str(msg), "messages", dev], capture_output=True, text=True)
        assert (r.returncode == 0) == mf.valid_device_id(dev), dev


def test_outbox_drops_the_oldest_and_counts(msg):
    out = _run(msg, "outbox", "20")
    # 20 alerts into 16 slots: e0..e3 dropped; e4..e6 sent (100..102), e5 acknowledged, the
    # connection drops (all unacknowledged back to -1), the oldest is sent again (200)
    assert out[0] == "dropped=4 count=15"
    assert out[1:4] == ["e4 200", "e6 -1", "e7 -1"] and out[-1] == "e19 -1"


def test_latency_percentiles_match_numpy(msg):
    rng = np.random.default_rng(3)
    for n in (1, 5, 64, 100):
        v = np.round(rng.gamma(4, 1.2, n), 3).astype(np.float32)
        got = [float(x) for x in _run(msg, "lat", *map(str, v))[0].split()]
        last = v[-mf.LATENCY_WINDOW:]
        want = [np.percentile(last, p, method="inverted_cdf") for p in (50, 95, 100)]
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_snippet_recorder_keeps_pre_and_post_samples(msg):
    assert _run(msg, "snip", "800", "400", "5000", "7000") == ["seq=42 n=1200 first=4200 last=5399"]
    assert _run(msg, "snip", "800", "400", "300", "2000") == ["seq=42 n=700 first=0 last=699"]  # early onset
    assert _run(msg, "snip", "800", "400", "6900", "7000") == []  # not complete yet


def test_network_console_commands(msg):
    lines = ['set wifi "My Home Net" "secret pass 1"', "set wifi Open", "set wifi net short", "set wifi " + "x" * 33,
             "set mqtt mqtts://hub.local:8883", "set mqtt http://x", "set device nursery", "set device a/b",
             "set prefix homeassistant", "set prefix a#", "get net", "set threshold 0.5", "set wifi", 'set wifi "open',
             "set mqtt mqtt://a:1 extra"]
    got = [ln.split("|") for ln in _run(msg, "cmd", *lines)]
    WIFI, MQTT, DEVICE, PREFIX, GET, BAD = 1, 2, 3, 4, 5, 6
    assert got[0][:3] == [str(WIFI), "My Home Net", "secret pass 1"]
    assert got[1][:3] == [str(WIFI), "Open", ""]
    assert [int(g[0]) for g in got[2:]] == [BAD, BAD, MQTT, BAD, DEVICE, BAD, PREFIX, BAD, GET, 0, BAD, BAD, BAD]
    assert all(g[3] and " " not in g[3] for g in got if g[0] == str(BAD))


# ----------------------------------------------------------------------------------- the project
@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    """A small untrained student exported to INT8 (the project generator needs a real model)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cryblock.blocks.learn.export import export_all, representative_patches
    from cryblock.blocks.learn.student import build_student
    from cryblock.params import LearnParams

    sm = build_student(LearnParams(width=8, depth=2, stem_channels=0, blocks=""), seed=0)
    x = np.random.default_rng(0).normal(-4, 2, (40, 96, 64, 1)).astype(np.float32)
    return export_all(sm.model, representative_patches(x, 40), tmp_path_factory.mktemp("model")).int8_path


def _serial_only_templates(dest: Path) -> Path:
    """The templates with every --mqtt part removed: the MQTT-only files, ``{% if mqtt %}`` blocks
    and ``{{ a if mqtt else b }}`` choices (→ b) — i.e. the firmware as it was before --mqtt."""
    import re

    from cryblock.blocks.deploy import project as gen

    root = dest / "esp32s3"
    shutil.copytree(gen.templates_dir(), root)
    for rel in gen.MQTT_FILES:
        (root / rel).unlink()
    for f in root.rglob("*.j2"):
        text = f.read_text()
        text = re.sub(r"\{% if mqtt[^%]*%\}\n.*?\{% endif %\}\n", "", text, flags=re.S)
        text = re.sub(r"\{\{ \S+ if mqtt else (\S+) \}\}", r"\1", text)
        assert "mqtt" not in text, f
        f.write_text(text)
    return root


def test_without_mqtt_the_project_is_byte_for_byte_the_serial_firmware(int8_model, tmp_path, monkeypatch):
    from cryblock.blocks.deploy import project as gen
    from cryblock.params import Params

    plain = gen.generate_project(int8_model, tmp_path / "plain", Params(), gen.BuildOptions())
    stripped = _serial_only_templates(tmp_path / "tpl")
    monkeypatch.setattr(gen, "templates_dir", lambda: stripped)
    before = gen.generate_project(int8_model, tmp_path / "before", Params(), gen.BuildOptions())
    files = sorted(p.relative_to(plain.project) for p in plain.project.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(before.project) for p in before.project.rglob("*") if p.is_file())
    for rel in files:
        assert (plain.project / rel).read_bytes() == (before.project / rel).read_bytes(), rel
    assert not any(("cry_net" in (plain.project / r).read_text() or "mqtt" in (plain.project / r).read_text().lower())
                   for r in files if r.suffix != ".cc" or r.name == "main.cc")


def test_printf_wrappers_are_format_checked(int8_model, tmp_path):
    """Every printf-style wrapper of the firmware's C sources (cry_msg.c's fit, cry_log_vformat,
    cry_app_vlog) carries a format attribute, so ESP-IDF's -Wall checks each call's arguments
    against the format (on the S3 int32_t is long: "%d" with an int32_t is an error there).
    gcc's -Wmissing-format-attribute names any wrapper that would let a call go unchecked."""
    from cryblock.blocks.deploy import project as gen
    from cryblock.params import Params

    main = gen.generate_project(int8_model, tmp_path / "fw", Params(), gen.BuildOptions(),
                                mqtt=gen.MqttOptions(snippets=True)).project / "main"
    for f in ("cry_msg.c", "cry_log.c", "cry_app.c", "cry_net.c"):
        if f == "cry_net.c":  # ESP-IDF headers: not compilable here; its wrapper must be attributed
            assert "static void net_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));" in \
                (main / f).read_text()
            continue
        r = subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Wmissing-format-attribute",
                            "-Werror", f"-I{main}", "-c", str(main / f), "-o", str(tmp_path / "w.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{f}: {r.stderr}"


def test_event_handlers_never_sleep():
    """cry_net.c's ESP-IDF event handlers run on the default event loop, which the IP and MQTT
    events share: a handler that sleeps (the Wi-Fi back-off, up to 60 s) stalls every other event
    meanwhile. The handlers only record state; net_task waits out the back-off."""
    import re

    src = (Path(__file__).resolve().parents[1] / "templates" / "esp32s3" / "main" / "cry_net.c").read_text()
    handlers = re.findall(r"^static void (\w+)\(void \*\w*, esp_event_base_t[^)]*\)\n\{(.*?)^\}", src, re.M | re.S)
    assert {name for name, _ in handlers} >= {"wifi_event"}, "event handlers not found"
    for name, body in handlers:
        assert not re.search(r"\b(vTaskDelay|vTaskDelayUntil|usleep|sleep)\s*\(", body), f"{name} blocks the event loop"
    assert "esp_wifi_connect();" in src.split("static void net_task", 1)[1], "net_task must retry Wi-Fi"


def test_mqtt_project(int8_model, tmp_path):
    """--mqtt adds the network sources (portable ones compile with -Wpedantic), the snippet option,
    the CA file, and main.cc with its hooks compiles against the ESP-IDF stubs; no credential is in
    any generated file; the Wi-Fi-less linux target and a bad CA are refused."""
    from cryblock.blocks.deploy import project as gen
    from cryblock.errors import ParameterError
    from cryblock.params import Params

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    res = gen.generate_project(int8_model, tmp_path / "fw", Params(), gen.BuildOptions(),
                               mqtt=gen.MqttOptions(snippets=True, ca=str(ca)))
    main = res.project / "main"
    for f in ("cry_msg.c", "cry_msg.h", "cry_net.c", "cry_net.h", "cry_net_config.h", "mqtt_ca.pem"):
        assert (main / f).is_file(), f
    cm = (main / "CMakeLists.txt").read_text()
    assert "cry_net.c" in cm and "EMBED_TXTFILES mqtt_ca.pem" in cm and " mqtt " in cm
    assert "config CRY_MQTT_SNIPPETS" in (main / "Kconfig.projbuild").read_text()
    assert "default y" in (main / "Kconfig.projbuild").read_text().split("CRY_MQTT_SNIPPETS")[1][:200]
    assert '#define CRY_NET_HAS_CA 1' in (main / "cry_net_config.h").read_text()
    marker = json.loads((res.project / gen.MARKER).read_text())
    assert marker["mqtt"]["snippets"] is True
    r = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-c", str(main / "cry_msg.c"),
                        "-o", str(tmp_path / "m.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("g++"):
        from test_deploy import STUBS, _stub_dir

        gen_stubs = _stub_dir(tmp_path, (main / "Kconfig.projbuild").read_text())
        r = subprocess.run(["g++", "-std=gnu++2b", "-O2", "-Wall", "-Wextra", "-Werror", "-c", f"-I{gen_stubs}",
                            f"-I{STUBS}", f"-I{main}", str(main / "main.cc"), "-o", str(tmp_path / "main.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    with pytest.raises(ParameterError, match="linux"):
        gen.generate_project(int8_model, tmp_path / "fw2", Params(), gen.BuildOptions(target="linux"),
                             mqtt=gen.MqttOptions())
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(ParameterError, match="--mqtt-ca"):
        gen.generate_project(int8_model, tmp_path / "fw3", Params(), gen.BuildOptions(),
                             mqtt=gen.MqttOptions(ca=str(tmp_path / "junk.pem")))
    assert not (tmp_path / "fw2").exists() and not (tmp_path / "fw3").exists()
