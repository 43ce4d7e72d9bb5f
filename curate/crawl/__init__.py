"""The web crawler behind ``curate crawl``: one role per module.

- ``netsafety``: which addresses may be contacted (only public ones unless allowed).
- ``transport``: the httpx transport whose every connection is opened to a checked address (asyncio sockets).
- ``robots``: robots.txt per origin and the ``X-Robots-Tag`` / ``<meta name="robots">`` noai directives.
- ``links``: HTML parsing (stdlib ``html.parser``) into page links and image URLs; URL normalisation.
- ``fetcher``: one URL with httpx: manual redirects, retries with backoff, size caps, content checks.
- ``frontier``: what to fetch next under global and per-host concurrency limits and per-host pauses.
- ``journal``: the append-only record of every finished URL, so a killed crawl resumes without refetching.
- ``inputs``: URL lists, seeds and the ``--label-from`` rules.
- ``engine``: the async loop that ties them together; ``parallel``: a URL list over several processes.
- ``rows``: journal records -> sample rows (what ``curate.stages.crawl`` commits).
- ``batchfetch``: the URL rows of ``curate ingest`` manifests, fetched through the same fetcher and frontier.

Every URL the crawl touches ends with exactly one record whose ``status`` is one of ``STATUSES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from curate import __version__

DEFAULT_USER_AGENT = f"curate/{__version__} (image dataset crawler; obeys robots.txt and X-Robots-Tag noai)"
#: Fetches at once in all / per host (``--concurrency`` / ``--per-host`` of crawl and ingest).
DEFAULT_CONCURRENCY, DEFAULT_PER_HOST = 32, 4

#: An image fetched, validated and stored.
DOWNLOADED = "downloaded"
#: An image whose bytes are already in the workspace or were fetched from another URL in this crawl.
DUPLICATE = "duplicate"
#: An HTML page fetched and parsed for links.
PAGE = "page"

STATUSES = (
    DOWNLOADED,
    DUPLICATE,
    PAGE,
    "http_error",  # final HTTP status >= 400 (after retries for 429 and 5xx)
    "timeout",  # connect, read or total timeout on every attempt
    "fetch_error",  # connection refused or reset, DNS failure, broken HTTP, unsupported content encoding
    "too_large",  # body (declared, streamed or decompressed) over max_bytes, or an image over max_pixels
    "not_an_image",  # wrong content type, or bytes that are no image (HTML served as .jpg)
    "empty",
    "corrupt",
    "truncated",  # reasons from curate.images.inspect_image
    "robots",  # robots.txt disallows the URL, or robots.txt could not be read (RFC 9309: then nothing is allowed)
    "noai",  # X-Robots-Tag or <meta name="robots"> says noai / noimageai
    "refused",  # not http(s), invalid URL, or a private / loopback / link-local / metadata address
    "redirect_loop",
    "too_many_redirects",
)

#: Outcomes that are not failures: they never count against ``max_error_fraction``.
NOT_FAILURES = frozenset({DOWNLOADED, DUPLICATE, PAGE, "robots", "noai"})
#: Outcomes ``--retry-failed`` tries again (the others do not change by asking twice).
RETRYABLE = frozenset({"http_error", "timeout", "fetch_error", "truncated"})

#: Task kinds: an ``image`` URL must return an image; a ``page`` may be HTML (parsed) or an image (kept).
IMAGE, PAGE_KIND = "image", "page"


@dataclass
class Task:
    """One URL to fetch.

    Attributes:
        url: the normalised absolute URL.
        kind: ``image`` or ``page``.
        depth: link hops from the seed (seeds and URL-list entries are 0).
        label: the label its image gets (from the URL list, ``--label-from`` or the seed).
        page: the page that linked to it (None for seeds and list entries).
        seed: index of the seed it descends from (None for list entries).
        noai: the linking page said noai / noimageai: record without fetching.
        split: the origin split a manifest gave (``origin_split``).
        extra: JSON text of a manifest's other columns (kept as text columns).
    """

    url: str
    kind: str
    depth: int = 0
    label: str | None = None
    page: str | None = None
    seed: int | None = None
    noai: bool = False
    split: str | None = None
    extra: str | None = None
