"""The work of crawl: run the crawler over the journal, then turn the run's records into sample rows.

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

import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

import pyarrow.compute as pc

from curate.crawl import (
    DOWNLOADED,
    DUPLICATE,
    IMAGE,
    NOT_FAILURES,
    PAGE,
    Task,
    rows,
)
from curate.errors import CurateError, TooManyErrors
from curate.schema import OK, SAMPLE_SCHEMA, conform
from curate.stage import Context, Progress, StageResult
from curate.stages.crawl import CrawlConfig, check_config, crawl_id, crawl_identity

if TYPE_CHECKING:
    from curate.crawl.engine import Plan, RunStats
    from curate.crawl.inputs import LabelRule, UrlList
    from curate.crawl.journal import Journal
    from curate.workspace import Workspace

#: ``update(done, known, failed, bytes_received)``: the crawl's progress, absolute counts.
Update = Callable[[int, int | None, int, int], None]


def _workers(cfg: CrawlConfig, url_list: bool) -> int:
    """Worker processes: one per core for a URL list, 1 for link following. The workers are forked (they share the
    loaded journal and settings), so other systems than Linux, where fork is unsafe or missing, use one process."""
    import sys

    from curate.executors.local import default_workers

    if not url_list or not sys.platform.startswith("linux"):
        return 1
    return cfg.workers or default_workers()


def _open_journal(ws: Workspace, cfg: CrawlConfig) -> tuple[Journal, str, str]:
    from curate.crawl.journal import Journal

    ident = crawl_identity(cfg)
    cid = crawl_id(cfg, ident)
    journal = Journal(ws.crawl_journal(cid))
    meta = journal.read_meta()
    if meta and not meta.get("committed"):
        # Killed between committing the version and marking the journal: the version says so.
        for vid in reversed(ws.version_ids()):
            st = ws.stats(vid)
            if st.get("crawl_id") == cid and st.get("gen") == meta.get("gen"):
                journal.meta = meta
                journal.mark_committed(vid)
                break
    mode = journal.open(ident, retry_failed=cfg.retry_failed)
    return journal, cid, mode


def run_crawl(ctx: Context, cfg: CrawlConfig) -> StageResult:
    """Crawl (resuming an unfinished run of the same inputs) and build the new sample table on ``ctx``'s parent.

    The open journal goes to ``ctx.scratch["journal"]``: the stage's ``finish`` marks it committed.

    Raises:
        CurateError: unreadable URL list; ``TooManyErrors`` when more than ``max_error_fraction`` of the URLs failed
            (nothing committed; the journal keeps every result, so a rerun fetches nothing again).
    """
    from curate.crawl.inputs import UrlList

    t0 = time.perf_counter()
    rule = check_config(cfg)
    url_list = UrlList(cfg.urls, url_col=cfg.url_col, label_col=cfg.label_col) if cfg.urls else None
    journal, cid, mode = _open_journal(ctx.ws, cfg)
    ctx.scratch["journal"] = journal
    parent = ctx.table()
    parent = conform(parent) if parent is not None else SAMPLE_SCHEMA.empty_table()
    parent_ids = set(parent.column("sample_id").to_pylist())
    known = parent_ids | {r["sample_id"] for r in journal.history.values() if r["status"] == DOWNLOADED}
    resumed = journal.resumed
    n_workers = _workers(cfg, url_list is not None)
    run = _fetch(ctx, cfg, journal, known, url_list=url_list, rule=rule, mode=mode, n_workers=n_workers)
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
    packs = ctx.ws.pack_writer(hashlib.sha256(f"{ctx.parent}|{cid}|{journal.gen}".encode()).hexdigest()[:12])
    try:
        with journal.reader() as read:
            new, extra, n_bytes = rows.new_rows(records, read, packs, known_parent=parent_ids)
        packs.close()
    except BaseException:
        packs.discard()
        raise
    table = rows.merge(parent, new, extra, records)
    n_ok = pc.sum(pc.equal(new.column("status"), OK)).as_py() or 0
    stats = {
        "crawl_id": cid,
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
        "replaced_failed_rows": parent.num_rows + new.num_rows - table.num_rows,
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


def _plan(cfg: CrawlConfig, rule: LabelRule | None) -> Plan:
    """The crawler's settings from the stage's."""
    from curate.crawl.engine import Plan
    from curate.crawl.fetcher import FetchLimits

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
    return Plan(
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


def _feed(url_list: UrlList, rule: LabelRule | None) -> Iterator[Task]:
    """The URL list's entries as image tasks; a label from the list, else from ``--label-from``."""
    from curate.crawl.links import normalize_url

    for e in url_list.entries():
        url = normalize_url(e.url) or e.url or e.where
        label = e.label or (rule.label(url) if rule is not None and rule.kind != "seed" else None)
        yield Task(url, IMAGE, 0, label, split=e.origin_split, extra=e.extra)


def _fetch(
    ctx: Context,
    cfg: CrawlConfig,
    journal: Journal,
    known: set[str],
    *,
    url_list: UrlList | None,
    rule: LabelRule | None,
    mode: str,
    n_workers: int,
) -> RunStats:
    """Run the crawler (in ``n_workers`` forked processes for a URL list) until every URL has a journal record."""
    import asyncio

    from curate.crawl.engine import Crawler
    from curate.crawl.inputs import parse_seed
    from curate.crawl.links import normalize_url
    from curate.crawl.parallel import run_workers, share

    plan = _plan(cfg, rule)
    seeds = [(label, normalize_url(url) or url) for label, url in map(parse_seed, cfg.seeds)]
    total = url_list.total if url_list is not None and mode != "retry" else None
    use_feed = url_list is not None and mode != "retry"

    def make(k: int, n: int, update: Update) -> Crawler:
        """Worker k of n: its share of the limits, its part of the URLs (called after the fork when n > 1)."""
        if n > 1:
            journal.use_part(k)
        mine = dataclasses.replace(
            plan, concurrency=share(plan.concurrency, n, k), per_host=share(plan.per_host, n, k), delay_scale=float(n)
        )
        feed = _feed(url_list, rule) if use_feed and url_list is not None else None
        crawler = Crawler(mine, journal, known, seeds=seeds, feed=feed, retry="retry" in mode, progress=update, total=total,
                          part=(k, n))  # fmt: skip
        if n > 1:
            crawler.done = crawler.errors = 0  # the parent adds what earlier runs finished
        return crawler

    try:
        with _bar(ctx, total) as update:
            if n_workers == 1:
                return asyncio.run(make(0, 1, update).run())
            base = (journal.resumed, sum(1 for r in journal.current() if r["status"] not in NOT_FAILURES))
            run = run_workers(make, n_workers, update, base=base, total=total)
            journal.reload()
            return run
    finally:
        journal.close()


def _bar(ctx: Context, total: int | None) -> AbstractContextManager[Update]:
    """The crawl's own bar (URLs done, rate, failures, bytes) when the context's progress offers one, else the
    context's one progress shape advanced by the URLs done."""
    return ctx.bar("crawl", total) or _counted(ctx.progress, total)


@contextmanager
def _counted(progress: Progress, total: int | None) -> Iterator[Update]:
    with progress("crawl", total) as advance:
        last = 0

        def update(done: int, _known: int | None, _errors: int, _nbytes: int) -> None:
            nonlocal last
            advance(done - last)
            last = done

        yield update
