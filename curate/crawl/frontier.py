"""What to fetch next: one queue per host, served round-robin under a per-host concurrency limit and pauses.

The engine calls ``await get()`` (a task, or None when the crawl is over) and ``done(task)`` when it is finished. A
host is skipped while it has ``per_host`` fetches running, while it is paused (``Retry-After`` via ``pause``) or until its
``Crawl-delay`` has passed since its last fetch; one busy host never holds up another that has work.
The crawl is over when nothing is queued, nothing is running and the feed is exhausted.

A URL is queued once (``seen``); a URL found again at a smaller depth before it was fetched gets that depth, so
the depth limit depends on the shortest path found, not on which page happened to finish first. URL lists are
read lazily through ``feed`` (at most ``lookahead`` queued at a time), so a list of millions of URLs does not
sit in memory as tasks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterator
from urllib.parse import urlsplit

from curate.crawl import Task

#: ``seen`` value of a URL an earlier run finished (offering it again is no repeat of the input).
EARLIER = object()


def host_of(url: str) -> str:
    """The scheduling key of a URL: its lowercased ``host[:port]``."""
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


class Frontier:
    """Per-host queues with limits.

    Args:
        per_host: concurrent fetches per host.
        feed: tasks read lazily (a URL list); None when everything is added with ``add``.
        lookahead: how many fed tasks may be queued at once.
    """

    def __init__(self, *, per_host: int, feed: Iterator[Task] | None = None, lookahead: int = 20_000) -> None:
        self.per_host = per_host
        self.feed = feed
        self.lookahead = lookahead
        # url -> its task while queued or running; None once finished; EARLIER when an earlier run finished it
        self.seen: dict[str, Task | None | object] = {}
        self.queues: dict[str, deque[Task]] = {}
        self.ring: deque[str] = deque()  # hosts that may have queued tasks, in round-robin order
        self.active: Counter[str] = Counter()
        self.not_before: dict[str, float] = {}
        self.delays: dict[str, float] = {}
        self.pending = self.in_flight = 0
        self.repeated = 0  # URLs offered again after they were queued or finished
        self._changed = asyncio.Event()

    def add(self, task: Task) -> bool:
        """Queue ``task`` unless its URL was seen; returns True when queued."""
        old = self.seen.get(task.url, False)
        if old is not False:
            if old is not EARLIER:  # a resumed run offers finished URLs again: not a repeat of the input
                self.repeated += 1
            if isinstance(old, Task) and task.depth < old.depth:
                old.depth = task.depth
            return False
        self.seen[task.url] = task
        host = host_of(task.url)
        queue = self.queues.get(host)
        if queue is None:
            queue = self.queues[host] = deque()
            self.ring.append(host)
        queue.append(task)
        self.pending += 1
        self._changed.set()
        return True

    def mark_finished(self, url: str) -> None:
        """Record ``url`` as finished by an earlier run: it is never queued."""
        self.seen[url] = EARLIER

    def pause(self, host: str, seconds: float) -> None:
        """Fetch nothing from ``host`` for ``seconds`` (it sent ``Retry-After``)."""
        self.not_before[host] = max(self.not_before.get(host, 0.0), time.monotonic() + seconds)

    def set_delay(self, host: str, seconds: float) -> None:
        """``Crawl-delay``: one fetch at a time on ``host``, ``seconds`` apart."""
        self.delays[host] = seconds

    def _refill(self) -> None:
        while self.feed is not None and self.pending < self.lookahead:
            task = next(self.feed, None)
            if task is None:
                self.feed = None
            else:
                self.add(task)

    def _take(self, now: float) -> tuple[Task | None, float | None]:
        """The next task of a host that may be fetched now, or (None, when the earliest paused host wakes)."""
        wake: float | None = None
        for _ in range(len(self.ring)):
            host = self.ring[0]
            queue = self.queues[host]
            if not queue:  # drop hosts with nothing queued; add() brings them back
                self.ring.popleft()
                del self.queues[host]
                continue
            self.ring.rotate(-1)
            if self.active[host] >= (1 if host in self.delays else self.per_host):
                continue
            at = self.not_before.get(host, 0.0)
            if at > now:
                wake = at if wake is None else min(wake, at)
                continue
            self.pending -= 1
            self.in_flight += 1
            self.active[host] += 1
            return queue.popleft(), None
        return None, wake

    async def get(self) -> Task | None:
        """Wait for the next task; None when the crawl is over (every caller waiting then gets None too)."""
        while True:
            self._refill()
            now = time.monotonic()
            task, wake = self._take(now)
            if task is not None:
                return task
            if self.pending == 0 and self.in_flight == 0 and self.feed is None:
                self._changed.set()  # wake any other caller so it ends too
                return None
            self._changed.clear()
            try:
                async with asyncio.timeout(None if wake is None else max(0.0, wake - now)):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def done(self, task: Task) -> None:
        """``task`` finished (whatever its outcome): free its host slot."""
        host = host_of(task.url)
        self.active[host] -= 1
        if self.active[host] <= 0:
            del self.active[host]
        self.in_flight -= 1
        self.seen[task.url] = None
        delay = self.delays.get(host)
        if delay:
            self.not_before[host] = max(self.not_before.get(host, 0.0), time.monotonic() + delay)
        self._changed.set()
