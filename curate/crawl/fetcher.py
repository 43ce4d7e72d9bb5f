"""Fetch one URL with httpx: every redirect hop checked, retries with backoff, hard caps on time and size.

- Redirects are followed by hand (at most ``max_redirects``) so each hop's scheme, address (``netsafety``) and
  robots.txt are checked; a hop back to an earlier URL is ``redirect_loop``.
- Each attempt has connect and read timeouts plus a total one (``asyncio.timeout``), so a server that drips one
  byte a second cannot hold a worker longer than ``total_timeout``. ``deadline`` (ingest's ``--timeout``) bounds
  the whole URL: every attempt, backoff and the wait for robots.txt; no retry starts that could not finish in time.
- Timeouts, connection errors and HTTP 408/425/429/5xx are retried up to ``retries`` times after an exponential
  backoff with jitter (deterministic per URL); a ``Retry-After`` on 429/503 is honoured and pauses the whole host
  (``on_pause``), and one longer than ``max_retry_wait`` ends the URL instead of being ignored.
- The body is streamed and abandoned as soon as it passes ``max_bytes``: the declared length, the bytes on the
  wire, and the bytes after gzip/deflate decoding (decoded here with a bounded ``zlib`` output, so a 100 KB gzip
  bomb never becomes 100 MB in memory).
- Content checks for images: a Content-Type that is neither ``image/*`` nor a generic binary type is
  ``not_an_image`` before the body is read; the first bytes must carry an image signature (HTML served as .jpg).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from curate.crawl import IMAGE, PAGE_KIND
from curate.crawl.links import normalize_url
from curate.crawl.netsafety import AddressGuard, RefusedAddress
from curate.crawl.robots import RobotsCache, agent_token, x_robots_noai
from curate.images import looks_like_image

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
#: Content types that say nothing about the bytes: the magic bytes decide.
GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "application/binary", "application/unknown"})
RETRY_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
TEXT, PAGE_MAX_BYTES, TEXT_MAX_BYTES = "text", 16 << 20, 512 << 10


@dataclass(frozen=True)
class FetchLimits:
    """Time, size and politeness limits of one fetch (see ``curate crawl --help`` for each)."""

    user_agent: str
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_wait: float = 120.0
    max_redirects: int = 5
    max_bytes: int = 64 << 20
    respect_noai: bool = True
    deadline: float | None = None  # seconds for the whole URL, retries included; None: only total_timeout per attempt


@dataclass
class FetchResult:
    """The outcome of one URL: ``status`` is ``ok`` or a failure status of ``curate.crawl.STATUSES``."""

    status: str
    http_status: int | None = None
    error: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    final_url: str | None = None
    nbytes: int = 0
    attempts: int = 0
    html: bool = False
    retry_after: float | None = None
    retry: bool = True  # False: asking again cannot help (unsupported encoding)
    noai: bool = False  # an HTML page whose X-Robots-Tag says noai: its images are not to be used


class _Stop(Exception):
    """Abandon the body: ``result`` says why."""

    def __init__(self, result: FetchResult) -> None:
        super().__init__(result.error)
        self.result = result


class _Decoder:
    """Content-Encoding identity / gzip / deflate with bounded output (``zlib`` ``max_length``)."""

    def __init__(self, header: str | None) -> None:
        codings = [c.strip().lower() for c in (header or "").split(",") if c.strip().lower() not in ("", "identity")]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise _Stop(FetchResult("fetch_error", error=f"unsupported Content-Encoding {header!r}", retry=False))
        self.raw_deflate_ok = codings == ["deflate"]  # some servers send raw deflate without the zlib header
        self.z = zlib.decompressobj(zlib.MAX_WBITS | 32) if codings else None  # | 32: zlib or gzip header
        self.fed = False

    def feed(self, data: bytes, limit: int) -> bytes:
        if self.z is None:
            return data
        try:
            out = self.z.decompress(data, limit)
        except zlib.error:
            if not (self.raw_deflate_ok and not self.fed):
                raise
            self.z = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self.z.decompress(data, limit)
        self.fed = True
        return out

    def flush(self, limit: int) -> bytes:
        return self.z.flush(limit) if self.z is not None else b""


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


class Fetcher:
    """Fetch URLs through ``transport`` (``curate.crawl.transport.make_transport``).

    Requests go straight to the transport (``httpx.Request`` in, ``httpx.Response`` out): the crawler does its own
    redirects and keeps no cookies, and skipping ``AsyncClient``'s per-request layers (cookie jar, auth flow, URL
    merging) saves a sixth of the CPU per small image.

    Args:
        transport: the shared ``httpx.AsyncHTTPTransport`` (connection pool).
        guard: address checks before each hop (the transport checks again at connect time).
        limits: timeouts, retries, caps.
        robots: robots.txt rules, checked for every hop; None to ignore robots.txt.
        on_pause: ``on_pause(host, seconds)``: the host asked (Retry-After) for a pause.
    """

    def __init__(
        self,
        transport: Any,
        guard: AddressGuard,
        limits: FetchLimits,
        *,
        robots: RobotsCache | None = None,
        on_pause: Callable[[str, float], None] | None = None,
    ) -> None:
        import httpx

        self.transport = transport
        self.guard = guard
        self.limits = limits
        self.robots = robots
        self.on_pause = on_pause
        self.token = agent_token(limits.user_agent)
        self.headers = {"User-Agent": limits.user_agent, "Accept-Encoding": "gzip, deflate", "Accept": "*/*"}
        timeout = httpx.Timeout(limits.read_timeout, connect=limits.connect_timeout, pool=limits.total_timeout)
        self.extensions = {"timeout": timeout.as_dict()}
        self._httpx = httpx

    async def fetch(self, url: str, kind: str) -> FetchResult:
        """Fetch ``url`` as ``kind`` (``image`` or ``page``), retrying what may succeed on a second try."""
        lim = self.limits
        loop = asyncio.get_running_loop()
        end = None if lim.deadline is None else loop.time() + lim.deadline
        attempt, robots_ok = 0, self.robots is None
        while True:
            attempt += 1
            left = None if end is None else end - loop.time()
            try:
                async with asyncio.timeout(left):  # the address check and the robots.txt wait count against the deadline
                    blocked = await self._admit(url, robots_ok)
            except TimeoutError:
                return FetchResult("timeout", error=self._late(), final_url=url, attempts=attempt - 1)
            except RefusedAddress as exc:
                return FetchResult("refused", error=str(exc), final_url=url, attempts=attempt - 1)
            except OSError as exc:  # the name does not resolve (now): a connection failure like any other
                res = FetchResult("fetch_error", error=f"cannot resolve {url}: {exc}"[:300])
            else:
                if blocked:
                    return FetchResult(blocked[0], error=blocked[1], final_url=url, attempts=attempt - 1)
                robots_ok = True
                res = await self._attempt(url, kind, None if end is None else end - loop.time())
            res.attempts = attempt
            retryable = res.retry and (res.status in ("timeout", "fetch_error") or res.http_status in RETRY_HTTP)
            if not retryable or attempt > lim.retries:
                return res
            rng = random.Random(f"{url}|{attempt}")  # jitter spreads retries out, yet a rerun waits the same
            delay = min(lim.max_backoff, lim.backoff * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.5)
            if res.retry_after is not None:
                if res.retry_after > lim.max_retry_wait:
                    res.error = (
                        f"{res.error}; Retry-After {res.retry_after:.0f}s is longer than --max-retry-wait {lim.max_retry_wait:g}s"
                    )
                    return res
                delay = max(delay, res.retry_after)
                if self.on_pause is not None:
                    self.on_pause(urlsplit(res.final_url or url).netloc, res.retry_after)
            if end is not None and loop.time() + delay >= end:
                res.error = f"{res.error}; no time left for another try within the {lim.deadline:g}s deadline"
                return res
            await asyncio.sleep(delay)

    async def _admit(self, url: str, robots_ok: bool) -> tuple[str, str] | None:
        """Check the address (raises ``RefusedAddress`` / ``OSError``), then robots.txt unless done: the block or None."""
        await self.guard.check_url(url)
        if robots_ok:
            return None
        return await self.robots.check(url)  # type: ignore[union-attr]

    def _late(self) -> str:
        return f"no complete answer within the deadline of {self.limits.deadline:g}s, retries included"

    async def fetch_text(self, url: str) -> tuple[str, int | None, str | None, str | None]:
        """One attempt at a small text resource (robots.txt): ``(status, http_status, text, error)``."""
        res = await self._attempt(url, TEXT)
        text = res.body.decode("utf-8", errors="replace") if res.status == "ok" and res.body is not None else None
        return res.status, res.http_status, text, res.error

    async def _attempt(self, url: str, kind: str, left: float | None = None) -> FetchResult:
        """One attempt, bounded by ``total_timeout`` and by ``left``, the seconds the deadline still allows."""
        httpx, total = self._httpx, self.limits.total_timeout
        try:
            async with asyncio.timeout(total if left is None else max(0.0, min(total, left))):
                return await self._follow(url, kind)
        except TimeoutError:
            if left is not None and left < total:
                return FetchResult("timeout", error=self._late())
            return FetchResult("timeout", error=f"no complete answer within the total timeout of {total:g}s")
        except httpx.TimeoutException as exc:
            return FetchResult("timeout", error=f"{type(exc).__name__} ({self._which_timeout(exc)})")
        except RefusedAddress as exc:
            return FetchResult("refused", error=str(exc), retry=False)
        except _Stop as exc:
            return exc.result
        except (httpx.HTTPError, httpx.InvalidURL, OSError, zlib.error) as exc:
            return FetchResult("fetch_error", error=f"{type(exc).__name__}: {exc}"[:300])

    def _which_timeout(self, exc: Exception) -> str:
        lim = self.limits
        name = type(exc).__name__
        return f"connect {lim.connect_timeout:g}s" if "Connect" in name else f"read {lim.read_timeout:g}s" if "Read" in name else name

    async def _follow(self, url: str, kind: str) -> FetchResult:
        hops, current = [url], url
        while True:
            await self.guard.check_url(current)  # cached: cheap; the transport checks the connection itself again
            if len(hops) > 1:  # the first hop's robots.txt was checked in fetch(), outside the total timeout
                blocked = await self.robots.check(current) if self.robots is not None and kind != TEXT else None
                if blocked:
                    return FetchResult(blocked[0], error=f"redirected to {current}: {blocked[1]}", final_url=current)
            request = self._httpx.Request("GET", current, headers=self.headers, extensions=self.extensions)
            resp = await self.transport.handle_async_request(request)
            try:
                location = resp.headers.get("location")
                if resp.status_code in (301, 302, 303, 307, 308) and location:
                    nxt = normalize_url(location, current)
                    if nxt is None:
                        return FetchResult(
                            "refused", resp.status_code, f"redirect to a non-http(s) URL {location[:200]!r}", retry=False
                        )
                    if nxt in hops:
                        return FetchResult(
                            "redirect_loop", resp.status_code, f"redirect back to {nxt} after {len(hops)} hops", final_url=current
                        )
                    if len(hops) > self.limits.max_redirects:
                        return FetchResult("too_many_redirects", resp.status_code, f"more than {self.limits.max_redirects} redirects")
                    hops.append(nxt)
                    current = nxt
                    continue
                return await self._read(resp, kind, current)
            finally:
                await resp.aclose()  # an unread body closes the connection: nothing more is downloaded

    async def _read(self, resp: Any, kind: str, url: str) -> FetchResult:
        lim, code = self.limits, resp.status_code
        ctype = (resp.headers.get("content-type") or "").split(";")[0].strip().lower() or None
        base = {"http_status": code, "content_type": ctype, "final_url": url}
        if code >= 300:
            ra = _retry_after(resp.headers.get("retry-after")) if code in (429, 503) else None
            return FetchResult("http_error", error=f"HTTP {code}", retry_after=ra, **base)
        html = ctype in HTML_TYPES
        noai = kind != TEXT and lim.respect_noai and x_robots_noai(resp.headers.get_list("x-robots-tag"), self.token)
        if noai and not (html and kind == PAGE_KIND):  # a noai page is still read for its links; its images are not used
            return FetchResult("noai", error="X-Robots-Tag says noai/noimageai", **base)
        imagey = ctype is None or ctype.startswith("image/") or ctype in GENERIC_TYPES
        if kind == IMAGE and not imagey:
            return FetchResult("not_an_image", error=f"Content-Type {ctype} is not an image type", **base)
        if kind == PAGE_KIND and not (html or imagey):
            return FetchResult("not_an_image", error=f"Content-Type {ctype} is neither HTML nor an image", **base)
        cap = TEXT_MAX_BYTES if kind == TEXT else min(lim.max_bytes, PAGE_MAX_BYTES) if html else lim.max_bytes
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            return FetchResult("too_large", error=f"Content-Length {declared} > {cap} bytes", **base)
        # Bytes without a type (or a generic one) on a page link are sniffed: an image signature makes it an image.
        magic = kind == IMAGE or (kind == PAGE_KIND and ctype is not None and ctype.startswith("image/"))
        body, nbytes = await self._body(resp, cap, magic=magic, base=base)
        if kind == PAGE_KIND and not html and not magic and not looks_like_image(body[:16]):
            html = body.lstrip()[:1] == b"<"
            if not html:
                return FetchResult("not_an_image", error="neither HTML nor an image signature", nbytes=nbytes, **base)
        return FetchResult("ok", body=body, nbytes=nbytes, html=html and kind != TEXT, noai=noai, **base)

    async def _body(self, resp: Any, cap: int, *, magic: bool, base: dict[str, Any]) -> tuple[bytes, int]:
        decoder = _Decoder(resp.headers.get("content-encoding"))
        buf, raw, checked = bytearray(), 0, not magic

        def check(final: bool) -> None:
            nonlocal checked
            if not checked and (len(buf) >= 16 or (final and buf)):
                checked = True
                if not looks_like_image(bytes(buf[:16])):
                    head = bytes(buf[:24]).decode("latin-1").encode("unicode_escape").decode()
                    raise _Stop(FetchResult("not_an_image", error=f"no image signature (starts with {head!r})", nbytes=raw, **base))

        async for chunk in resp.stream:  # raw bytes, still content-encoded
            raw += len(chunk)
            if raw > cap:
                raise _Stop(FetchResult("too_large", error=f"body over {cap} bytes", nbytes=raw, **base))
            buf += decoder.feed(chunk, cap + 1 - len(buf))
            if len(buf) > cap:
                raise _Stop(
                    FetchResult("too_large", error=f"decoded body over {cap} bytes (Content-Encoding bomb)", nbytes=raw, **base)
                )
            check(False)
        buf += decoder.flush(cap + 1 - len(buf))
        if len(buf) > cap:
            raise _Stop(FetchResult("too_large", error=f"decoded body over {cap} bytes (Content-Encoding bomb)", nbytes=raw, **base))
        check(True)
        return bytes(buf), raw
