"""Source steps, ``ingest`` and ``crawl``: they commit a version from inputs that live outside the workspace.

``curate.pipeline.run_stage`` never reuses a source version on its own, since the same settings may now read other
files. In a pipeline (``ctx.reuse``) a source step is skipped when a version of the same stage and settings exists,
made from the pipeline's position or in HEAD's lineage, AND its recorded input fingerprint still matches: for
ingest a hash of every input file's (relative path, size, mtime), for crawl the crawl id (the URL list's content
and the crawl's identity settings). When the inputs changed, the stage runs again from where that version was made,
so the pipeline's result stays a function of its inputs instead of piling new data onto processed data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from curate.pipeline import HEAD, run_stage
from curate.steps import StepContext
from curate.workspace import config_sha256

FINGERPRINT = "input_fingerprint"  # the ingest stats key


def input_fingerprint(source: str) -> str:
    """sha256 over the sorted (relative path, size, mtime_ns) of every file below ``source`` (or of the file itself).

    Stat calls only (no reading), so it costs a small fraction of the ingest it may save. A manifest is fingerprinted
    by its own file: the images it lists elsewhere are not visited. On a bucket: (key, size, ETag) from one listing.
    """
    from curate.remote import is_remote, listing, local_path

    if is_remote(source):
        return _digest(listing(source))
    path = Path(os.path.abspath(Path(local_path(source)).expanduser()))
    entries: list[tuple[str, int, int]] = []
    if path.is_dir():
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:  # a dangling link: ingest reports it; it still changes nothing here
                    continue
                entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    elif path.exists():
        st = path.stat()
        entries.append((path.name, st.st_size, st.st_mtime_ns))
    return _digest(entries)


def _digest(entries: list[tuple[str, int, Any]]) -> str:
    digest = hashlib.sha256()
    for rel, size, mtime in sorted(entries):
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def find_reusable(
    ws: Any, stage: str, config: dict[str, Any], base: str | None, key: str, fingerprint: str
) -> tuple[str | None, str | None]:
    """Where a source step stands: ``(version to reuse or None, parent to build on otherwise)``.

    Candidates, newest first: a version of ``stage`` with these settings made from ``base``, else one in HEAD's
    lineage. A candidate whose ``stats[key]`` differs from ``fingerprint`` is redone from its own parent.
    """
    sha = config_sha256(config)
    parent = ws.head() if base == HEAD else base
    hit = ws.find_cached(parent=parent, stage=stage, config_sha=sha)
    head = ws.head()
    if hit is None and head is not None:
        hit = next((v for v in reversed(ws.lineage(head)) if _same(ws.info(v), stage, sha)), None)
    if hit is None:
        return None, parent
    if ws.stats(hit).get(key) == fingerprint:
        return hit, parent
    return None, ws.info(hit).get("parent")


def _same(info: dict[str, Any], stage: str, sha: str) -> bool:
    return info["stage"] == stage and info["config_sha256"] == sha


def reuse_version(ws: Any, vid: str) -> dict[str, Any]:
    """Point HEAD at an existing version and describe it like ``run_stage`` describes a cached one."""
    with ws.writer():
        ws.set_head(vid)
    info = ws.info(vid)
    return {"version": vid, "parent": info.get("parent"), "stage": info["stage"], "cached": True, "stats": ws.stats(vid)}


def _size_value(values: dict[str, Any]) -> dict[str, Any]:
    """``max_bytes = "64MB"`` in a pipeline file means what ``--max-bytes 64MB`` means."""
    if isinstance(values.get("max_bytes"), str):
        from curate.errors import UsageError
        from curate.stages.export import parse_shard_size

        try:
            rows, nbytes = parse_shard_size(values["max_bytes"])
        except Exception:  # noqa: BLE001 - any parse failure is the same usage error
            raise UsageError(f"max_bytes = {values['max_bytes']!r}: give a number of bytes or a size (64MB, 1GiB)") from None
        values = {**values, "max_bytes": nbytes if nbytes is not None else rows}
    return values


def prepare_ingest(values: dict[str, Any]) -> dict[str, Any]:
    """Pipeline-file values of an ingest step -> IngestConfig values."""
    return _size_value(values)


def prepare_crawl(values: dict[str, Any]) -> dict[str, Any]:
    """Pipeline-file values of a crawl step -> CrawlConfig values."""
    return _size_value(values)


def ingest_step(ws: Any, cfg: Any, ctx: StepContext) -> dict[str, Any]:
    """``curate ingest``: read ``cfg.source`` into a new version (on ``ctx.base``).

    Returns:
        run_stage's ``{"version", "parent", "stage", "cached", "stats"}``; stats carry the input fingerprint.
    """
    from curate.stages.ingest import config_dict, run_ingest

    config = config_dict(cfg)
    fingerprint = input_fingerprint(cfg.source)
    parent = ctx.base
    if ctx.reuse:
        hit, parent = find_reusable(ws, "ingest", config, ctx.base, FINGERPRINT, fingerprint)
        if hit is not None:
            return reuse_version(ws, hit)

    def body(table: Any, parent_id: str | None) -> Any:
        res = run_ingest(ws, table, cfg, parent_id=parent_id, workers=ctx.n_workers(), progress=ctx.bar("ingest"))
        res.stats[FINGERPRINT] = fingerprint
        return res

    return run_stage(ws, "ingest", config, body, cacheable=False, parent=parent)


def crawl_step(ws: Any, cfg: Any, ctx: StepContext) -> dict[str, Any]:
    """``curate crawl``: fetch the URL list or follow the seeds into a new version (resuming its own journal)."""
    from curate.stages.crawl import config_dict, crawl, crawl_identity
    from curate.ui import crawl_progress

    parent = ctx.base
    if ctx.reuse:
        crawl_id = hashlib.sha256(json.dumps(crawl_identity(cfg), sort_keys=True).encode()).hexdigest()[:16]
        hit, parent = find_reusable(ws, "crawl", config_dict(cfg), ctx.base, "crawl_id", crawl_id)
        if hit is not None:
            return reuse_version(ws, hit)
    return crawl(ws, cfg, progress=lambda total: crawl_progress(total, enabled=ctx.progress), parent=parent)


def summary(res: dict[str, Any]) -> str:
    """One line for the pipeline table."""
    st = res["stats"]
    head = f"{st['inputs']:,} inputs, {st['new_samples']:,} new" if "inputs" in st else f"{st.get('downloaded', 0):,} downloaded"
    summ = st.get("summary", {})
    return f"{head}; {summ.get('included', 0):,} included, {summ.get('excluded', 0):,} excluded"
