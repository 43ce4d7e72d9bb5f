"""robots.txt per origin (RFC 9309, parsed by ``protego``) and the ``X-Robots-Tag`` noai directives.

``protego`` implements RFC 9309 matching: ``*`` and ``$`` in paths, and the longest matching rule wins (``Allow``
on a tie). The stdlib's ``urllib.robotparser`` does neither: ``Disallow: /*.jpg$`` allowed every JPEG.

robots.txt is read once per origin (scheme, host, port), by the first task that needs it, while the others for that
origin wait for the same answer. What an answer means follows RFC 9309: a 2xx file is parsed; a 4xx means no
rules (everything allowed); a 5xx, a timeout or a connection failure means the site cannot say, so nothing is
fetched from it. Those URLs get the failure itself as status (``http_error``, ``timeout``, ``fetch_error``: the
site is down, ``--retry-failed`` tries again) with ``robots.txt unreachable`` in the error; ``robots`` is kept for
URLs the rules disallow. ``Crawl-delay`` is honoured (capped) as a pause between requests to the host.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: X-Robots-Tag directives that carry a value after a colon (``max-snippet: 20``), not a user-agent prefix.
_VALUED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_AGENT_PREFIX = re.compile(r"^\s*([A-Za-z0-9_.*-]+)\s*:\s*(.*)$")
NOAI_DIRECTIVES = frozenset({"noai", "noimageai"})

#: ``fetch(url) -> (status, http_status or None, text or None, error or None)`` of a small text resource;
#: status is ``ok`` or a failure status of ``curate.crawl.STATUSES``.
TextFetch = Callable[[str], Awaitable[tuple[str, int | None, str | None, str | None]]]


def agent_token(user_agent: str) -> str:
    """The product token robots.txt rules are matched against: ``curate/0.1 (...)`` -> ``curate``."""
    return (user_agent.split("/", 1)[0].split() or ["*"])[0]


def x_robots_noai(values: list[str], token: str) -> bool:
    """True when any ``X-Robots-Tag`` header value says ``noai`` or ``noimageai`` for everyone or for ``token``.

    ``X-Robots-Tag: otherbot: noai`` applies to otherbot only; ``X-Robots-Tag: noindex, noai`` to every agent.
    """
    for value in values:
        m = _AGENT_PREFIX.match(value)
        if m and m.group(1).lower() not in _VALUED:
            if m.group(1).lower() not in (token.lower(), "*"):
                continue
            value = m.group(2)
        if {d.strip().lower() for d in value.split(",")} & NOAI_DIRECTIVES:
            return True
    return False


@dataclass
class _Rules:
    parser: Any  # a ``protego.Protego``; None: no rules, or nothing allowed (``blocked``)
    blocked: tuple[str, str] | None = None  # (status, error) every URL of the origin gets
    delay: float | None = None


class RobotsCache:
    """``await check(url)`` -> None when robots.txt allows ``url``, else the reason.

    Args:
        fetch: reads ``<origin>/robots.txt``; see ``TextFetch``.
        user_agent: the crawler's User-Agent (its product token is matched against the rules).
        max_delay: the largest ``Crawl-delay`` honoured (seconds); larger values are capped, not obeyed.
    """

    def __init__(self, fetch: TextFetch, user_agent: str, *, max_delay: float = 30.0) -> None:
        self.fetch = fetch
        self.token = agent_token(user_agent)
        self.max_delay = max_delay
        self._rules: dict[str, asyncio.Future[_Rules]] = {}  # origin -> the task reading its robots.txt

    @staticmethod
    def origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    async def _load(self, origin: str) -> _Rules:
        status, code, text, error = await self.fetch(origin + "/robots.txt")
        if code is not None and 400 <= code < 500:
            return _Rules(None)  # RFC 9309: unavailable -> no rules
        if status != "ok" or text is None:
            why = f"HTTP {code}" if code is not None else (error or "no answer")
            failed = status if status in ("timeout", "fetch_error", "http_error") else "fetch_error"
            return _Rules(None, blocked=(failed, f"robots.txt unreachable ({why}): nothing is fetched from {origin}"))
        from protego import Protego

        parser = Protego.parse(text)
        delay = parser.crawl_delay(self.token)
        return _Rules(parser, delay=min(float(delay), self.max_delay) if delay else None)

    async def rules(self, url: str) -> _Rules:
        origin = self.origin(url)
        task = self._rules.get(origin)
        if task is None:
            # A task of its own, awaited through a shield: a reader that gives up (its URL's deadline passed, or it was
            # cancelled) never cancels the read the other URLs of the origin are waiting for.
            task = self._rules[origin] = asyncio.ensure_future(self._load(origin))
        return await asyncio.shield(task)

    async def check(self, url: str) -> tuple[str, str] | None:
        """None when allowed; else ``(status, error)``: ``robots`` when the rules disallow ``url``, the failure of
        the robots.txt fetch when the site could not say."""
        rules = await self.rules(url)
        if rules.blocked:
            return rules.blocked
        if rules.parser is not None and not rules.parser.can_fetch(url, self.token):
            return "robots", f"robots.txt disallows {urlsplit(url).path or '/'} for {self.token}"
        return None

    def delay(self, url: str) -> float | None:
        """The ``Crawl-delay`` for ``url``'s origin once its robots.txt is known (None when none or not yet read)."""
        fut = self._rules.get(self.origin(url))
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        return fut.result().delay
