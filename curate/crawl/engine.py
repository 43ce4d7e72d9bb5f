"""The crawl loop: up to ``concurrency`` tasks at once take URLs from the frontier, fetch, validate and journal them.

One record per URL goes to the journal whatever happens: an HTML page becomes ``page`` (its links and images are
queued), an image is validated exactly like ingest does (``inspect_image``: signature, verify, full decode,
decompression-bomb limit) and becomes ``downloaded`` (bytes kept in the journal), ``duplicate`` (bytes already in
the workspace or this crawl) or the reason it is unusable; a failed fetch keeps the fetcher's status.

Small images are validated on the event loop (a thread hand-off costs more than decoding a thumbnail); larger
ones in a thread pool (Pillow and hashlib release the GIL), so one large JPEG never stalls every connection.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from curate.crawl import DOWNLOADED, DUPLICATE, IMAGE, NOT_FAILURES, PAGE, PAGE_KIND, RETRYABLE, Task
from curate.crawl.fetcher import Fetcher, FetchLimits, FetchResult
from curate.crawl.frontier import Frontier, host_of
from curate.crawl.inputs import LabelRule
from curate.crawl.journal import Journal
from curate.crawl.links import Page, decode_html, parse_page
from curate.crawl.netsafety import AddressGuard
from curate.crawl.transport import make_transport
from curate.images import ImageCheck, inspect_image
from curate.schema import sha256_hex

INLINE_BYTES = 32 << 10  # validate images up to this size on the event loop
INLINE_HTML = 256 << 10  # parse pages up to this size on the event loop
TICK = 0.2  # seconds between journal flushes and progress updates

#: ``progress(done, total, errors, bytes_received)``, called a few times a second.
Progress = Callable[[int, int | None, int, int], None]


def _fast_async_detection() -> None:
    """Make httpcore's ``import sniffio`` fail fast when sniffio is not installed.

    httpcore tries ``import sniffio`` for every lock it creates (about six per request); without the package each try
    is a failed import that searches all of sys.path again: 0.4 ms per URL, a third of the crawl's CPU on small
    images. ``None`` in ``sys.modules`` is Python's documented "known absent" marker: the import fails at once and
    httpcore assumes asyncio, which is what runs. With sniffio installed nothing changes.
    """
    import importlib.util
    import sys

    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Plan:
    """How to crawl (the stage builds it from ``CrawlConfig``)."""

    limits: FetchLimits
    concurrency: int = 32
    per_host: int = 4
    depth: int = 1
    same_host: bool = False
    include: str | None = None
    exclude: str | None = None
    label_rule: LabelRule | None = None
    max_pages: int = 10_000
    max_pixels: int = 1 << 26
    respect_robots: bool = True
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    proxy: str | None = None  # an http(s) proxy URL or "env" (curate.crawl.transport.proxy_routes); None: direct
    delay_scale: float = 1.0  # workers sharing a host: each waits Crawl-delay x workers


def open_fetcher(plan: Plan, *, on_pause: Callable[[str, float], None] | None = None) -> Fetcher:
    """A ``Fetcher`` on a new guarded transport (``async with fetcher.transport``) under ``plan``'s address rules,
    reading robots.txt unless ``plan.respect_robots`` is off; ``curate crawl`` and ingest's URL rows both use it."""
    lim = plan.limits
    guard = AddressGuard(allow_private=plan.allow_private, allow_hosts=plan.allow_hosts, resolve_timeout=lim.connect_timeout)
    fetcher = Fetcher(make_transport(guard, max_connections=plan.concurrency + 8, proxy=plan.proxy), guard, lim, on_pause=on_pause)
    if plan.respect_robots:
        from curate.crawl.robots import RobotsCache

        fetcher.robots = RobotsCache(fetcher.fetch_text, lim.user_agent)
    return fetcher


def honour_crawl_delay(fetcher: Fetcher, frontier: Frontier, url: str, scale: float = 1.0) -> None:
    """Once ``url``'s robots.txt is known, its ``Crawl-delay`` (times ``scale``) spaces the host's fetches."""
    delay = fetcher.robots.delay(url) if fetcher.robots is not None else None
    if delay and host_of(url) not in frontier.delays:
        frontier.set_delay(host_of(url), delay * scale)


@dataclass
class RunStats:
    """What this run did (resumed records are not counted here)."""

    status: Counter[str] = field(default_factory=Counter)
    bytes_received: int = 0
    filtered: int = 0  # links and images left out by --include / --exclude / --same-host
    page_limit: int = 0  # page links not followed because --max-pages pages were queued
    repeated: int = 0  # URLs found again after they were queued or done
    seconds: float = 0.0


def _validate(data: bytes, max_pixels: int, max_bytes: int) -> tuple[str, ImageCheck]:
    return sha256_hex(data), inspect_image(data, max_pixels=max_pixels, max_bytes=max_bytes)


class Crawler:
    """One crawl run.

    Args:
        plan: the settings.
        journal: an opened journal (its history is what earlier runs finished).
        known: sample ids already in the workspace; downloads with these bytes are ``duplicate``.
        seeds: ``(label, url)`` pages to start from.
        feed: list entries as tasks, read lazily (None for a seed crawl or a retry).
        retry: queue the URLs whose last record failed in a way worth retrying.
        progress: see ``Progress``; ``total`` is the list length when known up front.
        part: ``(k, n)``: this is worker k of n (``curate.crawl.parallel``) and fetches only URLs of part k.
    """

    def __init__(
        self,
        plan: Plan,
        journal: Journal,
        known: set[str],
        *,
        seeds: list[tuple[str | None, str]] | None = None,
        feed: Iterator[Task] | None = None,
        retry: bool = False,
        progress: Progress | None = None,
        total: int | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        self.plan = plan
        self.journal = journal
        self.known = known
        self.seeds = list(seeds or [])
        self.seed_hosts = [host_of(url) for _, url in self.seeds]
        self.progress = progress
        self.total = total
        self.part = part
        self.parent_pid: int | None = None  # set in worker processes: exit when the parent is gone
        self.stats = RunStats()
        self.include = re.compile(plan.include) if plan.include else None
        self.exclude = re.compile(plan.exclude) if plan.exclude else None
        self.frontier = Frontier(per_host=plan.per_host)
        self.pages_queued = 0
        self.done = journal.resumed
        self.errors = sum(1 for r in journal.current() if r["status"] not in NOT_FAILURES)
        self._replay(feed, retry)

    # ------------------------------------------------------------------------------------- queueing
    def _replay(self, feed: Iterator[Task] | None, retry: bool) -> None:
        """Queue what is left: history marks finished URLs, seeds and finished pages' links are offered again."""
        hist = self.journal.history
        again = [r for r in hist.values() if retry and r["status"] in RETRYABLE and self._mine(r["url"])]
        redo = {r["url"] for r in again}
        for url, rec in hist.items():
            if url not in redo:
                self.frontier.mark_finished(url)
            if rec.get("kind") == PAGE_KIND:
                self.pages_queued += 1
        for i, (_, url) in enumerate(self.seeds):
            self.frontier.add(Task(url, PAGE_KIND, 0, seed=i))
        for rec in hist.values():
            if rec["status"] == PAGE:
                for url, kind, depth, label, noai in rec.get("children", []):
                    self._offer(Task(url, kind, depth, label, rec["url"], rec.get("seed"), bool(noai)))
        for rec in again:
            keys = ("label", "page", "seed", "split", "extra")
            self.frontier.add(
                Task(rec["url"], rec["kind"], rec.get("depth", 0), noai=bool(rec.get("noai")), **{k: rec.get(k) for k in keys})
            )
        self.frontier.feed = feed if self.part[1] == 1 or feed is None else (t for t in feed if self._mine(t.url))

    def _mine(self, url: str) -> bool:
        from curate.crawl.parallel import part_of

        return self.part[1] == 1 or part_of(url, self.part[1]) == self.part[0]

    def _offer(self, task: Task) -> None:
        if task.kind == PAGE_KIND:
            if self.pages_queued >= self.plan.max_pages:
                self.stats.page_limit += 1
                return
            if self.frontier.add(task):
                self.pages_queued += 1
        else:
            self.frontier.add(task)

    def _wanted(self, url: str) -> bool:
        ok = (self.include is None or self.include.search(url)) and not (self.exclude and self.exclude.search(url))
        if not ok:
            self.stats.filtered += 1
        return bool(ok)

    def _children(self, task: Task, page: Page, noai: bool) -> list[Task]:
        seed_label, seed_url = self.seeds[task.seed] if task.seed is not None else (None, None)
        rule = self.plan.label_rule
        out = []
        for url in page.images:
            if self._wanted(url):
                label = rule.label(url, seed_url, seed_label) if rule else seed_label
                out.append(Task(url, IMAGE, task.depth + 1, label, task.url, task.seed, noai))
        if page.nofollow or task.depth >= self.plan.depth:
            return out
        for url in page.links:
            if self.plan.same_host and task.seed is not None and host_of(url) != self.seed_hosts[task.seed]:
                self.stats.filtered += 1
            elif self._wanted(url):
                # A link without an image extension may still answer with an image: it gets its label too.
                label = rule.label(url, seed_url, seed_label) if rule else seed_label
                out.append(Task(url, PAGE_KIND, task.depth + 1, label, task.url, task.seed))
        return out

    # ------------------------------------------------------------------------------------- running
    async def run(self) -> RunStats:
        """Crawl until the frontier is empty; the journal holds every finished URL even after Ctrl-C."""
        _fast_async_detection()
        t0 = time.perf_counter()
        self.fetcher = open_fetcher(self.plan, on_pause=self.frontier.pause)
        self.pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="curate-validate")
        ticker = asyncio.create_task(self._tick())
        try:
            async with self.fetcher.transport:
                await self._dispatch()
        finally:
            ticker.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.journal.sync()
            self.stats.seconds = time.perf_counter() - t0
            self.stats.repeated = self.frontier.repeated
            self._report()
        return self.stats

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.journal.flush()
            self._report()
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                self.journal.sync()  # the parent was killed: keep what is done, then go (no orphan keeps crawling)
                os._exit(3)

    def _report(self) -> None:
        if self.progress is not None:
            total = self.total - self.frontier.repeated if self.total is not None else len(self.frontier.seen)
            self.progress(self.done, max(total, self.done), self.errors, self.stats.bytes_received)

    async def _dispatch(self) -> None:
        """Start one coroutine per URL while fewer than ``concurrency`` run.

        One dispatcher waits on the frontier, not ``concurrency`` idle workers: with 32 workers and one host allowing
        4 at a time, every finished URL woke 28 workers that found nothing to do (a quarter of the CPU went there).
        """
        slots = asyncio.Semaphore(self.plan.concurrency)

        async def one(task: Task) -> None:
            try:
                await self._handle(task)
            finally:
                self.frontier.done(task)
                slots.release()

        async with asyncio.TaskGroup() as group:  # a bug in one task cancels the rest and surfaces here
            while True:
                await slots.acquire()
                task = await self.frontier.get()
                if task is None:
                    break
                group.create_task(one(task))

    async def _handle(self, task: Task) -> None:
        t0 = time.perf_counter()
        if task.noai:
            self._finish(task, t0, "noai", None, error="the linking page says noai/noimageai", row=True)
            return
        res = await self.fetcher.fetch(task.url, task.kind)
        honour_crawl_delay(self.fetcher, self.frontier, task.url, self.plan.delay_scale)
        if res.status != "ok":
            self._finish(task, t0, res.status, res, row=task.kind == IMAGE)
        elif res.html:
            loop = asyncio.get_running_loop()
            text = decode_html(res.body or b"", res.content_type)
            url = res.final_url or task.url
            page = parse_page(text, url) if len(text) <= INLINE_HTML else await loop.run_in_executor(self.pool, parse_page, text, url)
            children = self._children(task, page, page.noai or res.noai)
            self._finish(task, t0, PAGE, res, children=children)
            for child in children:
                self._offer(child)
        else:
            await self._image(task, t0, res)

    async def _image(self, task: Task, t0: float, res: FetchResult) -> None:
        data = res.body or b""
        args = (data, self.plan.max_pixels, self.plan.limits.max_bytes)
        if len(data) <= INLINE_BYTES:
            sha, check = _validate(*args)
        else:
            sha, check = await asyncio.get_running_loop().run_in_executor(self.pool, _validate, *args)
        if check.reason is not None:
            self._finish(task, t0, check.reason, res, error=check.error, row=True)
        elif sha in self.known:
            self._finish(task, t0, DUPLICATE, res, sha=sha, check=check, row=True)
        else:
            self.known.add(sha)
            self._finish(task, t0, DOWNLOADED, res, sha=sha, check=check, body=data, row=True)

    def _finish(
        self,
        task: Task,
        t0: float,
        status: str,
        res: FetchResult | None,
        *,
        error: str | None = None,
        row: bool = False,
        sha: str | None = None,
        check: ImageCheck | None = None,
        body: bytes | None = None,
        children: list[Task] | None = None,
    ) -> None:
        rec: dict[str, Any] = {
            "url": task.url,
            "kind": task.kind,
            "depth": task.depth,
            "label": task.label,
            "page": task.page,
            "seed": task.seed,
            "split": task.split,
            "extra": task.extra,
            "noai": task.noai or None,
            "status": status,
            "error": error if error is not None else (res.error if res else None),
            "row": row or None,
            "sample_id": sha,
            "elapsed": round(time.perf_counter() - t0, 4),
        }
        if res is not None:
            rec.update(http_status=res.http_status, nbytes=res.nbytes, attempts=res.attempts, content_type=res.content_type)
            if res.final_url and res.final_url != task.url:
                rec["final_url"] = res.final_url
            self.stats.bytes_received += res.nbytes
        if check is not None:
            rec.update(
                width=check.width, height=check.height, mode=check.mode, format=check.format, exif_orientation=check.exif_orientation
            )
        if children is not None:
            rec["children"] = [[c.url, c.kind, c.depth, c.label, 1 if c.noai else 0] for c in children]
        self.journal.append(rec, body)
        self.stats.status[status] += 1
        self.done += 1
        self.errors += status not in NOT_FAILURES
