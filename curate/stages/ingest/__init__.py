"""Ingest: read images from a folder, manifest, idx pair, archive or bucket into a new version (a source).

Per-sample work (``work.process_items``: read or fetch, sha256, full decode) runs wherever the executor puts it;
the driver (``read.run_ingest``) merges exact duplicates by sha256, writes new bytes into blob packs and builds the
table. Every input becomes a row: good images ``ok``, the rest ``excluded`` by ``ingest`` with a reason. In a
pipeline an ingest whose inputs (``curate.sources.fingerprint``) and settings are unchanged is not run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from curate.config import size_setting
from curate.crawl import DEFAULT_CONCURRENCY, DEFAULT_PER_HOST
from curate.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from curate.stage import SOURCE, Context, Stage, cli

if TYPE_CHECKING:
    from curate.stage import StageResult


@dataclass(frozen=True)
class IngestConfig:
    """Settings of ``curate ingest`` (defaults < curate.toml < CLI flags).

    Attributes:
        source: Folder, manifest (.csv/.parquet/.jsonl), idx file or folder, .tar/.zip, or a bucket URL.
        format: auto|folder|csv|parquet|jsonl|idx|tar|zip
        unlabeled: Ignore folder names / label column: no labels.
        path_col: Manifest column with the path (relative to the manifest) or URL.
        label_col: Manifest column with the label (optional).
        split_col: Manifest column with a train/val/test origin (optional).
        split_name: Record this origin split (e.g. train, test) on every row.
        classes: Comma-separated allowed labels; others are excluded (unknown_label).
        class_names: idx: comma-separated names for label ids 0..K-1 (default: the ids as text).
        assign_split: Also use the origin split as `split`.
        max_bytes: Largest file accepted, e.g. 64MB (bytes).
        max_pixels: Largest width*height decoded (decompression-bomb guard).
        follow_links: Read symbolic links that point outside the source folder (else reason outside_source).
        max_error_fraction: Fail and commit nothing when more than this share of inputs failed: a folder with a few
            broken files goes through (they stay as excluded rows), a flood (the wrong folder, a format curate
            cannot read) is refused.
        timeout: URL rows: seconds each URL may take in all, retries included.
        batch_size: Inputs per batch of per-sample work.
        concurrency: URL rows: fetches at once, in all.
        per_host: URL rows: fetches at once per host.
        allow_private: Allow loopback/private/link-local addresses (never cloud metadata).
        allow_hosts: Host or IP exempt from the address checks (repeatable).
        ignore_robots: Do not read robots.txt (only for your own sites).
        allow_noai: Keep images marked X-Robots-Tag noai/noimageai.
        proxy: Fetch URL rows through this http(s) proxy (http://HOST:PORT), or 'env' for HTTP(S)_PROXY / NO_PROXY;
            every target and redirect is still checked here first. Default: no proxy, whatever the environment says.
    """

    source: str = field(metadata=cli(argument=True, metavar="SRC"))
    format: str = field(default="auto", metadata=cli("--format", "-f"))
    unlabeled: bool = False
    path_col: str | None = None
    label_col: str | None = None
    split_col: str | None = None
    split_name: str | None = None
    classes: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    assign_split: bool = False
    max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata=cli(text=True, metavar="SIZE"))
    max_pixels: int = DEFAULT_MAX_PIXELS
    follow_links: bool = False
    max_error_fraction: float = 0.5
    timeout: float = 30.0
    batch_size: int = field(default=512, metadata=cli(hidden=True))
    concurrency: int = field(default=DEFAULT_CONCURRENCY, metadata=cli("--concurrency", "-c"))
    per_host: int = DEFAULT_PER_HOST
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = field(default=(), metadata=cli("--allow-host", multiple=True, metavar="HOST"))
    ignore_robots: bool = field(default=False, metadata=cli("--ignore-robots/--respect-robots"))
    allow_noai: bool = False
    proxy: str | None = None


def fingerprint(_ctx: Context, cfg: IngestConfig) -> tuple[str, str]:
    """The stats key and hash of the input files (paths, sizes, mtimes): an unchanged ingest is reused in pipelines."""
    from curate.sources.fingerprint import FINGERPRINT, input_fingerprint

    return FINGERPRINT, input_fingerprint(cfg.source)


def run(ctx: Context, cfg: IngestConfig) -> StageResult:
    """Read ``cfg.source`` on top of the parent (``curate.stages.ingest.read``)."""
    from curate.stages.ingest.read import run_ingest

    return run_ingest(ctx.ws, ctx.table(), cfg, parent_id=ctx.parent, workers=ctx.n_workers(), progress=ctx.progress)


def summary(res: dict[str, Any]) -> str:
    st = res["stats"]
    return f"{st['inputs']:,} inputs, {st['new_samples']:,} new"


def details(res: dict[str, Any]) -> list[str]:
    """The source and its counts, exclusions by reason, notes, and the version's totals."""
    from curate.cli.common import human_bytes

    st = res["stats"]
    if "new_excluded_by_reason" not in st:  # reused in a pipeline from an older curate
        return []
    out = [f"ingest {st['source']}: {st['inputs']:,} inputs -> {st['new_samples']:,} new samples "
           f"({st['duplicate_bytes']:,} duplicate bytes merged), {human_bytes(st['bytes_stored'])} stored, "
           f"{st['seconds']:.1f}s ({st['inputs'] / max(st['seconds'], 1e-9):,.0f}/s)"]  # fmt: skip
    excl = st["new_excluded_by_reason"]
    if excl:
        out.append("excluded: " + ", ".join(f"{r} {n:,}" for r, n in excl.items()))
    out += [f"note: {note.replace('_', ' ')}: {n:,}" for note, n in st.get("notes", {}).items()]
    summ = st["summary"]
    classes = [c for c in summ["per_class"] if c != "(unlabeled)"]
    unlabeled = summ["per_class"].get("(unlabeled)", 0)
    out.append(f"version {res['version']} (HEAD): {summ['included']:,} included, {summ['excluded']:,} excluded, "
               f"{len(classes)} classes" + (f", {unlabeled:,} unlabeled" if unlabeled else ""))  # fmt: skip
    return out


STAGE = Stage(
    "ingest",
    IngestConfig,
    run,
    kind=SOURCE,
    doc="""Add images to the workspace as a new version (the first one, or on top of HEAD).

    Every file is read, sha256-hashed and fully decoded. Corrupt, truncated, empty, non-image and too-large
    files become rows with status=excluded and a reason; the same bytes twice are one sample.
    http(s) URLs in a manifest are fetched like `curate crawl` fetches them: concurrently, robots.txt obeyed,
    only public addresses unless --allow-private (cloud metadata never), no proxy unless --proxy, --timeout
    per URL in all.

    Examples:

        curate ingest photos/                      # ImageFolder: photos/<class>/<file>
        curate ingest crawl/ --unlabeled           # flat folder, no labels
        curate ingest list.csv --path-col file --label-col species
        curate ingest ../shared/datasets/fashion-mnist --assign-split
        curate ingest archive.tar.gz
        curate ingest s3://bucket/photos/          # also s3://b/list.csv, s3://b/x.tar.gz (AWS_* variables)
    """,
    columns={
        "sample_id": "sha256 of the bytes (a placeholder id for inputs without bytes)",
        "source": "where the bytes came from (path, member, URL); further places in extra_sources",
        "label": "the given label (folder name, manifest column), null when unlabeled",
        "origin_split": "the source's own split (idx file name, split column, --split-name)",
    },
    summary=summary,
    details=details,
    prepare=size_setting,
    fingerprint=fingerprint,
    workers=True,
)
