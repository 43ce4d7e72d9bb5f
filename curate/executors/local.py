"""The default executor: in-process with one worker, a process pool with more.

Measured on this 2-core machine (ARCHITECTURE.md section 9): a process pool beats Dask and Ray for local work
and starts in milliseconds, so it is the default; Ray is the extra for clusters.

On Linux a large driver's workers come from a ``forkserver``: a small process started once per driver, with the
workers' modules imported, that forks each worker. Forking the driver itself copied (copy-on-write) whatever it
held by then: dedupe's driver holds ~0.9 GB of ingest metadata and parent table when its pool starts at 1M images,
and every worker's RSS counted those pages again (the 1M chain peaked at 3,254 MiB of tree RSS with forked
workers, 2,843 MiB with the server; BENCHMARKS.md, issue 19). A small driver still forks (``FORK_MAX_RSS``): the
server costs 0.4-0.9 s to start per process, which the CLI's short commands and the tests would pay for nothing.
Workers of a forkserver get their inputs by pickling only, as under spawn: ``fn`` and ``cfg`` must be picklable
(they always were: a process pool pickles both), the environment is passed on at pool start, and the running
script is imported again in each worker, so it is used only when that import is safe (``_reimport_safe``);
elsewhere the pool forks as before. macOS uses spawn (fork is unsafe with threads there).
"""

from __future__ import annotations

import ast
import os
import sys
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


#: A driver with less resident memory than this forks its workers: what they share with it costs less than the fork
#: server's start (0.4-0.9 s once per process on the 2-core VM, and its ~140 MB of modules then counted in every
#: worker). Driver RSS at its first pool, measured: a small ingest or dedupe 165-190 MiB, dedupe of 100k images
#: 291 MiB, of 1M ~0.9 GB.
FORK_MAX_RSS = 256 << 20
#: Imported once in the fork server, besides the running script and ``fn``'s own module, so that each worker forked
#: from it starts with them (a module that fails to import is skipped there, as multiprocessing does). pandas because
#: pyarrow imports it on the first ``pa.table(dict)``: 0.4-0.9 s in every worker of every pool otherwise.
PRELOAD = ("numpy", "pyarrow", "pandas", "PIL.Image")


def _die_with_parent(parent: int, env: dict[str, str] | None = None) -> None:
    """Pool initializer: end this worker when the process that started it dies, ``kill -9`` included.

    A killed parent runs no cleanup, and its workers wait on a queue whose write end they hold themselves:
    they would live on under PID 1 forever. A forked worker asks the kernel for SIGKILL when its parent goes
    (``PR_SET_PDEATHSIG``; the forking thread is the one running ``map_batches``, which outlives the pool), else
    a thread polls the parent pid once a second. A forkserver or spawn worker's parent is the server, which outlives
    the driver while workers hold its pipe: a thread waits on the driver's end of the worker's own pipe instead
    (``multiprocessing.parent_process()``), which closes when the driver dies.

    Args:
        parent: the pid of the driver (the process running ``map_batches``).
        env: the driver's environment, for a worker that is not forked: it would otherwise have the one the fork
            server started with, and miss a later ``os.environ`` change (a test's ``AWS_ENDPOINT_URL``). None when forked.
    """
    import threading

    if env is not None:
        import multiprocessing as mp

        if env != os.environ:
            os.environ.clear()
            os.environ.update(env)
        driver = mp.parent_process()
        if driver is None:  # pragma: no cover - always set for a pool worker
            return

        def wait_for_driver() -> None:
            driver.join()
            os._exit(1)

        threading.Thread(target=wait_for_driver, name="curate-parent-watch", daemon=True).start()
        return
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

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


def _is_main_guard(test: ast.expr) -> bool:
    """``if __name__ == "__main__":`` or any test naming both."""
    nodes = list(ast.walk(test))
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in nodes) and any(
        isinstance(n, ast.Constant) and n.value == "__main__" for n in nodes
    )


def _reimport_safe(fn: Callable[..., Any]) -> bool:
    """Whether a worker that is not forked finds ``fn`` and can import the running script again without calling this again.

    Spawn and forkserver workers import the main module (as ``__mp_main__``) to find what it defines. That is
    skipped without a script file (a notebook, ``python -c``) and for a package's ``__main__`` (``python -m pkg``):
    fine unless ``fn`` was defined there. Otherwise it is harmless when this call runs under an
    ``if __name__ == "__main__":`` guard (the ``curate`` command, pytest, a script written for macOS). A script
    calling curate at its top level, unguarded, would start a pool again in every worker: it keeps the fork pool,
    as does anything this cannot tell.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if (spec is not None and spec.name.split(".")[-1] == "__main__") or (spec is None and not getattr(main, "__file__", None)):
        return getattr(fn, "__module__", None) != "__main__"
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:  # the script's top level is not on this thread's stack (a thread of it, atexit): unknown
        return False
    import tokenize

    try:
        with tokenize.open(frame.f_code.co_filename) as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return False
    line = frame.f_lineno or 0
    return any(
        isinstance(node, ast.If) and _is_main_guard(node.test) and node.body[0].lineno <= line <= (node.body[-1].end_lineno or 0)
        for node in tree.body
    )


def _rss() -> int:
    """This process's resident memory in bytes (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _start_method(fn: Callable[..., Any]) -> str:
    """``spawn`` off Linux; on Linux ``forkserver`` for a driver over ``FORK_MAX_RSS`` whose script allows it
    (module docstring), else ``fork``."""
    if not sys.platform.startswith("linux"):
        return "spawn"  # macOS: fork is unsafe with threads there
    return "forkserver" if _rss() >= FORK_MAX_RSS and _reimport_safe(fn) else "fork"


def _pool(workers: int, fn: Callable[..., Any]) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes whose workers die with this one (``_die_with_parent``)."""
    import multiprocessing as mp

    method = _start_method(fn)
    ctx = mp.get_context(method)
    if method == "forkserver":
        # Only the first call's list counts: the server starts once per process and serves every later pool.
        own = getattr(fn, "__module__", None)  # None for a functools.partial
        ctx.set_forkserver_preload(["__main__", *PRELOAD, *([own] if isinstance(own, str) else [])])
    env = None if method == "fork" else dict(os.environ)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(), env))
    if method == "fork":
        # Start the workers before the first batch is pulled: pulling may start threads in this process (ingest's
        # URL fetch loop), and a fork taken while another thread holds a lock leaves that lock held in the child.
        # With the fork context, the first submit launches every worker at once. (A fork server forks only itself.)
        pool.submit(os.getpid).result()
    return pool


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
    with _pool(workers, fn) as pool:
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
