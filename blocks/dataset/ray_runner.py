"""``cryblock prepare --runner ray``: the shard jobs of :mod:`.prepare` on a Ray cluster.

Install with ``pip install 'cryblock[ray]'`` (Ray Data). Each phase is one Ray Data pipeline
over the phase's jobs (one job per block, handed over as JSON):

* features: ``map_batches`` of :func:`~.prepare.make_patch_shard` as tasks, one CPU each;
* teacher: ``map_batches`` of an actor class that loads the teacher once per actor
  (``ActorPoolStrategy``), one GPU per actor when the cluster has GPUs, else one CPU.

Workers write their shard files themselves (staging name, then rename), so the dataset folder
and the audio must be at the same path on every node (a shared file system); only the small
job and result records travel through Ray. Ray Data retries tasks and restarts actors whose
worker died (``max_retries``/``max_restarts`` −1), and a retried job writes the same bytes, so a
killed worker loses and duplicates nothing. Teacher outputs on a GPU differ from CPU ones in
the last bits, so shards equal the local runner's byte for byte on CPU clusters.

Without an address (``--ray-address`` or ``$RAY_ADDRESS``) a private local Ray instance is
started for the run and stopped after it (``workers`` CPUs, no dashboard, Ray's token
authentication). Attaching to a cluster started with ``ray start --head`` (token authentication
by default in Ray 2.60, the version tested) needs ``RAY_AUTH_MODE=token`` and the cluster's token, as Ray's own
clients do.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from typing import Callable, Sequence

import numpy as np

from cryblock.errors import CryblockError, one_line

from . import prepare as P

#: Object store of a private local instance: only job/result records pass through it.
LOCAL_OBJECT_STORE_BYTES = 128 << 20
#: Seconds to wait for a cluster address to accept a connection.
CONNECT_TIMEOUT_S = 5.0


def _features_batch(batch: dict) -> dict:
    return {"result": np.array([json.dumps(P.make_patch_shard(json.loads(j))) for j in batch["job"]])}


class _TeacherActor:
    """Ray Data actor: the teacher stays loaded between shards (``prepare._worker_teacher``)."""

    def __call__(self, batch: dict) -> dict:
        return {"result": np.array([json.dumps(P.make_teacher_shard(json.loads(j))) for j in batch["job"]])}


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` / ``ray://host:port``; None for ``auto``/``local``."""
    a = address.split("://", 1)[-1]
    if a in ("auto", "local") or ":" not in a:
        return None
    host, _, port = a.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise CryblockError(f"--ray-address {address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379)") from None


def _cause(e: BaseException) -> BaseException:
    """The user-facing error inside Ray's wrappers (RayTaskError, UserCodeException)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, CryblockError):
            return e
        inner = getattr(e, "cause", None)
        e = inner if isinstance(inner, BaseException) else (e.__cause__ or e.__context__)
    return None


class RayRunner:
    """Runs :mod:`.prepare`'s shard jobs with Ray Data (see the module docstring).

    Args:
        address: a cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``); None →
            ``$RAY_ADDRESS``, else a private local instance.
        workers: parallel jobs (default: the cluster's CPUs); the local instance gets this
            many CPUs.

    Raises:
        CryblockError: Ray not installed; the address does not answer or is not a Ray cluster.
    """

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        # Ray Data's INFO lines go to the terminal otherwise; the run's progress and errors are
        # cryblock's own lines (set RAY_DATA_LOG_LEVEL to see Ray's)
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
        try:
            import ray
        except ImportError:
            raise CryblockError("--runner ray needs Ray: pip install 'cryblock[ray]'") from None
        self._ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.address = address
        hp = _host_port(address) if address else None
        if hp is not None:
            try:
                socket.create_connection(hp, timeout=CONNECT_TIMEOUT_S).close()
            except OSError as e:
                raise CryblockError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}); "
                                    "start one with `ray start --head` or unset RAY_ADDRESS") from None
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        if address is None:
            # a private instance on loopback: nothing outside this machine needs to reach it
            kw.update(num_cpus=int(workers or os.cpu_count() or 1), object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                      _node_ip_address="127.0.0.1")
        try:
            ray.init(address=address or "local", **kw)
        except Exception as e:  # ConnectionError, RuntimeError, version mismatch …
            hint = ""
            if address and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                # Ray (2.60 tested) starts clusters with token authentication but never sends the
                # token to an explicit address unless told so
                hint = ("; a cluster started with token authentication (Ray's default) needs RAY_AUTH_MODE=token "
                        "and its token (~/.ray/auth_token or $RAY_AUTH_TOKEN)")
            raise CryblockError(f"--ray-address {address}: cannot attach to a Ray cluster "
                                f"({one_line(e)[:200]}){hint}") from None
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        res = ray.cluster_resources()
        self.cpus, self.gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        self.workers = max(1, int(workers or self.cpus))

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else "local instance"
        return f"ray {where}: {self.cpus} CPU(s), {self.gpus} GPU(s), {self.workers} worker(s)"

    def _run(self, jobs: Sequence[dict], done: Callable[[dict], None], stage) -> None:
        if not jobs:
            return
        import ray.data

        ds = ray.data.from_items([{"job": json.dumps(j)} for j in jobs], override_num_blocks=len(jobs))
        try:
            for row in stage(ds).iter_rows():
                done(json.loads(row["result"]))
        except CryblockError:
            raise
        except Exception as e:
            inner = _cause(e)
            if inner is not None:
                raise inner from None
            raise

    def features(self, jobs, done) -> None:
        import ray.data

        self._run(jobs, done, lambda ds: ds.map_batches(
            _features_batch, batch_size=1, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=self.workers)))

    def teacher(self, jobs, done) -> None:
        import ray.data

        if self.gpus:
            size, res = min(self.gpus, len(jobs)), {"num_gpus": 1}
        else:
            size, res = min(self.workers, len(jobs)), {"num_cpus": 1}
        self._run(jobs, done, lambda ds: ds.map_batches(_TeacherActor, batch_size=1,
                                                        compute=ray.data.ActorPoolStrategy(size=size), **res))

    def close(self) -> None:
        self._ray.shutdown()
