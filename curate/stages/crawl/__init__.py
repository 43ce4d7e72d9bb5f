"""Crawl: fetch images from URL lists or by following links from seed pages into a new version (a source).

The crawl itself (``curate.crawl``) writes one journal record per URL (``Workspace.crawl_journal``);
``fetch.run_crawl`` turns the records of the current run into sample rows on top of the parent version, and
``finish`` marks the journal committed once the runner has committed the version. A killed or failed crawl resumes
when run again with the same inputs (``crawl_identity``): finished URLs are never fetched twice. In a pipeline a
crawl whose identity (the crawl id) and settings are unchanged is not run again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from curate.config import size_setting
from curate.crawl import DEFAULT_CONCURRENCY, DEFAULT_PER_HOST, DEFAULT_USER_AGENT
from curate.errors import UsageError
from curate.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from curate.stage import SOURCE, Context, Stage, cli

if TYPE_CHECKING:
    from curate.crawl.inputs import LabelRule
    from curate.stage import StageResult

#: Settings that decide what is crawled and which answers count: a change starts another journal.
IDENTITY_FIELDS = (
    "seeds", "depth", "same_host", "include", "exclude", "label_from", "url_col", "label_col",
    "max_pages", "user_agent", "ignore_robots", "allow_noai", "allow_private", "allow_hosts",
)  # fmt: skip


@dataclass(frozen=True)
class CrawlConfig:
    """Settings of ``curate crawl`` (defaults < curate.toml ``[crawl]`` < CLI flags).

    Attributes:
        urls: URL list: .txt (one per line), .csv/.parquet/.jsonl with a url column.
        seeds: Page to start from: URL or LABEL=URL (repeatable).
        depth: Link hops followed from a seed (0: the seed page's images only).
        same_host: Follow page links only on the seed's host.
        include: Only URLs matching this regex (found links and images).
        exclude: Skip URLs matching this regex.
        label_from: Label images by dir:K (URL folder), regex:PATTERN or seed.
        url_col: URL column of a CSV/Parquet/JSONL list (default: url, image_url ...).
        label_col: Label column of the list (default: label, class ...).
        concurrency: Fetches at once, in all.
        per_host: Fetches at once per host.
        connect_timeout: Seconds to connect.
        read_timeout: Seconds without a byte before giving up.
        timeout: Total seconds per attempt (connect, headers, body).
        deadline: Seconds for one URL in all: attempts, backoff, Retry-After waits (a drip server or a flapping one
            cannot hold a worker for timeout x retries).
        retries: Retries for timeouts, resets, 429 and 5xx (backoff + jitter).
        backoff: Seconds of the first retry's wait (doubled per retry, with jitter).
        max_retry_wait: Longest Retry-After honoured; longer ends the URL.
        max_redirects: Redirect hops per URL.
        max_bytes: Largest response (also after gzip decoding), e.g. 20MB (bytes).
        max_pixels: Largest width*height decoded (decompression-bomb guard).
        max_pages: Most HTML pages queued per crawl.
        user_agent: User-Agent sent; its first word is matched against robots.txt.
        ignore_robots: Do not read robots.txt (only for your own sites).
        allow_noai: Keep images marked X-Robots-Tag noai/noimageai.
        allow_private: Allow loopback/private/link-local addresses (never cloud metadata).
        allow_hosts: Host or IP exempt from the address checks (repeatable).
        proxy: Fetch through this http(s) proxy (http://HOST:PORT), or 'env' for HTTP(S)_PROXY / NO_PROXY. The
            proxy's own address may be private; every target and redirect is still checked here first. Default: no
            proxy, whatever the environment says.
        retry_failed: Fetch again only the URLs that failed (timeouts, resets, HTTP errors).
        max_error_fraction: Commit nothing above this failed share (the journal keeps every result).
        workers: Processes for a URL list (default: one per core); a seed crawl runs in one process.
    """

    urls: str | None = field(default=None, metadata=cli(argument=True, metavar="URLS"))
    seeds: tuple[str, ...] = field(default=(), metadata=cli("--seed", multiple=True, metavar="URL|LABEL=URL"))
    depth: int = 1
    same_host: bool = False
    include: str | None = None
    exclude: str | None = None
    label_from: str | None = None
    url_col: str | None = None
    label_col: str | None = None
    concurrency: int = field(default=DEFAULT_CONCURRENCY, metadata=cli("--concurrency", "-c"))
    per_host: int = DEFAULT_PER_HOST
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    timeout: float = 60.0
    deadline: float = 180.0
    retries: int = 3
    backoff: float = field(default=0.5, metadata=cli(hidden=True))
    max_retry_wait: float = 120.0
    max_redirects: int = 5
    max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata=cli(text=True, metavar="SIZE"))
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_pages: int = 10_000
    user_agent: str = DEFAULT_USER_AGENT
    ignore_robots: bool = field(default=False, metadata=cli("--ignore-robots/--respect-robots"))
    allow_noai: bool = False
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = field(default=(), metadata=cli("--allow-host", multiple=True, metavar="HOST"))
    proxy: str | None = None
    retry_failed: bool = False
    max_error_fraction: float = 0.5
    workers: int | None = field(default=None, metadata=cli("--workers", "-j"))


def check_config(cfg: CrawlConfig) -> LabelRule | None:
    """Fail fast on contradicting or unparsable settings; returns the ``LabelRule`` (or None).

    Raises:
        UsageError: no input or both inputs, bad regex, bad --label-from, non-positive limits.
    """
    import re

    from curate.crawl.inputs import LabelRule

    if bool(cfg.urls) == bool(cfg.seeds):
        raise UsageError(
            "give either a URL list (URLS) or --seed URL, not both" if cfg.urls else "nothing to crawl: give a URL list or --seed URL"
        )
    for name in ("include", "exclude"):
        pattern = getattr(cfg, name)
        if pattern:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise UsageError(f"--{name} {pattern!r}: bad regular expression ({exc})") from None
    for name in ("concurrency", "per_host", "timeout", "deadline", "connect_timeout", "read_timeout", "max_bytes", "max_pages"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.depth < 0 or cfg.retries < 0 or cfg.max_redirects < 0:
        raise UsageError("--depth, --retries and --max-redirects cannot be negative")
    if cfg.proxy is not None:
        from curate.crawl.transport import proxy_routes

        proxy_routes(cfg.proxy)
    if cfg.label_from == "seed" and not cfg.seeds:
        raise UsageError("--label-from seed needs --seed")
    if cfg.workers is not None and (cfg.workers < 1 or (cfg.seeds and cfg.workers > 1)):
        raise UsageError(f"--workers {cfg.workers}: give 1 or more, and only for a URL list (link following runs in one process)")
    return LabelRule(cfg.label_from) if cfg.label_from else None


def crawl_identity(cfg: CrawlConfig) -> dict[str, Any]:
    """What makes two runs the same crawl: the inputs (a list by path and content hash) and ``IDENTITY_FIELDS``.

    Raises:
        CurateError: the URL list is not a file.
    """
    ident: dict[str, Any] = {k: getattr(cfg, k) for k in IDENTITY_FIELDS}
    ident["seeds"], ident["allow_hosts"] = list(cfg.seeds), sorted(cfg.allow_hosts)
    if cfg.urls:
        from curate.crawl.inputs import list_path

        path = list_path(cfg.urls)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        ident["urls"] = {"path": str(path), "sha256": digest.hexdigest()}
    return ident


def crawl_id(cfg: CrawlConfig, identity: dict[str, Any] | None = None) -> str:
    """The journal's name: a hash of ``crawl_identity`` (``identity`` when already computed)."""
    ident = identity if identity is not None else crawl_identity(cfg)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(_ctx: Context, cfg: CrawlConfig) -> tuple[str, str]:
    """The stats key and value of the crawl's identity: an unchanged crawl is reused in pipelines."""
    return "crawl_id", crawl_id(cfg)


def run(ctx: Context, cfg: CrawlConfig) -> StageResult:
    """Crawl, resuming an unfinished run of the same inputs (``curate.stages.crawl.fetch``)."""
    from curate.stages.crawl.fetch import run_crawl

    return run_crawl(ctx, cfg)


def finish(ctx: Context, _cfg: CrawlConfig, res: dict[str, Any]) -> dict[str, Any]:
    """The version is committed: mark the journal so, so that the next run of the same crawl starts afresh."""
    journal = ctx.scratch.pop("journal", None)
    if journal is not None and not res.get("cached"):
        journal.mark_committed(res["version"])
    return res


def summary(res: dict[str, Any]) -> str:
    return f"{res['stats'].get('downloaded', 0):,} downloaded"


def details(res: dict[str, Any]) -> list[str]:
    """The crawl's counts, failures by status, what the sites declined, and the version's totals."""
    from curate.cli.common import human_bytes
    from curate.crawl import NOT_FAILURES

    st = res["stats"]
    if "by_status" not in st:
        return []
    resumed = f", {st['resumed_urls']:,} from an earlier run" if st["resumed_urls"] else ""
    out = [f"crawl ({st['mode']}): {st['urls']:,} URLs{resumed} -> {st['downloaded']:,} downloaded, {st['duplicates']:,} "
           f"duplicates, {st['pages']:,} pages, {st['failed']:,} failed; {human_bytes(st['bytes_received'])} received, "
           f"{st['crawl_seconds']:.1f}s ({st['urls_per_second']:,.0f} URLs/s)"]  # fmt: skip
    failed = {s: n for s, n in st["by_status"].items() if s not in NOT_FAILURES}
    if failed:
        out.append("failed: " + ", ".join(f"{s} {n:,}" for s, n in sorted(failed.items(), key=lambda kv: -kv[1])))
    policy = {s: st["by_status"][s] for s in ("robots", "noai") if st["by_status"].get(s)}
    if policy:
        out.append("not fetched by the site's wish: " + ", ".join(f"{s} {n:,}" for s, n in policy.items()))
    if st["replaced_failed_rows"]:
        out.append(f"{st['replaced_failed_rows']:,} rows of earlier failures replaced by this run's outcome")
    summ = st["summary"]
    out.append(f"version {res['version']} (HEAD): {summ['included']:,} included, {summ['excluded']:,} excluded; "
               f"journal {st['journal']}")  # fmt: skip
    return out


STAGE = Stage(
    "crawl",
    CrawlConfig,
    run,
    kind=SOURCE,
    doc="""Download images from a URL list or by following links from seed pages into a new version.

    Politeness and safety: robots.txt and X-Robots-Tag noai are obeyed, per-host concurrency is limited,
    429/503 Retry-After pauses the host, every redirect hop is checked, only http(s) to public addresses is
    fetched (loopback, private, link-local and metadata addresses are refused), no proxy unless --proxy,
    bodies are capped (gzip bombs too) and every image is fully decoded like ingest does. Every URL ends with a status; failed image
    URLs stay as excluded rows with the reason. A killed or failed crawl resumes when run again with the same
    inputs: finished URLs are never fetched twice (journal in WORKSPACE/crawls/).

    Examples:

        curate crawl urls.txt                                  # one URL per line
        curate crawl list.csv --url-col image --label-col species
        curate crawl --seed https://example.org/gallery/ --depth 2 --same-host --label-from dir:1
        curate crawl --seed cats=https://example.org/cats/ --seed dogs=https://example.org/dogs/ --label-from seed
        curate crawl urls.txt --retry-failed                   # only what failed last time
    """,
    columns={
        "crawl_status": "the URL's outcome (downloaded, duplicate, robots, timeout, http_404 ...)",
        "http_status": "the last HTTP status",
        "elapsed": "seconds for the URL, retries included",
        "attempts": "fetch attempts",
        "bytes_received": "bytes received for the URL",
        "final_url": "the URL after redirects, when different",
        "page_url": "the page that linked it",
        "content_type": "the response's Content-Type",
        "depth": "link hops from the seed",
    },
    summary=summary,
    details=details,
    check=check_config,
    prepare=size_setting,
    fingerprint=fingerprint,
    finish=finish,
    workers=True,
)
