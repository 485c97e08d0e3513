"""HTTP server of the Edge Impulse custom processing block: a WSGI application served by waitress.

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
  ``{"success": false, "error": "<one line>"}``. A body over the size limit: HTTP 413 (waitress's
  text/plain page), answered from the headers without reading the body. Unknown path: 404
  text/plain; another method: 405.

Connections are waitress's (:func:`make_server`): one event loop reads requests and writes
replies for every connection, so a slow, idle or non-reading client holds a socket, not a worker;
a request reaches one of ``workers`` threads only once it has fully arrived (bodies beyond 512 KB
wait in a temporary file); a reply the client does not read waits in a temporary file beyond
1 MB; a connection silent for ``timeout_s`` is closed; at most ``max_connections`` are open (more
wait in the listen backlog). The work one request may ask for is bounded before anything is
allocated (:class:`Limits`). A client that disconnects is never a traceback.

Measured on loopback (tests/test_dsp_server.py): 32 clients trickling a request byte by byte do
not delay a real request, 200 idle connections are closed after the timeout and a real request
is served meanwhile, 40 clients that never read a ≈ 5 MB reply grow the server by a few MB (the
stdlib server held them all in memory: +670 MB).

Run with ``cryblock dsp serve [--host 127.0.0.1] [--port 4446]`` (loopback by default; the
Dockerfile passes ``--host 0.0.0.0`` because a container's port mapping reaches only its external
interface) or :func:`serve_in_thread` in tests (port 0 = any free port).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from cryblock.audio import MAX_INPUT_RATE, MIN_INPUT_RATE
from cryblock.errors import CryblockError
from cryblock.params import DspParams

from .ei import dsp_params_from_block, generate_features, load_parameters_json

DEFAULT_PORT = 4446  #: Edge Impulse's DSP block port (example-custom-processing-block-python)
DEFAULT_HOST = "127.0.0.1"  #: loopback: only this machine (a container passes --host 0.0.0.0)

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
        timeout_s: a connection that sends and reads nothing for this long is closed, s
            (waitress's ``channel_timeout``, whole seconds, at least 1).
        max_connections: connections open at once; more wait in the listen backlog.
        workers: requests parsed and computed at once (default: the CPU count).
        backlog: listen backlog (pending connections the kernel keeps).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_patches: int = 512
    timeout_s: float = 30.0
    max_connections: int = 100
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


def _answer(start_response: Callable, code: str, payload: bytes, ctype: str,
            extra: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    start_response(code, [("Content-Type", ctype), ("Content-Length", str(len(payload))), *extra])
    return [payload]


def make_app(limits: Limits = Limits(), quiet: bool = True) -> Callable:
    """The block as a WSGI application (endpoints in the module docstring)."""
    handlers = {"/run": handle_run, "/batch": handle_batch}

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO") or "/"
        code, payload, ctype = "200 OK", b"", "application/json"
        if path in ("/", "/parameters") and method == "GET":
            if path == "/":
                info = load_parameters_json()["info"]
                payload, ctype = f"Edge Impulse DSP block: {info['title']} by {info['author']}".encode(), "text/plain"
            else:
                payload = json.dumps({**load_parameters_json(), "version": 1}).encode()
        elif path in handlers and method == "POST":
            payload = _post(environ, handlers[path], limits)
        elif path in handlers or path in ("/", "/parameters"):
            code, payload, ctype = "405 Method Not Allowed", f"{method} not allowed on {path}\n".encode(), "text/plain"
        else:
            code, ctype = "404 Not Found", "text/plain"
            payload = f"Invalid path {path}\n".encode("utf-8", "replace")
        if not quiet:
            sys.stderr.write(f"{environ.get('REMOTE_ADDR', '?')} - {method} {path} {code.split()[0]}\n")
        return _answer(start_response, code, payload, ctype)

    return app


def _post(environ: dict, handler: Callable, lim: Limits) -> bytes:
    """The JSON reply of ``POST /run`` or ``/batch`` (never raises: errors are ``success: false``)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length <= 0:
        return json.dumps({"success": False, "error": "empty request body (expected JSON)"}).encode()
    if length > lim.max_body_bytes:  # waitress answers 413 first; kept for other WSGI servers
        return json.dumps({"success": False, "error": f"request body of {length} bytes exceeds the limit of "
                                                     f"{lim.max_body_bytes} bytes"}).encode()
    try:
        return json.dumps(handler(parse_body(environ["wsgi.input"].read(length)), lim), allow_nan=False).encode()
    except CryblockError as e:
        return json.dumps({"success": False, "error": str(e)}).encode()
    except Exception as e:  # never let a bad request kill the worker thread silently
        return json.dumps({"success": False, "error": f"internal error: {type(e).__name__}: {e}"}).encode()


class BlockServer:
    """The block on waitress (:func:`make_server`): ``server_address``, ``serve_forever()``,
    ``shutdown()``, ``server_close()``."""

    def __init__(self, server) -> None:
        self._server = server

    @property
    def server_address(self) -> tuple[str, int]:
        return self._server.effective_host, int(self._server.effective_port)

    def serve_forever(self) -> None:
        self._server.run()

    def shutdown(self) -> None:
        self._server.close()

    def server_close(self) -> None:
        self._server.close()


def make_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, quiet: bool = True,
                limits: Limits = Limits()) -> BlockServer:
    """Bind the block's waitress server (``port=0`` picks a free port; read it from
    ``server.server_address``). Call ``serve_forever()`` / ``shutdown()`` yourself.

    waitress settings from ``limits``: ``threads`` = workers, ``channel_timeout`` = timeout_s,
    ``connection_limit`` = max_connections, ``backlog``, ``max_request_body_size`` =
    max_body_bytes; its defaults spool request bodies over 512 KB and unread replies over 1 MB to
    temporary files; ``outbuf_high_watermark`` is raised above the largest reply
    (max_patches × ≈ 120 KB) so a worker never waits for a client that does not read.

    Raises:
        CryblockError: the address cannot be bound (port in use, bad host).
    """
    from waitress.server import create_server

    logging.getLogger("waitress").setLevel(logging.ERROR if quiet else logging.WARNING)
    timeout = max(1, math.ceil(limits.timeout_s))
    try:
        server = create_server(make_app(limits, quiet), host=host, port=int(port), threads=limits.workers,
                               channel_timeout=timeout, cleanup_interval=max(1, min(30, timeout // 2)),
                               connection_limit=limits.max_connections, backlog=limits.backlog,
                               max_request_body_size=limits.max_body_bytes, max_request_header_size=65536,
                               outbuf_high_watermark=max(16 << 20, limits.max_patches * 160_000),
                               asyncore_use_poll=True, ident="cryblock-dsp/1", clear_untrusted_proxy_headers=True)
    except (OSError, ValueError) as e:
        raise CryblockError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None
    return BlockServer(server)


def serve_in_thread(host: str = DEFAULT_HOST, port: int = 0,
                    limits: Limits = Limits()) -> tuple[BlockServer, threading.Thread]:
    """Start a server in a daemon thread (for tests/notebooks); returns (server, thread)."""
    srv = make_server(host, port, limits=limits)
    t = threading.Thread(target=srv.serve_forever, name="cryblock-dsp-server", daemon=True)
    t.start()
    return srv, t


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, quiet: bool = False, limits: Limits = Limits()) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM, SIGHUP)."""
    from cryblock.signals import interruptible

    srv = make_server(host, port, quiet=quiet, limits=limits)
    h, p = srv.server_address
    print(f"cryblock DSP block listening on http://{h}:{p}", file=sys.stderr, flush=True)
    with interruptible():
        try:
            srv.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            srv.server_close()
