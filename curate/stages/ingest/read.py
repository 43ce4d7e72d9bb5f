"""The work of ingest: read, hash and decode every input, merge exact duplicates, write new bytes into packs.

Per-sample work (``work.process_items``: read or fetch, sha256, full decode) runs wherever the executor puts it;
the driver (``run_ingest``) merges exact duplicates by sha256, writes new bytes into blob packs and builds
the table. Every input becomes a row: good images ``ok``, the rest ``excluded`` by ``ingest`` with a reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from curate.blobs import PackWriter
from curate.errors import CurateError, TooManyErrors
from curate.schema import OK, RESERVED, SAMPLE_SCHEMA, conform
from curate.stage import Progress, StageResult, no_progress
from curate.stages.ingest import IngestConfig
from curate.stages.ingest.work import OUT_SCHEMA, process_items

if TYPE_CHECKING:
    from curate.workspace import Workspace

#: ``excluded_by`` of the rows ingest excludes.
STAGE = "ingest"
#: Exclusion reasons that are decisions the user or the site asked for, not failures counted against max_error_fraction.
NOT_FAILURES = frozenset({"unknown_label", "robots", "noai"})

#: A processed batch at least this large (large archive members) returns Arrow's freed memory to the OS.
BIG_BATCH = 16 << 20


def run_ingest(
    ws: Workspace,
    parent: pa.Table | None,
    cfg: IngestConfig,
    *,
    parent_id: str | None,
    workers: int = 1,
    progress: Progress = no_progress,
) -> StageResult:
    """Ingest ``cfg.source`` on top of ``parent`` (None for an empty workspace).

    Bytes already in the parent or seen earlier in this run are not stored again: the existing row gets the
    new place in ``extra_sources`` (and its label in ``extra_labels``).

    Args:
        progress: the progress factory (``curate.stage.Progress``): one ``ingest`` bar over the inputs.

    Raises:
        CurateError: the source cannot be opened, is empty, or (``TooManyErrors``) too many inputs failed.
    """
    from curate.crawl.batchfetch import prefetch_urls
    from curate.executors import map_batches
    from curate.sources import SourceOptions, open_source

    t0 = time.perf_counter()
    opts = SourceOptions(
        unlabeled=cfg.unlabeled,
        path_col=cfg.path_col,
        label_col=cfg.label_col,
        split_col=cfg.split_col,
        split_name=cfg.split_name,
        class_names=cfg.class_names,
        max_bytes=cfg.max_bytes,
        follow_links=cfg.follow_links,
        ask_label=cfg.label_col is None,
    )
    source = open_source(cfg.source, cfg.format, opts)
    parent = conform(parent) if parent is not None else SAMPLE_SCHEMA.empty_table()
    acc = _Accumulator(
        set(parent.column("sample_id").to_pylist()), ws.pack_writer(hashlib.sha256(f"{parent_id}|{cfg}".encode()).hexdigest()[:12])
    )
    try:
        # URL rows are fetched here in the driver, concurrently, through the crawler (its address checks and limits).
        fetched = prefetch_urls(source.batches(cfg.batch_size), cfg)
        with progress("ingest", source.total) as advance, contextlib.closing(fetched) as batches:
            for out in map_batches(process_items, batches, cfg, workers=workers):
                # Arrow's allocator keeps freed blocks: with large members, hand back what processing freed before
                # the pack writer copies the bytes, and what the batch held after; else each copy adds to the peak.
                big = out.nbytes >= BIG_BATCH
                if big:
                    pa.default_memory_pool().release_unused()
                acc.add(out)
                advance(out.num_rows)
                del out  # its bytes are in the pack writer now: not kept while the next batch is processed
                if big:
                    pa.default_memory_pool().release_unused()
        _check_failures(acc, cfg)
        acc.packs.close()
    except BaseException:
        acc.packs.discard()
        raise
    new = _new_rows(acc, parent, cfg)
    table = pa.concat_tables([parent, conform(new)], promote_options="default")
    if acc.extra:
        table = _record_extra_sources(table, acc.extra)
    stats = {
        "source": cfg.source,
        "inputs": acc.n_in,
        "new_samples": new.num_rows,
        "duplicate_bytes": acc.n_dup,
        "new_excluded_by_reason": dict(sorted(acc.reasons.items())),
        "bytes_stored": acc.n_bytes,
        "packs_written": len(acc.packs.written),
        "notes": opts.notes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return StageResult(table=table, stats=stats)


def _check_failures(acc: _Accumulator, cfg: IngestConfig) -> None:
    """Refuse an empty source, and one where more than ``max_error_fraction`` of the inputs failed."""
    if acc.n_in == 0:
        raise CurateError(f"{cfg.source}: no files found", hint="check the path, or --format / --unlabeled")
    # ``unknown_label`` is the user's own --classes filter, not a failed input: it must not trip the limit.
    failures = Counter({r: n for r, n in acc.reasons.items() if r not in NOT_FAILURES})
    failed = sum(failures.values())
    if failed > cfg.max_error_fraction * acc.n_in:
        detail = ", ".join(f"{r}={n}" for r, n in failures.most_common())
        raise TooManyErrors(
            f"{cfg.source}: {failed} of {acc.n_in} inputs failed ({detail}), more than --max-error-fraction "
            f"{cfg.max_error_fraction}; nothing was committed",
            hint="`--max-error-fraction 1` ingests anyway and keeps every failure as an excluded row",
        )


def _new_rows(acc: _Accumulator, parent: pa.Table, cfg: IngestConfig) -> pa.Table:
    """The rows of new bytes: ``excluded_by`` / ``label_source`` set, a manifest's other columns expanded."""
    new = pa.concat_tables(acc.parts) if acc.parts else OUT_SCHEMA.empty_table().drop_columns(["data"])
    new = new.append_column("excluded_by", pc.if_else(pc.equal(new.column("status"), OK), pa.scalar(None, pa.string()), STAGE))
    new = new.append_column("label_source", pc.if_else(pc.is_null(new.column("label")), pa.scalar(None, pa.string()), "given"))
    new = _expand_extra(new, reserved=set(parent.column_names))
    if cfg.assign_split:
        new = new.append_column("split", new.column("origin_split"))
    return new


def _expand_extra(new: pa.Table, *, reserved: set[str]) -> pa.Table:
    """Turn the manifest's other columns (JSON in ``extra``) into text columns; a clash gets a ``src_`` prefix."""
    raw = new.column("extra").to_pylist()
    new = new.drop_columns(["extra"])
    if not any(raw):
        return new
    dicts = [json.loads(r) if r else {} for r in raw]
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    taken = reserved | set(RESERVED) | set(new.column_names)
    for key in keys:
        name = key if key not in taken else f"src_{key}"
        new = new.append_column(name, pa.array([d.get(key) for d in dicts], pa.string()))
    return new


class _Accumulator:
    """Driver-side merge of processed batches: exact duplicates by sha256, new bytes into packs."""

    def __init__(self, known: set[str], packs: PackWriter) -> None:
        self.known = known
        self.packs = packs
        self.extra: dict[str, list[tuple[str, str | None]]] = {}
        self.parts: list[pa.Table] = []
        self.reasons: Counter[str] = Counter()
        self.n_in = self.n_dup = self.n_bytes = 0

    def add(self, out: pa.Table) -> None:
        """Merge one ``process_items`` result: count reasons, drop known bytes, pack the new ones."""
        self.n_in += out.num_rows
        bad = pc.not_equal(out.column("status"), OK)
        if pc.any(bad).as_py():
            for row in pc.value_counts(out.column("reason").filter(bad)).to_pylist():  # first-seen order, as per row
                self.reasons[row["values"]] += row["counts"]
        known = self.known
        # ``known.add`` returns None: a new id is recorded and kept in one pass, a repeated one is not kept.
        keep = [sid not in known and not known.add(sid) for sid in out.column("sample_id").to_pylist()]
        if not all(keep):
            self._record_duplicates(out, keep)
        mask = pa.array(keep, pa.bool_())
        data = out.column("data")
        has = pc.is_valid(data)
        blobs = data.filter(pc.and_(mask, has))  # a copy of the new bytes only: the batch can go
        names = iter(self.packs.add_many(out.column("sample_id").filter(pc.and_(mask, has)).to_pylist(), blobs))
        self.n_bytes += pc.sum(pc.binary_length(blobs)).as_py() or 0
        packs = [next(names) if h else None for h in has.filter(mask).to_pylist()]
        self.parts.append(out.drop_columns(["data"]).filter(mask).append_column("pack", pa.array(packs, pa.string())))

    def _record_duplicates(self, out: pa.Table, keep: list[bool]) -> None:
        """Note the place and label of each row whose bytes are already known (``extra_sources`` later)."""
        dup = pa.array([i for i, k in enumerate(keep) if not k], pa.int64())
        ids, sources, labels = (out.column(c).take(dup).to_pylist() for c in ("sample_id", "source", "label"))
        self.n_dup += len(ids)
        for sid, src, label in zip(ids, sources, labels, strict=True):
            self.extra.setdefault(sid, []).append((src, label))


def _record_extra_sources(table: pa.Table, extra: dict[str, list[tuple[str, str | None]]]) -> pa.Table:
    """Append further places of the same bytes to ``extra_sources`` / ``extra_labels`` of their row."""
    ids = table.column("sample_id").to_pylist()
    sources = table.column("source").to_pylist()
    labels = table.column("label").to_pylist()
    srcs = table.column("extra_sources").to_pylist()
    labs = table.column("extra_labels").to_pylist()
    for i, sid in enumerate(ids):
        more = extra.get(sid)
        if more:
            # Re-ingesting the same place with the same label adds nothing; the same place with another label
            # (a manifest listing one file twice, a corrected manifest) is a conflict worth keeping.
            have = {(sources[i], labels[i]), *zip(srcs[i] or [], labs[i] or [], strict=False)}
            fresh = [(s, lab) for s, lab in more if (s, lab) not in have and not have.add((s, lab))]
            if fresh:  # leave a row without new places as it was (null stays null, not [])
                srcs[i] = (srcs[i] or []) + [s for s, _ in fresh]
                labs[i] = (labs[i] or []) + [lab for _, lab in fresh]
    table = table.set_column(table.schema.get_field_index("extra_sources"), "extra_sources", pa.array(srcs, pa.list_(pa.string())))
    return table.set_column(table.schema.get_field_index("extra_labels"), "extra_labels", pa.array(labs, pa.list_(pa.string())))
