"""The default executor: in-process with one worker, a process pool with more.

Measured on this 2-core machine (ARCHITECTURE.md section 9): a process pool beats Dask and Ray for local work
and starts in milliseconds, so it is the default; Ray is the extra for clusters.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import pyarrow as pa

#: Bytes of input batches a process pool has in flight at most (beyond one batch per worker).
INFLIGHT_BYTES = 64 << 20
#: A batch at least this large runs in this process: shipping it costs a pickled copy each way (six 60 MB archive
#: members peaked at 595 MB with two workers, 481 MB with one).
LOCAL_BYTES = 32 << 20


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when the process that started it dies, ``kill -9`` included.

    A killed parent runs no cleanup, and its workers wait on a queue whose write end they hold themselves:
    they would live on under PID 1 forever. On Linux the kernel sends SIGKILL when the parent goes
    (``PR_SET_PDEATHSIG``; the forking thread is the one running ``map_batches``, which outlives the pool);
    elsewhere, or if prctl fails, a thread polls the parent pid once a second.
    """
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # it died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="curate-parent-watch", daemon=True).start()


def map_batches(
    fn: Callable[[pa.Table, Any], pa.Table],
    batches: Iterable[pa.Table],
    cfg: Any,
    *,
    workers: int = 1,
    prefetch: int = 2,
    max_inflight_bytes: int = INFLIGHT_BYTES,
) -> Iterator[pa.Table]:
    """Apply ``fn(batch, cfg)`` to each batch and yield the results in input order.

    Args:
        fn: a pure, picklable top-level function.
        batches: the input batches (consumed lazily).
        cfg: the stage config passed to every call (picklable).
        workers: 1 runs in this process; N > 1 uses a pool of N processes.
        prefetch: batches in flight per worker; bounds memory regardless of dataset size.
        max_inflight_bytes: and at most this many bytes of input batches in flight beyond one per worker:
            batches carrying large images must not multiply memory by ``workers * prefetch``.
    """
    if workers <= 1:
        for batch in batches:
            out = fn(batch, cfg)
            del batch  # not kept while the consumer works on the result (batches can carry large images)
            yield out
            del out
        return
    import multiprocessing as mp

    # fork is the cheap start on Linux; spawn elsewhere (macOS, where fork is unsafe with threads).
    ctx = mp.get_context("fork" if os.name == "posix" and hasattr(os, "fork") and os.uname().sysname == "Linux" else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        # Start the workers before the first batch is pulled: pulling may start threads in this process (ingest's
        # URL fetch loop), and a fork taken while another thread holds a lock leaves that lock held in the child.
        # With the fork context, the first submit launches every worker at once.
        pool.submit(os.getpid).result()
        pending: deque[tuple[Future[pa.Table], int]] = deque()
        inflight = 0
        try:
            for batch in batches:
                size = batch.nbytes
                if size >= LOCAL_BYTES:
                    # A batch this large (one big archive member) costs more to pickle to a worker and back than to
                    # process here, and each copy in flight adds to the peak: drain the queue (order), run it here.
                    while pending:
                        yield pending.popleft()[0].result()
                    inflight = 0
                    out = fn(batch, cfg)
                    del batch
                    yield out
                    del out
                    continue
                # Every worker keeps one batch to work on; beyond that, the byte budget decides.
                while len(pending) >= workers * prefetch or (len(pending) >= workers and inflight + size > max_inflight_bytes):
                    fut, done_size = pending.popleft()
                    inflight -= done_size
                    yield fut.result()
                pending.append((pool.submit(fn, batch, cfg), size))
                inflight += size
            while pending:
                yield pending.popleft()[0].result()
        except BaseException:
            for fut, _ in pending:
                fut.cancel()
            raise
