"""Executors run a stage's per-sample function over batches; they know nothing about what it does.

Stages call ``map_batches(fn, batches, cfg, workers=N)``; which executor runs it is a process-wide setting:
``configure(...)`` (the CLI's ``--executor`` / ``--address``, ``curate run``), else the environment
(``CURATE_EXECUTOR``, ``CURATE_RAY_ADDRESS``, so subprocesses and tests can select it), else ``local``.
Ray is imported only inside ``curate.executors.ray``: selecting it costs nothing until work is submitted, and
``curate --help`` never imports it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from curate.errors import CurateError, UsageError
from curate.executors.local import map_batches as _local_map_batches

EXECUTORS = ("local", "ray")
ENV_EXECUTOR = "CURATE_EXECUTOR"
ENV_ADDRESS = "CURATE_RAY_ADDRESS"
RAY_HINT = "install the [ray] extra: pip install 'curate[ray]'"

__all__ = ["EXECUTORS", "Setting", "configure", "current", "map_batches", "map_batches_actor", "reset"]


@dataclass(frozen=True)
class Setting:
    """The selected executor.

    Attributes:
        name: ``local`` or ``ray``.
        address: the Ray cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None starts a local Ray.
        workers: CPUs of a local Ray (None: one per core); ignored when joining a cluster, whose nodes decide.
    """

    name: str = "local"
    address: str | None = None
    workers: int | None = None


_configured: Setting | None = None


def _check(setting: Setting) -> Setting:
    if setting.name not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, not {setting.name!r}")
    if setting.name == "local" and setting.address:
        raise UsageError("--address only applies to --executor ray")
    if setting.workers is not None and setting.workers < 1:
        raise UsageError(f"workers must be at least 1, not {setting.workers}")
    if setting.name == "ray" and importlib.util.find_spec("ray") is None:
        raise CurateError("the ray executor needs Ray, which is not installed", hint=RAY_HINT)
    return setting


def configure(name: str = "local", *, address: str | None = None, workers: int | None = None) -> None:
    """Select the executor for every later ``map_batches`` call in this process.

    Args:
        name: ``local`` (in-process or a process pool; the default) or ``ray``.
        address: Ray only: the cluster to join; None starts a local Ray on this machine.
        workers: Ray only: CPUs of that local Ray (None: one per core).

    Raises:
        UsageError: an unknown executor or contradicting options; CurateError: ``ray`` without Ray installed.
    """
    global _configured
    _configured = _check(Setting(name.strip().lower(), address or None, workers))


def reset() -> None:
    """Forget ``configure``: the environment (or ``local``) decides again."""
    global _configured
    _configured = None


def current() -> Setting:
    """The setting in force: ``configure``'s, else the environment's, else ``local``.

    A ``CURATE_RAY_ADDRESS`` without ``CURATE_EXECUTOR`` selects Ray: naming a cluster means using it.
    """
    if _configured is not None:
        return _configured
    address = os.environ.get(ENV_ADDRESS) or None
    name = (os.environ.get(ENV_EXECUTOR) or ("ray" if address else "local")).strip().lower()
    return _check(Setting(name, address if name == "ray" else None))


def map_batches(
    fn: Callable[[pa.Table, Any], pa.Table], batches: Iterable[pa.Table], cfg: Any, *, workers: int = 1, prefetch: int = 2
) -> Iterator[pa.Table]:
    """Apply ``fn(batch, cfg)`` to each batch with the selected executor; results come back in input order.

    Args:
        fn: a pure, picklable top-level function, per-row: the result must not depend on where batches split.
        batches: the input batches, consumed lazily (``BlobStore.iter_packs`` batches are read on the Ray workers).
        cfg: the stage config passed to every call (picklable).
        workers: local executor: 1 runs in this process, N > 1 a pool of N processes. Ray uses the cluster's CPUs.
        prefetch: local executor: batches in flight per worker.

    Raises:
        Whatever ``fn`` raised, as the same type and message, whichever executor ran it.
    """
    setting = current()
    if setting.name == "ray":
        from curate.executors import ray as ray_executor

        return ray_executor.map_batches(fn, batches, cfg, setting=setting)
    return _local_map_batches(fn, batches, cfg, workers=workers, prefetch=prefetch)


def map_batches_actor(
    cls: Callable[[Any], Callable[[pa.Table], pa.Table]],
    batches: Iterable[pa.Table],
    cfg: Any,
    *,
    workers: int | None = 1,
    num_gpus: float | None = None,
) -> Iterator[pa.Table]:
    """Like ``map_batches`` for work that loads something once (a model): ``cls(cfg)`` is built once per worker
    and called on each batch, results in input order.

    Args:
        cls: a picklable top-level class; ``cls(cfg)`` loads, ``instance(batch)`` returns the result table.
        workers: instances (Ray actors) running at once, at most what the cluster can place; None: that many
            (one per GPU on a cluster with GPUs, else one per CPU). The local executor uses one instance in this
            process whatever ``workers`` says (``cfg`` is then not pickled: what it holds is used as it is).
        num_gpus: Ray only: GPUs per actor; None gives each actor one GPU when the cluster has any, else none.
    """
    setting = current()
    if setting.name == "ray":
        from curate.executors import ray as ray_executor

        return ray_executor.map_batches_actor(cls, batches, cfg, setting=setting, workers=workers, num_gpus=num_gpus)
    return _local_actor(cls, batches, cfg)


def _local_actor(cls: Callable[[Any], Callable[[pa.Table], pa.Table]], batches: Iterable[pa.Table], cfg: Any) -> Iterator[pa.Table]:
    instance = cls(cfg)
    for batch in batches:
        yield instance(batch)
