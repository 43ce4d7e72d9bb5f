"""The default executor: in-process with one worker, a process pool with more.

Measured on this 2-core machine (ARCHITECTURE.md section 9): a process pool beats Dask and Ray for local work
and starts in milliseconds, so it is the default; Ray is the extra for clusters.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import pyarrow as pa


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def map_batches(
    fn: Callable[[pa.Table, Any], pa.Table],
    batches: Iterable[pa.Table],
    cfg: Any,
    *,
    workers: int = 1,
    prefetch: int = 2,
) -> Iterator[pa.Table]:
    """Apply ``fn(batch, cfg)`` to each batch and yield the results in input order.

    Args:
        fn: a pure, picklable top-level function.
        batches: the input batches (consumed lazily).
        cfg: the stage config passed to every call (picklable).
        workers: 1 runs in this process; N > 1 uses a pool of N processes.
        prefetch: batches in flight per worker; bounds memory regardless of dataset size.
    """
    if workers <= 1:
        for batch in batches:
            yield fn(batch, cfg)
        return
    import multiprocessing as mp

    # fork is the cheap start on Linux; spawn elsewhere (macOS, where fork is unsafe with threads).
    ctx = mp.get_context("fork" if os.name == "posix" and hasattr(os, "fork") and os.uname().sysname == "Linux" else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[Future[pa.Table]] = deque()
        it = iter(batches)
        try:
            for batch in it:
                pending.append(pool.submit(fn, batch, cfg))
                if len(pending) >= workers * prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
