"""The Ray executor (the ``[ray]`` extra): per-sample work as plain Ray tasks on a cluster or a local Ray.

Two kinds of input, both giving exactly what the local executor gives (see ``curate.executors.tagged``):

- Batches from the blob packs (``BlobStore.iter_packs``: dedupe, normalize, augment, quality). The driver reads
  only the ``sample_id`` column of the packs and sends one small descriptor per batch; each worker reads its
  batch's image bytes from the pack file itself, so pixels never pass through the driver. Every node must
  therefore see the workspace at the same path (README, "Scaling out").
- Any other iterator of in-memory tables (ingest's items: file paths, or the bytes of idx files and archives).
  They are read in windows of batches, bounded in count and bytes, so memory stays bounded however large the
  input; the iterator cannot be handed to the cluster, because it lives in the driver.

Several batches share one task (a block, its rows tagged with their batch number), at most a few tasks per CPU
are pending, and results come back in submission order. Global decisions (grouping duplicates, splits,
thresholds) stay in the stage, in the driver, over small columns. Ray is imported here only, so ``curate --help``
and the local executor never pay for it.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from curate.blobs import PackBatches
from curate.errors import CurateError
from curate.executors import RAY_HINT, Setting
from curate.executors.tagged import TAG, ActorShell, is_failure, raise_failure, regroup, run_inline, run_slices

#: A window of in-memory batches closes at this many batches or bytes, whichever comes first.
WINDOW_BATCHES, WINDOW_BYTES = 256, 256 << 20
#: Most batches per Ray task: fewer tasks cost less scheduling, more keep every CPU busy to the end.
MAX_BATCHES_PER_TASK = 8
#: Ray tasks pending per CPU of the cluster: enough that a worker never waits for the driver to collect results
#: in order, few enough that memory stays bounded (each pending task holds one block and its result).
INFLIGHT_PER_CPU = 2


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise CurateError("the ray executor needs Ray, which is not installed", hint=RAY_HINT) from exc
    return ray


def start(setting: Setting) -> Any:
    """Join ``setting.address`` or start a local Ray (once per process); returns ``ray``.

    Raises:
        CurateError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = _import_ray()
    if not ray.is_initialized():
        address = setting.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "ignore_reinit_error": True,
            "logging_level": logging.ERROR,
        }
        if address:
            # Ship this curate to the cluster: the workers then run the driver's code, whatever the nodes have.
            kwargs.update(address=address, runtime_env={"py_modules": [os.path.dirname(os.path.dirname(__file__))]})
        else:
            from curate.executors.local import default_workers

            # "local", not None: None would join whatever cluster /tmp/ray/ray_current_cluster names (a stale
            # one after a crashed `ray start`), and no address must mean this machine only.
            # Ray starts its workers at the raylet's niceness + 15 so that its own daemons win the CPU; then any
            # other job on the machine wins it too. A local Ray is there only for this command: worker_niceness 0
            # (an increment over the raylet, which inherits this process's niceness) runs the workers at curate's
            # own priority, as the local executor's pool.
            # Ray's usage statistics would be sent home from this machine (and time out offline: ~1 s of the start);
            # a user who wants them sets the variable.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs.update(
                address="local", num_cpus=setting.workers or default_workers(), _system_config={"worker_niceness": 0}
            )
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise CurateError(
                f"cannot {'join the Ray cluster at ' + address if address else 'start a local Ray'}: {_first_line(exc)}",
                hint="start one with `ray start --head` and pass its address (--address HOST:PORT or auto); a cluster with "
                "token authentication (the default of `ray start` since Ray 2.59) also needs RAY_AUTH_MODE=token here",
            ) from exc
    return ray


def _first_line(exc: BaseException, *, last: bool = False) -> str:
    """One line of ``exc``'s message; ``last`` for Ray task errors, whose first line only names the task."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(exc).__name__


def _translate(results: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Ray's own failures (a lost node, an out-of-memory kill) as one CurateError line; stage errors pass as they are."""
    from ray.exceptions import RayError

    try:
        yield from results
    except RayError as exc:
        raise CurateError(
            f"the Ray executor failed: {_first_line(exc, last=True)}",
            hint="the Ray logs are under /tmp/ray/session_latest/logs on each node; --debug shows the traceback",
        ) from exc


def _cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def map_batches(
    fn: Callable[[pa.Table, Any], pa.Table], batches: Iterable[pa.Table], cfg: Any, *, setting: Setting
) -> Iterator[pa.Table]:
    """``curate.executors.map_batches`` on Ray: one result table per input batch, in input order.

    Ray starts (or is joined) here, before the first batch, so a missing extra or an unreachable cluster fails
    before any work. The stage's ``workers`` does not apply: the cluster's CPUs decide.
    """
    ray = start(setting)
    if isinstance(batches, PackBatches):
        return _translate(_over_packs(ray, fn, batches, cfg))
    return _translate(_over_windows(ray, fn, batches, cfg))


def _per_task(n: int, ray: Any) -> int:
    """Batches per Ray task: a task costs a few ms of scheduling, so several small batches share one, while at
    least four tasks per CPU keep every CPU busy to the end."""
    return max(1, min(MAX_BATCHES_PER_TASK, n // (4 * _cpus(ray))))


def _call(block: pa.Table, packed: tuple[Callable[..., pa.Table], Callable[[pa.Table, Any], pa.Table], Any]) -> pa.Table:
    """What a Ray task runs: ``runner(block, fn, cfg)`` (``run_inline`` or ``run_slices``)."""
    runner, fn, cfg = packed
    return runner(block, fn, cfg)


class _Tasks:
    """Plain Ray tasks, one per block, results in submission order, at most ``INFLIGHT_PER_CPU`` per CPU pending.

    Plain tasks rather than a Ray Data pipeline: on one 2-CPU machine Ray Data's streaming scheduler in the driver
    took CPU from the workers and its per-execution start (~0.5 s) was paid per window of in-memory batches
    (BENCHMARKS, "Scale: local vs Ray"). The function and the stage config go to the object store once.
    """

    def __init__(self, ray: Any, runner: Callable[..., pa.Table], fn: Callable[[pa.Table, Any], pa.Table], cfg: Any) -> None:
        self.ray = ray
        # SPREAD, as Ray Data does: Ray's default policy packs tasks onto the driver's node until it is busy,
        # which leaves the other nodes of a cluster idle while the pending tasks are few.
        self.task = ray.remote(_call).options(num_cpus=1, scheduling_strategy="SPREAD")
        self.packed = ray.put((runner, fn, cfg))
        self.limit = INFLIGHT_PER_CPU * _cpus(ray)

    def map(self, blocks: Iterable[pa.Table]) -> Iterator[pa.Table]:
        pending: deque[Any] = deque()
        for block in blocks:
            pending.append(self.task.remote(block, self.packed))
            if len(pending) >= self.limit:
                yield self.ray.get(pending.popleft())
        while pending:
            yield self.ray.get(pending.popleft())


def _pack_blocks(tagged: list[pa.Table], per: int) -> list[pa.Table]:
    """Concatenate runs of ``per`` tagged batches into one block each (one task each); the tags keep them apart."""
    blocks = []
    for i in range(0, len(tagged), per):
        group = tagged[i : i + per]
        try:
            blocks.append(pa.concat_tables(group) if len(group) > 1 else group[0])
        except pa.ArrowInvalid:  # batches of different schemas cannot share a block
            blocks.extend(group)
    return blocks


def _over_packs(ray: Any, fn: Callable[[pa.Table, Any], pa.Table], batches: PackBatches, cfg: Any) -> Iterator[pa.Table]:
    slices = batches.slices()
    n = slices.num_rows
    if n == 0:
        return
    slices = slices.append_column(TAG, pa.array(np.arange(n, dtype=np.int64)))
    per = _per_task(n, ray)
    blocks = (slices.slice(i, per) for i in range(0, n, per))
    yield from regroup(_Tasks(ray, run_slices, fn, cfg).map(blocks), n)


def _windows(batches: Iterable[pa.Table]) -> Iterator[list[pa.Table]]:
    window: list[pa.Table] = []
    size = 0
    for batch in batches:
        window.append(batch)
        size += batch.nbytes
        if len(window) >= WINDOW_BATCHES or size >= WINDOW_BYTES:
            yield window
            window, size = [], 0
    if window:
        yield window


def _over_windows(ray: Any, fn: Callable[[pa.Table, Any], pa.Table], batches: Iterable[pa.Table], cfg: Any) -> Iterator[pa.Table]:
    first = 0
    tasks = _Tasks(ray, run_inline, fn, cfg)
    for window in _windows(batches):
        tagged: list[pa.Table] = []
        done: dict[int, pa.Table] = {}
        for k, batch in enumerate(window, start=first):
            if batch.num_rows:
                tagged.append(batch.append_column(TAG, pa.array(np.full(batch.num_rows, k, np.int64))))
            else:  # an empty batch has no row to carry its tag; it holds no pixels either, so run it here
                done[k] = fn(batch, cfg)
        blocks = tasks.map(_pack_blocks(tagged, _per_task(len(tagged), ray))) if tagged else iter(())
        yield from regroup(blocks, len(window), done, first=first)
        first += len(window)


def map_batches_actor(
    cls: Callable[[Any], Callable[[pa.Table], pa.Table]],
    batches: Iterable[pa.Table],
    cfg: Any,
    *,
    setting: Setting,
    workers: int | None = 1,
    num_gpus: float | None = None,
) -> Iterator[pa.Table]:
    """``curate.executors.map_batches_actor`` on Ray: ``workers`` actors each build ``cls(cfg)`` once (a model
    loads once per actor, on a GPU when the cluster has them) and take batches round robin, results in order.

    Plain Ray actors rather than a Ray Data actor pool: they live for the whole call whatever the input (a Ray
    Data pool would be rebuilt, and the model reloaded, for every window of in-memory batches), and at most two
    batches per actor are in flight, so memory stays bounded.
    """
    ray = start(setting)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per_gpu = (1.0 if gpus >= 1 else 0.0) if num_gpus is None else float(num_gpus)
    # Never ask for more actors than the cluster can place: round robin would wait forever on an unplaced one.
    room = int(gpus // per_gpu) if per_gpu else _cpus(ray)
    n = max(1, room if workers is None else min(workers, room))
    shell = ray.remote(ActorShell).options(num_cpus=1, num_gpus=per_gpu)
    return _translate(_run_actors(ray, [shell.remote(cls, cfg) for _ in range(n)], batches))


def _run_actors(ray: Any, actors: list[Any], batches: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Batches round robin over ``actors``, at most two per actor in flight; blob-pack batches (``PackBatches``)
    go as one-row descriptions that the actor reads from the pack itself, so their bytes skip the driver."""
    if isinstance(batches, PackBatches):
        slices = batches.slices()
        inputs: Iterable[pa.Table] = (slices.slice(i, 1) for i in range(slices.num_rows))
        method = "call_slice"
    else:
        inputs, method = batches, "call"
    pending: deque[Any] = deque()

    def take() -> pa.Table:
        out = ray.get(pending.popleft())
        if is_failure(out):
            raise_failure(out)
        return out

    try:
        for i, batch in enumerate(inputs):
            pending.append(getattr(actors[i % len(actors)], method).remote(batch))
            if len(pending) >= 2 * len(actors):
                yield take()
        while pending:
            yield take()
    finally:
        for actor in actors:
            ray.kill(actor)
