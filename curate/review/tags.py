"""Error-analysis tags: which cause (blurry, mislabeled, occluded, ambiguous ...) a person gave a sample, counted.

The data model is one mapping ``sample_id -> [cause, ...]`` with two sources, merged:

- a **CSV** given to ``curate report --tags FILE``: a ``sample_id`` or a ``source`` column (a path, URL or archive
  member as the version's ``source`` or ``extra_sources`` holds it) and a ``cause`` column, one or several causes
  separated by ``;``. A sample may appear on several lines; its causes are united.
- the version's **``review_tags``** column (``list<string>``, null for untagged rows): where a review desk commits
  its tags, so the report counts them without a file.

Causes are free text, trimmed and lower-cased (``Blurry`` and ``blurry `` are one cause). A row with several causes
counts once under each, so the per-cause counts may sum to more than the tagged rows.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.errors import CurateError

TAGS_COLUMN = "review_tags"
UNLABELED = "(unlabeled)"


def split_causes(text: str | None) -> list[str]:
    """``"Blurry; occluded;"`` -> ``["blurry", "occluded"]`` (trimmed, lower-cased, empty parts dropped, order kept)."""
    return list(dict.fromkeys(p.strip().lower() for p in (text or "").split(";") if p.strip()))


def _source_index(table: pa.Table) -> dict[str, str]:
    """``source`` (and every ``extra_sources`` entry) -> sample_id."""
    index: dict[str, str] = {}
    ids = table.column("sample_id").to_pylist()
    if "extra_sources" in table.column_names:
        for sid, extra in zip(ids, table.column("extra_sources").to_pylist(), strict=True):
            for src in extra or []:
                index.setdefault(str(src), sid)
    if "source" in table.column_names:
        for sid, src in zip(ids, table.column("source").to_pylist(), strict=True):
            if src is not None:
                index[str(src)] = sid
    return index


def read_tags_csv(path: str | Path, table: pa.Table) -> dict[str, list[str]]:
    """The causes per sample_id of a tags CSV, checked against the version's sample table.

    Args:
        path: the CSV (UTF-8, a header row with ``cause`` and ``sample_id`` or ``source``).
        table: the version's samples; needs ``sample_id`` (and ``source`` for a ``source`` column).

    Returns:
        sample_id -> causes (first-seen order, no repeats).

    Raises:
        CurateError: the file cannot be read, lacks the columns, has a line without a cause, or names a sample the
            version does not have (the first such id or source is named).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [(h or "").strip() for h in reader.fieldnames or []]
            lines = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CurateError(f"tags file {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from exc
    key = "sample_id" if "sample_id" in header else "source" if "source" in header else None
    if key is None or "cause" not in header:
        raise CurateError(
            f"tags file {path}: needs a cause column and a sample_id or source column (has: {', '.join(header) or 'no header'})"
        )
    known = set(table.column("sample_id").to_pylist()) if key == "sample_id" else None
    by_source = _source_index(table) if key == "source" else {}
    out: dict[str, list[str]] = defaultdict(list)
    for n, line in enumerate(lines, start=2):
        ref = (line.get(key) or "").strip()
        causes = split_causes(line.get("cause"))
        if not ref or not causes:
            raise CurateError(f"tags file {path}: line {n} has no {key if not ref else 'cause'}")
        sid = ref if known is not None and ref in known else by_source.get(ref)
        if sid is None:
            raise CurateError(f"tags file {path}: unknown {key} {ref!r} (line {n}) is not in this version")
        out[sid].extend(c for c in causes if c not in out[sid])
    return dict(out)


def tags_from_table(table: pa.Table) -> dict[str, list[str]]:
    """sample_id -> causes from the ``review_tags`` column (empty when the version has none)."""
    if TAGS_COLUMN not in table.column_names:
        return {}
    out = {}
    for sid, tags in zip(table.column("sample_id").to_pylist(), table.column(TAGS_COLUMN).to_pylist(), strict=True):
        causes = split_causes(";".join(tags or []))
        if causes:
            out[sid] = causes
    return out


def merge_tags(*sources: dict[str, list[str]]) -> dict[str, list[str]]:
    """The union of several sample_id -> causes mappings (first-seen cause order)."""
    out: dict[str, list[str]] = defaultdict(list)
    for src in sources:
        for sid, causes in src.items():
            out[sid].extend(c for c in causes if c not in out[sid])
    return dict(out)


def cause_counts(tags: dict[str, list[str]], labels: dict[str, str | None]) -> dict[str, Any]:
    """Count tagged rows per cause and per class.

    Args:
        tags: sample_id -> causes.
        labels: sample_id -> class (None: unlabeled).

    Returns:
        ``{"tagged": rows with a cause, "causes": [{"cause", "rows", "share" (rows / tagged), "per_class":
        {class: rows}}] most rows first (ties by name), "classes": classes in order of tagged rows, "top": the
        cause with most rows or None}``.
    """
    per: dict[str, Counter[str]] = defaultdict(Counter)
    by_class: Counter[str] = Counter()
    for sid, causes in tags.items():
        cls = labels.get(sid) or UNLABELED
        by_class[cls] += 1
        for c in causes:
            per[c][cls] += 1
    tagged = len(tags)
    rows = [
        {"cause": c, "rows": sum(cnt.values()), "share": sum(cnt.values()) / tagged, "per_class": dict(cnt)}
        for c, cnt in per.items()
    ]
    rows.sort(key=lambda r: (-r["rows"], r["cause"]))
    classes = [c for c, _ in sorted(by_class.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"tagged": tagged, "causes": rows, "classes": classes, "top": rows[0]["cause"] if rows else None}
