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
* Errors (bad JSON, missing field, bad samples or parameters): HTTP 200
  ``{"success": false, "error": "<one line>"}``. Unknown path: 404 text/plain.

Run with ``cryblock dsp serve --host 0.0.0.0 --port 4446`` (default port 4446 as Edge Impulse
expects) or :func:`make_server` in tests (port 0 = any free port).
"""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import numpy as np

from cryblock.errors import CryblockError

from .ei import generate_features, load_parameters_json

DEFAULT_PORT = 4446  #: Edge Impulse's DSP block port (example-custom-processing-block-python)
MAX_BODY_BYTES = 512 * 1024 * 1024  #: refuse larger requests


class RequestError(CryblockError):
    """A malformed request (bad JSON, missing or mistyped field)."""


def _require(body: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in body or body[n] is None]
    if missing:
        raise RequestError(f"missing field(s) {missing} in request body")


def _call_args(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("params")
    if not isinstance(params, dict):
        raise RequestError(f"'params' must be a JSON object, got {type(params).__name__}")
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


def handle_run(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /run``: one window → generate_features' dict (features as a list)."""
    _require(body, "features", "params", "sampling_freq", "draw_graphs")
    raw = _check_samples(body["features"], "features")
    out = generate_features(draw_graphs=bool(body["draw_graphs"]), raw_data=raw, **_call_args(body))
    out["features"] = np.asarray(out["features"]).tolist()
    out["success"] = True
    return out


def handle_batch(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /batch``: many windows (no graphs) → ``{success, features, labels, output_config, state}``."""
    _require(body, "features", "params", "sampling_freq")
    examples = body["features"]
    if not isinstance(examples, list) or not examples:
        raise RequestError("'features' must be a non-empty list of examples (lists of numbers)")
    base = _call_args(body)
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


class Handler(BaseHTTPRequestHandler):
    """Request handler; see the module docstring for the endpoints."""

    server_version = "cryblock-dsp/1"
    quiet = True

    def _send(self, code: int, payload: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, obj: Any) -> None:
        self._send(200, json.dumps(obj, allow_nan=False).encode("utf-8"), "application/json")

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
        try:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise RequestError("bad Content-Length header") from None
            if length <= 0:
                raise RequestError("empty request body (expected JSON)")
            if length > MAX_BODY_BYTES:
                raise RequestError(f"request body of {length} bytes exceeds {MAX_BODY_BYTES}")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise RequestError(f"request body is not valid JSON ({e})") from None
            if not isinstance(body, dict):
                raise RequestError("request body must be a JSON object")
            result = handlers[path](body)
        except CryblockError as e:
            self._json({"success": False, "error": str(e)})
            return
        except Exception as e:  # never let a bad request kill the worker thread silently
            self._json({"success": False, "error": f"internal error: {type(e).__name__}: {e}"})
            return
        self._json(result)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if not self.quiet:
            sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))


def make_server(host: str = "0.0.0.0", port: int = DEFAULT_PORT, quiet: bool = True) -> ThreadingHTTPServer:
    """Bind a :class:`ThreadingHTTPServer` (``port=0`` picks a free port; read it from
    ``server.server_address``). Call ``serve_forever()`` / ``shutdown()`` yourself.

    Raises:
        CryblockError: the address cannot be bound (port in use, bad host).
    """
    handler = type("BoundHandler", (Handler,), {"quiet": quiet})
    try:
        srv = ThreadingHTTPServer((host, int(port)), handler)
    except OSError as e:
        raise CryblockError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    srv.daemon_threads = True
    return srv


def serve_in_thread(host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start a server in a daemon thread (for tests/notebooks); returns (server, thread)."""
    srv = make_server(host, port)
    t = threading.Thread(target=srv.serve_forever, name="cryblock-dsp-server", daemon=True)
    t.start()
    return srv, t


def serve(host: str = "0.0.0.0", port: int = DEFAULT_PORT, quiet: bool = False) -> None:
    """Serve until interrupted (Ctrl-C)."""
    srv = make_server(host, port, quiet=quiet)
    h, p = srv.server_address[:2]
    print(f"cryblock DSP block listening on http://{h}:{p}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()

