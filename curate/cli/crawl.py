"""``curate crawl``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, WorkspaceOpt, handle_errors, human_bytes, say
from curate.crawl import DEFAULT_CONCURRENCY, DEFAULT_PER_HOST

# The network options ``curate crawl`` and ``curate ingest`` (its URL rows) share: one definition, one meaning.
ConcurrencyOpt = Annotated[
    int | None, typer.Option("--concurrency", "-c", help=f"Fetches at once, in all. Default {DEFAULT_CONCURRENCY}.")
]
PerHostOpt = Annotated[int | None, typer.Option("--per-host", help=f"Fetches at once per host. Default {DEFAULT_PER_HOST}.")]
IgnoreRobotsOpt = Annotated[
    bool | None,
    typer.Option("--ignore-robots/--respect-robots", help="Do not read robots.txt (only for your own sites). Default: respect."),
]
AllowNoaiOpt = Annotated[bool | None, typer.Option("--allow-noai", help="Keep images marked X-Robots-Tag noai/noimageai.")]
AllowPrivateOpt = Annotated[
    bool | None, typer.Option("--allow-private", help="Allow loopback/private/link-local addresses (never cloud metadata).")
]
AllowHostOpt = Annotated[list[str] | None, typer.Option("--allow-host", help="Host or IP exempt from the address checks.")]
ProxyOpt = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        help="Fetch through this http(s) proxy (http://HOST:PORT), or 'env' for HTTP(S)_PROXY / NO_PROXY. The proxy's "
        "own address may be private; every target and redirect is still checked here first. Default: no proxy, whatever "
        "the environment says.",
    ),
]


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    from curate.errors import CurateError
    from curate.stages.export import parse_shard_size

    try:
        rows, nbytes = parse_shard_size(text)
    except CurateError:
        raise CurateError(f"--max-bytes {text!r}: give a number of bytes or a size (64MB, 1GiB)", exit_code=2) from None
    return nbytes if nbytes is not None else rows


def crawl(
    urls: Annotated[str | None, typer.Argument(help="URL list: .txt (one per line), .csv/.parquet/.jsonl with a url column.")] = None,
    seed: Annotated[list[str] | None, typer.Option("--seed", help="Page to start from: URL or LABEL=URL (repeatable).")] = None,
    depth: Annotated[
        int | None, typer.Option(help="Link hops followed from a seed (0: the seed page's images only). Default 1.")
    ] = None,
    same_host: Annotated[bool | None, typer.Option("--same-host", help="Follow page links only on the seed's host.")] = None,
    include: Annotated[str | None, typer.Option(help="Only URLs matching this regex (found links and images).")] = None,
    exclude: Annotated[str | None, typer.Option(help="Skip URLs matching this regex.")] = None,
    label_from: Annotated[str | None, typer.Option(help="Label images by dir:K (URL folder), regex:PATTERN or seed.")] = None,
    url_col: Annotated[str | None, typer.Option(help="URL column of a CSV/Parquet/JSONL list (default: url, image_url ...).")] = None,
    label_col: Annotated[str | None, typer.Option(help="Label column of the list (default: label, class ...).")] = None,
    concurrency: ConcurrencyOpt = None,
    per_host: PerHostOpt = None,
    timeout: Annotated[float | None, typer.Option(help="Total seconds per attempt (connect, headers, body). Default 60.")] = None,
    deadline: Annotated[
        float | None, typer.Option(help="Seconds for one URL in all: attempts, backoff, Retry-After waits. Default 180.")
    ] = None,
    connect_timeout: Annotated[float | None, typer.Option(help="Seconds to connect. Default 10.")] = None,
    read_timeout: Annotated[float | None, typer.Option(help="Seconds without a byte before giving up. Default 20.")] = None,
    retries: Annotated[
        int | None, typer.Option(help="Retries for timeouts, resets, 429 and 5xx (backoff + jitter). Default 3.")
    ] = None,
    max_retry_wait: Annotated[
        float | None, typer.Option(help="Longest Retry-After honoured; longer ends the URL. Default 120.")
    ] = None,
    max_redirects: Annotated[int | None, typer.Option(help="Redirect hops per URL. Default 5.")] = None,
    max_bytes: Annotated[
        str | None, typer.Option(help="Largest response (also after gzip decoding), e.g. 20MB. Default 64MiB.")
    ] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Largest width*height decoded (decompression-bomb guard).")] = None,
    max_pages: Annotated[int | None, typer.Option(help="Most HTML pages queued per crawl. Default 10000.")] = None,
    user_agent: Annotated[str | None, typer.Option(help="User-Agent sent; its first word is matched against robots.txt.")] = None,
    ignore_robots: IgnoreRobotsOpt = None,
    allow_noai: AllowNoaiOpt = None,
    allow_private: AllowPrivateOpt = None,
    allow_host: AllowHostOpt = None,
    proxy: ProxyOpt = None,
    retry_failed: Annotated[
        bool | None, typer.Option("--retry-failed", help="Fetch again only the URLs that failed (timeouts, resets, HTTP errors).")
    ] = None,
    max_error_fraction: Annotated[float | None, typer.Option(help="Commit nothing above this failed share. Default 0.5.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Processes for a URL list (default: one per core).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Download images from a URL list or by following links from seed pages into a new version.

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
    """
    from curate.config import command_config
    from curate.stages.crawl import CrawlConfig
    from curate.steps import StepContext
    from curate.steps.sources import crawl_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli: dict[str, Any] = {
        "urls": urls,
        "seeds": tuple(seed) if seed else None,
        "depth": depth,
        "same_host": same_host,
        "include": include,
        "exclude": exclude,
        "label_from": label_from,
        "url_col": url_col,
        "label_col": label_col,
        "concurrency": concurrency,
        "per_host": per_host,
        "timeout": timeout,
        "deadline": deadline,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": retries,
        "max_retry_wait": max_retry_wait,
        "max_redirects": max_redirects,
        "max_bytes": _size(max_bytes),
        "max_pixels": max_pixels,
        "max_pages": max_pages,
        "user_agent": user_agent,
        "ignore_robots": ignore_robots,
        "allow_noai": allow_noai,
        "allow_private": allow_private,
        "allow_hosts": tuple(allow_host) if allow_host else None,
        "proxy": proxy,
        "retry_failed": retry_failed,
        "max_error_fraction": max_error_fraction,
        "workers": workers,
    }
    cfg = command_config(CrawlConfig, "crawl", ws.root, cli)
    res = crawl_step(ws, cfg, StepContext(progress=not json_out))
    if json_out:
        emit_json(res)
        return
    _summary(res)


def _summary(res: dict[str, Any]) -> None:
    from curate.crawl import NOT_FAILURES

    st = res["stats"]
    resumed = f", {st['resumed_urls']:,} from an earlier run" if st["resumed_urls"] else ""
    say(
        f"crawl ({st['mode']}): {st['urls']:,} URLs{resumed} -> {st['downloaded']:,} downloaded, {st['duplicates']:,} duplicates, "
        f"{st['pages']:,} pages, {st['failed']:,} failed; {human_bytes(st['bytes_received'])} received, "
        f"{st['crawl_seconds']:.1f}s ({st['urls_per_second']:,.0f} URLs/s)"
    )
    failed = {s: n for s, n in st["by_status"].items() if s not in NOT_FAILURES}
    if failed:
        say("  failed: " + ", ".join(f"{s} {n:,}" for s, n in sorted(failed.items(), key=lambda kv: -kv[1])))
    policy = {s: st["by_status"][s] for s in ("robots", "noai") if st["by_status"].get(s)}
    if policy:
        say("  not fetched by the site's wish: " + ", ".join(f"{s} {n:,}" for s, n in policy.items()))
    if st["replaced_failed_rows"]:
        say(f"  {st['replaced_failed_rows']:,} rows of earlier failures replaced by this run's outcome")
    summ = st["summary"]
    say(f"  version {res['version']} (HEAD): {summ['included']:,} included, {summ['excluded']:,} excluded; journal {st['journal']}")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(crawl))
