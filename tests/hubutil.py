"""Helpers shared by the hub tests: a private Mosquitto, a scratch PostgreSQL database, polling."""
from __future__ import annotations

import os
import time
import uuid

import pytest


def wait_for(cond, timeout: float = 30.0, what: str = "condition"):
    """Poll ``cond()`` until it is truthy (returns it) or fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value {v!r})")
        time.sleep(0.05)


def mosquitto_or_skip():
    """A started :class:`cryblock.blocks.hub.broker.Mosquitto` (skip, with the reason, without one)."""
    from cryblock.blocks.hub.broker import Mosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        print("SKIP: mosquitto is not installed (.ci/run installs Debian's mosquitto)")
        pytest.skip("mosquitto not installed (Debian package mosquitto; .ci/run installs it)")
    return Mosquitto()


PG_ADMIN = os.environ.get("CRYBLOCK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_scratch_database():
    """Create a scratch database on the PostgreSQL server at ``$CRYBLOCK_TEST_PG`` (default the
    local server's ``test`` database as ``postgres``); returns ``(url, drop)``. Skips with the
    reason printed when no server answers."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN.replace("postgresql://", "postgresql://", 1), autocommit=True,
                                connect_timeout=3)
    except Exception as e:  # noqa: BLE001 - any failure to reach the server means: no PostgreSQL here
        print(f"SKIP: no PostgreSQL server at {PG_ADMIN}: {str(e).strip().splitlines()[0]}")
        pytest.skip(f"no PostgreSQL server at {PG_ADMIN}")
    name = f"cryblock_hub_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]

    def drop():
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"{base}/{name}", drop
