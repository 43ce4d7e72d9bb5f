"""Fetch one image URL for ingest manifests (http/https only, timeouts, size cap, bounded redirects).

``curate crawl`` is the full crawler (robots.txt, per-host limits, private-address checks, journal); ingest
only needs to read a manifest's URLs with the same hard limits on time and size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fetched:
    data: bytes | None
    reason: str | None = None
    error: str | None = None


def fetch_url(url: str, *, timeout: float = 30.0, max_bytes: int = 64 << 20, retries: int = 2) -> Fetched:
    """GET ``url`` and return its body, or the reason it could not be read.

    Reasons: ``unsupported_url``, ``timeout``, ``http_error``, ``too_large``, ``fetch_error``.
    """
    import time

    import httpx

    if not url.lower().startswith(("http://", "https://")):
        return Fetched(None, "unsupported_url", "only http and https URLs can be fetched")
    t = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    last = Fetched(None, "fetch_error", "no attempt made")
    for attempt in range(retries + 1):
        try:
            with (
                httpx.Client(timeout=t, follow_redirects=True, max_redirects=5) as client,
                client.stream("GET", url, headers={"User-Agent": "curate/0.1 (+ingest)"}) as resp,
            ):
                if resp.status_code >= 400:
                    last = Fetched(None, "http_error", f"HTTP {resp.status_code}")
                    if resp.status_code < 500 and resp.status_code != 429:
                        return last
                else:
                    declared = int(resp.headers.get("content-length") or 0)
                    if declared > max_bytes:
                        return Fetched(None, "too_large", f"content-length {declared} > max_bytes {max_bytes}")
                    buf = bytearray()
                    for chunk in resp.iter_bytes():
                        buf += chunk
                        if len(buf) > max_bytes:
                            return Fetched(None, "too_large", f"body over max_bytes {max_bytes}")
                    return Fetched(bytes(buf))
        except httpx.TimeoutException as exc:
            last = Fetched(None, "timeout", f"{type(exc).__name__} after {timeout}s")
        except httpx.HTTPError as exc:
            last = Fetched(None, "fetch_error", f"{type(exc).__name__}: {exc}"[:200])
        if attempt < retries:
            time.sleep(0.5 * 2**attempt)
    return last
