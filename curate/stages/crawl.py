"""Crawl: fetch images from URL lists or by following links from seed pages into a new version.

The crawl itself (``curate.crawl``) writes one journal record per URL; this stage turns the records of the
current run into sample rows on top of the parent version:

- ``downloaded``: an ``ok`` row; ``sample_id`` is the sha256 of the bytes, which go into a blob pack; width,
  height, mode, format and EXIF orientation come from the same ``inspect_image`` checks ingest makes.
- ``duplicate``: no new row; the URL (and its label) is added to ``extra_sources`` / ``extra_labels`` of the row
  that has the same bytes, as ingest does.
- any failure of an image URL: an ``excluded`` row (``excluded_by="crawl"``, ``reason`` = the status, ``error`` the
  detail) with ``sample_id = placeholder_id(url)``. A later crawl that finishes the same URL (``--retry-failed``
  or a rerun) replaces that placeholder row, so a URL has one row, holding its latest outcome.
- pages (HTML) are not samples: they are in ``state/crawl_log.parquet`` with every other URL of the run.

Crawl columns on every crawled row: ``crawl_status``, ``http_status``, ``elapsed`` (seconds, retries included),
``attempts``, ``bytes_received``, ``final_url`` (after redirects, when different), ``page_url`` (the page that
linked it), ``content_type``, ``depth``; a manifest's other columns become text columns (``src_`` prefix on a clash).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.crawl import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PER_HOST,
    DEFAULT_USER_AGENT,
    DOWNLOADED,
    DUPLICATE,
    IMAGE,
    NOT_FAILURES,
    PAGE,
    Task,
    rows,
)
from curate.errors import CurateError, TooManyErrors, UsageError
from curate.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from curate.schema import OK, SAMPLE_SCHEMA, conform
from curate.stages import StageResult

STAGE = "crawl"
#: Settings that decide what is crawled and which answers count: a change starts another journal.
IDENTITY_FIELDS = (
    "seeds", "depth", "same_host", "include", "exclude", "label_from", "url_col", "label_col",
    "max_pages", "user_agent", "ignore_robots", "allow_noai", "allow_private", "allow_hosts",
)  # fmt: skip


@dataclass(frozen=True)
class CrawlConfig:
    """Settings of ``curate crawl`` (defaults < curate.toml ``[crawl]`` < CLI flags); see ``curate crawl --help``.

    Attributes:
        urls: a URL list (.txt, .csv, .parquet, .jsonl); or ``seeds``: pages to start from (``URL`` / ``LABEL=URL``).
        depth: link hops followed from a seed (0: the seed page and its images only).
        per_host / concurrency: fetches at once per host / in all.
        timeout: total seconds per attempt (connect + headers + body); connect/read_timeout bound each step.
        deadline: seconds for one URL in all: every attempt, backoff and Retry-After wait (a drip server or a
            flapping one cannot hold a worker for ``timeout`` x ``retries``).
        max_error_fraction: commit nothing when more than this share of the URLs failed (the journal keeps them).
        workers: processes for a URL list (default: one per core); a seed crawl runs in one process.
        proxy: an http(s) proxy URL or ``env`` (HTTP(S)_PROXY / NO_PROXY); None: no proxy, whatever the environment.
    """

    urls: str | None = None
    seeds: tuple[str, ...] = ()
    depth: int = 1
    same_host: bool = False
    include: str | None = None
    exclude: str | None = None
    label_from: str | None = None
    url_col: str | None = None
    label_col: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    per_host: int = DEFAULT_PER_HOST
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    timeout: float = 60.0
    deadline: float = 180.0
    retries: int = 3
    backoff: float = 0.5
    max_retry_wait: float = 120.0
    max_redirects: int = 5
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_pages: int = 10_000
    user_agent: str = DEFAULT_USER_AGENT
    ignore_robots: bool = False
    allow_noai: bool = False
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    proxy: str | None = None
    retry_failed: bool = False
    max_error_fraction: float = 0.5
    workers: int | None = None


def check_config(cfg: CrawlConfig) -> Any:
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


def _workers(cfg: CrawlConfig, url_list: bool) -> int:
    """Worker processes: one per core for a URL list, 1 for link following. The workers are forked (they share the
    loaded journal and settings), so other systems than Linux, where fork is unsafe or missing, use one process."""
    import sys

    from curate.executors.local import default_workers

    if not url_list or not sys.platform.startswith("linux"):
        return 1
    return cfg.workers or default_workers()


def crawl_identity(cfg: CrawlConfig) -> dict[str, Any]:
    """What makes two runs the same crawl: the inputs (a list by path and content hash) and ``IDENTITY_FIELDS``."""
    ident: dict[str, Any] = {k: getattr(cfg, k) for k in IDENTITY_FIELDS}
    ident["seeds"], ident["allow_hosts"] = list(cfg.seeds), sorted(cfg.allow_hosts)
    if cfg.urls:
        from pathlib import Path

        path = Path(cfg.urls).expanduser().resolve()
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        ident["urls"] = {"path": str(path), "sha256": digest.hexdigest()}
    return ident


def config_dict(cfg: CrawlConfig) -> dict[str, Any]:
    """The resolved config as JSON-able dict (stored in version.json)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def crawl(ws: Any, cfg: CrawlConfig, *, progress: Any = None, parent: str | None = "HEAD") -> dict[str, Any]:
    """Run the crawl under the workspace lock and commit a version (what ``curate crawl`` does).

    Args:
        progress: ``progress(total) -> context manager yielding update(done, total, errors, bytes)``.
        parent: the version to add to (None: a first version); ``HEAD`` (default): the current HEAD.

    Returns:
        run_stage's ``{"version", "parent", "stage", "cached", "stats"}``.
    """
    from curate.pipeline import run_stage

    rule = check_config(cfg)
    box: dict[str, Any] = {}

    def body(parent: pa.Table | None, parent_id: str | None) -> StageResult:
        return run_crawl(ws, parent, parent_id, cfg, rule=rule, progress=progress, box=box)

    res = run_stage(ws, STAGE, config_dict(cfg), body, cacheable=False, parent=parent)
    box["journal"].mark_committed(res["version"])
    return res


def _open_journal(ws: Any, cfg: CrawlConfig) -> tuple[Any, str, str]:
    from curate.crawl.journal import Journal

    ident = crawl_identity(cfg)
    crawl_id = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    journal = Journal(ws.root / "crawls" / crawl_id)
    meta = journal.read_meta()
    if meta and not meta.get("committed"):
        # Killed between committing the version and marking the journal: the version says so.
        for vid in reversed(ws.version_ids()):
            st = ws.stats(vid)
            if st.get("crawl_id") == crawl_id and st.get("gen") == meta.get("gen"):
                journal.meta = meta
                journal.mark_committed(vid)
                break
    mode = journal.open(ident, retry_failed=cfg.retry_failed)
    return journal, crawl_id, mode


def run_crawl(
    ws: Any,
    parent: pa.Table | None,
    parent_id: str | None,
    cfg: CrawlConfig,
    *,
    rule: Any = None,
    progress: Any = None,
    box: dict[str, Any] | None = None,
) -> StageResult:
    """Crawl (resuming an unfinished run of the same inputs) and build the new sample table.

    Raises:
        CurateError: unreadable URL list; ``TooManyErrors`` when more than ``max_error_fraction`` of the URLs failed
            (nothing committed; the journal keeps every result, so a rerun fetches nothing again).
    """
    import asyncio

    from curate.crawl.engine import Crawler, Plan
    from curate.crawl.fetcher import FetchLimits
    from curate.crawl.inputs import UrlList, parse_seed
    from curate.crawl.links import normalize_url
    from curate.crawl.parallel import run_workers, share

    t0 = time.perf_counter()
    rule = rule if rule is not None else check_config(cfg)
    url_list = UrlList(cfg.urls, url_col=cfg.url_col, label_col=cfg.label_col) if cfg.urls else None
    journal, crawl_id, mode = _open_journal(ws, cfg)
    if box is not None:
        box["journal"] = journal
    parent = conform(parent) if parent is not None else SAMPLE_SCHEMA.empty_table()
    known = set(parent.column("sample_id").to_pylist())
    known.update(r["sample_id"] for r in journal.history.values() if r["status"] == DOWNLOADED)
    seeds = [(label, normalize_url(url) or url) for label, url in map(parse_seed, cfg.seeds)]

    def feed() -> Any:
        for e in url_list.entries():  # type: ignore[union-attr]
            url = normalize_url(e.url) or e.url or e.where
            label = e.label or (rule.label(url) if rule is not None and rule.kind != "seed" else None)
            yield Task(url, IMAGE, 0, label, split=e.origin_split, extra=e.extra)

    limits = FetchLimits(
        user_agent=cfg.user_agent,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        total_timeout=cfg.timeout,
        deadline=cfg.deadline,
        retries=cfg.retries,
        backoff=cfg.backoff,
        max_retry_wait=cfg.max_retry_wait,
        max_redirects=cfg.max_redirects,
        max_bytes=cfg.max_bytes,
        respect_noai=not cfg.allow_noai,
    )
    plan = Plan(
        limits=limits,
        concurrency=cfg.concurrency,
        per_host=cfg.per_host,
        depth=cfg.depth,
        same_host=cfg.same_host,
        include=cfg.include,
        exclude=cfg.exclude,
        label_rule=rule,
        max_pages=cfg.max_pages,
        max_pixels=cfg.max_pixels,
        respect_robots=not cfg.ignore_robots,
        allow_private=cfg.allow_private,
        allow_hosts=cfg.allow_hosts,
        proxy=cfg.proxy,
    )
    resumed = journal.resumed
    total = url_list.total if url_list is not None and mode != "retry" else None
    use_feed = url_list is not None and mode != "retry"
    n_workers = _workers(cfg, url_list is not None)

    def make(k: int, n: int, update: Any) -> Crawler:
        """Worker k of n: its share of the limits, its part of the URLs (called after the fork when n > 1)."""
        if n > 1:
            journal.use_part(k)
        mine = dataclasses.replace(
            plan, concurrency=share(plan.concurrency, n, k), per_host=share(plan.per_host, n, k), delay_scale=float(n)
        )
        crawler = Crawler(
            mine,
            journal,
            known,
            seeds=seeds,
            feed=feed() if use_feed else None,
            retry="retry" in mode,
            progress=update,
            total=total,
            part=(k, n),
        )
        if n > 1:
            crawler.done = crawler.errors = 0  # the parent adds what earlier runs finished
        return crawler

    bar = progress(total) if progress else contextlib.nullcontext(None)
    try:
        with bar as update:
            if n_workers == 1:
                run = asyncio.run(make(0, 1, update).run())
            else:
                base = (resumed, sum(1 for r in journal.current() if r["status"] not in NOT_FAILURES))
                run = run_workers(make, n_workers, update, base=base, total=total)
                journal.reload()
    finally:
        journal.close()
    records = journal.current()
    by_status = Counter(r["status"] for r in records)
    failed = sum(n for s, n in by_status.items() if s not in NOT_FAILURES)
    if records and failed > cfg.max_error_fraction * len(records):
        detail = ", ".join(f"{s}={n}" for s, n in by_status.most_common() if s not in NOT_FAILURES)
        raise TooManyErrors(
            f"crawl: {failed} of {len(records)} URLs failed ({detail}), more than --max-error-fraction {cfg.max_error_fraction}; "
            "nothing was committed",
            hint="the journal keeps every result: rerun with --max-error-fraction 1 to commit them (nothing is fetched again)",
        )
    if not records:
        raise CurateError("crawl: no URLs to fetch", hint="check the URL list, --seed, --include/--exclude and --depth")
    packs = ws.pack_writer(hashlib.sha256(f"{parent_id}|{crawl_id}|{journal.gen}".encode()).hexdigest()[:12])
    try:
        with journal.reader() as read:
            new, extra, n_bytes = rows.new_rows(records, read, packs, known_parent=set(parent.column("sample_id").to_pylist()))
        packs.close()
    except BaseException:
        packs.discard()
        raise
    table = rows.merge(parent, new, extra, records)
    replaced = parent.num_rows + new.num_rows - table.num_rows
    n_ok = pc.sum(pc.equal(new.column("status"), OK)).as_py() or 0
    stats = {
        "crawl_id": crawl_id,
        "gen": journal.gen,
        "mode": mode,
        "journal": str(journal.root),
        "inputs": cfg.urls or list(cfg.seeds),
        "urls": len(records),
        "resumed_urls": resumed,
        "fetched_now": sum(run.status.values()),
        "by_status": dict(sorted(by_status.items())),
        "pages": by_status.get(PAGE, 0),
        "downloaded": n_ok,  # new images; ``by_status`` says which URL happened to finish first
        "duplicates": by_status.get(DOWNLOADED, 0) + by_status.get(DUPLICATE, 0) - n_ok,
        "failed": failed,
        "new_samples": new.num_rows,
        "replaced_failed_rows": replaced,
        "bytes_received": sum(r.get("nbytes", 0) for r in records),
        "bytes_stored": n_bytes,
        "packs_written": len(packs.written),
        "filtered_urls": run.filtered,
        "pages_over_limit": run.page_limit,
        "repeated_urls": run.repeated,
        "workers": n_workers,
        "crawl_seconds": round(run.seconds, 3),
        "urls_per_second": round(sum(run.status.values()) / max(run.seconds, 1e-9), 1),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return StageResult(table=table, stats=stats, state={"crawl_log.parquet": rows.crawl_log(records)})
