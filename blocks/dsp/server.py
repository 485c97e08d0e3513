"""HTTP server of the Edge Impulse custom processing block (stdlib ``http.server``).

Endpoints (Edge Impulse's dsp-server contract, shared/docs/edge-impulse-block-conventions.md):

* ``GET /`` → text/plain ``Edge Impulse DSP block: <title> by <author>``
* ``GET /parameters`` → the block's parameters.json (``version`` forced to 1)
* ``POST /run`` → body ``{features, params, sampling_freq, draw_graphs, axes?,
  implementation_version?}``; reply = :func:`~cryblock.blocks.dsp.ei.generate_features`'s dict
  with ``features`` as a list and ``success: true``.
* ``POST /batch`` → body ``{features: [[...], ...], params, sampling_freq, axes?,
  implementation_version?, state?}``; reply ``{success, features: [[...]], labels,
  output_config, state}`` (labels/output_config of the first example, no graphs).
* Errors (bad JSON, missing field, bad samples or parameters, too much work): HTTP 200
  ``{"success": false, "error": "<one line>"}``; a body over the size limit: HTTP 413 with the same
  JSON, without reading the body. Unknown path: 404 text/plain.

Resources are bounded so one client cannot exhaust the machine (:class:`Limits`): the request
body size, the number of patches one request may produce, a socket timeout for idle or slow
clients, at most ``max_connections`` connections handled at once (more wait in the listen backlog
of ``backlog``), and at most ``workers`` requests computing at once (JSON parsing included, the
memory-heavy step). A client that disconnects is logged in one line, never with a traceback.

Run with ``cryblock dsp serve --host 0.0.0.0 --port 4446`` (default port 4446 as Edge Impulse
expects) or :func:`make_server` in tests (port 0 = any free port).
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import numpy as np

from cryblock.audio import MAX_INPUT_RATE, MIN_INPUT_RATE
from cryblock.errors import CryblockError
from cryblock.params import DspParams

from .ei import dsp_params_from_block, generate_features, load_parameters_json

DEFAULT_PORT = 4446  #: Edge Impulse's DSP block port (example-custom-processing-block-python)

#: Request fields that are arguments of generate_features, never block parameters.
RESERVED_NAMES = ("raw_data", "draw_graphs", "axes", "sampling_freq", "implementation_version")


@dataclass(frozen=True)
class Limits:
    """Resource bounds of the server.

    Attributes:
        max_body_bytes: largest request body (default 16 MiB: ≈ 170 s of 16 kHz int16 audio as
            JSON; a 975 ms Edge Impulse window is ≈ 100 KB).
        max_patches: most work one request may ask for, all examples of a batch together, in
            YAMNet-default patches (96 × 64 values, 48 × 512-point FFTs, 7680 samples each;
            default 512 ≈ 4 min of audio; the reply is ≈ 120 KB of JSON per patch).
        timeout_s: socket timeout for reading a request and writing the reply, s.
        max_connections: connections handled at once; more wait in the listen backlog.
        workers: requests parsed and computed at once (default: the CPU count).
        backlog: listen backlog (pending connections the kernel keeps).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_patches: int = 512
    timeout_s: float = 30.0
    max_connections: int = 32
    workers: int = max(1, os.cpu_count() or 1)
    backlog: int = 128


class RequestError(CryblockError):
    """A malformed request (bad JSON, missing or mistyped field, too much work)."""


def _require(body: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in body or body[n] is None]
    if missing:
        raise RequestError(f"missing field(s) {missing} in request body")


def _call_args(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("params")
    if not isinstance(params, dict):
        raise RequestError(f"'params' must be a JSON object, got {type(params).__name__}")
    reserved = [k for k in params if str(k).replace("-", "_") in RESERVED_NAMES]
    if reserved:
        raise RequestError(f"'params' must hold block parameters only; {reserved} are request fields")
    return {
        "axes": body.get("axes") or ["audio"],
        "sampling_freq": body["sampling_freq"],
        "implementation_version": body.get("implementation_version", 1),
        **params,
    }


def _check_samples(values: Any, where: str) -> list:
    if not isinstance(values, list) or not values:
        raise RequestError(f"'{where}' must be a non-empty list of numbers")
    return values


def _work_of(n_values: int, args: dict[str, Any]) -> float:
    """Work a window of ``n_values`` raw values asks for, in YAMNet-default patches (checked
    before computing): the largest of its patch count scaled by patch size (96 × 64 values), its
    STFT work scaled by a default patch's (48 hops × 512-point FFT) and its resampled length
    scaled by a default patch hop (7680 samples). Parameters that make patches larger, the FFT
    longer or the rate higher therefore spend the budget faster."""
    params = {k: v for k, v in args.items() if k not in RESERVED_NAMES}
    dsp: DspParams = dsp_params_from_block(params)
    try:
        rate = float(args["sampling_freq"])
    except (TypeError, ValueError, OverflowError):
        return 1.0  # reported by generate_features
    n_axes = max(1, len(args["axes"])) if isinstance(args["axes"], list) else 1
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:  # also NaN; 1e-300 Hz would make the work infinite
        return 1.0  # reported by generate_features
    ref = DspParams()
    n = n_values / n_axes * dsp.sample_rate / rate
    patches = 1 + max(0, math.ceil((n - dsp.patch_samples) / dsp.patch_hop_samples))
    frames = max(n, dsp.patch_samples) / dsp.hop_length_samples
    return max(patches * dsp.patch_frames * dsp.mel_bands / (ref.patch_frames * ref.mel_bands),
               frames * dsp.fft_length / (ref.patch_hop_frames * ref.fft_length),
               n / ref.patch_hop_samples)


def _budget(sizes: list[int], args: dict[str, Any], limits: Limits) -> None:
    total = sum(_work_of(n, args) for n in sizes)
    if total > limits.max_patches:
        raise RequestError(f"request would need the work of {math.ceil(total)} YAMNet patches, more than the limit "
                           f"of {limits.max_patches}; send shorter windows, smaller batches or smaller sizes")


def handle_run(body: dict[str, Any], limits: Limits = Limits()) -> dict[str, Any]:
    """``POST /run``: one window → generate_features' dict (features as a list)."""
    _require(body, "features", "params", "sampling_freq", "draw_graphs")
    raw = _check_samples(body["features"], "features")
    args = _call_args(body)
    _budget([len(raw)], args, limits)
    out = generate_features(draw_graphs=bool(body["draw_graphs"]), raw_data=raw, **args)
    out["features"] = np.asarray(out["features"]).tolist()
    out["success"] = True
    return out


def handle_batch(body: dict[str, Any], limits: Limits = Limits()) -> dict[str, Any]:
    """``POST /batch``: many windows (no graphs) → ``{success, features, labels, output_config, state}``."""
    _require(body, "features", "params", "sampling_freq")
    examples = body["features"]
    if not isinstance(examples, list) or not examples:
        raise RequestError("'features' must be a non-empty list of examples (lists of numbers)")
    base = _call_args(body)
    _budget([len(ex) if isinstance(ex, list) else 1 for ex in examples], base, limits)
    feats, labels, output_config = [], [], None
    for i, ex in enumerate(examples):
        raw = _check_samples(ex, f"features[{i}]")
        try:
            out = generate_features(draw_graphs=False, raw_data=raw, **base)
        except CryblockError as e:
            raise RequestError(f"example {i}: {e}") from None
        feats.append(np.asarray(out["features"]).tolist())
        if i == 0:
            labels, output_config = out.get("labels", []), out.get("output_config")
    return {"success": True, "features": feats, "labels": labels, "output_config": output_config,
            "state": body.get("state") or None}


def _reject_constant(token: str) -> float:
    raise RequestError(f"request body contains {token}, which is not a valid sample value")


def parse_body(raw: bytes) -> dict[str, Any]:
    """Request body → JSON object. Raises RequestError (not UTF-8, not JSON, NaN/Infinity,
    nested too deeply, not an object)."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, a number of more than 4300 digits
        raise RequestError(f"request body is not valid JSON ({str(e).split(';')[0]})") from None
    except RecursionError:
        raise RequestError("request body is nested too deeply to be a DSP request") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return body


class Handler(BaseHTTPRequestHandler):
    """Request handler; see the module docstring for the endpoints."""

    server_version = "cryblock-dsp/1"
    quiet = True
    limits = Limits()
    timeout = limits.timeout_s  # StreamRequestHandler: socket timeout for reads and writes

    def _send(self, code: int, payload: bytes, ctype: str, close: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, obj: Any, code: int = 200, close: bool = False) -> None:
        self._send(code, json.dumps(obj, allow_nan=False).encode("utf-8"), "application/json", close)

    def _not_found(self) -> None:
        self._send(404, f"Invalid path {self.path}\n".encode("utf-8", "replace"), "text/plain")

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = urlparse(self.path).path
        if path == "/":
            info = load_parameters_json()["info"]
            self._send(200, f"Edge Impulse DSP block: {info['title']} by {info['author']}".encode("utf-8"),
                       "text/plain")
        elif path == "/parameters":
            p = load_parameters_json()
            p["version"] = 1
            self._json(p)
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        path = urlparse(self.path).path
        handlers = {"/run": handle_run, "/batch": handle_batch}
        if path not in handlers:
            self._not_found()
            return
        lim = self.limits
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._json({"success": False, "error": "bad Content-Length header"}, close=True)
            return
        if length > lim.max_body_bytes:  # answered without reading the body
            self._json({"success": False, "error": f"request body of {length} bytes exceeds the limit of "
                                                   f"{lim.max_body_bytes} bytes"}, code=413, close=True)
            return
        if length <= 0:
            self._json({"success": False, "error": "empty request body (expected JSON)"})
            return
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ConnectionResetError(f"client sent {len(raw)} of {length} body bytes")
        with self.server.compute:  # bounded: JSON parsing and the DSP hold most of the memory
            try:
                result = handlers[path](parse_body(raw), lim)
                payload = json.dumps(result, allow_nan=False).encode("utf-8")
            except CryblockError as e:
                payload = json.dumps({"success": False, "error": str(e)}).encode("utf-8")
            except Exception as e:  # never let a bad request kill the worker thread silently
                payload = json.dumps({"success": False, "error": f"internal error: {type(e).__name__}: {e}"}).encode()
            del raw
        self._send(200, payload, "application/json")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if not self.quiet:
            sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))


class BlockServer(ThreadingHTTPServer):
    """:class:`ThreadingHTTPServer` with bounded connections and compute (see :class:`Limits`)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[Handler], limits: Limits = Limits()) -> None:
        self.request_queue_size = limits.backlog  # listen() backlog, read by server_activate
        super().__init__(address, handler)
        self.limits = limits
        self.compute = threading.BoundedSemaphore(limits.workers)
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._closing = threading.Event()

    def process_request(self, request, client_address) -> None:
        # Wait for a free connection slot; meanwhile new connections queue in the kernel backlog.
        while not self._slots.acquire(timeout=0.2):
            if self._closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """One line per failed connection; a client that went away or timed out is not a server error."""
        exc = sys.exc_info()[1]
        host = client_address[0] if client_address else "?"
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            if not self.RequestHandlerClass.quiet:
                sys.stderr.write(f"{host} - connection dropped ({type(exc).__name__}: {exc})\n")
        else:
            sys.stderr.write(f"{host} - request failed ({type(exc).__name__}: {exc})\n")

    def shutdown(self) -> None:
        self._closing.set()
        super().shutdown()


def make_server(host: str = "0.0.0.0", port: int = DEFAULT_PORT, quiet: bool = True,
                limits: Limits = Limits()) -> BlockServer:
    """Bind a :class:`BlockServer` (``port=0`` picks a free port; read it from
    ``server.server_address``). Call ``serve_forever()`` / ``shutdown()`` yourself.

    Raises:
        CryblockError: the address cannot be bound (port in use, bad host).
    """
    handler = type("BoundHandler", (Handler,), {"quiet": quiet, "limits": limits, "timeout": limits.timeout_s})
    try:
        return BlockServer((host, int(port)), handler, limits)
    except OSError as e:
        raise CryblockError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def serve_in_thread(host: str = "127.0.0.1", port: int = 0,
                    limits: Limits = Limits()) -> tuple[BlockServer, threading.Thread]:
    """Start a server in a daemon thread (for tests/notebooks); returns (server, thread)."""
    srv = make_server(host, port, limits=limits)
    t = threading.Thread(target=srv.serve_forever, name="cryblock-dsp-server", daemon=True)
    t.start()
    return srv, t


def serve(host: str = "0.0.0.0", port: int = DEFAULT_PORT, quiet: bool = False, limits: Limits = Limits()) -> None:
    """Serve until interrupted (Ctrl-C)."""
    srv = make_server(host, port, quiet=quiet, limits=limits)
    h, p = srv.server_address[:2]
    print(f"cryblock DSP block listening on http://{h}:{p}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
