"""Run a URL-list crawl in several worker processes (``--workers``), one event loop each.

One process spends about 1 ms of CPU per small image (HTTP, full decode, hashing, journal) and runs on one core; a
second process uses the second core. URLs are split by a stable hash (``crc32``), so a URL always belongs to the
same worker, across runs too; every worker gets its share of ``--concurrency`` and ``--per-host`` (the totals stay
what the user asked for) and scales ``Crawl-delay`` by the number of workers. Each worker writes its own journal
part, so there is one writer per file; the parent only shows progress and merges the results.

Link following needs one frontier, so seed crawls run in one process. A worker notices when its parent is gone
(``kill -9``): it writes what it has to the journal and exits, so a resumed crawl never races an orphan.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import multiprocessing.connection
import os
import zlib
from collections.abc import Callable
from typing import Any

from curate.errors import CurateError

TICK = 0.2


def share(total: int, n: int, k: int) -> int:
    """Worker ``k``'s part of ``total`` slots split over ``n`` workers (at least 1)."""
    return max(1, total // n + (1 if k < total % n else 0))


def part_of(url: str, n: int) -> int:
    """The worker (0..n-1) a URL belongs to: stable across processes and runs, unlike ``hash()``."""
    return zlib.crc32(url.encode("utf-8", "surrogateescape")) % n


def _child(make: Callable[..., Any], k: int, n: int, conn: Any, counters: Any, parent: int) -> None:
    code = 0
    try:

        def report(done: int, total: int | None, errors: int, nbytes: int) -> None:
            counters[3 * k : 3 * k + 3] = [done, errors, nbytes]

        crawler = make(k, n, report)
        crawler.parent_pid = parent
        conn.send(("ok", asyncio.run(crawler.run())))
    except KeyboardInterrupt:
        conn.send(("interrupted", None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        code = 1
    finally:
        conn.close()
        os._exit(code)  # no atexit handlers or finalizers inherited from the parent (rich, pytest ...)


def run_workers(
    make: Callable[..., Any], n: int, progress: Callable[..., None] | None, *, base: tuple[int, int], total: int | None
) -> Any:
    """Run ``make(k, n, report).run()`` in ``n`` forked processes and merge their ``RunStats``.

    Args:
        make: builds worker k's ``Crawler`` (called in the worker, after the fork).
        progress: ``progress(done, total, errors, bytes)`` in the parent, a few times a second.
        base: ``(done, errors)`` already in the journal before the workers start.

    Raises:
        KeyboardInterrupt: a worker was interrupted (Ctrl-C reaches every process of the terminal).
        CurateError: a worker failed or died.
    """
    from curate.crawl.engine import RunStats

    ctx = mp.get_context("fork")  # the workers share the parent's loaded journal, plan and known ids
    counters = ctx.Array("q", 3 * n, lock=False)
    procs, pipes = [], {}
    for k in range(n):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(make, k, n, send, counters, os.getpid()), name=f"curate-crawl-{k}")
        proc.start()
        send.close()
        procs.append(proc)
        pipes[k] = recv

    def report() -> None:
        if progress is not None:
            done = base[0] + sum(counters[0::3])
            progress(done, max(total or 0, done), base[1] + sum(counters[1::3]), sum(counters[2::3]))

    results: dict[int, tuple[str, Any]] = {}
    try:
        while pipes:
            for conn in mp.connection.wait(list(pipes.values()), timeout=TICK):
                k = next(i for i, c in pipes.items() if c is conn)
                try:
                    results[k] = conn.recv()
                except EOFError:
                    procs[k].join(5)
                    results[k] = ("error", f"exited with code {procs[k].exitcode} before reporting")
                del pipes[k]
            report()
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    if any(kind == "interrupted" for kind, _ in results.values()):
        raise KeyboardInterrupt
    failed = {k: msg for k, (kind, msg) in results.items() if kind != "ok"}
    if failed:
        k, msg = min(failed.items())
        raise CurateError(
            f"crawl worker {k} of {n} failed: {msg}", hint="the journal keeps what was fetched: run the same command again"
        )
    stats = RunStats()
    for _, st in results.values():
        stats.status.update(st.status)
        stats.bytes_received += st.bytes_received
        stats.filtered += st.filtered
        stats.page_limit += st.page_limit
        stats.repeated += st.repeated
        stats.seconds = max(stats.seconds, st.seconds)
    return stats
