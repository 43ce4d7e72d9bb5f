"""The URL rows of an ingest manifest, fetched by the crawler: one fetch path for ``curate ingest`` and ``curate crawl``.

``prefetch_urls`` sits in the ingest driver between the source and the per-sample decode. The URL rows of each item
batch go to a ``FetchLoop``: the crawler's fetcher and frontier on an event loop in a background thread. So what
``curate crawl`` guarantees holds for ingest too: http(s) only; the address of every connection and redirect hop
checked (``--allow-private``, ``--allow-host``; cloud metadata addresses never); no proxy unless ``--proxy``;
robots.txt and ``X-Robots-Tag: noai``; at most ``--per-host`` requests per host and ``--concurrency`` in all;
retries with backoff and ``Retry-After``; size caps; and ``--timeout`` as the deadline of each URL, retries included.

A fetched row gets its bytes in ``data`` (then decoded and checked like a file's); a failed one gets the crawl
status as ``pre_reason`` (``refused``, ``timeout``, ``robots``, ``http_error`` ...) and the detail as ``pre_error``;
a scheme other than http(s) is ``unsupported_url``. Rows keep their input order.

Memory: the next batch's URLs are fetched while the previous one is decoded. Fetched bodies wait for the decode
step up to ``budget`` bytes: past it no new fetch starts (except while the driver waits for a row not yet fetched),
and a batch is handed on in parts of a quarter of the budget, so large images do not pile up in the driver.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from curate.crawl import DEFAULT_USER_AGENT, IMAGE, Task

BUDGET = 256 << 20
UNSUPPORTED = "unsupported_url"


def plan_for(cfg: Any) -> Any:
    """The crawl ``Plan`` for ingest settings (``IngestConfig``): ``timeout`` is each URL's deadline, retries included.

    Raises:
        UsageError: a limit that is not positive.
    """
    from curate.crawl.engine import Plan
    from curate.crawl.fetcher import FetchLimits
    from curate.crawl.transport import proxy_routes
    from curate.errors import UsageError

    for name in ("timeout", "concurrency", "per_host"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.proxy is not None:
        proxy_routes(cfg.proxy)  # a bad --proxy fails here, before any fetch
    t = float(cfg.timeout)
    base = FetchLimits(user_agent=DEFAULT_USER_AGENT, max_bytes=cfg.max_bytes, respect_noai=not cfg.allow_noai)
    limits = dataclasses.replace(
        base,
        connect_timeout=min(base.connect_timeout, t),
        read_timeout=min(base.read_timeout, t),
        total_timeout=t,
        deadline=t,
    )
    return Plan(
        limits=limits,
        concurrency=cfg.concurrency,
        per_host=cfg.per_host,
        respect_robots=not cfg.ignore_robots,
        allow_private=cfg.allow_private,
        allow_hosts=tuple(cfg.allow_hosts),
        proxy=cfg.proxy,
    )


class FetchLoop:
    """The crawler's fetcher and frontier on an asyncio loop in a daemon thread.

    ``submit(url)`` from the driver thread returns a future of the ``FetchResult``; ``result(future)`` waits for it;
    ``release(n)`` says that ``n`` bytes of fetched bodies were handed on. ``close()`` cancels what is left.
    """

    def __init__(self, plan: Any, budget: int = BUDGET) -> None:
        from curate.crawl.frontier import Frontier

        self.plan, self.budget = plan, budget
        self.frontier = Frontier(per_host=plan.per_host)
        self.waiters: dict[str, list[concurrent.futures.Future]] = {}  # url -> the rows waiting for it (loop thread)
        self.held = 0  # bytes of fetched bodies not yet handed on (loop thread)
        self.urgent = 0  # > 0 while the driver waits for a row: fetches may start past the budget (it may be one)
        self.more, self.room = asyncio.Event(), asyncio.Event()
        self.fetcher: Any = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="curate-fetch", daemon=True)
        self.thread.start()
        self.main = asyncio.run_coroutine_threadsafe(self._dispatch(), self.loop)

    # ---------------------------------------------------------------------------------- driver thread
    def submit(self, url: str) -> concurrent.futures.Future:
        cf: concurrent.futures.Future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._add, url, cf)
        return cf

    def result(self, cf: concurrent.futures.Future) -> Any:
        """The ``FetchResult`` of ``cf``; a crash of the loop itself is raised here rather than waited on forever."""
        if not cf.done():
            self.loop.call_soon_threadsafe(self._more_room, 1)
            try:
                concurrent.futures.wait([cf, self.main], return_when=concurrent.futures.FIRST_COMPLETED)
            finally:
                self.loop.call_soon_threadsafe(self._more_room, -1)
            if not cf.done():
                self.main.result()  # raises what ended the loop
                raise RuntimeError("the fetch loop ended with URLs still to fetch")
        return cf.result()

    def release(self, nbytes: int) -> None:
        if nbytes:
            self.loop.call_soon_threadsafe(self._more_room, 0, nbytes)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            if not self.thread.is_alive():
                self.loop.close()

    # ---------------------------------------------------------------------------------- loop thread
    def _add(self, url: str, cf: concurrent.futures.Future) -> None:
        waiters = self.waiters.get(url)
        if waiters is not None:  # the same URL again while it is fetched: one request serves both rows
            waiters.append(cf)
            return
        self.waiters[url] = [cf]
        self.frontier.add(Task(url, IMAGE))
        self.more.set()

    def _more_room(self, urgent: int, released: int = 0) -> None:
        self.urgent += urgent
        self.held -= released
        self.room.set()

    async def _dispatch(self) -> None:
        """Start a fetch while fewer than ``concurrency`` run and the budget allows, in the frontier's order."""
        from curate.crawl.engine import _fast_async_detection, open_fetcher

        _fast_async_detection()
        self.fetcher = open_fetcher(self.plan, on_pause=self.frontier.pause)
        slots = asyncio.Semaphore(self.plan.concurrency)
        running: set[asyncio.Task] = set()
        while True:
            await slots.acquire()
            while self.held >= self.budget and not self.urgent:
                self.room.clear()
                await self.room.wait()
            task = await self.frontier.get()
            if task is None:  # nothing queued or running: wait for the driver's next URLs
                slots.release()
                self.more.clear()
                await self.more.wait()
                continue
            job = asyncio.create_task(self._one(task, slots))
            running.add(job)
            job.add_done_callback(running.discard)

    async def _one(self, task: Task, slots: asyncio.Semaphore) -> None:
        from curate.crawl.engine import honour_crawl_delay

        try:
            res = await self.fetcher.fetch(task.url, IMAGE)
            honour_crawl_delay(self.fetcher, self.frontier, task.url)
        except Exception as exc:  # a bug: the driver raises it instead of waiting forever
            for cf in self.waiters.pop(task.url, []):
                cf.set_exception(exc)
            return
        finally:
            self.frontier.done(task)
            self.frontier.seen.pop(task.url, None)  # the same URL in a later row is fetched again, not skipped
            slots.release()
        waiters = self.waiters.pop(task.url, [])
        self.held += len(res.body or b"") * len(waiters) if res.status == "ok" else 0
        for cf in waiters:
            cf.set_result(res)

    async def _shutdown(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.fetcher is not None:
            await self.fetcher.transport.aclose()


def _is_http(url: str) -> bool:
    return url.split(":", 1)[0].lower() in ("http", "https")


def prefetch_urls(batches: Iterable[pa.Table], cfg: Any, *, budget: int = BUDGET) -> Iterator[pa.Table]:
    """Yield ``batches`` (``curate.sources.ITEM_SCHEMA``) with every URL row fetched: ``data`` or ``pre_reason``.

    Batches without URL rows pass through untouched; the fetch loop starts at the first URL. Close the generator
    (``contextlib.closing``) to stop the fetches when the consumer ends early.
    """
    plan = plan_for(cfg)
    loop: FetchLoop | None = None
    pending: deque[tuple[pa.Table, dict[int, concurrent.futures.Future]]] = deque()
    try:
        for batch in batches:
            futs: dict[int, concurrent.futures.Future] = {}
            pre = batch.column("pre_reason").to_pylist()
            for i, url in enumerate(batch.column("url").to_pylist()):
                if url is not None and pre[i] is None and _is_http(url):
                    loop = loop or FetchLoop(plan, budget)
                    futs[i] = loop.submit(url)
            pending.append((batch, futs))
            # Not held while suspended at a yield: a batch of large archive members would stay in memory twice.
            del batch
            # One batch with URLs stays ahead: its URLs are fetched while the one before is decoded.
            while len(pending) > (1 if futs else 0):
                yield from _next(pending, loop, budget // 4)
        while pending:
            yield from _next(pending, loop, budget // 4)
    finally:
        if loop is not None:
            loop.close()


_Pending = deque[tuple[pa.Table, dict[int, concurrent.futures.Future]]]


def _next(pending: _Pending, loop: FetchLoop | None, cut: int) -> Iterator[pa.Table]:
    """The first pending batch, finished; one without URL rows is yielded straight from the queue (no local keeps it)."""
    if not pending[0][1] and pending[0][0].column("url").null_count == pending[0][0].num_rows:
        yield pending.popleft()[0]
    else:
        yield from _finish(*pending.popleft(), loop, cut)


def _finish(batch: pa.Table, futs: dict[int, concurrent.futures.Future], loop: FetchLoop | None, cut: int) -> Iterator[pa.Table]:
    """``batch`` with its URL rows' outcomes, in parts holding at most about ``cut`` fetched bytes each."""
    urls = batch.column("url").to_pylist()
    if not futs and all(u is None for u in urls):
        yield batch
        return
    cols = {name: batch.column(name).to_pylist() for name in ("data", "pre_reason", "pre_error")}
    data, reason, error = cols["data"], cols["pre_reason"], cols["pre_error"]
    start = held = 0
    for i, url in enumerate(urls):
        if url is None or reason[i] is not None:
            continue
        if i not in futs:
            reason[i], error[i] = UNSUPPORTED, f"only http and https URLs are fetched, not {url.split(':', 1)[0]}:"
            continue
        res = loop.result(futs[i])  # type: ignore[union-attr]
        if res.status == "ok":
            data[i] = res.body or b""
            held += len(data[i])
        else:
            reason[i], error[i] = res.status, res.error or res.status
        if held >= cut:
            yield _part(batch, start, i + 1, cols)
            loop.release(held)  # type: ignore[union-attr]
            start, held = i + 1, 0
    if start < len(urls):
        yield _part(batch, start, len(urls), cols)
    if loop is not None:
        loop.release(held)


def _part(batch: pa.Table, a: int, b: int, cols: dict[str, list[Any]]) -> pa.Table:
    part = batch.slice(a, b - a)
    for name, values in cols.items():
        idx = part.schema.get_field_index(name)
        field = part.schema.field(idx)
        part = part.set_column(idx, field, pa.array(values[a:b], field.type))
    return part
