"""Edge Impulse DSP block: parameters.json, generate_features and the HTTP server, exercised
with real HTTP requests carrying real recordings from $CRYBLOCK_DATA (int16 scale, as
Edge Impulse sends audio)."""
from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cryblock.blocks.dsp import ei
from cryblock.blocks.dsp.features import waveform_to_patches
from cryblock.blocks.dsp.server import serve_in_thread
from cryblock.audio import prepare_waveform
from cryblock.params import DspParams

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    srv, thread = serve_in_thread("127.0.0.1", 0)
    host, port = srv.server_address[:2]
    yield f"http://{host}:{port}"
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _post(url: str, body) -> tuple[int, dict | bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, json.loads(raw) if r.headers.get("Content-Type") == "application/json" else raw
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _clip(clips, source: str, i: int = 0):
    return sorted((c for c in clips if c.source == source), key=lambda c: str(c.path))[i]


@pytest.fixture(scope="module")
def windows(clips):
    """Real int16 windows: {name: (int16 samples [n], rate)}."""
    out = {}
    for name, src, secs in (("16k", "theunissenlab/BabyCriesDiscomfortPain", 0.975),
                            ("44k", "ESC-10", 2.0), ("8k", "donateacry-corpus", 0.975)):
        c = _clip(clips, src)
        x, sr = sf.read(str(c.path), dtype="int16")
        start = len(x) // 3
        out[name] = (x[start:start + int(round(secs * sr))], sr)
    return out


def _library(samples: np.ndarray, sr: int, dsp: DspParams = DspParams()) -> np.ndarray:
    return waveform_to_patches(prepare_waveform(samples.astype(np.float64) / 32768.0, sr, dsp.sample_rate), dsp)


# ---------------------------------------------------------------- parameters.json

def test_parameters_json_follows_ei_conventions_and_matches_defaults():
    root = json.loads((REPO / "parameters.json").read_text())
    assert root == ei.load_parameters_json()  # top-level copy == packaged copy
    assert root["version"] == 1 and "type" not in root
    assert set(root["info"]) >= {"title", "author", "description", "name", "cppType", "preferConvolution",
                                 "visualization", "experimental", "latestImplementationVersion"}
    assert root["info"]["latestImplementationVersion"] == 1
    defaults = dataclasses.asdict(DspParams())
    seen = set()
    for group in root["parameters"]:
        assert set(group) == {"group", "items"}
        for item in group["items"]:
            assert set(item) == {"name", "value", "type", "help", "param"}
            field = item["param"].replace("-", "_")
            assert field in defaults, item
            assert item["value"] == defaults[field] and item["type"] in ("int", "float")
            seen.add(field)
    assert seen == set(defaults)
    # the defaults, as Studio would send them, build the default DspParams
    assert ei.dsp_params_from_block({i["param"]: i["value"] for g in root["parameters"] for i in g["items"]}) == DspParams()


def test_get_root_and_parameters(server):
    code, ctype, body = _get(server + "/")
    assert code == 200 and ctype.startswith("text/plain")
    assert body.decode() == "Edge Impulse DSP block: YAMNet log-mel patches (cryblock) by cryblock"
    code, ctype, body = _get(server + "/parameters")
    assert code == 200 and ctype == "application/json"
    assert json.loads(body) == ei.load_parameters_json()
    assert _get(server + "/nope")[0] == 404


# ---------------------------------------------------------------- /run and /batch

def test_run_16k_window_equals_library(server, windows):
    x, sr = windows["16k"]
    assert sr == 16000 and len(x) == 15600
    code, out = _post(server + "/run", {"features": x.tolist(), "params": {}, "sampling_freq": sr,
                                        "draw_graphs": True, "axes": ["audio"], "implementation_version": 1})
    assert code == 200 and out["success"] is True, out
    want = _library(x, sr)
    assert want.shape == (1, 96, 64)
    np.testing.assert_array_equal(np.asarray(out["features"], dtype=np.float32), want.ravel())
    assert out["output_config"] == {"type": "spectrogram", "shape": {"width": 64, "height": 96}}
    (graph,) = out["graphs"]
    assert graph["type"] == "image" and graph["imageMimeType"] == "image/png"
    assert base64.b64decode(graph["image"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_44k_longer_window_is_resampled_and_stacks_patches(server, windows):
    x, sr = windows["44k"]
    code, out = _post(server + "/run", {"features": x.tolist(), "params": {}, "sampling_freq": sr,
                                        "draw_graphs": False, "axes": ["audio"]})
    assert out["success"] is True, out
    want = _library(x, sr)
    assert len(want) == 4  # 2.0 s → YAMNet padding gives 1 + ceil((32000 - 15600) / 7680) patches
    np.testing.assert_array_equal(np.asarray(out["features"], dtype=np.float32), want.ravel())
    assert out["output_config"]["shape"] == {"width": 64, "height": 4 * 96}
    assert out["graphs"] == []


def test_run_with_block_parameters_both_spellings(server, windows):
    x, sr = windows["8k"]
    dsp = DspParams(mel_bands=32, mel_max_hz=4000.0, log_offset=0.01)
    for params in ({"mel-bands": 32, "mel-max-hz": 4000, "log-offset": "0.01"},
                   {"mel_bands": "32", "mel_max_hz": 4000.0, "log_offset": 0.01}):
        code, out = _post(server + "/run", {"features": x.tolist(), "params": params, "sampling_freq": sr,
                                            "draw_graphs": False})
        assert out["success"] is True, out
        np.testing.assert_array_equal(np.asarray(out["features"], dtype=np.float32), _library(x, sr, dsp).ravel())
        assert out["output_config"]["shape"]["width"] == 32


def test_run_stereo_axes_are_mixed(server, windows):
    left, sr = windows["16k"]
    right = np.roll(left, 777)
    inter = np.stack([left, right], axis=1).ravel()
    code, out = _post(server + "/run", {"features": inter.tolist(), "params": {}, "sampling_freq": sr,
                                        "draw_graphs": False, "axes": ["left", "right"]})
    assert out["success"] is True, out
    mono = (left.astype(np.float64) + right) / 2
    np.testing.assert_allclose(np.asarray(out["features"]), _library(mono, sr).ravel(), atol=1e-5)


def test_batch_equals_run_per_example(server, windows):
    xs = [windows["16k"][0], windows["16k"][0][::-1].copy(), (windows["16k"][0] // 4)]
    code, out = _post(server + "/batch", {"features": [x.tolist() for x in xs], "params": {},
                                          "sampling_freq": 16000, "axes": ["audio"], "implementation_version": 1})
    assert code == 200 and out["success"] is True, out
    assert len(out["features"]) == 3
    for x, f in zip(xs, out["features"]):
        np.testing.assert_array_equal(np.asarray(f, dtype=np.float32), _library(x, 16000).ravel())
    assert out["output_config"] == {"type": "spectrogram", "shape": {"width": 64, "height": 96}}
    assert out["labels"] == [] and out["state"] is None


def test_generate_features_direct_call(windows):
    x, sr = windows["16k"]
    out = ei.generate_features(1, False, x.astype(np.float64), ["audio"], sr)
    assert out["features"].dtype == np.float32
    np.testing.assert_array_equal(out["features"], _library(x, sr).ravel())


# ---------------------------------------------------------------- bad requests

@pytest.mark.parametrize("body,pattern", [
    ({"params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"missing field.*features"),
    ({"features": [1, 2, 3], "sampling_freq": 16000, "draw_graphs": False}, r"missing field.*params"),
    ({"features": [1, 2, 3], "params": {}, "draw_graphs": False}, r"missing field.*sampling_freq"),
    ({"features": [1, 2, 3], "params": {}, "sampling_freq": 16000}, r"missing field.*draw_graphs"),
    ({"features": [], "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"non-empty list"),
    ({"features": [1, "x", 3], "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"list of numbers"),
    ({"features": [[1, 2], [3, 4]], "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"flat list"),
    ({"features": [0] * 20000, "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"all samples are zero"),
    ({"features": [1e6] * 100, "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"int16 scale"),
    ({"features": [0.25, -0.5, 0.125] * 100, "params": {}, "sampling_freq": 16000, "draw_graphs": False},
     r"look like \[-1, 1\] float audio"),
    ({"features": [1, 2, 3], "params": [], "sampling_freq": 16000, "draw_graphs": False}, r"'params' must be a JSON object"),
    ({"features": [1, 2, 3], "params": {"bogus": 1}, "sampling_freq": 16000, "draw_graphs": False}, r"unknown block parameter 'bogus'"),
    ({"features": [1, 2, 3], "params": {"mel-bands": "many"}, "sampling_freq": 16000, "draw_graphs": False}, r"'mel-bands': expected a number"),
    ({"features": [1, 2, 3], "params": {"mel-max-hz": 9000}, "sampling_freq": 16000, "draw_graphs": False}, r"mel_max_hz.*Nyquist"),
    ({"features": [1, 2, 3], "params": {}, "sampling_freq": "fast", "draw_graphs": False}, r"sampling_freq must be a number"),
    ({"features": [1, 2, 3], "params": {}, "sampling_freq": -5, "draw_graphs": False}, r"sample rate -5(\.0)? Hz is outside"),
    # the work budget used to divide by it: "internal error: OverflowError"
    ({"features": [1000] * 16000, "params": {}, "sampling_freq": 1e-300, "draw_graphs": False},
     r"sample rate 1e-300 Hz is outside"),
    ({"features": [1, 2, 3], "params": {}, "sampling_freq": 16000, "draw_graphs": False,
      "implementation_version": 2}, r"implementation_version 2 is not supported"),
    ({"features": [1, 2, 3], "params": {}, "sampling_freq": 16000, "draw_graphs": False,
      "axes": ["a", "b"]}, r"not a multiple of 2 axes"),
    ([1, 2, 3], r"must be a JSON object"),
    # np.asarray would have read these as numbers
    ({"features": ["100", "2", "3"], "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"found str '100'"),
    ({"features": [True, False] * 100, "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"found bool"),
    ({"features": [1, None, 3], "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"found NoneType"),
    ({"features": [1, 2, 3], "params": {}, "sampling_freq": True, "draw_graphs": False}, r"sampling_freq must be a number"),
    ({"features": [1, 2, 3], "params": {}, "sampling_freq": 10 ** 400, "draw_graphs": False},
     r"sampling_freq must be a number"),
    ({"features": [10 ** 400, 2, 3], "params": {}, "sampling_freq": 16000, "draw_graphs": False}, r"list of numbers"),
    *(({"features": [1, 2, 3], "params": {}, "sampling_freq": 16000, "draw_graphs": False,
        "implementation_version": v}, r"implementation_version must be an integer") for v in (1.5, True, [1], "1.0")),
])
def test_run_bad_requests_give_success_false(server, body, pattern):
    code, out = _post(server + "/run", body)
    assert code == 200 and out["success"] is False, out
    assert re.search(pattern, out["error"]), out["error"]
    assert "\n" not in out["error"] and "Traceback" not in out["error"]


def test_bad_json_nan_and_unknown_paths(server, windows):
    code, out = _post(server + "/run", b"{not json")
    assert code == 200 and out["success"] is False and "not valid JSON" in out["error"]
    x = windows["16k"][0].tolist()
    raw = json.dumps({"features": x, "params": {}, "sampling_freq": 16000, "draw_graphs": False})
    for token in ("NaN", "Infinity", "-Infinity"):
        bad = raw.replace(f"[{x[0]},", f"[{token},", 1).encode()
        code, out = _post(server + "/run", bad)
        assert out["success"] is False and token in out["error"], out
    code, out = _post(server + "/batch", {"features": [x, [0] * 100], "params": {}, "sampling_freq": 16000})
    assert out["success"] is False and out["error"].startswith("example 1: ") and "zero" in out["error"]
    code, out = _post(server + "/batch", {"features": "abc", "params": {}, "sampling_freq": 16000})
    assert out["success"] is False and "list of examples" in out["error"]
    req = urllib.request.Request(server + "/run", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read()) == {"success": False, "error": "empty request body (expected JSON)"}
    assert _post(server + "/elsewhere", {"features": [1]})[0] == 404
    # the server still answers after all that
    assert _get(server + "/")[0] == 200


def test_dockerfile_entrypoint_serves_the_block():
    """The Dockerfile exposes 4446 and its ENTRYPOINT (``cryblock dsp serve ... --port 4446``)
    really serves the block: run that same command (port swapped for a free one) and query it."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 4446$", text, re.M)
    assert re.search(r"^COPY .*parameters\.json", text, re.M)
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    assert entry[:3] == ["cryblock", "dsp", "serve"] and entry[entry.index("--port") + 1] == "4446"
    args = entry[1:]
    args[args.index("--port") + 1] = "0"
    args[args.index("--host") + 1] = "127.0.0.1"
    proc = subprocess.Popen([sys.executable, "-m", "cryblock.cli", *args], stderr=subprocess.PIPE, text=True)
    try:
        m, seen = None, []
        for line in proc.stderr:  # other stages' imports may log first; EOF if the server died
            seen.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                break
        assert m, "".join(seen)
        code, _, body = _get(f"http://127.0.0.1:{m.group(1)}/parameters")
        assert code == 200 and json.loads(body) == ei.load_parameters_json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- resources (load test over loopback)
# A real server process, real sockets on 127.0.0.1, bounded in count and time.

def _start_server(*extra: str):
    """Start ``cryblock dsp serve --port 0 --workers 2 --quiet *extra``; returns (process, url,
    stderr lines as a list that a reader thread keeps filling)."""
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "cryblock.cli", "dsp", "serve", "--port", "0", "--workers", "2",
                             "--quiet", *extra], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    port = None
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
        if m:
            host, port = m.group(1), int(m.group(2))
            break
    assert port, "".join(lines)
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return proc, f"http://{host}:{port}", lines


@pytest.fixture
def server_proc():
    """``cryblock dsp serve`` on loopback (1 s client timeout, 2 workers); yields (url, pid,
    stderr lines so far)."""
    proc, url, lines = _start_server("--host", "127.0.0.1", "--timeout", "1")
    yield url, proc.pid, lines
    proc.terminate()
    proc.wait(timeout=10)


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_fifty_parallel_requests_are_all_served(server_proc, windows):
    from concurrent.futures import ThreadPoolExecutor

    url, pid, _ = server_proc
    x, sr = windows["16k"]
    body = {"features": x.tolist(), "params": {}, "sampling_freq": sr, "draw_graphs": False}
    with ThreadPoolExecutor(50) as ex:
        results = list(ex.map(lambda _: _post(url + "/run", body), range(50)))
    assert [code for code, _ in results] == [200] * 50
    assert all(out["success"] for _, out in results)


def test_idle_connections_are_bounded_and_dropped(server_proc, windows):
    import socket
    import time

    url, pid, lines = server_proc
    port = int(url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(200)]
    try:
        time.sleep(0.5)
        assert _status(pid, "Threads") <= 32 + 8  # bounded, not one thread per idle connection
        x, sr = windows["16k"]
        t0 = time.monotonic()
        code, out = _post(url + "/run", {"features": x.tolist(), "params": {}, "sampling_freq": sr,
                                         "draw_graphs": False})
        assert code == 200 and out["success"], out
        print(f"request beside 200 idle connections answered in {time.monotonic() - t0:.2f} s")
        assert time.monotonic() - t0 < 30  # served once idle ones time out (1 s each, 100 at a time)
        deadline = time.monotonic() + 30
        for s in idle:  # every idle connection is closed by the server
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in idle:
            s.close()
    assert not any("Traceback" in ln for ln in lines)


def test_oversized_body_is_refused_without_reading_it(server_proc):
    import socket

    url, _, _ = server_proc
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 104857600\r\n\r\n{\"features\": [1,")
        reply = b""
        for _ in range(100):  # the server answers from the headers and closes the connection
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 413") or head.startswith(b"HTTP/1.1 413"), head
    assert b"Request Entity Too Large" in payload and b"exceeds max_body of 16777216" in payload


def test_client_disconnects_leave_no_traceback(server_proc, windows):
    import socket
    import time

    url, pid, lines = server_proc
    port = int(url.rsplit(":", 1)[1])
    x, sr = windows["44k"]
    body = json.dumps({"features": x.tolist(), "params": {}, "sampling_freq": sr, "draw_graphs": True}).encode()
    head = f"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    for cut in (len(body) // 2, len(body)):  # mid-body, and after the whole request (reply unread)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.sendall(head + body[:cut])
        s.close()
    time.sleep(2.5)  # the half request times out (1 s); the unread reply hits a reset socket
    assert _get(url + "/")[0] == 200
    assert not any("Traceback" in ln for ln in lines), "".join(lines)


@pytest.mark.parametrize("body", [
    {"features": [100] * 47000, "params": {}, "sampling_freq": 1, "draw_graphs": False},
    {"features": [100] * 47000, "params": {"sampling_freq": 1}, "sampling_freq": 16000, "draw_graphs": False},
    {"features": [100] * 47000, "params": {"sample-rate": 1e9}, "sampling_freq": 16000, "draw_graphs": False},
    {"features": [100] * 47000, "params": {"patch-window-seconds": 1e5}, "sampling_freq": 16000, "draw_graphs": False},
    {"features": [100] * 47000, "params": {"raw_data": [1]}, "sampling_freq": 16000, "draw_graphs": False},
    {"features": [100] * 47000, "params": {"stft-hop-seconds": 1e-6}, "sampling_freq": 16000, "draw_graphs": False},
    {"features": [[100] * 2000] * 600, "params": {}, "sampling_freq": 16000},
    b"[" * 100000 + b"]" * 100000,
    # within each bound, but together gigabytes: 1 ms hop, 10 s patches (1000 frames), 192 kHz
    {"features": [100] * 400000, "params": {"sample-rate": 192000, "stft-hop-seconds": 0.001,
                                             "stft-window-seconds": 0.085, "patch-window-seconds": 1,
                                             "patch-hop-seconds": 0.001, "mel-max-hz": 7500},
     "sampling_freq": 4000, "draw_graphs": False},
    {"features": [100] * 47000, "params": {"stft-window-seconds": 0.2, "sample-rate": 192000},
     "sampling_freq": 16000, "draw_graphs": False},
    {"features": [100] * 47000, "params": {"stft-hop-seconds": 0.0001}, "sampling_freq": 16000, "draw_graphs": False},
    {"features": [100] * 47000, "params": {"patch-window-seconds": 10, "stft-hop-seconds": 0.005},
     "sampling_freq": 16000, "draw_graphs": False},
    b'{"features": [1, 2], "params": {}, "sampling_freq": ' + b"9" * 5000 + b', "draw_graphs": false}',
], ids=["rate-1", "params-rate", "sample-rate-1e9", "patch-1e5", "reserved-name", "hop-rounds-to-0",
        "batch-too-many-patches", "deep-json", "sizes-together", "fft-65536", "hop-0.1ms", "patch-2000-frames",
        "5000-digit-number"])
def test_hostile_requests_are_refused_in_bounded_memory(server_proc, body):
    url, pid, lines = server_proc
    code, out = _post(url + ("/batch" if isinstance(body, dict) and "draw_graphs" not in body else "/run"), body)
    assert code == 200 and out["success"] is False, out
    assert "\n" not in out["error"] and "internal error" not in out["error"], out["error"]
    assert _status(pid, "VmHWM") < 1_000_000  # kB: peak RSS of the server stays under 1 GB
    assert not any("Traceback" in ln for ln in lines)


def _vm(pid: int, key: str = "VmRSS") -> int:
    return _status(pid, key)


def test_server_listens_on_loopback_unless_told_otherwise():
    """Before, ``cryblock dsp serve`` listened on every interface by default; now on 127.0.0.1
    (the Edge Impulse Dockerfile passes --host 0.0.0.0 itself: inside a container, loopback is
    unreachable from the host's port mapping)."""
    proc, url, _ = _start_server()
    try:
        assert url.startswith("http://127.0.0.1:") and _get(url + "/")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    text = (REPO / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    assert entry[entry.index("--host") + 1] == "0.0.0.0"
    assert re.search(r"^#.*--host 0\.0\.0\.0.*container", text, re.M | re.I)


def test_slow_trickling_clients_do_not_block_the_server(server_proc, windows):
    """32 clients that send a request one byte at a time, each byte just inside the client
    timeout (slowloris): before, they held every connection slot and a real request waited for
    them; now a real request is answered at once."""
    import socket
    import threading
    import time

    url, pid, lines = server_proc
    port = int(url.rsplit(":", 1)[1])
    stop = threading.Event()
    head = b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"

    def trickle():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for i in range(40):  # at most 40 bytes, 0.4 s apart (the server's timeout is 1 s)
                    if stop.is_set():
                        return
                    s.sendall(head[i:i + 1])
                    time.sleep(0.4)
        except OSError:
            return

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(32)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)  # every trickler is connected and in the middle of its request
        x, sr = windows["16k"]
        t0 = time.monotonic()
        code, out = _post(url + "/run", {"features": x.tolist(), "params": {}, "sampling_freq": sr,
                                         "draw_graphs": False})
        took = time.monotonic() - t0
        assert code == 200 and out["success"], out
        print(f"request beside 32 trickling clients answered in {took:.2f} s")
        assert took < 3.0, f"a real request waited {took:.1f} s behind slow clients"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert not any("Traceback" in ln for ln in lines)


def test_clients_that_never_read_their_reply_keep_memory_bounded(windows):
    """40 clients ask for a large reply (40 patches, ≈ 5 MB of JSON each) and never read it.
    Before, every reply stayed in the server's memory until the 30 s client timeout (≈ 200 MB
    for these, 1.4 GB in the finding); now a reply that cannot be sent waits on disk, and a real
    request is still answered."""
    import socket

    proc, url, lines = _start_server("--host", "127.0.0.1", "--timeout", "30")
    port = int(url.rsplit(":", 1)[1])
    socks = []
    try:
        x, sr = windows["16k"]
        assert _post(url + "/run", {"features": x.tolist(), "params": {}, "sampling_freq": sr,
                                    "draw_graphs": False})[0] == 200
        base = _vm(proc.pid)
        body = json.dumps({"features": [x.tolist()] * 40, "params": {}, "sampling_freq": sr}).encode()
        head = f"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that does not read
            s.sendall(head + body)
            socks.append(s)
        # served after the 40 (first in, first out with 2 workers): all 40 replies exist by then
        code, out = _post(url + "/run", {"features": x.tolist(), "params": {}, "sampling_freq": sr,
                                         "draw_graphs": False})
        assert code == 200 and out["success"], out
        grown = (_vm(proc.pid) - base) / 1024
        print(f"server memory with 40 unread replies of 40 patches: +{grown:.0f} MB")
        assert grown < 100, f"server memory grew by {grown:.0f} MB holding unread replies"
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(timeout=10)
    assert not any("Traceback" in ln for ln in lines)
