"""MQTT connections of the hub (paho-mqtt 2) and a private Mosquitto broker.

:func:`parse_broker` reads ``--broker`` URLs: ``mqtt://[user@]host[:1883]`` or
``mqtts://[user@]host[:8883]`` (TLS; the broker's CA from ``--ca`` or the system's store). The
password comes from ``$CRYBLOCK_MQTT_PASSWORD`` (a password in the URL is accepted too, but
shows in the process list).

:class:`Mosquitto` starts Debian's ``mosquitto`` on a free loopback port with its own config and
persistence folder — for the tests and ``bench/fleet.py``; it is not how a home runs its broker.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryblock.errors import CryblockError

#: Seconds between MQTT keep-alive pings (the broker drops a silent client after 1.5 ×).
KEEPALIVE_S = 30
#: Reconnect back-off of hub clients: first wait and cap, s (paho doubles the wait each try).
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30


@dataclass(frozen=True)
class Broker:
    """Where and how to connect: ``host``, ``port``, ``tls``, optional ``username``/``password``
    and ``ca`` (PEM file of the broker's CA; None = the system store)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca: str | None = None

    @property
    def url(self) -> str:
        """The URL without credentials (for messages)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(url: str, ca: str | os.PathLike | None = None) -> Broker:
    """:class:`Broker` of a ``--broker`` URL. Raises CryblockError naming ``--broker`` / ``--ca``."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise CryblockError(f"--broker: {url!r}: {e}") from None
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname or u.path not in ("", "/") or u.query:
        raise CryblockError(f"--broker: {url!r} is not an MQTT URL (mqtt://HOST[:PORT] or mqtts://HOST[:PORT])")
    tls = u.scheme == "mqtts"
    if ca is not None:
        p = Path(ca)
        if not p.is_file():
            raise CryblockError(f"--ca: {p}: no such file")
        if not tls:
            raise CryblockError("--ca: a CA certificate needs an mqtts:// broker URL")
        try:
            ssl.create_default_context(cafile=str(p))
        except (ssl.SSLError, ValueError, OSError) as e:
            raise CryblockError(f"--ca: {p}: not a PEM CA certificate ({e})") from None
    password = unquote(u.password) if u.password else os.environ.get("CRYBLOCK_MQTT_PASSWORD")
    return Broker(u.hostname, port or (8883 if tls else 1883), tls, unquote(u.username) if u.username else None,
                  password, str(ca) if ca else None)


def make_client(broker: Broker, client_id: str, *, clean_session: bool = True, manual_ack: bool = False):
    """A paho-mqtt 2 client (MQTT 3.1.1, callback API 2) for ``broker``; not yet connected."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                    protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    if broker.username:
        c.username_pw_set(broker.username, broker.password)
    if broker.tls:
        c.tls_set(ca_certs=broker.ca)
    c.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    c.max_queued_messages_set(0)
    return c


def connect(client, broker: Broker, timeout: float = 10.0) -> None:
    """Connect and wait for the broker's CONNACK (the network loop must not be running yet).

    Raises:
        CryblockError: ``--broker: cannot connect to <url>: <why>`` (refused, unknown host,
            timeout, TLS failure, bad credentials).
    """
    result: dict = {}
    prev = client.on_connect

    def on_connect(c, userdata, flags, reason, props):
        result["reason"] = reason
        if prev:
            prev(c, userdata, flags, reason, props)

    client.on_connect = on_connect
    try:
        client.connect(broker.host, broker.port, keepalive=KEEPALIVE_S)
        end = time.monotonic() + timeout
        while "reason" not in result and time.monotonic() < end:
            client.loop(timeout=0.2)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise CryblockError(f"--broker: cannot connect to {broker.url}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        client.on_connect = prev
    if "reason" not in result:
        client.disconnect()
        raise CryblockError(f"--broker: {broker.url}: no answer to CONNECT within {timeout:g} s")
    if result["reason"].is_failure:
        raise CryblockError(f"--broker: {broker.url} refused the connection: {result['reason']}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str | None:
    """Debian's mosquitto (``/usr/sbin`` is not on every PATH), or None."""
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


class Mosquitto:
    """A private Mosquitto on ``127.0.0.1:<free port>`` with persistence in a temporary folder.

    ``max_queued_messages`` is unlimited and ``max_inflight_messages`` 100 (a collector that is
    down or slow must not lose queued QoS-1 alerts; Mosquitto's defaults drop beyond 1,000).
    ``message_size_limit`` is left at Mosquitto's default (256 MB): the hub must cope with big
    payloads itself. Use as a context manager; :meth:`restart` stops it (SIGTERM: the persistence
    file is written) and starts it again on the same port.
    """

    def __init__(self, port: int | None = None, extra_conf: str = "") -> None:
        exe = mosquitto_binary()
        if exe is None:
            raise CryblockError("mosquitto not found (Debian package mosquitto)")
        self.exe = exe
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cryblock-mosquitto-"))
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {self.dir}/\nmax_queued_messages 0\n"
                             f"max_inflight_messages 100\nlog_dest file {self.dir}/mosquitto.log\n{extra_conf}")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise CryblockError(f"mosquitto exited with status {self.proc.returncode}; see {self.dir}/mosquitto.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise CryblockError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
